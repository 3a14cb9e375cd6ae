//! Signed tokens (JWT): HS256 with a shared secret, and RS256 or EdDSA with a public key
//! (PEM). A token names its tenant (`sub`), must carry `exp` (and may carry `nbf`, `iss`,
//! `aud`), and its other claims narrow what its holder may do ([`Narrowing`]).

use super::grant::Narrowing;
use super::keys::check_tenant;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Seconds of clock difference tolerated on `exp` and `nbf` between the minting backend
/// and the gateway.
pub(crate) const LEEWAY_SECS: u64 = 30;

/// Verifies tokens with the configured keys.
pub(crate) struct TokenVerifier {
    secret: Option<DecodingKey>,
    /// The public key and the one algorithm it verifies.
    public: Option<(DecodingKey, Algorithm)>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key.
        f.debug_struct("TokenVerifier")
            .field("hs256", &self.secret.is_some())
            .field("public", &self.public.as_ref().map(|(_, alg)| alg))
            .finish_non_exhaustive()
    }
}

/// A token key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    /// The file cannot be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so not also a `source`).
        cause: std::io::Error,
    },
    /// The secret is too short to resist guessing.
    #[error("the token secret in {0} is shorter than 32 bytes; use a long random secret (e.g. `openssl rand -base64 48`)")]
    ShortSecret(PathBuf),
    /// The public key is neither an RSA nor an Ed25519 PEM key.
    #[error("{0} holds neither an RSA nor an Ed25519 public key in PEM form")]
    NotAPublicKey(PathBuf),
}

/// Why a token was refused: the short reason the HTTP 401 gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenRefused {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The client is told only this; the detail (what exactly is wrong) goes to the
    /// gateway's log, for whoever mints the tokens.
    #[error("the credential is not valid")]
    Invalid(&'static str),
}

/// The claims Sluice reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Seconds since the epoch (required; checked by the decoder).
    exp: u64,
    #[serde(flatten)]
    narrowing: Narrowing,
}

impl TokenVerifier {
    /// A verifier for the given key files (at least one of them).
    pub(crate) fn load(
        secret_file: Option<&Path>,
        public_key_file: Option<&Path>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, TokenKeyError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|cause| TokenKeyError::Read {
                path: path.to_owned(),
                cause,
            })
        };
        let secret = match secret_file {
            None => None,
            Some(path) => {
                warn_if_others_can_read(path);
                let bytes = read(path)?;
                // A trailing newline from `echo` or an editor is not part of the secret.
                let secret = bytes.trim_ascii_end();
                if secret.len() < 32 {
                    return Err(TokenKeyError::ShortSecret(path.to_owned()));
                }
                Some(
                    DecodingKey::from_secret(secret)
                        .map_err(|_| TokenKeyError::ShortSecret(path.to_owned()))?,
                )
            }
        };
        let public = match public_key_file {
            None => None,
            Some(path) => {
                let pem = read(path)?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .map(|key| (key, Algorithm::RS256))
                    .or_else(|_| DecodingKey::from_ed_pem(&pem).map(|key| (key, Algorithm::EdDSA)))
                    .map_err(|_| TokenKeyError::NotAPublicKey(path.to_owned()))?;
                Some(key)
            }
        };
        Ok(Self {
            secret,
            public,
            issuer,
            audience,
        })
    }

    /// The tenant and narrowing of a valid token.
    /// The algorithms it verifies.
    pub(crate) fn algorithms(&self) -> Vec<&'static str> {
        let public = self.public.as_ref().map(|(_, alg)| match alg {
            Algorithm::EdDSA => "EdDSA",
            _ => "RS256",
        });
        self.secret
            .as_ref()
            .map(|_| "HS256")
            .into_iter()
            .chain(public)
            .collect()
    }

    /// The tenant, narrowing and expiry (`exp`) of a valid token.
    pub(crate) fn verify(
        &self,
        token: &str,
    ) -> Result<(String, Narrowing, std::time::SystemTime), TokenRefused> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            TokenRefused::Invalid("not a signed token (its header does not decode)")
        })?;
        // The key is chosen by the algorithm the token names, and each key verifies its
        // own algorithm only: an RS256 public key is never taken as an HS256 secret.
        let key = match header.alg {
            Algorithm::HS256 => self.secret.as_ref(),
            alg => self
                .public
                .as_ref()
                .filter(|(_, ours)| *ours == alg)
                .map(|(key, _)| key),
        }
        .ok_or(TokenRefused::Invalid(
            "no configured key verifies the algorithm its header names",
        ))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must be in the token: the library checks
        // `iss` and `aud` only where they are present, unless they are required.
        let mut required = vec!["exp", "sub"];
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        required.extend(self.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            match err.kind() {
                ErrorKind::ExpiredSignature => TokenRefused::Expired,
                ErrorKind::ImmatureSignature => TokenRefused::NotYetValid,
                ErrorKind::InvalidSignature => TokenRefused::Invalid("the signature does not verify"),
                ErrorKind::MissingRequiredClaim(_) => TokenRefused::Invalid(
                    "a required claim is missing (sub, exp, or the configured iss or aud)",
                ),
                ErrorKind::InvalidIssuer => TokenRefused::Invalid("iss is not the configured issuer"),
                ErrorKind::InvalidAudience => {
                    TokenRefused::Invalid("aud is not the configured audience")
                }
                ErrorKind::Json(_) => TokenRefused::Invalid(
                    "a claim has the wrong type or value (see the claims in docs/operating.md section 12)",
                ),
                _ => TokenRefused::Invalid("it does not decode or verify"),
            }
        })?;
        let Claims {
            sub,
            exp,
            narrowing,
        } = data.claims;
        check_tenant(&sub)
            .map_err(|_| TokenRefused::Invalid("sub is not a tenant name, or a reserved one"))?;
        let expires = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp);
        // The decoder accepts `exp + leeway` itself, to the second; its socket is closed
        // at that instant, so the same instant refuses it here (one rule for both).
        let leeway = std::time::Duration::from_secs(LEEWAY_SECS);
        if std::time::SystemTime::now() >= expires + leeway {
            return Err(TokenRefused::Expired);
        }
        Ok((sub, narrowing, expires))
    }
}

/// Whoever reads the HS256 secret can mint any tenant's token: say so when the file is
/// open to others than its owner.
fn warn_if_others_can_read(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the token secret file can be read by other users, who could mint any tenant's token; chmod 600 it"
            );
        }
    }
}
