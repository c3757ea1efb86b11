//! Envoy's dynamic-module ABI, the part this module uses, declared by hand (Envoy's SDK
//! is not a registry crate). Every `unsafe` of the crate is here.
//!
//! The declarations mirror the ABI of Envoy 1.40 (`ENVOY_DYNAMIC_MODULES_ABI_VERSION`
//! `v0.2.0`, `source/extensions/dynamic_modules/abi/abi.h`). Envoy checks no signature:
//! a declaration that drifts from the binary is silent memory corruption, so each one
//! says which ABI function it mirrors and why the types match, and [`missing_callbacks`]
//! refuses to start on an Envoy that does not export every callback declared here.
//!
//! C types as the x86-64/aarch64 System V ABI passes them: a C `enum` is a 4-byte
//! `int` (`u32` here, never a Rust enum: a value Envoy adds later must not be UB),
//! `bool` is `_Bool` (Rust `bool`, one byte, 0 or 1), `size_t` is `usize`, pointers
//! are raw pointers, and the two-word buffer structs are `#[repr(C)]` structs passed
//! by value exactly as C passes a 16-byte struct of two INTEGER-class words.
//!
//! The event hooks Envoy calls are exported here too. Each one runs its body under
//! [`std::panic::catch_unwind`] (a native module has no sandbox: a panic unwinding into
//! Envoy aborts the proxy) and answers "continue" whatever happens inside.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::{NonNull, null, null_mut};

use waypoint_core::host::Headers;

use crate::module::{self, Config, Filter};

/// The most label values one metric call passes (Istio's metrics have 25).
const MAX_LABELS: usize = 32;

/// Header maps up to this size are listed on the stack (a request's usually are).
const INLINE_HEADERS: usize = 32;

/// The ABI version this module was written for, returned from program init.
pub const ABI_VERSION: &CStr = c"v0.2.0";

// ------------------------------------------------------------------ types

/// `envoy_dynamic_module_type_module_buffer`: `{ const char* ptr; size_t length; }`,
/// memory the module owns for the duration of the call.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const c_char,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self { ptr: bytes.as_ptr().cast(), length: bytes.len() }
    }

    /// The null buffer: `set_header` reads it as "remove".
    const NULL: Self = Self { ptr: null(), length: 0 };
}

/// `envoy_dynamic_module_type_envoy_buffer`: `{ const char* ptr; size_t length; }`,
/// memory Envoy owns, valid until the end of the current hook.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyBuffer {
    ptr: *const c_char,
    length: usize,
}

impl EnvoyBuffer {
    const EMPTY: Self = Self { ptr: null(), length: 0 };

    /// The bytes, borrowed; empty for a null pointer.
    ///
    /// SAFETY: the caller passes a buffer Envoy filled in this hook, which the ABI
    /// guarantees points at `length` readable bytes until the hook returns, and drops
    /// the slice before the hook returns.
    unsafe fn as_slice<'hook>(self) -> &'hook [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: see the function's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length) }
    }

    /// A copy of the bytes; empty for a null pointer.
    ///
    /// SAFETY: as for [`Self::as_slice`].
    unsafe fn to_vec(self) -> Vec<u8> {
        // SAFETY: see the function's contract.
        unsafe { self.as_slice() }.to_vec()
    }
}

/// `envoy_dynamic_module_type_envoy_http_header`: key pointer, key length, value
/// pointer, value length, all Envoy-owned.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    RequestHeaders,
    ResponseHeaders,
    ResponseTrailers,
}

impl HeaderKind {
    /// RequestHeader = 0, RequestTrailer = 1, ResponseHeader = 2, ResponseTrailer = 3.
    fn raw(self) -> u32 {
        match self {
            Self::RequestHeaders => 0,
            Self::ResponseHeaders => 2,
            Self::ResponseTrailers => 3,
        }
    }
}

/// `envoy_dynamic_module_type_attribute_id` values this module reads (their position
/// in the enum, which Envoy only appends to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    RequestDuration,
    RequestTotalSize,
    ResponseFlags,
    ResponseTotalSize,
    ConnectionId,
    UpstreamUriSanPeerCertificate,
    XdsClusterName,
}

impl Attribute {
    fn raw(self) -> u32 {
        match self {
            Self::RequestDuration => 12,
            Self::RequestTotalSize => 14,
            Self::ResponseFlags => 17,
            Self::ResponseTotalSize => 22,
            Self::ConnectionId => 28,
            Self::UpstreamUriSanPeerCertificate => 49,
            Self::XdsClusterName => 57,
        }
    }
}

/// The metric kinds of the ABI's `define_*` callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// `envoy_dynamic_module_type_metrics_result` other than Success (0): MetricNotFound
/// (1), InvalidLabels (2), Frozen (3), or a value this module does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsError(pub u32);

fn metrics_result(raw: u32) -> Result<(), MetricsError> {
    if raw == 0 { Ok(()) } else { Err(MetricsError(raw)) }
}

/// `envoy_dynamic_module_type_log_level`: Trace 0, Debug 1, Info 2, Warn 3, Error 4.
#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    Error,
}

impl LogLevel {
    fn raw(self) -> u32 {
        match self {
            Self::Error => 4,
        }
    }
}

// -------------------------------------------------------------- callbacks

// Resolved by the dynamic linker against the Envoy binary that loads this module.
// SAFETY: each declaration below mirrors one ABI callback (its own note says which);
// `missing_callbacks` refuses to start unless the loading Envoy exports every one.
unsafe extern "C" {
    // SAFETY: mirrors `void envoy_dynamic_module_callback_log(log_level level,
    // module_buffer message)`: an enum (int) and a two-word struct by value.
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);

    // SAFETY: mirrors `size_t envoy_dynamic_module_callback_http_get_headers_size(
    // http_filter_envoy_ptr, http_header_type)`: a pointer and an enum, size_t back.
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, kind: u32) -> usize;

    // SAFETY: mirrors `bool envoy_dynamic_module_callback_http_get_headers(
    // http_filter_envoy_ptr, http_header_type, envoy_http_header* result_headers)`: Envoy
    // writes one four-word header per entry; the caller sizes the array with
    // `get_headers_size` in the same hook.
    fn envoy_dynamic_module_callback_http_get_headers(filter: *mut c_void, kind: u32, result: *mut EnvoyHeader)
    -> bool;

    // SAFETY: mirrors `bool envoy_dynamic_module_callback_http_get_header(
    // http_filter_envoy_ptr, http_header_type, module_buffer key, envoy_buffer* result,
    // size_t index, size_t* optional_size)`.
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        kind: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;

    // SAFETY: mirrors `bool envoy_dynamic_module_callback_http_add_header(
    // http_filter_envoy_ptr, http_header_type, module_buffer key, module_buffer value)`.
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    // SAFETY: mirrors `bool envoy_dynamic_module_callback_http_set_header(
    // http_filter_envoy_ptr, http_header_type, module_buffer key, module_buffer value)`;
    // a null value removes the header.
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    // SAFETY: mirrors `bool envoy_dynamic_module_callback_http_filter_get_attribute_string(
    // http_filter_envoy_ptr, attribute_id, envoy_buffer* result)`.
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    // SAFETY: mirrors `bool envoy_dynamic_module_callback_http_filter_get_attribute_int(
    // http_filter_envoy_ptr, attribute_id, uint64_t* result)`.
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: *mut c_void,
        attribute: u32,
        result: *mut u64,
    ) -> bool;

    // SAFETY: mirrors `bool envoy_dynamic_module_callback_http_get_filter_state_typed(
    // http_filter_envoy_ptr, module_buffer key, envoy_buffer* result)`: the object's
    // `serializeAsString`, Envoy-owned until the end of the hook.
    fn envoy_dynamic_module_callback_http_get_filter_state_typed(
        filter: *mut c_void,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;

    // SAFETY: mirrors `metrics_result envoy_dynamic_module_callback_http_filter_config_define_counter(
    // http_filter_config_envoy_ptr, module_buffer name, module_buffer* label_names,
    // size_t label_names_length, size_t* counter_id_ptr)`; the enum result is an int.
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;

    // SAFETY: mirrors `..._http_filter_config_define_gauge`, the same parameters as
    // `define_counter`.
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;

    // SAFETY: mirrors `..._http_filter_config_define_histogram`, the same parameters as
    // `define_counter`.
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;

    // SAFETY: mirrors `metrics_result envoy_dynamic_module_callback_http_filter_increment_counter(
    // http_filter_envoy_ptr, size_t id, module_buffer* label_values,
    // size_t label_values_length, uint64_t value)`; Envoy requires as many values as
    // the metric was defined with label names.
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    // SAFETY: mirrors `..._http_filter_set_gauge`, the same parameters as
    // `increment_counter`.
    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    // SAFETY: mirrors `..._http_filter_record_histogram_value`, the same parameters as
    // `increment_counter`.
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    // SAFETY: glibc's `void* dlsym(void* handle, const char* symbol)`; a null handle is
    // `RTLD_DEFAULT`, the global scope the Envoy executable's exports are in.
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// Every Envoy callback declared above, for [`missing_callbacks`].
const CALLBACKS: [&CStr; 15] = [
    c"envoy_dynamic_module_callback_log",
    c"envoy_dynamic_module_callback_http_get_headers_size",
    c"envoy_dynamic_module_callback_http_get_headers",
    c"envoy_dynamic_module_callback_http_get_header",
    c"envoy_dynamic_module_callback_http_add_header",
    c"envoy_dynamic_module_callback_http_set_header",
    c"envoy_dynamic_module_callback_http_filter_get_attribute_string",
    c"envoy_dynamic_module_callback_http_filter_get_attribute_int",
    c"envoy_dynamic_module_callback_http_get_filter_state_typed",
    c"envoy_dynamic_module_callback_http_filter_config_define_counter",
    c"envoy_dynamic_module_callback_http_filter_config_define_gauge",
    c"envoy_dynamic_module_callback_http_filter_config_define_histogram",
    c"envoy_dynamic_module_callback_http_filter_increment_counter",
    c"envoy_dynamic_module_callback_http_filter_set_gauge",
    c"envoy_dynamic_module_callback_http_filter_record_histogram_value",
];

/// The declared callbacks this process does not export. Envoy may bind a module's
/// imports lazily, so without this check a missing one would crash at its first call.
fn missing_callbacks() -> Vec<&'static str> {
    CALLBACKS
        .iter()
        // SAFETY: `dlsym` with RTLD_DEFAULT and a NUL-terminated name only looks up.
        .filter(|name| unsafe { dlsym(null_mut(), name.as_ptr()) }.is_null())
        .filter_map(|name| name.to_str().ok())
        .collect()
}

/// Logs through Envoy's logger (`[dynamic_modules]`).
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer points at `message`, alive for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level.raw(), ModuleBuffer::of(message.as_bytes())) }
}

// ---------------------------------------------------------- safe handles

/// One HTTP stream during one event hook (`http_filter_envoy_ptr`): Envoy keeps the
/// object alive until the filter is destroyed; the lifetime keeps a handle from
/// outliving the hook, after which Envoy-owned buffers are gone.
#[derive(Clone, Copy)]
pub struct Stream<'hook> {
    envoy: NonNull<c_void>,
    hook: PhantomData<&'hook ()>,
}

impl Stream<'_> {
    /// All headers of a map, copied into one buffer; `None` when Envoy has no such map.
    pub fn headers(&self, kind: HeaderKind) -> Option<Headers> {
        // SAFETY: a live filter pointer and a valid header type.
        let count = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.envoy.as_ptr(), kind.raw()) };
        if count == 0 {
            return Some(Headers::default());
        }
        let empty = EnvoyHeader { key_ptr: null(), key_length: 0, value_ptr: null(), value_length: 0 };
        let mut raw = [empty; INLINE_HEADERS];
        let mut spilled;
        let entries = match raw.get_mut(..count) {
            Some(entries) => entries,
            None => {
                spilled = vec![empty; count];
                spilled.as_mut_slice()
            }
        };
        // SAFETY: `entries` holds `count` entries, the size Envoy reported in this hook.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_headers(self.envoy.as_ptr(), kind.raw(), entries.as_mut_ptr())
        };
        if !ok {
            return None;
        }
        let bytes = entries.iter().map(|h| h.key_length.saturating_add(h.value_length)).fold(0, usize::saturating_add);
        let mut headers = Headers::with_capacity(count, bytes);
        for header in entries.iter() {
            let key = EnvoyBuffer { ptr: header.key_ptr, length: header.key_length };
            let value = EnvoyBuffer { ptr: header.value_ptr, length: header.value_length };
            // SAFETY: Envoy filled both buffers in this hook; they are copied before it returns.
            unsafe { headers.push(key.as_slice(), value.as_slice()) };
        }
        Some(headers)
    }

    /// The first value of a header; `Ok(None)` when absent, `Err` when Envoy refused.
    pub fn header(&self, kind: HeaderKind, name: &str) -> Result<Option<Vec<u8>>, ()> {
        let mut value = EnvoyBuffer::EMPTY;
        let mut count = 0usize;
        // SAFETY: the key is alive for the call, both out-pointers are valid.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.envoy.as_ptr(),
                kind.raw(),
                ModuleBuffer::of(name.as_bytes()),
                &mut value,
                0,
                &mut count,
            )
        };
        if count == 0 {
            return Ok(None);
        }
        if !ok {
            return Err(());
        }
        // SAFETY: Envoy filled the buffer in this hook.
        Ok(Some(unsafe { value.to_vec() }))
    }

    pub fn add_header(&self, kind: HeaderKind, name: &str, value: &[u8]) -> bool {
        // SAFETY: both buffers are alive for the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.envoy.as_ptr(),
                kind.raw(),
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    pub fn remove_header(&self, kind: HeaderKind, name: &str) -> bool {
        // SAFETY: the key is alive for the call; the null value means "remove".
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.envoy.as_ptr(),
                kind.raw(),
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::NULL,
            )
        }
    }

    /// An integer attribute; `None` when the stream does not have it.
    pub fn attribute_int(&self, attribute: Attribute) -> Option<u64> {
        let mut value = 0u64;
        // SAFETY: a valid out-pointer.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_int(
                self.envoy.as_ptr(),
                attribute.raw(),
                &mut value,
            )
        };
        ok.then_some(value)
    }

    /// A string attribute, copied; `None` when the stream does not have it.
    pub fn attribute_string(&self, attribute: Attribute) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::EMPTY;
        // SAFETY: a valid out-pointer.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.envoy.as_ptr(),
                attribute.raw(),
                &mut value,
            )
        };
        // SAFETY: Envoy filled the buffer in this hook.
        ok.then(|| unsafe { value.to_vec() })
    }

    /// A filter state object's serialized form; `None` when absent.
    pub fn filter_state(&self, key: &str) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::EMPTY;
        // SAFETY: the key is alive for the call, a valid out-pointer.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_filter_state_typed(
                self.envoy.as_ptr(),
                ModuleBuffer::of(key.as_bytes()),
                &mut value,
            )
        };
        // SAFETY: Envoy filled the buffer in this hook.
        ok.then(|| unsafe { value.to_vec() })
    }

    /// Adds to, sets or records into one series of a metric this stream's filter
    /// configuration defined (`id`), picked by its label values.
    /// The label values go to Envoy from the stack: this runs for every metric of every request.
    pub fn metric<V: AsRef<str>>(
        &self,
        kind: MetricKind,
        id: usize,
        values: &[V],
        value: u64,
    ) -> Result<(), MetricsError> {
        let mut buffers = [ModuleBuffer::NULL; MAX_LABELS];
        let Some(used) = buffers.get_mut(..values.len()) else {
            // More label values than any metric of ours has: Envoy's "invalid labels".
            return Err(MetricsError(2));
        };
        for (buffer, value) in used.iter_mut().zip(values) {
            *buffer = ModuleBuffer::of(value.as_ref().as_bytes());
        }
        let values = used;
        let call = match kind {
            MetricKind::Counter => envoy_dynamic_module_callback_http_filter_increment_counter,
            MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_set_gauge,
            MetricKind::Histogram => envoy_dynamic_module_callback_http_filter_record_histogram_value,
        };
        // SAFETY: `values` and the bytes they point at are alive for the call.
        metrics_result(unsafe { call(self.envoy.as_ptr(), id, values.as_ptr(), values.len(), value) })
    }
}

/// A filter configuration during its creation (`http_filter_config_envoy_ptr`), the
/// only time Envoy lets it define metrics.
pub struct ConfigBeingCreated<'hook> {
    envoy: NonNull<c_void>,
    hook: PhantomData<&'hook ()>,
}

impl ConfigBeingCreated<'_> {
    /// Defines a metric with its label names; the id picks it in [`Stream::metric`].
    pub fn define(&self, kind: MetricKind, name: &str, label_names: &[&str]) -> Result<usize, MetricsError> {
        let names: Vec<ModuleBuffer> = label_names.iter().map(|n| ModuleBuffer::of(n.as_bytes())).collect();
        let call = match kind {
            MetricKind::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter,
            MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge,
            MetricKind::Histogram => envoy_dynamic_module_callback_http_filter_config_define_histogram,
        };
        let mut id = 0usize;
        // SAFETY: the name and label names are alive for the call (Envoy copies them),
        // a valid out-pointer.
        let result = unsafe {
            call(self.envoy.as_ptr(), ModuleBuffer::of(name.as_bytes()), names.as_ptr(), names.len(), &mut id)
        };
        metrics_result(result).map(|()| id)
    }
}

// ------------------------------------------------------------ event hooks

/// Runs a hook body; a panic is caught, logged and read as "nothing happened".
fn guarded<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        log(LogLevel::Error, &format!("waypoint native module: a panic in {hook} was caught; the stream continues"));
        fallback
    })
}

/// A byte view of an Envoy buffer passed to a hook.
///
/// SAFETY: the caller passes a buffer Envoy handed to the current hook.
unsafe fn hook_bytes<'hook>(buffer: EnvoyBuffer) -> &'hook [u8] {
    if buffer.ptr.is_null() || buffer.length == 0 {
        return &[];
    }
    // SAFETY: see the function's contract.
    unsafe { std::slice::from_raw_parts(buffer.ptr.cast::<u8>(), buffer.length) }
}

/// What a stream's module pointer points at: the filter and the configuration that
/// made it (Envoy keeps the configuration alive while any of its filters lives).
struct FilterBox {
    config: *const Config,
    filter: Filter,
}

/// The filter and its configuration behind a module pointer.
///
/// SAFETY: `module` is null or a pointer [`envoy_dynamic_module_on_http_filter_new`]
/// returned and [`envoy_dynamic_module_on_http_filter_destroy`] has not freed yet;
/// Envoy calls one stream's hooks on one thread, one at a time, so the borrow is unique.
unsafe fn filter_of<'hook>(module: *const c_void) -> Option<(&'hook Config, &'hook mut Filter)> {
    let boxed = NonNull::new(module.cast_mut().cast::<FilterBox>())?;
    // SAFETY: see the function's contract.
    let boxed = unsafe { &mut *boxed.as_ptr() };
    // SAFETY: the configuration outlives its filters.
    let config = unsafe { boxed.config.as_ref() }?;
    Some((config, &mut boxed.filter))
}

fn stream<'hook>(envoy: *mut c_void) -> Option<Stream<'hook>> {
    NonNull::new(envoy).map(|envoy| Stream { envoy, hook: PhantomData })
}

/// Runs a stream hook's body with its stream, filter and configuration.
fn on_stream(
    hook: &str,
    envoy: *mut c_void,
    module: *const c_void,
    body: impl FnOnce(Stream<'_>, &Config, &mut Filter),
) {
    guarded(hook, (), || {
        // SAFETY: Envoy passes the module pointer `on_http_filter_new` returned.
        let (Some(stream), Some((config, filter))) = (stream(envoy), unsafe { filter_of(module) }) else { return };
        body(stream, config, filter);
    });
}

/// Status `Continue` (0) of every `on_http_filter_*` status enum.
const CONTINUE: u32 = 0;

/// SAFETY (export): `envoy_dynamic_module_type_abi_version_module_ptr
/// envoy_dynamic_module_on_program_init(void)`: returns a NUL-terminated string that
/// stays valid (a static), or null to be unloaded.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guarded("program init", null(), || {
        let missing = missing_callbacks();
        if missing.is_empty() {
            return ABI_VERSION.as_ptr();
        }
        let message = format!(
            "waypoint native module refuses to load: this Envoy lacks the ABI {} callbacks {} (written for Envoy 1.40)",
            ABI_VERSION.to_string_lossy(),
            missing.join(", ")
        );
        // The logger itself may be what is missing.
        if missing.contains(&"envoy_dynamic_module_callback_log") {
            eprintln!("{message}");
        } else {
            log(LogLevel::Error, &message);
        }
        null()
    })
}

/// SAFETY (export): `http_filter_config_module_ptr envoy_dynamic_module_on_http_filter_config_new(
/// http_filter_config_envoy_ptr, envoy_buffer name, envoy_buffer config)`; null rejects
/// the configuration.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guarded("filter config creation", null(), || {
        let Some(envoy) = NonNull::new(envoy) else { return null() };
        let creating = ConfigBeingCreated { envoy, hook: PhantomData };
        // SAFETY: Envoy passes both buffers to this hook.
        let (name, config) = unsafe { (hook_bytes(name), hook_bytes(config)) };
        match module::new_config(name, config, &creating) {
            Some(config) => Box::into_raw(Box::new(config)).cast_const().cast(),
            None => null(),
        }
    })
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_config_destroy(
/// http_filter_config_module_ptr)`: the pointer `config_new` returned, freed once.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guarded("filter config destruction", (), || {
        if let Some(config) = NonNull::new(config.cast_mut().cast::<Config>()) {
            // SAFETY: the pointer came from `Box::into_raw` in `config_new`.
            drop(unsafe { Box::from_raw(config.as_ptr()) });
        }
    });
}

/// SAFETY (export): `http_filter_per_route_config_module_ptr
/// envoy_dynamic_module_on_http_filter_per_route_config_new(envoy_buffer name,
/// envoy_buffer config)`: the module has no per-route configuration, so null (refused).
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    guarded("per-route config creation", null(), || {
        log(LogLevel::Error, "waypoint native module has no per-route configuration");
        null()
    })
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_per_route_config_destroy(
/// http_filter_per_route_config_module_ptr)`; never created, nothing to free.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: *const c_void) {}

/// SAFETY (export): `http_filter_module_ptr envoy_dynamic_module_on_http_filter_new(
/// http_filter_config_module_ptr, http_filter_envoy_ptr)`; null would close the stream,
/// so a filter is always returned.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_new(config: *const c_void, envoy: *mut c_void) -> *const c_void {
    guarded("filter creation", null(), || {
        let config_ptr = config.cast::<Config>();
        // SAFETY: Envoy passes the pointer `config_new` returned, alive while its filters are.
        let Some(config) = (unsafe { config_ptr.as_ref() }) else { return null() };
        let filter = module::new_filter(config, stream(envoy));
        Box::into_raw(Box::new(FilterBox { config: config_ptr, filter })).cast_const().cast()
    })
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_destroy(http_filter_module_ptr)`:
/// the pointer `filter_new` returned, freed once.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
    guarded("filter destruction", (), || {
        if let Some(boxed) = NonNull::new(module.cast_mut().cast::<FilterBox>()) {
            // SAFETY: the pointer came from `Box::into_raw` in `filter_new`.
            let boxed = unsafe { Box::from_raw(boxed.as_ptr()) };
            // SAFETY: the configuration outlives its filters.
            if let Some(config) = unsafe { boxed.config.as_ref() } {
                module::destroy_filter(config, boxed.filter);
            }
        }
    });
}

/// SAFETY (export): `on_http_filter_request_headers_status envoy_dynamic_module_on_http_filter_request_headers(
/// http_filter_envoy_ptr, http_filter_module_ptr, bool end_of_stream)`.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: *mut c_void,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    on_stream("request headers", envoy, module, |stream, config, filter| filter.on_request_headers(config, stream));
    CONTINUE
}

/// SAFETY (export): `on_http_filter_request_body_status envoy_dynamic_module_on_http_filter_request_body(
/// http_filter_envoy_ptr, http_filter_module_ptr, bool end_of_stream)`.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _envoy: *mut c_void,
    _module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

/// SAFETY (export): `on_http_filter_request_trailers_status envoy_dynamic_module_on_http_filter_request_trailers(
/// http_filter_envoy_ptr, http_filter_module_ptr)`.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(_envoy: *mut c_void, _module: *const c_void) -> u32 {
    CONTINUE
}

/// SAFETY (export): `on_http_filter_response_headers_status envoy_dynamic_module_on_http_filter_response_headers(
/// http_filter_envoy_ptr, http_filter_module_ptr, bool end_of_stream)`.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: *mut c_void,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    on_stream("response headers", envoy, module, |stream, config, filter| filter.on_response_headers(config, stream));
    CONTINUE
}

/// SAFETY (export): `on_http_filter_response_body_status envoy_dynamic_module_on_http_filter_response_body(
/// http_filter_envoy_ptr, http_filter_module_ptr, bool end_of_stream)`.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _envoy: *mut c_void,
    _module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

/// SAFETY (export): `on_http_filter_response_trailers_status envoy_dynamic_module_on_http_filter_response_trailers(
/// http_filter_envoy_ptr, http_filter_module_ptr)`.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(envoy: *mut c_void, module: *const c_void) -> u32 {
    on_stream("response trailers", envoy, module, |stream, config, filter| filter.on_response_trailers(config, stream));
    CONTINUE
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_stream_complete(
/// http_filter_envoy_ptr, http_filter_module_ptr)`: before destroy and the access logs.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(envoy: *mut c_void, module: *const c_void) {
    on_stream("stream complete", envoy, module, |stream, config, filter| filter.on_stream_complete(config, stream));
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_http_callout_done(
/// http_filter_envoy_ptr, http_filter_module_ptr, uint64_t callout_id, http_callout_result,
/// envoy_http_header* headers, size_t, envoy_buffer* body_chunks, size_t)`; never started.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: *mut c_void,
    _module: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_http_stream_headers(
/// http_filter_envoy_ptr, http_filter_module_ptr, uint64_t stream_id, envoy_http_header*,
/// size_t, bool end_stream)`; never started.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_http_stream_data(
/// http_filter_envoy_ptr, http_filter_module_ptr, uint64_t stream_id, const envoy_buffer*,
/// size_t, bool end_stream)`; never started.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_http_stream_trailers(
/// http_filter_envoy_ptr, http_filter_module_ptr, uint64_t stream_id, envoy_http_header*,
/// size_t)`; never started.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_http_stream_complete(
/// http_filter_envoy_ptr, http_filter_module_ptr, uint64_t stream_id)`; never started.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream_id: u64,
) {
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_http_stream_reset(
/// http_filter_envoy_ptr, http_filter_module_ptr, uint64_t stream_id,
/// http_stream_reset_reason)`; never started.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_scheduled(http_filter_envoy_ptr,
/// http_filter_module_ptr, uint64_t event_id)`; nothing is ever scheduled.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_envoy: *mut c_void, _module: *const c_void, _event: u64) {}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
/// http_filter_envoy_ptr, http_filter_module_ptr)`; the module buffers nothing.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: *mut c_void,
    _module: *const c_void,
) {
}

/// SAFETY (export): `void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
/// http_filter_envoy_ptr, http_filter_module_ptr)`; the module buffers nothing.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: *mut c_void,
    _module: *const c_void,
) {
}
