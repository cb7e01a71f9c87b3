//! Properties of the W3C propagators: inject → extract is the identity for any valid
//! context and baggage, and no input string makes extraction panic.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use proptest::prelude::*;
use telemetry::propagation::w3c::{
    BaggagePropagator, TraceContextPropagator, parse_baggage, parse_traceparent, parse_tracestate,
};

/// Keys and values the tracestate grammar allows (system-ids up to 13 characters: the
/// SDK's `TraceState` cannot hold the 14th the grammar allows; see `parse_tracestate`).
fn tracestate() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key = prop_oneof![
        "[a-z][a-z0-9_*/-]{0,30}",
        "[a-z0-9][a-z0-9_*/-]{0,20}@[a-z][a-z0-9_*/-]{0,12}",
    ];
    let value = "[!-+\\--<>-~]([ -+\\--<>-~]{0,40}[!-+\\--<>-~])?";
    prop::collection::btree_map(key, value, 0..=32)
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
        state in tracestate(),
    ) {
        let state = TraceState::from_key_value(state.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        let sent = SpanContext::new(
            TraceId::from_bytes(trace.to_be_bytes()),
            SpanId::from_bytes(span.to_be_bytes()),
            TraceFlags::new(flags),
            true,
            state,
        );
        let propagator = TraceContextPropagator::default();
        let mut carrier = HashMap::new();
        propagator.inject_context(&Context::new().with_remote_span_context(sent.clone()), &mut carrier);
        let received = propagator.extract(&carrier);
        let span = received.span();
        prop_assert_eq!(span.span_context(), &sent);
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
