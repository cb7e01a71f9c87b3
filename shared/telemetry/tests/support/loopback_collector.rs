// A Collector stand-in on loopback for the OTLP/HTTP exporter: answers each export with
// the next status of a script (200 once it runs out) and keeps each request's body.
// Shared by the export retry tests and the span cost bench (`include!`d into a module of each).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[allow(dead_code)] // the bench reads only the endpoint
pub struct LoopbackCollector {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Every request's body, in arrival order.
    pub bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

pub fn start(script: &[u16]) -> LoopbackCollector {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (seen, script) = (seen.clone(), script.clone());
            std::thread::spawn(move || serve(stream, &seen, &script));
        }
    });
    LoopbackCollector { endpoint, bodies }
}

/// One request after another on a kept-alive connection, until the client closes it.
fn serve(stream: TcpStream, seen: &Mutex<Vec<Vec<u8>>>, script: &Mutex<VecDeque<u16>>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    loop {
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().expect("not poisoned").push(body);
        let status = script
            .lock()
            .expect("not poisoned")
            .pop_front()
            .unwrap_or(200);
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
