//! The crate's module graph, checked: it has no cycle, and the connection task and the
//! handles meet only through the modules below both (`command`, `shared`, `synthetic`,
//! `queue`, ...), never through each other: only `client` starts the task. Read from the
//! sources (the `crate::` paths of code, not of comments), so a new `use` that breaks a
//! rule fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The handles' modules: the connection task never imports them.
const HANDLES: [&str; 3] = ["client", "execution", "session"];

/// The connection task.
const TASK: &str = "connection";

/// The modules below the handles and the task: they import neither.
const BELOW: [&str; 7] = [
    "command",
    "shared",
    "synthetic",
    "queue",
    "options",
    "error",
    "outcome",
];

/// The names `lib.rs` re-exports at the crate root, by the module that defines them.
const REEXPORTS: [(&str, &str); 9] = [
    ("Client", "client"),
    ("SocketEvents", "client"),
    ("ClientError", "error"),
    ("Execution", "execution"),
    ("ClientOptions", "options"),
    ("Reconnect", "options"),
    ("Outcome", "outcome"),
    ("SessionEvents", "session"),
    ("is_synthetic", "synthetic"),
];

/// The top-level module each `crate::` path of `code` names (a re-exported name counts
/// for the module that defines it; `protocol` is the re-exported protocol crate).
fn dependencies(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let names = if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::B, C, d::{e, F}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut items = vec![String::new()];
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(String::new()),
                    _ if depth == 0 => {
                        if let Some(item) = items.last_mut() {
                            item.push(c);
                        }
                    }
                    _ => {}
                }
            }
            items
        } else {
            vec![rest.to_owned()]
        };
        for name in names {
            let first: String = name
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let module = REEXPORTS
                .iter()
                .find(|(reexport, _)| *reexport == first)
                .map_or(first.as_str(), |(_, module)| module);
            if !module.is_empty() && module != "protocol" {
                found.insert(module.to_owned());
            }
        }
    }
    found
}

/// The code of a source file, without its comments (doc links are not dependencies).
fn code_of(source: &str) -> String {
    source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every top-level module of the crate (but `tests`) and the modules it imports.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(&src).unwrap();
            let top = relative.components().next().unwrap().as_os_str();
            let module = Path::new(top).file_stem().unwrap().to_string_lossy();
            if module == "tests" || module == "lib" {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            // A file's own tests may use anything.
            let source = source.split("#[cfg(test)]").next().unwrap_or_default();
            let mut imports = dependencies(&code_of(source));
            imports.remove(module.as_ref());
            graph
                .entry(module.into_owned())
                .or_default()
                .extend(imports);
        }
    }
    graph
}

/// A cycle of `graph`, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

#[test]
fn the_paths_of_code_are_read_as_modules() {
    let code = "use crate::command::{call, Command};\nuse crate::{ClientError, queue::{A, B}, shared::Shared};\nlet x = crate::synthetic::gap_event(1);\nuse crate::protocol::Event;";
    let found: Vec<String> = dependencies(code).into_iter().collect();
    assert_eq!(
        found,
        ["command", "error", "queue", "shared", "synthetic"].map(String::from)
    );
    assert!(dependencies(&code_of("/// see [`crate::Client`]\nfn f() {}")).is_empty());
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = module_graph();
    assert!(graph.contains_key("connection") && graph.contains_key("client"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_connection_task_and_the_handles_meet_only_through_the_modules_below() {
    let graph = module_graph();
    for (module, imports) in &graph {
        let forbidden: Vec<&str> = match module.as_str() {
            // Only a `Client` starts the connection task.
            "client" => Vec::new(),
            "execution" | "session" => vec![TASK, "client"],
            TASK => HANDLES.to_vec(),
            below if BELOW.contains(&below) => HANDLES.iter().copied().chain([TASK]).collect(),
            other => panic!("module {other} is in no list of this test: add it to one"),
        };
        for edge in imports {
            assert!(
                !forbidden.contains(&edge.as_str()),
                "{module} must not import {edge} (it imports {imports:?})"
            );
        }
    }
}
