//! Hostile peers for the hardening tests, `make flood` and `make soak` (issue 9):
//!
//! - [`HboneClient`]: mTLS + HTTP/2 to any HBONE listener (the waypoint's or the east-west
//!   gateway's :15008) that sends whatever CONNECT headers it is given: forged baggage,
//!   non-UTF-8 bytes, duplicates, oversized values;
//! - [`ForgedDestination`]: an HBONE destination in the place of a ztunnel that answers the
//!   CONNECT 200 with whatever `baggage` it is given and then serves the app itself (HTTP/1.1
//!   or h2c), with any `grpc-status` the request asks for;
//! - [`silent_tcp`], [`silent_tls`], [`silent_h2`]: connections that open and then say
//!   nothing, timed until the server closes them.
//!
//! It loads certificates with `host_shim::tls` but does not use host-shim's pool or
//! outbound code: the CONNECTs are written here, byte for byte as the caller asks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use host_shim::tls::{self, Credentials};
use host_shim::tunnel::{self, H2Io};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::ca::CertDir;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::http::Reply;
use crate::topology::TRUST_DOMAIN;

#[derive(Debug, thiserror::Error)]
pub enum HostileError {
    #[error("credentials: {0}")]
    Credentials(#[from] tls::TlsError),
    #[error("connect {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS handshake with {0}: {1}")]
    Handshake(SocketAddr, std::io::Error),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("building a request: {0}")]
    Request(#[from] http::Error),
    #[error("header {0:?}: not a valid header name or value")]
    Header(String),
    #[error("inner HTTP: {0}")]
    Inner(String),
    #[error("bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// ztunnel's HTTP/2 windows (PROTOCOL.md §1), so the client looks like one.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_WRITE: usize = 64 * 1024;

/// A client TLS config for `identity` (its key and certificate in `certs`, a
/// `host-shim ca` directory) that accepts only a server presenting one of `expected`.
pub fn client_tls(
    certs: &Path,
    identity: &str,
    expected: &[String],
) -> Result<Arc<rustls::ClientConfig>, HostileError> {
    let credentials = Credentials::load(&CertDir(certs.to_owned()), TRUST_DOMAIN, [identity])?;
    Ok(credentials.client_config(identity, expected)?)
}

/// A server TLS config for `identity`, requiring a client certificate from the mesh root.
pub fn server_tls(certs: &Path, identity: &str) -> Result<Arc<rustls::ServerConfig>, HostileError> {
    let credentials = Credentials::load(&CertDir(certs.to_owned()), TRUST_DOMAIN, [identity])?;
    Ok(credentials.server_config(identity)?)
}

/// One header of a CONNECT, from raw bytes (non-UTF-8 allowed where HTTP allows it).
pub fn header(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), HostileError> {
    let bad = || HostileError::Header(name.to_owned());
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_bytes(value).map_err(|_| bad())?;
    Ok((name, value))
}

/// An mTLS + HTTP/2 connection to an HBONE listener; CONNECTs are streams on it.
pub struct HboneClient {
    send: h2::client::SendRequest<Bytes>,
    driver: JoinHandle<()>,
}

impl HboneClient {
    pub async fn open(address: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Self, HostileError> {
        let tcp = TcpStream::connect(address).await.map_err(|e| HostileError::Connect(address, e))?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(tls);
        let stream =
            connector.connect(tls::unused_server_name(), tcp).await.map_err(|e| HostileError::Handshake(address, e))?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .enable_push(false)
            .handshake(stream)
            .await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { send, driver })
    }

    /// Whether the server has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }

    /// Sends `CONNECT authority` with exactly `headers` (in order, duplicates kept)
    /// and waits for the response.
    pub async fn connect(
        &self,
        authority: &str,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Tunnel, HostileError> {
        let mut request = Request::builder().method(Method::CONNECT).uri(authority).body(())?;
        for (name, value) in headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let mut send = self.send.clone().ready().await?;
        let (response, stream) = send.send_request(request, false)?;
        let response = response.await?;
        let (parts, body) = response.into_parts();
        let (reader, writer) = tunnel::h2_stream(stream, body, MAX_WRITE);
        Ok(Tunnel { status: parts.status, headers: parts.headers, io: H2Io { reader, writer } })
    }
}

impl Drop for HboneClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// An answered CONNECT: its status and headers, and the stream as bytes.
pub struct Tunnel {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub io: H2Io,
}

impl Tunnel {
    /// HTTP/1.1 inside the tunnel, as an app behind ztunnel speaks it.
    pub async fn http1(self) -> Result<Http1, HostileError> {
        Http1::over(self.io).await
    }
}

/// Keep-alive HTTP/1.1 over any byte stream.
pub struct Http1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Http1 {
    pub async fn over<T>(io: T) -> Result<Self, HostileError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| HostileError::Inner(format!("handshake: {e}")))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender, driver })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, HostileError> {
        let request = Request::get(path).header("host", host).body(Empty::new())?;
        self.sender.ready().await.map_err(|e| HostileError::Inner(format!("GET {path}: {e}")))?;
        let response =
            self.sender.send_request(request).await.map_err(|e| HostileError::Inner(format!("GET {path}: {e}")))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| HostileError::Inner(e.to_string()))?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }
}

impl Drop for Http1 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One CONNECT with `headers` on `client`, one GET inside it, then the tunnel closes.
pub async fn one_request(
    client: &HboneClient,
    authority: &str,
    headers: &[(HeaderName, HeaderValue)],
    host: &str,
    path: &str,
) -> Result<Reply, HostileError> {
    let tunnel = client.connect(authority, headers).await?;
    if tunnel.status != StatusCode::OK {
        return Err(HostileError::Inner(format!("CONNECT {authority} answered {}", tunnel.status)));
    }
    let mut inner = tunnel.http1().await?;
    inner.get(host, path).await
}

/// gRPC (h2c, prior knowledge) over any byte stream: the inner protocol of a gRPC app.
pub struct Grpc {
    send: h2::client::SendRequest<Bytes>,
    driver: JoinHandle<()>,
}

/// What a gRPC call came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcAnswer {
    pub http_status: u16,
    /// From the trailers, or from the headers of a trailers-only response.
    pub grpc_status: Option<String>,
}

impl Grpc {
    pub async fn over<T>(io: T) -> Result<Self, HostileError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, connection) = h2::client::Builder::new().enable_push(false).handshake(io).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { send, driver })
    }

    /// A unary call to `http://<host><path>` with one empty message.
    pub async fn call(&self, host: &str, path: &str) -> Result<GrpcAnswer, HostileError> {
        let request = Request::post(format!("http://{host}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut body) = send.send_request(request, false)?;
        // One length-prefixed message of zero bytes.
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)?;
        let response = response.await?;
        let http_status = response.status().as_u16();
        let from_headers = response.headers().get("grpc-status").map(|v| String::from_utf8_lossy(v.as_bytes()).into());
        let mut recv = response.into_body();
        while let Some(data) = recv.data().await {
            let data = data?;
            let _ = recv.flow_control().release_capacity(data.len());
        }
        let trailers = recv.trailers().await?;
        let from_trailers =
            trailers.and_then(|t| t.get("grpc-status").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()));
        Ok(GrpcAnswer { http_status, grpc_status: from_trailers.or(from_headers) })
    }
}

impl Drop for Grpc {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The path that asks a [`ForgedDestination`] app for `grpc-status: <code>`.
pub fn grpc_status_path(code: u32) -> String {
    format!("/hostile.Status/Code{code}")
}

fn wanted_grpc_status(path: &str) -> Option<&str> {
    path.strip_prefix("/hostile.Status/Code").filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

/// One pod a [`ForgedDestination`] stands in for.
#[derive(Debug, Clone)]
pub struct ForgedPod {
    /// Where its ztunnel would listen: `<pod ip>:15008`.
    pub hbone: SocketAddr,
    /// The name the app gives in its JSON answers.
    pub workload: String,
    /// The `baggage` of the CONNECT 200, bytes as given; `None` sends none.
    pub baggage: Option<Vec<u8>>,
}

/// HBONE destinations in the places of a ztunnel's pods, with that ztunnel's TLS
/// identity: every CONNECT gets 200 with the pod's forged `baggage`, then the stream is
/// served as the app (HTTP/1.1 or h2c; JSON naming the workload, or the gRPC status
/// the path asks for). Stops when dropped.
pub struct ForgedDestination {
    served: Arc<AtomicUsize>,
    connects: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl ForgedDestination {
    pub async fn start(certs: &Path, identity: &str, pods: Vec<ForgedPod>) -> Result<Self, HostileError> {
        let config = server_tls(certs, identity)?;
        let served = Arc::new(AtomicUsize::new(0));
        let connects = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for pod in pods {
            let listener = TcpListener::bind(pod.hbone).await.map_err(|e| HostileError::Bind(pod.hbone, e))?;
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let (served, connects, pod) = (served.clone(), connects.clone(), Arc::new(pod));
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { continue };
                    let (acceptor, served, connects, pod) =
                        (acceptor.clone(), served.clone(), connects.clone(), pod.clone());
                    tokio::spawn(async move {
                        let Ok(stream) = acceptor.accept(tcp).await else { return };
                        let _ = serve_hbone(stream, pod, served, connects).await;
                    });
                }
            }));
        }
        Ok(Self { served, connects, tasks })
    }

    /// Inner requests the forged apps answered.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// CONNECTs accepted.
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::Relaxed)
    }
}

impl Drop for ForgedDestination {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve_hbone<T>(
    io: T,
    pod: Arc<ForgedPod>,
    served: Arc<AtomicUsize>,
    connects: Arc<AtomicUsize>,
) -> Result<(), HostileError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(io)
        .await?;
    while let Some(accepted) = connection.accept().await {
        let (request, mut respond) = accepted?;
        if request.method() != Method::CONNECT {
            let refusal = Response::builder().status(StatusCode::BAD_REQUEST).body(())?;
            let _ = respond.send_response(refusal, true);
            continue;
        }
        let mut response = Response::builder().status(StatusCode::OK);
        if let Some(baggage) = &pod.baggage {
            let value = HeaderValue::from_bytes(baggage).map_err(|_| HostileError::Header("baggage".into()))?;
            response = response.header("baggage", value);
        }
        let send = respond.send_response(response.body(())?, false)?;
        connects.fetch_add(1, Ordering::Relaxed);
        let (reader, writer) = tunnel::h2_stream(send, request.into_body(), MAX_WRITE);
        let (pod, served) = (pod.clone(), served.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                served.fetch_add(1, Ordering::Relaxed);
                let answer = app_answer(&pod.workload, request.uri().path());
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(H2Io { reader, writer }), service)
                .await;
        });
    }
    Ok(())
}

fn app_answer(workload: &str, path: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    if let Some(code) = wanted_grpc_status(path) {
        // A trailers-only gRPC response: the status in the headers, no body.
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        if let Ok(code) = HeaderValue::from_str(code) {
            headers.insert("grpc-status", code);
        }
        return response;
    }
    let body = serde_json::json!({ "workload": workload, "path": path }).to_string();
    *response.body_mut() = Full::new(Bytes::from(body));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    if path.starts_with(FORGE_STATS_INPUTS) {
        // A hostile app sets the headers the waypoint's routes hand its stats filter.
        for (name, value) in FORGED_STATS_INPUTS {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

/// A request path whose answer carries [`FORGED_STATS_INPUTS`].
pub const FORGE_STATS_INPUTS: &str = "/forge-stats-inputs";

/// What a hostile app would like the waypoint to believe about the request.
pub const FORGED_STATS_INPUTS: [(&str, &str); 3] = [
    ("x-wp-endpoint", "forged-v9;kube-system;forged;v9;evil-cluster"),
    ("x-wp-service", "inbound-vip|1|http|evil.kube-system.svc.cluster.local"),
    ("x-wp-upconn", "1"),
];

/// How long a silent connection lived: `Some(elapsed)` once the server closed it,
/// `None` if it was still open at the bound.
pub type Lifetime = Option<Duration>;

/// A TCP connection that never sends a byte, until the server closes it.
pub async fn silent_tcp(address: SocketAddr, bound: Duration) -> Result<Lifetime, HostileError> {
    let started = Instant::now();
    let tcp = TcpStream::connect(address).await.map_err(|e| HostileError::Connect(address, e))?;
    Ok(until_closed(tcp, started, bound).await)
}

/// TCP and a completed TLS handshake with the mesh certificate, nothing more.
async fn tls_connect(
    address: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HostileError> {
    let tcp = TcpStream::connect(address).await.map_err(|e| HostileError::Connect(address, e))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(tls::unused_server_name(), tcp)
        .await
        .map_err(|e| HostileError::Handshake(address, e))
}

/// A TLS handshake completed, then not even the HTTP/2 preface.
pub async fn silent_tls(
    address: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    bound: Duration,
) -> Result<Lifetime, HostileError> {
    let started = Instant::now();
    let stream = tls_connect(address, tls).await?;
    Ok(until_closed(stream, started, bound).await)
}

/// TLS and the HTTP/2 preface and SETTINGS (PINGs answered), but never a stream.
pub async fn silent_h2(
    address: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    bound: Duration,
) -> Result<Lifetime, HostileError> {
    let started = Instant::now();
    let stream = tls_connect(address, tls).await?;
    let (_send, connection) = h2::client::handshake(stream).await?;
    let remaining = bound.saturating_sub(started.elapsed());
    Ok(match tokio::time::timeout(remaining, connection).await {
        Ok(_) => Some(started.elapsed()),
        Err(_) => None,
    })
}

/// Reads (and drops) whatever the server sends until it closes or errors.
async fn until_closed<T: AsyncRead + Unpin>(mut io: T, started: Instant, bound: Duration) -> Lifetime {
    let mut buffer = [0u8; 4096];
    let read_all = async {
        loop {
            match io.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(bound.saturating_sub(started.elapsed()), read_all).await {
        Ok(()) => Some(started.elapsed()),
        Err(_) => None,
    }
}

/// Summary of many silent connections: how many closed, and the slowest close.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Closes {
    pub opened: usize,
    pub closed: usize,
    pub still_open: usize,
    /// Connections that could not even be opened (refused: a connection limit, say).
    pub refused: usize,
    pub fastest: Option<Duration>,
    pub slowest: Option<Duration>,
}

impl Closes {
    pub fn add(&mut self, outcome: &Result<Lifetime, HostileError>) {
        self.opened += 1;
        match outcome {
            Ok(Some(lifetime)) => {
                self.closed += 1;
                self.fastest = Some(self.fastest.map_or(*lifetime, |f| f.min(*lifetime)));
                self.slowest = Some(self.slowest.map_or(*lifetime, |s| s.max(*lifetime)));
            }
            Ok(None) => self.still_open += 1,
            Err(_) => self.refused += 1,
        }
    }
}

impl std::fmt::Display for Closes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
        write!(
            f,
            "{} opened, {} closed by the server (fastest {}, slowest {}), {} still open, {} refused",
            self.opened,
            self.closed,
            secs(self.fastest),
            secs(self.slowest),
            self.still_open,
            self.refused
        )
    }
}

/// Awaits silent-connection tasks and sums them up.
pub async fn closes(tasks: Vec<JoinHandle<Result<Lifetime, HostileError>>>) -> Closes {
    let mut summary = Closes::default();
    for task in tasks {
        let outcome = task.await.unwrap_or_else(|e| Err(HostileError::Inner(format!("task: {e}"))));
        summary.add(&outcome);
    }
    summary
}

/// What a flood of forged requests came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FloodOutcome {
    pub ok: usize,
    pub failed: usize,
    /// The first few failures, for the report.
    pub errors: Vec<String>,
}

/// Where a flood goes and as whom: `identity`'s certificate, HBONE to `hbone`
/// (checked against `expected`), CONNECT `authority`, then one GET to `host` inside.
#[derive(Debug, Clone)]
pub struct FloodTarget {
    pub certs: std::path::PathBuf,
    pub identity: String,
    pub hbone: SocketAddr,
    pub expected: Vec<String>,
    pub authority: String,
    pub host: String,
}

/// `n` forged requests, one CONNECT each (`headers_of(i)` gives CONNECT i's headers),
/// `concurrency` at a time, each worker on its own HBONE connection (reopened when it fails).
pub async fn flood<F>(target: &FloodTarget, n: usize, concurrency: usize, headers_of: F) -> FloodOutcome
where
    F: Fn(usize) -> Vec<(HeaderName, HeaderValue)> + Send + Sync + 'static,
{
    let tls = match client_tls(&target.certs, &target.identity, &target.expected) {
        Ok(tls) => tls,
        Err(e) => return FloodOutcome { ok: 0, failed: n, errors: vec![e.to_string()] },
    };
    let next = Arc::new(AtomicUsize::new(0));
    let headers_of = Arc::new(headers_of);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (target, tls, next, headers_of) = (target.clone(), tls.clone(), next.clone(), headers_of.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcome = FloodOutcome::default();
            let mut client: Option<HboneClient> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return outcome;
                }
                if client.as_ref().is_none_or(HboneClient::is_closed) {
                    match HboneClient::open(target.hbone, tls.clone()).await {
                        Ok(opened) => client = Some(opened),
                        Err(e) => {
                            note(&mut outcome, e);
                            continue;
                        }
                    }
                }
                let Some(open) = client.as_ref() else { continue };
                let path = format!("/flood/{i}");
                match one_request(open, &target.authority, &headers_of(i), &target.host, &path).await {
                    Ok(reply) if reply.status.is_success() => outcome.ok += 1,
                    Ok(reply) => note(&mut outcome, HostileError::Inner(format!("{path}: {}", reply.status))),
                    Err(e) => {
                        note(&mut outcome, e);
                        client = None;
                    }
                }
            }
        }));
    }
    let mut total = FloodOutcome::default();
    for task in tasks {
        match task.await {
            Ok(outcome) => {
                total.ok += outcome.ok;
                total.failed += outcome.failed;
                total.errors.extend(outcome.errors.into_iter().take(5usize.saturating_sub(total.errors.len())));
            }
            Err(e) => total.errors.push(format!("flood task: {e}")),
        }
    }
    total
}

fn note(outcome: &mut FloodOutcome, error: HostileError) {
    outcome.failed += 1;
    if outcome.errors.len() < 5 {
        outcome.errors.push(error.to_string());
    }
}
