//! W3C Baggage: <https://www.w3.org/TR/baggage/>.
//!
//! At least 64 members and 8192 bytes are propagated (the spec's minimum, and what the
//! SDK's `Baggage` holds); beyond that whole members are dropped, never half of one.

use std::borrow::Cow;

use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};

use super::trim_ows;

const BAGGAGE: &str = "baggage";
/// Headers longer than this (all together) are ignored unread.
const MAX_HEADER_LEN: usize = 4 * 8192;

#[derive(Debug)]
pub struct BaggagePropagator {
    fields: [String; 1],
}

impl Default for BaggagePropagator {
    fn default() -> Self {
        Self {
            fields: [BAGGAGE.to_owned()],
        }
    }
}

impl TextMapPropagator for BaggagePropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let members: Vec<String> = cx
            .baggage()
            .iter()
            .map(|(key, (value, metadata))| {
                let mut member = format!("{}={}", key.as_str(), percent_encode(value.as_str()));
                if !metadata.as_str().is_empty() {
                    member.push(';');
                    member.push_str(metadata.as_str());
                }
                member
            })
            .collect();
        if !members.is_empty() {
            injector.set(BAGGAGE, members.join(","));
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extractor
            .get_all(BAGGAGE)
            .and_then(|values| parse_baggage(&values))
        {
            Some(baggage) => cx.with_baggage(baggage),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// Parses `baggage` values (several headers are one list). Invalid members are skipped;
/// members past the 64-member or 8192-byte limit are dropped whole.
pub fn parse_baggage(values: &[&str]) -> Option<Baggage> {
    let total: usize = values.iter().map(|v| v.len() + 1).sum();
    if total > MAX_HEADER_LEN {
        return None;
    }
    let mut baggage = Baggage::new();
    for member in values.iter().flat_map(|v| v.split(',')) {
        let Some((key, value, properties)) = parse_member(member) else {
            continue;
        };
        let before = baggage.len();
        // `insert_with_metadata` refuses a member that would pass a limit; once one is
        // refused, the rest would be too (or would reorder what is kept), so stop.
        if baggage
            .insert_with_metadata(key, value.into_owned(), properties)
            .is_none()
            && baggage.len() == before
        {
            break;
        }
    }
    (!baggage.is_empty()).then_some(baggage)
}

/// `key OWS "=" OWS value *( OWS ";" OWS property )`
fn parse_member(member: &str) -> Option<(String, Cow<'_, str>, String)> {
    let mut parts = member.split(';');
    let (key, value) = parts.next()?.split_once('=')?;
    let (key, value) = (trim_ows(key), trim_ows(value));
    if !is_token(key) || !value.bytes().all(is_baggage_octet) {
        return None;
    }
    let value = percent_decode(value)?;
    let mut properties = Vec::new();
    for property in parts {
        let property = trim_ows(property);
        let valid = match property.split_once('=') {
            Some((k, v)) => is_token(trim_ows(k)) && trim_ows(v).bytes().all(is_baggage_octet),
            None => is_token(property),
        };
        if !valid {
            return None;
        }
        properties.push(property);
    }
    Some((key.to_owned(), value, properties.join(";")))
}

/// RFC 9110 token: `1*tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// `%XX` escapes to UTF-8 (invalid UTF-8 becomes U+FFFD); a malformed escape is `None`.
pub(crate) fn percent_decode(value: &str) -> Option<Cow<'_, str>> {
    if !value.contains('%') {
        return Some(Cow::Borrowed(value));
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// Everything that is not a baggage-octet, and `%` itself, as `%XX`.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if is_baggage_octet(b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn entries(values: &[&str]) -> Vec<(String, String, String)> {
        let Some(baggage) = parse_baggage(values) else {
            return Vec::new();
        };
        let mut entries: Vec<_> = baggage
            .iter()
            .map(|(k, (v, m))| (k.to_string(), v.as_str().to_owned(), m.as_str().to_owned()))
            .collect();
        entries.sort();
        entries
    }

    fn e(k: &str, v: &str, m: &str) -> (String, String, String) {
        (k.into(), v.into(), m.into())
    }

    #[test]
    fn baggage_table() {
        assert_eq!(entries(&["k=v"]), vec![e("k", "v", "")]);
        assert_eq!(
            entries(&[" k1 = v1 , k2=v2 "]),
            vec![e("k1", "v1", ""), e("k2", "v2", "")]
        );
        assert_eq!(
            entries(&["k1=v1", "k2=v2"]),
            vec![e("k1", "v1", ""), e("k2", "v2", "")]
        );
        assert_eq!(entries(&["k=v;p1;p2=x"]), vec![e("k", "v", "p1;p2=x")]);
        assert_eq!(
            entries(&["k=hello%20world%2C%3B"]),
            vec![e("k", "hello world,;", "")]
        );
        assert_eq!(entries(&["k=%E2%9C%93"]), vec![e("k", "✓", "")]);
        assert_eq!(entries(&["k=%FF"]), vec![e("k", "\u{fffd}", "")]);
        assert_eq!(entries(&["k="]), vec![e("k", "", "")]);
        // Invalid members are skipped, the rest kept.
        assert_eq!(entries(&["bad key=v,k=v"]), vec![e("k", "v", "")]);
        assert_eq!(entries(&["k=%zz,j=1"]), vec![e("j", "1", "")]);
        assert_eq!(entries(&["k=a b,j=1"]), vec![e("j", "1", "")]);
        assert_eq!(entries(&["k=v;bad prop,j=1"]), vec![e("j", "1", "")]);
        assert_eq!(entries(&["novalue,j=1"]), vec![e("j", "1", "")]);
        assert!(entries(&[""]).is_empty());
        assert!(
            entries(&[&"k=v,".repeat(MAX_HEADER_LEN)]).is_empty(),
            "oversized: ignored unread"
        );
    }

    #[test]
    fn at_least_64_members_and_8192_bytes_are_kept_and_never_half_a_member() {
        let sixty_five: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
        assert_eq!(entries(&[&sixty_five.join(",")]).len(), 64);
        // Two members of ~4 KiB fit in 8192 bytes; a third is dropped whole.
        let big = "x".repeat(4090);
        let header = format!("a={big},b={big},c={big}");
        let kept = entries(&[&header]);
        assert_eq!(kept.len(), 2);
        assert!(
            kept.iter().all(|(_, v, _)| v.len() == 4090),
            "no member is cut"
        );
    }

    #[test]
    fn inject_percent_encodes_what_the_grammar_forbids() {
        let baggage = parse_baggage(&["k=a%20b%2Cc%3B%25%E2%9C%93;prop=1"]).unwrap();
        let mut headers = HashMap::new();
        BaggagePropagator::default()
            .inject_context(&Context::new().with_baggage(baggage), &mut headers);
        assert_eq!(headers["baggage"], "k=a%20b%2Cc%3B%25%E2%9C%93;prop=1");
        let back = parse_baggage(&[headers["baggage"].as_str()]).unwrap();
        assert_eq!(
            back.get("k").map(|v| v.as_str().to_owned()),
            Some("a b,c;%✓".to_owned())
        );
    }
}
