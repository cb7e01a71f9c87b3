//! Entry point: flags, telemetry, the run, the table (and `--json`), telemetry flushed.

use anyhow::Context as _;
use clap::Parser as _;
use loadgen::{Args, render, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A bad flag exits here, with clap's message naming it.
    let args = Args::parse();
    let telemetry_config =
        telemetry::TelemetryConfig::from_env(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
            .context("reading the OTEL_* settings")?;
    // No exporter, no spans: `OTEL_TRACES_EXPORTER=none` makes the load untraced.
    let traced = !telemetry_config.exporters.is_empty();
    let telemetry = telemetry::init(&telemetry_config)?;

    // Telemetry is flushed on every path below, error or not.
    let result = generate(&args, traced).await;
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "loadgen failed");
    }
    telemetry.shutdown().await?;
    result
}

async fn generate(args: &Args, traced: bool) -> anyhow::Result<()> {
    // Ctrl-C or SIGTERM stops the load early; the figures so far are still reported.
    let shutdown = lifecycle::shutdown::Shutdown::on_signal(
        lifecycle::shutdown::ShutdownConfig::from_env(&settings::ProcessEnv)
            .context("reading settings")?,
    );
    let cancel = shutdown.token();
    let summary = run(args, traced, cancel).await?;
    print!("{}", render(&summary));
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&summary).context("encoding the figures as JSON")?;
        std::fs::write(path, json).with_context(|| format!("writing --json {}", path.display()))?;
    }
    Ok(())
}
