//! `trace`: one trace from Jaeger's query API, printed as the tree of its spans, or
//! written as a self-contained HTML waterfall. For the native stack, whose Jaeger has no
//! UI, and for anyone who wants a trace in a terminal or a file; it reads the docker
//! compose Jaeger just the same.
//!
//! # Layout
//!
//! - `jaeger.rs`: the trace id, the request, and every way it can fail.
//! - `model.rs`: Jaeger's OTLP JSON read into spans, arranged as a tree.
//! - `text.rs`: the tree for the terminal. `html.rs`: the waterfall.

pub mod html;
pub mod jaeger;
pub mod model;
pub mod text;

pub use jaeger::{DEFAULT_URL, FetchError, fetch, parse_trace_id};
pub use model::Trace;
