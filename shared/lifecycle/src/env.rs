//! Typed settings from environment variables (12-factor). A bad value stops the service
//! at start with a message that names the variable, instead of a surprise later.

use std::fmt::Display;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {variable}={value:?}: {reason}")]
pub struct EnvError {
    pub variable: String,
    pub value: String,
    pub reason: String,
}

/// Where settings come from: the process environment in `main`, a map in tests.
pub trait Source {
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

/// The value of `key` parsed as `T`, or `default` when unset or empty.
pub fn parse_or<T>(source: &impl Source, key: &str, default: T) -> Result<T, EnvError>
where
    T: FromStr,
    T::Err: Display,
{
    match source.get(key).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e: T::Err| EnvError {
            variable: key.to_owned(),
            value: raw.clone(),
            reason: e.to_string(),
        }),
    }
}

/// A string setting, or `default` when unset or empty.
pub fn string_or(source: &impl Source, key: &str, default: &str) -> String {
    source
        .get(key)
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// An `http://` or `https://` URL with a host (a gRPC endpoint, for example), or
/// `default` when unset or empty.
pub fn url_or(source: &impl Source, key: &str, default: &str) -> Result<String, EnvError> {
    let value = string_or(source, key, default);
    let (scheme, rest) = value.split_once("://").unwrap_or(("", ""));
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    if !matches!(scheme, "http" | "https") || host.is_empty() {
        return Err(invalid(
            key,
            &value,
            "expected an http:// or https:// URL with a host",
        ));
    }
    Ok(value)
}

/// An error for a value that parsed but is not acceptable.
pub fn invalid(key: &str, value: impl Display, reason: impl Into<String>) -> EnvError {
    EnvError {
        variable: key.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn parses_defaults_and_names_the_bad_variable() {
        let source = |k: &str| match k {
            "ADDR" => Some("127.0.0.1:80".to_owned()),
            "BAD" => Some("nope".to_owned()),
            "EMPTY" => Some(" ".to_owned()),
            _ => None,
        };
        let addr: SocketAddr = parse_or(&source, "ADDR", ([0, 0, 0, 0], 1).into()).unwrap();
        assert_eq!(addr.port(), 80);
        assert_eq!(parse_or(&source, "UNSET", 7u32).unwrap(), 7);
        assert_eq!(parse_or(&source, "EMPTY", 7u32).unwrap(), 7);
        let err = parse_or::<u32>(&source, "BAD", 1).unwrap_err();
        assert_eq!(err.variable, "BAD");
        assert!(err.to_string().starts_with("invalid BAD=\"nope\""));
        assert_eq!(string_or(&source, "UNSET", "x"), "x");
    }

    #[test]
    fn urls_need_a_scheme_and_a_host() {
        let source = |k: &str| match k {
            "GOOD" => Some("http://order-service:50051".to_owned()),
            "NO_SCHEME" => Some("order-service:50051".to_owned()),
            "NO_HOST" => Some("http://:50051".to_owned()),
            _ => None,
        };
        assert_eq!(
            url_or(&source, "GOOD", "").unwrap(),
            "http://order-service:50051"
        );
        assert_eq!(
            url_or(&source, "UNSET", "http://localhost:1").unwrap(),
            "http://localhost:1"
        );
        assert_eq!(
            url_or(&source, "NO_SCHEME", "").unwrap_err().variable,
            "NO_SCHEME"
        );
        assert_eq!(
            url_or(&source, "NO_HOST", "").unwrap_err().variable,
            "NO_HOST"
        );
    }
}
