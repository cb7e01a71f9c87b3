//! What one span may weigh: how many attributes, events and links it keeps, and how long
//! a text attribute may be (`OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`, `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`
//! and their kin), so a long URL or user agent cannot inflate every span it lands on.
//!
//! The SDK enforces the counts itself (`SpanLimits`); it has no value-length limit, so
//! [`Truncating`] applies it to every span on its way to an exporter.

use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanLimits};
use settings::{SettingError, Source, positive_or, value};

/// The limits, as read from the `OTEL_*` variables (the spec's defaults: 128 of each, no
/// length limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub attributes_per_span: u32,
    pub events_per_span: u32,
    pub links_per_span: u32,
    /// Characters a text attribute keeps; `None`: no limit.
    pub attribute_value_length: Option<usize>,
}

impl Limits {
    pub(crate) fn from_source(source: &impl Source) -> Result<Self, SettingError> {
        // The span-specific variable wins over the general one, as the spec says.
        let first = |specific: &str, general: &str| {
            if value(source, specific).is_some() {
                specific.to_owned()
            } else {
                general.to_owned()
            }
        };
        let count = |var: &str| -> Result<u32, SettingError> {
            let n = positive_or(source, var, 128)?;
            u32::try_from(n).map_err(|_| SettingError::new(var, n, "too large"))
        };
        let length_var = first(
            "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        );
        let attribute_value_length = match value(source, &length_var) {
            None => None,
            Some(_) => Some(positive_or(source, &length_var, 1)? as usize),
        };
        Ok(Self {
            attributes_per_span: count(&first(
                "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
                "OTEL_ATTRIBUTE_COUNT_LIMIT",
            ))?,
            events_per_span: count("OTEL_SPAN_EVENT_COUNT_LIMIT")?,
            links_per_span: count("OTEL_SPAN_LINK_COUNT_LIMIT")?,
            attribute_value_length,
        })
    }

    pub(crate) fn span_limits(&self) -> SpanLimits {
        SpanLimits {
            max_attributes_per_span: self.attributes_per_span,
            max_events_per_span: self.events_per_span,
            max_links_per_span: self.links_per_span,
            ..SpanLimits::default()
        }
    }
}

/// An exporter that cuts text attributes to the length limit before handing spans on.
#[derive(Debug)]
pub(crate) struct Truncating<E> {
    inner: E,
    max_chars: Option<usize>,
}

impl<E> Truncating<E> {
    pub(crate) fn new(inner: E, limits: &Limits) -> Self {
        Self {
            inner,
            max_chars: limits.attribute_value_length,
        }
    }
}

impl<E: SpanExporter> SpanExporter for Truncating<E> {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        if let Some(max) = self.max_chars {
            for span in &mut batch {
                truncate_all(&mut span.attributes, max);
                for event in span.events.events.iter_mut() {
                    truncate_all(&mut event.attributes, max);
                }
                for link in span.links.links.iter_mut() {
                    truncate_all(&mut link.attributes, max);
                }
            }
        }
        self.inner.export(batch).await
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

fn truncate_all(attributes: &mut [KeyValue], max: usize) {
    for attribute in attributes {
        match &mut attribute.value {
            Value::String(text) => {
                if let Some(cut) = truncated(text.as_str(), max) {
                    *text = cut;
                }
            }
            Value::Array(Array::String(texts)) => {
                for text in texts.iter_mut() {
                    if let Some(cut) = truncated(text.as_str(), max) {
                        *text = cut;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The first `max` characters (never half a character), if `text` is longer.
fn truncated(text: &str, max: usize) -> Option<StringValue> {
    let (end, _) = text.char_indices().nth(max)?;
    Some(text[..end].to_owned().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn limits(vars: &[(&str, &str)]) -> Result<Limits, SettingError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Limits::from_source(&map)
    }

    #[test]
    fn reads_the_spec_variables_with_the_spec_defaults() {
        let defaults = limits(&[]).unwrap();
        assert_eq!(defaults.attributes_per_span, 128);
        assert_eq!(defaults.attribute_value_length, None);
        let set = limits(&[
            ("OTEL_ATTRIBUTE_COUNT_LIMIT", "10"),
            ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "100"),
            ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "50"),
        ])
        .unwrap();
        assert_eq!(set.attributes_per_span, 10);
        assert_eq!(
            set.attribute_value_length,
            Some(50),
            "the span-specific one wins"
        );
        for (var, bad) in [
            ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "0"),
            ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "long"),
            ("OTEL_SPAN_LINK_COUNT_LIMIT", "-1"),
        ] {
            assert_eq!(limits(&[(var, bad)]).unwrap_err().variable, var);
        }
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        let mut attributes = vec![
            KeyValue::new("user_agent.original", "é".repeat(10)),
            KeyValue::new("short", "ok"),
            KeyValue::new("count", 12_345_i64),
        ];
        truncate_all(&mut attributes, 4);
        assert_eq!(attributes[0].value.as_str(), "éééé");
        assert_eq!(attributes[1].value.as_str(), "ok");
        assert_eq!(attributes[2].value, Value::I64(12_345));
    }
}
