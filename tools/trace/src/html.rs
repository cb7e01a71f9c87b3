//! The trace as a waterfall in one HTML file: no script, no stylesheet or font from
//! anywhere else, so it opens from disk in any browser, offline, and can be attached to
//! an issue. Each span is a row (its name indented under its parent, a bar placed by
//! its start and length); a click opens its attributes, events and links.

use std::fmt::Write as _;

use crate::model::{Status, Trace};
use crate::text::{describe_link, duration, status_word};

/// One colour per service, in order of first appearance (repeating past six).
const PALETTE: &[&str] = &[
    "#4e79a7", "#59a14f", "#b07aa1", "#f28e2b", "#76b7b2", "#edc948",
];

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.2rem; margin: 0 0 .3rem; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.summary { color: #555; margin: 0 0 .8rem; }
.legend span { display: inline-block; margin-right: 1rem; }
.legend i { display: inline-block; width: .8rem; height: .8rem; margin-right: .3rem; vertical-align: -1px; border-radius: 2px; }
.axis, summary { display: grid; grid-template-columns: minmax(22rem, 40%) 1fr; }
.axis { color: #777; font-size: 12px; border-bottom: 1px solid #ccc; margin-top: .8rem; }
.ticks { position: relative; height: 1.2rem; }
.ticks span { position: absolute; transform: translateX(-50%); }
.ticks span:first-child { transform: none; }
.ticks span:last-child { transform: translateX(-100%); }
details { border-bottom: 1px solid #eee; }
summary { cursor: pointer; list-style: none; padding: 2px 0; }
summary::-webkit-details-marker { display: none; }
summary:hover { background: #f5f7fa; }
.label { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.tree { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre; }
.service { font-weight: 600; margin-right: .4rem; }
.kind { color: #888; font-size: 11px; margin-left: .4rem; }
.track { position: relative; }
.bar { position: absolute; top: 4px; height: 12px; min-width: 2px; border-radius: 2px; }
.bar.error { outline: 2px solid #d62728; background-image: repeating-linear-gradient(45deg, transparent 0 4px, rgba(214,39,40,.5) 4px 8px); }
.time { position: absolute; top: 1px; font-size: 11px; color: #555; white-space: nowrap; }
.error-text { color: #d62728; font-weight: 600; }
.info { margin: .2rem 0 .6rem 2rem; }
.info table { border-collapse: collapse; }
.info td { padding: 1px .8rem 1px 0; vertical-align: top; }
.info td:first-child { color: #666; }
";

pub fn render(trace: &Trace) -> String {
    let start = trace.start_ns();
    let total = trace.duration_ns().max(1) as f64;
    let services = trace.services();
    let colour = |service: &str| {
        let n = services.iter().position(|s| *s == service).unwrap_or(0);
        PALETTE[n % PALETTE.len()]
    };
    let errors = trace.spans.iter().filter(|s| s.is_error()).count();

    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>trace {id}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>trace <code>{id}</code></h1>\n\
         <p class=\"summary\">{spans} spans from {n} services, {length}{errors}</p>\n<div class=\"legend\">",
        id = escape(&trace.trace_id),
        spans = trace.spans.len(),
        n = services.len(),
        length = duration(trace.duration_ns()),
        errors = match errors {
            0 => String::new(),
            n => format!(", <span class=\"error-text\">{n} with status ERROR</span>"),
        },
    );
    for service in &services {
        let _ = write!(
            out,
            "<span><i style=\"background:{}\"></i>{}</span>",
            colour(service),
            escape(service)
        );
    }
    out.push_str("</div>\n<div class=\"axis\"><span>span</span><div class=\"ticks\">");
    for quarter in 0..=4_u64 {
        let _ = write!(
            out,
            "<span style=\"left:{}%\">{}</span>",
            quarter * 25,
            duration(trace.duration_ns() * quarter / 4)
        );
    }
    out.push_str("</div></div>\n");

    for row in trace.rows() {
        let span = &trace.spans[row.span];
        let offset = span.start_ns.saturating_sub(start);
        let left = offset as f64 / total * 100.0;
        let width = span.duration_ns() as f64 / total * 100.0;
        // The label goes right of the bar, or left of it when the bar reaches the end.
        let time_position = if left + width > 80.0 {
            format!("right:{:.3}%", 100.0 - left + 0.5)
        } else {
            format!("left:{:.3}%", left + width + 0.5)
        };
        let _ = writeln!(
            out,
            "<details><summary><span class=\"label\"><span class=\"tree\">{prefix}</span>\
             <span class=\"service\" style=\"color:{colour}\">{service}</span>{name}\
             <span class=\"kind\">{kind}</span>{error}</span>\
             <span class=\"track\"><span class=\"bar{error_class}\" style=\"left:{left:.3}%;width:{width:.3}%;background-color:{colour}\"></span>\
             <span class=\"time\" style=\"{time_position}\">{length}</span></span></summary>",
            prefix = escape(&row.prefix),
            colour = colour(&span.service),
            service = escape(&span.service),
            name = escape(&span.name),
            kind = span.kind.as_str(),
            error = if span.is_error() {
                " <span class=\"error-text\">ERROR</span>"
            } else {
                ""
            },
            error_class = if span.is_error() { " error" } else { "" },
            length = duration(span.duration_ns()),
        );
        out.push_str("<div class=\"info\"><table>");
        let mut field = |key: &str, value: &str| {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"mono\">{}</td></tr>",
                escape(key),
                escape(value)
            );
        };
        let status = match &span.status {
            Status::Error(message) if !message.is_empty() => format!("ERROR: {message}"),
            other => status_word(other).to_owned(),
        };
        field("status", &status);
        field("offset", &duration(offset));
        field("duration", &duration(span.duration_ns()));
        field("span id", &span.span_id);
        if !span.parent_span_id.is_empty() {
            field("parent span id", &span.parent_span_id);
        }
        for (key, value) in &span.attributes {
            field(key, value);
        }
        for event in &span.events {
            field(
                &format!("event at {}", duration(event.time_ns.saturating_sub(start))),
                &event.name,
            );
        }
        for link in &span.links {
            field("link", &describe_link(trace, link));
        }
        out.push_str("</table></div></details>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// Text made safe inside HTML elements and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_covers_elements_and_attribute_values() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
    }
}
