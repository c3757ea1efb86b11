//! A mocked Envoy 1.40 host of the dynamic-module ABI (`v0.2.0`), for testing the built
//! `libwaypoint_native.so` without Envoy.
//!
//! The test executable exports every `envoy_dynamic_module_callback_*` the module imports
//! ([`ffi`], `build.rs`: `-rdynamic`), dlopens the module and drives its hooks in Envoy's
//! order: program init (the ABI version), filter config new (metric definitions, frozen
//! after it), filter new per stream, request/response headers, bodies, trailers, stream
//! complete, destroy. Envoy's answers are strict ([`host`]): a header map not there yet
//! in a phase is refused, a metric call with the wrong number of label values is
//! InvalidLabels, an unknown id MetricNotFound; refusals and misuses are recorded and
//! [`Envoy::assert_healthy`] fails a test on any, or on an error log (a caught panic is one).
//!
//! ```ignore
//! let envoy = Envoy::start();
//! let config = envoy.filter_config("stats", br#"{...}"#, "").unwrap();
//! let mut stream = envoy.stream(&config, vec![(attribute::CONNECTION_ID, Attribute::Int(7))]);
//! stream.request_headers(HeaderMap::from_pairs([(":method", "GET")]), true);
//! stream.response_headers(HeaderMap::from_pairs([(":status", "200")]), true);
//! stream.complete();
//! stream.destroy();
//! envoy.assert_healthy();
//! ```

// Test support: a failed expectation is a panic, as in a test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::marker::PhantomData;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::OnceLock;

mod ffi;
mod host;

pub use host::{Attribute, Hook, MetricKind};

/// The ABI version Envoy 1.40 accepts from program init.
pub const ABI_VERSION: &str = "v0.2.0";

/// Ids of `envoy_dynamic_module_type_attribute_id` (their position in Envoy 1.40's enum).
pub mod attribute {
    pub const REQUEST_DURATION: u32 = 12;
    pub const REQUEST_TOTAL_SIZE: u32 = 14;
    pub const RESPONSE_FLAGS: u32 = 17;
    pub const RESPONSE_TOTAL_SIZE: u32 = 22;
    pub const CONNECTION_ID: u32 = 28;
    pub const UPSTREAM_URI_SAN_PEER_CERTIFICATE: u32 = 49;
    pub const XDS_CLUSTER_NAME: u32 = 57;
}

/// `envoy_dynamic_module_type_http_header_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapKind {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
}

impl MapKind {
    fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::RequestHeaders),
            1 => Some(Self::RequestTrailers),
            2 => Some(Self::ResponseHeaders),
            3 => Some(Self::ResponseTrailers),
            _ => None,
        }
    }
}

/// A header map: ordered, names lowercase, repeated names allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HeaderMap {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut map = Self::default();
        for (name, value) in pairs {
            map.add(name, value);
        }
        map
    }

    pub fn add(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.entries.push((name.to_ascii_lowercase().into_bytes(), value.as_ref().to_vec()));
    }

    /// Replaces every value of `name` with one.
    pub fn replace(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.remove(name);
        self.add(name, value);
    }

    pub fn remove(&mut self, name: &str) {
        let name = name.to_ascii_lowercase().into_bytes();
        self.entries.retain(|(k, _)| *k != name);
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_all(name).into_iter().next()
    }

    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn get_all(&self, name: &str) -> Vec<&[u8]> {
        self.get_all_bytes(name.as_bytes())
    }

    fn get_all_bytes(&self, name: &[u8]) -> Vec<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.entries.iter().filter(|(k, _)| *k == name).map(|(_, v)| v.as_slice()).collect()
    }

    pub fn entries(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A change the module made to a header map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    Add { key: Vec<u8>, value: Vec<u8> },
    Replace { key: Vec<u8>, value: Vec<u8> },
    Remove { key: Vec<u8> },
}

/// One series Envoy holds: scope ("" is the root), metric name as defined, label names
/// as defined with the values the module passed, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub scope: String,
    pub kind: MetricKind,
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// A counter's sum or a gauge's last value.
    pub value: u64,
    /// A histogram's recorded values.
    pub samples: Vec<u64>,
}

// ---- the module ----------------------------------------------------------------------------

fn module_path() -> PathBuf {
    match std::env::var_os("WAYPOINT_NATIVE_SO") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/libwaypoint_native.so"),
    }
}

/// The module, loaded and program-initialised once per process, as Envoy does.
fn module() -> &'static ffi::Module {
    static MODULE: OnceLock<ffi::Module> = OnceLock::new();
    MODULE.get_or_init(|| {
        let path = module_path();
        assert!(
            path.is_file(),
            "the native module is not built: {} does not exist.\n\
             Build it with `cargo build --release -p waypoint-native` \
             (or `make build`, which copies it to dist/), or point WAYPOINT_NATIVE_SO at a built libwaypoint_native.so.",
            path.display()
        );
        let module = ffi::Module::load(&path).unwrap_or_else(|e| panic!("cannot load the native module: {e}"));
        let version = module.program_init();
        assert_eq!(
            version.as_deref(),
            Some(ABI_VERSION),
            "program init must return the ABI version Envoy 1.40 accepts (null refuses to load)"
        );
        module
    })
}

/// One Envoy worker (one per test thread): its filter configs, streams and stats.
pub struct Envoy {
    /// The state is the thread's: the handle must stay on it.
    _thread: PhantomData<*const ()>,
}

impl Envoy {
    pub fn start() -> Self {
        module();
        host::start_worker();
        Self { _thread: PhantomData }
    }

    /// Filter config new with `name` and `config`; its metrics land in `scope` ("" for the
    /// root scope, `cluster.<name>.` for a cluster's upstream filters). `None`: rejected.
    pub fn filter_config(&self, name: &str, config: &[u8], scope: &str) -> Option<Rc<FilterConfig>> {
        let token = host::new_config(scope);
        let created = module().config_new(token, name.as_bytes(), config);
        // Envoy's `stat_creation_frozen_`: no definitions once the config exists.
        host::freeze_config(token);
        created.map(|module| Rc::new(FilterConfig { module, token }))
    }

    /// Filter new on a stream with these attributes (more can be set later).
    pub fn stream(&self, config: &Rc<FilterConfig>, attributes: Vec<(u32, Attribute)>) -> HttpStream {
        let token = host::new_stream(config.token, attributes);
        host::enter(token, Hook::FilterNew, None);
        let module = module().filter_new(config.module, token);
        host::leave(token);
        HttpStream { token, module, _config: Rc::clone(config), completed: false, destroyed: false }
    }

    /// Every series in the root scope, in the order Envoy first saw them.
    pub fn series(&self) -> Vec<Series> {
        host::series().into_iter().filter(|s| s.scope.is_empty()).collect()
    }

    /// The module's changes to one map of stream `stream` (see [`HttpStream::id`]), also
    /// after the stream is gone.
    pub fn header_ops(&self, stream: usize, kind: MapKind) -> Vec<HeaderOp> {
        host::ops(stream, kind)
    }

    /// The metrics a filter config defined at its creation, in call order: kind, name, label names.
    pub fn definitions(&self, config: &FilterConfig) -> Vec<(MetricKind, String, Vec<String>)> {
        host::definitions(config.token)
    }

    /// Every series, any scope.
    pub fn all_series(&self) -> Vec<Series> {
        host::series()
    }

    /// What the module logged, (level, message); Error is 4.
    pub fn logs(&self) -> Vec<(u32, String)> {
        host::logs()
    }

    pub fn error_logs(&self) -> Vec<String> {
        self.logs().into_iter().filter(|(level, _)| *level >= 4).map(|(_, m)| m).collect()
    }

    /// Calls Envoy answered with a refusal (a map not available, a metrics result).
    pub fn refusals(&self) -> Vec<String> {
        host::refusals()
    }

    /// ABI misuse Envoy would not survive (foreign or stale pointers, out-of-hook calls).
    pub fn misuses(&self) -> Vec<String> {
        host::misuses()
    }

    /// No misuse, no refusal, no error log (a panic the module caught logs one).
    pub fn assert_healthy(&self) {
        assert!(self.misuses().is_empty(), "ABI misuse: {:#?}", self.misuses());
        assert!(self.refusals().is_empty(), "Envoy refused calls: {:#?}", self.refusals());
        let panics: Vec<String> = self.logs().into_iter().map(|(_, m)| m).filter(|m| m.contains("panic")).collect();
        assert!(panics.is_empty(), "a panic in the module: {panics:#?}");
        assert!(self.error_logs().is_empty(), "error logs: {:#?}", self.error_logs());
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        host::stop_worker();
    }
}

/// A filter configuration the module accepted; destroyed after its last stream.
pub struct FilterConfig {
    /// The module's pointer.
    module: usize,
    /// Envoy's pointer: the config whose metric ids the streams use.
    token: usize,
}

impl Drop for FilterConfig {
    fn drop(&mut self) {
        module().config_destroy(self.module);
    }
}

/// One HTTP stream through one filter.
pub struct HttpStream {
    token: usize,
    module: Option<usize>,
    /// Envoy keeps a config alive while any of its filters lives.
    _config: Rc<FilterConfig>,
    completed: bool,
    destroyed: bool,
}

impl HttpStream {
    fn hook(&mut self, hook: Hook, map: Option<(MapKind, HeaderMap)>, end_of_stream: bool) -> u32 {
        assert!(!self.destroyed && !self.completed, "{hook:?} after the stream ended");
        let Some(filter) = self.module else { return 0 };
        host::enter(self.token, hook, map);
        let status = module().stream_hook(hook, self.token, filter, end_of_stream);
        host::leave(self.token);
        status
    }

    /// The stream's id (Envoy's pointer, as the module sees it).
    pub fn id(&self) -> usize {
        self.token
    }

    /// Whether the module returned a filter (null would close the stream in Envoy).
    pub fn has_filter(&self) -> bool {
        self.module.is_some()
    }

    pub fn request_headers(&mut self, headers: HeaderMap, end_of_stream: bool) -> u32 {
        self.hook(Hook::RequestHeaders, Some((MapKind::RequestHeaders, headers)), end_of_stream)
    }

    pub fn request_body(&mut self, end_of_stream: bool) -> u32 {
        self.hook(Hook::RequestBody, None, end_of_stream)
    }

    pub fn request_trailers(&mut self, trailers: HeaderMap) -> u32 {
        self.hook(Hook::RequestTrailers, Some((MapKind::RequestTrailers, trailers)), true)
    }

    pub fn response_headers(&mut self, headers: HeaderMap, end_of_stream: bool) -> u32 {
        self.hook(Hook::ResponseHeaders, Some((MapKind::ResponseHeaders, headers)), end_of_stream)
    }

    pub fn response_body(&mut self, end_of_stream: bool) -> u32 {
        self.hook(Hook::ResponseBody, None, end_of_stream)
    }

    pub fn response_trailers(&mut self, trailers: HeaderMap) -> u32 {
        self.hook(Hook::ResponseTrailers, Some((MapKind::ResponseTrailers, trailers)), true)
    }

    /// Sets an attribute for the hooks still to come (e.g. the access-log facts).
    pub fn set_attribute(&mut self, id: u32, value: Attribute) {
        host::set_attribute(self.token, id, value);
    }

    /// A typed filter-state object, by its `serializeAsString`.
    pub fn set_filter_state(&mut self, key: &str, serialized: impl AsRef<[u8]>) {
        host::set_filter_state(self.token, key, serialized.as_ref().to_vec());
    }

    /// Stream complete (before the access logs).
    pub fn complete(&mut self) {
        self.hook(Hook::StreamComplete, None, true);
        self.completed = true;
    }

    /// The map as it is now (after the module's changes); `None` before its phase.
    pub fn map(&self, kind: MapKind) -> Option<HeaderMap> {
        host::map(self.token, kind)
    }

    /// The module's changes to one map, in order.
    pub fn header_ops(&self, kind: MapKind) -> Vec<HeaderOp> {
        host::ops(self.token, kind)
    }

    /// Filter destroy (Envoy calls stream complete first when the stream ran).
    pub fn destroy(mut self) {
        self.destroy_filter();
    }

    fn destroy_filter(&mut self) {
        if self.destroyed {
            return;
        }
        self.destroyed = true;
        if let Some(filter) = self.module {
            module().filter_destroy(filter);
        }
        host::destroyed(self.token);
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        self.destroy_filter();
    }
}
