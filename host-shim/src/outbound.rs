//! The outbound side (ztunnel's client): a plain TCP listener per configured
//! destination stands in for iptables capture. Each app connection becomes one
//! CONNECT stream on a pooled connection to the next hop — the destination's
//! waypoint, the pod's ztunnel, or (double HBONE) the east-west gateway of the
//! destination's network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use http::{Method, Request, StatusCode};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use waypoint_core::{Peer, baggage};

use crate::double_hbone::{self, DoubleHboneError};
use crate::drain;
use crate::metrics::{Moved, Refusal, Reporter, ResponseFlags, TrafficLabels};
use crate::pool::{PoolError, PoolKey, Stream};
use crate::shim::Context;
use crate::tls::{self, IdentityCheck};
use crate::tunnel::{self, Ending};
use mesh::{Destination, Mesh, Service, Workload};

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("no route: {0}")]
    NoRoute(&'static str),
    #[error("building the CONNECT request: {0}")]
    Request(#[from] http::Error),
    #[error("{0}")]
    Pool(#[from] PoolError),
    #[error("{0}")]
    DoubleHbone(#[from] DoubleHboneError),
    #[error("CONNECT answered {0}")]
    Status(StatusCode),
    #[error("closed at the drain deadline")]
    Drained,
}

impl OutboundError {
    fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::NoRoute(_) | Self::Request(_) => Some(Refusal::NoRoute),
            Self::Pool(e) => Some(e.refusal()),
            Self::DoubleHbone(e) => Some(e.refusal()),
            Self::Status(_) => Some(Refusal::UpstreamStatus),
            Self::Drained => None,
        }
    }
}

/// One HBONE hop: where to connect, what to ask for, whom to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub address: SocketAddr,
    pub authority: String,
    pub expected: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// One CONNECT to a waypoint or to the destination pod's ztunnel.
    Direct(Hop),
    /// Double HBONE: an outer CONNECT to the gateway, an inner one to the pod's ztunnel.
    ViaGateway { gateway: Hop, inner: Hop },
}

#[derive(Debug)]
pub struct Plan<'m> {
    pub route: Route,
    pub service: Option<&'m Service>,
    /// What the configuration says about the destination: labels of a failed attempt.
    pub expected_peer: Peer,
}

/// Picks the next hop as ztunnel would: a service's waypoint first, then an
/// endpoint in the client's own network (round robin), then the east-west
/// gateway of the network holding the endpoints.
pub fn plan<'m>(
    mesh: &'m Mesh,
    source: &Workload,
    destination: &Destination,
    round_robin: &AtomicUsize,
) -> Result<Plan<'m>, OutboundError> {
    let hbone = |w: &Workload| SocketAddr::new(w.address, mesh.hbone_port);
    match destination {
        Destination::Workload(address) => {
            let target = mesh.workload_at(address.ip()).ok_or(OutboundError::NoRoute("unknown workload"))?;
            if target.network != source.network {
                return Err(OutboundError::NoRoute("workloads of another network are reached through services only"));
            }
            let mut on_port = mesh.services_of(target).filter(|s| s.target_port == address.port());
            let service = match (on_port.next(), on_port.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            };
            let hop = Hop {
                address: hbone(target),
                authority: address.to_string(),
                expected: vec![mesh.identity_of(target)],
            };
            Ok(Plan { route: Route::Direct(hop), service, expected_peer: mesh.peer_of(target) })
        }
        Destination::Service { hostname, port } => {
            let service = mesh.service(hostname, *port).ok_or(OutboundError::NoRoute("unknown service"))?;
            let by_name = format!("{hostname}:{port}");
            if let Some(waypoint) = &service.waypoint {
                let authority = service.vip.map_or(by_name, |vip| SocketAddr::new(vip, *port).to_string());
                let hop = Hop { address: waypoint.address, authority, expected: vec![waypoint.identity.clone()] };
                let expected_peer = Peer { principal: waypoint.identity.clone(), ..Peer::default() };
                return Ok(Plan { route: Route::Direct(hop), service: Some(service), expected_peer });
            }
            let local: Vec<&Workload> = mesh.endpoints(service).filter(|w| w.network == source.network).collect();
            if !local.is_empty() {
                let pick = round_robin.fetch_add(1, Ordering::Relaxed) % local.len();
                let endpoint = local.get(pick).ok_or(OutboundError::NoRoute("no endpoint"))?;
                let hop = Hop {
                    address: hbone(endpoint),
                    authority: SocketAddr::new(endpoint.address, service.target_port).to_string(),
                    expected: vec![mesh.identity_of(endpoint)],
                };
                return Ok(Plan {
                    route: Route::Direct(hop),
                    service: Some(service),
                    expected_peer: mesh.peer_of(endpoint),
                });
            }
            let remote = mesh.endpoints(service).next().ok_or(OutboundError::NoRoute("service has no endpoints"))?;
            let gateway = mesh.gateway_of(&remote.network).ok_or(OutboundError::NoRoute("no east-west gateway"))?;
            let mut identities: Vec<String> =
                mesh.endpoints(service).filter(|w| w.network == remote.network).map(|w| mesh.identity_of(w)).collect();
            identities.dedup();
            let route = Route::ViaGateway {
                gateway: Hop {
                    address: gateway.address,
                    authority: by_name.clone(),
                    expected: vec![gateway.identity.clone()],
                },
                inner: Hop { address: gateway.address, authority: by_name, expected: identities },
            };
            Ok(Plan { route, service: Some(service), expected_peer: Peer::default() })
        }
    }
}

/// The headers of ztunnel's CONNECT, in its order.
#[derive(Debug, Clone)]
pub struct ConnectHeaders {
    /// `None` for a sidecar, which sends no baggage.
    pub baggage: Option<String>,
    pub forwarded: String,
    pub traceparent: String,
}

impl ConnectHeaders {
    pub fn new(source: &Peer, sidecar: bool, client: SocketAddr, service: Option<&Service>) -> Self {
        let forwarded = match service {
            Some(s) => format!("for=\"{client}\";host={}", s.hostname),
            None => format!("for=\"{client}\""),
        };
        let baggage = (!sidecar).then(|| baggage::encode_ztunnel(source));
        Self { baggage, forwarded, traceparent: traceparent() }
    }

    /// The CONNECT; `origin_network` only on the inner CONNECT of double HBONE.
    pub fn request(&self, authority: &str, origin_network: Option<&str>) -> Result<Request<()>, http::Error> {
        let mut builder = Request::builder().method(Method::CONNECT).uri(authority);
        if let Some(baggage) = &self.baggage {
            builder = builder.header("baggage", baggage);
        }
        builder = builder.header("forwarded", &self.forwarded).header("traceparent", &self.traceparent);
        if let Some(network) = origin_network {
            builder = builder.header("x-forwarded-network", network);
        }
        builder.body(())
    }
}

/// A W3C trace context with random ids and no sampling flag, as ztunnel sends.
fn traceparent() -> String {
    let mut bytes = [0u8; 24];
    // The system RNG does not fail on Linux; zero ids would still be well-formed.
    let _ = SystemRandom::new().fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (trace, span) = hex.split_at(32);
    format!("00-{trace}-{span}-00")
}

/// Accepts app connections for one destination until the drain starts.
pub(crate) async fn serve(
    listener: TcpListener,
    source: Workload,
    destination: Destination,
    ctx: Arc<Context>,
    drain: drain::Watcher,
) {
    let listener_state = Arc::new(Listener { source, destination, round_robin: AtomicUsize::new(0), ctx });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((app, client)) => {
                    tokio::spawn(listener_state.clone().handle(app, client, drain.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "outbound accept failed"),
            },
            () = drain.draining() => break,
        }
    }
}

struct Listener {
    source: Workload,
    destination: Destination,
    round_robin: AtomicUsize,
    ctx: Arc<Context>,
}

/// How one app connection went, for its completion log line.
struct Outcome {
    destination: Peer,
    moved: Moved,
    flags: ResponseFlags,
    /// The tunnel failed (or never opened): ztunnel logs these at error level.
    failed: bool,
    error: Option<String>,
}

impl Listener {
    async fn handle(self: Arc<Self>, app: TcpStream, client: SocketAddr, drain: drain::Watcher) {
        let started = Instant::now();
        let _ = app.set_nodelay(true);
        let mesh = &self.ctx.mesh;
        let source = mesh.peer_of(&self.source);
        let planned = plan(mesh, &self.source, &self.destination, &self.round_robin);
        let service = planned.as_ref().ok().and_then(|p| p.service);
        let route = planned.as_ref().ok().map(|p| p.route.clone());
        let headers = ConnectHeaders::new(&source, self.source.sidecar, client, service);
        let failure = |e: OutboundError, expected: &Peer, service| Outcome {
            destination: self.count_failure(&e, &source, expected, service),
            moved: Moved::default(),
            flags: e.refusal().map_or(ResponseFlags::None, Refusal::flags),
            failed: true,
            error: Some(e.to_string()),
        };
        let outcome = match planned {
            Ok(plan) => {
                let established = tokio::select! {
                    established = self.establish(&plan.route, &headers) => established,
                    () = drain.forced() => Err(OutboundError::Drained),
                };
                match established {
                    Ok(tunnel) => self.carry(app, tunnel, client, &source, service, &drain).await,
                    Err(e) => failure(e, &plan.expected_peer, service),
                }
            }
            Err(e) => failure(e, &Peer::default(), None),
        };
        // ztunnel's access log: info for a clean end, error for a failed one. Outbound,
        // "sent" is toward the server (client → server), "recv" from it.
        macro_rules! complete {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    direction = "outbound",
                    src.addr = %client,
                    src.workload = %self.source.name,
                    dst.service = service.map(|s| s.hostname.as_str()),
                    dst.workload = %outcome.destination.workload_name,
                    dst.identity = %outcome.destination.principal,
                    route = ?route,
                    traceparent = %headers.traceparent,
                    response_flags = outcome.flags.as_str(),
                    bytes_sent = outcome.moved.client_to_server,
                    bytes_recv = outcome.moved.server_to_client,
                    duration_ms = started.elapsed().as_millis() as u64,
                    error = outcome.error.as_deref(),
                    "connection complete"
                )
            };
        }
        if outcome.failed {
            complete!(tracing::Level::ERROR);
        } else {
            complete!(tracing::Level::INFO);
        }
    }

    /// Opens the tunnel; anything but a 200 is a failure.
    async fn establish(&self, route: &Route, headers: &ConnectHeaders) -> Result<Stream, OutboundError> {
        let tunnel = self.open(route, headers).await?;
        match tunnel.response.status() {
            StatusCode::OK => Ok(tunnel),
            status => Err(OutboundError::Status(status)),
        }
    }

    /// Splices the app connection with an accepted tunnel, labelled by the response baggage.
    async fn carry(
        &self,
        app: TcpStream,
        tunnel: Stream,
        client: SocketAddr,
        source: &Peer,
        service: Option<&Service>,
        drain: &drain::Watcher,
    ) -> Outcome {
        let (destination, check) = response_peer(&tunnel, &self.ctx.limits);
        if check == IdentityCheck::Contradicted {
            self.ctx.metrics.identity_mismatch(Reporter::Source, Reporter::Destination);
            tracing::warn!(
                direction = "outbound", src.addr = %client, dst.identity = %destination.principal,
                "response baggage claims a namespace its identity contradicts; the identity wins"
            );
        }
        let record = self.ctx.metrics.open(TrafficLabels::new(Reporter::Source, source, &destination, service));
        let splice_buffer = self.ctx.tuning.splice_buffer;
        // The pool slot stays taken until the splice ends.
        let Stream { response, send, slot: _slot, .. } = tunnel;
        let (reader, writer) = app.into_split();
        let app_side = (BufReader::with_capacity(splice_buffer, reader), writer);
        let tunnel_side = tunnel::h2_stream(send, response.into_body(), splice_buffer);
        // The app is the client's side: what it sends is client → server.
        let (flags, failed, error) = tokio::select! {
            result = tunnel::splice(app_side, tunnel_side, &record) => {
                let ending = Ending::of(result);
                let failed = matches!(ending, Ending::Failed(_));
                let flags = if failed { ResponseFlags::ConnectionFailure } else { ResponseFlags::None };
                (flags, failed, ending.error().map(ToString::to_string))
            }
            () = drain.forced() => (ResponseFlags::None, true, Some(OutboundError::Drained.to_string())),
        };
        let moved = record.moved();
        record.close(flags);
        Outcome { destination, moved, flags, failed, error }
    }

    /// Counts a refused or failed attempt, labelled with what the mesh file expected.
    fn count_failure(&self, e: &OutboundError, source: &Peer, expected: &Peer, service: Option<&Service>) -> Peer {
        if let Some(refusal) = e.refusal() {
            self.ctx.metrics.refuse(Reporter::Source, refusal);
            let labels = TrafficLabels::new(Reporter::Source, source, expected, service);
            self.ctx.metrics.open(labels).close(refusal.flags());
        }
        expected.clone()
    }

    async fn open(&self, route: &Route, headers: &ConnectHeaders) -> Result<Stream, OutboundError> {
        let key = |hop: &Hop| PoolKey {
            source: self.ctx.mesh.identity_of(&self.source),
            source_address: self.source.address,
            destination: hop.address,
            expected: hop.expected.clone(),
        };
        match route {
            Route::Direct(hop) => Ok(self.ctx.pool.send(&key(hop), headers.request(&hop.authority, None)?).await?),
            Route::ViaGateway { gateway, inner } => {
                let outer = headers.request(&gateway.authority, None)?;
                let inner_request = headers.request(&inner.authority, Some(&self.source.network))?;
                Ok(double_hbone::open(&self.ctx, &key(gateway), outer, &inner.expected, inner_request).await?)
            }
        }
    }
}

/// The destination as its response `baggage` and verified TLS identity describe
/// it; the identity's namespace wins over the one baggage claims.
fn response_peer(tunnel: &Stream, limits: &waypoint_core::Limits) -> (Peer, IdentityCheck) {
    let raw = tunnel.response.headers().get("baggage").map(|v| v.as_bytes()).unwrap_or_default();
    let mut peer = baggage::decode(raw, limits).map(|d| d.peer).unwrap_or_default();
    let check = tls::pin_to_identity(&mut peer, &tunnel.peer_identity);
    (peer, check)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn mesh() -> Mesh {
        Mesh::parse(include_str!("../../mesh/mesh.example.json")).unwrap()
    }

    fn service(host: &str) -> Destination {
        Destination::Service { hostname: host.to_owned(), port: 9080 }
    }

    #[test]
    fn a_service_with_a_waypoint_is_sent_to_the_waypoint_by_vip() {
        let mesh = mesh();
        let curl = mesh.workload("curl").unwrap();
        let plan = plan(&mesh, curl, &service("reviews.bookinfo.svc.cluster.local"), &AtomicUsize::new(0)).unwrap();
        let Route::Direct(hop) = plan.route else { panic!("expected a direct route") };
        assert_eq!(hop.address, "127.10.1.100:15008".parse().unwrap());
        assert_eq!(hop.authority, "10.96.0.20:9080");
        assert_eq!(hop.expected, ["spiffe://cluster.local/ns/bookinfo/sa/waypoint"]);
    }

    #[test]
    fn a_service_in_another_network_goes_through_its_gateway_by_hostname() {
        let mesh = mesh();
        let curl = mesh.workload("curl").unwrap();
        let plan = plan(&mesh, curl, &service("ratings.bookinfo.svc.cluster.local"), &AtomicUsize::new(0)).unwrap();
        let Route::ViaGateway { gateway, inner } = plan.route else { panic!("expected double HBONE") };
        assert_eq!(gateway.address, "127.10.2.100:15008".parse().unwrap());
        assert_eq!(gateway.authority, "ratings.bookinfo.svc.cluster.local:9080");
        assert_eq!(gateway.expected, ["spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway"]);
        assert_eq!(inner.authority, gateway.authority);
        assert_eq!(inner.expected, ["spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings"]);
    }

    #[test]
    fn headers_are_sent_in_ztunnel_order() {
        let mesh = mesh();
        let curl = mesh.peer_of(mesh.workload("curl").unwrap());
        let svc = mesh.service("ratings.bookinfo.svc.cluster.local", 9080);
        let headers = ConnectHeaders::new(&curl, false, "127.10.1.1:40000".parse().unwrap(), svc);
        let request = headers.request("ratings.bookinfo.svc.cluster.local:9080", Some("network-a")).unwrap();
        let names: Vec<&str> = request.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["baggage", "forwarded", "traceparent", "x-forwarded-network"]);
        assert_eq!(
            headers.baggage.as_deref(),
            Some(
                "k8s.cluster.name=cluster-a,k8s.namespace.name=default,k8s.deployment.name=curl,\
                 service.name=curl,service.version=v1,cloud.region=region-a,cloud.availability_zone=zone-a1"
            )
        );
        assert_eq!(headers.forwarded, r#"for="127.10.1.1:40000";host=ratings.bookinfo.svc.cluster.local"#);
        let parts: Vec<&str> = headers.traceparent.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 32, 16, 2]);
    }

    #[test]
    fn a_sidecar_sends_no_baggage() {
        let mesh = mesh();
        let curl = mesh.peer_of(mesh.workload("curl").unwrap());
        let headers = ConnectHeaders::new(&curl, true, "127.10.1.1:40000".parse().unwrap(), None);
        let request = headers.request("10.96.0.20:9080", None).unwrap();
        let names: Vec<&str> = request.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["forwarded", "traceparent"]);
    }
}
