# syntax=docker/dockerfile:1
#
# Images for docker-compose.yml. One file, several targets:
#   service    gateway, order-service or worker (build arg SERVICE), distroless, non-root
#   collector  the official Collector contrib image plus the healthcheck probe
#   jaeger     the official Jaeger image plus the healthcheck probe
#
# Dependencies compile in a layer of their own (cargo-chef), so changing one service
# rebuilds only that service. Nothing here is architecture-specific: the same file
# builds on amd64 and arm64.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
# Same Debian release as the build image: the binaries need its glibc.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG COLLECTOR_IMAGE=otel/opentelemetry-collector-contrib:0.161.0
ARG JAEGER_IMAGE=jaegertracing/jaeger:2.13.0

# --- build environment --------------------------------------------------------------
FROM ${RUST_IMAGE} AS chef
# protoc for the gRPC code; make and a C/C++ compiler for librdkafka and SQLite.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler make g++ pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# Every dependency of the workspace, compiled once and cached until Cargo.lock changes.
FROM chef AS dependencies
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json

FROM dependencies AS builder
COPY . .
ARG SERVICE=gateway
RUN cargo build --release --locked -p "${SERVICE}" --bin "${SERVICE}" \
 && cp "target/release/${SERVICE}" /service \
 && mkdir -p /data-dir

# The probe has no dependencies: compiled on its own, linked statically, so it runs in
# any image, including the FROM-scratch Collector image.
FROM ${RUST_IMAGE} AS healthcheck
COPY tools/healthcheck/src/main.rs /healthcheck.rs
RUN rustc --edition 2024 -C opt-level=s -C target-feature=+crt-static -o /healthcheck /healthcheck.rs

# --- runtime images -----------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS service
COPY --from=healthcheck /healthcheck /usr/local/bin/healthcheck
COPY --from=builder /service /usr/local/bin/service
# Owned by the runtime user, so a named volume mounted here starts writable.
COPY --from=builder --chown=65532:65532 /data-dir /data
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/service"]

FROM ${COLLECTOR_IMAGE} AS collector
COPY --from=healthcheck /healthcheck /healthcheck

FROM ${JAEGER_IMAGE} AS jaeger
COPY --from=healthcheck /healthcheck /healthcheck
