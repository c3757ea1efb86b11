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
    Gauge,
    Histogram,
}

/// The proxy's metric store.
pub trait Metrics {
    /// Defines a metric. Envoy allocates on every call, so callers cache ids.
    fn define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    fn increment(&self, id: u32, by: i64) -> Result<(), HostError>;
    /// Records a histogram sample, or sets a gauge.
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

/// Parses proxy-wasm's pair list (a u32 count, then (key size, value size)
/// u32 pairs, then each key and value followed by a NUL), as the host hands
/// over a header map. `None` when the sizes do not fit the buffer.
pub fn parse_header_pairs(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let count = word(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10));
    for n in 0..count {
        let sizes = 4 + n * 8;
        let (key_size, value_size) = (word(sizes)?, word(sizes + 4)?);
        let key = bytes.get(data..data.checked_add(key_size)?)?;
        data = data.checked_add(key_size)?.checked_add(1)?;
        let value = bytes.get(data..data.checked_add(value_size)?)?;
        data = data.checked_add(value_size)?.checked_add(1)?;
        pairs.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::parse_header_pairs;

    fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn header_pairs_round_trip_with_non_utf8_values() {
        let raw = serialize(&[(":status", b"200"), ("baggage", b"\xff\xfe")]);
        assert_eq!(
            parse_header_pairs(&raw),
            Some(vec![(":status".to_owned(), b"200".to_vec()), ("baggage".to_owned(), b"\xff\xfe".to_vec())])
        );
    }

    #[test]
    fn truncated_or_lying_header_pairs_are_refused() {
        let raw = serialize(&[("a", b"b")]);
        // Every cut loses part of a size, a key or a value (the final NUL is not needed).
        for cut in 1..raw.len() - 1 {
            assert_eq!(parse_header_pairs(&raw[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse_header_pairs(&u32::MAX.to_le_bytes()), None);
    }
}
