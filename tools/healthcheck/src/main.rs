//! `healthcheck http://127.0.0.1:8080/health/ready` exits 0 when the URL answers 200 within
//! two seconds, 1 otherwise. For `HEALTHCHECK`/compose `healthcheck:` in images that have
//! no shell or curl (the Collector's image is built FROM scratch; ours are distroless).
//!
//! Plain HTTP/1.0 to a numeric address only: no TLS, no DNS, so a statically linked
//! build works anywhere.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: healthcheck http://<ip>:<port>/<path>");
        return ExitCode::from(2);
    };
    match probe(&url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("healthcheck {url}: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn probe(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| format!("{authority:?} is not <ip>:<port>"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    // The request goes out in one complete buffer: `write!` on a socket may issue several
    // writes, and a server that answers after its first read and closes would then make
    // the later ones fail with a broken pipe.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    // The status line may arrive in pieces: read until its end (or the connection's).
    let mut head = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let status_line = String::from_utf8_lossy(&head);
    // "HTTP/1.1 200 OK"
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("status {code}")),
        None => Err("no HTTP status line".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(response: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            // Read the whole request (to its blank line) before answering, as a real
            // server does; answering after the first read races the client's writes.
            let mut request = Vec::new();
            let mut chunk = [0u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                match socket.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            socket.write_all(response.as_bytes()).unwrap();
        });
        format!("http://{addr}/health/ready")
    }

    #[test]
    fn passes_on_200_and_fails_otherwise() {
        assert_eq!(probe(&serve_once("HTTP/1.1 200 OK\r\n\r\n{}")), Ok(()));
        assert_eq!(
            probe(&serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n")),
            Err("status 503".into())
        );
        assert!(
            probe("http://127.0.0.1:1/").is_err(),
            "nothing listens on port 1"
        );
        assert!(probe("https://127.0.0.1:1/").is_err());
        assert!(
            probe("http://localhost:80/").is_err(),
            "names are not resolved"
        );
    }
}
