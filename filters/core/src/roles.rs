//! The three roles of the waypoint module, written against [`crate::host`]:
//!
//! - [`Downstream`] on connect_terminate: consumes the client's peer metadata
//!   from the HBONE CONNECT and answers the CONNECT 200 with our own `baggage`.
//! - [`Upstream`] on the tunnel cluster: sends our `baggage` on the upstream
//!   CONNECT and binds the destination's `baggage` from the CONNECT 200 to the tunnel.
//! - [`Stats`] on main_internal: at stream end, emits the Istio metrics with
//!   both peers' labels.
//!
//! Host calls are the cost that matters, so the stats role reads each request's
//! facts from the two header maps it reads anyway; Envoy's config puts them
//! there natively and removes them before the request or response leaves:
//!
//! - the downstream peer: stock `set_filter_state` on connect_terminate stores
//!   [`DOWNSTREAM_FORMAT`] as [`DOWNSTREAM_FILTER_STATE`], shared with
//!   main_internal (a wasm filter cannot share filter state upstream), where a
//!   `header_mutation` copies it into the request header [`DOWNSTREAM_HEADER`];
//! - the tunnel that carried the response: [`UPSTREAM_CONNECTION_HEADER`];
//! - the service the route chose: [`SERVICE_HEADER`].
//!
//! Only what is known at stream end (flags, duration, sizes) is read as properties.

use crate::baggage;
use crate::config::PluginConfig;
use crate::host::{HeaderMap, Host, find_header, le_u64};
use crate::labels::RoutedService;
use crate::legacy;
use crate::peer::{Decoded, Peer};
use crate::response_flags;
use crate::value;
use crate::worker::{ErrorReason, Observation, TunnelState, Worker};

/// Filter state key holding the downstream peer, shared once with main_internal.
pub const DOWNSTREAM_FILTER_STATE: &str = "wp.downstream_peer";
/// What connect_terminate's `set_filter_state` stores under that key: the TLS
/// identity, the CONNECT legacy header and the CONNECT `baggage`, separated by
/// one space (`omit_empty_values: true`, so absent ones are empty, not `-`).
/// Only the last part may hold spaces: a URI and base64 cannot.
pub const DOWNSTREAM_FORMAT: &str = "%DOWNSTREAM_PEER_URI_SAN% %REQ(x-envoy-peer-metadata)% %REQ(baggage)%";
/// Request header carrying [`DOWNSTREAM_FILTER_STATE`] to the stats filter.
pub const DOWNSTREAM_HEADER: &str = "x-wp-peer";
/// Response header main_internal's tunnel routes add with `%UPSTREAM_CONNECTION_ID%`.
pub const UPSTREAM_CONNECTION_HEADER: &str = "x-wp-upconn";
/// Response header main_internal's routes add: the name of the cluster they route to.
pub const SERVICE_HEADER: &str = "x-wp-service";

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
        let id = match host.property(&["connection", "id"]) {
            Ok(Some(bytes)) => le_u64(&bytes),
            _ => None,
        };
        let Some(id) = id else {
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
        let san = counted(host.property(&["upstream", "uri_san_peer_certificate"]), host, worker).flatten();
        peer.principal = principal(san.as_deref().unwrap_or_default(), &self.config, host, worker);
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
    grpc_status: Option<u32>,
    destination: u32,
    /// `None` until the response headers name it.
    service: Option<u32>,
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
        let downstream = find_header(&headers, DOWNSTREAM_HEADER).unwrap_or_default();
        state.source = self.downstream_peer(downstream, inner_legacy, host, worker);
    }

    /// Reads the status, the service, and binds the destination while its tunnel is surely alive.
    pub fn on_response_headers(&self, host: &impl Host, worker: &mut Worker, state: &mut RequestState) {
        let Some(headers) = counted(host.headers(HeaderMap::Response), host, worker) else { return };
        state.response_code = find_header(&headers, ":status").and_then(parse_u32).unwrap_or(0);
        if state.grpc {
            // A trailers-only gRPC answer carries its status in the headers.
            state.grpc_status = find_header(&headers, "grpc-status").and_then(parse_u32);
        }
        if let Some(cluster) = find_header(&headers, SERVICE_HEADER) {
            state.service = Some(self.service(cluster, host, worker));
        }
        let Some(x) = find_header(&headers, UPSTREAM_CONNECTION_HEADER).and_then(parse_u64) else { return };
        state.destination = match worker.tunnels.carrier_of(x) {
            Some(TunnelState::Established(peer)) => peer,
            Some(TunnelState::Pending | TunnelState::Failed) => 0,
            None => {
                worker.count(ErrorReason::TunnelUnbound, host);
                0
            }
        };
    }

    pub fn on_response_trailers(&self, host: &impl Host, worker: &mut Worker, state: &mut RequestState) {
        if state.grpc {
            let status = counted(host.header(HeaderMap::ResponseTrailers, "grpc-status"), host, worker).flatten();
            if let Some(status) = status.as_deref().and_then(parse_u32) {
                state.grpc_status = Some(status);
            }
        }
    }

    /// Stream end: emit the metrics.
    pub fn on_log(&self, host: &impl Host, worker: &mut Worker, state: &RequestState) {
        let read = |worker: &mut Worker, path: &[&str]| counted(host.property(path), host, worker).flatten();
        let number = |worker: &mut Worker, path: &[&str]| read(worker, path).and_then(|b| le_u64(&b)).unwrap_or(0);

        // Without response headers (a reset before any answer) the route names the service.
        let service = match state.service {
            Some(service) => service,
            None => {
                let cluster = read(worker, &["xds", "cluster_name"]).unwrap_or_default();
                self.service(&cluster, host, worker)
            }
        };
        let response_flags = number(worker, &["response", "flags"]);
        let destination = if response_flags::no_upstream_reached(response_flags) { 0 } else { state.destination };
        let observation = Observation {
            source: state.source,
            destination,
            service,
            response_code: state.response_code,
            response_flags,
            grpc: state.grpc,
            grpc_status: state.grpc_status,
            duration_ms: number(worker, &["request", "duration"]) / 1_000_000,
            request_bytes: number(worker, &["request", "total_size"]),
            response_bytes: number(worker, &["response", "total_size"]),
        };
        if worker.record(&observation, host).is_err() {
            worker.count(ErrorReason::HostCall, host);
        }
    }

    fn service(&self, cluster: &[u8], host: &impl Host, worker: &mut Worker) -> u32 {
        let max = self.config.limits.max_value_bytes;
        worker.service_for(cluster, host, |cluster| RoutedService::from_cluster_name(cluster, max))
    }

    /// The downstream peer id: from the CONNECT `baggage`, else the CONNECT
    /// legacy header, else the inner request's legacy header; the principal
    /// always from TLS. Decoded once per distinct input.
    fn downstream_peer(&self, raw: &[u8], inner_legacy: Option<&[u8]>, host: &impl Host, worker: &mut Worker) -> u32 {
        let key: std::borrow::Cow<'_, [u8]> = match inner_legacy {
            None => raw.into(),
            // A NUL cannot occur in a header value, so the two parts cannot run together.
            Some(inner) => [raw, b"\0", inner].concat().into(),
        };
        worker.downstream_peer(&key, host, |worker| {
            let mut parts = raw.splitn(3, |b| *b == b' ');
            let san = parts.next().unwrap_or_default();
            let connect_legacy = parts.next().unwrap_or_default();
            let connect_baggage = parts.next().unwrap_or_default();
            let mut peer = Peer::default();
            if self.config.baggage_discovery && !connect_baggage.is_empty() {
                peer = decode_baggage(connect_baggage, &self.config, host, worker);
            }
            if self.config.legacy_discovery {
                for candidate in [connect_legacy, inner_legacy.unwrap_or_default()] {
                    if peer.is_empty() && !candidate.is_empty() {
                        peer = decode_legacy(candidate, &self.config, host, worker);
                    }
                }
            }
            peer.principal = principal(san, &self.config, host, worker);
            peer
        })
    }
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

/// A TLS identity as a label value; anything unexpected reads as unknown.
fn principal(raw: &[u8], config: &PluginConfig, host: &impl Host, worker: &mut Worker) -> String {
    value::sanitize(raw, config.limits.max_value_bytes).unwrap_or_else(|_| {
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
