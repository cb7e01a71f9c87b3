//! Fetching one trace from Jaeger's query API, `GET {base}/api/v3/traces/{trace_id}`,
//! which both the docker compose Jaeger and the native one (`scripts/stack`) serve, and
//! turning each way it can fail into a message a person can act on.

use std::time::Duration;

use crate::model::{ParseError, Trace};

/// `JAEGER_QUERY_URL` when unset: the docker compose and `scripts/stack up` port.
pub const DEFAULT_URL: &str = "http://127.0.0.1:16686";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{0:?} is not a trace id: expected 32 hex digits (or a traceparent/traceresponse value, 00-<trace id>-<span id>-<flags>)"
    )]
    BadId(String),
    #[error(
        "cannot reach Jaeger at {url}: {reason}. Is it running? (docker compose up, or scripts/stack up; JAEGER_QUERY_URL or --jaeger say where)"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "trace {trace_id} not found in Jaeger at {base}: spans reach Jaeger a second or two after the request, and Jaeger keeps traces in memory only (a restart forgets them)"
    )]
    NotFound { trace_id: String, base: String },
    #[error("Jaeger at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("Jaeger at {url} answered, but not with a trace: {source}")]
    NotATrace {
        url: String,
        #[source]
        source: ParseError,
    },
}

/// The trace id in what a person pastes: 32 hex digits in either case, or a whole
/// `traceparent`/`traceresponse` value. An all-zero id is never a trace.
pub fn parse_trace_id(input: &str) -> Result<String, FetchError> {
    let input = input.trim();
    let candidate = match input.split('-').collect::<Vec<_>>()[..] {
        [version, trace_id, span_id, flags]
            if version.len() == 2 && span_id.len() == 16 && flags.len() == 2 =>
        {
            trace_id
        }
        _ => input,
    };
    let valid = candidate.len() == 32
        && candidate.bytes().all(|b| b.is_ascii_hexdigit())
        && candidate.bytes().any(|b| b != b'0');
    if valid {
        Ok(candidate.to_ascii_lowercase())
    } else {
        Err(FetchError::BadId(input.to_owned()))
    }
}

/// Fetches and reads the trace `trace_id` (already checked by [`parse_trace_id`]).
pub async fn fetch(base: &str, trace_id: &str) -> Result<Trace, FetchError> {
    let base = base.trim_end_matches('/');
    let url = format!("{base}/api/v3/traces/{trace_id}");
    let unreachable = |error: reqwest::Error| FetchError::Unreachable {
        url: base.to_owned(),
        reason: root_cause(&error),
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(unreachable)?;
    match status {
        200 => Trace::from_jaeger(&body).map_err(|source| match source {
            // Jaeger answers 200 with no spans for a trace it dropped meanwhile.
            ParseError::NoSpans => FetchError::NotFound {
                trace_id: trace_id.to_owned(),
                base: base.to_owned(),
            },
            source => FetchError::NotATrace { url, source },
        }),
        404 => Err(FetchError::NotFound {
            trace_id: trace_id.to_owned(),
            base: base.to_owned(),
        }),
        _ => Err(FetchError::Status {
            url,
            status,
            body: body.chars().take(300).collect(),
        }),
    }
}

/// The innermost error's message: "Connection refused" rather than reqwest's "error
/// sending request".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn trace_ids_are_32_hex_digits_or_a_traceparent() {
        let id = "4edc19819a9c44f20246707d5af19b36";
        assert_eq!(parse_trace_id(id).unwrap(), id);
        assert_eq!(parse_trace_id(&id.to_uppercase()).unwrap(), id);
        assert_eq!(parse_trace_id(&format!(" {id}\n")).unwrap(), id);
        assert_eq!(
            parse_trace_id(&format!("00-{id}-5a024db51707124a-01")).unwrap(),
            id
        );
        for bad in [
            "",
            "xyz",
            &id[..31],
            &format!("{id}0"),
            "0000000000000000000000000000000g",
            "00000000000000000000000000000000",
            "00-xyz-5a024db51707124a-01",
        ] {
            assert!(
                matches!(parse_trace_id(bad), Err(FetchError::BadId(_))),
                "{bad:?}"
            );
        }
    }

    /// A one-shot HTTP server that answers `status` and `body` to the first request.
    async fn answer(status: &'static str, body: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0_u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    const ID: &str = "4edc19819a9c44f20246707d5af19b36";

    #[tokio::test]
    async fn jaegers_404_is_trace_not_found() {
        let base = answer(
            "404 Not Found",
            r#"{"error":{"httpCode":404,"message":"No traces found"}}"#,
        )
        .await;
        let error = fetch(&base, ID).await.unwrap_err();
        assert!(matches!(error, FetchError::NotFound { .. }), "{error}");
        assert!(error.to_string().contains(ID), "{error}");
    }

    #[tokio::test]
    async fn an_empty_result_is_trace_not_found() {
        let base = answer("200 OK", r#"{"result":{"resourceSpans":[]}}"#).await;
        let error = fetch(&base, ID).await.unwrap_err();
        assert!(matches!(error, FetchError::NotFound { .. }), "{error}");
    }

    #[tokio::test]
    async fn another_answer_is_reported_with_its_status_and_body() {
        let base = answer("500 Internal Server Error", "storage down").await;
        let error = fetch(&base, ID).await.unwrap_err();
        assert!(
            matches!(&error, FetchError::Status { status: 500, body, .. } if body == "storage down"),
            "{error}"
        );
        let base = answer("200 OK", "<html>not the API</html>").await;
        let error = fetch(&base, ID).await.unwrap_err();
        assert!(matches!(error, FetchError::NotATrace { .. }), "{error}");
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable_and_says_where() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let error = fetch(&base, ID).await.unwrap_err();
        assert!(matches!(error, FetchError::Unreachable { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains(&base), "{message}");
        assert!(message.contains("refused"), "{message}");
    }
}
