//! Who the two peers of a request are, as istio/proxy's `peer_metadata` filter finds
//! them: an ordered list of methods per side. The first method whose metadata names a
//! peer wins; the TLS identity vouches for the principal of whichever peer won, and its
//! namespace beats the metadata's (a contradiction is counted); every configured
//! method's header is removed so that none is routed on.
//!
//! - downstream (the client): the CONNECT's `baggage` and legacy header, captured on
//!   connect_terminate and handed to main_internal ([`DownstreamParts`]), then a
//!   sidecar's legacy header on the inner request itself;
//! - upstream (the destination): the CONNECT 200's `baggage` and the tunnel's TLS
//!   identity, bound to the tunnel ([`Discovery::tunnel_peer`]), then Istio's endpoint
//!   metadata of the upstream host ([`Discovery::destination`]).

use serde::{Deserialize, Serialize};

use crate::baggage;
use crate::config::Limits;
use crate::endpoint;
use crate::host::{HeaderMap, Headers, Host};
use crate::legacy;
use crate::peer::{Decoded, Peer};
use crate::value;
use crate::worker::{ErrorReason, Worker};

/// The header HBONE peers describe themselves in.
pub const BAGGAGE: &str = "baggage";

/// One way of learning a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// HBONE `baggage` (Istio's `AMBIENT_ENABLE_BAGGAGE`): the client's on the CONNECT,
    /// the destination's on the CONNECT 200.
    Baggage,
    /// The sidecar-era `x-envoy-peer-metadata` (and `-id`), on the CONNECT or on the
    /// inner request. Downstream only: sidecars answer a waypoint without it.
    LegacyHeader,
    /// Istio's endpoint metadata of the upstream host, from the mesh file. Upstream only.
    EndpointMetadata,
    /// The peer's certificate: the principal, whose namespace wins over any claim.
    TlsIdentity,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baggage => "baggage",
            Self::LegacyHeader => "legacy_header",
            Self::EndpointMetadata => "endpoint_metadata",
            Self::TlsIdentity => "tls_identity",
        }
    }

    /// The request headers this method consumes on the downstream side.
    fn downstream_headers(self) -> &'static [&'static str] {
        match self {
            Self::Baggage => &[BAGGAGE],
            Self::LegacyHeader => &[legacy::HEADER, legacy::ID_HEADER],
            Self::EndpointMetadata | Self::TlsIdentity => &[],
        }
    }
}

/// Which side of the waypoint a list of methods discovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client.
    Downstream,
    /// The destination.
    Upstream,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downstream => "downstream",
            Self::Upstream => "upstream",
        }
    }

    /// Today's order: metadata the peer sends beats what the mesh knows; the identity last.
    pub fn default_methods(self) -> Vec<Method> {
        match self {
            Self::Downstream => vec![Method::Baggage, Method::LegacyHeader, Method::TlsIdentity],
            Self::Upstream => vec![Method::Baggage, Method::EndpointMetadata, Method::TlsIdentity],
        }
    }

    fn supports(self, method: Method) -> bool {
        !matches!((self, method), (Self::Downstream, Method::EndpointMetadata) | (Self::Upstream, Method::LegacyHeader))
    }
}

/// Why a list of methods is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{} is not a method of the {} side", method.as_str(), side.as_str())]
    Unsupported { side: Side, method: Method },
    #[error("{} is listed twice", .0.as_str())]
    Repeated(Method),
}

/// The ordered methods of one side, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    side: Side,
    methods: Vec<Method>,
}

impl Discovery {
    pub fn new(side: Side, methods: Vec<Method>) -> Result<Self, DiscoveryError> {
        for (index, method) in methods.iter().enumerate() {
            if !side.supports(*method) {
                return Err(DiscoveryError::Unsupported { side, method: *method });
            }
            if methods.iter().take(index).any(|earlier| earlier == method) {
                return Err(DiscoveryError::Repeated(*method));
            }
        }
        Ok(Self { side, methods })
    }

    pub fn defaults(side: Side) -> Self {
        Self { side, methods: side.default_methods() }
    }

    pub fn side(&self) -> Side {
        self.side
    }

    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    pub fn uses(&self, method: Method) -> bool {
        self.methods.contains(&method)
    }

    /// True when endpoint metadata beats the destination's own `baggage`.
    fn endpoint_first(&self) -> bool {
        let position = |method| self.methods.iter().position(|m| *m == method);
        match (position(Method::EndpointMetadata), position(Method::Baggage)) {
            (Some(endpoint), Some(baggage)) => endpoint < baggage,
            (endpoint, _) => endpoint.is_some(),
        }
    }

    /// connect_terminate: removes the headers of every configured method from the
    /// client's CONNECT (Envoy has captured them for main_internal already).
    pub fn remove_from_connect(&self, host: &impl Host, worker: &mut Worker) {
        let consumed: Vec<&str> = self.methods.iter().flat_map(|m| m.downstream_headers()).copied().collect();
        if consumed.is_empty() {
            return;
        }
        let Some(headers) = counted(host.headers(HeaderMap::Request), host, worker) else { return };
        for name in consumed {
            if headers.get(name).is_some() {
                counted(host.remove_header(HeaderMap::Request, name), host, worker);
            }
        }
    }

    /// main_internal: a sidecar's legacy header on the inner request, removed; `None` when
    /// the method is not configured or the header absent.
    pub fn take_inner_legacy<'h>(
        &self,
        headers: &'h Headers,
        host: &impl Host,
        worker: &mut Worker,
    ) -> Option<&'h [u8]> {
        if !self.uses(Method::LegacyHeader) {
            return None;
        }
        let raw = headers.get(legacy::HEADER)?;
        counted(host.remove_header(HeaderMap::Request, legacy::HEADER), host, worker);
        if headers.get(legacy::ID_HEADER).is_some() {
            counted(host.remove_header(HeaderMap::Request, legacy::ID_HEADER), host, worker);
        }
        Some(raw)
    }

    /// The downstream peer's id, decoded once per distinct description.
    pub fn downstream_peer(
        &self,
        parts: &DownstreamParts<'_>,
        limits: &Limits,
        host: &impl Host,
        worker: &mut Worker,
    ) -> u32 {
        // A NUL cannot occur in a header value, so the parts cannot run together.
        let key = [parts.san, b"\0", parts.legacy, b"\0", parts.baggage, b"\0", parts.inner_legacy].concat();
        worker.downstream_peer(&key, host, |worker| {
            let mut peer = Peer::default();
            for method in &self.methods {
                if !peer.is_empty() {
                    break;
                }
                match method {
                    Method::Baggage if !parts.baggage.is_empty() => {
                        peer = decode_baggage(parts.baggage, limits, host, worker);
                    }
                    Method::LegacyHeader => {
                        for candidate in [parts.legacy, parts.inner_legacy] {
                            if peer.is_empty() && !candidate.is_empty() {
                                peer = decode_legacy(candidate, limits, host, worker);
                            }
                        }
                    }
                    Method::Baggage | Method::EndpointMetadata | Method::TlsIdentity => {}
                }
            }
            if self.uses(Method::TlsIdentity) {
                peer.principal = principal(parts.san, limits, host, worker);
            }
            pin_to_identity(&mut peer, host, worker);
            peer
        })
    }

    /// The upstream filter's CONNECT 200: the destination as the tunnel knows it, from the
    /// answer's headers and the tunnel's certificate.
    pub fn tunnel_peer(&self, answer: &Headers, limits: &Limits, host: &impl Host, worker: &mut Worker) -> Peer {
        let mut peer = Peer::default();
        if self.uses(Method::Baggage)
            && let Some(raw) = answer.get(BAGGAGE)
        {
            peer = decode_baggage(raw, limits, host, worker);
        }
        if self.uses(Method::TlsIdentity) {
            let san = counted(host.upstream_peer_uri_san(), host, worker).flatten();
            peer.principal = principal(san.as_deref().unwrap_or_default(), limits, host, worker);
        }
        pin_to_identity(&mut peer, host, worker);
        peer
    }

    /// The upstream host's endpoint metadata (main_internal's response header) as a peer
    /// id, 0 when not configured or absent.
    pub fn endpoint_peer(&self, raw: Option<&[u8]>, limits: &Limits, host: &impl Host, worker: &mut Worker) -> u32 {
        let Some(raw) = raw.filter(|raw| !raw.is_empty() && self.uses(Method::EndpointMetadata)) else { return 0 };
        let max = limits.max_value_bytes;
        worker.endpoint_peer(raw, host, |raw| endpoint::decode(raw, max).unwrap_or_default())
    }

    /// The destination from what its tunnel learnt and the endpoint metadata, in the
    /// configured order; the endpoint metadata is taken under the tunnel's identity,
    /// whose namespace wins.
    pub fn destination(&self, tunnel: u32, endpoint: u32, host: &impl Host, worker: &mut Worker) -> u32 {
        worker.destination(tunnel, endpoint, self.endpoint_first(), host)
    }
}

/// What connect_terminate captured about the client, each part in its own header, and
/// a sidecar's legacy header on the inner request.
#[derive(Debug, Clone, Copy, Default)]
pub struct DownstreamParts<'h> {
    pub san: &'h [u8],
    pub legacy: &'h [u8],
    pub baggage: &'h [u8],
    pub inner_legacy: &'h [u8],
}

/// Logs nothing, counts the failure: host errors must never stop traffic.
pub(crate) fn counted<T>(
    result: Result<T, crate::host::HostError>,
    host: &impl Host,
    worker: &mut Worker,
) -> Option<T> {
    result.map_err(|_| worker.count(ErrorReason::HostCall, host)).ok()
}

/// The verified identity's namespace wins over what metadata claims; a claim that
/// contradicts it is counted.
fn pin_to_identity(peer: &mut Peer, host: &impl Host, worker: &mut Worker) {
    if peer.contradicts_identity() {
        worker.count(ErrorReason::IdentityMismatch, host);
    }
    peer.pin_namespace();
}

fn decode_baggage(raw: &[u8], limits: &Limits, host: &impl Host, worker: &mut Worker) -> Peer {
    peer_or_unknown(baggage::decode(raw, limits), ErrorReason::BaggageRejected, host, worker)
}

fn decode_legacy(raw: &[u8], limits: &Limits, host: &impl Host, worker: &mut Worker) -> Peer {
    peer_or_unknown(legacy::decode(raw, limits), ErrorReason::LegacyRejected, host, worker)
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
fn principal(raw: &[u8], limits: &Limits, host: &impl Host, worker: &mut Worker) -> String {
    let first = raw.split(|b| *b == b',').next().unwrap_or_default();
    value::sanitize(first, limits.max_value_bytes).unwrap_or_else(|_| {
        worker.count(ErrorReason::ValueRejected, host);
        String::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_takes_only_its_methods_once() {
        assert!(Discovery::new(Side::Downstream, Side::Downstream.default_methods()).is_ok());
        assert!(Discovery::new(Side::Upstream, Side::Upstream.default_methods()).is_ok());
        assert_eq!(
            Discovery::new(Side::Downstream, vec![Method::EndpointMetadata]),
            Err(DiscoveryError::Unsupported { side: Side::Downstream, method: Method::EndpointMetadata })
        );
        assert_eq!(
            Discovery::new(Side::Upstream, vec![Method::Baggage, Method::Baggage]),
            Err(DiscoveryError::Repeated(Method::Baggage))
        );
    }

    #[test]
    fn the_order_decides_whether_endpoint_metadata_beats_baggage() {
        let order = |methods| Discovery::new(Side::Upstream, methods).map(|d| d.endpoint_first());
        assert_eq!(order(vec![Method::Baggage, Method::EndpointMetadata]), Ok(false));
        assert_eq!(order(vec![Method::EndpointMetadata, Method::Baggage]), Ok(true));
        assert_eq!(order(vec![Method::EndpointMetadata]), Ok(true));
        assert_eq!(order(vec![Method::Baggage]), Ok(false));
    }
}
