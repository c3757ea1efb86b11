//! Host-side state: contexts, properties, metrics, shared data, recorded effects,
//! failure injection and host-call counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::abi::{BufferType, LogLevel, MapType, MetricType, Pairs, Status, StreamType};
use crate::headers::HeaderMap;

/// Kind of a proxy-wasm context.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ContextKind {
    Root,
    Http,
    Stream,
}

impl ContextKind {
    pub fn name(self) -> &'static str {
        match self {
            ContextKind::Root => "root",
            ContextKind::Http => "http",
            ContextKind::Stream => "stream",
        }
    }
}

/// Which per-stream objects Envoy currently exposes to the module. Envoy only keeps a map or
/// buffer reachable while the callback that delivered it runs, or for longer if that
/// callback paused; `proxy_on_log` sees the final request/response headers and trailers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Live {
    pub request_headers: bool,
    pub request_trailers: bool,
    pub response_headers: bool,
    pub response_trailers: bool,
    pub request_body: bool,
    pub response_body: bool,
    pub downstream_data: bool,
    pub upstream_data: bool,
    pub buffering_request_body: bool,
    pub buffering_response_body: bool,
    pub access_log_phase: bool,
}

/// State of one context as the host sees it. Tests read (and may edit) it through
/// [`crate::Vm::context`] / [`crate::Vm::context_mut`].
#[derive(Clone, Debug)]
pub struct ContextState {
    pub id: u32,
    /// 0 for root contexts, else the root this context was created under.
    pub root_context_id: u32,
    /// The plugin `root_id` string (for HTTP/stream contexts: their root's).
    pub root_id: String,
    pub kind: ContextKind,
    pub request_headers: HeaderMap,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_trailers: HeaderMap,
    /// The request body buffer the module sees (the current chunk, or everything buffered
    /// since the module paused a body callback).
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub downstream_data: Vec<u8>,
    pub upstream_data: Vec<u8>,
    /// Per-context properties (path segments joined by `\0`): set by the test, and by the
    /// module's `proxy_set_property` (Envoy's per-stream filter state). They shadow the VM-wide ones.
    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Root contexts: last `proxy_set_tick_period_milliseconds` made by it or its children
    /// (Envoy attaches the timer to the root).
    pub tick_period_ms: Option<u32>,
    /// Last `proxy_send_local_response` of this context.
    pub local_response: Option<LocalResponse>,
    /// Root contexts: the plugin configuration handed to `proxy_on_configure`.
    pub plugin_configuration: Vec<u8>,
    /// Number of host calls per host function made while this context was the effective one.
    pub hostcalls: BTreeMap<&'static str, u64>,
    pub(crate) live: Live,
}

impl ContextState {
    pub(crate) fn new(id: u32, root_context_id: u32, root_id: String, kind: ContextKind) -> Self {
        Self {
            id,
            root_context_id,
            root_id,
            kind,
            request_headers: HeaderMap::new(),
            request_trailers: HeaderMap::new(),
            response_headers: HeaderMap::new(),
            response_trailers: HeaderMap::new(),
            request_body: Vec::new(),
            response_body: Vec::new(),
            downstream_data: Vec::new(),
            upstream_data: Vec::new(),
            properties: BTreeMap::new(),
            tick_period_ms: None,
            local_response: None,
            plugin_configuration: Vec::new(),
            hostcalls: BTreeMap::new(),
            live: Live::default(),
        }
    }

    /// Total number of host calls made while this context was the effective one.
    pub fn hostcall_total(&self) -> u64 {
        self.hostcalls.values().sum()
    }

    /// Map for reading (Envoy `getConstMap`): `None` when Envoy would have no map right now.
    pub(crate) fn const_map(&self, map: MapType) -> Option<&HeaderMap> {
        let live = &self.live;
        let (m, ok) = match map {
            MapType::HttpRequestHeaders => (&self.request_headers, live.request_headers || live.access_log_phase),
            MapType::HttpRequestTrailers => (&self.request_trailers, live.request_trailers && !live.access_log_phase),
            MapType::HttpResponseHeaders => (&self.response_headers, live.response_headers || live.access_log_phase),
            MapType::HttpResponseTrailers => (&self.response_trailers, live.response_trailers || live.access_log_phase),
            _ => return None,
        };
        ok.then_some(m)
    }

    /// Map for writing (Envoy `getMap`): only while the callback that delivered it is live.
    pub(crate) fn mut_map(&mut self, map: MapType) -> Option<&mut HeaderMap> {
        let live = &self.live;
        let (ok, m) = match map {
            MapType::HttpRequestHeaders => (live.request_headers, &mut self.request_headers),
            MapType::HttpRequestTrailers => (live.request_trailers, &mut self.request_trailers),
            MapType::HttpResponseHeaders => (live.response_headers, &mut self.response_headers),
            MapType::HttpResponseTrailers => (live.response_trailers, &mut self.response_trailers),
            _ => return None,
        };
        ok.then_some(m)
    }

    /// A body/data buffer and whether Envoy currently exposes it.
    pub(crate) fn buffer_mut(&mut self, buffer: BufferType) -> Option<(&mut Vec<u8>, bool)> {
        let live = &self.live;
        Some(match buffer {
            BufferType::HttpRequestBody => (&mut self.request_body, live.request_body),
            BufferType::HttpResponseBody => (&mut self.response_body, live.response_body),
            BufferType::DownstreamData => (&mut self.downstream_data, live.downstream_data),
            BufferType::UpstreamData => (&mut self.upstream_data, live.upstream_data),
            _ => return None,
        })
    }
}

/// A `proxy_send_local_response` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub context_id: u32,
    pub status_code: u32,
    pub details: Vec<u8>,
    pub body: Vec<u8>,
    pub headers: Pairs,
    /// -1 when the module sets no gRPC status (the Rust SDK's `send_http_response`).
    pub grpc_status: i32,
}

/// A header-map mutation made by the module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderOp {
    Add { key: Vec<u8>, value: Vec<u8> },
    Replace { key: Vec<u8>, value: Vec<u8> },
    Remove { key: Vec<u8> },
    SetPairs { pairs: Pairs },
}

/// Something the module did through the host, in call order. Every variant names the
/// context that was effective when it happened (0 = no context, e.g. `_initialize`).
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Log {
        context_id: u32,
        level: LogLevel,
        message: String,
    },
    HeaderMap {
        context_id: u32,
        map: MapType,
        op: HeaderOp,
    },
    BufferWrite {
        context_id: u32,
        buffer: BufferType,
        start: u32,
        length: u32,
        data: Vec<u8>,
    },
    PropertySet {
        context_id: u32,
        path: Vec<u8>,
        value: Vec<u8>,
        status: Status,
    },
    MetricDefined {
        context_id: u32,
        id: u32,
        metric_type: MetricType,
        name: String,
    },
    MetricIncremented {
        context_id: u32,
        id: u32,
        name: String,
        offset: i64,
        status: Status,
    },
    MetricRecorded {
        context_id: u32,
        id: u32,
        name: String,
        value: u64,
        status: Status,
    },
    SharedDataSet {
        context_id: u32,
        key: Vec<u8>,
        value: Vec<u8>,
        cas: u32,
        status: Status,
    },
    QueueEnqueued {
        context_id: u32,
        queue_id: u32,
        value: Vec<u8>,
    },
    ForeignCall {
        context_id: u32,
        name: String,
        args: Vec<u8>,
        status: Status,
    },
    LocalResponse(LocalResponse),
    StreamContinued {
        context_id: u32,
        stream: StreamType,
    },
    StreamClosed {
        context_id: u32,
        stream: StreamType,
    },
    TickPeriod {
        context_id: u32,
        period_ms: u32,
    },
    HttpCall {
        context_id: u32,
        upstream: Vec<u8>,
        headers: Pairs,
        body: Vec<u8>,
        trailers: Pairs,
        timeout_ms: u32,
    },
    Done {
        context_id: u32,
    },
    /// A host function the mock does not really implement was called.
    Unimplemented {
        context_id: u32,
        hostcall: &'static str,
    },
    /// A failure injected with [`Failure`] fired.
    InjectedFailure {
        context_id: u32,
        hostcall: &'static str,
        status: Status,
    },
    /// The module passed a pointer/length outside its memory (Envoy returns InvalidMemoryAccess).
    InvalidMemoryAccess {
        context_id: u32,
        hostcall: &'static str,
    },
}

/// Make a host call return an error status instead of doing its work.
///
/// ```
/// # use wasm_tests::{Failure, Status};
/// // Every proxy_get_property on request.path fails once:
/// let f = Failure::property(&["request", "path"], Status::InternalFailure).times(1);
/// // All proxy_define_metric calls fail:
/// let g = Failure::hostcall("proxy_define_metric", Status::BadArgument);
/// # let _ = (f, g);
/// ```
#[derive(Clone, Debug)]
pub struct Failure {
    pub hostcall: String,
    /// When set, only calls about this key fail: the property path (segments joined by `\0`),
    /// header name, shared-data key, metric name (define) or foreign-function name.
    pub key: Option<Vec<u8>>,
    pub status: Status,
    /// How many more times to fire (`None` = forever).
    pub remaining: Option<u32>,
}

impl Failure {
    /// Fail every call of host function `name` (e.g. `"proxy_get_header_map_value"`).
    pub fn hostcall(name: &str, status: Status) -> Self {
        Self { hostcall: name.to_string(), key: None, status, remaining: None }
    }

    /// Fail `proxy_get_property` for exactly this path.
    pub fn property(path: &[&str], status: Status) -> Self {
        Self::hostcall("proxy_get_property", status).key(crate::abi::property_path(path))
    }

    /// Restrict to calls about `key` (see [`Failure::key`]'s field doc).
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.key = Some(key.as_ref().to_vec());
        self
    }

    /// Fire only `n` times.
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n);
        self
    }
}

/// One metric as Envoy would hold it (keyed by type and name; defining it again returns a new
/// id for the same stat, as Envoy does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub metric_type: Option<MetricType>,
    /// Counter or gauge value (gauges may go below zero here; Envoy would wrap).
    pub value: i64,
    /// Every value recorded into a histogram.
    pub samples: Vec<u64>,
}

#[derive(Default)]
pub(crate) struct Metrics {
    pub list: Vec<Metric>,
    pub ids: BTreeMap<u32, usize>,
    next_counter: u32,
    next_gauge: u32,
    next_histogram: u32,
}

impl Metrics {
    /// Envoy's id scheme: the low 2 bits carry the type, ids step by 4.
    pub fn define(&mut self, ty: MetricType, name: &str) -> u32 {
        let idx = match self.list.iter().position(|m| m.metric_type == Some(ty) && m.name == name) {
            Some(i) => i,
            None => {
                self.list.push(Metric { name: name.to_string(), metric_type: Some(ty), ..Metric::default() });
                self.list.len() - 1
            }
        };
        let next = match ty {
            MetricType::Counter => &mut self.next_counter,
            MetricType::Gauge => &mut self.next_gauge,
            MetricType::Histogram => &mut self.next_histogram,
        };
        // First ids: counter 4, gauge 5, histogram 6; then +4 each.
        let id = next.wrapping_add(4).max(4 + ty as u32);
        *next = id;
        self.ids.insert(id, idx);
        id
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Metric> {
        let idx = *self.ids.get(&id)?;
        self.list.get_mut(idx)
    }
}

#[derive(Default)]
struct SharedInner {
    data: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
    queues: Vec<Queue>,
}

struct Queue {
    vm_id: Vec<u8>,
    name: Vec<u8>,
    items: VecDeque<Vec<u8>>,
}

/// Shared key/value data and shared queues (Envoy keeps them per `vm_id`, shared by all
/// worker VMs). Clone it into several [`crate::VmConfig`]s to model several workers.
#[derive(Clone, Default)]
pub struct SharedData(Arc<Mutex<SharedInner>>);

impl SharedData {
    fn lock(&self) -> MutexGuard<'_, SharedInner> {
        self.0.lock()
    }

    /// Value and CAS token of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<(Vec<u8>, u32)> {
        self.lock().data.get(key.as_ref()).cloned()
    }

    /// Envoy's CAS rules: `cas == 0` always writes; otherwise it must equal the current
    /// token of an existing key. Each write gets a fresh non-zero token.
    pub fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, cas: u32) -> Status {
        let mut inner = self.lock();
        let token = inner.next_cas.max(1);
        inner.next_cas = token.checked_add(1).unwrap_or(1);
        match inner.data.get_mut(key.as_ref()) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Status::CasMismatch;
                }
                *entry = (value.as_ref().to_vec(), token);
            }
            None => {
                inner.data.insert(key.as_ref().to_vec(), (value.as_ref().to_vec(), token));
            }
        }
        Status::Ok
    }

    pub(crate) fn register_queue(&self, vm_id: &[u8], name: &[u8]) -> u32 {
        let mut inner = self.lock();
        if let Some(i) = inner.queues.iter().position(|q| q.vm_id == vm_id && q.name == name) {
            return i as u32 + 1;
        }
        inner.queues.push(Queue { vm_id: vm_id.to_vec(), name: name.to_vec(), items: VecDeque::new() });
        inner.queues.len() as u32
    }

    pub(crate) fn resolve_queue(&self, vm_id: &[u8], name: &[u8]) -> Option<u32> {
        let inner = self.lock();
        inner.queues.iter().position(|q| q.vm_id == vm_id && q.name == name).map(|i| i as u32 + 1)
    }

    pub(crate) fn enqueue(&self, id: u32, value: Vec<u8>) -> Status {
        let mut inner = self.lock();
        match inner.queues.get_mut((id as usize).wrapping_sub(1)) {
            Some(q) => {
                q.items.push_back(value);
                Status::Ok
            }
            None => Status::NotFound,
        }
    }

    pub(crate) fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut inner = self.lock();
        match inner.queues.get_mut((id as usize).wrapping_sub(1)) {
            Some(q) => q.items.pop_front().ok_or(Status::Empty),
            None => Err(Status::NotFound),
        }
    }
}

/// A host-side implementation of a foreign function (`proxy_call_foreign_function`).
/// Return `Ok(Some(bytes))` to hand bytes back, `Ok(None)` for no result, `Err(status)` to fail.
pub type ForeignFunction = Box<dyn FnMut(&[u8]) -> Result<Option<Vec<u8>>, Status> + Send>;

/// Everything the host functions read and write. Owned by the wasmtime `Store`.
pub(crate) struct HostState {
    pub vm_id: String,
    pub log_level: LogLevel,
    pub env: Vec<(String, String)>,
    pub vm_configuration: Vec<u8>,
    /// Set only while `proxy_on_configure` runs (Envoy exposes it only then).
    pub plugin_configuration: Option<Vec<u8>>,
    pub contexts: BTreeMap<u32, ContextState>,
    /// Context of the callback in progress (0 = the VM itself).
    pub current: u32,
    /// Set by `proxy_set_effective_context` for the rest of the callback.
    pub effective: Option<u32>,
    /// True while the VM starts: Envoy then allows only a few host calls.
    pub restricted: bool,
    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
    pub effects: Vec<Effect>,
    pub metrics: Metrics,
    pub shared: SharedData,
    pub foreign: HashMap<String, ForeignFunction>,
    pub failures: Vec<Failure>,
    /// Host calls made while no known context was effective.
    pub vm_hostcalls: BTreeMap<&'static str, u64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Text the module printed to stderr or logged at Critical during the current callback
    /// (where a Rust panic message ends up).
    pub panic_text: Vec<String>,
    pub realtime_ns: u64,
    pub monotonic_ns: u64,
    pub rng: u64,
    /// Root contexts whose `proxy_on_done` returned false (waiting for `proxy_done`).
    pub pending_done: Vec<u32>,
}

impl HostState {
    /// Context host calls act on: the effective one if set, else the current one.
    pub fn active_id(&self) -> u32 {
        self.effective.unwrap_or(self.current)
    }

    pub fn active(&mut self) -> Option<&mut ContextState> {
        let id = self.active_id();
        self.contexts.get_mut(&id)
    }

    pub fn record(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    pub fn count(&mut self, hostcall: &'static str) {
        let id = self.active_id();
        let counts = match self.contexts.get_mut(&id) {
            Some(c) => &mut c.hostcalls,
            None => &mut self.vm_hostcalls,
        };
        *counts.entry(hostcall).or_insert(0) += 1;
    }

    /// Fires an injected failure for `hostcall` (and `key`, when given) if one matches.
    pub fn injected(&mut self, hostcall: &'static str, key: Option<&[u8]>) -> Option<Status> {
        let rule = self
            .failures
            .iter_mut()
            .find(|f| f.hostcall == hostcall && f.key.as_deref() == key && f.remaining != Some(0))?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        let status = rule.status;
        let context_id = self.active_id();
        self.record(Effect::InjectedFailure { context_id, hostcall, status });
        Some(status)
    }

    /// Property lookup as the module sees it from context `id`: the context's own values,
    /// then VM-wide ones, then Envoy's built-ins (`plugin_root_id`, `plugin_name`, `plugin_vm_id`).
    pub fn property(&self, id: u32, path: &[u8]) -> Option<Vec<u8>> {
        let ctx = self.contexts.get(&id);
        if let Some(v) = ctx.and_then(|c| c.properties.get(path)) {
            return Some(v.clone());
        }
        if let Some(v) = self.properties.get(path) {
            return Some(v.clone());
        }
        match path {
            b"plugin_root_id" | b"plugin_name" => ctx.map(|c| c.root_id.as_bytes().to_vec()),
            b"plugin_vm_id" => Some(self.vm_id.as_bytes().to_vec()),
            _ => None,
        }
    }

    /// Deterministic random bytes (splitmix64), so tests are reproducible.
    pub fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_cas() {
        let s = SharedData::default();
        assert_eq!(s.set("k", "a", 0), Status::Ok);
        let (_, cas) = s.get("k").unwrap();
        assert_ne!(cas, 0);
        assert_eq!(s.set("k", "b", cas + 1), Status::CasMismatch);
        assert_eq!(s.set("k", "b", cas), Status::Ok);
        let (v, cas2) = s.get("k").unwrap();
        assert_eq!((v.as_slice(), cas2 != cas), (&b"b"[..], true));
        assert_eq!(s.set("k", "c", cas), Status::CasMismatch, "stale token");
        // a non-zero CAS on a missing key just creates it (Envoy behaviour)
        assert_eq!(s.set("new", "x", 12345), Status::Ok);
    }

    #[test]
    fn metric_ids_follow_envoy_scheme() {
        let mut m = Metrics::default();
        assert_eq!(m.define(MetricType::Counter, "a"), 4);
        assert_eq!(m.define(MetricType::Gauge, "g"), 5);
        assert_eq!(m.define(MetricType::Histogram, "h"), 6);
        assert_eq!(m.define(MetricType::Counter, "a"), 8);
        assert_eq!(m.list.len(), 3, "same name+type is one stat");
    }
}
