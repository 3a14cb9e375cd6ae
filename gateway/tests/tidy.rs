//! Tidy: the structural rules of the workspace, checked by reading its sources.
//!
//! ARCHITECTURE.md states these rules; this test keeps them true. Each is an absence:
//!
//! - the gateway's top-level modules form a DAG (no module reaches itself through
//!   `crate::` paths), and some edges are forbidden outright ([`FORBIDDEN`]): an
//!   execution never names its session or a connection, a session never names a
//!   connection, fan-out names no session, execution or connection, `config` names no
//!   other module, `sys` names none;
//! - `sandbox` and `sys` never see the wire format (`sluice_protocol`);
//! - `sluice-protocol` is a leaf: its only required dependencies are serde and
//!   serde_json, and its sources do no I/O;
//! - only `gateway/src/sys/` and the jail (`gateway/src/bin/sluice-jail/`) hold
//!   `unsafe` among the shipped sources (test code may, with a reason).
//!
//! A module's edges are the first segments of its `crate::` paths (brace groups
//! included, names re-exported at the crate root resolved through `lib.rs`), outside
//! comments and unit-test modules (`tests.rs`, `tests/`), which may build anything. The reader is deliberately simple: it is a lint, not a parser.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Edges that must not exist, with the reason a failure prints.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    (
        "execution",
        "session",
        "an execution sees its session only through execution::Owner",
    ),
    ("execution", "connection", "executions outlive sockets"),
    ("session", "connection", "sessions outlive sockets"),
    (
        "fanout",
        "session",
        "fan-out is below sessions: a stream knows readers, not sessions",
    ),
    ("fanout", "execution", "fan-out is below executions"),
    (
        "fanout",
        "connection",
        "fan-out knows a socket only as a SocketId",
    ),
    (
        "sandbox",
        "execution",
        "the sandbox isolates processes; it does not run executions",
    ),
    (
        "sandbox",
        "session",
        "the sandbox knows nothing of sessions",
    ),
    (
        "sandbox",
        "connection",
        "the sandbox knows nothing of sockets",
    ),
    (
        "workspace",
        "execution",
        "a workspace is a session's directory; executions use it, not the other way",
    ),
    (
        "workspace",
        "session",
        "a workspace knows nothing of sessions",
    ),
    (
        "workspace",
        "connection",
        "a workspace knows nothing of sockets",
    ),
];

/// Modules that name no other module of the gateway.
const LEAVES: &[&str] = &["config", "sys", "io_hook", "leftovers"];

/// Modules that never see the wire format.
const NO_PROTOCOL: &[&str] = &["sandbox", "sys"];

/// Where `unsafe` may be written in shipped sources.
/// The command line's terminal settings (raw mode, the window size) are the one place
/// outside the gateway: `sluice run -t` and `sluice shell` drive this process's own
/// terminal, which no crate of the workspace otherwise touches.
const UNSAFE_ALLOWED: &[&str] = &[
    "gateway/src/sys/",
    "gateway/src/bin/sluice-jail/",
    "cli/src/terminal/raw.rs",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("the gateway crate has a parent directory"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// The source without `//` comments (doc comments included) and string literals, so
/// that prose and messages naming a path are not taken for code.
fn code_only(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '/' if chars.peek() == Some(&'/') => break,
                '"' => {
                    in_string = true;
                    out.push_str("\"\"");
                }
                _ => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

/// The first path segment of every `crate::` path in `code` (each item of a brace group).
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let macro_path = rest[..at].ends_with('$');
        let ident_before = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if macro_path || ident_before {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = group.len();
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            let mut depth = 0;
            let mut items = vec![String::new()];
            for c in group[..end].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(String::new()),
                    _ => {}
                }
                if let Some(item) = items.last_mut() {
                    item.push(c);
                }
            }
            for item in items {
                let ident = leading_ident(item.trim_start_matches([',', ' ', '\n', '\t']));
                if !ident.is_empty() {
                    found.insert(ident);
                }
            }
            continue;
        }
        let ident = leading_ident(rest);
        if !ident.is_empty() {
            found.insert(ident);
        }
    }
    found
}

/// A unit-test module: `tests.rs`, or a file under a `tests/` folder of a module.
fn is_test_module(file: &Path) -> bool {
    file.file_name().is_some_and(|name| name == "tests.rs")
        || file.components().any(|part| part.as_os_str() == "tests")
}

fn leading_ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Names `lib.rs` re-exports (`pub use module::{Name, ...}`), mapped to their module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let code = code_only(lib);
    let mut rest = code.as_str();
    while let Some(at) = rest.find("pub use ") {
        rest = &rest[at + "pub use ".len()..];
        let Some(end) = rest.find(';') else { break };
        let statement: String = rest[..end].split_whitespace().collect();
        let module = leading_ident(&statement);
        let names = statement[module.len()..].trim_start_matches("::");
        let names = names.trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            let name = name.rsplit("::").next().unwrap_or(name);
            if !name.is_empty() {
                map.insert(name.to_owned(), module.clone());
            }
        }
    }
    map
}

/// The gateway library's top-level modules and the modules each one names.
fn gateway_graph() -> BTreeMap<String, BTreeSet<String>> {
    module_graph(&workspace().join("gateway/src"))
}

/// A library's top-level modules (from its `lib.rs`) and the modules each one names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let lib = read(&src.join("lib.rs"));
    let reexports = root_reexports(&lib);
    let modules: BTreeSet<String> = code_only(&lib)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("pub ").unwrap_or(line);
            line.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_owned)
        })
        .collect();
    assert!(
        modules.len() > 5,
        "found only {modules:?} in {}: has the reader broken?",
        src.display()
    );
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut files = Vec::new();
        rust_files(&src.join(module), &mut files);
        let single = src.join(format!("{module}.rs"));
        if single.exists() {
            files.push(single);
        }
        let mut edges = BTreeSet::new();
        // Unit-test modules may build the whole gateway (connection's fake-peer tests
        // use `server::build`): they are not part of the structure.
        files.retain(|file| !is_test_module(file));
        for file in files {
            for name in crate_references(&code_only(&read(&file))) {
                let target = if modules.contains(&name) {
                    Some(name)
                } else {
                    reexports.get(&name).cloned()
                };
                if let Some(target) = target.filter(|t| t != module) {
                    edges.insert(target);
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

/// A cycle through `start`, if there is one: the path back to it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_owned());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

/// Every cycle of `graph`, each written `a -> b -> a`.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    graph
        .keys()
        .filter_map(|module| cycle_from(graph, module))
        .map(|cycle| cycle.join(" -> "))
        .collect()
}

#[test]
fn the_gateway_modules_form_a_dag() {
    let graph = gateway_graph();
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "the gateway's module graph has cycles (break them: move the shared type down, \
         or hand the lower module a narrow interface):\n  {}",
        cycles.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn no_forbidden_edge() {
    let graph = gateway_graph();
    let mut broken = Vec::new();
    for (from, to, why) in FORBIDDEN {
        if graph.get(*from).is_some_and(|edges| edges.contains(*to)) {
            broken.push(format!("{from} -> {to}: {why}"));
        }
    }
    for leaf in LEAVES {
        if let Some(edges) = graph.get(*leaf).filter(|edges| !edges.is_empty()) {
            broken.push(format!(
                "{leaf} must name no other module, but names {edges:?}"
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "forbidden edges:\n  {}",
        broken.join("\n  ")
    );
}

/// The Rust client's handles (what a user holds) and its connection task meet only
/// through the modules below both; only `client` starts the task.
const CLIENT_HANDLES: &[&str] = &["client", "execution", "session"];
const CLIENT_BELOW: &[&str] = &[
    "command",
    "shared",
    "synthetic",
    "queue",
    "options",
    "error",
    "outcome",
];

#[test]
fn the_rust_client_modules_form_a_dag_with_the_task_below_the_handles() {
    let graph = module_graph(&workspace().join("clients/rust/src"));
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "the Rust client's module graph has cycles:\n  {}",
        cycles.into_iter().collect::<Vec<_>>().join("\n  ")
    );
    let mut broken = Vec::new();
    for (module, edges) in &graph {
        let forbidden: Vec<&str> = if module == "connection" {
            CLIENT_HANDLES.to_vec()
        } else if CLIENT_BELOW.contains(&module.as_str()) {
            CLIENT_HANDLES
                .iter()
                .chain(["connection"].iter())
                .copied()
                .collect()
        } else if module != "client" && CLIENT_HANDLES.contains(&module.as_str()) {
            vec!["connection"]
        } else {
            Vec::new()
        };
        for target in forbidden.into_iter().filter(|t| edges.contains(*t)) {
            broken.push(format!("{module} -> {target}"));
        }
    }
    assert!(
        broken.is_empty(),
        "in clients/rust the connection task must not name a handle, the modules below \
         must name neither, and only `client` starts the task:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn sandbox_and_sys_never_see_the_wire_format() {
    let src = workspace().join("gateway/src");
    let mut offenders = Vec::new();
    for module in NO_PROTOCOL {
        let mut files = Vec::new();
        rust_files(&src.join(module), &mut files);
        for file in files {
            if code_only(&read(&file)).contains("sluice_protocol") {
                offenders.push(file.display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "these files name sluice_protocol: the sandbox and sys work on processes, \
         never on frames or events:\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn protocol_is_a_leaf() {
    let root = workspace().join("protocol");
    let manifest = read(&root.join("Cargo.toml"));
    let mut section = String::new();
    let mut required = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section == "[dependencies]" && !line.is_empty() && !line.starts_with('#') {
            let name = line
                .split(['=', ' ', '.'])
                .next()
                .unwrap_or(line)
                .to_owned();
            if !line.contains("optional = true") {
                required.push(name);
            }
        }
    }
    let allowed = ["serde", "serde_json"];
    let extra: Vec<&String> = required
        .iter()
        .filter(|d| !allowed.contains(&d.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "sluice-protocol must depend on serde and serde_json only (optional features \
         aside), but requires {extra:?}"
    );
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let io = [
        "tokio",
        "std::fs",
        "std::net",
        "std::process",
        "std::io::Read",
        "std::thread",
    ];
    for file in files {
        let code = code_only(&read(&file));
        for needle in io {
            assert!(
                !code.contains(needle),
                "{} uses {needle}: the protocol crate holds types, not I/O",
                file.display()
            );
        }
    }
}

#[test]
fn only_sys_and_the_jail_hold_unsafe() {
    let root = workspace();
    let mut shipped = Vec::new();
    for dir in [
        "gateway/src",
        "protocol/src",
        "clients/rust/src",
        "cli/src",
        "bench/src",
    ] {
        rust_files(&root.join(dir), &mut shipped);
    }
    assert!(
        shipped.len() > 20,
        "found only {} source files",
        shipped.len()
    );
    let mut offenders = Vec::new();
    for file in shipped {
        let relative = file
            .strip_prefix(&root)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if UNSAFE_ALLOWED.iter().any(|dir| relative.starts_with(dir)) {
            continue;
        }
        let code = code_only(&read(&file));
        let holds = code
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|word| word == "unsafe")
            || code.contains("unsafe_code");
        if holds {
            offenders.push(relative);
        }
    }
    assert!(
        offenders.is_empty(),
        "unsafe outside gateway/src/sys, the jail and the CLI's raw mode (move it into \
         sys/ behind a safe function):\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn the_reader_sees_paths_groups_and_reexports() {
    let code = code_only(
        "use crate::{a::X, b, c::{D, E}};\n// crate::commented\nlet s = \"crate::quoted\";\nfn f() -> crate::Config { $crate::m!() }\nuse crate::d::Y;",
    );
    let found = crate_references(&code);
    let want: BTreeSet<String> = ["a", "b", "c", "Config", "d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, want);
    let map = root_reexports("pub use config::{Config, Isolation};\npub use server::run;");
    assert_eq!(map.get("Config").map(String::as_str), Some("config"));
    assert_eq!(map.get("run").map(String::as_str), Some("server"));
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        cycle_from(&graph, "a").map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_owned())
    );
    assert_eq!(cycle_from(&graph, "d"), None);
}
