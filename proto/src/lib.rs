//! The contract shared by the three services: the gRPC API (`order.v1`), the Kafka
//! event the order-service publishes and the worker consumes, and the validation rules
//! that the gateway applies at the edge and the order-service applies again.

pub mod events;
pub mod validation;

/// Generated from `proto/order/v1/order.proto`.
pub mod order {
    pub mod v1 {
        tonic::include_proto!("order.v1");
    }
}
