//! The admin endpoint: `GET /metrics` (Prometheus text) and `GET /ready`.
//! A few lines of HTTP/1.1 are enough for two fixed paths; requests are
//! bounded in size and time like everything else a peer sends.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::drain;
use crate::metrics::Metrics;
use crate::tuning::Tuning;

pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>, tuning: Tuning, drain: drain::Watcher) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(respond(stream, metrics.clone(), tuning));
                }
            }
            () = drain.draining() => break,
        }
    }
}

async fn respond(mut stream: TcpStream, metrics: Arc<Metrics>, tuning: Tuning) {
    let Ok(Some(path)) = tokio::time::timeout(tuning.handshake_timeout, read_path(&mut stream, tuning)).await else {
        return;
    };
    let (status, content_type, body) = match path.as_str() {
        "/metrics" => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode()),
        "/ready" => ("200 OK", "text/plain", "ready\n".to_owned()),
        _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads the request head (at most `admin_max_request` bytes) and returns the
/// path of a GET, or `None` for anything else.
async fn read_path(stream: &mut TcpStream, tuning: Tuning) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= tuning.admin_max_request {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(chunk.get(..n)?);
    }
    let line = head.split(|b| *b == b'\r').next()?;
    let mut parts = line.split(|b| *b == b' ');
    match (parts.next(), parts.next()) {
        (Some(b"GET"), Some(path)) => {
            let path = std::str::from_utf8(path).ok()?;
            Some(path.split('?').next().unwrap_or(path).to_owned())
        }
        _ => None,
    }
}
