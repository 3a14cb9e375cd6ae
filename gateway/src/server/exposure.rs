//! Refusing to serve where the configuration would expose the gateway: anonymous
//! clients beyond loopback, metrics beyond loopback without their token, credentials
//! that do not load. Checked by `run`, and by `sluice serve` before it binds.

use super::GatewayError;
use crate::config::Config;

/// As Redis's protected mode: a gateway serves anonymous clients only on a loopback
/// address, unless told (`insecure_no_auth`). `run` checks it; `sluice serve` checks it
/// too, before it says it listens.
pub fn check_exposure(listen: std::net::SocketAddr, config: &Config) -> Result<(), GatewayError> {
    let anonymous = !config.auth.is_configured() && !config.auth.insecure_no_auth;
    if anonymous && !listen.ip().is_loopback() {
        return Err(GatewayError::Unprotected(listen));
    }
    if let Some(metrics) = config.metrics_listen {
        check_metrics_exposure(metrics, config)?;
    }
    Ok(())
}

/// Loads the credentials the configuration names (the API key file, the token keys)
/// and drops them: what `run` would refuse to start with, said before anything binds.
pub fn check_credentials(config: &Config) -> Result<(), GatewayError> {
    crate::auth::Authenticator::from_config(&config.auth)?;
    Ok(())
}

/// The metrics (tenant names among them) are not served beyond loopback without their
/// token, unless told.
pub(super) fn check_metrics_exposure(
    metrics: std::net::SocketAddr,
    config: &Config,
) -> Result<(), GatewayError> {
    if !metrics.ip().is_loopback()
        && config.metrics_token_file.is_none()
        && !config.auth.insecure_no_auth
    {
        return Err(GatewayError::Metrics(format!(
            "refusing to serve /metrics on {metrics} without --metrics-token-file: the metrics name tenants and what they run. Give it a token, listen on a loopback address, or pass --insecure-no-auth"
        )));
    }
    Ok(())
}
