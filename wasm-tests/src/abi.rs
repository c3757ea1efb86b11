//! Proxy-Wasm ABI 0.2.1 enums and the wire formats shared by host and module.
//!
//! Numeric values follow the proxy-wasm spec (and what Envoy 1.40 uses).

/// `WasmResult` status codes returned by every host function.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    BadExpression = 5,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    ResultMismatch = 9,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

/// Log levels of `proxy_log` / `proxy_get_log_level`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

/// Header/trailer/metadata maps addressed by the `proxy_*_header_map_*` calls.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MapType {
    HttpRequestHeaders = 0,
    HttpRequestTrailers = 1,
    HttpResponseHeaders = 2,
    HttpResponseTrailers = 3,
    GrpcReceiveInitialMetadata = 4,
    GrpcReceiveTrailingMetadata = 5,
    HttpCallResponseHeaders = 6,
    HttpCallResponseTrailers = 7,
}

impl MapType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequestHeaders,
            1 => Self::HttpRequestTrailers,
            2 => Self::HttpResponseHeaders,
            3 => Self::HttpResponseTrailers,
            4 => Self::GrpcReceiveInitialMetadata,
            5 => Self::GrpcReceiveTrailingMetadata,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Buffers addressed by `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum BufferType {
    HttpRequestBody = 0,
    HttpResponseBody = 1,
    DownstreamData = 2,
    UpstreamData = 3,
    HttpCallResponseBody = 4,
    GrpcReceiveBuffer = 5,
    VmConfiguration = 6,
    PluginConfiguration = 7,
    CallData = 8,
}

impl BufferType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequestBody,
            1 => Self::HttpResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::HttpCallResponseBody,
            5 => Self::GrpcReceiveBuffer,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::CallData,
            _ => return None,
        })
    }
}

/// Metric kinds of `proxy_define_metric`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl MetricType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// Streams addressed by `proxy_continue_stream` / `proxy_close_stream`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum StreamType {
    HttpRequest = 0,
    HttpResponse = 1,
    Downstream = 2,
    Upstream = 3,
}

impl StreamType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequest,
            1 => Self::HttpResponse,
            2 => Self::Downstream,
            3 => Self::Upstream,
            _ => return None,
        })
    }
}

/// Who closed a connection (argument of the `*_connection_close` callbacks).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PeerType {
    Unknown = 0,
    Local = 1,
    Remote = 2,
}

/// What a filter callback returned. `Continue` is 0 and `Pause` (StopIteration) is 1 in
/// every callback; anything else is kept verbatim.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Continue,
    Pause,
    Other(u32),
}

impl From<u32> for Action {
    fn from(v: u32) -> Self {
        match v {
            0 => Action::Continue,
            1 => Action::Pause,
            n => Action::Other(n),
        }
    }
}

/// A list of (key, value) byte pairs, as carried by header maps on the wire.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Serializes pairs in the proxy-wasm map format:
/// `u32 count`, then `count` × (`u32 key_len`, `u32 value_len`), then for every pair
/// `key \0 value \0`. All integers are little endian. Empty input gives 4 zero bytes
/// (the host itself returns a null pointer for an empty map instead, see `hostcalls`).
pub fn serialize_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let data: usize = pairs.iter().map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses the proxy-wasm map format.
///
/// Like Envoy, a buffer shorter than the count, or whose size table does not fit, is an
/// empty map. Unlike Envoy (which does not check), string data running past the end of the
/// buffer is an error (`None`) instead of an out-of-bounds read.
pub fn deserialize_pairs(buf: &[u8]) -> Option<Pairs> {
    let read_u32 = |at: usize| -> Option<usize> {
        let b: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let Some(count) = read_u32(0) else {
        return Some(Vec::new());
    };
    let table_end = count.checked_mul(8).and_then(|n| n.checked_add(4));
    match table_end {
        Some(end) if end <= buf.len() => {}
        _ => return Some(Vec::new()),
    }
    let mut pos = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let klen = read_u32(4 + i * 8)?;
        let vlen = read_u32(8 + i * 8)?;
        let key = buf.get(pos..pos.checked_add(klen)?)?.to_vec();
        pos = pos.checked_add(klen + 1)?;
        let value = buf.get(pos..pos.checked_add(vlen)?)?.to_vec();
        pos = pos.checked_add(vlen + 1)?;
        out.push((key, value));
    }
    Some(out)
}

/// Joins property path segments with `\0`, as the SDK does before `proxy_get_property`.
pub fn property_path<S: AsRef<[u8]>>(segments: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(s.as_ref());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_with_binary_values() {
        let pairs: Pairs = vec![
            (b":path".to_vec(), b"/".to_vec()),
            (b"x-bin".to_vec(), vec![0xff, 0x00, 0x80]),
            (b"empty".to_vec(), vec![]),
        ];
        let wire = serialize_pairs(&pairs);
        assert_eq!(&wire[0..4], &3u32.to_le_bytes());
        assert_eq!(&wire[4..8], &5u32.to_le_bytes());
        assert_eq!(&wire[8..12], &1u32.to_le_bytes());
        assert_eq!(&wire[28..35], b":path\0/");
        assert_eq!(deserialize_pairs(&wire).unwrap(), pairs);
    }

    #[test]
    fn malformed_pairs() {
        assert_eq!(deserialize_pairs(&[]).unwrap(), vec![]);
        // count says 5 pairs but no size table: empty, like Envoy.
        assert_eq!(deserialize_pairs(&5u32.to_le_bytes()).unwrap(), vec![]);
        // size table claims 100-byte key that is not there: rejected.
        let mut bad = 1u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&100u32.to_le_bytes());
        bad.extend_from_slice(&0u32.to_le_bytes());
        bad.extend_from_slice(b"abc\0\0");
        assert_eq!(deserialize_pairs(&bad), None);
    }

    #[test]
    fn property_path_joins_with_nul() {
        assert_eq!(property_path(&["a", "b", "c"]), b"a\0b\0c".to_vec());
        assert_eq!(property_path::<&str>(&[]), Vec::<u8>::new());
    }
}
