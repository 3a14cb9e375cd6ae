//! What one authenticated caller may do: its tenant and the narrowing its credential
//! carries (languages, network, limit ceilings, quotas, session names). A grant only
//! ever narrows what the gateway's own configuration allows.

use serde::Deserialize;
use sluice_protocol::Limits;
use std::sync::Arc;

/// A caller's rights, fixed when its socket is admitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The tenant its sessions and quotas belong to; `None` where clients do not
    /// authenticate (the peer's address counts instead).
    pub(crate) tenant: Option<Arc<str>>,
    /// The narrowing its credential carries.
    pub(crate) narrowing: Narrowing,
    /// When the credential stops being valid (a token's `exp`, plus the leeway); its
    /// socket is closed then. `None`: an API key, or no authentication.
    pub(crate) expires_at: Option<std::time::SystemTime>,
}

/// The claims of a credential that narrow what its holder may do; every field absent
/// means "as the gateway allows". Also the shape of those claims in a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct Narrowing {
    /// The languages it may run.
    pub(crate) languages: Option<Vec<String>>,
    /// `false`: its programs get no network even where a runtime has it. `true` grants
    /// nothing beyond the runtime's own setting.
    pub(crate) network: Option<bool>,
    /// Ceilings on each limit: a request above one is refused (`invalid_limit`), and a
    /// default above one is lowered to it. A limit name Sluice does not know is
    /// refused ([`known_limits`]).
    #[serde(deserialize_with = "known_limits")]
    pub(crate) limits: Limits,
    /// Executions its tenant may have running at once (at most the gateway's
    /// per-tenant cap; at least 1).
    #[serde(deserialize_with = "positive")]
    pub(crate) max_executions: Option<usize>,
    /// Sessions its tenant may have open at once (likewise).
    #[serde(deserialize_with = "positive")]
    pub(crate) max_sessions: Option<usize>,
    /// Persistent interpreters its tenant may have alive at once (likewise).
    #[serde(deserialize_with = "positive")]
    pub(crate) max_kernels: Option<usize>,
    /// The session names it may open or attach: an exact name, or a prefix written
    /// with a trailing `*` (`"user-42/*"`). Absent: any name.
    pub(crate) sessions: Option<Vec<String>>,
}

/// The `limits` claim: an object whose every limit name Sluice knows. Ignoring one it
/// does not (a typo such as `timeout` for `timeout_ms`) would leave that limit without
/// the ceiling its issuer meant, so such a token is refused (fails closed); so is an
/// array, which serde would otherwise read field by field.
fn known_limits<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Limits, D::Error> {
    use serde::de::Error as _;
    let claimed = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
    let limits: Limits = serde_json::from_value(serde_json::Value::Object(claimed.clone()))
        .map_err(D::Error::custom)?;
    // Read back, every limit that was given a value names itself again.
    let read = serde_json::to_value(&limits).map_err(D::Error::custom)?;
    let unknown = claimed
        .iter()
        .find(|(name, value)| !value.is_null() && read.get(name.as_str()).is_none());
    if let Some((name, _)) = unknown {
        return Err(D::Error::custom(format!("unknown limit {name:?}")));
    }
    // A ceiling below what the limit may take would refuse every request (or, lifted to
    // the minimum, mean something its issuer did not write): such a token is refused.
    let too_low = read.as_object().and_then(|given| {
        given.iter().find(|(name, value)| {
            value
                .as_u64()
                .is_some_and(|v| v < crate::config::minimum(name))
        })
    });
    match too_low {
        Some((name, value)) => Err(D::Error::custom(format!(
            "limits.{name} ceiling {value} is below its minimum {}",
            crate::config::minimum(name)
        ))),
        None => Ok(limits),
    }
}

/// A quota claim: absent, or at least 1 (a quota of none is no credential at all).
fn positive<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error as _;
    match Option::<usize>::deserialize(deserializer)? {
        Some(0) => Err(D::Error::custom("a quota claim must be at least 1")),
        quota => Ok(quota),
    }
}

impl Grant {
    /// Whether the caller may run `language`.
    pub(crate) fn allows_language(&self, language: &str) -> bool {
        self.narrowing
            .languages
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|l| l == language))
    }

    /// Whether the caller may open or attach the session `name`.
    pub(crate) fn allows_session(&self, name: &str) -> bool {
        self.narrowing.sessions.as_ref().is_none_or(|rules| {
            rules.iter().any(|rule| match rule.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => rule == name,
            })
        })
    }

    /// Whether the caller's programs must go without the network.
    pub(crate) fn denies_network(&self) -> bool {
        self.narrowing.network == Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(narrowing: Narrowing) -> Grant {
        Grant {
            expires_at: None,
            tenant: Some("acme".into()),
            narrowing,
        }
    }

    #[test]
    fn an_empty_narrowing_allows_everything_the_gateway_does() {
        let grant = with(Narrowing::default());
        assert!(grant.allows_language("python"));
        assert!(grant.allows_session("anything"));
        assert!(!grant.denies_network());
    }

    #[test]
    fn session_rules_are_exact_names_or_prefixes() {
        let grant = with(Narrowing {
            sessions: Some(vec!["notebook".into(), "user-42/*".into()]),
            ..Narrowing::default()
        });
        assert!(grant.allows_session("notebook"));
        assert!(!grant.allows_session("notebook2"));
        assert!(grant.allows_session("user-42/a"));
        assert!(grant.allows_session("user-42/"));
        assert!(!grant.allows_session("user-4"));
        assert!(!grant.allows_session("user-43/a"));
    }

    #[test]
    fn a_limits_claim_with_an_unknown_name_or_of_another_shape_is_refused() {
        let parse = |text: &str| serde_json::from_str::<Narrowing>(text);
        let known = parse(r#"{"limits": {"timeout_ms": 5, "memory_bytes": null}}"#).unwrap();
        assert_eq!(known.limits.timeout_ms, Some(5));
        assert_eq!(known.limits.memory_bytes, None);
        assert!(parse(r#"{"limits": {"timeout": 5}}"#).is_err());
        assert!(parse(r#"{"limits": {"timeout_ms": 5, "cpu": 1}}"#).is_err());
        assert!(parse(r#"{"limits": [5]}"#).is_err());
        assert!(parse(r#"{"limits": {"timeout_ms": "5"}}"#).is_err());
        // Ceilings below a limit's minimum, and quotas of zero.
        assert!(parse(r#"{"limits": {"timeout_ms": 0}}"#).is_err());
        assert!(parse(r#"{"limits": {"memory_bytes": 1}}"#).is_err());
        assert!(parse(r#"{"limits": {"memory_bytes": 1048576}}"#).is_ok());
        assert!(parse(r#"{"max_executions": 0}"#).is_err());
        assert!(parse(r#"{"max_executions": 1}"#).is_ok());
        assert_eq!(parse("{}").unwrap(), Narrowing::default());
    }

    #[test]
    fn languages_and_network_narrow() {
        let grant = with(Narrowing {
            languages: Some(vec!["python".into()]),
            network: Some(false),
            ..Narrowing::default()
        });
        assert!(grant.allows_language("python"));
        assert!(!grant.allows_language("bash"));
        assert!(grant.denies_network());
    }
}
