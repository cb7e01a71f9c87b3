//! Settings from the environment (defaults fit `docker compose up` and local runs).

use std::net::SocketAddr;
use std::time::Duration;

use proto::client::ClientConfig;
use settings::{SettingError, Source, check_url, millis_or, parse_or, positive_or, string_or};
use telemetry::propagation::http::InboundContext;

#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`: the HTTP API (default `0.0.0.0:8080`).
    pub listen_addr: SocketAddr,
    /// `ORDER_SERVICE_*`: where the order-service is and how long a call may take; past
    /// `ORDER_SERVICE_TIMEOUT_MS` the client gets a 504. `ORDER_SERVICE_URL` may list
    /// several replicas, comma-separated: the first is here, the others in
    /// `more_order_services`, each called with these timeouts (see `replicas.rs`).
    pub order_service: ClientConfig,
    /// The replicas after the first in `ORDER_SERVICE_URL` (default none).
    pub more_order_services: Vec<String>,
    /// `MAX_BODY_BYTES`: larger request bodies get a 413 (default 16384).
    pub max_body_bytes: usize,
    /// `INBOUND_TRACE_CONTEXT`: `continue` a caller's trace (default), or `restart` it
    /// here, keeping the caller's span as a link and dropping its tracestate and baggage.
    pub inbound_trace_context: InboundContext,
    /// `W3C_TEST_ENDPOINT`: `true` serves `POST /test` for the W3C Trace Context test
    /// harness (default `false`; it makes the gateway POST to any URL it is given).
    pub w3c_test_endpoint: bool,
    /// `MAX_IN_FLIGHT`: API requests handled at once; beyond it a request is answered 503
    /// with `Retry-After` at once instead of queueing (default 256: 1,000 requests/s at
    /// up to 256 ms each, by Little's law). Health probes do not count.
    pub max_in_flight: usize,
    /// `REQUEST_TIMEOUT_MS`: the longest a whole request may take, body upload included;
    /// then 504 (default 10000). The outer bound: it must exceed
    /// `ORDER_SERVICE_TIMEOUT_MS`, so a slow order-service shows as its own, more precise
    /// timeout first.
    pub request_timeout: Duration,
    /// `HEADER_READ_TIMEOUT_MS`: the longest a connection may take to send a request's
    /// headers, and so also the longest it may sit idle between requests; then it is
    /// closed (default 10000). Keeps slow-header clients (slowloris) from holding
    /// connections.
    pub header_read_timeout: Duration,
    /// `MAX_CONNECTIONS`: open client connections; further ones wait in the listen
    /// backlog until one closes (default 512). Must exceed `MAX_IN_FLIGHT`: the spare
    /// connections are what receive the 503s and the health probes. Mind the file
    /// descriptor limit (often 1024 in containers).
    pub max_connections: usize,
}

impl Config {
    pub fn from_env(source: &impl Source) -> Result<Self, SettingError> {
        let mut replicas = order_service_urls(source)?.into_iter();
        // The first URL is read (and checked) as the client's own setting, the others
        // with the same rule; a single URL reads exactly as before.
        let first = replicas.next();
        let order_service = ClientConfig::from_source(&|key: &str| match key {
            "ORDER_SERVICE_URL" => first.clone(),
            _ => source.get(key),
        })?;
        Self {
            listen_addr: parse_or(source, "LISTEN_ADDR", ([0, 0, 0, 0], 8080).into())?,
            order_service,
            more_order_services: replicas.collect(),
            max_body_bytes: parse_or(source, "MAX_BODY_BYTES", 16 * 1024)?,
            inbound_trace_context: parse_or(
                source,
                "INBOUND_TRACE_CONTEXT",
                InboundContext::Continue,
            )?,
            w3c_test_endpoint: parse_or(source, "W3C_TEST_ENDPOINT", false)?,
            max_in_flight: count_or(source, "MAX_IN_FLIGHT", 256)?,
            request_timeout: millis_or(source, "REQUEST_TIMEOUT_MS", Duration::from_secs(10))?,
            header_read_timeout: millis_or(
                source,
                "HEADER_READ_TIMEOUT_MS",
                Duration::from_secs(10),
            )?,
            max_connections: count_or(source, "MAX_CONNECTIONS", 512)?,
        }
        .checked()
    }

    /// Every order-service replica's client settings, the first URL first.
    pub fn order_services(&self) -> Vec<ClientConfig> {
        std::iter::once(self.order_service.clone())
            .chain(self.more_order_services.iter().map(|url| ClientConfig {
                url: url.clone(),
                ..self.order_service.clone()
            }))
            .collect()
    }

    /// The rules between settings, each error naming the variable to change.
    fn checked(self) -> Result<Self, SettingError> {
        if self.request_timeout <= self.order_service.request_timeout {
            return Err(SettingError::new(
                "REQUEST_TIMEOUT_MS",
                self.request_timeout.as_millis(),
                format!(
                    "must exceed ORDER_SERVICE_TIMEOUT_MS ({})",
                    self.order_service.request_timeout.as_millis()
                ),
            ));
        }
        if self.max_connections <= self.max_in_flight {
            return Err(SettingError::new(
                "MAX_CONNECTIONS",
                self.max_connections,
                format!(
                    "must exceed MAX_IN_FLIGHT ({}), or no connection is left to answer 503 \
                     or a health probe",
                    self.max_in_flight
                ),
            ));
        }
        Ok(self)
    }
}

/// `ORDER_SERVICE_URL` split at commas, each an http(s) URL, none twice; empty when unset.
fn order_service_urls(source: &impl Source) -> Result<Vec<String>, SettingError> {
    const KEY: &str = "ORDER_SERVICE_URL";
    let value = string_or(source, KEY, "");
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let mut urls: Vec<String> = Vec::new();
    for url in value.split(',').map(str::trim) {
        check_url(KEY, url)
            .map_err(|e| SettingError::new(KEY, &value, format!("{url:?}: {}", e.reason)))?;
        if urls.iter().any(|seen| seen == url) {
            return Err(SettingError::new(
                KEY,
                &value,
                format!("{url} is listed twice"),
            ));
        }
        urls.push(url.to_owned());
    }
    Ok(urls)
}

/// A positive count, or `default` when unset.
fn count_or(source: &impl Source, key: &str, default: usize) -> Result<usize, SettingError> {
    let value = positive_or(source, key, u64::try_from(default).unwrap_or(u64::MAX))?;
    usize::try_from(value).map_err(|_| SettingError::new(key, value, "too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: &[(&str, &str)] = &[
        ("LISTEN_ADDR", "8080"),
        ("ORDER_SERVICE_URL", "order-service:50051"),
        ("ORDER_SERVICE_URL", "http://a:50051,"),
        ("ORDER_SERVICE_URL", "http://a:50051,b:50051"),
        ("ORDER_SERVICE_URL", "http://a:50051, http://a:50051"),
        ("ORDER_SERVICE_TIMEOUT_MS", "0"),
        ("MAX_BODY_BYTES", "big"),
        ("INBOUND_TRACE_CONTEXT", "trust"),
        ("W3C_TEST_ENDPOINT", "yes"),
        ("MAX_IN_FLIGHT", "0"),
        ("MAX_IN_FLIGHT", "many"),
        ("REQUEST_TIMEOUT_MS", "0"),
        ("REQUEST_TIMEOUT_MS", "10s"),
        // Not above ORDER_SERVICE_TIMEOUT_MS (default 5000).
        ("REQUEST_TIMEOUT_MS", "5000"),
        ("HEADER_READ_TIMEOUT_MS", "-1"),
        ("MAX_CONNECTIONS", "0"),
        // Not above MAX_IN_FLIGHT (default 256).
        ("MAX_CONNECTIONS", "256"),
    ];

    #[test]
    fn defaults_need_no_variable_and_bad_values_name_theirs() {
        settings::assert_defaults_and_named_errors(|source| Config::from_env(&source), BAD);
    }

    #[test]
    fn order_service_url_lists_replicas_each_with_the_same_timeouts() {
        let source = |k: &str| match k {
            "ORDER_SERVICE_URL" => Some("http://a:50051, http://b:50052".to_owned()),
            "ORDER_SERVICE_TIMEOUT_MS" => Some("700".to_owned()),
            _ => None,
        };
        let config = Config::from_env(&source).unwrap();
        let replicas = config.order_services();
        let urls: Vec<&str> = replicas.iter().map(|c| c.url.as_str()).collect();
        assert_eq!(urls, ["http://a:50051", "http://b:50052"]);
        assert!(
            replicas
                .iter()
                .all(|c| c.request_timeout == Duration::from_millis(700))
        );
        let single = Config::from_env(&|_: &str| None).unwrap().order_services();
        assert_eq!(
            single,
            [ClientConfig::from_source(&|_: &str| None).unwrap()]
        );
    }

    #[test]
    fn the_edge_limits_are_read_and_checked_against_each_other() {
        let source = |k: &str| match k {
            "MAX_IN_FLIGHT" => Some("1".to_owned()),
            "MAX_CONNECTIONS" => Some("2".to_owned()),
            "ORDER_SERVICE_TIMEOUT_MS" => Some("100".to_owned()),
            "REQUEST_TIMEOUT_MS" => Some("101".to_owned()),
            "HEADER_READ_TIMEOUT_MS" => Some("50".to_owned()),
            _ => None,
        };
        let config = Config::from_env(&source).unwrap();
        assert_eq!(config.max_in_flight, 1);
        assert_eq!(config.max_connections, 2);
        assert_eq!(config.request_timeout, Duration::from_millis(101));
        assert_eq!(config.header_read_timeout, Duration::from_millis(50));
        let message =
            Config::from_env(&|k: &str| (k == "MAX_CONNECTIONS").then(|| "100".to_owned()))
                .unwrap_err()
                .to_string();
        assert!(message.contains("MAX_IN_FLIGHT (256)"), "{message}");
    }
}
