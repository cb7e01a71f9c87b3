//! Which generation of the RPC semantic conventions the gRPC spans carry.
//!
//! The RPC conventions moved towards stable (semconv 1.45): `rpc.system.name`, a fully
//! qualified `rpc.method`, `rpc.response.status_code` as the status name. Dashboards built
//! on the older names (`rpc.system`, `rpc.service`, a short `rpc.method`, the integer
//! `rpc.grpc.status_code`) keep working with `OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup`, as the
//! conventions' migration plan asks.
//!
//! Set once by `init` for the whole process, like the propagator: the layers that make the
//! spans are built deep inside each service, and the choice is the process's, not a call's.

use std::sync::atomic::{AtomicBool, Ordering};

use settings::{SettingError, Source, value};

/// `OTEL_SEMCONV_STABILITY_OPT_IN`, as far as RPC is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RpcConventions {
    /// The current conventions only (the default; also `rpc`).
    #[default]
    Stable,
    /// The current ones and the pre-stable ones (`rpc/dup`). Where both name the same
    /// attribute (`rpc.method`), the current value wins.
    Duplicate,
}

impl RpcConventions {
    pub(crate) fn from_source(source: &impl Source) -> Result<Self, SettingError> {
        const VAR: &str = "OTEL_SEMCONV_STABILITY_OPT_IN";
        let Some(raw) = value(source, VAR) else {
            return Ok(Self::Stable);
        };
        let values: Vec<&str> = raw.split(',').map(str::trim).collect();
        if let Some(empty) = values.iter().position(|v| v.is_empty()) {
            return Err(SettingError::new(
                VAR,
                &raw,
                format!(
                    "entry {} is empty; expected a comma-separated list",
                    empty + 1
                ),
            ));
        }
        // Other categories (http, database, ...) belong to other instrumentations: ignored.
        // `rpc/dup` takes precedence over `rpc` when both are present.
        Ok(if values.contains(&"rpc/dup") {
            Self::Duplicate
        } else {
            Self::Stable
        })
    }
}

static RPC_DUPLICATE: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_rpc(conventions: RpcConventions) {
    RPC_DUPLICATE.store(conventions == RpcConventions::Duplicate, Ordering::Relaxed);
}

#[cfg_attr(not(feature = "grpc"), allow(dead_code))]
pub(crate) fn rpc() -> RpcConventions {
    if RPC_DUPLICATE.load(Ordering::Relaxed) {
        RpcConventions::Duplicate
    } else {
        RpcConventions::Stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<RpcConventions, SettingError> {
        RpcConventions::from_source(&|k: &str| {
            (k == "OTEL_SEMCONV_STABILITY_OPT_IN").then(|| raw.to_owned())
        })
    }

    #[test]
    fn reads_the_rpc_entries_of_the_list() {
        assert_eq!(parse("").unwrap(), RpcConventions::Stable);
        assert_eq!(parse("rpc").unwrap(), RpcConventions::Stable);
        assert_eq!(parse("http, rpc/dup").unwrap(), RpcConventions::Duplicate);
        assert_eq!(parse("rpc,rpc/dup").unwrap(), RpcConventions::Duplicate);
        assert_eq!(parse("database").unwrap(), RpcConventions::Stable);
        assert_eq!(
            parse("rpc,,http").unwrap_err().variable,
            "OTEL_SEMCONV_STABILITY_OPT_IN"
        );
    }
}
