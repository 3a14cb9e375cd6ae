//! The cgroup v2 path against a directory laid out like cgroupfs: what is written and
//! how the kernel's counters are read. (These machines mount memory and pids as v1,
//! so the v2 limits never run against a kernel in the end-to-end suite.)
use super::*;

/// A scratch directory standing in for a v2 cgroup; removed on drop.
struct FakeCgroup(PathBuf);

impl FakeCgroup {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sluice-fake-cgroup-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }

    fn write(&self, file: &str, text: &str) {
        fs::write(self.0.join(file), text).expect("write a fake cgroup file");
    }

    fn read(&self, file: &str) -> String {
        fs::read_to_string(self.0.join(file)).unwrap_or_default()
    }
}

impl Drop for FakeCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn v2_group(fake: &FakeCgroup) -> ExecutionCgroup {
    ExecutionCgroup {
        members: Members {
            unified: Some(Member {
                dir: fake.0.clone(),
                home: fake.0.clone(),
            }),
            ..Members::default()
        },
        limits_v2: (true, true),
        processes: 16,
        cpu_share: false,
        shared_cpu: None,
        own_cpu: Default::default(),
        helpers: 0,
        heavy: Default::default(),
        removed: true, // nothing to remove or recycle in a scratch directory
        pool: None,
        watcher: None,
        baseline: Counters::default(),
        peak: None,
    }
}

#[test]
fn v2_limits_are_written_and_its_counters_read() {
    let fake = FakeCgroup::new("limits");
    let mut group = v2_group(&fake);
    group.set_limits(256 << 20, 16).expect("limits written");
    assert_eq!(fake.read("memory.max"), (256u64 << 20).to_string());
    assert_eq!(fake.read("memory.swap.max"), "0");
    assert_eq!(fake.read("pids.max"), "16");
    fake.write("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n");
    fake.write("pids.events", "max 3\n");
    fake.write(
        "cpu.stat",
        "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
    );
    fake.write("memory.peak", "123456\n");
    group.open_counters();
    // A reused cgroup: what was counted before this execution does not count.
    group.baseline = Counters {
        oom_kills: 2,
        failed_forks: 1,
        cpu_usec: 500_000,
    };
    let hit = group.limits_hit();
    assert!(!hit.oom_killed && hit.process_limit_hit, "{hit:?}");
    let cpu = group.cpu_seen().expect("v2 counts CPU time");
    assert_eq!((cpu.used_usec, cpu.heavy), (1_000_000, true));
    let report = group.report();
    assert!(!report.oom_killed, "no new OOM kill since the baseline");
    assert!(report.process_limit_hit);
    assert_eq!(report.cpu_usec, Some(1_000_000));
    assert_eq!(report.peak_memory_bytes, Some(123_456));
    group.kill_all();
    assert_eq!(fake.read("cgroup.kill"), "1");
}

#[test]
fn a_gateway_already_in_its_own_leaf_delegates_from_the_leafs_parent() {
    let leaf = own_leaf_name();
    assert_eq!(
        without_own_leaf(&format!("system.slice/s.service/{leaf}")),
        "system.slice/s.service"
    );
    assert_eq!(without_own_leaf(&leaf), "");
    assert_eq!(
        without_own_leaf("system.slice/s.service"),
        "system.slice/s.service"
    );
    assert_eq!(without_own_leaf("a/sluice-1-gateway"), "a/sluice-1-gateway");
    assert_eq!(without_own_leaf(""), "");
}

/// Runs `command` with `sh` inside `group` (moved in before it starts) and waits.
fn run_inside(group: &ExecutionCgroup, command: &str) -> std::process::ExitStatus {
    use std::process::{Command, Stdio};
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("read _ && exec {command}"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh starts");
    let dir = group.unified_dir().expect("a v2 cgroup");
    fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("into the cgroup");
    let mut go = child.stdin.take().expect("stdin");
    go.write_all(b"go\n").expect("go");
    drop(go);
    child.wait().expect("reaped")
}

/// The v2 path against the running kernel, where this process can make cgroups with
/// memory and pids delegated (root on a host whose only hierarchy is cgroup2:
/// scripts/vm/cgroup2-check.sh boots one); skipped elsewhere.
#[test]
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn on_a_real_v2_hierarchy_the_limits_hold_and_a_reused_cgroup_counts_afresh() {
    let cgroups = Cgroups::probe();
    let v2_only = cgroups.memory.is_none() && cgroups.pids.is_none();
    if !(v2_only && cgroups.unified.as_ref().is_some_and(|u| u.memory && u.pids)) {
        cgroups.remove();
        eprintln!("skipped: no cgroup v2 hierarchy with memory and pids to delegate here");
        return;
    }
    // Another gateway of this process (the first may have moved it into a leaf)
    // delegates from the same place.
    let again = Cgroups::probe();
    let parent = |c: &Cgroups| {
        c.unified
            .as_ref()
            .and_then(|u| u.ours.parent().map(Path::to_path_buf))
    };
    assert!(again.unified.as_ref().is_some_and(|u| u.memory && u.pids));
    assert_eq!(parent(&again), parent(&cgroups));
    again.remove();

    // dd touches a 64 MiB buffer.
    let hog = "dd if=/dev/zero of=/dev/null bs=64M count=1";
    let first = cgroups
        .create(256 << 20, 16)
        .expect("create")
        .expect("a cgroup");
    assert!(run_inside(&first, hog).success());
    let report = first.report();
    assert!(
        report
            .peak_memory_bytes
            .is_some_and(|peak| peak >= 64 << 20),
        "{report:?}"
    );
    assert!(report.cpu_usec.is_some(), "{report:?}");
    drop(first);
    // The next execution (in the same cgroup where its peak can be reset) counts its own.
    let second = cgroups
        .create(256 << 20, 16)
        .expect("create")
        .expect("a cgroup");
    assert!(run_inside(&second, "true").success());
    let report = second.report();
    assert!(
        report.peak_memory_bytes.is_some_and(|peak| peak < 32 << 20),
        "an earlier execution's peak: {report:?}"
    );
    assert!(
        !report.oom_killed && !report.process_limit_hit,
        "{report:?}"
    );
    drop(second);

    // Without swap accounting a host with swap would page the hog out instead.
    let swap = fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
    let small = cgroups
        .create(32 << 20, 16)
        .expect("create")
        .expect("a cgroup");
    let swap_limited = small
        .unified_dir()
        .is_some_and(|dir| dir.join("memory.swap.max").exists());
    if !swap || swap_limited {
        assert!(!run_inside(&small, hog).success());
        assert!(small.report().oom_killed, "{:?}", small.report());
    }
    drop(small);

    let alone = cgroups
        .create(256 << 20, 1)
        .expect("create")
        .expect("a cgroup");
    // The shell is the one process: its fork fails.
    assert!(!run_inside(&alone, "sh -c '/bin/true; /bin/true'").success());
    assert!(alone.report().process_limit_hit, "{:?}", alone.report());
    drop(alone);
    cgroups.remove();
}

#[test]
fn v2_controllers_are_delegated_where_the_parent_has_them() {
    let home = FakeCgroup::new("home");
    let ours = home.0.join("ours");
    fs::create_dir_all(&ours).expect("ours");
    home.write("cgroup.controllers", "cpuset cpu io memory pids\n");
    assert_eq!(delegate(&home.0, &ours), (true, true, true));
    assert_eq!(home.read("cgroup.subtree_control"), "+memory +pids +cpu");
    assert_eq!(
        fs::read_to_string(ours.join("cgroup.subtree_control")).unwrap_or_default(),
        "+memory +pids +cpu"
    );
    home.write("cgroup.controllers", "cpu io\n");
    assert_eq!(delegate(&home.0, &ours), (false, false, true));
    home.write("cgroup.controllers", "io\n");
    assert_eq!(delegate(&home.0, &ours), (false, false, false));
}

/// The limit watcher wakes an execution whose fork or OOM counter moved past its
/// baseline, and its task ends once nothing is watched.
#[tokio::test(start_paused = true)]
async fn the_limit_watcher_wakes_the_execution_whose_counter_moved() {
    let fake = FakeCgroup::new("watch");
    fake.write("memory.events", "oom_kill 1\n");
    fake.write("pids.events", "max 2\n");
    let watcher = LimitWatcher::default();
    let mut quiet = v2_group(&fake);
    quiet.watcher = Some(watcher.clone());
    quiet.open_counters();
    quiet.baseline = quiet.counters();
    let quiet_watch = quiet.watch_limits().expect("inside a runtime");
    let other = FakeCgroup::new("watch-other");
    other.write("memory.events", "oom_kill 0\n");
    other.write("pids.events", "max 0\n");
    let mut busy = v2_group(&other);
    busy.watcher = Some(watcher.clone());
    busy.open_counters();
    busy.baseline = busy.counters();
    let busy_watch = busy.watch_limits().expect("inside a runtime");
    assert!(watcher.is_running());
    other.write("pids.events", "max 1\n");
    busy_watch.hit().await;
    assert!(busy.limits_hit().process_limit_hit);
    // Re-armed, it wakes again while the counter stays past the baseline.
    busy_watch.rearm();
    busy_watch.hit().await;
    assert!(
        !quiet.limits_hit().process_limit_hit,
        "the other cgroup did not move"
    );
    drop((quiet_watch, busy_watch));
    while watcher.is_running() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Review of the waiting jails: an operator's "unlimited" process count (u64::MAX), or
/// any count past the kernel's `PID_MAX_LIMIT`, is written as `max` (a number there
/// fails the write, and with it every warm entry's cgroup).
#[test]
fn a_process_count_past_the_kernels_limit_is_written_as_max() {
    assert_eq!(super::pids_max_value(64), "64");
    assert_eq!(super::pids_max_value((4 << 20) - 1), "4194303");
    assert_eq!(super::pids_max_value(4 << 20), "max");
    assert_eq!(super::pids_max_value(u64::MAX), "max");
}
