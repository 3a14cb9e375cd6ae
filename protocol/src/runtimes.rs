//! What a gateway offers a caller: the languages it runs and the limits a request may
//! ask for. The answer to a `runtimes` frame (a `runtimes` event) and to
//! `GET /v1/runtimes` ([`Catalog`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One language a gateway runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RuntimeInfo {
    /// The name an `execute` gives as its `language`.
    pub language: String,
    /// The interpreter's own account of its version (the first line it prints for
    /// `--version`), when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A Python interpreter's packages (every distribution it imports from, a virtual
    /// environment's included), sorted by name; absent for other languages, or when the
    /// interpreter did not list them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<PackageInfo>>,
    /// The file the code is written to, in the program's working directory.
    pub file_name: String,
    /// That file's extension, without the dot (empty when it has none).
    pub extension: String,
    /// `persistent: true` works: a session keeps one interpreter whose state lives
    /// from cell to cell.
    pub persistent: bool,
    /// A program can run on a terminal (`tty: true`). True for every language whose
    /// programs run as processes of their own.
    pub tty: bool,
    /// Its programs may reach the network (the caller's credential may still take it
    /// away; this says what the caller gets).
    pub network: bool,
    /// The package index pip installs from, when the operator offers the runtime one
    /// (`--package-index`); in a session that keeps a workspace, into the session's own
    /// package layer (PROTOCOL.md 11.2, "Packages").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_index: Option<String>,
}

/// One installed package of a runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PackageInfo {
    /// The distribution's name, as it spells it (`numpy`, `Pillow`).
    pub name: String,
    /// Its version (`1.26.4`).
    pub version: String,
}

/// A limit's default (applied when a request names none) and the largest value a
/// request may ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LimitRange {
    /// Applied when a request does not name the limit.
    pub default: u64,
    /// The largest value a request may ask for.
    pub max: u64,
}

/// Every language the caller may run, and each limit's range for it, keyed by the name
/// a request's `limits` uses (`timeout_ms`, `memory_bytes`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Catalog {
    /// The languages, sorted by name.
    pub runtimes: Vec<RuntimeInfo>,
    /// Each limit's default and maximum for this caller.
    pub limits: BTreeMap<String, LimitRange>,
}
