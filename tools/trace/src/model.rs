//! One trace as Jaeger's `/api/v3/traces/{id}` returns it (OTLP JSON), read into spans
//! and arranged as the tree of parents and children that both renderings print.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

/// Jaeger's answer did not hold a trace.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("Jaeger's answer is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("Jaeger's answer holds no spans (no result.resourceSpans)")]
    NoSpans,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
    Unspecified,
}

impl Kind {
    /// OTLP JSON gives the kind as its number or its enum name.
    fn from_otlp(value: &Value) -> Self {
        let number = match value {
            Value::Number(n) => n.as_i64().unwrap_or(0),
            Value::String(s) => match s.trim_start_matches("SPAN_KIND_") {
                "INTERNAL" => 1,
                "SERVER" => 2,
                "CLIENT" => 3,
                "PRODUCER" => 4,
                "CONSUMER" => 5,
                _ => 0,
            },
            _ => 0,
        };
        match number {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Internal => "INTERNAL",
            Self::Server => "SERVER",
            Self::Client => "CLIENT",
            Self::Producer => "PRODUCER",
            Self::Consumer => "CONSUMER",
            Self::Unspecified => "UNSPECIFIED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Unset,
    Ok,
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub trace_id: String,
    pub span_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub time_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub kind: Kind,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub status: Status,
    /// Sorted by key, values as text.
    pub attributes: Vec<(String, String)>,
    pub links: Vec<Link>,
    pub events: Vec<Event>,
}

impl Span {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_error(&self) -> bool {
        matches!(self.status, Status::Error(_))
    }
}

/// A span's place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Index into [`Trace::spans`].
    pub span: usize,
    pub depth: usize,
    /// The box-drawing prefix before its name (`├─ `, `│  └─ `, …); empty for a root.
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct Trace {
    pub trace_id: String,
    /// Sorted by start time.
    pub spans: Vec<Span>,
}

impl Trace {
    /// Reads Jaeger's answer: one JSON object, or several one after another (the API
    /// streams a large trace in chunks), each `{"result": {"resourceSpans": […]}}`.
    pub fn from_jaeger(body: &str) -> Result<Self, ParseError> {
        let mut spans = Vec::new();
        let mut saw_result = false;
        for chunk in serde_json::Deserializer::from_str(body).into_iter::<Value>() {
            let chunk = chunk?;
            if let Some(resources) = chunk["result"]["resourceSpans"].as_array() {
                saw_result = true;
                spans.extend(resources.iter().flat_map(resource_spans));
            }
        }
        if !saw_result || spans.is_empty() {
            return Err(ParseError::NoSpans);
        }
        spans.sort_by(|a, b| a.start_ns.cmp(&b.start_ns).then(a.name.cmp(&b.name)));
        Ok(Self {
            trace_id: spans[0].trace_id.clone(),
            spans,
        })
    }

    pub fn start_ns(&self) -> u64 {
        self.spans.iter().map(|s| s.start_ns).min().unwrap_or(0)
    }

    pub fn end_ns(&self) -> u64 {
        self.spans.iter().map(|s| s.end_ns).max().unwrap_or(0)
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_ns().saturating_sub(self.start_ns())
    }

    /// Services in order of their first span.
    pub fn services(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.spans
            .iter()
            .map(|s| s.service.as_str())
            .filter(|s| seen.insert(*s))
            .collect()
    }

    pub fn by_id(&self, span_id: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.span_id == span_id)
    }

    /// Depth-first, children in order of start: the order both renderings print. A span
    /// whose parent is not in the trace (a caller's span, or one Jaeger has not received)
    /// is a root of its own.
    pub fn rows(&self) -> Vec<Row> {
        let index: HashMap<&str, usize> = self
            .spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id.as_str(), i))
            .collect();
        let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut roots = Vec::new();
        for (i, span) in self.spans.iter().enumerate() {
            match index.get(span.parent_span_id.as_str()) {
                Some(&parent) if parent != i => children.entry(parent).or_default().push(i),
                _ => roots.push(i),
            }
        }
        let mut rows = Vec::with_capacity(self.spans.len());
        for root in roots {
            walk(root, 0, "", "", &children, &mut rows);
        }
        rows
    }
}

/// Adds `span` and its subtree; `lead` is what the rows below it inherit.
fn walk(
    span: usize,
    depth: usize,
    prefix: &str,
    lead: &str,
    children: &HashMap<usize, Vec<usize>>,
    rows: &mut Vec<Row>,
) {
    rows.push(Row {
        span,
        depth,
        prefix: prefix.to_owned(),
    });
    let Some(kids) = children.get(&span) else {
        return;
    };
    for (n, &child) in kids.iter().enumerate() {
        let last = n + 1 == kids.len();
        let (branch, next) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        walk(
            child,
            depth + 1,
            &format!("{lead}{branch}"),
            &format!("{lead}{next}"),
            children,
            rows,
        );
    }
}

fn resource_spans(resource: &Value) -> Vec<Span> {
    let service = attributes(&resource["resource"]["attributes"])
        .into_iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v)
        .unwrap_or_else(|| "(unknown service)".to_owned());
    let mut spans = Vec::new();
    for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
        for span in scope["spans"].as_array().into_iter().flatten() {
            spans.push(Span {
                service: service.clone(),
                name: text(&span["name"]),
                kind: Kind::from_otlp(&span["kind"]),
                trace_id: text(&span["traceId"]),
                span_id: text(&span["spanId"]),
                parent_span_id: text(&span["parentSpanId"]),
                start_ns: nanos(&span["startTimeUnixNano"]),
                end_ns: nanos(&span["endTimeUnixNano"]),
                status: status(&span["status"]),
                attributes: attributes(&span["attributes"]),
                links: span["links"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| Link {
                        trace_id: text(&l["traceId"]),
                        span_id: text(&l["spanId"]),
                    })
                    .collect(),
                events: span["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| Event {
                        name: text(&e["name"]),
                        time_ns: nanos(&e["timeUnixNano"]),
                    })
                    .collect(),
            });
        }
    }
    spans
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// OTLP JSON writes 64-bit integers as strings.
fn nanos(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn status(value: &Value) -> Status {
    let code = match &value["code"] {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) if s == "STATUS_CODE_ERROR" => 2,
        Value::String(s) if s == "STATUS_CODE_OK" => 1,
        _ => 0,
    };
    match code {
        2 => Status::Error(text(&value["message"])),
        1 => Status::Ok,
        _ => Status::Unset,
    }
}

/// An OTLP key/value list as sorted text pairs.
fn attributes(list: &Value) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| (text(&kv["key"]), any_value(&kv["value"])))
        .collect();
    pairs.sort();
    pairs
}

fn any_value(value: &Value) -> String {
    if let Some(s) = value.get("stringValue").and_then(Value::as_str) {
        s.to_owned()
    } else if let Some(v) = value.get("intValue") {
        match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    } else if let Some(v) = value.get("boolValue").or(value.get("doubleValue")) {
        v.to_string()
    } else if let Some(values) = value["arrayValue"]["values"].as_array() {
        let items: Vec<String> = values.iter().map(any_value).collect();
        format!("[{}]", items.join(", "))
    } else if let Some(values) = value["kvlistValue"]["values"].as_array() {
        let items: Vec<String> = values
            .iter()
            .map(|kv| format!("{}={}", text(&kv["key"]), any_value(&kv["value"])))
            .collect();
        format!("{{{}}}", items.join(", "))
    } else {
        value.to_string()
    }
}
