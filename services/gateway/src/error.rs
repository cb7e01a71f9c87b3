//! Every error the API returns: a status and a JSON body
//! `{"error": {"code", "message"}, "trace_id"}`. The trace id lets a user (or support)
//! find exactly this request in Jaeger; internal details stay in logs and spans.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tonic::Code;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// What went wrong behind a 5xx, for the log only: never sent to the client.
    cause: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            cause: None,
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
        if self.status.is_server_error() {
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
        (self.status, Json(body)).into_response()
    }
}
