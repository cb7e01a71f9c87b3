//! Reporting the outcome to the order-service (`CompleteOrder`) over gRPC. The traced
//! channel injects the consumer span's context, so the order-service's CompleteOrder
//! span lands in the same trace as the request that created the order.

use proto::client::OrderClient;
use proto::order::v1::{CompleteOrderRequest, OrderStatus};

use crate::failure::Failure;
use crate::fulfilment::Outcome;

#[derive(Debug, Clone)]
pub struct Reporter {
    client: OrderClient,
}

impl Reporter {
    /// `client` is traced: each call is a CLIENT span, and its timeouts come from
    /// `ORDER_SERVICE_*` (see `proto::client`).
    pub fn new(client: OrderClient) -> Self {
        Self { client }
    }

    /// One try at recording the outcome, a CLIENT span of its own (so retries show in the
    /// trace). What to do about a failure is `failure.rs`'s call.
    pub async fn complete(&self, order_id: &str, outcome: &Outcome) -> Result<(), Failure> {
        let (status, failure_reason) = match outcome {
            Outcome::Fulfilled => (OrderStatus::Fulfilled, String::new()),
            Outcome::Failed(reason) => (OrderStatus::Failed, reason.clone()),
        };
        let request = CompleteOrderRequest {
            order_id: order_id.to_owned(),
            status: status.into(),
            failure_reason,
        };
        match self.client.clone().complete_order(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(Failure::from_status(&status)),
        }
    }
}

/// What tonic 0.14 itself returns when the order-service cannot answer: measured here,
/// through the same client the worker uses, because the classes in `failure.rs` depend
/// on it (a paused order-service once got its records skipped as "rejected").
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proto::client::ClientConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::failure::Class;

    const ORDER: &str = "6f1c1f2e-1d55-4b8e-9d3a-1b9b8a6c2f00";

    async fn complete_against(port: u16, request_timeout: Duration) -> Failure {
        let config = ClientConfig {
            request_timeout,
            ..ClientConfig::for_url(format!("http://127.0.0.1:{port}"))
        };
        let connection = proto::client::connect(&config).expect("a valid URL");
        let failure = Reporter::new(connection.client)
            .complete(ORDER, &Outcome::Fulfilled)
            .await
            .expect_err("no order-service there");
        assert_eq!(failure.class, Class::Transient, "{failure}");
        failure
    }

    /// A server that does `answer` with every connection it accepts.
    async fn serve<F, Fut>(answer: F) -> u16
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket));
            }
        });
        port
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let failure = complete_against(port, Duration::from_secs(5)).await;
        assert_eq!(failure.error_type, "unavailable", "{failure}");
        assert!(failure.reason.contains("tcp connect error"), "{failure}");
    }

    #[tokio::test]
    async fn tonics_own_timeout_is_cancelled() {
        // Accepts and never answers, like a paused (SIGSTOP) order-service whose kernel
        // still completes the TCP handshake.
        let port = serve(|socket| async move {
            std::future::pending::<()>().await;
            drop(socket);
        })
        .await;
        let failure = complete_against(port, Duration::from_millis(300)).await;
        assert_eq!(failure.error_type, "cancelled", "{failure}");
        assert!(failure.reason.contains("Timeout expired"), "{failure}");
    }

    #[tokio::test]
    async fn a_connection_closed_at_once_is_cancelled() {
        let port = serve(|socket| async move { drop(socket) }).await;
        let failure = complete_against(port, Duration::from_secs(5)).await;
        assert_eq!(failure.error_type, "cancelled", "{failure}");
    }

    /// What is on the port is not a gRPC server (a proxy, another service): UNKNOWN
    /// "transport error" in most runs, INTERNAL "h2 protocol error" in some, depending
    /// on how far HTTP/2 got before the connection closed. Either is transient.
    #[tokio::test]
    async fn an_answer_that_is_not_http2_is_unknown_or_internal() {
        let port = serve(|mut socket| async move {
            let mut buffer = [0_u8; 1024];
            let _ = socket.read(&mut buffer).await;
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\ngarbage")
                .await;
        })
        .await;
        let failure = complete_against(port, Duration::from_secs(5)).await;
        assert!(
            ["unknown", "internal"].contains(&failure.error_type),
            "{failure}"
        );
    }
}
