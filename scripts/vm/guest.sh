#!/bin/bash
# Stage 2 of the cgroup v2 check VM: pid 1 on the host's root file system (read-only,
# over 9p), started by initramfs-init.sh. Not meant to be run by hand: cgroup2-check.sh
# boots the VM that runs it (the kernel command line's sluice_vm_layouts=a|b|ab says
# which layouts; both by default).
#
# Mounts ONLY cgroup2 at /sys/fs/cgroup (so memory, pids and cpu are all in the unified
# hierarchy), enables +cpu +memory +pids in the root's subtree_control and runs
# `sluice doctor` and the chosen test binaries in two layouts:
#   a. the test process in the root cgroup;
#   b. the test process in /sys/fs/cgroup/sluice.service (created fresh for each
#      binary, like systemd does for a service), so the gateway must move itself into a
#      leaf to delegate memory and pids to its executions' cgroups.
# Then it checks that the limits were enforced by cgroup v2, not by the rlimit fallback:
# the doctor says cgroup v2 memory/pids/cpu.stat/cgroup.kill; the kernel log shows jailed
# programs OOM-killed by an execution cgroup's memory.max and forks refused by one's
# pids.max; no test skipped; and no test gateway that had a v2 cgroup (cgroup.kill) went
# without v2 memory and pids limits (the silent fallback to rlimits).
#
# Full logs go to $SLUICE_VM_OUT (the host's target/vm/run); the console gets a summary
# and the verdict; `result` there says pass or fail.

set -u
out=$SLUICE_VM_OUT
repo=$SLUICE_VM_REPO
sluice=$SLUICE_VM_TARGET/sluice
cgroot=/sys/fs/cgroup
failures=()

say() { echo "vm: $*"; }
fail() {
    say "FAIL: $*"
    failures+=("$*")
}

mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mkdir -p /dev/pts /dev/shm
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
busybox ip link set lo up
busybox hostname sluice-vm
mount -t cgroup2 cgroup2 "$cgroot"
echo "+cpu +memory +pids" >"$cgroot/cgroup.subtree_control"

# A command given to cgroup2-check.sh (SLUICE_VM_COMMAND) runs instead of the check,
# with cgroup2 set up as above: for looking around when something fails.
if [ -n "${SLUICE_VM_COMMAND:-}" ]; then
    (cd "$repo" && bash -c "$SLUICE_VM_COMMAND")
    echo "exit status $?" >"$out/result"
    busybox poweroff -f
fi

say "kernel $(uname -r), $(nproc) CPUs, $(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024)) MiB"
say "cgroup mounts: $(awk '$0 ~ / - cgroup2? / {print $5 " (" $(NF-2) ")"}' /proc/self/mountinfo | tr '\n' ' ')"
say "root cgroup.subtree_control: $(cat "$cgroot/cgroup.subtree_control")"
if grep -q ' - cgroup ' /proc/self/mountinfo; then
    fail "a cgroup v1 hierarchy is mounted"
fi

# Runs "$@" as a process in cgroup $1 (a fresh directory for layout b).
in_cgroup() {
    local cgroup=$1
    shift
    (
        echo "$BASHPID" >"$cgroup/cgroup.procs" || exit 125
        exec "$@"
    )
}

# Removes cgroup $1 and everything below it, deepest first, as systemd does when a
# service stops; a directory that will not go still has processes: a leak.
remove_tree() {
    local dir
    while read -r dir; do
        rmdir "$dir" 2>/dev/null || fail "could not remove $dir (processes left: $(tr '\n' ' ' <"$dir/cgroup.procs"))"
    done < <(find "$1" -depth -type d)
}

# The directories the gateways left under cgroup $1 (after their processes ended), not
# counting layout b's service cgroup.
leftovers() {
    find "$1" -mindepth 1 -path "$cgroot/sluice.service" -prune -o -type d -name 'sluice-*' -print 2>/dev/null |
        sed "s|^$cgroot||" | tr '\n' ' '
}

doctor() { # layout, cgroup
    local layout=$1 cgroup=$2 report=$out/$1-doctor.txt
    in_cgroup "$cgroup" "$sluice" doctor >"$report" 2>&1
    say "layout $layout: sluice doctor (run in ${cgroup#"$cgroot"}/):"
    sed 's/^/    /' "$report"
    local want
    for want in "memory .*cgroup v2 memory (memory.max" "processes .*cgroup v2 pids (pids.max)" \
        "cpu .*cgroup v2 cpu.stat" "end of execution .*cgroup v2 cgroup.kill" "jailed by "; do
        grep -q -- "$want" "$report" || fail "layout $layout: doctor does not say '$want'"
    done
}

run_tests() { # layout
    local layout=$1 spec name dir exe filter log status
    for spec in $SLUICE_VM_TESTS; do
        IFS='|' read -r name dir exe filter <<<"$spec"
        log=$out/$layout-$name.log
        local cgroup=$cgroot
        if [ "$layout" = b ]; then
            cgroup=$cgroot/sluice.service
            mkdir "$cgroup" || fail "layout b: cannot create $cgroup"
        fi
        # As cargo runs them: from the package's directory. The test gateways log how
        # they enforce each limit (server.rs, at start-up) and a failed delegation
        # (sandbox/cgroup/); --nocapture keeps those lines and the tests' "skipped:"
        # lines in the log. One test at a time by
        # default (SLUICE_VM_TEST_THREADS): in layout b, the first gateway of a process
        # moves it into a leaf and enables memory and pids in sluice.service, which the
        # kernel refuses (EBUSY) while any other process is still in sluice.service, such
        # as a child another test started a moment before; that gateway then runs
        # without those limits (it says so in a warning). A real gateway probes once,
        # before it starts anything, so this only concerns tests run in parallel.
        (cd "$dir" && CARGO_MANIFEST_DIR=$dir SLUICE_TEST_LOG=sluice_gateway::server=info,sluice_gateway::sandbox=warn NO_COLOR=1 \
            in_cgroup "$cgroup" "$exe" --nocapture --test-threads="$SLUICE_VM_TEST_THREADS" ${filter:+"$filter"}) >"$log" 2>&1
        status=$?
        say "layout $layout: $name: $(grep -E '^test result:' "$log" | tail -1 || true)"
        # The failed tests, from libtest's closing list (log lines may interleave others).
        awk '/^failures:$/ { list = 1; next } /^test result:/ { list = 0 }
            list && /^    [A-Za-z0-9_:]+$/ { print "    failed: " $1 }' "$log"
        [ "$status" -eq 0 ] || fail "layout $layout: $name exited with status $status (log: $log)"
        if grep -q '^skipped' "$log"; then
            fail "layout $layout: $name skipped tests here: $(grep '^skipped' "$log" | sort -u | tr '\n' ' ')"
        fi
        if [ "$layout" = b ]; then
            local left
            left=$(leftovers "$cgroup")
            [ -z "$left" ] || say "layout b: $name left (empty) cgroups: $left"
            remove_tree "$cgroup"
        else
            local left
            left=$(leftovers "$cgroot")
            [ -z "$left" ] || say "layout a: $name left (empty) cgroups: $left"
        fi
    done
}

# What the kernel and the gateways' logs say about how the limits were enforced.
evidence() { # layout, cgroup path prefix of the execution cgroups
    local layout=$1 prefix=$2 kmsg=$out/$1-dmesg.log
    dmesg -c >"$kmsg" 2>&1
    # The kernel names the cgroup whose memory.max killed (oom_memcg) and, once per
    # cgroup, the one whose pids.max refused a fork. uid 60000 is a jailed program (the
    # gateway's executions); the unit tests' own hogs run as root.
    local ooms jailed forks
    ooms=$(grep -c "oom-kill:constraint=CONSTRAINT_MEMCG.*oom_memcg=$prefix/sluice-[0-9]*-[0-9]*/x[0-9]*," "$kmsg")
    jailed=$(grep "oom-kill:constraint=CONSTRAINT_MEMCG.*oom_memcg=$prefix/sluice-[0-9]*-[0-9]*/x[0-9]*," "$kmsg" | grep -c ',uid=60000$')
    forks=$(grep -c "fork rejected by pids controller in $prefix/sluice-[0-9]*-[0-9]*/x[0-9]*" "$kmsg")
    say "layout $layout: kernel log: $ooms OOM kill(s) by an execution cgroup's memory.max ($jailed of jailed programs), $forks execution cgroup(s) whose pids.max refused a fork (under ${prefix:-/})"
    grep -E "oom-kill:constraint=CONSTRAINT_MEMCG.*uid=60000$|fork rejected by pids controller" "$kmsg" | sed 's/^/    /'
    # The memory hogs and the fork bomb are in the sandbox suite.
    if [[ " $SLUICE_VM_TESTS" == *" sandbox|"* ]]; then
        [ "$jailed" -gt 0 ] || fail "layout $layout: no jailed program OOM-killed by a cgroup v2 execution cgroup (the memory hog did not hit memory.max)"
        [ "$forks" -gt 0 ] || fail "layout $layout: no fork refused by a cgroup v2 execution cgroup (the fork bomb did not hit pids.max)"
    fi
    local started v2 others
    # The start-up line of every test gateway, colours (if any) taken out.
    cat "$out/$layout"-*.log | sed 's/\x1b\[[0-9;]*m//g' | grep 'resource limits beyond rlimits' >"$out/$layout-gateways.txt"
    started=$(wc -l <"$out/$layout-gateways.txt")
    v2=$(grep 'memory=cgroup v2 memory' "$out/$layout-gateways.txt" | grep -c 'processes=cgroup v2 pids')
    say "layout $layout: test gateways started: $started, with cgroup v2 memory and pids limits: $v2"
    others=$(grep -v 'memory=cgroup v2 memory.*processes=cgroup v2 pids' "$out/$layout-gateways.txt" |
        sed -E 's/.*(memory=.*) processes=.*/\1/' | sort | uniq -c)
    [ -z "$others" ] || say "layout $layout: the others (gateways configured with --isolation none have no cgroup): $others"
    [ "$started" -eq 0 ] || [ "$v2" -gt 0 ] || fail "layout $layout: no test gateway used cgroup v2 memory and pids limits"
    # A gateway with a v2 cgroup (cgroup.kill) but without v2 memory or pids limits did
    # not manage to delegate the controllers: its limits fell back to rlimits.
    local fallback
    fallback=$(grep 'kill_tree=cgroup v2' "$out/$layout-gateways.txt" |
        grep -vc 'memory=cgroup v2 memory.*processes=cgroup v2 pids')
    [ "$fallback" -eq 0 ] || fail "layout $layout: $fallback test gateway(s) with a v2 cgroup fell back to rlimits for memory and processes: $(cat "$out/$layout"-*.log | grep -m1 'could not be delegated')"
}

dmesg -c >/dev/null
# The layouts this VM runs.
layouts=$(sed -n 's/.*sluice_vm_layouts=\([ab]*\).*/\1/p' /proc/cmdline)

if [[ ${layouts:-ab} == *a* ]]; then
    say "=== layout a: the test process in the root cgroup"
    doctor a "$cgroot"
    run_tests a
    evidence a ""
fi

if [[ ${layouts:-ab} == *b* ]]; then
    say "=== layout b: the test process in $cgroot/sluice.service (a systemd-like service cgroup)"
    mkdir "$cgroot/doctor.service"
    doctor b "$cgroot/doctor.service"
    remove_tree "$cgroot/doctor.service"
    run_tests b
    evidence b /sluice.service
fi

if [ ${#failures[@]} -eq 0 ]; then
    say "PASS: cgroup v2 limits hold (layouts: ${layouts:-ab})"
    echo pass >"$out/result"
else
    say "${#failures[@]} problem(s):"
    printf '    %s\n' "${failures[@]}"
    echo fail >"$out/result"
fi
sync
busybox poweroff -f
