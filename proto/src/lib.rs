//! The contract shared by the three services: the gRPC API and the Kafka event (both in
//! `order/v1/*.proto`), the validation rules that the gateway applies at the edge and the
//! order-service applies again, and (feature `client`) the one way to build the
//! order-service's traced client.

#[cfg(feature = "client")]
pub mod client;
pub mod events;
pub mod validation;

/// Generated from `order/v1/order.proto` and `order/v1/events.proto`.
pub mod order {
    pub mod v1 {
        tonic::include_proto!("order.v1");

        /// `order.v1.OrderService`, as the gRPC health service and the spans name it.
        pub use order_service_server::SERVICE_NAME;
    }
}
