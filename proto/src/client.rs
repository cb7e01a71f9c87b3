//! The order-service's client, built one way for every caller (the gateway, the worker):
//! its settings, its timeouts, and the tracing layer that injects each call's context.

use std::time::Duration;

use settings::{SettingError, Source, millis_or, url_or};
use telemetry::propagation::grpc::{TracedChannel, traced_channel};
use tonic::transport::{Channel, Endpoint};

use crate::order::v1::order_service_client::OrderServiceClient;

/// A client whose every call is a CLIENT span carrying its context in the metadata.
pub type OrderClient = OrderServiceClient<TracedChannel>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `ORDER_SERVICE_URL` (default `http://localhost:50051`).
    pub url: String,
    /// `ORDER_SERVICE_CONNECT_TIMEOUT_MS`: the longest a connection attempt may take
    /// (default 1000).
    pub connect_timeout: Duration,
    /// `ORDER_SERVICE_TIMEOUT_MS`: the longest one call may take, connection included
    /// (default 5000).
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn from_source(source: &impl Source) -> Result<Self, SettingError> {
        Ok(Self {
            url: url_or(source, "ORDER_SERVICE_URL", "http://localhost:50051")?,
            connect_timeout: millis_or(
                source,
                "ORDER_SERVICE_CONNECT_TIMEOUT_MS",
                Duration::from_secs(1),
            )?,
            request_timeout: millis_or(source, "ORDER_SERVICE_TIMEOUT_MS", Duration::from_secs(5))?,
        })
    }

    /// A client for `url` with the default timeouts (tests).
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// What a caller of the order-service holds.
#[derive(Debug, Clone)]
pub struct OrderServiceConnection {
    /// For the API calls: traced.
    pub client: OrderClient,
    /// For the standard health service: the same endpoint, untraced (a probe every few
    /// seconds would bury the traces that matter).
    pub health: Channel,
}

/// Connects lazily: nothing is dialled until the first call, so a caller can start
/// before the order-service does.
pub fn connect(config: &ClientConfig) -> Result<OrderServiceConnection, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(config.url.clone())?
        .connect_timeout(config.connect_timeout)
        // Add a timeout so a call can't hang forever: it ends DEADLINE_EXCEEDED.
        .timeout(config.request_timeout);
    Ok(OrderServiceConnection {
        client: OrderServiceClient::new(traced_channel(endpoint.clone())),
        health: endpoint.connect_lazy(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_url_and_timeouts_and_names_a_bad_variable() {
        let defaults = ClientConfig::from_source(&|_: &str| None).unwrap();
        assert_eq!(defaults, ClientConfig::for_url("http://localhost:50051"));
        for (key, value) in [
            ("ORDER_SERVICE_URL", "order-service:50051"),
            ("ORDER_SERVICE_TIMEOUT_MS", "0"),
            ("ORDER_SERVICE_CONNECT_TIMEOUT_MS", "soon"),
        ] {
            let source = |k: &str| (k == key).then(|| value.to_owned());
            assert_eq!(
                ClientConfig::from_source(&source).unwrap_err().variable,
                key
            );
        }
    }
}
