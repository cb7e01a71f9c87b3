//! Generates the gRPC client and server for `order/v1/order.proto`, and the Kafka event
//! of `order/v1/events.proto` (needs `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        // The messages that also travel as JSON: the order items in the gateway's API
        // and both as the Kafka event. Unknown fields are ignored, so a newer producer's
        // event still reads.
        .type_attribute(
            "order.v1.OrderItem",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .type_attribute(
            "order.v1.OrderCreated",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .field_attribute("order.v1.OrderCreated.version", "#[serde(default)]")
        .compile_protos(&["order/v1/order.proto", "order/v1/events.proto"], &["."])?;
    Ok(())
}
