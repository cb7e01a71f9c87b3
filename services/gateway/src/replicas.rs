//! The order-service's replicas as the gateway calls them: `ORDER_SERVICE_URL` may list
//! several, comma-separated, all serving one database.
//!
//! Why not tonic's `Channel::balance_list`: its balancer keeps choosing an endpoint that
//! refuses connections. tonic's lazily reconnecting connection reports itself ready after
//! a failed connect (so that a single channel is not poisoned by one), so the
//! power-of-two-choices balancer picks the dead replica again and the call fails with
//! `UNAVAILABLE` "tcp connect error" (grpc/grpc-rust issues #643 and #2839). Here instead:
//!
//! - **Round robin** over one traced channel per replica.
//! - **Failover when it is safe.** A call goes on to the next replica (each replica once
//!   at most) when the one tried refused the connection: the request never reached a
//!   server, so any call may. When a replica answered `UNAVAILABLE` or the connection
//!   broke mid-call (tonic: `UNKNOWN` "transport error"), the request may have been handled: only a read (`GetOrder`) goes on,
//!   and a `CreateOrder` only with an idempotency key, which makes the next replica
//!   answer with the order the first one stored, if it did. Other failures are the
//!   answer.
//! - **A replica that refused a connection is tried last** for [`COOL_DOWN`], so while
//!   one is down most calls do not knock on its door first.
//!
//! Every attempt is a CLIENT span of its own, made by its replica's channel with that
//! replica's `server.address` and `server.port`: the semantic conventions ask for one
//! span per request sent (HTTP: "each time an HTTP request is sent"; gRPC's own
//! OpenTelemetry tracing, gRFC A72, makes a span per attempt), and a failed first attempt
//! beside the one that succeeded is what an operator needs to see in the trace.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use proto::client::OrderClient;
use proto::order::v1::{CreateOrderRequest, CreateOrderResponse, GetOrderRequest, Order};
use tonic::{Code, Status};

/// How long a replica that refused a connection is tried only after the others: long
/// enough that a dead replica costs a refused connection about once a second, short
/// enough that one that restarted is back in the rotation at once.
pub const COOL_DOWN: Duration = Duration::from_secs(1);

/// The order-service replicas; cheap to clone (one set shared by every request).
#[derive(Debug, Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    replicas: Vec<Replica>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Replica {
    url: String,
    client: OrderClient,
    /// Tried after the others until then (it refused a connection).
    cooling_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn cooling(&self, now: Instant) -> bool {
        let until = self
            .cooling_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        until.is_some_and(|until| now < until)
    }

    fn cool_down(&self) {
        *self
            .cooling_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + COOL_DOWN);
    }
}

/// When a failed attempt may go on to the next replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failover {
    /// Only if the request never reached a server (connection refused).
    Unreached,
    /// Also if the replica gave no answer of its own (`no_answer`): the call is safe to
    /// repeat.
    Unavailable,
}

impl Replicas {
    /// `clients`: each replica's URL (for the logs) and its client.
    ///
    /// # Panics
    /// If `clients` is empty: the configuration always has at least one URL.
    pub fn new(clients: impl IntoIterator<Item = (String, OrderClient)>) -> Self {
        let replicas: Vec<Replica> = clients
            .into_iter()
            .map(|(url, client)| Replica {
                url,
                client,
                cooling_until: Mutex::new(None),
            })
            .collect();
        assert!(!replicas.is_empty(), "at least one order-service replica");
        Self {
            inner: Arc::new(Inner {
                replicas,
                next: AtomicUsize::new(0),
            }),
        }
    }

    pub async fn create_order(
        &self,
        request: CreateOrderRequest,
    ) -> Result<CreateOrderResponse, Status> {
        let failover = if request.idempotency_key.is_empty() {
            Failover::Unreached
        } else {
            Failover::Unavailable
        };
        self.call(failover, |mut client| {
            let request = request.clone();
            async move { client.create_order(request).await }
        })
        .await
    }

    pub async fn get_order(&self, request: GetOrderRequest) -> Result<Order, Status> {
        self.call(Failover::Unavailable, |mut client| {
            let request = request.clone();
            async move { client.get_order(request).await }
        })
        .await
    }

    async fn call<T, Call, Called>(&self, failover: Failover, call: Call) -> Result<T, Status>
    where
        Call: Fn(OrderClient) -> Called,
        Called: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last_failure = None;
        for index in self.attempt_order() {
            let replica = &self.inner.replicas[index];
            let status = match call(replica.client.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            let refused = connection_refused(&status);
            if refused {
                replica.cool_down();
            }
            let go_on = refused || (failover == Failover::Unavailable && no_answer(&status));
            if !go_on || self.inner.replicas.len() == 1 {
                return Err(status);
            }
            tracing::warn!(
                replica = %replica.url,
                code = ?status.code(),
                error = status.message(),
                "order-service replica failed; trying the next"
            );
            last_failure = Some(status);
        }
        Err(last_failure.unwrap_or_else(|| Status::unavailable("no order-service replica")))
    }

    /// Every replica once, starting with the next in the rotation; those cooling down last.
    fn attempt_order(&self) -> Vec<usize> {
        let count = self.inner.replicas.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % count;
        let now = Instant::now();
        let (mut ready, cooling): (Vec<usize>, Vec<usize>) = (0..count)
            .map(|k| (start + k) % count)
            .partition(|&index| !self.inner.replicas[index].cooling(now));
        ready.extend(cooling);
        ready
    }
}

impl From<OrderClient> for Replicas {
    /// One replica (tests, and callers that build their own client).
    fn from(client: OrderClient) -> Self {
        Self::new([("order-service".to_owned(), client)])
    }
}

/// Whether the replica gave no answer of its own: it said `UNAVAILABLE` (down, or
/// shutting down), or the connection broke mid-call, which tonic 0.14 reports as
/// `UNKNOWN` "transport error" with the transport's error as its source (a status a
/// server sent has no source). Measured: a replica SIGKILLed under load
/// (`scripts/drill replica-kill`) cut a call off that way.
fn no_answer(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Whether tonic made `status` because the connection was refused: the request was never
/// sent. tonic 0.14 reports it as `UNAVAILABLE` "tcp connect error" with the
/// `io::Error` down its chain of sources.
fn connection_refused(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> OrderClient {
        proto::client::connect(&proto::client::ClientConfig::for_url(url))
            .unwrap()
            .client
    }

    fn replicas(count: usize) -> Replicas {
        Replicas::new((0..count).map(|k| {
            let url = format!("http://127.0.0.1:{}", k + 1);
            (url.clone(), client(&url))
        }))
    }

    #[tokio::test]
    async fn takes_turns_and_tries_a_cooling_replica_last() {
        let replicas = replicas(3);
        assert_eq!(replicas.attempt_order(), [0, 1, 2]);
        assert_eq!(replicas.attempt_order(), [1, 2, 0]);
        replicas.inner.replicas[2].cool_down();
        assert_eq!(replicas.attempt_order(), [0, 1, 2]);
        assert_eq!(replicas.attempt_order(), [0, 1, 2]);
        assert_eq!(replicas.attempt_order(), [1, 0, 2]);
    }

    #[tokio::test]
    async fn a_refused_connection_is_told_from_other_unavailability() {
        // Nothing listens on port 1: the connection is refused.
        let status = client("http://127.0.0.1:1")
            .get_order(GetOrderRequest {
                order_id: "x".to_owned(),
            })
            .await
            .unwrap_err();
        assert!(connection_refused(&status), "{status:?}");
        assert!(!connection_refused(&Status::unavailable(
            "tcp connect error"
        )));
        assert!(!connection_refused(&Status::not_found("no such order")));
    }

    #[test]
    fn a_broken_connection_is_no_answer_and_a_server_error_is_one() {
        let broken = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(no_answer(&broken));
        assert!(no_answer(&Status::unavailable("shutting down")));
        assert!(!no_answer(&Status::unknown("the server failed")));
        assert!(!no_answer(&Status::deadline_exceeded("slow")));
    }
}
