//! The proxy-wasm ABI 0.2.1 host calls this module makes, bound directly.
//!
//! The SDK's wrappers (`proxy_wasm::hostcalls`) panic on statuses they do not
//! expect, and a panic kills the VM for a whole Envoy worker. Here every status
//! other than `Ok` is a value the caller degrades on, and buffers from the host
//! are parsed without trusting their framing.
#![allow(unsafe_code)]

use std::ptr::null_mut;

use waypoint_core::host::Headers;

use crate::wire::parse_header_pairs;

/// A proxy-wasm status code other than `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
/// Returned for a header map whose pairs cannot be parsed.
pub const PARSE_FAILURE: Status = Status(4);

/// `MapType` of the ABI.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
}

/// `MetricType` of the ABI.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Metric {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

const PLUGIN_CONFIGURATION: u32 = 7;
const LOG_ERROR: u32 = 4;

// SAFETY: proxy-wasm ABI 0.2.1 host functions as Envoy 1.40 exports them to module
// `env`: every pointer is a (pointer, length) into this module's memory or an out-pointer
// to the caller's local, valid for the call; statuses are u32, never trusted as enums.
#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(map: u32, key: *const u8, key_size: usize, value: *const u8, size: usize) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_buffer_bytes(buffer: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
}

/// Takes ownership of a buffer the host returned. The host allocated it
/// through the SDK's `proxy_on_memory_allocate`, i.e. as a `Vec<u8>` of this
/// capacity, so it is handed back to Rust's allocator the same way.
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: see above; the host gives the buffer to us and never touches it again.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

fn done(status: u32) -> Result<(), Status> {
    if status == OK { Ok(()) } else { Err(Status(status)) }
}

/// Calls a host function that returns a buffer; `NotFound` is `None`.
fn returning_buffer(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        OK => Ok(Some(take(data, size))),
        NOT_FOUND => Ok(None),
        status => Err(Status(status)),
    }
}

pub fn header_pairs(map: Map) -> Result<Headers, Status> {
    // SAFETY: the out-pointers are valid for the duration of the call.
    let raw = returning_buffer(|data, size| unsafe { proxy_get_header_map_pairs(map as u32, data, size) })?;
    parse_header_pairs(&raw.unwrap_or_default()).ok_or(PARSE_FAILURE)
}

pub fn header(map: Map, name: &str) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: `name` and the out-pointers are valid for the duration of the call.
    returning_buffer(|data, size| unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), data, size)
    })
}

pub fn add_header(map: Map, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: both slices are valid for the duration of the call.
    done(unsafe { proxy_add_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

pub fn remove_header(map: Map, name: &str) -> Result<(), Status> {
    // SAFETY: `name` is valid for the duration of the call.
    done(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// An Envoy attribute; the path's segments travel joined by NUL.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let joined = path.join("\0");
    // SAFETY: `joined` and the out-pointers are valid for the duration of the call.
    returning_buffer(|data, size| unsafe { proxy_get_property(joined.as_ptr(), joined.len(), data, size) })
}

pub fn plugin_configuration() -> Result<Vec<u8>, Status> {
    // SAFETY: the out-pointers are valid for the duration of the call.
    let raw = returning_buffer(|data, size| unsafe {
        proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, usize::MAX, data, size)
    })?;
    Ok(raw.unwrap_or_default())
}

pub fn define_metric(kind: Metric, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: `name` and `id` are valid for the duration of the call.
    done(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: plain values.
    done(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: plain values.
    done(unsafe { proxy_record_metric(id, value) })
}

pub fn log_error(message: &str) {
    // SAFETY: `message` is valid for the duration of the call.
    let _ = unsafe { proxy_log(LOG_ERROR, message.as_ptr(), message.len()) };
}
