//! Settings from the environment (defaults fit `docker compose up` and local runs).

use std::net::SocketAddr;
use std::time::Duration;

use lifecycle::env::{EnvError, Source, invalid, parse_or, string_or, url_or};
use telemetry::propagation::http::InboundContext;

#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`: the HTTP API (default `0.0.0.0:8080`).
    pub listen_addr: SocketAddr,
    /// `ORDER_SERVICE_URL` (default `http://localhost:50051`).
    pub order_service_url: String,
    /// `ORDER_SERVICE_TIMEOUT_MS`: the longest a call to the order-service may take;
    /// past it the client gets a 504 (default 5000).
    pub order_service_timeout: Duration,
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
    pub fn from_env(source: &impl Source) -> Result<Self, EnvError> {
        let order_service_url = url_or(source, "ORDER_SERVICE_URL", "http://localhost:50051")?;
        let timeout_ms: u64 = parse_or(source, "ORDER_SERVICE_TIMEOUT_MS", 5000)?;
        if timeout_ms == 0 {
            return Err(invalid(
                "ORDER_SERVICE_TIMEOUT_MS",
                timeout_ms,
                "must be positive",
            ));
        }
        Ok(Self {
            listen_addr: parse_or(source, "LISTEN_ADDR", ([0, 0, 0, 0], 8080).into())?,
            order_service_url,
            order_service_timeout: Duration::from_millis(timeout_ms),
            max_body_bytes: parse_or(source, "MAX_BODY_BYTES", 16 * 1024)?,
            inbound_trace_context: match string_or(source, "INBOUND_TRACE_CONTEXT", "continue")
                .as_str()
            {
                "continue" => InboundContext::Continue,
                "restart" => InboundContext::Restart,
                other => {
                    return Err(invalid(
                        "INBOUND_TRACE_CONTEXT",
                        other,
                        "expected continue or restart",
                    ));
                }
            },
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
