//! The Rust client's credential against a real gateway that requires one: with its API
//! key it runs programs; without one, or with a wrong one, `connect` fails at once with
//! `ClientError::Unauthorized` carrying the gateway's reason (no hang, no retry loop).

use anyhow::{Context as _, Result};
use sluice_client::{Client, ClientError, ClientOptions, Token};
use sluice_gateway::Config;
use sluice_tests::{unique_marker, within, TestGateway};
use std::path::PathBuf;

/// A key file of the test's own, removed when dropped.
struct KeyFile(PathBuf);

impl KeyFile {
    /// A key file holding one key for `tenant`; the key.
    fn with_key(tenant: &str) -> Result<(Self, String)> {
        let file = Self(std::env::temp_dir().join(unique_marker("keys")));
        let key =
            sluice_gateway::auth::keys::add_key(&file.0, tenant).context("making an API key")?;
        Ok((file, key))
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn gateway_with_keys(keys: &KeyFile) -> TestGateway {
    let mut config = Config::default();
    config.auth.api_keys_file = Some(keys.0.clone());
    TestGateway::spawn_with(config).await
}

fn with_token(token: Option<&str>) -> ClientOptions {
    ClientOptions {
        token: token.map(Token::from),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn the_key_runs_a_program_and_no_key_or_a_wrong_one_is_refused_at_once() -> Result<()> {
    let (keys, key) = KeyFile::with_key("acme")?;
    let gateway = gateway_with_keys(&keys).await;
    let url = gateway.url();

    let client = within(
        "connecting with the key",
        Client::connect_with(&url, with_token(Some(&key))),
    )
    .await??;
    let execution = within(
        "the execute",
        client.execute_code_stream("sh", "echo hello"),
    )
    .await??;
    let outcome = within("hello world", execution.wait()).await??;
    assert_eq!(outcome.stdout, "hello\n");
    assert_eq!(outcome.exit_code(), Some(0));
    client.close().await?;

    match within(
        "connecting without a key",
        Client::connect_with(&url, with_token(None)),
    )
    .await?
    {
        Err(ClientError::Unauthorized { reason }) => {
            assert!(reason.contains("credential is required"), "{reason}");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    let wrong = format!("{key}x");
    match within(
        "connecting with a wrong key",
        Client::connect_with(&url, with_token(Some(&wrong))),
    )
    .await?
    {
        Err(ClientError::Unauthorized { reason }) => {
            assert!(reason.contains("not valid"), "{reason}");
            assert!(
                !reason.contains(&wrong),
                "the reason echoes the credential: {reason}"
            );
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn the_error_of_a_refused_credential_names_the_refusal() -> Result<()> {
    let (keys, _key) = KeyFile::with_key("acme")?;
    let gateway = gateway_with_keys(&keys).await;
    let err = within("connecting without a key", Client::connect(&gateway.url()))
        .await?
        .err()
        .context("a gateway with keys accepted a client without one")?;
    assert!(
        err.to_string()
            .starts_with("the gateway refused the credential: "),
        "{err}"
    );
    Ok(())
}
