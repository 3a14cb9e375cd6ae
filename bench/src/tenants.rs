//! Section 8, tenants: what authentication costs, and whether one tenant at its quota
//! slows another.
//!
//! - Executions per second through a gateway that checks tokens, against the same
//!   gateway without credentials (short rounds alternate; medians compared), and the time to
//!   open a socket (TCP, upgrade, close) with a token and without: the token is checked
//!   once per socket, so executions should not notice it.
//! - The noisy tenant: a second tenant's `execute` -> first `stdout` p50 for `echo x`
//!   while the first keeps its whole quota of executions spinning (4 processes each),
//!   against the same with the gateway idle; on a gateway with cgroups where the host
//!   has them (a CPU share per execution), else without.

use crate::{
    cancel_spinners, execute_frame, gateway_exec_rate, gateway_first_stdout, median, ms,
    next_event, percentile, row, start_gateway_with, start_spinners, Args, Socket,
};
use anyhow::{bail, Context as _};
use futures::{SinkExt as _, StreamExt as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// The noisy tenant's quota: executions it may have running at once.
const NOISY_QUOTA: usize = 16;

/// A temporary secret file for the gateways' HS256 tokens; removed when dropped.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("sluice-bench-secret-{}", std::process::id()));
        std::fs::write(
            &path,
            "a benchmark secret, long enough for HS256 tokens to be accepted\n",
        )?;
        Ok(Self(path))
    }

    fn secret(&self) -> anyhow::Result<Vec<u8>> {
        let text = std::fs::read(&self.0)?;
        Ok(text.trim_ascii_end().to_vec())
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An HS256 token for `tenant`, valid for an hour.
fn token(secret: &[u8], tenant: &str) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let claims = serde_json::json!({ "sub": tenant, "exp": exp });
    let key = jsonwebtoken::EncodingKey::from_secret(secret)?;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

/// A socket to `addr`, presenting `token` when given.
async fn connect(addr: SocketAddr, token: Option<&str>) -> anyhow::Result<Socket> {
    let url = format!("ws://{addr}{}", sluice_protocol::WS_PATH);
    let mut request = url.as_str().into_client_request()?;
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("connect to {url}"))?;
    Ok(socket)
}

/// Starts the gateways, prints the rows, stops the gateways.
pub(crate) fn tenant_section(
    client_rt: &tokio::runtime::Runtime,
    plain: SocketAddr,
    args: &Args,
) -> anyhow::Result<()> {
    let secret = SecretFile::new()?;
    let auth_flags = |quota: usize| {
        vec![
            "--gateway-jwt-secret-file".to_owned(),
            secret.0.display().to_string(),
            "--gateway-executions-per-peer".to_owned(),
            quota.to_string(),
        ]
    };
    let (mut authed, authed_port) = start_gateway_with("none", "on", &auth_flags(1024))?;
    // The noisy-tenant gateway isolates with cgroups where it can.
    let noisy = start_gateway_with("cgroups", "on", &auth_flags(NOISY_QUOTA))
        .map(|(gateway, port)| (gateway, port, "cgroups"))
        .or_else(|_| {
            start_gateway_with("none", "on", &auth_flags(NOISY_QUOTA))
                .map(|(gateway, port)| (gateway, port, "none"))
        });
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let result = client_rt.block_on(async {
        let key = secret.secret()?;
        auth_rows(plain, local(authed_port), &key, args).await?;
        match &noisy {
            Ok((_, port, isolation)) => noisy_rows(local(*port), isolation, &key, args).await,
            Err(err) => {
                println!("  [noisy tenant: not measured: {err:#}]");
                Ok(())
            }
        }
    });
    let mut gateways = vec![&mut authed];
    let mut noisy = noisy.ok();
    if let Some((gateway, _, _)) = noisy.as_mut() {
        gateways.push(gateway);
    }
    crate::stop_gateways(gateways)?;
    result
}

/// Executions per second and socket setup, with a token and without.
async fn auth_rows(
    plain: SocketAddr,
    authed: SocketAddr,
    secret: &[u8],
    args: &Args,
) -> anyhow::Result<()> {
    let token = token(secret, "bench")?;
    let mut without = connect(plain, None).await?;
    let mut with = connect(authed, Some(&token)).await?;
    let (mut rates_without, mut rates_with) = (Vec::new(), Vec::new());
    // Many short alternating rounds: the machine's drift over a run (other work, clock
    // changes) falls on both sides alike; medians are compared.
    let rounds = (args.rounds * 3).max(9);
    let per_round = (args.executions / 4).max(100);
    for _ in 0..rounds {
        rates_without.push(gateway_exec_rate(&mut without, per_round, args.concurrency).await?);
        rates_with.push(gateway_exec_rate(&mut with, per_round, args.concurrency).await?);
    }
    let (w, wo) = (median(&mut rates_with), median(&mut rates_without));
    row(
        &format!("auth on/off: executions/s at {}", args.concurrency),
        w,
        wo,
        w / wo,
        ">= 0.98",
        w / wo >= 0.98,
    );
    let (mut setup_with, mut setup_without) = (Vec::new(), Vec::new());
    for _ in 0..args.latency_runs {
        for (list, addr, token) in [
            (&mut setup_with, authed, Some(token.as_str())),
            (&mut setup_without, plain, None),
        ] {
            let start = Instant::now();
            let mut socket = connect(addr, token).await?;
            list.push(start.elapsed());
            let _ = socket.close(None).await;
            while socket.next().await.is_some() {}
        }
    }
    setup_with.sort();
    setup_without.sort();
    let (a, b) = (
        ms(percentile(&setup_with, 50)),
        ms(percentile(&setup_without, 50)),
    );
    row(
        "auth on/off: socket upgrade p50 (ms)",
        a,
        b,
        a / b,
        "-",
        true,
    );
    let _ = with.close(None).await;
    let _ = without.close(None).await;
    Ok(())
}

/// p50 milliseconds from execute to first stdout of `runs` `echo x`, one at a time.
async fn first_stdout_p50(socket: &mut Socket, runs: usize) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(ms(gateway_first_stdout(socket, false).await?.1));
    }
    Ok(median(&mut times))
}

/// The quiet tenant's latency while the noisy one holds its whole quota spinning.
async fn noisy_rows(
    addr: SocketAddr,
    isolation: &str,
    secret: &[u8],
    args: &Args,
) -> anyhow::Result<()> {
    let mut quiet = connect(addr, Some(&token(secret, "quiet")?)).await?;
    let mut noisy = connect(addr, Some(&token(secret, "noisy")?)).await?;
    let runs = args.fairness_runs.max(10);
    first_stdout_p50(&mut quiet, runs).await?;
    let idle = first_stdout_p50(&mut quiet, runs).await?;
    start_spinners(&mut noisy, NOISY_QUOTA).await?;
    // One more is refused: the noisy tenant is at its quota, not merely busy.
    noisy
        .send(execute_frame("one-more", "sh", "echo x"))
        .await?;
    loop {
        let event = next_event(&mut noisy).await?;
        if event.id.as_deref() == Some("one-more") && event.is_terminal() {
            if event.code != Some(sluice_protocol::ErrorCode::TooManyExecutions) {
                bail!("the execute past the quota was not refused: {event:?}");
            }
            break;
        }
    }
    tokio::time::sleep(crate::FAIRNESS_SETTLE).await;
    let busy = first_stdout_p50(&mut quiet, runs).await?;
    cancel_spinners(&mut noisy, NOISY_QUOTA).await?;
    // No target: on a saturated machine the figure is mostly the scheduler's wakeup
    // latency; what matters is that the quiet tenant is admitted and served while the
    // noisy one is refused past its quota.
    row(
        &format!("noisy tenant ({isolation}): quiet 1st stdout p50"),
        busy,
        idle,
        busy / idle,
        "-",
        true,
    );
    let _ = quiet.close(None).await;
    let _ = noisy.close(None).await;
    Ok(())
}
