//! Settings from the environment (defaults fit `docker compose up` and local runs).

use std::net::SocketAddr;

use proto::client::ClientConfig;
use settings::{SettingError, Source, parse_or};
use telemetry::propagation::http::InboundContext;

#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`: the HTTP API (default `0.0.0.0:8080`).
    pub listen_addr: SocketAddr,
    /// `ORDER_SERVICE_*`: where the order-service is and how long a call may take; past
    /// `ORDER_SERVICE_TIMEOUT_MS` the client gets a 504.
    pub order_service: ClientConfig,
    /// `MAX_BODY_BYTES`: larger request bodies get a 413 (default 16384).
    pub max_body_bytes: usize,
    /// `INBOUND_TRACE_CONTEXT`: `continue` a caller's trace (default), or `restart` it
    /// here, keeping the caller's span as a link and dropping its tracestate and baggage.
    pub inbound_trace_context: InboundContext,
    /// `W3C_TEST_ENDPOINT`: `true` serves `POST /test` for the W3C Trace Context test
    /// harness (default `false`; it makes the gateway POST to any URL it is given).
    pub w3c_test_endpoint: bool,
}

impl Config {
    pub fn from_env(source: &impl Source) -> Result<Self, SettingError> {
        Ok(Self {
            listen_addr: parse_or(source, "LISTEN_ADDR", ([0, 0, 0, 0], 8080).into())?,
            order_service: ClientConfig::from_source(source)?,
            max_body_bytes: parse_or(source, "MAX_BODY_BYTES", 16 * 1024)?,
            inbound_trace_context: parse_or(
                source,
                "INBOUND_TRACE_CONTEXT",
                InboundContext::Continue,
            )?,
            w3c_test_endpoint: parse_or(source, "W3C_TEST_ENDPOINT", false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: &[(&str, &str)] = &[
        ("LISTEN_ADDR", "8080"),
        ("ORDER_SERVICE_URL", "order-service:50051"),
        ("ORDER_SERVICE_TIMEOUT_MS", "0"),
        ("MAX_BODY_BYTES", "big"),
        ("INBOUND_TRACE_CONTEXT", "trust"),
        ("W3C_TEST_ENDPOINT", "yes"),
    ];

    #[test]
    fn defaults_need_no_variable_and_bad_values_name_theirs() {
        assert!(Config::from_env(&|_: &str| None).is_ok());
        for (key, value) in BAD {
            let source = |k: &str| (k == *key).then(|| value.to_string());
            let error = Config::from_env(&source).unwrap_err();
            assert_eq!(error.variable, *key, "{key}={value}");
        }
    }
}
