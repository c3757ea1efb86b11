//! What the roles need from the proxy, as two small traits. The cdylib
//! implements them with proxy-wasm host calls; tests implement them with maps.
//! Every call may fail: a failure degrades to `unknown` and is counted.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host call {call} failed: {status}")]
pub struct HostError {
    pub call: &'static str,
    pub status: String,
}

/// The header maps a role touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderMap {
    Request,
    Response,
    ResponseTrailers,
}

/// One HTTP stream as the proxy exposes it.
pub trait Stream {
    /// All headers of a map in one call (values as bytes: they may not be UTF-8).
    fn headers(&self, map: HeaderMap) -> Result<Vec<(String, Vec<u8>)>, HostError>;
    fn header(&self, map: HeaderMap, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn remove_header(&self, map: HeaderMap, name: &str) -> Result<(), HostError>;
    fn add_header(&self, map: HeaderMap, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// An Envoy attribute such as `["response", "code"]`; `None` when absent.
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Histogram,
}

/// The proxy's metric store.
pub trait Metrics {
    /// Defines a metric. Envoy allocates on every call, so callers cache ids.
    fn define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    fn increment(&self, id: u32, by: i64) -> Result<(), HostError>;
    fn record(&self, id: u32, value: u64) -> Result<(), HostError>;
}

/// Envoy encodes integer attributes as 8 little-endian bytes.
pub fn le_u64(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_le_bytes(array))
}

/// The value of `name` in a header list (names are lower case on the wire).
pub fn find_header<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_slice())
}

/// Both halves of the host, as one adapter usually provides them.
pub trait Host: Stream + Metrics {}
impl<T: Stream + Metrics> Host for T {}
