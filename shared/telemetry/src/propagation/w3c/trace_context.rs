//! W3C Trace Context Level 2: <https://www.w3.org/TR/trace-context-2/>.

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

use super::trim_ows;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// `traceparent` longer than this is ignored unread (version 00 is exactly 55 characters;
/// later versions may append fields).
const MAX_TRACEPARENT_LEN: usize = 512;
/// `tracestate` (all headers together) longer than this is ignored unread: 32 members of
/// at most 256 + 1 + 256 characters, plus separators.
const MAX_TRACESTATE_LEN: usize = 32 * 514;
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The flags this version defines: `sampled` (0x01) and, in Level 2, `random` (0x02).
/// Other bits are not propagated.
const KNOWN_FLAGS: u8 = 0x03;
const SAMPLED: u8 = 0x01;
const RANDOM: u8 = 0x02;

/// What the caller sent, kept in the context beside its span context; every span's context
/// inherits it, so the injector can send on what the SDK cannot carry:
/// - the flags: the SDK makes each new span's flags itself and, on a span it does not sample,
///   clears them all, `random` included;
/// - the `tracestate` list as validated: the SDK's `TraceState` refuses some key forms the
///   grammar allows (see [`parse_tracestate`]). This service adds no entry of its own, so
///   the caller's list is exactly what goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inbound {
    trace_id: TraceId,
    flags: TraceFlags,
    tracestate: String,
}

#[derive(Debug)]
pub struct TraceContextPropagator {
    fields: [String; 2],
}

impl Default for TraceContextPropagator {
    fn default() -> Self {
        Self {
            fields: [TRACEPARENT.to_owned(), TRACESTATE.to_owned()],
        }
    }
}

impl TextMapPropagator for TraceContextPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return;
        }
        let sampled = span_context.trace_flags().to_u8() & SAMPLED;
        let inbound = cx
            .get::<Inbound>()
            .filter(|i| i.trace_id == span_context.trace_id());
        let flags = match inbound {
            // A trace that came in: its `random` bit as the caller sent it.
            Some(inbound) => sampled | (inbound.flags.to_u8() & RANDOM),
            // A context handed over as it is: its flags as they are.
            _ if span_context.is_remote() => span_context.trace_flags().to_u8() & KNOWN_FLAGS,
            // A trace this process started: the SDK's id generator is random.
            _ => sampled | RANDOM,
        };
        injector.set(
            TRACEPARENT,
            format!(
                "00-{}-{}-{flags:02x}",
                span_context.trace_id(),
                span_context.span_id()
            ),
        );
        let trace_state = match inbound {
            Some(inbound) => inbound.tracestate.clone(),
            None => span_context.trace_state().header(),
        };
        if !trace_state.is_empty() {
            injector.set(TRACESTATE, trace_state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extract_span_context(extractor) {
            Some((span_context, tracestate)) => {
                let inbound = Inbound {
                    trace_id: span_context.trace_id(),
                    flags: span_context.trace_flags(),
                    tracestate,
                };
                cx.with_remote_span_context(span_context)
                    .with_value(inbound)
            }
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// The span context, and the `tracestate` list as validated (see [`Inbound`]).
fn extract_span_context(extractor: &dyn Extractor) -> Option<(SpanContext, String)> {
    // A repeated `traceparent` is invalid: which one is the parent?
    let traceparents = extractor.get_all(TRACEPARENT)?;
    let [traceparent] = traceparents.as_slice() else {
        return None;
    };
    let (trace_id, span_id, flags) = parse_traceparent(traceparent)?;
    // Repeated `tracestate` headers are one list, in order.
    let members = extractor
        .get_all(TRACESTATE)
        .and_then(|values| tracestate_members(&values))
        .unwrap_or_default();
    let header = members
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let trace_state = sdk_trace_state(members);
    Some((
        SpanContext::new(trace_id, span_id, flags, true, trace_state),
        header,
    ))
}

/// Parses a `traceparent` value: `version-traceid-parentid-flags`, lowercase hex, exact
/// lengths, no all-zero ids, version `ff` invalid; a version above 00 is read by its first
/// four fields, which must then be followed by `-` or the end.
pub fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    if value.len() > MAX_TRACEPARENT_LEN {
        return None;
    }
    let value = trim_ows(value);
    // ASCII only, so the byte offsets below are character boundaries.
    if !value.is_ascii() || value.len() < 55 {
        return None;
    }
    let bytes = value.as_bytes();
    let version = lower_hex_u8(&value[0..2])?;
    match version {
        0xff => return None,
        0x00 if value.len() != 55 => return None,
        _ if value.len() > 55 && bytes[55] != b'-' => return None,
        _ => {}
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let trace_id = &value[3..35];
    let span_id = &value[36..52];
    if !is_lower_hex(trace_id) || !is_lower_hex(span_id) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id)
        .ok()
        .filter(|id| *id != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span_id)
        .ok()
        .filter(|id| *id != SpanId::INVALID)?;
    let flags = lower_hex_u8(&value[53..55])?;
    Some((trace_id, span_id, TraceFlags::new(flags & KNOWN_FLAGS)))
}

/// Parses `tracestate` values (several headers are one list, in order). `None` when the
/// list is invalid as a whole: a malformed member or more than 32 members. Empty members
/// (`a=1,,b=2`) are allowed and skipped.
///
/// Duplicate keys (`foo=1,foo=2`, in one header or across several) are kept as they came,
/// in order, and count towards the 32. Keeping a key unique is the job of whoever adds it;
/// a receiver may drop duplicates but should not delete entries it did not write, and this
/// service writes none, so it has no ground to prefer one copy over another.
///
/// opentelemetry 0.33's `TraceState` still checks keys against the older grammar (at
/// most one `@`, and after it at most 13 characters, the first a letter or digit), so it
/// refuses some valid keys: `foo@@bar`, `foo@bar@baz`, `foo@-bar`, `t@abcdefghijklmn`.
/// Such members are left out of the returned `TraceState`, the others kept; the propagator
/// still sends the whole list on, from the copy it keeps beside the context.
pub fn parse_tracestate(values: &[&str]) -> Option<TraceState> {
    tracestate_members(values).map(sdk_trace_state)
}

/// The members the SDK's `TraceState` can hold, in order: each is tried on its own, so a
/// key it refuses costs that member only, never the list.
fn sdk_trace_state(members: Vec<(&str, &str)>) -> TraceState {
    let representable = members
        .into_iter()
        .filter(|member| TraceState::from_key_value([*member]).is_ok());
    TraceState::from_key_value(representable).unwrap_or_default()
}

fn tracestate_members<'a>(values: &[&'a str]) -> Option<Vec<(&'a str, &'a str)>> {
    let total: usize = values.iter().map(|v| v.len() + 1).sum();
    if total > MAX_TRACESTATE_LEN {
        return None;
    }
    let mut members: Vec<(&str, &str)> = Vec::new();
    for member in values.iter().flat_map(|v| v.split(',')) {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        if !is_valid_key(key) || !is_valid_value(value) {
            return None;
        }
        members.push((key, value));
        if members.len() > MAX_TRACESTATE_MEMBERS {
            return None;
        }
    }
    Some(members)
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`,
/// `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"`: `@` may appear any number of
/// times after the first character (no separate tenant and system-id parts any more).
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() <= 256
        && bytes
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
        })
}

/// `value = 0*255(chr) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`, `chr = %x20 / nblk-chr`.
fn is_valid_value(value: &str) -> bool {
    let nblk = |b: u8| matches!(b, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    !value.is_empty()
        && value.len() <= 256
        && value.bytes().all(|b| b == b' ' || nblk(b))
        && value.bytes().last().is_some_and(nblk)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn lower_hex_u8(s: &str) -> Option<u8> {
    (s.len() == 2 && is_lower_hex(s)).then(|| u8::from_str_radix(s, 16).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn tp(version: &str, trace: &str, span: &str, flags: &str) -> String {
        format!("{version}-{trace}-{span}-{flags}")
    }

    #[test]
    fn traceparent_table() {
        let valid = [
            (tp("00", TRACE, SPAN, "01"), 0x01),
            (tp("00", TRACE, SPAN, "00"), 0x00),
            // Level 2: the random flag is kept with the sampled one.
            (tp("00", TRACE, SPAN, "03"), 0x03),
            (tp("00", TRACE, SPAN, "02"), 0x02),
            // Unknown flags are not propagated.
            (tp("00", TRACE, SPAN, "ff"), 0x03),
            // Optional whitespace around the value.
            (format!(" \t{} \t", tp("00", TRACE, SPAN, "01")), 0x01),
            // A higher version is parsed by its first four fields.
            (tp("01", TRACE, SPAN, "01"), 0x01),
            (
                format!("{}-what-the-future-brings", tp("cc", TRACE, SPAN, "01")),
                0x01,
            ),
        ];
        for (value, flags) in valid {
            let (trace_id, span_id, parsed) =
                parse_traceparent(&value).unwrap_or_else(|| panic!("{value:?} is valid"));
            assert_eq!(trace_id.to_string(), TRACE, "{value:?}");
            assert_eq!(span_id.to_string(), SPAN, "{value:?}");
            assert_eq!(parsed.to_u8(), flags, "{value:?}");
        }
        let invalid = [
            String::new(),
            "   ".into(),
            "garbage".into(),
            tp("ff", TRACE, SPAN, "01"),
            tp("000", TRACE, SPAN, "01"),
            tp("0", TRACE, SPAN, "01"),
            tp("0A", TRACE, SPAN, "01"),
            tp("00", &TRACE.to_uppercase(), SPAN, "01"),
            tp("00", TRACE, &SPAN.to_uppercase(), "01"),
            tp("00", TRACE, SPAN, "0F"),
            tp("00", TRACE, SPAN, "1"),
            tp("00", TRACE, SPAN, "001"),
            tp("00", &TRACE[1..], SPAN, "01"),
            tp("00", &format!("{TRACE}0"), SPAN, "01"),
            tp("00", TRACE, &SPAN[1..], "01"),
            tp("00", TRACE, &format!("{SPAN}0"), "01"),
            tp("00", "00000000000000000000000000000000", SPAN, "01"),
            tp("00", TRACE, "0000000000000000", "01"),
            tp("00", &TRACE.replace('a', "g"), SPAN, "01"),
            // Version 00 has exactly four fields.
            format!("{}-extra", tp("00", TRACE, SPAN, "01")),
            // A higher version's extra data must start with a dash.
            format!("{}extra", tp("01", TRACE, SPAN, "01")),
            TRACE.replace('4', "é"),
            format!("00_{TRACE}_{SPAN}_01"),
            format!("00-{TRACE}-{SPAN}-01").replace('-', " "),
            "x".repeat(MAX_TRACEPARENT_LEN + 1),
        ];
        for value in invalid {
            assert_eq!(parse_traceparent(&value), None, "{value:?} is invalid");
        }
    }

    /// A carrier that can repeat keys, as HTTP, gRPC metadata and Kafka headers can.
    #[derive(Debug)]
    struct Multi(Vec<(String, String)>);

    impl Multi {
        fn new(headers: &[(&str, &str)]) -> Self {
            Self(
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        }
    }

    impl Extractor for Multi {
        fn get(&self, key: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| k.as_str()).collect()
        }
        fn get_all(&self, key: &str) -> Option<Vec<&str>> {
            let all: Vec<&str> = self
                .0
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect();
            (!all.is_empty()).then_some(all)
        }
    }

    /// One hop through this service: `tracestate` headers arrive with a valid parent, a
    /// child span context is made the way the SDK makes one (new span id, the parent's
    /// `TraceState`), and its context is injected. Returns the `tracestate` sent on and what
    /// the SDK's `TraceState` held.
    fn hop(tracestates: &[&str]) -> (String, String) {
        let parent = tp("00", TRACE, SPAN, "01");
        let mut headers = vec![("traceparent", parent.as_str())];
        headers.extend(tracestates.iter().map(|v| ("tracestate", *v)));
        let propagator = TraceContextPropagator::default();
        let cx = propagator.extract(&Multi::new(&headers));
        let held = cx.span().span_context().trace_state().clone();
        let child = SpanContext::new(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex("1111111111111111").unwrap(),
            TraceFlags::SAMPLED,
            false,
            held.clone(),
        );
        let mut out = HashMap::new();
        propagator.inject_context(&cx.with_remote_span_context(child), &mut out);
        (out.remove("tracestate").unwrap_or_default(), held.header())
    }

    #[test]
    fn tracestate_table() {
        let key_256 = format!("a{}", "b".repeat(255));
        let at_256th = format!("{}@", "a".repeat(255));
        let tenant_15 = format!("t@{}", "s".repeat(15));
        let tenant_241_system_14 = format!("{}@{}", "t".repeat(241), "v".repeat(14));
        let tenant_242 = format!("{}@v", "t".repeat(242));
        // Headers in; the list sent on; what the SDK's `TraceState` holds of it (its key
        // check predates the current grammar: at most one `@`, and after it at most 13
        // characters, the first a letter or digit).
        let valid: Vec<(Vec<String>, String, String)> = [
            (vec!["a=1"], "a=1", "a=1"),
            (vec!["a=1,b=2"], "a=1,b=2", "a=1,b=2"),
            // Several headers are one list, in order.
            (vec!["a=1", "b=2,c=3"], "a=1,b=2,c=3", "a=1,b=2,c=3"),
            // Empty members and optional whitespace.
            (vec![" a=1 ,, \tb=2 "], "a=1,b=2", "a=1,b=2"),
            (
                vec!["a=with inner spaces"],
                "a=with inner spaces",
                "a=with inner spaces",
            ),
            (
                vec!["k*/_-=~!\"#$%&'()*+-./:;<>?@[]^_`{|}"],
                "k*/_-=~!\"#$%&'()*+-./:;<>?@[]^_`{|}",
                "k*/_-=~!\"#$%&'()*+-./:;<>?@[]^_`{|}",
            ),
            (vec![""], "", ""),
            // A key may start with a digit, whether or not it has an `@`.
            (vec!["1a=1"], "1a=1", "1a=1"),
            (vec!["1tenant@sys=x"], "1tenant@sys=x", "1tenant@sys=x"),
            (vec!["t@1s=x"], "t@1s=x", "t@1s=x"),
            // `@` anywhere after the first character, as often as the sender likes.
            (vec!["foo@=1,bar=2"], "foo@=1,bar=2", "foo@=1,bar=2"),
            (vec!["foo@@bar=1,bar=2"], "foo@@bar=1,bar=2", "bar=2"),
            (vec!["foo@bar@baz=1,bar=2"], "foo@bar@baz=1,bar=2", "bar=2"),
            (vec!["a=1,t@-x=2"], "a=1,t@-x=2", "a=1"),
            // Duplicate keys are kept as they came, in one header or across several.
            (vec!["foo=1,foo=1"], "foo=1,foo=1", "foo=1,foo=1"),
            (vec!["foo=1,foo=2"], "foo=1,foo=2", "foo=1,foo=2"),
            (vec!["foo=1", "foo=1"], "foo=1,foo=1", "foo=1,foo=1"),
            (vec!["foo=1", "foo=2"], "foo=1,foo=2", "foo=1,foo=2"),
        ]
        .into_iter()
        .map(|(values, sent, held)| {
            (
                values.into_iter().map(str::to_owned).collect(),
                sent.to_owned(),
                held.to_owned(),
            )
        })
        .chain(
            // Up to 256 characters, wherever the `@` falls.
            [
                (key_256.as_str(), true),
                (at_256th.as_str(), true),
                (tenant_242.as_str(), true),
                ("t@abcdefghijklm", true),
                ("t@abcdefghijklmn", false),
                (tenant_15.as_str(), false),
                (tenant_241_system_14.as_str(), false),
            ]
            .into_iter()
            .map(|(key, sdk_holds)| {
                let list = format!("a=1,{key}=x,b=2");
                let held = if sdk_holds {
                    list.clone()
                } else {
                    "a=1,b=2".to_owned()
                };
                (vec![list.clone()], list, held)
            }),
        )
        .collect();
        for (values, sent, held) in valid {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let state = parse_tracestate(&refs).unwrap_or_else(|| panic!("{values:?} is valid"));
            assert_eq!(state.header(), held, "{values:?}: the SDK's TraceState");
            assert_eq!(hop(&refs), (sent, held), "{values:?}: sent on, held");
        }
        let long_value = format!("a={}", "v".repeat(257));
        let invalid: Vec<Vec<String>> = [
            vec!["A=1"],
            vec!["FOO=1"],
            vec!["foo =1"],
            vec!["foo.bar=1"],
            vec!["t@Sys=x"],
            // A key starts with a letter or a digit, never `@`.
            vec!["@foo=1,bar=2"],
            vec!["@=1"],
            vec!["a=b=c"],
            vec!["a="],
            vec!["=1"],
            vec!["novalue"],
            vec!["a=x,y"],
            vec!["a=tab\tinside"],
            // One bad member takes the list with it, in whichever header it is.
            vec!["a=1", "B=2"],
        ]
        .into_iter()
        .map(|values| values.into_iter().map(str::to_owned).collect())
        .chain([
            // 257 characters, with or without an `@`.
            vec![format!("a{}=1", "b".repeat(256))],
            vec![format!("{}@{}=1", "t".repeat(242), "v".repeat(14))],
            vec![long_value],
            vec!["x".repeat(MAX_TRACESTATE_LEN + 1)],
        ])
        .collect();
        for values in invalid {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            assert!(parse_tracestate(&refs).is_none(), "{values:?} is invalid");
            assert_eq!(hop(&refs), (String::new(), String::new()), "{values:?}");
        }
    }

    #[test]
    fn tracestate_allows_32_members_and_no_more() {
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let thirty_two = members(32);
        assert_eq!(
            parse_tracestate(&[&thirty_two]).unwrap().header(),
            thirty_two
        );
        assert!(parse_tracestate(&[&members(33)]).is_none());
        // A duplicated key is a member like any other.
        let same = |n: usize| vec!["k=v"; n].join(",");
        assert_eq!(hop(&[&same(32)]).0, same(32));
        assert!(parse_tracestate(&[&same(32), "k=v"]).is_none());
    }

    fn extract(headers: &[(&str, &str)]) -> Option<SpanContext> {
        let cx = TraceContextPropagator::default().extract(&Multi::new(headers));
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.clone())
    }

    #[test]
    fn headers_combine_by_the_rules() {
        let parent = tp("00", TRACE, SPAN, "01");
        let sc = extract(&[
            ("traceparent", &parent),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ])
        .unwrap();
        assert!(sc.is_remote());
        assert_eq!(sc.trace_state().header(), "a=1,b=2");
        // A duplicated traceparent is invalid, even when both copies agree.
        assert!(extract(&[("traceparent", &parent), ("traceparent", &parent)]).is_none());
        // An invalid traceparent takes its tracestate with it.
        assert!(extract(&[("traceparent", "00-bad"), ("tracestate", "a=1")]).is_none());
        // An invalid tracestate is dropped on its own.
        let sc = extract(&[("traceparent", &parent), ("tracestate", "A=1")]).unwrap();
        assert_eq!(sc.trace_state().header(), "");
        assert!(extract(&[("tracestate", "a=1")]).is_none());
    }

    #[test]
    fn inject_writes_version_00_and_the_trace_state() {
        let sc = SpanContext::new(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex(SPAN).unwrap(),
            TraceFlags::new(0x03),
            true,
            TraceState::from_key_value([("a", "1"), ("b", "2")]).unwrap(),
        );
        let mut headers = HashMap::new();
        TraceContextPropagator::default()
            .inject_context(&Context::new().with_remote_span_context(sc), &mut headers);
        assert_eq!(headers["traceparent"], tp("00", TRACE, SPAN, "03"));
        assert_eq!(headers["tracestate"], "a=1,b=2");
        let mut nothing = HashMap::new();
        TraceContextPropagator::default().inject_context(&Context::new(), &mut nothing);
        assert!(nothing.is_empty(), "no context, no headers");
    }

    #[test]
    fn the_random_flag_survives_spans_the_sdk_did_not_sample() {
        let propagator = TraceContextPropagator::default();
        let inbound = HashMap::from([("traceparent".to_owned(), tp("00", TRACE, SPAN, "02"))]);
        let cx = propagator.extract(&inbound);
        // What the SDK makes for an unsampled child: a new span id, all flags cleared.
        let child = SpanContext::new(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex("1111111111111111").unwrap(),
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        let mut out = HashMap::new();
        propagator.inject_context(&cx.with_remote_span_context(child), &mut out);
        assert_eq!(
            out["traceparent"],
            tp("00", TRACE, "1111111111111111", "02")
        );
    }
}
