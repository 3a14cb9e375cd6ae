//! Unit tests of the warm pool's pure parts: the fallback decision, the header, the labels.

use super::*;
use sluice_protocol::Encoding;

fn python() -> Runtime {
    Runtime {
        name: "python".into(),
        program: "/usr/bin/python3".into(),
        args: vec![FILE_PLACEHOLDER.into()],
        file_name: "main.py".into(),
        env: vec![("PYTHONUNBUFFERED".into(), "1".into())],
        network: false,
        package_index: None,
        offline: false,
    }
}

fn limits() -> EffectiveLimits {
    entry_limits(&crate::config::LimitsConfig::default()).unwrap_or_else(|| panic!("limits"))
}

fn spec(runtime: Runtime, code: &str) -> ExecutionSpec {
    ExecutionSpec {
        id: "x".into(),
        principal: crate::admission::Principal::Address(std::net::Ipv4Addr::LOCALHOST.into()),
        runtime: Arc::new(runtime),
        code: code.into(),
        args: Vec::new(),
        env: Vec::new(),
        stdin: None,
        encoding: Encoding::Utf8,
        limits: crate::config::LimitsConfig::default()
            .resolve(&sluice_protocol::Limits::default())
            .unwrap_or_else(|err| panic!("{err}")),
        terminal: None,
        files: Vec::new(),
        workspace: None,
    }
}

#[test]
fn the_header_is_fixed_length_and_carries_the_length_and_the_rlimits() {
    let rlimits = sys::Rlimits {
        cpu_seconds: Some(2),
        file_size_bytes: Some(1 << 20),
        open_files: Some(64),
    };
    let header = header(1234, rlimits);
    assert_eq!(header.len(), HEADER_BYTES);
    assert_eq!(header[HEADER_BYTES - 1], b'\n');
    let text = std::str::from_utf8(&header).unwrap_or_default();
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields, ["SLUICE", "1234", "2", "1048576", "64"]);
    // The largest values still fit, with the newline last.
    let most = super::header(usize::MAX, sys::Rlimits::default());
    let text = std::str::from_utf8(&most).unwrap_or_default();
    assert_eq!(text.split_whitespace().count(), 5);
    assert!(text.ends_with('\n'));
}

#[test]
fn a_waiting_jail_reads_the_header_the_gateway_writes() {
    use crate::sandbox::jail::parse_go_header;
    let rlimits = sys::Rlimits {
        cpu_seconds: Some(2),
        file_size_bytes: None,
        open_files: Some(64),
    };
    assert_eq!(
        parse_go_header(&header(1234, rlimits)),
        Some([1234, 2, u64::MAX, 64])
    );
    let good = header(1, rlimits);
    let mut broken = Vec::new();
    for (at, byte) in [
        (0, b's'),
        (7, b'x'),
        (HEADER_BYTES - 1, b' '),
        (HEADER_BYTES - 3, b'7'),
    ] {
        let mut header = good;
        header[at] = byte;
        broken.push(header);
    }
    // A fifth number, and a number past u64.
    let mut extra = [b' '; HEADER_BYTES];
    extra[..17].copy_from_slice(b"SLUICE 1 2 3 4 5 ");
    extra[HEADER_BYTES - 1] = b'\n';
    broken.push(extra);
    let mut huge = [b' '; HEADER_BYTES];
    let text = b"SLUICE 1 2 3 18446744073709551616";
    huge[..text.len()].copy_from_slice(text);
    huge[HEADER_BYTES - 1] = b'\n';
    broken.push(huge);
    for header in &broken {
        assert_eq!(
            parse_go_header(header),
            None,
            "{:?}",
            String::from_utf8_lossy(header)
        );
    }
}

#[test]
fn a_plain_python_request_with_default_limits_is_warm() {
    let entry = limits();
    assert_eq!(
        fallback(
            WarmKind::Interpreter,
            &python(),
            &entry,
            Some(true),
            &spec(python(), "print(1)")
        ),
        None
    );
    // Lower limits are set at the claim.
    let mut lower = spec(python(), "print(1)");
    lower.limits.memory_bytes = 16 << 20;
    lower.limits.cpu_ms = 100;
    lower.limits.processes = 1;
    assert_eq!(
        fallback(WarmKind::Interpreter, &python(), &entry, Some(true), &lower),
        None
    );
}

#[test]
fn what_changes_the_start_falls_back_to_cold() {
    let entry = limits();
    let check = |spec: &ExecutionSpec, lowers: bool| {
        fallback(WarmKind::Interpreter, &python(), &entry, Some(lowers), spec)
    };
    let mut env = spec(python(), "");
    env.env.push(("A".into(), "1".into()));
    assert_eq!(check(&env, true), Some(Miss::Env));
    let mut args = spec(python(), "");
    args.args.push("a".into());
    assert_eq!(check(&args, true), Some(Miss::Args));
    let networked = Runtime {
        network: true,
        ..python()
    };
    assert_eq!(check(&spec(networked, ""), true), Some(Miss::Runtime));
    let offline = python().without_network();
    assert_eq!(check(&spec(offline, ""), true), Some(Miss::Runtime));
    let bash = Runtime {
        name: "bash".into(),
        ..python()
    };
    assert_eq!(check(&spec(bash, ""), true), Some(Miss::Runtime));
    let mut workspace = spec(python(), "");
    workspace.limits.workspace_bytes += 1;
    assert_eq!(check(&workspace, true), Some(Miss::Limits));
    let mut memory = spec(python(), "");
    memory.limits.memory_bytes = entry.memory_bytes + 1;
    assert_eq!(check(&memory, true), Some(Miss::Limits));
    // Fewer processes need a cgroup that counts them.
    let mut processes = spec(python(), "");
    processes.limits.processes = entry.processes - 1;
    assert_eq!(check(&processes, false), Some(Miss::Limits));
    assert_eq!(check(&processes, true), None);
    // Not known before the first entry started (the pool is empty then).
    assert_eq!(
        fallback(WarmKind::Interpreter, &python(), &entry, None, &processes),
        None
    );
    let big = "x".repeat(STDIN_PIPE_BYTES);
    assert_eq!(check(&spec(python(), &big), true), Some(Miss::Code));
}

#[test]
fn the_markers_have_the_same_length() {
    assert_eq!(WARM_READY.len(), TOO_OLD.len());
    assert!(
        BOOTSTRAP.contains(std::str::from_utf8(&WARM_READY[..WARM_READY.len() - 1]).unwrap_or("?"))
    );
    assert!(BOOTSTRAP.contains(std::str::from_utf8(&TOO_OLD[..TOO_OLD.len() - 1]).unwrap_or("?")));
}

#[test]
fn the_metric_labels_are_the_reasons() {
    let misses: Vec<&str> = Miss::ALL.iter().map(|m| m.as_str()).collect();
    assert_eq!(misses, crate::observe::metrics::WARM_MISS_REASONS);
    let discards: Vec<&str> = Discard::ALL.iter().map(|d| d.as_str()).collect();
    assert_eq!(discards, crate::observe::metrics::WARM_DISCARD_REASONS);
}

#[test]
fn only_python_run_as_interpreter_and_file_gets_warm_interpreters() {
    assert_eq!(kind_for(&python()), WarmKind::Interpreter);
    let wrapped = Runtime {
        args: vec!["-X".into(), "dev".into(), FILE_PLACEHOLDER.into()],
        ..python()
    };
    assert_eq!(kind_for(&wrapped), WarmKind::Jail);
    let node = Runtime {
        name: "node".into(),
        file_name: "main.js".into(),
        ..python()
    };
    assert_eq!(kind_for(&node), WarmKind::Jail);
}

#[test]
fn a_waiting_jail_takes_any_code_its_file_size_limit_allows() {
    let entry = limits();
    let sh = Runtime {
        name: "sh".into(),
        program: "/bin/sh".into(),
        file_name: "main.sh".into(),
        env: Vec::new(),
        ..python()
    };
    let check = |code: &str| {
        fallback(
            WarmKind::Jail,
            &sh,
            &entry,
            Some(true),
            &spec(sh.clone(), code),
        )
    };
    // What a Python entry refuses, a waiting jail writes as it is.
    assert_eq!(check("# coding: latin-1\necho x"), None);
    assert_eq!(check("printf 'a\0b'"), None);
    let small = EffectiveLimits {
        file_size_bytes: 4,
        ..entry
    };
    let mut asked = spec(sh.clone(), "echo x");
    asked.limits.file_size_bytes = 4;
    let over = fallback(WarmKind::Jail, &sh, &small, Some(true), &asked);
    assert_eq!(over, Some(Miss::Code));
}

#[test]
fn code_declaring_its_encoding_starts_cold() {
    let entry = limits();
    let check = |spec: &ExecutionSpec, lowers: bool| {
        fallback(WarmKind::Interpreter, &python(), &entry, Some(lowers), spec)
    };
    for code in [
        "# coding: latin-1\nprint(1)\n",
        "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n",
        "\u{feff}# coding: latin-1\nprint(1)\n",
        "\x0c# vim: set fileencoding=utf-8 :\n",
    ] {
        assert_eq!(
            check(&spec(python(), code), true),
            Some(Miss::Code),
            "{code:?}"
        );
    }
    for code in [
        "print(1)\n",
        "x = 1\n\n# coding: latin-1 (third line: not a declaration)\n",
    ] {
        assert_eq!(check(&spec(python(), code), true), None, "{code:?}");
    }
}
