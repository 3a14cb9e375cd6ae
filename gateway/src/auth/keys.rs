//! API keys: the file that lists them (one tenant and one SHA-256 hash per line), the
//! lookup of a presented key, and making a new key (`sluice key add`). The gateway keeps
//! only hashes: the file can be read by whoever operates it without revealing a key.
//!
//! File format: `TENANT sha256:HEX` (or a bare 64-digit hex hash: what
//! `printf %s KEY | sha256sum` prints), blank lines and `#` comments ignored. A tenant may
//! hold several keys (one line each), so a key can be rotated without downtime.

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a new key starts with, so a leaked one is recognisable (secret scanners) and
/// never mistaken for a token.
pub const KEY_PREFIX: &str = "sluice_";

/// Longest tenant name: it appears in logs, metrics labels and error messages.
pub(crate) const MAX_TENANT_CHARS: usize = 64;

/// The keys a gateway accepts: each key's SHA-256 digest to its tenant.
#[derive(Debug, Default)]
pub(crate) struct KeyTable {
    by_digest: HashMap<[u8; 32], Arc<str>>,
}

/// The key file cannot be used; names the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("cannot read the API key file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so not also a `source`).
        cause: std::io::Error,
    },
    /// The tenant name given to `sluice key add` is not one.
    #[error("{0}")]
    Tenant(String),
    /// A line is not `TENANT sha256:HEX`.
    #[error("{path}: line {line}: {why}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

impl KeyTable {
    /// Reads and checks the key file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|cause| KeyFileError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(&text).map_err(|(line, why)| KeyFileError::Line {
            path: path.to_owned(),
            line,
            why,
        })
    }

    /// Parses a key file's text; an error gives the 1-based line and why.
    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut by_digest = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |why: String| (index + 1, why);
            let mut fields = line.split_whitespace();
            let (Some(tenant), Some(hash), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(fail(
                    "expected `TENANT sha256:HEX` (a tenant name and the key's SHA-256 hash)"
                        .into(),
                ));
            };
            check_tenant(tenant).map_err(fail)?;
            let digest = parse_digest(hash).ok_or_else(|| {
                fail(format!(
                    "{hash:?} is not a SHA-256 hash (64 hex digits, optionally after `sha256:`); the file holds hashes, never keys: add keys with `sluice key add`"
                ))
            })?;
            if by_digest.insert(digest, Arc::from(tenant)).is_some() {
                return Err(fail("this key hash is listed twice".into()));
            }
        }
        Ok(Self { by_digest })
    }

    /// The tenant holding `key`, if it is one of the listed keys.
    pub(crate) fn tenant_of(&self, key: &str) -> Option<Arc<str>> {
        self.by_digest.get(&digest_of(key)).cloned()
    }

    /// How many keys are listed.
    pub(crate) fn len(&self) -> usize {
        self.by_digest.len()
    }
}

/// Names the logs and metrics give clients without a tenant (`-`, `anonymous`) and the
/// tenants past the metrics' label cap (`other`): no tenant may be called so.
const RESERVED_TENANTS: [&str; 3] = ["-", "anonymous", "other"];

/// Checks a tenant name: 1 to 64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_tenant(name: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.chars().count() > MAX_TENANT_CHARS || !name.chars().all(fine) {
        return Err(format!(
            "{name:?} is not a tenant name: use 1 to {MAX_TENANT_CHARS} letters, digits, '.', '_', '-' or '@'"
        ));
    }
    if RESERVED_TENANTS.contains(&name) {
        return Err(format!(
            "{name:?} is reserved: the logs and metrics use it for clients without a tenant (or for the tenants beyond the metrics' label cap)"
        ));
    }
    Ok(())
}

fn digest_of(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

/// The line a key file holds for `key`: its SHA-256 hash as `sha256:HEX`.
pub fn hash_key(key: &str) -> String {
    let mut line = String::from("sha256:");
    for byte in digest_of(key) {
        line.push_str(&format!("{byte:02x}"));
    }
    line
}

/// A new random key: the prefix and 32 random bytes, base64url.
pub fn generate_key() -> std::io::Result<String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Makes a key for `tenant`, appends its hash to the key file at `path` (created with
/// mode 0600 if missing) and returns the key, which is stored nowhere else.
pub fn add_key(path: &Path, tenant: &str) -> Result<String, KeyFileError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io_error = |cause| KeyFileError::Read {
        path: path.to_owned(),
        cause,
    };
    check_tenant(tenant).map_err(KeyFileError::Tenant)?;
    // An existing file must be valid before it grows.
    if path.exists() {
        KeyTable::load(path)?;
    }
    let key = generate_key().map_err(io_error)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error)?;
    // A file whose last line has no newline must not glue the new line onto it.
    let ends_cleanly = std::fs::read(path)
        .map(|bytes| bytes.last().is_none_or(|b| *b == b'\n'))
        .unwrap_or(true);
    let separator = if ends_cleanly { "" } else { "\n" };
    writeln!(file, "{separator}{tenant} {}", hash_key(&key)).map_err(io_error)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_key_names_its_tenant_and_others_name_none() {
        let key = generate_key().unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() > 40, "{key}");
        let bare = hash_key("other-key")
            .trim_start_matches("sha256:")
            .to_owned();
        let text = format!("# keys\n\nacme {}\n  beta {bare}  \n", hash_key(&key));
        let table = KeyTable::parse(&text).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.tenant_of(&key).as_deref(), Some("acme"));
        assert_eq!(table.tenant_of("other-key").as_deref(), Some("beta"));
        assert_eq!(table.tenant_of("wrong"), None);
    }

    #[test]
    fn bad_lines_name_the_line_and_the_problem() {
        let err = |text: &str| KeyTable::parse(text).unwrap_err();
        assert_eq!(err("acme\n").0, 1);
        assert!(err("ok sha256:00\n").1.contains("not a SHA-256 hash"));
        assert!(err("\nbad/name ab\n").1.contains("tenant name"));
        let h = hash_key("k");
        let twice = err(&format!("a {h}\nb {h}\n"));
        assert_eq!(twice, (2, "this key hash is listed twice".into()));
        assert!(err("a sluice_rawkey\n").1.contains("never keys"));
        let h = hash_key("k");
        for reserved in ["anonymous", "other", "-"] {
            assert!(err(&format!("{reserved} {h}\n")).1.contains("reserved"));
        }
    }

    #[test]
    fn add_key_appends_a_hash_that_loads() {
        let dir = std::env::temp_dir().join(format!("sluice-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "# no newline at the end").unwrap();
        let first = add_key(&path, "acme").unwrap();
        let second = add_key(&path, "beta").unwrap();
        let table = KeyTable::load(&path).unwrap();
        assert_eq!(table.tenant_of(&first).as_deref(), Some("acme"));
        assert_eq!(table.tenant_of(&second).as_deref(), Some("beta"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&first), "the key itself is never stored");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
