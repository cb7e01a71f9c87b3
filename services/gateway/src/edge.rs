//! The gateway protects itself at the edge, so that more traffic than it can take is
//! refused quickly and visibly instead of piling up:
//!
//! - per request ([`limit_requests`]): at most `MAX_IN_FLIGHT` API requests at once, the
//!   next one answered 503 with `Retry-After` at once (load shedding, no queue); and no
//!   request longer than `REQUEST_TIMEOUT_MS` (504);
//! - per connection ([`serve`]): at most `MAX_CONNECTIONS` open, further ones left in the
//!   listen backlog; and `HEADER_READ_TIMEOUT_MS` to send a request's headers, so slow
//!   clients (slowloris) cannot hold connections. `axum::serve` offers neither, hence
//!   this accept loop.
//!
//! Both request limits sit inside the HTTP server span (see `app.rs`): a shed or timed-out
//! request is still traced, with its 503 or 504, and answers with `traceresponse`.

use std::fmt::Debug;
use std::pin::pin;
use std::sync::Arc;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};

use crate::config::Config;
use crate::error::ApiError;

/// Wraps every route of `api` (and its fallback) in the in-flight limit and the request
/// timeout. One semaphore serves all routes: the limit is on the gateway, not per route.
pub fn limit_requests(api: Router, config: &Config) -> Router {
    api.layer(
        ServiceBuilder::new()
            // The refusals below are errors; here they become JSON answers.
            .layer(HandleErrorLayer::new(refusal))
            // Without a free slot, fail at once (503) rather than wait for one: a queue
            // in front of a slow backend only makes every request slow.
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(config.max_in_flight))
            // Inside the limit: a request that runs out of time gives its slot back.
            .timeout(config.request_timeout),
    )
}

/// The answer to a request that the limits stopped.
async fn refusal(error: BoxError) -> ApiError {
    if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::overloaded()
    } else if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::timed_out()
    } else {
        ApiError::internal(error.to_string())
    }
}

/// Serves `app` over HTTP/1.1 on `listener` until `shutdown`, then lets in-flight
/// requests finish and closes idle connections.
///
/// HTTP/1.1 only: the header-read timeout is an HTTP/1 setting, and the automatic
/// HTTP/1-or-2 detection that `axum::serve` does waits for a connection's first bytes
/// with no timeout at all, which is exactly what a slowloris client exploits.
pub async fn serve<L>(mut listener: L, app: Router, config: &Config, shutdown: CancellationToken)
where
    L: Listener,
    L::Addr: Debug,
{
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut http = http1::Builder::new();
    // The timer is what makes the header-read timeout work; hyper has none of its own.
    // The timeout also bounds how long a kept-alive connection may sit idle, since
    // waiting for the next request is waiting for its headers.
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let connections = TaskTracker::new();
    loop {
        // A slot first, then accept: past MAX_CONNECTIONS, new connections wait in the
        // kernel's listen backlog (and, once that is full, their SYNs are dropped and
        // retried by the client) instead of being accepted and left unanswered.
        if slots.available_permits() == 0 {
            tracing::debug!("MAX_CONNECTIONS reached; new connections wait in the backlog");
        }
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slot else { break };
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let connection =
            http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app.clone()));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut connection = pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    // Finish the request in hand, if any, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // A client that hung up or was too slow with its headers: its business.
            if let Err(error) = result {
                tracing::debug!(?remote, %error, "connection ended with an error");
            }
        });
    }
    // Closing the listener refuses what is still in the backlog.
    drop(listener);
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    // The clock is paused: tokio advances it only when every task is idle, so a timeout
    // fires exactly when nothing else can happen first, and "nothing more happened" is
    // a fact once a sleep returns. Connections are in-memory pipes, which (unlike real
    // sockets) wake their reader directly and so keep that guarantee.
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::mpsc;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: gateway\r\n\r\n";
    const GUARD: Duration = Duration::from_secs(24 * 3600);
    /// Above hyper's own default (30 s), so a test can tell that ours is in force.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(45);

    /// A listener whose connections the test makes, counting those accepted.
    struct Pipes {
        incoming: mpsc::UnboundedReceiver<DuplexStream>,
        accepted: Arc<AtomicUsize>,
    }

    impl Listener for Pipes {
        type Io = DuplexStream;
        type Addr = usize;

        async fn accept(&mut self) -> (DuplexStream, usize) {
            match self.incoming.recv().await {
                Some(io) => (io, self.accepted.fetch_add(1, Ordering::SeqCst) + 1),
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> std::io::Result<usize> {
            Ok(0)
        }
    }

    struct Server {
        connect: mpsc::UnboundedSender<DuplexStream>,
        accepted: Arc<AtomicUsize>,
        shutdown: CancellationToken,
        stopped: tokio::task::JoinHandle<()>,
    }

    impl Server {
        fn start(max_connections: usize, header_read_timeout: Duration) -> Self {
            let config = Config {
                max_connections,
                header_read_timeout,
                ..Config::from_env(&|_: &str| None).unwrap()
            };
            let (connect, incoming) = mpsc::unbounded_channel();
            let accepted = Arc::new(AtomicUsize::new(0));
            let listener = Pipes {
                incoming,
                accepted: Arc::clone(&accepted),
            };
            let app = Router::new().route("/", get(|| async { "ok" }));
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            let stopped = tokio::spawn(async move { serve(listener, app, &config, token).await });
            Self {
                connect,
                accepted,
                shutdown,
                stopped,
            }
        }

        fn connect(&self) -> DuplexStream {
            let (client, server) = tokio::io::duplex(64 * 1024);
            self.connect.send(server).unwrap();
            client
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    /// Reads one response (headers and a `content-length` body) and returns its status line.
    async fn response(client: &mut DuplexStream) -> String {
        let mut buffer = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&buffer).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    return head.lines().next().unwrap_or_default().to_owned();
                }
            }
            let mut chunk = [0; 1024];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-response: {text:?}");
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits for the server to close `client`; fails if it sends anything first.
    /// Returns how long that took, in virtual time.
    async fn closed_by_server(client: &mut DuplexStream) -> Duration {
        let started = tokio::time::Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(GUARD, client.read_to_end(&mut rest))
            .await
            .expect("the server never closed the connection")
            .unwrap();
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_too_slow_with_its_headers_is_disconnected() {
        let server = Server::start(8, HEADER_TIMEOUT);
        let mut client = server.connect();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: ga")
            .await
            .unwrap();
        // No answer (there is no request to answer yet), just the close, at our timeout.
        assert!(closed_by_server(&mut client).await >= HEADER_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_is_closed_once_idle_for_the_header_timeout() {
        let server = Server::start(8, HEADER_TIMEOUT);
        let mut client = server.connect();
        client.write_all(REQUEST).await.unwrap();
        assert_eq!(response(&mut client).await, "HTTP/1.1 200 OK");
        assert!(closed_by_server(&mut client).await >= HEADER_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_connection_limit_a_connection_waits_until_one_closes() {
        let server = Server::start(1, GUARD);
        let mut first = server.connect();
        first.write_all(REQUEST).await.unwrap();
        assert_eq!(response(&mut first).await, "HTTP/1.1 200 OK");

        // The first connection stays open (kept alive), holding the only slot.
        let mut second = server.connect();
        second.write_all(REQUEST).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(server.accepted(), 1, "a second connection was accepted");

        drop(first);
        assert_eq!(response(&mut second).await, "HTTP/1.1 200 OK");
        assert_eq!(server.accepted(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_idle_connections_and_returns() {
        let server = Server::start(8, GUARD);
        let mut client = server.connect();
        client.write_all(REQUEST).await.unwrap();
        assert_eq!(response(&mut client).await, "HTTP/1.1 200 OK");
        server.shutdown.cancel();
        closed_by_server(&mut client).await;
        tokio::time::timeout(GUARD, server.stopped)
            .await
            .expect("serve returned")
            .unwrap();
    }
}
