//! Unit tests of the jail's contract: the spec file, the report, subordinate ids.

use super::*;

#[test]
fn a_spec_survives_its_arguments() {
    let spec = JailSpec {
        host_dir: "/dev/shm/sluice-1-2/x3".into(),
        source: Some("main.py".into()),
        workspace: "/dev/shm/sluice-1-2/x3".into(),
        scratch_bytes: 64 << 20,
        uid: 60_000,
        gid: 60_000,
        map_to: Some((165_536, 165_536)),
        no_network: true,
        expose: vec!["/root/.pyenv/versions/3.11.7".into()],
        hide: vec!["/home/gateway".into()],
        ptys: Some(2),
        rlimits: vec![
            (RlimitName::Cpu, 2),
            (RlimitName::OpenFiles, 64),
            (RlimitName::Processes, 16),
        ],
        keep_fd: Some(3),
        network_fd: Some(41),
        env: vec!["PATH=/usr/bin".into(), "LD_PRELOAD=/x y".into()],
        nice: Some(10),
        wait_for_go: Some("main.py".into()),
        terminal: true,
        shared_workspace: true,
        files: Some("files.bundle".into()),
        command: vec!["/usr/bin/python3".into(), "--".into(), "main.py".into()],
    };
    assert_eq!(JailSpec::parse(spec.to_args()).unwrap(), spec);
}

#[test]
fn a_warm_start_writes_only_a_file_name_in_the_workspace() {
    let spec = |name: &str| JailSpec {
        host_dir: "/dev/shm/x".into(),
        workspace: "/dev/shm/x".into(),
        uid: 60_000,
        gid: 60_000,
        wait_for_go: Some(name.into()),
        command: vec!["/bin/sh".into()],
        ..JailSpec::default()
    };
    assert!(JailSpec::parse(spec("main.sh").to_args()).is_ok());
    for name in ["../main.sh", "a/main.sh", "/etc/passwd", ".", "..", ""] {
        let refused = JailSpec::parse(spec(name).to_args());
        assert!(refused.is_err(), "{name:?}: {refused:?}");
    }
}

#[test]
fn a_later_variable_replaces_an_earlier_one() {
    let env = environment([("PATH", "/a"), ("HOME", "/h"), ("PATH", "/b")]);
    assert_eq!(env, ["PATH=/b", "HOME=/h"].map(OsString::from));
}

/// A spec whose host directory and workspace are `dir`, for the sandbox user.
fn spec_in(dir: &std::path::Path) -> JailSpec {
    JailSpec {
        host_dir: dir.to_path_buf(),
        workspace: dir.to_path_buf(),
        uid: 60_000,
        gid: 60_000,
        ..JailSpec::default()
    }
}

#[test]
fn a_spec_survives_its_file_and_the_file_is_gone() {
    let dir = std::env::temp_dir().join(format!("sluice-spec-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = JailSpec {
        env: vec!["A=1".into(), "EMPTY=".into()],
        command: vec!["/bin/true".into(), "".into(), "x y".into()],
        ..spec_in(&dir)
    };
    let args = spec.write(&dir).unwrap();
    assert_eq!(args, [SPEC_FLAG, SPEC_FILE].map(OsString::from));
    let euid = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(dir.join(SPEC_FILE)).unwrap().uid()
    };
    let cwd_args = vec![SPEC_FLAG.into(), dir.join(SPEC_FILE).into_os_string()];
    assert!(
        JailSpec::from_command_line(cwd_args.clone(), euid.wrapping_add(1)).is_err(),
        "a file of another user's is refused"
    );
    assert_eq!(JailSpec::from_command_line(cwd_args, euid).unwrap(), spec);
    assert!(!dir.join(SPEC_FILE).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The spec file separates its arguments with NULs: an entry holding one (an
/// environment value the protocol's check missed, an operator's `--env`) would add
/// flags of its own, `--network-fd` of another jail's namespace among them. Refused
/// when written (second review; the protocol refuses NULs in `env` and `args`).
#[test]
fn an_entry_holding_a_nul_is_refused_not_split_into_flags() {
    let dir = std::env::temp_dir().join(format!("sluice-spec-nul-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = JailSpec {
        no_network: true,
        env: vec!["A=1\0--network-fd\x007".into()],
        command: vec!["/bin/true".into()],
        ..spec_in(&dir)
    };
    let written = spec.write(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(written.is_err(), "written: {written:?}");
}

#[test]
fn root_and_missing_programs_are_refused() {
    let mut spec = JailSpec {
        host_dir: "/w".into(),
        workspace: "/w".into(),
        uid: 0,
        gid: 1,
        command: vec!["/bin/true".into()],
        ..JailSpec::default()
    };
    assert!(JailSpec::parse(spec.to_args()).is_err());
    spec.uid = 1;
    spec.command.clear();
    assert!(JailSpec::parse(spec.to_args()).is_err());
}

#[test]
fn a_report_survives_its_text() {
    let report = JailReport {
        setup_failed: Some("mount /proc: EPERM\nsecond line".into()),
        scratch_used_bytes: 10,
        scratch_full: true,
        largest_file_bytes: 7,
    };
    let read = JailReport::parse(&report.render());
    assert_eq!(
        read.setup_failed.as_deref(),
        Some("mount /proc: EPERM second line")
    );
    assert_eq!(
        (
            read.scratch_used_bytes,
            read.scratch_full,
            read.largest_file_bytes
        ),
        (10, true, 7)
    );
}

#[test]
fn a_subordinate_range_is_found_by_name_or_number() {
    let table = "# comment\nalice:100000:65536\n1001:300000:65536\nempty:400000:0\n";
    assert_eq!(first_subordinate(table, "alice", "1000"), Some(100_000));
    assert_eq!(first_subordinate(table, "bob", "1001"), Some(300_000));
    assert_eq!(
        first_subordinate(table, "empty", "1002"),
        None,
        "no ids in it"
    );
    assert_eq!(first_subordinate(table, "carol", "1003"), None);
}

#[test]
fn a_bundle_gives_back_its_files_and_refuses_what_is_not_one() {
    let dir = std::env::temp_dir().join(format!("sluice-bundle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(FILES_BUNDLE);
    let files = vec![
        ("pkg/util.py".to_owned(), "X = 1\n".to_owned()),
        ("é/empty".to_owned(), String::new()),
    ];
    write_bundle(&path, &files).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let read = read_bundle(&bytes).unwrap();
    assert_eq!(
        read,
        vec![("pkg/util.py", &b"X = 1\n"[..]), ("é/empty", &b""[..])]
    );
    // Cut short, or a path that climbs out: refused, whatever wrote it.
    assert!(read_bundle(&bytes[..bytes.len() - 1]).is_err());
    let mut climbing = Vec::new();
    climbing.extend_from_slice(&5_u32.to_le_bytes());
    climbing.extend_from_slice(b"../x1");
    climbing.extend_from_slice(&0_u64.to_le_bytes());
    assert!(read_bundle(&climbing).unwrap_err().contains(".."));
    // Written into a directory: parents made, nothing through a link.
    let target = dir.join("work");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink("/etc", target.join("up")).unwrap();
    write_files(&target, read.iter().copied(), None, false).unwrap();
    assert_eq!(
        std::fs::read(target.join("pkg/util.py")).unwrap(),
        b"X = 1\n"
    );
    assert!(write_files(&target, [("up/passwd", &b"x"[..])], None, false).is_err());
    assert!(write_files(&target, [("up", &b"x"[..])], None, false).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
