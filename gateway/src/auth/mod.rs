//! Authentication: who a client is, checked on its upgrade request before it becomes a
//! WebSocket, and what it may do (`Grant`). Two kinds of credential, each optional:
//! API keys listed (hashed) in a file ([`keys`]), and signed tokens (`token`) minted by
//! the operator's own backend. Where neither is configured every client is anonymous and
//! counted by its address (allowed only on a loopback address, or with
//! `--insecure-no-auth`: see `server::run`).
//!
//! A credential is never logged, echoed or kept after it is checked.

mod credential;
mod grant;
pub mod keys;
mod token;

pub use credential::TOKEN_SUBPROTOCOL_PREFIX;
pub(crate) use grant::{Grant, Narrowing};
pub use keys::KeyFileError;
pub use token::TokenKeyError;

use crate::config::AuthConfig;
use axum::http::{HeaderMap, Uri};
use credential::Presented;
use keys::KeyTable;
use std::sync::Arc;
use token::TokenVerifier;

/// Checks credentials against the configured keys and token keys.
#[derive(Debug)]
pub(crate) struct Authenticator {
    keys: Option<KeyTable>,
    tokens: Option<TokenVerifier>,
}

/// The credentials configured cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The API key file.
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    /// A token key.
    #[error(transparent)]
    Tokens(#[from] TokenKeyError),
}

/// Why an upgrade request is refused: the short reason of its HTTP 401, nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denied {
    #[error("a credential is required (Authorization: Bearer, the subprotocol sluice.token.<credential>, or ?token=)")]
    Missing,
    #[error("more than one credential, or a malformed Authorization header")]
    Confusing,
    #[error("{0}")]
    Token(#[from] token::TokenRefused),
}

impl Denied {
    /// What exactly was wrong, for the gateway's log (never for the client).
    pub(crate) fn detail(&self) -> Option<&'static str> {
        match self {
            Self::Token(token::TokenRefused::Invalid(detail)) => Some(detail),
            _ => None,
        }
    }
}

impl Authenticator {
    /// The authenticator the configuration asks for; `None` where it configures no
    /// credential (every client anonymous).
    pub(crate) fn from_config(config: &AuthConfig) -> Result<Option<Self>, AuthSetupError> {
        let keys = config
            .api_keys_file
            .as_deref()
            .map(KeyTable::load)
            .transpose()?;
        let tokens = if config.jwt_secret_file.is_some() || config.jwt_public_key_file.is_some() {
            Some(TokenVerifier::load(
                config.jwt_secret_file.as_deref(),
                config.jwt_public_key_file.as_deref(),
                config.jwt_issuer.clone(),
                config.jwt_audience.clone(),
            )?)
        } else {
            None
        };
        if keys.is_none() && tokens.is_none() {
            return Ok(None);
        }
        Ok(Some(Self { keys, tokens }))
    }

    /// What it accepts, for the start-up log: "3 API keys; tokens signed HS256, EdDSA".
    pub(crate) fn summary(&self) -> String {
        let keys = self.keys.as_ref().map(|k| format!("{} API keys", k.len()));
        let tokens = self
            .tokens
            .as_ref()
            .map(|t| format!("tokens signed {}", t.algorithms().join(", ")));
        keys.into_iter()
            .chain(tokens)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The grant of the credential an upgrade request presents.
    pub(crate) fn authenticate(&self, headers: &HeaderMap, uri: &Uri) -> Result<Grant, Denied> {
        let credential = match credential::presented(headers, uri) {
            Presented::None => return Err(Denied::Missing),
            Presented::Confusing => return Err(Denied::Confusing),
            Presented::One(credential) => credential,
        };
        // An API key has no dots; a token is three dot-separated parts.
        if credential.contains('.') {
            let tokens =
                self.tokens
                    .as_ref()
                    .ok_or(Denied::Token(token::TokenRefused::Invalid(
                        "a token, but no token key is configured",
                    )))?;
            let (tenant, narrowing, expires) = tokens.verify(&credential)?;
            // Accepted up to `exp` plus the leeway: the socket may live as long.
            let leeway = std::time::Duration::from_secs(token::LEEWAY_SECS);
            return Ok(Grant {
                expires_at: Some(expires + leeway),
                tenant: Some(Arc::from(tenant)),
                narrowing,
            });
        }
        let tenant = self
            .keys
            .as_ref()
            .and_then(|keys| keys.tenant_of(&credential))
            .ok_or(Denied::Token(token::TokenRefused::Invalid(
                "no API key of the key file matches",
            )))?;
        Ok(Grant {
            expires_at: None,
            tenant: Some(tenant),
            narrowing: Narrowing::default(),
        })
    }
}
