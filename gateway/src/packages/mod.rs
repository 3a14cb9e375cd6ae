//! Packages for a runtime's programs: the package index an operator offers it
//! (`--package-index`, [`PackageIndex`]), what a program's environment says about it
//! ([`environment`]), the session's own layer that `pip install` fills (a directory in
//! the session's workspace, [`LAYER_DIR`], on the path of every later program and cell
//! of the session and gone with it), and the gateway's proxy (`proxy`) through which a
//! program without the network reaches the index's hosts and nothing else, with the
//! download cache every session shares (`cache`, written by the gateway only).

mod cache;
mod proxy;

pub(crate) use proxy::{serve, ProxyHandle};

use crate::config::PackageIndex;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The port the proxy listens on, on the loopback interface of a program's own network
/// namespace (where nothing else can have taken it: the gateway binds it before the
/// program starts).
pub(crate) const PROXY_PORT: u16 = 3128;

/// The session's package layer, at the top of its workspace: a name the file frames
/// cannot reach and `files_changed` does not report (the gateway's prefix).
pub(crate) const LAYER_DIR: &str = ".sluice-packages";

/// Connections one program may have open through the proxy at once (pip opens one or
/// two); more are refused with `503`.
pub(crate) const CONNECTIONS_PER_PROGRAM: usize = 8;

/// Connections every program together may have open through the proxy at once.
pub(crate) const CONNECTIONS_TOTAL: usize = 256;

/// Connections the programs of one tenant (or anonymous address) may have open through
/// the proxy at once: a quarter of the gateway's, so no one takes them all.
pub(crate) const CONNECTIONS_PER_PRINCIPAL: usize = CONNECTIONS_TOTAL / 4;

/// What every program's proxy shares: the connection caps and the cache.
#[derive(Debug)]
pub(crate) struct Packages {
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) per_principal: crate::admission::Quota,
    pub(crate) cache: Option<Arc<cache::Cache>>,
}

impl Packages {
    /// The shared parts, the cache in `dir` (made now) holding at most `cache_bytes`
    /// (0: no cache).
    pub(crate) fn new(dir: &Path, cache_bytes: u64) -> Self {
        let cache = match cache_bytes {
            0 => None,
            most => match cache::Cache::open(dir, most) {
                Ok(cache) => Some(Arc::new(cache)),
                Err(err) => {
                    tracing::warn!(%err, dir = %dir.display(), "no package download cache");
                    None
                }
            },
        };
        Self {
            connections: Arc::new(Semaphore::new(CONNECTIONS_TOTAL)),
            per_principal: crate::admission::Quota::new(CONNECTIONS_PER_PRINCIPAL),
            cache,
        }
    }
}

/// Which package manager a runtime's index is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Installer {
    /// pip: the index is a Python package index (`/simple/`).
    Pip,
    /// npm: the index is an npm registry.
    Npm,
}

impl Installer {
    /// npm for a Node runtime (its interpreter `node` or `nodejs*`), pip otherwise.
    pub(crate) fn for_program(program: &Path) -> Self {
        let name = program
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if name == "node" || name.starts_with("nodejs") {
            Self::Npm
        } else {
            Self::Pip
        }
    }
}

/// The npm cache's directory name in a session's workspace (elsewhere npm keeps its
/// own, in the program's home): the gateway's prefix, so the file frames and
/// `files_changed` leave it out.
pub(crate) const NPM_CACHE_DIR: &str = ".sluice-npm-cache";

/// What a program of a runtime with `index` finds in its environment (before the
/// runtime's and the request's own variables, which may say otherwise), for its
/// `installer`: the index, the gateway's proxy when the program has no network of its
/// own (`proxied`), and where packages go. For pip: the index (trusted when on plain
/// HTTP), no cache of pip's own (the gateway's is shared), and in a session's
/// `workspace`, pip installing into its layer ([`LAYER_DIR`]) and Python finding it.
/// For npm: the registry, no calls home (update notifier, audit, funding), and in a
/// session's workspace its cache there ([`NPM_CACHE_DIR`]); npm installs into
/// `node_modules` in the working directory, as it always does, which in a session's
/// workspace outlives the execution.
pub(crate) fn environment(
    index: &PackageIndex,
    installer: Installer,
    proxied: bool,
    workspace: Option<&Path>,
) -> Vec<(String, String)> {
    if installer == Installer::Npm {
        let mut env = vec![
            ("NPM_CONFIG_REGISTRY".to_owned(), index.url.clone()),
            ("NPM_CONFIG_UPDATE_NOTIFIER".to_owned(), "false".to_owned()),
            ("NPM_CONFIG_AUDIT".to_owned(), "false".to_owned()),
            ("NPM_CONFIG_FUND".to_owned(), "false".to_owned()),
        ];
        if let Some(workspace) = workspace {
            let cache = workspace.join(NPM_CACHE_DIR);
            env.push((
                "NPM_CONFIG_CACHE".to_owned(),
                cache.to_string_lossy().into_owned(),
            ));
        }
        if proxied {
            let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
            env.push(("NPM_CONFIG_PROXY".to_owned(), proxy.clone()));
            env.push(("NPM_CONFIG_HTTPS_PROXY".to_owned(), proxy));
            // Reachable after all: npm's usual retries again, not the offline default.
            env.push(("NPM_CONFIG_FETCH_RETRIES".to_owned(), "2".to_owned()));
        }
        return env;
    }
    let mut env = vec![
        ("PIP_INDEX_URL".to_owned(), index.url.clone()),
        ("PIP_DISABLE_PIP_VERSION_CHECK".to_owned(), "1".to_owned()),
        ("PIP_NO_INPUT".to_owned(), "1".to_owned()),
        ("PIP_NO_CACHE_DIR".to_owned(), "1".to_owned()),
    ];
    if index.url.starts_with("http://") {
        if let Some(first) = index.hosts.first() {
            env.push(("PIP_TRUSTED_HOST".to_owned(), first.host.clone()));
        }
    }
    if proxied {
        env.push((
            "PIP_PROXY".to_owned(),
            format!("http://127.0.0.1:{PROXY_PORT}"),
        ));
        // Reachable after all: pip's usual retries again, not the offline default.
        env.push(("PIP_RETRIES".to_owned(), "5".to_owned()));
    }
    if let Some(workspace) = workspace {
        let layer = workspace.join(LAYER_DIR).to_string_lossy().into_owned();
        env.push(("PIP_TARGET".to_owned(), layer.clone()));
        env.push(("PYTHONPATH".to_owned(), layer));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_program_is_told_the_index_the_proxy_and_its_layer() {
        let index = PackageIndex::parse("http://10.0.0.5:8080/simple/").expect("index");
        let home = Path::new("/w");
        let env = environment(&index, Installer::Pip, true, Some(home));
        assert_eq!(
            value(&env, "PIP_INDEX_URL"),
            Some("http://10.0.0.5:8080/simple/")
        );
        assert_eq!(value(&env, "PIP_TRUSTED_HOST"), Some("10.0.0.5"));
        assert_eq!(value(&env, "PIP_PROXY"), Some("http://127.0.0.1:3128"));
        assert_eq!(value(&env, "PIP_TARGET"), Some("/w/.sluice-packages"));
        assert_eq!(value(&env, "PYTHONPATH"), Some("/w/.sluice-packages"));
        let index = PackageIndex::parse("https://pypi.org/simple").expect("index");
        let env = environment(&index, Installer::Pip, false, None);
        assert_eq!(value(&env, "PIP_TRUSTED_HOST"), None);
        assert_eq!(value(&env, "PIP_PROXY"), None);
        assert_eq!(value(&env, "PIP_TARGET"), None);
        let registry = PackageIndex::parse("https://registry.npmjs.org/").expect("registry");
        let env = environment(&registry, Installer::Npm, true, Some(home));
        assert_eq!(
            value(&env, "NPM_CONFIG_REGISTRY"),
            Some("https://registry.npmjs.org/")
        );
        assert_eq!(
            value(&env, "NPM_CONFIG_HTTPS_PROXY"),
            Some("http://127.0.0.1:3128")
        );
        assert_eq!(
            value(&env, "NPM_CONFIG_CACHE"),
            Some("/w/.sluice-npm-cache")
        );
        assert_eq!(value(&env, "PIP_INDEX_URL"), None);
        assert_eq!(
            Installer::for_program(Path::new("/usr/bin/node")),
            Installer::Npm
        );
        assert_eq!(
            Installer::for_program(Path::new("/usr/bin/python3")),
            Installer::Pip
        );
    }

    #[test]
    fn index_urls_and_hosts_are_checked() {
        let index = PackageIndex::parse("https://Mirror.example:8443/simple").expect("index");
        assert!(index.allows("mirror.example", 8443, true));
        assert!(
            !index.allows("mirror.example", 8443, false),
            "a TLS host is tunnelled only"
        );
        let index = PackageIndex::parse("http://[::1]/simple").expect("index");
        assert!(index.allows("[::1]", 80, false));
        assert!(
            !index.allows("[::1]", 80, true),
            "a plain HTTP host gets no tunnel"
        );
        for bad in [
            "ftp://x/simple",
            "http://user:pw@x/simple",
            "http:///simple",
            "http://x:0/",
            "http://x:99999/",
            "http://a b/",
        ] {
            assert!(PackageIndex::parse(bad).is_err(), "{bad}");
        }
        let mut index = PackageIndex::parse("https://pypi.org/simple").expect("index");
        index.allow_host("files.pythonhosted.org").expect("host");
        assert!(index.allows("files.pythonhosted.org", 443, true));
        index.allow_host("http://files.lan:8080/").expect("host");
        assert!(index.allows("files.lan", 8080, false));
        assert!(index.allow_host("x:y").is_err());
    }
}
