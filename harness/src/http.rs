//! A minimal HTTP/1.1 client: admin endpoints and the test apps' traffic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::HarnessError;

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    sender: SendRequest<Empty<Bytes>>,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Self, HarnessError> {
        let stream = TcpStream::connect(addr).await.map_err(|e| HarnessError::Http(format!("connect {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HarnessError::Http(format!("handshake {addr}: {e}")))?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    pub async fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Result<Reply, HarnessError> {
        let mut request = Request::get(path).header("host", host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::new()).map_err(|e| HarnessError::Http(e.to_string()))?;
        self.sender.ready().await.map_err(|e| HarnessError::Http(format!("GET {host}{path}: {e}")))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| HarnessError::Http(format!("GET {host}{path}: {e}")))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| HarnessError::Http(e.to_string()))?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }
}

/// One request on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, HarnessError> {
    Connection::open(addr).await?.get(&addr.to_string(), path, &[]).await
}

/// Polls `path` until it answers 200, or fails after `timeout`.
pub async fn wait_for_200(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        match get(addr, path).await {
            Ok(reply) if reply.status == StatusCode::OK => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(HarnessError::NotReady(format!("http://{addr}{path} after {timeout:?}")));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
