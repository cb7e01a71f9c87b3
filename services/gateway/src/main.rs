//! Entry point: settings, telemetry, serve until SIGTERM/Ctrl-C, flush telemetry.

use anyhow::Context as _;
use gateway::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry_config =
        telemetry::TelemetryConfig::from_env(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))?;
    let telemetry = telemetry::init(&telemetry_config)?;

    // Telemetry is flushed on every path below, error or not.
    let result = run().await;
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "gateway failed");
    }
    telemetry.shutdown().await?;
    result
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env(&settings::ProcessEnv).context("reading settings")?;
    let shutdown = lifecycle::shutdown::on_signal();
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}
