//! Entry point: settings, telemetry, consume until SIGTERM/Ctrl-C (no longer than the
//! shutdown deadline after it), flush telemetry, exit.

use anyhow::Context as _;
use lifecycle::shutdown::{Shutdown, ShutdownConfig};
use settings::ProcessEnv;
use worker::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry_config =
        telemetry::TelemetryConfig::from_env(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))?;
    let telemetry = telemetry::init(&telemetry_config)?;

    // Telemetry is flushed on every path below: done, failed or past the shutdown
    // deadline. Only a second signal skips it, to exit at once.
    let result = run().await;
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "worker failed");
    }
    let flushed = telemetry.shutdown().await;
    lifecycle::shutdown::exit(result, flushed)
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env(&ProcessEnv).context("reading settings")?;
    let shutdown =
        Shutdown::on_signal(ShutdownConfig::from_env(&ProcessEnv).context("reading settings")?);
    let service = async {
        let app = Application::build(config).await?;
        app.run_until_stopped(shutdown.token()).await
    };
    shutdown.run(service).await?
}
