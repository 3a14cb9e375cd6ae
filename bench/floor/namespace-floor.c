/*
 * namespace-floor: the most a resident jail could reach on this host, against direct
 * spawning, in one run. Not part of the gateway; a measurement for README's
 * "Why full isolation stays below half of direct's rate".
 *
 * Each side runs `/bin/echo x` as fast as it can from WORKERS processes for SECONDS:
 *   direct:     fork, exec.
 *   namespaces: fork; the child makes new mount, PID, IPC, UTS and cgroup namespaces
 *               (and a network namespace with --net) and forks PID 1 of the new PID
 *               namespace, which makes its mounts private, mounts a tmpfs on /tmp and a
 *               fresh /proc, and execs. No exec of a helper (a resident jail forks), no
 *               read-only root, user switch, system-call filter or cgroups.
 * The two sides alternate ROUNDS times; each round prints both rates and their ratio.
 *
 *   gcc -O2 -o /tmp/namespace-floor bench/floor/namespace-floor.c
 *   sudo /tmp/namespace-floor [--net] [WORKERS=4] [SECONDS=3] [ROUNDS=3]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *const program[] = {"/bin/echo", "x", NULL};
static char *const no_environment[] = {NULL};

static void run_program(int in_namespaces) {
    if (in_namespaces) {
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) _exit(90);
        if (mount("tmpfs", "/tmp", "tmpfs", 0, "size=1m") != 0) _exit(91);
        if (mount("proc", "/proc", "proc", 0, NULL) != 0) _exit(92);
    }
    execve(program[0], program, no_environment);
    _exit(127);
}

static int wait_for(pid_t pid) {
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void start_one(int in_namespaces, int network) {
    pid_t child = fork();
    if (child == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null < 0 || dup2(null, 1) < 0) _exit(88);
        if (!in_namespaces) run_program(0);
        int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;
        if (network) flags |= CLONE_NEWNET;
        if (unshare(flags) != 0) _exit(89);
        pid_t init = fork();
        if (init == 0) run_program(1);
        _exit(wait_for(init));
    }
    int status = wait_for(child);
    if (status != 0) {
        fprintf(stderr, "namespace-floor: a start failed (%d); run it as root\n", status);
        exit(1);
    }
}

static double rate(int in_namespaces, int network, int workers, double seconds) {
    int results[2];
    if (pipe(results) != 0) exit(1);
    for (int w = 0; w < workers; w++) {
        if (fork() == 0) {
            struct timespec start, now;
            long started = 0;
            clock_gettime(CLOCK_MONOTONIC, &start);
            do {
                start_one(in_namespaces, network);
                started++;
                clock_gettime(CLOCK_MONOTONIC, &now);
            } while ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 < seconds);
            if (write(results[1], &started, sizeof started) != sizeof started) _exit(1);
            _exit(0);
        }
    }
    long total = 0, started;
    for (int w = 0; w < workers; w++) {
        if (read(results[0], &started, sizeof started) != sizeof started) exit(1);
        total += started;
    }
    while (wait(NULL) > 0) {
    }
    close(results[0]);
    close(results[1]);
    return total / seconds;
}

int main(int argc, char **argv) {
    int network = argc > 1 && strcmp(argv[1], "--net") == 0;
    int first = 1 + network;
    int workers = argc > first ? atoi(argv[first]) : 4;
    double seconds = argc > first + 1 ? atof(argv[first + 1]) : 3;
    int rounds = argc > first + 2 ? atoi(argv[first + 2]) : 3;
    printf("namespace-floor: %d workers, %.1f s per side%s\n", workers, seconds,
           network ? ", a new network namespace each" : ", no network namespace");
    for (int r = 0; r < rounds; r++) {
        double direct = rate(0, 0, workers, seconds);
        double jailed = rate(1, network, workers, seconds);
        printf("round %d: direct %.0f /s, namespaces %.0f /s, ratio %.3f\n", r + 1, direct,
               jailed, jailed / direct);
    }
    return 0;
}
