//! `trace <trace_id>`: prints a trace's span tree from Jaeger; `--html FILE` also writes
//! it as a waterfall. Jaeger's address: `--jaeger`, else `JAEGER_QUERY_URL`, else
//! `http://127.0.0.1:16686` (docker compose and `scripts/stack`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use settings::{ProcessEnv, url_or};

#[derive(Debug, Parser)]
#[command(
    name = "trace",
    about = "Print one trace from Jaeger as a tree of spans, or write it as an HTML waterfall",
    after_help = "Jaeger's query API: --jaeger, else JAEGER_QUERY_URL, else http://127.0.0.1:16686 (docker compose and scripts/stack)."
)]
struct Args {
    /// The trace id: 32 hex digits, or a traceparent/traceresponse value.
    trace_id: String,
    /// Also write the trace as a self-contained HTML waterfall to this file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Print every attribute of every span, not only the key ones.
    #[arg(long)]
    all_attributes: bool,
    /// Jaeger's query API (overrides JAEGER_QUERY_URL).
    #[arg(long, value_name = "URL")]
    jaeger: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("trace: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let trace_id = trace::parse_trace_id(&args.trace_id)?;
    let base = match args.jaeger {
        Some(url) => {
            settings::check_url("--jaeger", &url)?;
            url
        }
        None => url_or(&ProcessEnv, "JAEGER_QUERY_URL", trace::DEFAULT_URL)?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let trace = runtime.block_on(trace::fetch(&base, &trace_id))?;
    print!("{}", trace::text::render(&trace, args.all_attributes));
    if let Some(path) = args.html {
        std::fs::write(&path, trace::html::render(&trace))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("waterfall written to {}", path.display());
    }
    Ok(())
}
