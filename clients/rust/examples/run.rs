//! Runs a snippet on a Sluice gateway and prints its events as they arrive.
//!
//! `cargo run -p sluice-client --example run -- [URL] [LANGUAGE] [CODE]`
//! (defaults: ws://127.0.0.1:7878/v1/ws, python, print(6 * 7)).

use futures::StreamExt as _;
use sluice_client::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:7878/v1/ws".into());
    let language = args.next().unwrap_or_else(|| "python".into());
    let code = args.next().unwrap_or_else(|| "print(6 * 7)".into());

    let client = Client::connect(&url).await?;
    let mut run = client.execute_code_stream(&language, &code).await?;
    while let Some(event) = run.next().await {
        #[allow(clippy::print_stdout)] // An example that prints is the point.
        {
            match event.exit_code {
                Some(code) => println!("{} {} (exit code {code})", event.sequence, event.kind),
                None => println!("{} {}: {:?}", event.sequence, event.kind, event.data),
            }
        }
    }
    client.close().await?;
    Ok(())
}
