//! The three roles of the waypoint module, written against [`crate::host`]:
//!
//! - [`Downstream`] on connect_terminate: consumes the client's peer metadata
//!   from the HBONE CONNECT and answers the CONNECT 200 with our own `baggage`.
//! - [`Upstream`] on the tunnel cluster: sends our `baggage` on the upstream
//!   CONNECT and binds the destination's `baggage` from the CONNECT 200 to the tunnel.
//! - [`Stats`] on main_internal: at stream end, emits the Istio metrics with
//!   both peers' labels.
//!
//! Host calls are the cost that matters: the stats role reads each request's facts
//! from the two header maps it reads anyway ([`crate::contract`] names the channels);
//! only what is known at stream end (flags, duration, sizes, gRPC messages) is read
//! as properties.

use crate::baggage;
use crate::config::PluginConfig;
use crate::contract::{
    DOWNSTREAM_BAGGAGE, DOWNSTREAM_LEGACY, DOWNSTREAM_SAN, ENDPOINT_HEADER, SERVICE_HEADER, UPSTREAM_CONNECTION_HEADER,
};
use crate::endpoint;
use crate::host::{HeaderMap, Host, find_header};
use crate::labels::{self, RoutedService};
use crate::legacy;
use crate::peer::{Decoded, Peer};
use crate::response_flags;
use crate::value;
use crate::worker::{ErrorReason, Observation, TunnelState, Worker};

const BAGGAGE: &str = "baggage";

/// Our own identity as the `baggage` we propagate, when configured and enabled.
fn own_baggage(config: &PluginConfig) -> Option<Vec<u8>> {
    config.identity.as_ref().filter(|_| config.baggage_discovery).map(|peer| baggage::encode_envoy(peer).into_bytes())
}

/// Logs nothing, counts the failure: host errors must never stop traffic.
fn counted<T>(result: Result<T, crate::host::HostError>, host: &impl Host, worker: &mut Worker) -> Option<T> {
    result.map_err(|_| worker.count(ErrorReason::HostCall, host)).ok()
}

/// connect_terminate: the HBONE CONNECT from the client's ztunnel.
#[derive(Debug, Clone)]
pub struct Downstream {
    config: PluginConfig,
    own_baggage: Option<Vec<u8>>,
}

impl Downstream {
    pub fn new(config: PluginConfig) -> Self {
        Self { own_baggage: own_baggage(&config), config }
    }

    /// Removes the peer metadata headers we consume, so they are not routed on.
    pub fn on_connect_request(&self, host: &impl Host, worker: &mut Worker) {
        let mut consumed: Vec<&str> = Vec::with_capacity(3);
        if self.config.baggage_discovery {
            consumed.push(BAGGAGE);
        }
        if self.config.legacy_discovery {
            consumed.extend([legacy::HEADER, legacy::ID_HEADER]);
        }
        if consumed.is_empty() {
            return;
        }
        let Some(headers) = counted(host.headers(HeaderMap::Request), host, worker) else { return };
        for name in consumed {
            if find_header(&headers, name).is_some() {
                counted(host.remove_header(HeaderMap::Request, name), host, worker);
            }
        }
    }

    /// Answers a successful CONNECT with our own `baggage` (errors never carry it).
    pub fn on_connect_response(&self, host: &impl Host, worker: &mut Worker) {
        let Some(own) = &self.own_baggage else { return };
        let status = counted(host.header(HeaderMap::Response, ":status"), host, worker).flatten();
        if status.as_deref() == Some(b"200") {
            counted(host.add_header(HeaderMap::Response, BAGGAGE, own), host, worker);
        }
    }
}

/// The tunnel cluster's upstream filter: one instance per CONNECT stream.
#[derive(Debug, Clone)]
pub struct Upstream {
    config: PluginConfig,
    own_baggage: Option<Vec<u8>>,
}

impl Upstream {
    pub fn new(config: PluginConfig) -> Self {
        Self { own_baggage: own_baggage(&config), config }
    }

    /// The CONNECT leaves: remember the tunnel by its connection id and
    /// announce ourselves. Returns the id to pass to the later callbacks.
    pub fn on_connect_request(&self, host: &impl Host, worker: &mut Worker) -> Option<u64> {
        if let Some(own) = &self.own_baggage {
            counted(host.add_header(HeaderMap::Request, BAGGAGE, own), host, worker);
        }
        // Without its id the tunnel cannot be found again: its requests read `unknown`.
        let Ok(Some(id)) = host.connection_id() else {
            worker.count(ErrorReason::HostCall, host);
            return None;
        };
        if !worker.tunnels.open(id) {
            worker.count(ErrorReason::TunnelLimit, host);
        }
        Some(id)
    }

    /// The CONNECT answer: bind the destination peer to this tunnel.
    pub fn on_connect_response(&self, host: &impl Host, worker: &mut Worker, tunnel: u64) {
        let Some(headers) = counted(host.headers(HeaderMap::Response), host, worker) else {
            worker.tunnels.answered(tunnel, TunnelState::Failed);
            return;
        };
        if find_header(&headers, ":status") != Some(b"200") {
            worker.tunnels.answered(tunnel, TunnelState::Failed);
            return;
        }
        let mut peer = Peer::default();
        if self.config.baggage_discovery
            && let Some(raw) = find_header(&headers, BAGGAGE)
        {
            peer = decode_baggage(raw, &self.config, host, worker);
        }
        let san = counted(host.upstream_peer_uri_san(), host, worker).flatten();
        peer.principal = principal(san.as_deref().unwrap_or_default(), &self.config, host, worker);
        pin_to_identity(&mut peer, host, worker);
        let id = worker.peer_id(peer, host);
        worker.tunnels.answered(tunnel, TunnelState::Established(id));
    }

    /// The tunnel is gone (the upstream filter never sees `on_log`, only `on_done`).
    pub fn on_done(&self, worker: &mut Worker, tunnel: u64) {
        worker.tunnels.close(tunnel);
    }
}

/// What the stats role learns about one request before it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestState {
    grpc: bool,
    source: u32,
    response_code: u32,
    grpc_status: Option<i32>,
    /// The peer the carrying tunnel learnt, 0 when none.
    tunnel_peer: u32,
    /// The upstream host's endpoint metadata as a peer, 0 when none.
    endpoint_peer: u32,
    /// `None` until the response headers name it.
    service: Option<u32>,
    /// The peer ids above are held (so never freed) until the stream is done.
    released: bool,
}

/// main_internal: one instance per inner HTTP request.
#[derive(Debug, Clone)]
pub struct Stats {
    config: PluginConfig,
}

impl Stats {
    pub fn new(config: PluginConfig) -> Self {
        Self { config }
    }

    /// The source peer and whether the request is gRPC; consumes a sidecar's legacy header.
    pub fn on_request_headers(&self, host: &impl Host, worker: &mut Worker, state: &mut RequestState) {
        let Some(headers) = counted(host.headers(HeaderMap::Request), host, worker) else { return };
        state.grpc = find_header(&headers, "content-type").is_some_and(|ct| ct.starts_with(b"application/grpc"));
        let mut inner_legacy = None;
        if self.config.legacy_discovery
            && let Some(raw) = find_header(&headers, legacy::HEADER)
        {
            inner_legacy = Some(raw);
            counted(host.remove_header(HeaderMap::Request, legacy::HEADER), host, worker);
            if find_header(&headers, legacy::ID_HEADER).is_some() {
                counted(host.remove_header(HeaderMap::Request, legacy::ID_HEADER), host, worker);
            }
        }
        let part = |header: &str| find_header(&headers, header).unwrap_or_default();
        let downstream = DownstreamParts {
            san: part(DOWNSTREAM_SAN.header),
            legacy: part(DOWNSTREAM_LEGACY.header),
            baggage: part(DOWNSTREAM_BAGGAGE.header),
            inner_legacy: inner_legacy.unwrap_or_default(),
        };
        state.source = self.downstream_peer(&downstream, host, worker);
        worker.hold(state.source);
    }

    /// Reads the status, the service, the endpoint, and binds the destination while its
    /// tunnel is surely alive.
    pub fn on_response_headers(&self, host: &impl Host, worker: &mut Worker, state: &mut RequestState) {
        let Some(headers) = counted(host.headers(HeaderMap::Response), host, worker) else { return };
        state.response_code = find_header(&headers, ":status").and_then(parse_u32).unwrap_or(0);
        if state.grpc {
            // A trailers-only gRPC answer carries its status in the headers.
            state.grpc_status = find_header(&headers, "grpc-status").map(labels::grpc_status);
        }
        if let Some(cluster) = find_header(&headers, SERVICE_HEADER) {
            state.service = Some(self.service(cluster, host, worker));
        }
        if let Some(raw) = find_header(&headers, ENDPOINT_HEADER).filter(|raw| !raw.is_empty()) {
            let max = self.config.limits.max_value_bytes;
            state.endpoint_peer = worker.endpoint_peer(raw, host, |raw| endpoint::decode(raw, max).unwrap_or_default());
            worker.hold(state.endpoint_peer);
        }
        let Some(x) = find_header(&headers, UPSTREAM_CONNECTION_HEADER).and_then(parse_u64) else { return };
        state.tunnel_peer = match worker.tunnels.carrier_of(x) {
            Some(TunnelState::Established(peer)) => peer,
            Some(TunnelState::Pending | TunnelState::Failed) => 0,
            None => {
                worker.count(ErrorReason::TunnelUnbound, host);
                0
            }
        };
        worker.hold(state.tunnel_peer);
    }

    pub fn on_response_trailers(&self, host: &impl Host, worker: &mut Worker, state: &mut RequestState) {
        if state.grpc {
            let status = counted(host.header(HeaderMap::ResponseTrailers, "grpc-status"), host, worker).flatten();
            if let Some(status) = status {
                state.grpc_status = Some(labels::grpc_status(&status));
            }
        }
    }

    /// Stream end: emit the metrics.
    /// The stream is gone: the peers it held may be freed again. Idempotent, so the
    /// adapter calls it from both `on_log` and `on_done`.
    pub fn on_done(&self, worker: &mut Worker, state: &mut RequestState) {
        if !state.released {
            state.released = true;
            for id in [state.source, state.endpoint_peer, state.tunnel_peer] {
                worker.release(id);
            }
        }
    }

    pub fn on_log(&self, host: &impl Host, worker: &mut Worker, state: &RequestState) {
        // Without response headers (a reset before any answer) the route names the service.
        let service = match state.service {
            Some(service) => service,
            None => {
                let cluster = counted(host.cluster_name(), host, worker).flatten().unwrap_or_default();
                self.service(&cluster, host, worker)
            }
        };
        let response_flags = counted(host.response_flags(), host, worker).unwrap_or(0);
        // A request that reached no tunnel has only the endpoint Envoy picked for it.
        let tunnel_peer = if response_flags::no_upstream_reached(response_flags) { 0 } else { state.tunnel_peer };
        let destination = worker.destination(tunnel_peer, state.endpoint_peer, host);
        worker.hold(destination);
        let (grpc_status, messages) = if state.grpc {
            let status = state.grpc_status.or_else(|| labels::grpc_status_from_http(state.response_code));
            (status, counted(host.grpc_messages(), host, worker).flatten())
        } else {
            (None, None)
        };
        let duration = counted(host.request_duration(), host, worker).unwrap_or_default();
        let observation = Observation {
            source: state.source,
            destination,
            service,
            response_code: state.response_code,
            response_flags,
            grpc: state.grpc,
            grpc_status,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            request_bytes: counted(host.request_total_size(), host, worker).unwrap_or(0),
            response_bytes: counted(host.response_total_size(), host, worker).unwrap_or(0),
            messages,
        };
        if worker.record(&observation, host).is_err() {
            worker.count(ErrorReason::HostCall, host);
        }
        worker.release(destination);
    }

    fn service(&self, cluster: &[u8], host: &impl Host, worker: &mut Worker) -> u32 {
        let max = self.config.limits.max_value_bytes;
        worker.service_for(cluster, host, |cluster| RoutedService::from_cluster_name(cluster, max))
    }

    /// The downstream peer id: from the CONNECT `baggage`, else the CONNECT
    /// legacy header, else the inner request's legacy header; the principal
    /// always from TLS, and its namespace wins. Decoded once per distinct input.
    fn downstream_peer(&self, parts: &DownstreamParts<'_>, host: &impl Host, worker: &mut Worker) -> u32 {
        // A NUL cannot occur in a header value, so the parts cannot run together.
        let key = [parts.san, b"\0", parts.legacy, b"\0", parts.baggage, b"\0", parts.inner_legacy].concat();
        worker.downstream_peer(&key, host, |worker| {
            let mut peer = Peer::default();
            if self.config.baggage_discovery && !parts.baggage.is_empty() {
                peer = decode_baggage(parts.baggage, &self.config, host, worker);
            }
            if self.config.legacy_discovery {
                for candidate in [parts.legacy, parts.inner_legacy] {
                    if peer.is_empty() && !candidate.is_empty() {
                        peer = decode_legacy(candidate, &self.config, host, worker);
                    }
                }
            }
            peer.principal = principal(parts.san, &self.config, host, worker);
            pin_to_identity(&mut peer, host, worker);
            peer
        })
    }
}

/// What connect_terminate captured about the client, each part in its own header.
#[derive(Debug, Clone, Copy)]
struct DownstreamParts<'h> {
    san: &'h [u8],
    legacy: &'h [u8],
    baggage: &'h [u8],
    /// A sidecar's legacy header on the inner request itself.
    inner_legacy: &'h [u8],
}

/// The verified identity's namespace wins over what metadata claims; a claim that
/// contradicts it is counted.
fn pin_to_identity(peer: &mut Peer, host: &impl Host, worker: &mut Worker) {
    if peer.contradicts_identity() {
        worker.count(ErrorReason::IdentityMismatch, host);
    }
    peer.pin_namespace();
}

fn decode_baggage(raw: &[u8], config: &PluginConfig, host: &impl Host, worker: &mut Worker) -> Peer {
    peer_or_unknown(baggage::decode(raw, &config.limits), ErrorReason::BaggageRejected, host, worker)
}

fn decode_legacy(raw: &[u8], config: &PluginConfig, host: &impl Host, worker: &mut Worker) -> Peer {
    peer_or_unknown(legacy::decode(raw, &config.limits), ErrorReason::LegacyRejected, host, worker)
}

/// The decoded peer, counting rejected values; an undecodable header is an unknown peer.
fn peer_or_unknown<E>(
    decoded: Result<Decoded, E>,
    refused: ErrorReason,
    host: &impl Host,
    worker: &mut Worker,
) -> Peer {
    match decoded {
        Ok(decoded) => {
            if decoded.rejected_values > 0 {
                worker.count(ErrorReason::ValueRejected, host);
            }
            decoded.peer
        }
        Err(_) => {
            worker.count(refused, host);
            Peer::default()
        }
    }
}

/// A TLS identity as a label value: the first URI SAN (Envoy joins several with
/// `,`, Istio takes the first); anything unexpected reads as unknown.
fn principal(raw: &[u8], config: &PluginConfig, host: &impl Host, worker: &mut Worker) -> String {
    let first = raw.split(|b| *b == b',').next().unwrap_or_default();
    value::sanitize(first, config.limits.max_value_bytes).unwrap_or_else(|_| {
        worker.count(ErrorReason::ValueRejected, host);
        String::new()
    })
}

fn parse_u64(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.trim().parse().ok()
}

fn parse_u32(raw: &[u8]) -> Option<u32> {
    std::str::from_utf8(raw).ok()?.trim().parse().ok()
}
