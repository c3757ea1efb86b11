//! The outbound side (ztunnel's client): a plain TCP listener per configured
//! destination stands in for iptables capture. Each app connection becomes one
//! CONNECT stream on a pooled connection to the next hop — the destination's
//! waypoint, the pod's ztunnel, or (double HBONE) the east-west gateway of the
//! destination's network, in which a second, end-to-end HBONE connection to the
//! pod's ztunnel carries the inner CONNECT (double HBONE).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use mesh::{Destination, Mesh, Service, Workload};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use waypoint_core::{Peer, baggage};

use super::pool::{self, PoolKey, Slot};
use super::tunnel::{self, Ending};
use super::{Context, Error, HboneStream, http2};
use crate::drain;
use crate::identity::{Authority, Identity};
use crate::metrics::{Completion, Outcome, Reporter, ResponseFlags, TrafficLabels};
use crate::tls::{self, IdentityCheck};
use crate::tuning::Tuning;

/// One HBONE hop: where to connect, what to ask for, whom to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub address: SocketAddr,
    pub authority: Authority,
    pub expected: Vec<Identity>,
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
) -> Result<Plan<'m>, Error> {
    let hbone = |w: &Workload| SocketAddr::new(w.address, mesh.hbone_port);
    match destination {
        Destination::Workload(address) => {
            let target = mesh.workload_at(address.ip()).ok_or(Error::NoRoute("unknown workload"))?;
            if target.network != source.network {
                return Err(Error::NoRoute("workloads of another network are reached through services only"));
            }
            let mut on_port = mesh.services_of(target).filter(|s| s.target_port == address.port());
            let service = match (on_port.next(), on_port.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            };
            let hop = Hop {
                address: hbone(target),
                authority: Authority::Address(*address),
                expected: Identity::all([mesh.identity_of(target)]),
            };
            Ok(Plan { route: Route::Direct(hop), service, expected_peer: mesh.peer_of(target) })
        }
        Destination::Service { hostname, port } => {
            let service = mesh.service(hostname, *port).ok_or(Error::NoRoute("unknown service"))?;
            let by_name = Authority::Service { hostname: hostname.clone(), port: *port };
            if let Some(waypoint) = &service.waypoint {
                let authority = service.vip.map_or(by_name, |vip| Authority::Address(SocketAddr::new(vip, *port)));
                let expected = Identity::all([&waypoint.identity]);
                let hop = Hop { address: waypoint.address, authority, expected };
                let expected_peer = Peer { principal: waypoint.identity.clone(), ..Peer::default() };
                return Ok(Plan { route: Route::Direct(hop), service: Some(service), expected_peer });
            }
            let local: Vec<&Workload> = mesh.endpoints(service).filter(|w| w.network == source.network).collect();
            if !local.is_empty() {
                let pick = round_robin.fetch_add(1, Ordering::Relaxed) % local.len();
                let endpoint = local.get(pick).ok_or(Error::NoRoute("no endpoint"))?;
                let hop = Hop {
                    address: hbone(endpoint),
                    authority: Authority::Address(SocketAddr::new(endpoint.address, service.target_port)),
                    expected: Identity::all([mesh.identity_of(endpoint)]),
                };
                return Ok(Plan {
                    route: Route::Direct(hop),
                    service: Some(service),
                    expected_peer: mesh.peer_of(endpoint),
                });
            }
            let remote = mesh.endpoints(service).next().ok_or(Error::NoRoute("service has no endpoints"))?;
            let gateway = mesh.gateway_of(&remote.network).ok_or(Error::NoRoute("no east-west gateway"))?;
            let identities: BTreeSet<Identity> = Identity::all(
                mesh.endpoints(service).filter(|w| w.network == remote.network).map(|w| mesh.identity_of(w)),
            )
            .into_iter()
            .collect();
            let route = Route::ViaGateway {
                gateway: Hop {
                    address: gateway.address,
                    authority: by_name.clone(),
                    expected: Identity::all([&gateway.identity]),
                },
                inner: Hop { address: gateway.address, authority: by_name, expected: identities.into_iter().collect() },
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
    pub fn request(&self, authority: &Authority, origin_network: Option<&str>) -> Result<Request<()>, http::Error> {
        let mut builder = Request::builder().method(Method::CONNECT).uri(authority.to_string());
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
    // The mesh file was checked at load, so every workload's identity parses.
    let Some(source_identity) = Identity::parse(&ctx.mesh.identity_of(&source)) else {
        return tracing::error!(workload = %source.name, "no SPIFFE identity: outbound listener not served");
    };
    let round_robin = AtomicUsize::new(0);
    let listener_state = Arc::new(Listener { source, source_identity, destination, round_robin, ctx });
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
    /// Presented as our certificate on every connection to the next hop.
    source_identity: Identity,
    destination: Destination,
    round_robin: AtomicUsize,
    ctx: Arc<Context>,
}

impl Listener {
    async fn handle(self: Arc<Self>, app: TcpStream, client: SocketAddr, drain: drain::Watcher) {
        let accepted = Instant::now();
        let _ = app.set_nodelay(true);
        let mesh = &self.ctx.mesh;
        let source = mesh.peer_of(&self.source);
        let planned = plan(mesh, &self.source, &self.destination, &self.round_robin);
        let service = planned.as_ref().ok().and_then(|p| p.service);
        let headers = ConnectHeaders::new(&source, self.source.sidecar, client, service);
        let log = Completion {
            accepted: Some(accepted),
            src_addr: Some(client),
            src_workload: Some(self.source.name.clone()),
            dst_service: service.map(|s| s.hostname.clone()),
            route: Some(format!("{:?}", planned.as_ref().ok().map(|p| &p.route))),
            traceparent: Some(headers.traceparent.clone()),
            ..Completion::default()
        };
        let plan = match planned {
            Ok(plan) => plan,
            Err(e) => return self.count_failure(e, &source, &Peer::default(), None, log),
        };
        let established = tokio::select! {
            established = self.establish(&plan.route, &headers) => established,
            () = drain.forced() => Err(Error::Drained),
        };
        match established {
            Ok((response, tunnel)) => self.carry(app, &response, tunnel, client, &source, service, log, &drain).await,
            Err(e) => self.count_failure(e, &source, &plan.expected_peer, service, log),
        }
    }

    /// Opens the tunnel; anything but a 200 is a failure.
    async fn establish(
        &self,
        route: &Route,
        headers: &ConnectHeaders,
    ) -> Result<(http::response::Parts, HboneStream), Error> {
        let (response, tunnel) = self.open(route, headers).await?;
        match response.status {
            StatusCode::OK => Ok((response, tunnel)),
            status => Err(Error::Status(status)),
        }
    }

    /// Splices the app connection with an accepted tunnel, labelled by the response baggage.
    #[allow(clippy::too_many_arguments)]
    async fn carry(
        &self,
        app: TcpStream,
        response: &http::response::Parts,
        tunnel: HboneStream,
        client: SocketAddr,
        source: &Peer,
        service: Option<&Service>,
        mut log: Completion,
        drain: &drain::Watcher,
    ) {
        let (destination, check) = response_peer(response, tunnel.peer_identity(), &self.ctx.limits);
        if check == IdentityCheck::Contradicted {
            self.ctx.metrics.identity_mismatch(Reporter::Source, Reporter::Destination);
            tracing::warn!(
                direction = "outbound", src.addr = %client, dst.identity = %destination.principal,
                "response baggage claims a namespace its identity contradicts; the identity wins"
            );
        }
        log.dst_workload = Some(destination.workload_name.clone());
        log.dst_identity = Some(destination.principal.clone());
        let labels = TrafficLabels::new(Reporter::Source, source, &destination, service);
        let mut record = self.ctx.metrics.open(Reporter::Source, labels, log);
        let splice_buffer = self.ctx.tuning.splice_buffer;
        // The pool slot stays taken until the splice ends.
        let (tunnel_read, tunnel_write, _slot) = tunnel.into_split();
        let (reader, writer) = app.into_split();
        let app_side = (BufReader::with_capacity(splice_buffer, reader), writer);
        // The app is the client's side: what it sends is client → server.
        let outcome = tokio::select! {
            result = tunnel::splice(app_side, (tunnel_read, tunnel_write), &record) => {
                let ending = Ending::of(result);
                let failed = matches!(ending, Ending::Failed(_));
                let flags = if failed { ResponseFlags::ConnectionFailure } else { ResponseFlags::None };
                Outcome { flags, failed, error: ending.error().map(ToString::to_string) }
            }
            () = drain.forced() => Outcome { flags: ResponseFlags::None, failed: true, error: Some(Error::Drained.to_string()) },
        };
        record.finish(outcome);
    }

    /// Counts a refused or failed attempt, labelled with what the mesh file expected,
    /// and logs it as a failed connection.
    fn count_failure(&self, e: Error, source: &Peer, expected: &Peer, service: Option<&Service>, mut log: Completion) {
        let refusal = e.refusal();
        if let Some(refusal) = refusal {
            self.ctx.metrics.refuse(Reporter::Source, refusal);
        }
        log.dst_workload = Some(expected.workload_name.clone());
        log.dst_identity = Some(expected.principal.clone());
        let labels = TrafficLabels::new(Reporter::Source, source, expected, service);
        let mut record = self.ctx.metrics.open(Reporter::Source, labels, log);
        let flags = refusal.map_or(ResponseFlags::None, |r| r.flags());
        record.finish(Outcome { flags, failed: true, error: Some(e.to_string()) });
    }

    async fn open(
        &self,
        route: &Route,
        headers: &ConnectHeaders,
    ) -> Result<(http::response::Parts, HboneStream), Error> {
        let key = |hop: &Hop| PoolKey {
            source: self.source_identity.clone(),
            source_address: self.source.address,
            destination: hop.address,
            expected: hop.expected.clone(),
        };
        match route {
            Route::Direct(hop) => {
                let request = headers.request(&hop.authority, None).map_err(Error::Request)?;
                self.ctx.pool.send(&key(hop), request).await
            }
            Route::ViaGateway { gateway, inner } => {
                let outer = headers.request(&gateway.authority, None).map_err(Error::Request)?;
                let inner_request =
                    headers.request(&inner.authority, Some(&self.source.network)).map_err(Error::Request)?;
                double_hbone(&self.ctx, &key(gateway), outer, &inner.expected, inner_request).await
            }
        }
    }
}

/// Double HBONE: an outer CONNECT (pooled) to the east-west gateway of the
/// destination's network, and inside that stream a second, unpooled mTLS + HTTP/2
/// connection to the destination pod's ztunnel carrying the inner CONNECT. The
/// gateway sees only the outer headers and TLS records; the inner identity is
/// checked end to end. Returns the inner CONNECT's response (any status).
async fn double_hbone(
    ctx: &Context,
    gateway: &PoolKey,
    outer_request: Request<()>,
    inner_expected: &[Identity],
    inner_request: Request<()>,
) -> Result<(http::response::Parts, HboneStream), Error> {
    let tuning = &ctx.tuning;
    let (response, outer) = ctx.pool.send(gateway, outer_request).await.map_err(|e| Error::Outer(Box::new(e)))?;
    if response.status != StatusCode::OK {
        return Err(Error::GatewayStatus(response.status));
    }
    let config = ctx.credentials.client_config(gateway.source.as_str(), inner_expected)?;
    // The outer stream carries the inner TLS connection; its pool slot goes to the
    // task that drives the inner connection, and is freed when that ends.
    let (outer_read, outer_write, outer_slot) = outer.into_split();
    let transport = HboneStream::from_halves(outer_read, outer_write);
    let tls = pool::tls_connect(config, transport, tuning).await.map_err(Error::InnerHandshake)?;
    let peer_identity = tls::peer_identity(tls.get_ref().1);
    let (sender, connection) = http2::client_handshake(tls, tuning).await.map_err(Error::InnerHttp2)?;
    tokio::spawn(drive_inner(connection, outer_slot, *tuning));
    let (response, send) = sender
        .ready()
        .await
        .map_err(Error::InnerHttp2)?
        .send_request(inner_request, false)
        .map_err(Error::InnerHttp2)?;
    let (response, recv) = response.await.map_err(Error::InnerHttp2)?.into_parts();
    Ok((response, HboneStream::new(send, recv, tuning.splice_buffer).with_peer(peer_identity, None)))
}

/// Polls the inner connection of double HBONE until its one stream is done; the
/// outer stream's pool slot is held until then.
async fn drive_inner<T>(mut connection: h2::client::Connection<T, Bytes>, outer: Option<Slot>, tuning: Tuning)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let keepalive = http2::keepalive(connection.ping_pong(), tuning);
    tokio::select! {
        result = &mut connection => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "inner HBONE connection failed");
            }
        }
        () = keepalive => tracing::debug!("inner HBONE keepalive failed"),
    }
    drop(outer);
}

/// The destination as its response `baggage` and verified TLS identity describe
/// it; the identity's namespace wins over the one baggage claims.
fn response_peer(
    response: &http::response::Parts,
    identity: Option<&Identity>,
    limits: &waypoint_core::Limits,
) -> (Peer, IdentityCheck) {
    let raw = response.headers.get("baggage").map(|v| v.as_bytes()).unwrap_or_default();
    let mut peer = baggage::decode(raw, limits).map(|d| d.peer).unwrap_or_default();
    let check = tls::pin_to_identity(&mut peer, identity);
    (peer, check)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn mesh() -> Mesh {
        Mesh::parse(include_str!("../../../mesh/mesh.example.json")).unwrap()
    }

    fn strings(identities: &[Identity]) -> Vec<&str> {
        identities.iter().map(Identity::as_str).collect()
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
        assert_eq!(hop.authority.to_string(), "10.96.0.20:9080");
        assert_eq!(strings(&hop.expected), ["spiffe://cluster.local/ns/bookinfo/sa/waypoint"]);
    }

    #[test]
    fn a_service_in_another_network_goes_through_its_gateway_by_hostname() {
        let mesh = mesh();
        let curl = mesh.workload("curl").unwrap();
        let plan = plan(&mesh, curl, &service("ratings.bookinfo.svc.cluster.local"), &AtomicUsize::new(0)).unwrap();
        let Route::ViaGateway { gateway, inner } = plan.route else { panic!("expected double HBONE") };
        assert_eq!(gateway.address, "127.10.2.100:15008".parse().unwrap());
        assert_eq!(gateway.authority.to_string(), "ratings.bookinfo.svc.cluster.local:9080");
        assert_eq!(strings(&gateway.expected), ["spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway"]);
        assert_eq!(inner.authority, gateway.authority);
        assert_eq!(strings(&inner.expected), ["spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings"]);
    }

    #[test]
    fn headers_are_sent_in_ztunnel_order() {
        let mesh = mesh();
        let curl = mesh.peer_of(mesh.workload("curl").unwrap());
        let svc = mesh.service("ratings.bookinfo.svc.cluster.local", 9080);
        let headers = ConnectHeaders::new(&curl, false, "127.10.1.1:40000".parse().unwrap(), svc);
        let ratings = Authority::Service { hostname: "ratings.bookinfo.svc.cluster.local".into(), port: 9080 };
        let request = headers.request(&ratings, Some("network-a")).unwrap();
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
        let request = headers.request(&Authority::Address("10.96.0.20:9080".parse().unwrap()), None).unwrap();
        let names: Vec<&str> = request.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["forwarded", "traceparent"]);
    }
}
