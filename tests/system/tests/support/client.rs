//! A blocking HTTP client for the in-process tests, on a runtime of its own (not one of
//! the services'): the test thread places orders and waits for their outcome.

use std::time::Duration;

use opentelemetry::trace::TraceId;
use serde_json::{Value, json};

use super::{Stack, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// A client that closes a pooled connection after 5 s idle: the gateway closes one idle
/// for `HEADER_READ_TIMEOUT_MS` (10 s by default), and a request sent on a connection the
/// server is closing at that moment fails (`IncompleteMessage`), as with any HTTP/1.1
/// keep-alive. A client's idle timeout below the server's keeps the two from crossing.
pub fn idle_safe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A blocking HTTP client on a runtime of its own (not one of the services').
pub struct Client {
    pub runtime: tokio::runtime::Runtime,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new() -> Self {
        Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: idle_safe_client(),
        }
    }

    pub fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        self.runtime.block_on(async {
            let response = request.send().await.expect("request sent");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            (status, headers, body)
        })
    }

    pub fn place_order(
        &self,
        stack: &Stack,
        traceparent: Option<&str>,
    ) -> (String, TraceId, reqwest::header::HeaderMap) {
        self.place_order_at(&stack.url("/api/orders"), traceparent)
    }

    /// `place_order` given the URL of `POST /api/orders` (for threads, which cannot
    /// share the `Stack`).
    pub fn place_order_at(
        &self,
        url: &str,
        traceparent: Option<&str>,
    ) -> (String, TraceId, reqwest::header::HeaderMap) {
        let mut request = self.http.post(url).json(
            &json!({"customer_id": "customer-1", "items": [{"sku": "SKU-1", "quantity": 2}]}),
        );
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let (status, headers, body) = self.send(request);
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["status"], "PENDING");
        let order_id = body["order_id"].as_str().expect("order_id").to_owned();
        let trace_id =
            TraceId::from_hex(body["trace_id"].as_str().expect("trace_id")).expect("hex");
        (order_id, trace_id, headers)
    }

    pub fn wait_for_status(&self, stack: &Stack, order_id: &str) -> Value {
        wait_for("the order to reach a final status", WAIT, || {
            let (status, _, body) =
                self.send(self.http.get(stack.url(&format!("/api/orders/{order_id}"))));
            assert_eq!(status, 200, "{body}");
            (body["status"] != "PENDING").then_some(body)
        })
    }
}
