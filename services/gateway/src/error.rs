//! Every error the API returns: a status and a JSON body
//! `{"error": {"code", "message"}, "trace_id"}`. The trace id lets a user (or support)
//! find exactly this request in Jaeger; internal details stay in logs and spans.
//!
//! Our handlers return [`ApiError`]; [`envelope`] gives the same shape to the answers
//! axum makes by itself (405, a path that does not decode).

use axum::Json;
use axum::extract::Request;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tonic::Code;

/// `Retry-After` on a shed request, in seconds: overload at the edge is measured in
/// requests in flight, which turn over in well under a second.
const RETRY_AFTER_SECONDS: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// What went wrong behind a 5xx, for the log only: never sent to the client.
    cause: Option<String>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u32>,
    /// Whether a 5xx is logged (its span records it either way).
    logged: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            cause: None,
            retry_after: None,
            logged: true,
        }
    }

    /// Beyond `MAX_IN_FLIGHT`. Nothing of the request was done, so sending it again
    /// later is always safe. Not logged: it is the limit doing its job, once per request
    /// beyond capacity, and a log line each would add load just when there is too much.
    pub fn overloaded() -> Self {
        Self {
            retry_after: Some(RETRY_AFTER_SECONDS),
            logged: false,
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the gateway is at capacity; retry after the Retry-After delay",
            )
        }
    }

    /// Past `REQUEST_TIMEOUT_MS`. 504 and not 503: the request was admitted and may have
    /// reached the order-service, so unlike a shed request it may have taken effect
    /// (look the order up before placing it again).
    pub fn timed_out() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "request_timeout",
            "the request did not finish in time; it may still have taken effect",
        )
    }

    /// A failure of ours; `cause` goes to the log only.
    pub fn internal(cause: impl Into<String>) -> Self {
        Self {
            cause: Some(cause.into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the gateway failed to handle the request",
            )
        }
    }

    /// The envelope for an error answer made without us: `detail` is its text, shown to
    /// the caller for a 4xx (axum writes those for clients) and only logged for a 5xx.
    fn for_status(status: StatusCode, detail: Option<String>) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::URI_TOO_LONG => "uri_too_long",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_entity",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            status if status.is_client_error() => "bad_request",
            _ => "internal_error",
        };
        let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
        if status.is_client_error() {
            let message = match status {
                StatusCode::METHOD_NOT_ALLOWED => {
                    "method not allowed; the Allow header lists those this path takes".to_owned()
                }
                _ => detail.unwrap_or(reason),
            };
            Self::new(status, code, message)
        } else {
            Self {
                cause: detail,
                ..Self::new(status, code, reason)
            }
        }
    }

    fn caused_by(mut self, status: tonic::Status) -> Self {
        self.cause = Some(format!("{:?}: {}", status.code(), status.message()));
        self
    }

    pub fn validation(error: proto::validation::ValidationError) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            error.to_string(),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

/// Bad JSON bodies. This error is caused by bad user input, so it is not logged as a
/// server error; the server span still records the status.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => {
                Self::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text())
            }
            JsonRejection::JsonDataError(e) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is too large",
            ),
            other => Self::new(other.status(), "bad_request", other.body_text()),
        }
    }
}

/// gRPC status from the order-service to HTTP: the caller's fault stays 4xx, the
/// backend's trouble becomes 502/503/504 with a generic message (its details are on the
/// gRPC client span, and logged when the response is made).
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let (http, code, message) = match status.code() {
            Code::InvalidArgument => (
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                status.message().to_owned(),
            ),
            Code::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                status.message().to_owned(),
            ),
            Code::AlreadyExists => (
                StatusCode::CONFLICT,
                "already_exists",
                status.message().to_owned(),
            ),
            Code::FailedPrecondition => (
                StatusCode::CONFLICT,
                "conflict",
                status.message().to_owned(),
            ),
            Code::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "order_service_unavailable",
                "the order service is unavailable; try again".to_owned(),
            ),
            Code::DeadlineExceeded | Code::Cancelled => (
                StatusCode::GATEWAY_TIMEOUT,
                "order_service_timeout",
                "the order service did not answer in time".to_owned(),
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                "order_service_error",
                "the order service failed".to_owned(),
            ),
        };
        Self::new(http, code, message).caused_by(status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A 4xx is the caller's mistake and is not logged; a 5xx is ours to look into.
        if self.status.is_server_error() && self.logged {
            tracing::error!(
                status = self.status.as_u16(),
                code = self.code,
                cause = self.cause.as_deref(),
                "request failed"
            );
        }
        let body = json!({
            "error": { "code": self.code, "message": self.message },
            "trace_id": telemetry::current_trace_id(),
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The longest text of axum's own answer that is read into the envelope; its rejection
/// texts are one line.
const MAX_DETAIL_BYTES: usize = 1024;

/// axum answers some requests itself, before or instead of a handler of ours: 405 with an
/// `Allow` header and an empty body when the path exists but the method does not; 400 in
/// `text/plain` when a path parameter does not decode (`/api/orders/%FF`); and whatever a
/// later axum adds. This middleware gives every error answer that is not JSON already
/// the envelope, keeping its status and headers. Inside the server span, so the trace id
/// is there.
pub async fn envelope(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    if !is_error || has_content_type(response.headers(), "application/json") {
        return response;
    }
    let plain_text = has_content_type(response.headers(), "text/plain");
    let (parts, body) = response.into_parts();
    let detail = if plain_text {
        axum::body::to_bytes(body, MAX_DETAIL_BYTES)
            .await
            .ok()
            .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    } else {
        None
    };
    let mut enveloped = ApiError::for_status(status, detail).into_response();
    // Keep what the answer said besides its body: above all `Allow` on a 405.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            enveloped.headers_mut().append(name, value.clone());
        }
    }
    enveloped
}

fn has_content_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(expected))
}
