//! The mesh's applications: an echo server per server endpoint, which says who
//! it is and what it received, and keeps what the tests check. It speaks HTTP/1.1
//! and HTTP/2 cleartext (prior knowledge) on the same port, as a real app may, and
//! records which one each request arrived in.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::HarnessError;

/// What one request looked like when it reached the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    /// The HTTP version the request reached the app in.
    pub version: Version,
    /// The `baggage` header the app received, if any.
    pub baggage: Option<String>,
    /// Whether any peer-metadata header (ztunnel's or a sidecar's) leaked to the app.
    pub peer_metadata_leaked: bool,
    /// Every request header, in arrival order (names lower case, values lossy UTF-8).
    pub headers: Vec<(String, String)>,
}

/// An echo server: answers every request with JSON naming the workload.
pub struct EchoServer {
    pub workload: String,
    pub address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl EchoServer {
    pub async fn start(workload: &str, address: SocketAddr) -> Result<Self, HarnessError> {
        let listener = TcpListener::bind(address).await.map_err(|e| HarnessError::io(address.to_string(), e))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(listener, workload.to_owned(), seen.clone()));
        Ok(Self { workload: workload.to_owned(), address, seen, task })
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the echo app on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, workload: String, seen: Arc<Mutex<Vec<Seen>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (workload, seen) = (workload.clone(), seen.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = answer(&workload, &request, &seen);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn answer(workload: &str, request: &Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let header = |name: &str| request.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let record = Seen {
        path: request.uri().path().to_owned(),
        version: request.version(),
        baggage: header("baggage"),
        // The sidecar headers, and the waypoint's internal x-wp-* headers.
        peer_metadata_leaked: request.headers().keys().any(|name| {
            let name = name.as_str();
            name.starts_with("x-wp-") || name == "x-envoy-peer-metadata" || name == "x-envoy-peer-metadata-id"
        }),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect(),
    };
    let version = format!("{:?}", record.version);
    let body = json!({ "workload": workload, "path": record.path, "baggage": record.baggage, "version": version });
    seen.lock().push(record);
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    response
}
