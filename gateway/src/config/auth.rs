//! [`AuthConfig`]: which credentials the gateway accepts (API keys, signed tokens), as
//! configured. Loading and checking them is `auth`'s job.

use std::path::PathBuf;

/// Who may connect: the credentials the gateway accepts. Nothing configured: every
/// client is anonymous, which `server::run` allows only on a loopback address unless
/// `insecure_no_auth` says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// A file of API keys, one `TENANT sha256:HEX` per line (`sluice key add`).
    pub api_keys_file: Option<PathBuf>,
    /// A file holding the shared secret of HS256 tokens (at least 32 bytes).
    pub jwt_secret_file: Option<PathBuf>,
    /// A PEM file holding the RSA (RS256) or Ed25519 (EdDSA) public key of tokens.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Tokens must carry this `iss`, when set.
    pub jwt_issuer: Option<String>,
    /// Tokens must carry this `aud`, when set.
    pub jwt_audience: Option<String>,
    /// Serve without authentication on an address other than loopback.
    pub insecure_no_auth: bool,
}

impl AuthConfig {
    /// Whether any credential is configured.
    pub fn is_configured(&self) -> bool {
        self.api_keys_file.is_some()
            || self.jwt_secret_file.is_some()
            || self.jwt_public_key_file.is_some()
    }
}
