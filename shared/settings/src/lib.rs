//! Typed settings from environment variables (12-factor), the one way every crate of the
//! workspace reads its configuration: the services' own variables and telemetry's
//! `OTEL_*` alike. A bad value stops the service at start with a message that names the
//! variable, instead of a surprise later.
//!
//! Everything reads through a [`Source`]: [`ProcessEnv`] in `main`, a closure or a map in
//! tests, so no test ever mutates the process environment. As the OpenTelemetry
//! specification asks for its variables, an empty (or all-blank) value counts as unset.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// A setting that cannot be used. The message names the variable and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {variable}={value:?}: {reason}")]
pub struct SettingError {
    pub variable: String,
    pub value: String,
    pub reason: String,
}

impl SettingError {
    /// For a value that was read but is not acceptable.
    pub fn new(variable: &str, value: impl Display, reason: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Where settings come from.
pub trait Source {
    /// The raw value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Source for F {
    fn get(&self, key: &str) -> Option<String> {
        self(key)
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// The value of `key`, trimmed; `None` when unset or blank.
pub fn value(source: &impl Source, key: &str) -> Option<String> {
    source
        .get(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The value of `key` parsed as `T`, or `default` when unset.
pub fn parse_or<T>(source: &impl Source, key: &str, default: T) -> Result<T, SettingError>
where
    T: FromStr,
    T::Err: Display,
{
    match value(source, key) {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|e: T::Err| SettingError::new(key, &raw, e.to_string())),
    }
}

/// A string setting, or `default` when unset.
pub fn string_or(source: &impl Source, key: &str, default: &str) -> String {
    value(source, key).unwrap_or_else(|| default.to_owned())
}

/// A positive whole number, or `default` when unset.
pub fn positive_or(source: &impl Source, key: &str, default: u64) -> Result<u64, SettingError> {
    match value(source, key) {
        None => Ok(default),
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(SettingError::new(
                key,
                &raw,
                "expected a positive whole number",
            )),
        },
    }
}

/// A positive number of milliseconds, or `default` when unset.
pub fn millis_or(
    source: &impl Source,
    key: &str,
    default: Duration,
) -> Result<Duration, SettingError> {
    let default_ms = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    positive_or(source, key, default_ms).map(Duration::from_millis)
}

/// An `http://` or `https://` URL with a host (a gRPC or OTLP endpoint), or `default`
/// when unset. Without a scheme a client would silently assume one and never connect.
pub fn url_or(source: &impl Source, key: &str, default: &str) -> Result<String, SettingError> {
    let value = string_or(source, key, default);
    check_url(key, &value)?;
    Ok(value)
}

/// Checks that `value`, the value of `key`, is an `http://` or `https://` URL with a host.
pub fn check_url(key: &str, value: &str) -> Result<(), SettingError> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| SettingError::new(key, value, format!("not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(SettingError::new(
            key,
            value,
            "expected an http:// or https:// URL with a host",
        )),
    }
}

/// For the services' configuration tests: every setting has a default (`parse` succeeds
/// with nothing set), and each `(variable, bad value)` of `bad`, set alone, fails `parse`
/// with an error naming that variable.
///
/// # Panics
///
/// When either does not hold: it is an assertion.
pub fn assert_defaults_and_named_errors<T: std::fmt::Debug>(
    parse: impl Fn(&dyn Fn(&str) -> Option<String>) -> Result<T, SettingError>,
    bad: &[(&str, &str)],
) {
    if let Err(error) = parse(&|_: &str| None) {
        panic!("the defaults do not parse: {error}");
    }
    for (variable, value) in bad {
        match parse(&|key: &str| (key == *variable).then(|| (*value).to_owned())) {
            Ok(parsed) => panic!("{variable}={value:?} was accepted: {parsed:?}"),
            Err(error) => assert_eq!(error.variable, *variable, "{variable}={value:?}: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn source(k: &str) -> Option<String> {
        match k {
            "ADDR" => Some("127.0.0.1:80".to_owned()),
            "BAD" => Some("nope".to_owned()),
            "BLANK" => Some(" ".to_owned()),
            "PADDED" => Some(" 7 ".to_owned()),
            "ZERO" => Some("0".to_owned()),
            "GOOD_URL" => Some("http://order-service:50051".to_owned()),
            "NO_SCHEME" => Some("order-service:50051".to_owned()),
            "NO_HOST" => Some("http://:50051".to_owned()),
            "OTHER_SCHEME" => Some("grpc://x".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn parses_defaults_and_names_the_bad_variable() {
        let addr: SocketAddr = parse_or(&source, "ADDR", ([0, 0, 0, 0], 1).into()).unwrap();
        assert_eq!(addr.port(), 80);
        assert_eq!(parse_or(&source, "UNSET", 7u32).unwrap(), 7);
        assert_eq!(parse_or(&source, "BLANK", 7u32).unwrap(), 7);
        assert_eq!(parse_or(&source, "PADDED", 1u32).unwrap(), 7);
        let err = parse_or::<u32>(&source, "BAD", 1).unwrap_err();
        assert_eq!(err.variable, "BAD");
        assert!(err.to_string().starts_with("invalid BAD=\"nope\""));
        assert_eq!(string_or(&source, "UNSET", "x"), "x");
        assert_eq!(string_or(&source, "BLANK", "x"), "x");
    }

    #[test]
    fn durations_and_counts_must_be_positive() {
        assert_eq!(
            millis_or(&source, "PADDED", Duration::from_secs(1)).unwrap(),
            Duration::from_millis(7)
        );
        assert_eq!(
            millis_or(&source, "UNSET", Duration::from_secs(1)).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            positive_or(&source, "ZERO", 1).unwrap_err().variable,
            "ZERO"
        );
        assert_eq!(positive_or(&source, "BAD", 1).unwrap_err().variable, "BAD");
    }

    #[test]
    fn urls_need_a_known_scheme_and_a_host() {
        assert_eq!(
            url_or(&source, "GOOD_URL", "").unwrap(),
            "http://order-service:50051"
        );
        assert_eq!(
            url_or(&source, "UNSET", "http://localhost:1").unwrap(),
            "http://localhost:1"
        );
        for key in ["NO_SCHEME", "NO_HOST", "OTHER_SCHEME"] {
            assert_eq!(url_or(&source, key, "").unwrap_err().variable, key);
        }
    }

    #[test]
    fn a_map_is_a_source() {
        let map = HashMap::from([("A".to_owned(), "1".to_owned())]);
        assert_eq!(parse_or(&map, "A", 0u8).unwrap(), 1);
    }
}
