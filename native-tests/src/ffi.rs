//! The C side of the mocked host, and every `unsafe` of the crate: loading the module,
//! calling its `envoy_dynamic_module_on_*` hooks, and the `envoy_dynamic_module_callback_*`
//! functions the module imports, exported by the test executable (`build.rs`: `-rdynamic`).
//!
//! Each callback mirrors Envoy 1.40's `source/extensions/dynamic_modules/abi/abi.h`
//! (ABI `v0.2.0`) and does only the pointer work: it reads the module's buffers, hands
//! them to the safe host in `lib.rs`, and writes the out-parameters. The pointers Envoy
//! hands the module (`http_filter_envoy_ptr`, `http_filter_config_envoy_ptr`) are opaque
//! tokens here, never dereferenced: a token the host did not issue, or one of a
//! destroyed stream, is a recorded misuse instead of a wild read.
//!
//! C types as System V x86-64/aarch64 pass them: an enum is a 4-byte int (`u32`), `bool`
//! is `_Bool`, `size_t` is `usize`, the two-word buffers are `#[repr(C)]` structs by value.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;
use std::ptr::null;

use crate::host;

// ------------------------------------------------------------------ types

/// `envoy_dynamic_module_type_module_buffer` / `_envoy_buffer`: `{ const char* ptr; size_t length; }`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const c_char,
    length: usize,
}

impl Buffer {
    pub const NULL: Self = Self { ptr: null(), length: 0 };

    fn of(bytes: &[u8]) -> Self {
        Self { ptr: bytes.as_ptr().cast(), length: bytes.len() }
    }

    fn from_raw((ptr, length): (*const u8, usize)) -> Self {
        Self { ptr: ptr.cast(), length }
    }

    /// The bytes of a buffer the module passed; `None` for a null pointer.
    ///
    /// SAFETY: the caller passes a buffer the module handed to the current callback, which
    /// the ABI requires to point at `length` readable bytes for the call.
    unsafe fn bytes<'call>(self) -> Option<&'call [u8]> {
        if self.ptr.is_null() {
            return None;
        }
        if self.length == 0 {
            return Some(&[]);
        }
        // SAFETY: see the function's contract.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length) })
    }
}

/// `envoy_dynamic_module_type_envoy_http_header`: key pointer and length, value pointer and length.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

/// A module's array of buffers (label names or values) as owned byte strings; `None`
/// when a pointer is null.
///
/// SAFETY: `items` points at `count` buffers the module passed to the current callback.
unsafe fn buffers(items: *const Buffer, count: usize) -> Option<Vec<Vec<u8>>> {
    if count == 0 {
        return Some(Vec::new());
    }
    if items.is_null() {
        return None;
    }
    // SAFETY: see the function's contract.
    let items = unsafe { std::slice::from_raw_parts(items, count) };
    // SAFETY: each buffer is one the module passed to this callback.
    items.iter().map(|item| unsafe { item.bytes() }.map(<[u8]>::to_vec)).collect()
}

// ------------------------------------------------------------ the module

type ProgramInit = unsafe extern "C" fn() -> *const c_char;
type ConfigNew = unsafe extern "C" fn(*mut c_void, Buffer, Buffer) -> *const c_void;
type ConfigDestroy = unsafe extern "C" fn(*const c_void);
type FilterNew = unsafe extern "C" fn(*const c_void, *mut c_void) -> *const c_void;
type FilterDestroy = unsafe extern "C" fn(*const c_void);
type HeadersHook = unsafe extern "C" fn(*mut c_void, *const c_void, bool) -> u32;
type TrailersHook = unsafe extern "C" fn(*mut c_void, *const c_void) -> u32;
type StreamComplete = unsafe extern "C" fn(*mut c_void, *const c_void);

/// The loaded module's hooks (`dlopen` handle kept open for the process, as Envoy does).
pub struct Module {
    program_init: ProgramInit,
    config_new: ConfigNew,
    config_destroy: ConfigDestroy,
    filter_new: FilterNew,
    filter_destroy: FilterDestroy,
    request_headers: HeadersHook,
    request_body: HeadersHook,
    request_trailers: TrailersHook,
    response_headers: HeadersHook,
    response_body: HeadersHook,
    response_trailers: TrailersHook,
    stream_complete: StreamComplete,
}

unsafe extern "C" {
    // SAFETY: glibc's `void* dlopen(const char*, int)`, `void* dlsym(void*, const char*)`,
    // `char* dlerror(void)`.
    fn dlopen(path: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}

/// `RTLD_NOW | RTLD_LOCAL`, how Envoy opens a dynamic module: every import is bound at
/// load, so one this host lacks fails the load with its name.
const RTLD_NOW: c_int = 2;

fn last_dl_error() -> String {
    // SAFETY: `dlerror` returns null or a NUL-terminated string valid until the next dl call.
    let message = unsafe { dlerror() };
    if message.is_null() {
        return "unknown dlopen error".to_string();
    }
    // SAFETY: non-null, NUL-terminated (above).
    unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
}

impl Module {
    /// Opens the module and resolves its hooks.
    pub fn load(path: &Path) -> Result<Self, String> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: a NUL-terminated path; the module's initialisers run here, as in Envoy.
        let handle = unsafe { dlopen(c_path.as_ptr(), RTLD_NOW) };
        if handle.is_null() {
            return Err(format!("dlopen {}: {}", path.display(), last_dl_error()));
        }
        let symbol = |name: &CStr| -> Result<*mut c_void, String> {
            // SAFETY: a live handle and a NUL-terminated name.
            let found = unsafe { dlsym(handle, name.as_ptr()) };
            if found.is_null() {
                Err(format!("the module does not export {}", name.to_string_lossy()))
            } else {
                Ok(found)
            }
        };
        // SAFETY: each symbol is the module's export of that hook, whose C signature is the
        // function-pointer type it is cast to (abi.h, Envoy 1.40).
        unsafe {
            Ok(Self {
                program_init: std::mem::transmute::<*mut c_void, ProgramInit>(symbol(
                    c"envoy_dynamic_module_on_program_init",
                )?),
                config_new: std::mem::transmute::<*mut c_void, ConfigNew>(symbol(
                    c"envoy_dynamic_module_on_http_filter_config_new",
                )?),
                config_destroy: std::mem::transmute::<*mut c_void, ConfigDestroy>(symbol(
                    c"envoy_dynamic_module_on_http_filter_config_destroy",
                )?),
                filter_new: std::mem::transmute::<*mut c_void, FilterNew>(symbol(
                    c"envoy_dynamic_module_on_http_filter_new",
                )?),
                filter_destroy: std::mem::transmute::<*mut c_void, FilterDestroy>(symbol(
                    c"envoy_dynamic_module_on_http_filter_destroy",
                )?),
                request_headers: std::mem::transmute::<*mut c_void, HeadersHook>(symbol(
                    c"envoy_dynamic_module_on_http_filter_request_headers",
                )?),
                request_body: std::mem::transmute::<*mut c_void, HeadersHook>(symbol(
                    c"envoy_dynamic_module_on_http_filter_request_body",
                )?),
                request_trailers: std::mem::transmute::<*mut c_void, TrailersHook>(symbol(
                    c"envoy_dynamic_module_on_http_filter_request_trailers",
                )?),
                response_headers: std::mem::transmute::<*mut c_void, HeadersHook>(symbol(
                    c"envoy_dynamic_module_on_http_filter_response_headers",
                )?),
                response_body: std::mem::transmute::<*mut c_void, HeadersHook>(symbol(
                    c"envoy_dynamic_module_on_http_filter_response_body",
                )?),
                response_trailers: std::mem::transmute::<*mut c_void, TrailersHook>(symbol(
                    c"envoy_dynamic_module_on_http_filter_response_trailers",
                )?),
                stream_complete: std::mem::transmute::<*mut c_void, StreamComplete>(symbol(
                    c"envoy_dynamic_module_on_http_filter_stream_complete",
                )?),
            })
        }
    }

    /// Program init: the ABI version string the module returns, `None` for null (refused).
    pub fn program_init(&self) -> Option<String> {
        // SAFETY: the hook takes nothing and returns null or a NUL-terminated static string.
        let version = unsafe { (self.program_init)() };
        if version.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated, static (the ABI's contract).
        Some(unsafe { CStr::from_ptr(version) }.to_string_lossy().into_owned())
    }

    /// Filter config new; the module's pointer, `None` for null (rejected).
    pub fn config_new(&self, envoy: usize, name: &[u8], config: &[u8]) -> Option<usize> {
        // SAFETY: an opaque token and two buffers alive for the call.
        let module = unsafe { (self.config_new)(envoy as *mut c_void, Buffer::of(name), Buffer::of(config)) };
        (!module.is_null()).then_some(module as usize)
    }

    pub fn config_destroy(&self, module: usize) {
        // SAFETY: a pointer `config_new` returned, destroyed once (the caller's `Drop`).
        unsafe { (self.config_destroy)(module as *const c_void) }
    }

    /// Filter new; the module's pointer, `None` for null (Envoy would close the stream).
    pub fn filter_new(&self, config: usize, envoy: usize) -> Option<usize> {
        // SAFETY: a live config pointer and an opaque token.
        let module = unsafe { (self.filter_new)(config as *const c_void, envoy as *mut c_void) };
        (!module.is_null()).then_some(module as usize)
    }

    pub fn filter_destroy(&self, module: usize) {
        // SAFETY: a pointer `filter_new` returned, destroyed once (the caller's `Drop`).
        unsafe { (self.filter_destroy)(module as *const c_void) }
    }

    /// One of the stream's event hooks, with its status.
    pub fn stream_hook(&self, hook: host::Hook, envoy: usize, module: usize, end_of_stream: bool) -> u32 {
        let (envoy, module) = (envoy as *mut c_void, module as *const c_void);
        // SAFETY: a live filter pointer `filter_new` returned and its opaque token; each
        // hook's type is its abi.h signature.
        unsafe {
            match hook {
                host::Hook::RequestHeaders => (self.request_headers)(envoy, module, end_of_stream),
                host::Hook::RequestBody => (self.request_body)(envoy, module, end_of_stream),
                host::Hook::RequestTrailers => (self.request_trailers)(envoy, module),
                host::Hook::ResponseHeaders => (self.response_headers)(envoy, module, end_of_stream),
                host::Hook::ResponseBody => (self.response_body)(envoy, module, end_of_stream),
                host::Hook::ResponseTrailers => (self.response_trailers)(envoy, module),
                host::Hook::StreamComplete => {
                    (self.stream_complete)(envoy, module);
                    0
                }
                host::Hook::FilterNew => 0,
            }
        }
    }
}

// ------------------------------------------------------------- callbacks

/// `void envoy_dynamic_module_callback_log(log_level, module_buffer message)`.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_log(level: u32, message: Buffer) {
    // SAFETY: the module's buffer for this call.
    let message = unsafe { message.bytes() }.unwrap_or_default();
    host::log(level, message);
}

/// `size_t envoy_dynamic_module_callback_http_get_headers_size(http_filter_envoy_ptr, http_header_type)`.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, kind: u32) -> usize {
    host::headers_size(filter as usize, kind)
}

/// `bool envoy_dynamic_module_callback_http_get_headers(http_filter_envoy_ptr,
/// http_header_type, envoy_http_header* result_headers)`: fills one entry per header.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_get_headers(
    filter: *mut c_void,
    kind: u32,
    result: *mut Header,
) -> bool {
    let Some(entries) = host::headers(filter as usize, kind) else { return false };
    if entries.is_empty() {
        return true;
    }
    if result.is_null() {
        host::misuse(filter as usize, "http_get_headers: a null result array");
        return false;
    }
    for (at, ((key_ptr, key_length), (value_ptr, value_length))) in entries.into_iter().enumerate() {
        let header = Header { key_ptr: key_ptr.cast(), key_length, value_ptr: value_ptr.cast(), value_length };
        // SAFETY: the ABI requires `result` to hold `get_headers_size` entries, the count
        // `entries` has in this same hook.
        unsafe { result.add(at).write(header) };
    }
    true
}

/// `bool envoy_dynamic_module_callback_http_get_header(http_filter_envoy_ptr,
/// http_header_type, module_buffer key, envoy_buffer* result, size_t index, size_t* optional_size)`.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_get_header(
    filter: *mut c_void,
    kind: u32,
    key: Buffer,
    result: *mut Buffer,
    index: usize,
    optional_size: *mut usize,
) -> bool {
    // SAFETY: the module's buffer for this call.
    let key = unsafe { key.bytes() };
    let (value, count) = match key {
        Some(key) => host::header(filter as usize, kind, key, index),
        None => (None, 0),
    };
    if !optional_size.is_null() {
        // SAFETY: a non-null out-pointer the module passed.
        unsafe { optional_size.write(count) };
    }
    if result.is_null() {
        host::misuse(filter as usize, "http_get_header: a null result buffer");
        return false;
    }
    // SAFETY: a non-null out-pointer the module passed.
    unsafe { result.write(value.map_or(Buffer::NULL, Buffer::from_raw)) };
    value.is_some()
}

/// `bool envoy_dynamic_module_callback_http_add_header(http_filter_envoy_ptr,
/// http_header_type, module_buffer key, module_buffer value)`.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_add_header(
    filter: *mut c_void,
    kind: u32,
    key: Buffer,
    value: Buffer,
) -> bool {
    // SAFETY: the module's buffers for this call.
    let (key, value) = unsafe { (key.bytes(), value.bytes()) };
    let (Some(key), Some(value)) = (key, value) else {
        host::misuse(filter as usize, "http_add_header: a null key or value");
        return false;
    };
    host::add_header(filter as usize, kind, key, value)
}

/// `bool envoy_dynamic_module_callback_http_set_header(http_filter_envoy_ptr,
/// http_header_type, module_buffer key, module_buffer value)`; a null value removes.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_set_header(
    filter: *mut c_void,
    kind: u32,
    key: Buffer,
    value: Buffer,
) -> bool {
    // SAFETY: the module's buffers for this call.
    let (key, value) = unsafe { (key.bytes(), value.bytes()) };
    let Some(key) = key else {
        host::misuse(filter as usize, "http_set_header: a null key");
        return false;
    };
    host::set_header(filter as usize, kind, key, value)
}

/// `bool envoy_dynamic_module_callback_http_filter_get_attribute_string(http_filter_envoy_ptr,
/// attribute_id, envoy_buffer* result)`.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
    filter: *mut c_void,
    attribute: u32,
    result: *mut Buffer,
) -> bool {
    if result.is_null() {
        host::misuse(filter as usize, "get_attribute_string: a null result");
        return false;
    }
    let value = host::attribute_string(filter as usize, attribute);
    // SAFETY: a non-null out-pointer the module passed.
    unsafe { result.write(value.map_or(Buffer::NULL, Buffer::from_raw)) };
    value.is_some()
}

/// `bool envoy_dynamic_module_callback_http_filter_get_attribute_int(http_filter_envoy_ptr,
/// attribute_id, uint64_t* result)`.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
    filter: *mut c_void,
    attribute: u32,
    result: *mut u64,
) -> bool {
    if result.is_null() {
        host::misuse(filter as usize, "get_attribute_int: a null result");
        return false;
    }
    let Some(value) = host::attribute_int(filter as usize, attribute) else { return false };
    // SAFETY: a non-null out-pointer the module passed.
    unsafe { result.write(value) };
    true
}

/// `bool envoy_dynamic_module_callback_http_get_filter_state_typed(http_filter_envoy_ptr,
/// module_buffer key, envoy_buffer* result)`: the object's `serializeAsString`.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_get_filter_state_typed(
    filter: *mut c_void,
    key: Buffer,
    result: *mut Buffer,
) -> bool {
    // SAFETY: the module's buffer for this call.
    let key = unsafe { key.bytes() };
    if result.is_null() || key.is_none() {
        host::misuse(filter as usize, "get_filter_state_typed: a null key or result");
        return false;
    }
    let value = key.and_then(|key| host::filter_state(filter as usize, key));
    // SAFETY: a non-null out-pointer the module passed.
    unsafe { result.write(value.map_or(Buffer::NULL, Buffer::from_raw)) };
    value.is_some()
}

/// The three `define_*` callbacks: `metrics_result (http_filter_config_envoy_ptr,
/// module_buffer name, module_buffer* label_names, size_t label_names_length, size_t* id)`.
fn define(
    kind: host::MetricKind,
    config: *mut c_void,
    name: Buffer,
    label_names: *const Buffer,
    label_names_length: usize,
    id: *mut usize,
) -> u32 {
    // SAFETY: the module's buffers for this call.
    let (name, labels) = unsafe { (name.bytes(), buffers(label_names, label_names_length)) };
    let (Some(name), Some(labels), false) = (name, labels, id.is_null()) else {
        host::misuse(config as usize, "define metric: a null name, label name or id pointer");
        return host::INVALID_LABELS;
    };
    match host::define(config as usize, kind, name, labels) {
        Ok(defined) => {
            // SAFETY: a non-null out-pointer the module passed.
            unsafe { id.write(defined) };
            host::SUCCESS
        }
        Err(result) => result,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    config: *mut c_void,
    name: Buffer,
    label_names: *const Buffer,
    label_names_length: usize,
    id: *mut usize,
) -> u32 {
    define(host::MetricKind::Counter, config, name, label_names, label_names_length, id)
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
    config: *mut c_void,
    name: Buffer,
    label_names: *const Buffer,
    label_names_length: usize,
    id: *mut usize,
) -> u32 {
    define(host::MetricKind::Gauge, config, name, label_names, label_names_length, id)
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
    config: *mut c_void,
    name: Buffer,
    label_names: *const Buffer,
    label_names_length: usize,
    id: *mut usize,
) -> u32 {
    define(host::MetricKind::Histogram, config, name, label_names, label_names_length, id)
}

/// The three per-stream metric callbacks: `metrics_result (http_filter_envoy_ptr, size_t id,
/// module_buffer* label_values, size_t label_values_length, uint64_t value)`.
fn emit(
    kind: host::MetricKind,
    filter: *mut c_void,
    id: usize,
    label_values: *const Buffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    // SAFETY: the module's buffers for this call.
    let Some(values) = (unsafe { buffers(label_values, label_values_length) }) else {
        host::misuse(filter as usize, "metric: a null label value");
        return host::INVALID_LABELS;
    };
    host::emit(filter as usize, kind, id, values, value)
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
    filter: *mut c_void,
    id: usize,
    label_values: *const Buffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    emit(host::MetricKind::Counter, filter, id, label_values, label_values_length, value)
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_set_gauge(
    filter: *mut c_void,
    id: usize,
    label_values: *const Buffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    emit(host::MetricKind::Gauge, filter, id, label_values, label_values_length, value)
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
    filter: *mut c_void,
    id: usize,
    label_values: *const Buffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    emit(host::MetricKind::Histogram, filter, id, label_values, label_values_length, value)
}

/// Keeps every callback in the executable whatever the linker's garbage collection does:
/// the module reaches them only by name, which no Rust code references.
#[used]
static EXPORTED: Exported = Exported([
    envoy_dynamic_module_callback_log as *const (),
    envoy_dynamic_module_callback_http_get_headers_size as *const (),
    envoy_dynamic_module_callback_http_get_headers as *const (),
    envoy_dynamic_module_callback_http_get_header as *const (),
    envoy_dynamic_module_callback_http_add_header as *const (),
    envoy_dynamic_module_callback_http_set_header as *const (),
    envoy_dynamic_module_callback_http_filter_get_attribute_string as *const (),
    envoy_dynamic_module_callback_http_filter_get_attribute_int as *const (),
    envoy_dynamic_module_callback_http_get_filter_state_typed as *const (),
    envoy_dynamic_module_callback_http_filter_config_define_counter as *const (),
    envoy_dynamic_module_callback_http_filter_config_define_gauge as *const (),
    envoy_dynamic_module_callback_http_filter_config_define_histogram as *const (),
    envoy_dynamic_module_callback_http_filter_increment_counter as *const (),
    envoy_dynamic_module_callback_http_filter_set_gauge as *const (),
    envoy_dynamic_module_callback_http_filter_record_histogram_value as *const (),
]);

/// Function addresses only, never dereferenced.
#[allow(dead_code, reason = "only held, for the linker")]
struct Exported([*const (); 15]);
// SAFETY: nothing behind the pointers is ever read or written through `EXPORTED`.
unsafe impl Sync for Exported {}
