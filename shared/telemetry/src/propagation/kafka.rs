//! Kafka (rdkafka): the context rides in the record headers. rdkafka knows nothing of
//! OpenTelemetry, so the carriers are here, next to the spans that use them.
//!
//! - Producer: [`KafkaClient::producer_span`] (`send {topic}`, kind PRODUCER), then
//!   [`inject_headers`] writes *that span's* context into the record, and
//!   [`send_in_span`] sends it, keeping the span open until the broker answers.
//! - Consumer: [`KafkaClient::consumer_span`] (`process {topic}`, kind CONSUMER) extracts
//!   it, makes the producer span its parent (one trace per order) and also links to it,
//!   as the messaging conventions ask.
//!
//! Hop: order-service → worker. Without the headers the worker starts a new trace.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, ToBytes};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{extract, inject};
use crate::span::mark_error;

/// Writes the context of `span` into `headers` (`traceparent`, `tracestate`, `baggage`).
pub fn inject_headers(span: &tracing::Span, headers: OwnedHeaders) -> OwnedHeaders {
    let mut carrier = RecordHeaderInjector(Vec::new());
    inject(&span.context(), &mut carrier);
    carrier.0.iter().fold(headers, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_str()),
        })
    })
}

/// Collects what the propagator writes; `OwnedHeaders::insert` consumes the headers,
/// which an `Injector` (`&mut self`) cannot do.
#[derive(Debug)]
struct RecordHeaderInjector(Vec<(String, String)>);

impl Injector for RecordHeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// Reads propagation headers from a consumed (or any) record. Kafka header keys may
/// repeat; `get` returns the first, `get_all` every value in order.
#[derive(Debug)]
pub struct RecordHeaderExtractor<'a, H>(pub &'a H);

impl<'h, H: Headers> RecordHeaderExtractor<'h, H> {
    fn values<'k>(&self, key: &'k str) -> impl Iterator<Item = &'h str> + use<'h, 'k, H> {
        let headers = self.0;
        (0..headers.count())
            .filter_map(move |i| headers.try_get(i))
            .filter(move |h| h.key.eq_ignore_ascii_case(key))
            // A header that is not UTF-8 cannot be a W3C header: ignore it.
            .filter_map(|h| std::str::from_utf8(h.value?).ok())
    }
}

impl<H: Headers> Extractor for RecordHeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.values(key).next()
    }

    fn keys(&self) -> Vec<&str> {
        (0..self.0.count())
            .filter_map(|i| self.0.try_get(i))
            .map(|h| h.key)
            .collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values: Vec<&str> = self.values(key).collect();
        (!values.is_empty()).then_some(values)
    }
}

/// Who talks to Kafka, for the spans' `messaging.client.id` and `server.address`/
/// `server.port` (the first bootstrap broker: the one address known without a lookup).
#[derive(Debug, Clone)]
pub struct KafkaClient {
    client_id: String,
    server_address: Option<String>,
    server_port: Option<i64>,
}

impl KafkaClient {
    /// `client_id` is the one given to rdkafka (`client.id`); `bootstrap_servers` the
    /// `host:port,...` list.
    pub fn new(client_id: &str, bootstrap_servers: &str) -> Self {
        let first = bootstrap_servers
            .split(',')
            .next()
            .unwrap_or_default()
            .trim();
        let (host, port) = match first.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().ok().map(i64::from)),
            None => (first, None),
        };
        Self {
            client_id: client_id.to_owned(),
            server_address: (!host.is_empty()).then(|| host.to_owned()),
            server_port: port,
        }
    }

    /// The PRODUCER span for publishing one record. Create it inside the span of the work
    /// that publishes, inject its context with [`inject_headers`], and send with
    /// [`send_in_span`].
    pub fn producer_span(&self, topic: &str, key: &str) -> tracing::Span {
        tracing::info_span!(
            "Kafka send",
            otel.name = format!("send {topic}").as_str(),
            otel.kind = "producer",
            otel.status_code = Empty,
            otel.status_description = Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = topic,
            messaging.client.id = self.client_id.as_str(),
            messaging.kafka.message.key = key,
            messaging.destination.partition.id = Empty,
            messaging.kafka.offset = Empty,
            server.address = self.server_address.as_deref(),
            server.port = self.server_port,
            error.type = Empty,
        )
    }

    /// The CONSUMER span for processing one record: continues the producer's trace and
    /// links to the producer span. Enter it (`.instrument`) around all work for the record.
    pub fn consumer_span<M: Message>(&self, message: &M, group: &str) -> tracing::Span {
        let topic = message.topic();
        let key = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "Kafka process",
            otel.name = format!("process {topic}").as_str(),
            otel.kind = "consumer",
            otel.status_code = Empty,
            otel.status_description = Empty,
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = topic,
            messaging.consumer.group.name = group,
            messaging.client.id = self.client_id.as_str(),
            messaging.kafka.message.key = key,
            messaging.destination.partition.id = message.partition().to_string(),
            messaging.kafka.offset = message.offset(),
            server.address = self.server_address.as_deref(),
            server.port = self.server_port,
            error.type = Empty,
        );
        let producer = match message.headers() {
            Some(headers) => extract(&RecordHeaderExtractor(headers)),
            None => opentelemetry::Context::new(),
        };
        let producer_span = producer.span().span_context().clone();
        // Parent first: it must be set before anything starts the span.
        if let Err(error) = span.set_parent(producer) {
            tracing::warn!(%error, "could not continue the producer's trace");
        }
        if producer_span.is_valid() {
            span.add_link(producer_span);
        }
        span
    }
}

/// Sends `record` inside `span`, a PRODUCER span from [`KafkaClient::producer_span`] whose
/// context the caller has injected into the record's headers ([`inject_headers`]). The
/// span stays open until the broker answers, so it covers the whole send, and records
/// where the record was stored, or marks the failure. Returns (partition, offset).
pub async fn send_in_span<K, P>(
    producer: &FutureProducer,
    record: FutureRecord<'_, K, P>,
    span: &tracing::Span,
    timeout: Duration,
) -> Result<(i32, i64), KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    match producer
        .send(record, Timeout::After(timeout))
        .instrument(span.clone())
        .await
    {
        Ok(delivery) => {
            span.record(
                "messaging.destination.partition.id",
                delivery.partition.to_string(),
            );
            span.record("messaging.kafka.offset", delivery.offset);
            Ok((delivery.partition, delivery.offset))
        }
        Err((error, _record)) => {
            mark_error(span, "kafka", &error.to_string());
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use rdkafka::message::{OwnedMessage, Timestamp};

    fn owned_message(headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"order-1".to_vec()),
            "orders".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(headers),
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
        pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(*v),
            })
        })
    }

    #[test]
    fn extractor_reads_first_and_all_values_of_repeated_keys() {
        let h = headers(&[("tracestate", "a=1"), ("other", "x"), ("tracestate", "b=2")]);
        let extractor = RecordHeaderExtractor(&h);
        assert_eq!(extractor.get("tracestate"), Some("a=1"));
        assert_eq!(extractor.get_all("tracestate"), Some(vec!["a=1", "b=2"]));
        assert_eq!(extractor.get("missing"), None);
        assert_eq!(extractor.keys(), vec!["tracestate", "other", "tracestate"]);
    }

    #[test]
    fn extractor_ignores_values_that_are_not_utf8() {
        let h = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(&[0xff_u8, 0xfe][..]),
        });
        assert_eq!(RecordHeaderExtractor(&h).get("traceparent"), None);
    }

    #[test]
    fn injected_headers_extract_to_the_same_context() {
        crate::testing::install_propagator();
        let sent = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        );
        let mut carrier = RecordHeaderInjector(Vec::new());
        inject(
            &opentelemetry::Context::new().with_remote_span_context(sent.clone()),
            &mut carrier,
        );
        let h = carrier.0.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_str()),
            })
        });
        let message = owned_message(h);
        let received = extract(&RecordHeaderExtractor(message.headers().unwrap()));
        assert_eq!(received.span().span_context(), &sent);
    }

    #[test]
    fn invalid_traceparent_extracts_to_no_parent() {
        crate::testing::install_propagator();
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let message = owned_message(headers(&[("traceparent", bad)]));
            let cx = extract(&RecordHeaderExtractor(message.headers().unwrap()));
            assert!(!cx.span().span_context().is_valid(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod client_tests {
    use super::KafkaClient;

    #[test]
    fn the_first_bootstrap_broker_is_the_server() {
        let client = KafkaClient::new("worker", "kafka-1:9092,kafka-2:9092");
        assert_eq!(client.server_address.as_deref(), Some("kafka-1"));
        assert_eq!(client.server_port, Some(9092));
        let bare = KafkaClient::new("worker", "localhost");
        assert_eq!(bare.server_address.as_deref(), Some("localhost"));
        assert_eq!(bare.server_port, None);
    }
}
