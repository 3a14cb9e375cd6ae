//! What gateways that died without cleaning up leave behind: directories named
//! `sluice-<pid>-...` (work roots, cgroup directories) whose process no longer runs.

use std::path::{Path, PathBuf};

/// The `sluice-<pid>-...` directories in `dir` whose gateway process is gone (never
/// this process's own).
pub(crate) fn left_by_dead_gateways(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("sluice-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            pid.is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
        })
        .map(|entry| entry.path())
        .collect()
}

/// The mount points under `dir` (this process's view, deepest first), such as the
/// workspaces of a gateway that died.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        // Octal escapes (a space is \040) never occur in the names the gateway makes.
        .filter(|point| !point.contains('\\'))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir) && point != dir)
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_of_gone_gateways_are_listed() {
        let dir = std::env::temp_dir().join(format!("sluice-leftovers-{}", std::process::id()));
        let names = [
            "sluice-1-0".to_owned(), // pid 1 always runs
            format!("sluice-{}-3", std::process::id()),
            "sluice-999999999-0".to_owned(), // above any pid_max
            "unrelated".to_owned(),
        ];
        for name in &names {
            std::fs::create_dir_all(dir.join(name)).expect("scratch directories");
        }
        let found = left_by_dead_gateways(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found, vec![dir.join("sluice-999999999-0")]);
    }
}
