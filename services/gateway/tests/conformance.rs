//! `POST /test` against the W3C Trace Context test harness's cases, replayed here: a
//! stand-in harness (a small HTTP server) records what the gateway's callbacks carry, and
//! each case checks it by the harness's rules. The official harness (w3c/trace-context,
//! `test/test.py`) can be pointed at the same endpoint; see the README.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::routing::post;
use gateway::router;
use lifecycle::health::Readiness;
use proto::client::{ClientConfig, connect};
use serde_json::json;
use telemetry::propagation::http::InboundContext;
use telemetry::testing::CapturedService;
use tower::ServiceExt;

const TRACE: &str = "12345678901234567890123456789012";
const PARENT: &str = "1234567890123456";
const VALID: &str = "00-12345678901234567890123456789012-1234567890123456-01";

/// What the stand-in harness received, one header map per callback.
type Received = Arc<Mutex<Vec<HeaderMap>>>;

async fn harness() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let record = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/callback/{n}",
        post(move |headers: HeaderMap| {
            let record = Arc::clone(&record);
            async move {
                record.lock().unwrap().push(headers);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

/// Sends `POST /test` with `headers`, asking for `callbacks` callbacks; returns the
/// `(traceparent, tracestate)` of each.
async fn run(
    inbound: InboundContext,
    headers: &[(&str, &str)],
    callbacks: usize,
) -> Vec<(String, String)> {
    let capture = CapturedService::new("gateway");
    let _guard = tracing::dispatcher::set_default(capture.dispatch());
    let (addr, received) = harness().await;
    let config = gateway::Config {
        w3c_test_endpoint: true,
        inbound_trace_context: inbound,
        ..gateway::Config::from_env(&|_: &str| None).unwrap()
    };
    // Never called: nothing listens on port 1.
    let client = connect(&ClientConfig::for_url("http://127.0.0.1:1"))
        .unwrap()
        .client;
    let app = router(client, &config, Readiness::default());
    let cases: Vec<_> = (0..callbacks)
        .map(|n| json!({"url": format!("http://{addr}/callback/{n}"), "arguments": []}))
        .collect();
    let mut request = Request::post("/test")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&cases).unwrap()))
        .unwrap();
    for (k, v) in headers {
        request.headers_mut().append(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), callbacks, "one callback per case");
    received
        .iter()
        .map(|h| {
            assert_eq!(
                h.get_all("traceparent").iter().count(),
                1,
                "exactly one traceparent"
            );
            let header = |name| {
                h.get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            (header("traceparent"), header("tracestate"))
        })
        .collect()
}

async fn one(headers: &[(&str, &str)]) -> (String, String) {
    run(InboundContext::Continue, headers, 1).await.remove(0)
}

/// `version-traceid-parentid-flags` as sent, checked for the format the harness accepts.
fn fields(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert!(
        parts[1].len() == 32 && parts[2].len() == 16 && parts[3].len() == 2,
        "{traceparent}"
    );
    assert!(
        traceparent
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

fn continued(traceparent: &str) -> bool {
    let (trace, parent, _) = fields(traceparent);
    if trace == TRACE {
        assert_ne!(
            parent, PARENT,
            "the gateway sends its own span as the parent"
        );
    }
    trace == TRACE
}

#[tokio::test]
async fn traceparent_cases() {
    // No context at all: a valid new one is sent.
    assert!(!continued(&one(&[]).await.0));
    let keep = [
        VALID.to_owned(),
        VALID.replacen("00-", "cc-", 1),
        format!(
            "{}-what-the-future-will-be-like",
            VALID.replacen("00-", "cc-", 1)
        ),
        format!(" {VALID}"),
        format!("\t{VALID}"),
        format!("{VALID} "),
        format!("{VALID}\t"),
        format!("\t {VALID} \t"),
    ];
    for value in keep {
        assert!(
            continued(&one(&[("traceparent", &value)]).await.0),
            "{value:?} is continued"
        );
    }
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        assert!(
            continued(&one(&[(name, VALID)]).await.0),
            "header name {name}"
        );
    }
    let restart = [
        format!("{VALID}."),
        format!("{VALID}-what-the-future-will-be-like"),
        format!(
            "{}.what-the-future-will-be-like",
            VALID.replacen("00-", "cc-", 1)
        ),
        VALID.replacen("00-", "ff-", 1),
        VALID.replacen("00-", ".0-", 1),
        VALID.replacen("00-", "0.-", 1),
        VALID.replacen("00-", "000-", 1),
        VALID.replacen("00-", "0000-", 1),
        VALID.replacen("00-", "0-", 1),
        "00-00000000000000000000000000000000-1234567890123456-01".to_owned(),
        "00-.2345678901234567890123456789012-1234567890123456-01".to_owned(),
        "00-1234567890123456789012345678901.-1234567890123456-01".to_owned(),
        "00-123456789012345678901234567890123-1234567890123456-01".to_owned(),
        "00-1234567890123456789012345678901-1234567890123456-01".to_owned(),
        "00-12345678901234567890123456789012-0000000000000000-01".to_owned(),
        "00-12345678901234567890123456789012-.234567890123456-01".to_owned(),
        "00-12345678901234567890123456789012-123456789012345.-01".to_owned(),
        "00-12345678901234567890123456789012-12345678901234567-01".to_owned(),
        "00-12345678901234567890123456789012-123456789012345-01".to_owned(),
        "00-12345678901234567890123456789012-1234567890123456-.0".to_owned(),
        "00-12345678901234567890123456789012-1234567890123456-0.".to_owned(),
        "00-12345678901234567890123456789012-1234567890123456-001".to_owned(),
        "00-12345678901234567890123456789012-1234567890123456-1".to_owned(),
    ];
    for value in restart {
        let (traceparent, _) = one(&[("traceparent", &value)]).await;
        assert!(
            !continued(&traceparent),
            "{value:?} starts a new trace, sent {traceparent}"
        );
    }
    for name in ["trace-parent", "trace.parent"] {
        assert!(
            !continued(&one(&[(name, VALID)]).await.0),
            "header name {name}"
        );
    }
    // Hex must be lowercase.
    let upper = "00-ABCDEF0123456789ABCDEF0123456789-ABCDEF0123456789-01";
    let (trace, _, _) = fields(&one(&[("traceparent", upper)]).await.0);
    assert_ne!(
        trace, "abcdef0123456789abcdef0123456789",
        "uppercase hex starts a new trace"
    );
    // Two traceparents: neither is the parent.
    let (traceparent, _) = one(&[
        (
            "traceparent",
            "00-12345678901234567890123456789011-1234567890123456-01",
        ),
        ("traceparent", VALID),
    ])
    .await;
    let (trace, _, _) = fields(&traceparent);
    assert!(trace != TRACE && trace != "12345678901234567890123456789011");
}

#[tokio::test]
async fn flags_are_kept() {
    for (sent, expected) in [("00", "00"), ("01", "01"), ("02", "02"), ("03", "03")] {
        let value = format!("00-{TRACE}-{PARENT}-{sent}");
        let (traceparent, _) = one(&[("traceparent", &value)]).await;
        assert_eq!(fields(&traceparent).2, expected, "flags {sent}");
    }
}

#[tokio::test]
async fn tracestate_cases() {
    fn ts<'a>(headers: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all = vec![(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-00",
        )];
        all.extend_from_slice(headers);
        all
    }
    // Without a traceparent, a tracestate is discarded.
    assert_eq!(one(&[("tracestate", "foo=1,bar=2")]).await.1, "");
    assert_eq!(
        one(&ts(&[("tracestate", "foo=1,bar=2")])).await.1,
        "foo=1,bar=2"
    );
    for name in ["TraceState", "TrAcEsTaTe", "TRACESTATE"] {
        assert_eq!(
            one(&ts(&[(name, "foo=1")])).await.1,
            "foo=1",
            "header name {name}"
        );
    }
    for name in ["trace-state", "trace.state"] {
        assert_eq!(
            one(&ts(&[(name, "foo=1")])).await.1,
            "",
            "header name {name}"
        );
    }
    assert_eq!(one(&ts(&[("tracestate", "")])).await.1, "");
    assert_eq!(
        one(&ts(&[("tracestate", "foo=1"), ("tracestate", "")]))
            .await
            .1,
        "foo=1"
    );
    assert_eq!(
        one(&ts(&[("tracestate", ""), ("tracestate", "foo=1")]))
            .await
            .1,
        "foo=1"
    );
    assert_eq!(
        one(&ts(&[
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", "rojo=1,congo=2"),
            ("tracestate", "baz=3")
        ]))
        .await
        .1,
        "foo=1,bar=2,rojo=1,congo=2,baz=3"
    );
    // Duplicate keys are the sender's to avoid: the list is inherited with them, as sent.
    for (duplicated, sent) in [
        (vec!["foo=1,foo=1"], "foo=1,foo=1"),
        (vec!["foo=1,foo=2"], "foo=1,foo=2"),
        (vec!["foo=1", "foo=1"], "foo=1,foo=1"),
        (vec!["foo=1", "foo=2"], "foo=1,foo=2"),
    ] {
        let headers: Vec<(&str, &str)> = duplicated.iter().map(|v| ("tracestate", *v)).collect();
        assert_eq!(one(&ts(&headers)).await.1, sent, "{duplicated:?}");
    }
    // A key is a letter or digit, then up to 255 of `a-z0-9_-*/@`: `@` may come anywhere
    // after the first character, any number of times. The SDK's `TraceState` cannot hold
    // a second `@` or more than 13 characters after one; such lists are sent on anyway.
    let t241_at_v14 = format!("{}@{}", "t".repeat(241), "v".repeat(14));
    for list in [
        "foo@=1,bar=2".to_owned(),
        "foo@@bar=1,bar=2".to_owned(),
        "foo@bar@baz=1,bar=2".to_owned(),
        "1a=1,bar=2".to_owned(),
        format!("{}=1,bar=2", "k".repeat(256)),
        format!("t@{}=1,bar=2", "v".repeat(15)),
        format!("{t241_at_v14}=1,bar=2"),
        format!("{}@v=1,bar=2", "t".repeat(242)),
    ] {
        assert_eq!(one(&ts(&[("tracestate", &list)])).await.1, list, "{list:?}");
    }
    for discarded in [
        vec!["foo =1".to_owned()],
        vec!["FOO=1".to_owned()],
        vec!["foo.bar=1".to_owned()],
        vec!["@foo=1,bar=2".to_owned()],
        // Keys of 257 characters, without and with an `@`.
        vec![format!("{}=1,bar=2", "k".repeat(257))],
        vec![format!("bar=2,{t241_at_v14}v=1")],
    ] {
        let headers: Vec<(&str, &str)> = discarded
            .iter()
            .map(|v| ("tracestate", v.as_str()))
            .collect();
        assert_eq!(one(&ts(&headers)).await.1, "", "{discarded:?} is discarded");
    }
    for ows in [
        "foo=1 \t , \t bar=2, \t baz=3",
        "foo=1\t \t,\t \tbar=2,\t \tbaz=3",
    ] {
        assert_eq!(
            one(&ts(&[("tracestate", ows)])).await.1,
            "foo=1,bar=2,baz=3",
            "{ows:?}"
        );
    }
    for ows in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
        assert_eq!(one(&ts(&[("tracestate", ows)])).await.1, "foo=1", "{ows:?}");
    }
    // Every legal character, in a key starting with a letter and with a digit.
    let key: String = ('a'..='z')
        .chain('0'..='9')
        .chain("_-*/@".chars())
        .collect();
    let value: String = (0x20u8..=0x2b)
        .chain(0x2d..=0x3c)
        .chain(0x3e..=0x7e)
        .map(char::from)
        .collect();
    for key in [key.clone(), format!("0{key}")] {
        let member = format!("{key}={value}");
        assert_eq!(one(&ts(&[("tracestate", &member)])).await.1, member);
    }
    // 32 members are kept, 33 discarded.
    let members = |n: usize| {
        (0..n)
            .map(|i| format!("bar{i:02}=bar{i:02}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(
        one(&ts(&[("tracestate", &members(32))])).await.1,
        members(32)
    );
    assert_eq!(one(&ts(&[("tracestate", &members(33))])).await.1, "");
}

#[tokio::test]
async fn every_callback_carries_the_trace_with_its_own_parent() {
    let sent = run(InboundContext::Continue, &[("traceparent", VALID)], 3).await;
    let parents: std::collections::HashSet<String> = sent
        .iter()
        .map(|(traceparent, _)| {
            assert!(continued(traceparent));
            fields(traceparent).1
        })
        .collect();
    assert_eq!(
        parents.len(),
        3,
        "each callback is a CLIENT span of its own"
    );
}

#[tokio::test]
async fn a_restarting_gateway_never_continues_the_callers_trace() {
    let sent = run(
        InboundContext::Restart,
        &[
            ("traceparent", VALID),
            ("tracestate", "foo=1"),
            ("baggage", "k=v"),
        ],
        1,
    )
    .await;
    assert!(!continued(&sent[0].0));
    assert_eq!(sent[0].1, "", "the caller's tracestate is dropped");
}

#[tokio::test]
async fn the_endpoint_is_off_by_default() {
    let config = gateway::Config::from_env(&|_: &str| None).unwrap();
    assert!(!config.w3c_test_endpoint);
    // Never called: nothing listens on port 1.
    let client = connect(&ClientConfig::for_url("http://127.0.0.1:1"))
        .unwrap()
        .client;
    let app = router(client, &config, Readiness::default());
    let request = Request::post("/test")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("[]"))
        .unwrap();
    assert_eq!(
        app.oneshot(request).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}
