//! What Envoy 1.40 does behind each callback, in safe code: header maps that exist only
//! from their phase on, attributes, typed filter state, metrics defined with label names
//! at config creation and frozen after it. Every refusal Envoy would answer (false, 0,
//! a metrics result) is answered the same way and recorded, and every misuse Envoy
//! would not survive (a pointer it never issued, a stream already destroyed, a callback
//! outside any hook of that stream) is recorded, so a test fails on either.
//!
//! The state is per thread: one test thread is one Envoy worker, as the module's own
//! per-worker state is thread-local.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::{HeaderMap, HeaderOp, MapKind, Series};

/// `envoy_dynamic_module_type_metrics_result`.
pub const SUCCESS: u32 = 0;
pub const METRIC_NOT_FOUND: u32 = 1;
pub const INVALID_LABELS: u32 = 2;
pub const FROZEN: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// The hooks of one stream, in Envoy's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    FilterNew,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    StreamComplete,
}

/// An attribute value: Envoy answers `get_attribute_int` only for integer attributes and
/// `get_attribute_string` only for string ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    Int(u64),
    Str(Vec<u8>),
}

struct MetricDef {
    name: String,
    label_names: Vec<String>,
}

struct ConfigState {
    /// The stats scope the config's metrics land in: "" for the root scope; a cluster's
    /// upstream filters get `cluster.<name>.`.
    scope: String,
    /// Envoy's `stat_creation_frozen_`: set once `config_new` returns.
    frozen: bool,
    defs: HashMap<MetricKind, Vec<MetricDef>>,
    /// Every definition in call order: kind, name, label names.
    defined: Vec<(MetricKind, String, Vec<String>)>,
}

struct StreamState {
    config: usize,
    maps: HashMap<MapKind, HeaderMap>,
    attributes: HashMap<u32, Attribute>,
    filter_state: HashMap<String, Vec<u8>>,
    hook: Option<Hook>,
    destroyed: bool,
    ops: Vec<(MapKind, HeaderOp)>,
    /// Values the module may still point at until the hook ends (removed or replaced).
    graveyard: Vec<HeaderMap>,
}

/// (config, kind, id, label values): what one metric call names.
type CallKey = (usize, MetricKind, usize, Vec<Vec<u8>>);

/// (scope, kind, name, labels).
type SeriesKey = (String, MetricKind, String, Vec<(String, String)>);

#[derive(Default)]
struct Worker {
    configs: HashMap<usize, ConfigState>,
    streams: HashMap<usize, StreamState>,
    next_token: usize,
    series: Vec<Series>,
    /// Where each series is in `series`.
    series_index: HashMap<SeriesKey, usize>,
    /// The same, by what a metric call passes: (config, kind, id, label values).
    by_values: HashMap<CallKey, usize>,
    logs: Vec<(u32, String)>,
    misuses: Vec<String>,
    refusals: Vec<String>,
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

fn with<T>(fallback: T, f: impl FnOnce(&mut Worker) -> T) -> T {
    WORKER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => match slot.as_mut() {
            Some(worker) => f(worker),
            None => fallback,
        },
        // A callback re-entered while the host held the state: the host's bug, made visible.
        Err(_) => fallback,
    })
}

// ---- the host side (lib.rs) --------------------------------------------------------------

pub fn start_worker() {
    WORKER.with(|cell| {
        let mut slot = cell.borrow_mut();
        assert!(slot.is_none(), "one mocked Envoy worker per test thread (the module's worker state is thread-local)");
        *slot = Some(Worker { next_token: 0x1000, ..Worker::default() });
    });
}

pub fn stop_worker() {
    WORKER.with(|cell| cell.borrow_mut().take());
}

fn token(worker: &mut Worker) -> usize {
    worker.next_token += 0x10;
    worker.next_token
}

pub fn new_config(scope: &str) -> usize {
    with(0, |w| {
        let token = token(w);
        w.configs.insert(
            token,
            ConfigState { scope: scope.to_string(), frozen: false, defs: HashMap::new(), defined: Vec::new() },
        );
        token
    })
}

pub fn freeze_config(config: usize) {
    with((), |w| {
        if let Some(config) = w.configs.get_mut(&config) {
            config.frozen = true;
        }
    });
}

pub fn new_stream(config: usize, attributes: Vec<(u32, Attribute)>) -> usize {
    with(0, |w| {
        let token = token(w);
        w.streams.insert(
            token,
            StreamState {
                config,
                maps: HashMap::new(),
                attributes: attributes.into_iter().collect(),
                filter_state: HashMap::new(),
                hook: None,
                destroyed: false,
                ops: Vec::new(),
                graveyard: Vec::new(),
            },
        );
        token
    })
}

/// Enters a hook: its header map becomes available (and stays so, as in Envoy).
pub fn enter(stream: usize, hook: Hook, map: Option<(MapKind, HeaderMap)>) {
    with((), |w| {
        if let Some(state) = w.streams.get_mut(&stream) {
            state.hook = Some(hook);
            if let Some((kind, map)) = map {
                state.maps.insert(kind, map);
            }
        }
    });
}

pub fn leave(stream: usize) {
    with((), |w| {
        if let Some(state) = w.streams.get_mut(&stream) {
            state.hook = None;
            state.graveyard.clear();
        }
    });
}

pub fn destroyed(stream: usize) {
    with((), |w| {
        if let Some(state) = w.streams.get_mut(&stream) {
            state.destroyed = true;
            state.hook = None;
            // Only what a test may still ask about a gone stream (its header changes) is kept.
            state.maps.clear();
            state.attributes.clear();
            state.filter_state.clear();
        }
    });
}

pub fn set_attribute(stream: usize, id: u32, value: Attribute) {
    with((), |w| {
        if let Some(state) = w.streams.get_mut(&stream) {
            state.attributes.insert(id, value);
        }
    });
}

pub fn set_filter_state(stream: usize, key: &str, value: Vec<u8>) {
    with((), |w| {
        if let Some(state) = w.streams.get_mut(&stream) {
            state.filter_state.insert(key.to_string(), value);
        }
    });
}

pub fn map(stream: usize, kind: MapKind) -> Option<HeaderMap> {
    with(None, |w| w.streams.get(&stream).and_then(|s| s.maps.get(&kind).cloned()))
}

pub fn ops(stream: usize, kind: MapKind) -> Vec<HeaderOp> {
    with(Vec::new(), |w| {
        w.streams
            .get(&stream)
            .map(|s| s.ops.iter().filter(|(k, _)| *k == kind).map(|(_, op)| op.clone()).collect())
            .unwrap_or_default()
    })
}

pub fn definitions(config: usize) -> Vec<(MetricKind, String, Vec<String>)> {
    with(Vec::new(), |w| w.configs.get(&config).map(|c| c.defined.clone()).unwrap_or_default())
}

pub fn series() -> Vec<Series> {
    with(Vec::new(), |w| w.series.clone())
}

pub fn logs() -> Vec<(u32, String)> {
    with(Vec::new(), |w| w.logs.clone())
}

pub fn misuses() -> Vec<String> {
    with(Vec::new(), |w| w.misuses.clone())
}

pub fn refusals() -> Vec<String> {
    with(Vec::new(), |w| w.refusals.clone())
}

// ---- the module side (ffi.rs's callbacks) ------------------------------------------------

pub fn log(level: u32, message: &[u8]) {
    let message = String::from_utf8_lossy(message).into_owned();
    let logged = with(false, |w| {
        w.logs.push((level, message.clone()));
        true
    });
    if !logged {
        // Program init runs before any worker.
        eprintln!("[dynamic_modules] level {level}: {message}");
    }
}

pub fn misuse(token: usize, what: &str) {
    with((), |w| w.misuses.push(format!("{what} (pointer {token:#x})")));
}

/// The stream behind `token` if the module may use it now: a stream the host issued,
/// not destroyed, inside one of its hooks. Anything else is recorded.
fn live<'w>(w: &'w mut Worker, token: usize, call: &str) -> Option<&'w mut StreamState> {
    let problem = match w.streams.get(&token) {
        None => Some("a stream pointer Envoy never issued (or a config pointer)"),
        Some(s) if s.destroyed => Some("a destroyed stream"),
        Some(s) if s.hook.is_none() => Some("a stream outside any of its hooks"),
        Some(_) => None,
    };
    if let Some(problem) = problem {
        w.misuses.push(format!("{call} on {problem} ({token:#x})"));
        return None;
    }
    w.streams.get_mut(&token)
}

fn map_kind(w: &mut Worker, raw: u32, call: &str) -> Option<MapKind> {
    let kind = MapKind::from_raw(raw);
    if kind.is_none() {
        w.misuses.push(format!("{call}: header type {raw} does not exist"));
    }
    kind
}

/// The map if it exists in this phase; a map not there yet is refused (and recorded).
fn available(state: &mut StreamState, kind: MapKind) -> Result<&mut HeaderMap, String> {
    let hook = state.hook;
    state.maps.get_mut(&kind).ok_or_else(|| format!("{kind:?} is not available in {hook:?}"))
}

type Bytes = (*const u8, usize);

fn raw(bytes: &[u8]) -> Bytes {
    (bytes.as_ptr(), bytes.len())
}

pub fn headers_size(token: usize, kind: u32) -> usize {
    with(0, |w| {
        let Some(kind) = map_kind(w, kind, "http_get_headers_size") else { return 0 };
        let Some(state) = live(w, token, "http_get_headers_size") else { return 0 };
        match available(state, kind) {
            Ok(map) => map.len(),
            Err(why) => {
                w.refusals.push(format!("http_get_headers_size: {why}"));
                0
            }
        }
    })
}

pub fn headers(token: usize, kind: u32) -> Option<Vec<(Bytes, Bytes)>> {
    with(None, |w| {
        let kind = map_kind(w, kind, "http_get_headers")?;
        let state = live(w, token, "http_get_headers")?;
        match available(state, kind) {
            Ok(map) => Some(map.entries().iter().map(|(k, v)| (raw(k), raw(v))).collect()),
            Err(why) => {
                w.refusals.push(format!("http_get_headers: {why}"));
                None
            }
        }
    })
}

pub fn header(token: usize, kind: u32, key: &[u8], index: usize) -> (Option<Bytes>, usize) {
    with((None, 0), |w| {
        let Some(kind) = map_kind(w, kind, "http_get_header") else { return (None, 0) };
        let Some(state) = live(w, token, "http_get_header") else { return (None, 0) };
        match available(state, kind) {
            Ok(map) => {
                let values = map.get_all_bytes(key);
                (values.get(index).map(|v| raw(v)), values.len())
            }
            Err(why) => {
                w.refusals.push(format!("http_get_header: {why}"));
                (None, 0)
            }
        }
    })
}

pub fn add_header(token: usize, kind: u32, key: &[u8], value: &[u8]) -> bool {
    with(false, |w| {
        let Some(kind) = map_kind(w, kind, "http_add_header") else { return false };
        let Some(state) = live(w, token, "http_add_header") else { return false };
        match available(state, kind) {
            Ok(map) => {
                map.add(String::from_utf8_lossy(key).as_ref(), value);
                state.ops.push((kind, HeaderOp::Add { key: key.to_vec(), value: value.to_vec() }));
                true
            }
            Err(why) => {
                w.refusals.push(format!("http_add_header: {why}"));
                false
            }
        }
    })
}

pub fn set_header(token: usize, kind: u32, key: &[u8], value: Option<&[u8]>) -> bool {
    with(false, |w| {
        let Some(kind) = map_kind(w, kind, "http_set_header") else { return false };
        let Some(state) = live(w, token, "http_set_header") else { return false };
        let name = String::from_utf8_lossy(key).into_owned();
        match available(state, kind) {
            Ok(map) => {
                // The old values may still be pointed at by the module until the hook ends.
                let before = map.clone();
                map.remove(&name);
                let op = match value {
                    Some(value) => {
                        map.add(&name, value);
                        HeaderOp::Replace { key: key.to_vec(), value: value.to_vec() }
                    }
                    None => HeaderOp::Remove { key: key.to_vec() },
                };
                state.graveyard.push(before);
                state.ops.push((kind, op));
                true
            }
            Err(why) => {
                w.refusals.push(format!("http_set_header: {why}"));
                false
            }
        }
    })
}

pub fn attribute_int(token: usize, id: u32) -> Option<u64> {
    with(None, |w| match live(w, token, "get_attribute_int")?.attributes.get(&id) {
        Some(Attribute::Int(value)) => Some(*value),
        _ => None,
    })
}

pub fn attribute_string(token: usize, id: u32) -> Option<Bytes> {
    with(None, |w| match live(w, token, "get_attribute_string")?.attributes.get(&id) {
        Some(Attribute::Str(value)) => Some(raw(value)),
        _ => None,
    })
}

pub fn filter_state(token: usize, key: &[u8]) -> Option<Bytes> {
    with(None, |w| {
        let key = String::from_utf8_lossy(key).into_owned();
        live(w, token, "get_filter_state_typed")?.filter_state.get(&key).map(|v| raw(v))
    })
}

pub fn define(config: usize, kind: MetricKind, name: &[u8], label_names: Vec<Vec<u8>>) -> Result<usize, u32> {
    with(Err(METRIC_NOT_FOUND), |w| {
        let name = String::from_utf8_lossy(name).into_owned();
        let Some(state) = w.configs.get_mut(&config) else {
            w.misuses.push(format!("define {name}: a config pointer Envoy never issued ({config:#x})"));
            return Err(METRIC_NOT_FOUND);
        };
        if state.frozen {
            w.refusals.push(format!("define {name}: Frozen (the config's creation is over)"));
            return Err(FROZEN);
        }
        let label_names: Vec<String> = label_names.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
        state.defined.push((kind, name.clone(), label_names.clone()));
        let defs = state.defs.entry(kind).or_default();
        defs.push(MetricDef { name, label_names });
        Ok(defs.len() - 1)
    })
}

pub fn emit(token: usize, kind: MetricKind, id: usize, values: Vec<Vec<u8>>, value: u64) -> u32 {
    with(METRIC_NOT_FOUND, |w| {
        let Some(stream) = live(w, token, "metric") else { return METRIC_NOT_FOUND };
        let call = || format!("{kind:?} id {id}");
        let config_token = stream.config;
        let config = config_token;
        let Some(config) = w.configs.get(&config) else { return METRIC_NOT_FOUND };
        let Some(def) = config.defs.get(&kind).and_then(|defs| defs.get(id)) else {
            w.refusals.push(format!("{}: MetricNotFound", call()));
            return METRIC_NOT_FOUND;
        };
        if def.label_names.len() != values.len() {
            w.refusals.push(format!(
                "{} ({}): InvalidLabels, {} values for {} label names",
                call(),
                def.name,
                values.len(),
                def.label_names.len()
            ));
            return INVALID_LABELS;
        }
        let fast_key = (config_token, kind, id, values);
        let at = match w.by_values.get(&fast_key) {
            Some(at) => *at,
            None => {
                let labels: Vec<(String, String)> = def
                    .label_names
                    .iter()
                    .cloned()
                    .zip(fast_key.3.iter().map(|v| String::from_utf8_lossy(v).into_owned()))
                    .collect();
                let key = (config.scope.clone(), kind, def.name.clone(), labels);
                let at = match w.series_index.get(&key) {
                    Some(at) => *at,
                    None => {
                        let (scope, kind, name, labels) = key.clone();
                        w.series.push(Series { scope, kind, name, labels, value: 0, samples: Vec::new() });
                        w.series_index.insert(key, w.series.len() - 1);
                        w.series.len() - 1
                    }
                };
                w.by_values.insert(fast_key, at);
                at
            }
        };
        let Some(series) = w.series.get_mut(at) else { return METRIC_NOT_FOUND };
        match kind {
            MetricKind::Counter => series.value += value,
            MetricKind::Gauge => series.value = value,
            MetricKind::Histogram => series.samples.push(value),
        }
        SUCCESS
    })
}
