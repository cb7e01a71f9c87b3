//! Properties of the W3C propagators: inject → extract is the identity for any valid
//! context and baggage, any valid `tracestate` list is sent on unchanged over every
//! transport while one invalid key drops it, and no input string makes extraction panic.

// Test-only crate: a panic is how a helper reports a failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use proptest::prelude::*;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage, Timestamp};
use telemetry::propagation::w3c::{
    BaggagePropagator, TraceContextPropagator, parse_baggage, parse_traceparent, parse_tracestate,
};
use telemetry::propagation::{extract, http, inject, kafka};
use telemetry::{TelemetryConfig, TelemetryGuard};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A key over the whole grammar, `( lcalpha / DIGIT ) 0*255 ( keychar )` with `@` among
/// the keychars: short keys (so that lists repeat them), keys with an `@` and up to 20
/// characters after it (the SDK's `TraceState` refuses more than 13), keys of any length
/// and keys of 251 to 256 characters.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9_*/@-]{0,6}",
        "[a-z0-9][a-z0-9_*/-]{0,4}@[a-z0-9_*/@-]{0,20}",
        "[a-z0-9][a-z0-9_*/@-]{0,255}",
        "[a-z0-9][a-z0-9_*/@-]{250,255}",
    ]
}

/// `0*255(chr) nblk-chr`, shortened to keep 32-member lists cheap.
fn value() -> impl Strategy<Value = String> {
    "[ -+\\--<>-~]{0,40}[!-+\\--<>-~]"
}

/// A valid list of up to 32 members. Keys are drawn from a pool that is often smaller
/// than the list, so many lists repeat a key, with the same value or another.
fn tracestate() -> impl Strategy<Value = Vec<(String, String)>> {
    (
        prop::collection::vec(key(), 1..=32),
        prop::collection::vec((any::<prop::sample::Index>(), value()), 0..=32),
    )
        .prop_map(|(keys, members)| {
            members
                .into_iter()
                .map(|(i, value)| (i.get(&keys).clone(), value))
                .collect()
        })
}

/// Where the list is split into headers, and what separates the members within one:
/// the comma, with optional whitespace and empty members around it.
fn layout() -> impl Strategy<Value = Vec<(bool, &'static str)>> {
    let separator = prop::sample::select(vec![",", " , ", ",\t", ",,", "\t, ,"]);
    prop::collection::vec((any::<bool>(), separator), 32)
}

/// The list as a sender may write it in `tracestate` headers, following `layout`.
fn written(list: &[(String, String)], layout: &[(bool, &str)]) -> Vec<String> {
    let mut headers = vec![String::new()];
    for (i, ((key, value), &(new_header, separator))) in list.iter().zip(layout).enumerate() {
        if i > 0 && new_header {
            headers.push(String::new());
        }
        let header = headers.last_mut().unwrap();
        if !header.is_empty() {
            header.push_str(separator);
        }
        header.push_str(&format!("{key}={value}"));
    }
    headers
}

/// The list as this service sends it on: every member, duplicates included, in order,
/// without the optional whitespace and empty members.
fn canonical(list: &[(String, String)]) -> String {
    let members: Vec<String> = list.iter().map(|(k, v)| format!("{k}={v}")).collect();
    members.join(",")
}

/// Whether opentelemetry 0.33's `TraceState` holds a key the grammar allows: it checks
/// keys against the older grammar, at most one `@`, and after it at most 13 characters,
/// the first a letter or digit.
fn sdk_holds(key: &str) -> bool {
    match key.split_once('@') {
        None => true,
        Some((_, after)) => {
            !after.contains('@')
                && after.len() <= 13
                && after
                    .bytes()
                    .next()
                    .is_none_or(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }
    }
}

/// The process-wide propagator and tracer provider, set up by `telemetry::init` as a
/// service's `main` does (exporting nothing), once for this test process. The guard is
/// kept for the life of the process: dropping it shuts the tracer provider down.
fn init_telemetry() {
    static GUARD: OnceLock<TelemetryGuard> = OnceLock::new();
    GUARD.get_or_init(|| {
        let config = TelemetryConfig::from_source("w3c-properties", "test", &|key: &str| {
            (key == "OTEL_TRACES_EXPORTER").then(|| "none".to_owned())
        })
        .unwrap();
        telemetry::init(&config).unwrap()
    });
}

/// A span of this service continuing `cx`, as every server-side layer makes one.
fn child_of(cx: Context) -> tracing::Span {
    let span = tracing::info_span!("hop");
    span.set_parent(cx).unwrap();
    span
}

/// HTTP in, HTTP out: returns the `traceparent` and every `tracestate` sent on.
fn over_http(traceparent: &str, tracestates: &[String]) -> (String, Vec<String>) {
    let mut inbound = ::http::HeaderMap::new();
    inbound.append("traceparent", traceparent.parse().unwrap());
    for value in tracestates {
        inbound.append("tracestate", value.parse().unwrap());
    }
    let span = child_of(extract(&HeaderExtractor(&inbound)));
    let mut outbound = ::http::HeaderMap::new();
    http::inject_headers(&span, &mut outbound);
    let all = |name| {
        outbound
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    (all("traceparent").concat(), all("tracestate"))
}

/// gRPC metadata in (as the server layer reads it, HTTP/2 headers), metadata out (as the
/// client layer writes it).
fn over_grpc(traceparent: &str, tracestates: &[String]) -> (String, Vec<String>) {
    let mut inbound = tonic::metadata::MetadataMap::new();
    inbound.append("traceparent", traceparent.parse().unwrap());
    for value in tracestates {
        inbound.append("tracestate", value.parse().unwrap());
    }
    let span = child_of(extract(&HeaderExtractor(&inbound.into_headers())));
    let mut headers = ::http::HeaderMap::new();
    inject(&span.context(), &mut HeaderInjector(&mut headers));
    let outbound = tonic::metadata::MetadataMap::from_headers(headers);
    let all = |name| {
        outbound
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    (all("traceparent").concat(), all("tracestate"))
}

/// A consumed Kafka record in (the consumer span), record headers out (the producer side).
fn over_kafka(traceparent: &str, tracestates: &[String]) -> (String, Vec<String>) {
    let inbound = tracestates.iter().fold(
        OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(traceparent),
        }),
        |headers, value| {
            headers.insert(Header {
                key: "tracestate",
                value: Some(value.as_str()),
            })
        },
    );
    let record = OwnedMessage::new(
        None,
        None,
        "orders".to_owned(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(inbound),
    );
    let span = kafka::KafkaClient::new("w3c-properties", "localhost:9092")
        .consumer_span(&record, "w3c-properties");
    let outbound = kafka::inject_headers(&span, OwnedHeaders::new());
    let all = |name| {
        outbound
            .iter()
            .filter(|h| h.key == name)
            .map(|h| String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap())
            .collect::<Vec<_>>()
    };
    (all("traceparent").concat(), all("tracestate"))
}

/// Token keys and any Unicode value: the propagator percent-encodes what it must.
fn baggage() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[A-Za-z0-9!#$&'*+.^_`|~-]{1,16}", "\\PC{0,24}", 0..=64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn trace_context_round_trips(
        trace in 1u128..,
        span in 1u64..,
        flags in 0u8..4,
        list in tracestate(),
    ) {
        let held = list
            .iter()
            .filter(|(k, _)| sdk_holds(k))
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let sent = SpanContext::new(
            TraceId::from_bytes(trace.to_be_bytes()),
            SpanId::from_bytes(span.to_be_bytes()),
            TraceFlags::new(flags),
            true,
            TraceState::from_key_value(held).unwrap(),
        );
        let propagator = TraceContextPropagator::default();
        let mut carrier = HashMap::new();
        propagator.inject_context(&Context::new().with_remote_span_context(sent.clone()), &mut carrier);
        let received = propagator.extract(&carrier);
        let span = received.span();
        prop_assert_eq!(span.span_context(), &sent);
    }

    /// A valid list is never dropped, and the SDK's `TraceState` holds every member whose
    /// key it accepts, in order, duplicates included.
    #[test]
    fn valid_tracestate_is_kept_and_the_sdk_holds_what_it_can(
        list in tracestate(),
        layout in layout(),
    ) {
        let headers = written(&list, &layout);
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let state = parse_tracestate(&refs);
        prop_assert!(state.is_some(), "{:?} is valid", headers);
        let held: Vec<_> = list.iter().filter(|(k, _)| sdk_holds(k)).cloned().collect();
        prop_assert_eq!(state.unwrap_or_default().header(), canonical(&held));
    }

    /// Through the process-wide propagator: a valid list arrives (over one or more headers)
    /// on each transport, a span of this service continues the trace, and the list goes on
    /// unchanged, in one header, whatever the SDK's `TraceState` could hold of it.
    #[test]
    fn valid_tracestate_goes_on_unchanged_over_every_transport(
        trace in 1u128..,
        span in 1u64..,
        flags in 0u8..4,
        list in tracestate(),
        layout in layout(),
    ) {
        init_telemetry();
        let trace = TraceId::from_bytes(trace.to_be_bytes());
        let traceparent = format!(
            "00-{trace}-{}-{flags:02x}",
            SpanId::from_bytes(span.to_be_bytes())
        );
        let headers = written(&list, &layout);
        // An empty list is not sent at all.
        let expected: Vec<String> = if list.is_empty() { vec![] } else { vec![canonical(&list)] };
        // Two `traceparent` headers sent on would concatenate into one that does not parse.
        for (transport, hop) in [
            ("http", over_http as fn(&str, &[String]) -> (String, Vec<String>)),
            ("grpc", over_grpc),
            ("kafka", over_kafka),
        ] {
            let (sent_traceparent, sent) = hop(&traceparent, &headers);
            prop_assert_eq!(
                parse_traceparent(&sent_traceparent).map(|(t, _, _)| t),
                Some(trace),
                "{}: the trace is continued", transport
            );
            prop_assert_eq!(&sent, &expected, "{}: {:?}", transport, headers);
        }
    }

    /// One member whose key breaks the grammar (starts with `@`, has 257 characters or
    /// more, or a character outside it) invalidates the whole list, wherever it is.
    #[test]
    fn one_invalid_key_drops_the_list(
        list in tracestate(),
        at in any::<prop::sample::Index>(),
        bad in prop_oneof![
            "@[a-z0-9_*/@-]{0,20}",
            "[a-z0-9][a-z0-9_*/@-]{256,300}",
            "[a-z0-9_*/@-]{0,10}[A-Z.:;!~][a-z0-9_*/@-]{0,10}",
        ],
        layout in layout(),
    ) {
        let mut list = list;
        // Room for the bad member: 33 members would be invalid for another reason.
        list.truncate(31);
        list.insert(at.index(list.len() + 1), (bad, "1".to_owned()));
        let headers = written(&list, &layout);
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        prop_assert!(parse_tracestate(&refs).is_none(), "{:?} is invalid", headers);
    }

    #[test]
    fn baggage_round_trips(members in baggage()) {
        let sent: Baggage = members
            .iter()
            .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone()))
            .collect();
        let propagator = BaggagePropagator::default();
        let mut carrier = HashMap::new();
        propagator.inject_context(&Context::new().with_baggage(sent), &mut carrier);
        let received = propagator.extract(&carrier);
        let received: BTreeMap<String, String> = received
            .baggage()
            .iter()
            .map(|(k, (v, _))| (k.to_string(), v.as_str().to_owned()))
            .collect();
        prop_assert_eq!(received, members);
    }

    #[test]
    fn no_input_makes_extraction_panic(a in "\\PC{0,120}", b in "[ -~]{0,120}", c in any::<String>()) {
        for s in [&a, &b, &c] {
            let _ = parse_traceparent(s);
            let _ = parse_tracestate(&[s, &b]);
            let _ = parse_baggage(&[s, &a]);
        }
    }

    #[test]
    fn near_valid_traceparents_never_panic(s in "[0-9a-fA-F -]{50,60}") {
        if let Some((trace, span, flags)) = parse_traceparent(&s) {
            prop_assert!(trace != TraceId::INVALID && span != SpanId::INVALID);
            prop_assert!(flags.to_u8() <= 3);
        }
    }
}
