//! `POST /test` for the W3C Trace Context test harness (on only with
//! `W3C_TEST_ENDPOINT=true`). The harness sends `[{"url": ..., "arguments": [...]}, ...]`;
//! for each element the gateway POSTs `arguments` as JSON to `url`, carrying the current
//! trace context, then answers 200. The harness reads the `traceparent` and `tracestate`
//! that arrive, so this endpoint shows exactly what the gateway propagates.
//!
//! Off by default and off in docker-compose.yml: it makes the gateway send requests to
//! any URL its caller names.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use telemetry::propagation::http::{client_span, inject_headers, record_client_status};
use tracing::Instrument;

use crate::error::ApiError;

/// Most callbacks one request may ask for; the harness sends a handful.
const MAX_CASES: usize = 32;
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub struct Case {
    url: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

pub async fn run(
    State(http): State<reqwest::Client>,
    body: Result<Json<Vec<Case>>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(cases) = body?;
    if cases.len() > MAX_CASES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_cases",
            format!("at most {MAX_CASES} cases per request"),
        ));
    }
    for case in cases {
        let url: reqwest::Url = case.url.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_url",
                format!("{:?} is not a URL", case.url),
            )
        })?;
        let mut request = http
            .post(url)
            .json(&case.arguments)
            .timeout(CALLBACK_TIMEOUT)
            .build()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_case", e.to_string()))?;
        // The CLIENT span is a child of the server span; its context is what the harness sees.
        let uri: axum::http::Uri = request.url().as_str().parse().unwrap_or_default();
        let span = client_span(request.method(), &uri);
        inject_headers(&span, request.headers_mut());
        match http.execute(request).instrument(span.clone()).await {
            Ok(response) => record_client_status(&span, response.status().as_u16()),
            // The harness judges by what it received; a failed callback is logged and the rest go on.
            Err(error) => tracing::warn!(parent: &span, %error, "callback failed"),
        }
    }
    Ok(StatusCode::OK)
}
