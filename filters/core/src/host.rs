//! What the roles need from the proxy, as two small traits. The proxy-wasm module
//! implements them with host calls, a native Envoy module with its ABI, tests with
//! maps. Each method is one host call; every call may fail: a failure degrades to
//! `unknown` and is counted.

use std::time::Duration;

use crate::labels::Series;

/// How a host call failed, in terms every host can map its own failures onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostStatus {
    /// The host has nothing of that name (a metric id, a header map it does not expose).
    NotFound,
    /// The host refused what it was given (a name, an id, a value it cannot take).
    BadArgument,
    /// The host's answer could not be read (a framing or an encoding not as documented).
    ParseFailure,
    /// The host does not offer this call here (not implemented, or not in this phase).
    Unsupported,
    /// Any other failure inside the host.
    Internal,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::BadArgument => "bad argument",
            Self::ParseFailure => "parse failure",
            Self::Unsupported => "unsupported",
            Self::Internal => "internal failure",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host call {call} failed: {}", status.as_str())]
pub struct HostError {
    /// The host function that failed, as the adapter names it.
    pub call: &'static str,
    pub status: HostStatus,
}

/// The header maps a role touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderMap {
    Request,
    Response,
    ResponseTrailers,
}

/// One HTTP stream as the proxy exposes it. The facts are Envoy's stream attributes;
/// `None` (or 0) when the stream does not have them (yet).
pub trait Stream {
    /// All headers of a map in one call.
    fn headers(&self, map: HeaderMap) -> Result<Headers, HostError>;
    fn header(&self, map: HeaderMap, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn remove_header(&self, map: HeaderMap, name: &str) -> Result<(), HostError>;
    fn add_header(&self, map: HeaderMap, name: &str, value: &[u8]) -> Result<(), HostError>;

    /// The id Envoy gave this stream's connection (`connection.id`): on the tunnel
    /// cluster's upstream filter, the connection that carries the tunnel.
    fn connection_id(&self) -> Result<Option<u64>, HostError>;
    /// The URI SANs of the upstream peer's certificate, as Envoy joins them with `,`
    /// (`upstream.uri_san_peer_certificate`).
    fn upstream_peer_uri_san(&self) -> Result<Option<Vec<u8>>, HostError>;
    /// The cluster the route chose (`xds.cluster_name`).
    fn cluster_name(&self) -> Result<Option<Vec<u8>>, HostError>;
    /// Envoy's response flag bits, 0 when none (`response.flags`).
    fn response_flags(&self) -> Result<u64, HostError>;
    /// From the first request byte to the last response byte (`request.duration`).
    fn request_duration(&self) -> Result<Duration, HostError>;
    /// Request bytes including headers (`request.total_size`).
    fn request_total_size(&self) -> Result<u64, HostError>;
    /// Response bytes including headers (`response.total_size`).
    fn response_total_size(&self) -> Result<u64, HostError>;
    /// gRPC messages (request, response) as Envoy's `grpc_stats` filter counted them
    /// ([`crate::contract::GRPC_STATS_FILTER_STATE`]); `None` when it did not.
    fn grpc_messages(&self) -> Result<Option<(u64, u64)>, HostError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// The proxy's metric store.
pub trait Metrics {
    /// Defines one series of a metric and returns its id. Envoy allocates on every
    /// call, so callers define each series once and cache the id.
    fn define(&self, kind: MetricKind, series: &Series<'_>) -> Result<u32, HostError>;
    fn increment(&self, id: u32, by: i64) -> Result<(), HostError>;
    /// Records a histogram sample, or sets a gauge.
    fn record(&self, id: u32, value: u64) -> Result<(), HostError>;
}

/// One header map as the host handed it over: every name and value in one buffer, in
/// order. Names and values are bytes: neither has to be UTF-8. Two allocations per map
/// whatever its size, since every request reads two maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    bytes: Vec<u8>,
    /// Per header: where its name starts, where its name ends (its value starts
    /// there) and where its value ends, in `bytes`.
    entries: Vec<(usize, usize, usize)>,
}

impl Headers {
    /// Room for `headers` headers of `bytes` bytes of names and values in all.
    pub fn with_capacity(headers: usize, bytes: usize) -> Self {
        Self { bytes: Vec::with_capacity(bytes), entries: Vec::with_capacity(headers) }
    }

    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        let name_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.entries.push((start, name_end, self.bytes.len()));
    }

    /// The first value of `name` (names are lower case on the wire).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(key, _)| *key == name.as_bytes()).map(|(_, value)| value)
    }

    /// Every (name, value), in the host's order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().filter_map(|&(start, name_end, end)| {
            Some((self.bytes.get(start..name_end)?, self.bytes.get(name_end..end)?))
        })
    }
}

impl<N: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        let mut headers = Self::default();
        for (name, value) in pairs {
            headers.push(name.as_ref(), value.as_ref());
        }
        headers
    }
}

/// Both halves of the host, as one adapter usually provides them.
pub trait Host: Stream + Metrics {}
impl<T: Stream + Metrics> Host for T {}
