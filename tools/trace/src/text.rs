//! The trace as a tree on the terminal, one span a line: offset from the trace's start,
//! duration, service, the span's name under its parent, kind, status, the attributes
//! worth seeing at a glance, and links.

use std::fmt::Write as _;

use crate::model::{Span, Status, Trace};

/// Attributes shown on a span's line (all of them with `all_attributes`).
const KEY_ATTRIBUTES: &[&str] = &[
    "http.response.status_code",
    "rpc.response.status_code",
    "messaging.destination.partition.id",
    "messaging.kafka.offset",
    "error.type",
];
/// Prefixes of attributes always shown: the faults a request's baggage asked for.
const KEY_PREFIXES: &[&str] = &["demo.", "app.fault."];

pub fn render(trace: &Trace, all_attributes: bool) -> String {
    let rows = trace.rows();
    let start = trace.start_ns();
    let services = trace.services();
    let service_width = services
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0);
    let name_width = rows
        .iter()
        .map(|r| r.prefix.chars().count() + trace.spans[r.span].name.chars().count())
        .max()
        .unwrap_or(0);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {}: {} spans from {} service{} ({}), {}",
        trace.trace_id,
        trace.spans.len(),
        services.len(),
        if services.len() == 1 { "" } else { "s" },
        services.join(", "),
        duration(trace.duration_ns())
    );
    let _ = writeln!(
        out,
        "{:>10} {:>10}  {:<service_width$}  {:<name_width$}  {:<8}  status",
        "offset", "duration", "service", "span", "kind"
    );
    for row in &rows {
        let span = &trace.spans[row.span];
        let name = format!("{}{}", row.prefix, span.name);
        let mut line = format!(
            "{:>10} {:>10}  {:<service_width$}  {}{}  {:<8}  {}",
            duration(span.start_ns.saturating_sub(start)),
            duration(span.duration_ns()),
            span.service,
            name,
            " ".repeat(name_width.saturating_sub(name.chars().count())),
            span.kind.as_str(),
            status_word(&span.status),
        );
        for (key, value) in shown_attributes(span, all_attributes) {
            let _ = write!(line, "  {key}={value}");
        }
        if let Status::Error(message) = &span.status
            && !message.is_empty()
        {
            let _ = write!(line, "  \"{message}\"");
        }
        for link in &span.links {
            let _ = write!(line, "  link→ {}", describe_link(trace, link));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The key attributes, or every attribute.
pub fn shown_attributes(span: &Span, all: bool) -> Vec<(&str, &str)> {
    span.attributes
        .iter()
        .filter(|(key, _)| {
            all || KEY_ATTRIBUTES.contains(&key.as_str())
                || KEY_PREFIXES.iter().any(|p| key.starts_with(p))
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

pub fn status_word(status: &Status) -> &'static str {
    match status {
        Status::Unset => "-",
        Status::Ok => "OK",
        Status::Error(_) => "ERROR",
    }
}

/// A linked span by service and name when it is in this trace, by ids otherwise.
pub fn describe_link(trace: &Trace, link: &crate::model::Link) -> String {
    match trace.by_id(&link.span_id) {
        Some(linked) if link.trace_id == trace.trace_id => {
            format!("{} ({})", linked.name, linked.service)
        }
        _ => format!("trace {} span {}", link.trace_id, link.span_id),
    }
}

/// `0.42 ms`, `12.3 ms`, `1.25 s`.
pub fn duration(nanos: u64) -> String {
    let ms = nanos as f64 / 1e6;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}
