//! The gateway to load: a plain-HTTP base URL on this machine's loopback, and nowhere else.
//!
//! A load generator pointed at the wrong address is a denial-of-service tool, so anything
//! that is not a loopback address is refused before a single request is sent.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// A checked `--target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://host:port`, no trailing slash: request paths are appended to it.
    base: String,
    /// The host as written (an IPv6 address without its brackets).
    host: String,
    /// For `localhost`: the loopback address it resolved to, which the HTTP client is
    /// pinned to, so a second lookup cannot send the load somewhere else.
    pinned: Option<SocketAddr>,
}

const LOOPBACK_ONLY: &str = "loadgen sends load only to this machine's loopback addresses (127.0.0.0/8, [::1] or localhost)";

impl Target {
    /// Parses and checks a `--target` value; the error says what to write instead.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let uri: http::Uri = raw
            .trim()
            .parse()
            .map_err(|e| format!("not a URL ({e}); expected http://127.0.0.1:PORT"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "https is not supported: the gateway speaks plain HTTP on loopback".to_owned(),
                );
            }
            Some(other) => return Err(format!("unsupported scheme {other:?}; expected http://")),
            None => {
                return Err(
                    "expected a URL with a scheme, such as http://127.0.0.1:8080".to_owned(),
                );
            }
        }
        let authority = uri
            .authority()
            .ok_or("expected a host, such as http://127.0.0.1:8080")?;
        if authority.as_str().contains('@') {
            return Err("user information in the URL is not supported".to_owned());
        }
        if let Some(path) = uri.path_and_query()
            && path.as_str() != "/"
            && !path.as_str().is_empty()
        {
            return Err(format!(
                "expected the gateway's base URL without a path (got {:?}); loadgen calls /api/orders itself",
                path.as_str()
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(80);

        let pinned = if let Ok(ip) = host.parse::<IpAddr>() {
            if !is_loopback(ip) {
                return Err(format!("refusing to send load to {ip}: {LOOPBACK_ONLY}"));
            }
            None
        } else if host.eq_ignore_ascii_case("localhost") {
            Some(resolve_loopback(&host, port)?)
        } else {
            return Err(format!("refusing to send load to {host}: {LOOPBACK_ONLY}"));
        };
        Ok(Self {
            base: format!("http://{authority}"),
            host,
            pinned,
        })
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The host name and the loopback address to use for it, when the target is a name.
    pub fn pinned(&self) -> Option<(&str, SocketAddr)> {
        self.pinned.map(|addr| (self.host.as_str(), addr))
    }
}

/// 127.0.0.0/8, `::1`, and the IPv4-mapped form of 127.0.0.0/8 (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// `localhost` normally resolves to loopback, but `/etc/hosts` can say otherwise: every
/// address it resolves to must be loopback.
fn resolve_loopback(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if let Some(outside) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        return Err(format!(
            "refusing {host}: it resolves to {}, which is not loopback; {LOOPBACK_ONLY}",
            outside.ip()
        ));
    }
    addrs
        .first()
        .copied()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_addresses_only() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.1.2.3:9",
            "http://[::1]:8080",
            "http://[::ffff:127.0.0.1]:8080",
            "http://127.0.0.1",
        ] {
            let target = Target::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(target.url("/api/orders").matches("/api/orders").count(), 1);
            assert!(!target.base().ends_with('/'), "{ok}");
        }
        for refused in [
            "http://10.0.0.1:8080",
            "http://192.168.1.10:8080",
            "http://8.8.8.8",
            "http://[2001:db8::1]:80",
            "http://[::ffff:10.0.0.1]:80",
            "http://example.com:8080",
            "http://0.0.0.0:8080",
        ] {
            let error = Target::parse(refused).unwrap_err();
            assert!(error.contains("loopback"), "{refused}: {error}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_speak_with_a_reason() {
        for (raw, says) in [
            ("https://127.0.0.1:8443", "https"),
            ("ftp://127.0.0.1", "scheme"),
            ("127.0.0.1:8080", "scheme"),
            ("http://127.0.0.1:8080/api/orders", "without a path"),
            ("http://user@127.0.0.1:8080", "user information"),
            ("not a url", "not a URL"),
        ] {
            let error = Target::parse(raw).unwrap_err();
            assert!(error.contains(says), "{raw}: {error}");
        }
    }

    #[test]
    fn localhost_is_pinned_to_the_loopback_address_it_resolved_to() {
        // Only where this machine resolves localhost at all (a sandbox may not).
        if let Ok(target) = Target::parse("http://localhost:8080") {
            let (host, addr) = target.pinned().unwrap();
            assert_eq!(host, "localhost");
            assert!(is_loopback(addr.ip()));
            assert_eq!(addr.port(), 8080);
        }
        assert!(
            Target::parse("http://127.0.0.1:8080")
                .unwrap()
                .pinned()
                .is_none()
        );
    }
}
