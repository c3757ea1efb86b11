//! The three roles of the waypoint module, each a composition of
//! [`crate::discovery`], [`crate::propagation`] and [`crate::stats`], written
//! against [`crate::host`]:
//!
//! - [`Downstream`] on connect_terminate: removes the client's peer metadata from
//!   the HBONE CONNECT and answers the CONNECT 200 with our own `baggage`.
//! - [`Upstream`] on the tunnel cluster: sends our `baggage` on the upstream
//!   CONNECT and binds the destination the CONNECT 200 names to the tunnel.
//! - [`Stats`] on main_internal: at stream end, emits the Istio metrics with
//!   both peers' labels.
//!
//! Host calls are the cost that matters: the stats role reads each request's facts
//! from the two header maps it reads anyway ([`crate::contract`] names the channels);
//! only what is known at stream end (flags, duration, sizes, gRPC messages) is read
//! on its own.

use crate::config::{Limits, PluginConfig};
use crate::contract::{
    DOWNSTREAM_BAGGAGE, DOWNSTREAM_LEGACY, DOWNSTREAM_SAN, ENDPOINT_HEADER, UPSTREAM_CONNECTION_HEADER,
};
use crate::discovery::{Discovery, DownstreamParts, counted};
use crate::host::{HeaderMap, Host};
use crate::propagation::Propagation;
use crate::stats::{self, Facts, StreamEnd};
use crate::worker::{ErrorReason, TunnelState, Worker};

/// connect_terminate: the HBONE CONNECT from the client's ztunnel.
#[derive(Debug, Clone)]
pub struct Downstream {
    discovery: Discovery,
    propagation: Propagation,
}

impl Downstream {
    pub fn new(config: PluginConfig) -> Self {
        Self { propagation: Propagation::new(&config), discovery: config.downstream }
    }

    /// Removes the peer metadata headers we consume, so they are not routed on.
    pub fn on_connect_request(&self, host: &impl Host, worker: &mut Worker) {
        self.discovery.remove_from_connect(host, worker);
    }

    pub fn on_connect_response(&self, host: &impl Host, worker: &mut Worker) {
        self.propagation.on_connect_response(host, worker);
    }
}

/// The tunnel cluster's upstream filter: one instance per CONNECT stream.
#[derive(Debug, Clone)]
pub struct Upstream {
    discovery: Discovery,
    propagation: Propagation,
    limits: Limits,
}

impl Upstream {
    pub fn new(config: PluginConfig) -> Self {
        Self { propagation: Propagation::new(&config), discovery: config.upstream, limits: config.limits }
    }

    /// The CONNECT leaves: announce ourselves and remember the tunnel by its
    /// connection id. Returns the id to pass to the later callbacks.
    pub fn on_connect_request(&self, host: &impl Host, worker: &mut Worker) -> Option<u64> {
        self.propagation.on_upstream_connect(host, worker);
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
        if headers.get(":status") != Some(b"200") {
            worker.tunnels.answered(tunnel, TunnelState::Failed);
            return;
        }
        let peer = self.discovery.tunnel_peer(&headers, &self.limits, host, worker);
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
    facts: Facts,
    source: u32,
    /// The peer the carrying tunnel learnt, 0 when none.
    tunnel_peer: u32,
    /// The upstream host's endpoint metadata as a peer, 0 when none.
    endpoint_peer: u32,
    /// The peer ids above are held (so never freed) until the stream is done.
    released: bool,
}

/// main_internal: one instance per inner HTTP request.
#[derive(Debug, Clone)]
pub struct Stats {
    downstream: Discovery,
    upstream: Discovery,
    limits: Limits,
}

impl Stats {
    pub fn new(config: PluginConfig) -> Self {
        Self { downstream: config.downstream, upstream: config.upstream, limits: config.limits }
    }

    /// The source peer and whether the request is gRPC; consumes a sidecar's legacy header.
    pub fn on_request_headers(&self, host: &impl Host, worker: &mut Worker, state: &mut RequestState) {
        let Some(headers) = counted(host.headers(HeaderMap::Request), host, worker) else { return };
        state.facts.on_request_headers(&headers);
        let inner_legacy = self.downstream.take_inner_legacy(&headers, host, worker);
        let part = |header: &str| headers.get(header).unwrap_or_default();
        let parts = DownstreamParts {
            san: part(DOWNSTREAM_SAN.header),
            legacy: part(DOWNSTREAM_LEGACY.header),
            baggage: part(DOWNSTREAM_BAGGAGE.header),
            inner_legacy: inner_legacy.unwrap_or_default(),
        };
        state.source = self.downstream.downstream_peer(&parts, &self.limits, host, worker);
        worker.hold(state.source);
    }

    /// Reads the status, the service, the endpoint, and binds the destination while its
    /// tunnel is surely alive.
    pub fn on_response_headers(&self, host: &impl Host, worker: &mut Worker, state: &mut RequestState) {
        let Some(headers) = counted(host.headers(HeaderMap::Response), host, worker) else { return };
        state.facts.on_response_headers(&headers, &self.limits, host, worker);
        state.endpoint_peer = self.upstream.endpoint_peer(headers.get(ENDPOINT_HEADER), &self.limits, host, worker);
        worker.hold(state.endpoint_peer);
        let Some(x) = headers.get(UPSTREAM_CONNECTION_HEADER).and_then(parse_u64) else { return };
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
        state.facts.on_response_trailers(host, worker);
    }

    /// Stream end: emit the metrics.
    pub fn on_log(&self, host: &impl Host, worker: &mut Worker, state: &RequestState) {
        let end = StreamEnd::read(&state.facts, &self.limits, host, worker);
        // A request that reached no tunnel has only the endpoint Envoy picked for it.
        let tunnel_peer = if end.no_upstream_reached() { 0 } else { state.tunnel_peer };
        let destination = self.upstream.destination(tunnel_peer, state.endpoint_peer, host, worker);
        // Held while recording: a full peer table collects unused peers meanwhile.
        worker.hold(destination);
        stats::record(&state.facts, end, (state.source, destination), host, worker);
        worker.release(destination);
    }

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
}

fn parse_u64(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.trim().parse().ok()
}
