//! The inbound side (ztunnel's :15008): one mTLS + HTTP/2 listener per served
//! workload, on `<pod ip>:<hbone port>`, so the local address names the
//! destination pod as in ztunnel's in-pod mode. Each CONNECT is checked,
//! connected to the app, answered 200 with the pod's `baggage`, then spliced.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use waypoint_core::{Peer, baggage};

use crate::drain;
use crate::http2;
use crate::metrics::{ConnectionRecord, Refusal, Reporter, ResponseFlags, TrafficLabels};
use crate::shim::Context;
use crate::tls::{self, HandshakeFailure, IdentityCheck};
use crate::tunnel::{self, Ending};
use mesh::{Mesh, Service, Workload};

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("connecting to the app at {0}: {1}")]
    App(SocketAddr, std::io::Error),
    #[error("response: {0}")]
    Response(#[from] http::Error),
    #[error("tunnel: {0}")]
    Splice(std::io::Error),
    #[error("closed at the drain deadline")]
    Drained,
}

/// Where an accepted CONNECT goes: the app's address and the service it was for.
#[derive(Debug)]
pub struct Target<'m> {
    pub app: SocketAddr,
    pub service: Option<&'m Service>,
}

/// Checks a CONNECT against the workload it arrived for, as ztunnel does:
/// `<pod ip>:<port>` must carry this pod's IP (400 otherwise, also for a VIP);
/// `<hostname>:<port>` (the inner CONNECT of double HBONE) must name a service
/// this workload backs, on its service port (503 otherwise, ztunnel's NoHostname).
pub fn resolve<'m>(
    mesh: &'m Mesh,
    workload: &Workload,
    method: &Method,
    authority: Option<&http::uri::Authority>,
    headers: &HeaderMap,
) -> Result<Target<'m>, Refusal> {
    if method != Method::CONNECT {
        return Err(Refusal::NotConnect);
    }
    let authority = authority.ok_or(Refusal::BadAuthority)?;
    if let Ok(address) = authority.as_str().parse::<SocketAddr>() {
        if address.ip() != workload.address {
            return Err(Refusal::BadAuthority);
        }
        return Ok(Target { app: address, service: guess_service(mesh, workload, address.port(), headers) });
    }
    let port = authority.port_u16().ok_or(Refusal::BadAuthority)?;
    let service = mesh
        .services_of(workload)
        .find(|s| s.hostname == authority.host() && s.port == port)
        .ok_or(Refusal::UnknownService)?;
    Ok(Target { app: SocketAddr::new(workload.address, service.target_port), service: Some(service) })
}

/// The service a pod-addressed CONNECT was for: the `forwarded` host when this
/// workload backs it, else the only service of this workload on that port.
fn guess_service<'m>(mesh: &'m Mesh, workload: &Workload, port: u16, headers: &HeaderMap) -> Option<&'m Service> {
    let host = headers.get("forwarded").and_then(|v| forwarded_host(v.as_bytes()));
    if let Some(service) = host.and_then(|h| mesh.services_of(workload).find(|s| s.hostname.as_bytes() == h)) {
        return Some(service);
    }
    let mut on_port = mesh.services_of(workload).filter(|s| s.target_port == port);
    match (on_port.next(), on_port.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// The `host=` parameter of a `forwarded` header, as bytes.
fn forwarded_host(value: &[u8]) -> Option<&[u8]> {
    value
        .split(|b| *b == b';' || *b == b',')
        .map(|p| p.trim_ascii())
        .find_map(|p| p.strip_prefix(b"host="))
        .map(|h| h.strip_prefix(b"\"").and_then(|h| h.strip_suffix(b"\"")).unwrap_or(h))
}

/// The client as its `baggage` and verified TLS identity describe it. Baggage
/// is hostile input: too large or malformed reads as unknown, and the identity's
/// namespace wins over the one baggage claims (the check says whether they disagreed).
pub fn source_peer(headers: &HeaderMap, identity: &str, limits: &waypoint_core::Limits) -> (Peer, IdentityCheck) {
    let mut raw = Vec::new();
    for value in headers.get_all("baggage") {
        if !raw.is_empty() {
            raw.push(b',');
        }
        raw.extend_from_slice(value.as_bytes());
    }
    let mut peer = baggage::decode(&raw, limits).map(|d| d.peer).unwrap_or_default();
    let check = tls::pin_to_identity(&mut peer, identity);
    (peer, check)
}

/// Accepts connections for one workload until the drain starts.
pub(crate) async fn serve(
    listener: TcpListener,
    workload: Workload,
    config: Arc<rustls::ServerConfig>,
    ctx: Arc<Context>,
    drain: drain::Watcher,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let workload = Arc::new(workload);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let task = connection(tcp, peer, acceptor.clone(), workload.clone(), ctx.clone(), drain.clone());
                    tokio::spawn(task);
                }
                Err(e) => tracing::warn!(error = %e, workload = %workload.name, "inbound accept failed"),
            },
            () = drain.draining() => break,
        }
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    workload: Arc<Workload>,
    ctx: Arc<Context>,
    drain: drain::Watcher,
) {
    let tuning = ctx.tuning;
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(tuning.handshake_timeout, acceptor.accept(tcp)).await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return refuse_connection(&ctx, peer, &workload, Refusal::Handshake(HandshakeFailure::classify(&e)), &e);
        }
        Err(_) => {
            let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
            return refuse_connection(&ctx, peer, &workload, Refusal::Handshake(HandshakeFailure::Other), &e);
        }
    };
    let identity = tls::peer_identity(tls.get_ref().1).unwrap_or_default();
    // A client that finished TLS but never sends the HTTP/2 preface is dropped.
    let mut h2 = match tokio::time::timeout(tuning.h2_handshake_timeout, http2::server_handshake(tls, &tuning)).await {
        Ok(Ok(h2)) => h2,
        Ok(Err(e)) => return refuse_connection(&ctx, peer, &workload, Refusal::Http2Handshake, &e),
        Err(_) => return refuse_connection(&ctx, peer, &workload, Refusal::Http2Handshake, &"preface timed out"),
    };
    ctx.metrics.inbound_connections.inc();
    let identity: Arc<str> = identity.into();
    let keepalive = http2::keepalive(h2.ping_pong(), tuning);
    tokio::pin!(keepalive);
    let streams = Arc::new(OpenStreams::default());
    let mut draining = false;
    let mut closing = false;
    loop {
        // Only a connection without open streams can be idle: a tunnel is never cut.
        let idle_deadline = streams.idle_since().map(|since| since + tuning.idle_connection_timeout);
        let wake = idle_deadline.unwrap_or_else(|| Instant::now() + tuning.idle_connection_timeout);
        tokio::select! {
            accepted = h2.accept() => match accepted {
                Some(Ok(request)) => {
                    let stream = Stream {
                        peer,
                        identity: identity.clone(),
                        workload: workload.clone(),
                        ctx: ctx.clone(),
                        _open: streams.open(),
                    };
                    tokio::spawn(stream.serve(request, drain.clone()));
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "inbound HBONE connection failed");
                    break;
                }
                None => break,
            },
            () = &mut keepalive => {
                h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                break;
            }
            () = tokio::time::sleep_until(wake.into()), if !closing => {
                if idle_deadline.is_some_and(|deadline| deadline <= Instant::now()) && streams.idle_since().is_some() {
                    tracing::debug!(%peer, "idle inbound HBONE connection closed");
                    ctx.metrics.refuse(Reporter::Destination, Refusal::IdleConnection);
                    // GOAWAY naming the last stream we took: a stream racing it is known unprocessed.
                    h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                    closing = true;
                }
            }
            // GOAWAY, then keep serving the open streams until the peer is done.
            () = drain.draining(), if !draining => {
                draining = true;
                h2.graceful_shutdown();
            }
            () = drain.forced() => break,
        }
    }
}

/// The streams open on one inbound connection, and since when there were none.
#[derive(Default)]
struct OpenStreams {
    count: AtomicUsize,
    idle_since: std::sync::Mutex<Option<Instant>>,
}

impl OpenStreams {
    fn open(self: &Arc<Self>) -> OpenStream {
        self.count.fetch_add(1, Ordering::AcqRel);
        OpenStream(self.clone())
    }

    /// When the connection last became idle; `None` while a stream is open.
    fn idle_since(&self) -> Option<Instant> {
        if self.count.load(Ordering::Acquire) > 0 {
            return None;
        }
        let Ok(mut since) = self.idle_since.lock() else { return Some(Instant::now()) };
        Some(*since.get_or_insert_with(Instant::now))
    }
}

/// One stream's share of [`OpenStreams`]; the connection may idle once all are dropped.
struct OpenStream(Arc<OpenStreams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut since) = self.0.idle_since.lock()
        {
            *since = Some(Instant::now());
        }
    }
}

fn refuse_connection(
    ctx: &Context,
    peer: SocketAddr,
    workload: &Workload,
    refusal: Refusal,
    error: &dyn std::fmt::Display,
) {
    ctx.metrics.refuse(Reporter::Destination, refusal);
    tracing::info!(
        direction = "inbound", src.addr = %peer, dst.workload = %workload.name,
        reason = refusal.as_str(), error = %error, "connection refused"
    );
}

/// One CONNECT stream and what it needs to know about its connection.
struct Stream {
    peer: SocketAddr,
    identity: Arc<str>,
    workload: Arc<Workload>,
    ctx: Arc<Context>,
    /// Keeps the connection from counting as idle while this stream lives.
    _open: OpenStream,
}

impl Stream {
    async fn serve(self, (request, mut respond): (Request<RecvStream>, SendResponse<Bytes>), drain: drain::Watcher) {
        let (parts, body) = request.into_parts();
        let mesh = &self.ctx.mesh;
        let authority = parts.uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let target = match resolve(mesh, &self.workload, &parts.method, parts.uri.authority(), &parts.headers) {
            Ok(target) => target,
            Err(refusal) => {
                self.refuse(&mut respond, refusal, &authority, &parts.method);
                return;
            }
        };
        let (source, check) = source_peer(&parts.headers, &self.identity, &self.ctx.limits);
        if check == IdentityCheck::Contradicted {
            self.ctx.metrics.identity_mismatch(Reporter::Destination, Reporter::Source);
            tracing::warn!(
                direction = "inbound", src.addr = %self.peer, src.identity = %self.identity,
                "request baggage claims a namespace its identity contradicts; the identity wins"
            );
        }
        let destination = mesh.peer_of(&self.workload);
        let labels = TrafficLabels::new(Reporter::Destination, &source, &destination, target.service);
        let record = self.ctx.metrics.open(labels);

        let result = tokio::select! {
            result = self.connect_and_splice(respond, body, &target, &destination, &record) => result,
            () = drain.forced() => Err(InboundError::Drained),
        };
        let (flags, status, failed, error) = match result {
            Ok(ending) => {
                let failed = matches!(ending, Ending::Failed(_));
                let flags = if failed { ResponseFlags::ConnectionFailure } else { ResponseFlags::None };
                (flags, 200, failed, ending.error().map(ToString::to_string))
            }
            Err(e @ InboundError::App(..)) => (Refusal::AppUnreachable.flags(), 503, true, Some(e.to_string())),
            Err(e) => (ResponseFlags::None, 200, true, Some(e.to_string())),
        };
        let moved = record.moved();
        let duration_ms = record.started().elapsed().as_millis() as u64;
        record.close(flags);
        // ztunnel's access log: info for a clean end, error for a failed one. Inbound,
        // "sent" is toward the client (server → client), "recv" from it.
        macro_rules! complete {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    direction = "inbound",
                    src.addr = %self.peer,
                    src.identity = %self.identity,
                    src.workload = %source.workload_name,
                    dst.workload = %self.workload.name,
                    dst.app = %target.app,
                    authority = %authority,
                    x_forwarded_network = ?parts.headers.get("x-forwarded-network"),
                    traceparent = ?parts.headers.get("traceparent"),
                    status,
                    response_flags = flags.as_str(),
                    bytes_sent = moved.server_to_client,
                    bytes_recv = moved.client_to_server,
                    duration_ms,
                    error,
                    "connection complete"
                )
            };
        }
        if failed {
            complete!(tracing::Level::ERROR);
        } else {
            complete!(tracing::Level::INFO);
        }
    }

    async fn connect_and_splice(
        &self,
        mut respond: SendResponse<Bytes>,
        body: RecvStream,
        target: &Target<'_>,
        destination: &Peer,
        record: &ConnectionRecord,
    ) -> Result<Ending, InboundError> {
        let tuning = &self.ctx.tuning;
        let app = match connect(target.app, tuning).await {
            Ok(app) => app,
            Err(e) => {
                self.ctx.metrics.refuse(Reporter::Destination, Refusal::AppUnreachable);
                let _ = respond.send_response(status_only(StatusCode::SERVICE_UNAVAILABLE)?, true);
                return Err(InboundError::App(target.app, e));
            }
        };
        let ok = Response::builder()
            .status(StatusCode::OK)
            .header("baggage", baggage::encode_ztunnel(destination))
            .body(())?;
        let send = respond.send_response(ok, false)?;
        let (app_read, app_write) = app.into_split();
        let app_side = (BufReader::with_capacity(tuning.splice_buffer, app_read), app_write);
        let tunnel_side = tunnel::h2_stream(send, body, tuning.splice_buffer);
        // The tunnel is the client's side: what it carries to the app is client → server.
        Ok(Ending::of(tunnel::splice(tunnel_side, app_side, record).await))
    }

    fn refuse(&self, respond: &mut SendResponse<Bytes>, refusal: Refusal, authority: &str, method: &Method) {
        self.ctx.metrics.refuse(Reporter::Destination, refusal);
        // ztunnel: 503 when the service is not found here, 400 for any other bad request.
        let status = match refusal {
            Refusal::UnknownService => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        // Error responses never carry baggage.
        if let Ok(response) = status_only(status) {
            let _ = respond.send_response(response, true);
        }
        tracing::info!(
            direction = "inbound", src.addr = %self.peer, src.identity = %self.identity,
            dst.workload = %self.workload.name, %method, authority = %authority,
            status = status.as_u16(), reason = refusal.as_str(), "connection refused"
        );
    }
}

fn status_only(status: StatusCode) -> Result<Response<()>, http::Error> {
    Response::builder().status(status).body(())
}

async fn connect(app: SocketAddr, tuning: &crate::tuning::Tuning) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(tuning.connect_timeout, TcpStream::connect(app))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn mesh() -> Mesh {
        Mesh::parse(include_str!("../../mesh/mesh.example.json")).unwrap()
    }

    fn check(authority: &str, method: Method) -> Result<SocketAddr, Refusal> {
        let mesh = mesh();
        let workload = mesh.workload("ratings-v1-a").unwrap();
        let authority = authority.parse::<http::uri::Authority>().ok();
        resolve(&mesh, workload, &method, authority.as_ref(), &HeaderMap::new()).map(|t| t.app)
    }

    #[test]
    fn a_connect_to_the_pod_ip_goes_to_that_port() {
        assert_eq!(check("127.10.2.1:8080", Method::CONNECT), Ok("127.10.2.1:8080".parse().unwrap()));
    }

    #[test]
    fn another_ip_or_a_vip_is_a_bad_request() {
        assert_eq!(check("127.10.2.2:8080", Method::CONNECT), Err(Refusal::BadAuthority));
        assert_eq!(check("10.96.0.20:9080", Method::CONNECT), Err(Refusal::BadAuthority));
        assert_eq!(check("no-port", Method::CONNECT), Err(Refusal::BadAuthority));
    }

    #[test]
    fn a_service_hostname_maps_the_service_port_to_the_target_port() {
        assert_eq!(
            check("ratings.bookinfo.svc.cluster.local:9080", Method::CONNECT),
            Ok("127.10.2.1:8080".parse().unwrap())
        );
        assert_eq!(check("ratings.bookinfo.svc.cluster.local:1", Method::CONNECT), Err(Refusal::UnknownService));
        assert_eq!(check("reviews.bookinfo.svc.cluster.local:9080", Method::CONNECT), Err(Refusal::UnknownService));
    }

    #[test]
    fn only_connect_is_accepted() {
        assert_eq!(check("127.10.2.1:8080", Method::GET), Err(Refusal::NotConnect));
    }

    #[test]
    fn the_forwarded_host_is_found_among_parameters() {
        assert_eq!(forwarded_host(br#"for="127.0.0.1:5000";host=a.b"#), Some(&b"a.b"[..]));
        assert_eq!(forwarded_host(br#"for="x"; host="a.b""#), Some(&b"a.b"[..]));
        assert_eq!(forwarded_host(b"for=\"\xff\""), None);
    }

    #[test]
    fn the_spiffe_namespace_fills_a_source_without_baggage() {
        let (peer, check) =
            source_peer(&HeaderMap::new(), "spiffe://td/ns/shop/sa/cart", &waypoint_core::Limits::default());
        assert_eq!((peer.namespace.as_str(), peer.workload_name.as_str()), ("shop", ""));
        assert_eq!(check, IdentityCheck::Filled);
    }

    #[test]
    fn the_spiffe_namespace_wins_over_a_forged_baggage_namespace() {
        let mut headers = HeaderMap::new();
        headers.insert("baggage", "k8s.namespace.name=kube-system,k8s.deployment.name=cart".parse().unwrap());
        let (peer, check) = source_peer(&headers, "spiffe://td/ns/shop/sa/cart", &waypoint_core::Limits::default());
        assert_eq!((peer.namespace.as_str(), peer.workload_name.as_str()), ("shop", "cart"));
        assert_eq!(check, IdentityCheck::Contradicted);
    }
}
