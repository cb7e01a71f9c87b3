//! Reading traces back from Jaeger's query API (`/api/v3`, OTLP JSON), which keeps the
//! parent and the links of a span apart (the older `/api/traces` folds a parent that is
//! also linked into one FOLLOWS_FROM reference).

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct StoredSpan {
    pub service: String,
    /// `service.instance.id` of the process that made it.
    pub instance: String,
    pub name: String,
    pub kind: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub linked_span_ids: Vec<String>,
    pub is_error: bool,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: BTreeMap<String, Value>,
}

/// Spans of every trace in a `/api/v3/traces...` answer.
pub fn parse(answer: &Value) -> Vec<StoredSpan> {
    let mut spans = Vec::new();
    let Some(resource_spans) = answer["result"]["resourceSpans"].as_array() else {
        return spans;
    };
    for resource in resource_spans {
        let resource_attributes = attributes(&resource["resource"]["attributes"]);
        let resource_text = |key: &str| {
            resource_attributes
                .get(key)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let (service, instance) = (
            resource_text("service.name"),
            resource_text("service.instance.id"),
        );
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                spans.push(StoredSpan {
                    service: service.clone(),
                    instance: instance.clone(),
                    name: text(&span["name"]),
                    kind: kind(&span["kind"]),
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_span_id: text(&span["parentSpanId"]),
                    linked_span_ids: span["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| text(&l["spanId"]))
                        .collect(),
                    is_error: matches!(&span["status"]["code"], Value::Number(n) if n.as_i64() == Some(2))
                        || span["status"]["code"] == "STATUS_CODE_ERROR",
                    start_unix_nano: nanos(&span["startTimeUnixNano"]),
                    end_unix_nano: nanos(&span["endTimeUnixNano"]),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    spans
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// A timestamp in ns since the epoch: a string in OTLP JSON (a 64-bit integer).
fn nanos(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.parse().unwrap_or_default(),
        other => other.as_u64().unwrap_or_default(),
    }
}

/// OTLP JSON may give the kind as its number or its enum name.
fn kind(value: &Value) -> String {
    let name = match value {
        Value::Number(n) => match n.as_i64() {
            Some(1) => "INTERNAL",
            Some(2) => "SERVER",
            Some(3) => "CLIENT",
            Some(4) => "PRODUCER",
            Some(5) => "CONSUMER",
            _ => "UNSPECIFIED",
        },
        Value::String(s) => s.trim_start_matches("SPAN_KIND_"),
        _ => "INTERNAL",
    };
    name.to_owned()
}

/// OTLP key/value list to a map of plain JSON values (`{"stringValue": "x"}` → `"x"`;
/// integers arrive as strings in OTLP JSON and become numbers here).
fn attributes(list: &Value) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for kv in list.as_array().into_iter().flatten() {
        let key = text(&kv["key"]);
        let value = &kv["value"];
        let plain = if let Some(s) = value.get("stringValue") {
            s.clone()
        } else if let Some(i) = value.get("intValue") {
            match i {
                Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or(Value::Null),
                other => other.clone(),
            }
        } else if let Some(b) = value.get("boolValue") {
            b.clone()
        } else if let Some(d) = value.get("doubleValue") {
            d.clone()
        } else {
            Value::Null
        };
        map.insert(key, plain);
    }
    map
}
