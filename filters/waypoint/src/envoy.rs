//! `waypoint_core::host` implemented with proxy-wasm host calls.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType, MetricType, Status};
use waypoint_core::host::{HeaderMap, HostError, MetricKind, Metrics, Stream};

/// The proxy, as seen from the current context.
pub struct Envoy;

fn failed(call: &'static str) -> impl Fn(Status) -> HostError {
    move |status| HostError { call, status: format!("{status:?}") }
}

fn map_type(map: HeaderMap) -> MapType {
    match map {
        HeaderMap::Request => MapType::HttpRequestHeaders,
        HeaderMap::Response => MapType::HttpResponseHeaders,
        HeaderMap::ResponseTrailers => MapType::HttpResponseTrailers,
    }
}

impl Stream for Envoy {
    fn headers(&self, map: HeaderMap) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        hostcalls::get_map_bytes(map_type(map)).map_err(failed("get_header_map_pairs"))
    }

    fn header(&self, map: HeaderMap, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        hostcalls::get_map_value_bytes(map_type(map), name).map_err(failed("get_header_map_value"))
    }

    fn remove_header(&self, map: HeaderMap, name: &str) -> Result<(), HostError> {
        hostcalls::remove_map_value(map_type(map), name).map_err(failed("remove_header_map_value"))
    }

    fn add_header(&self, map: HeaderMap, name: &str, value: &[u8]) -> Result<(), HostError> {
        hostcalls::add_map_value_bytes(map_type(map), name, value).map_err(failed("add_header_map_value"))
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        hostcalls::get_property(path.to_vec()).map_err(failed("get_property"))
    }
}

impl Metrics for Envoy {
    fn define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(kind, name).map_err(failed("define_metric"))
    }

    fn increment(&self, id: u32, by: i64) -> Result<(), HostError> {
        hostcalls::increment_metric(id, by).map_err(failed("increment_metric"))
    }

    fn record(&self, id: u32, value: u64) -> Result<(), HostError> {
        hostcalls::record_metric(id, value).map_err(failed("record_metric"))
    }
}

/// This plugin's `root_id`, as Envoy's configuration names it.
pub fn root_id() -> String {
    match hostcalls::get_property(vec!["plugin_root_id"]) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    }
}

/// Start-up errors only: nothing is logged on the request path.
pub fn log_error(message: &str) {
    let _ = hostcalls::log(LogLevel::Error, message);
}
