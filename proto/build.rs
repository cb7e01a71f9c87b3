//! Generates the gRPC client and server for `order/v1/order.proto` (needs `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::compile_protos("order/v1/order.proto")?;
    Ok(())
}
