//! `waypoint_core::host` implemented with the proxy-wasm host calls of [`crate::abi`].

use waypoint_core::host::{HeaderMap, HostError, MetricKind, Metrics, Stream};

use crate::abi::{self, Map, Metric, Status};

/// The proxy, as seen from the current context.
pub struct Envoy;

fn failed(call: &'static str) -> impl Fn(Status) -> HostError {
    move |status| HostError { call, status: format!("status {}", status.0) }
}

fn map(map: HeaderMap) -> Map {
    match map {
        HeaderMap::Request => Map::RequestHeaders,
        HeaderMap::Response => Map::ResponseHeaders,
        HeaderMap::ResponseTrailers => Map::ResponseTrailers,
    }
}

impl Stream for Envoy {
    fn headers(&self, which: HeaderMap) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        abi::header_pairs(map(which)).map_err(failed("proxy_get_header_map_pairs"))
    }

    fn header(&self, which: HeaderMap, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        abi::header(map(which), name).map_err(failed("proxy_get_header_map_value"))
    }

    fn remove_header(&self, which: HeaderMap, name: &str) -> Result<(), HostError> {
        abi::remove_header(map(which), name).map_err(failed("proxy_remove_header_map_value"))
    }

    fn add_header(&self, which: HeaderMap, name: &str, value: &[u8]) -> Result<(), HostError> {
        abi::add_header(map(which), name, value).map_err(failed("proxy_add_header_map_value"))
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        abi::property(path).map_err(failed("proxy_get_property"))
    }
}

impl Metrics for Envoy {
    fn define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => Metric::Counter,
            MetricKind::Gauge => Metric::Gauge,
            MetricKind::Histogram => Metric::Histogram,
        };
        abi::define_metric(kind, name).map_err(failed("proxy_define_metric"))
    }

    fn increment(&self, id: u32, by: i64) -> Result<(), HostError> {
        abi::increment_metric(id, by).map_err(failed("proxy_increment_metric"))
    }

    fn record(&self, id: u32, value: u64) -> Result<(), HostError> {
        abi::record_metric(id, value).map_err(failed("proxy_record_metric"))
    }
}

/// This plugin's `root_id`, as Envoy's configuration names it.
pub fn root_id() -> String {
    match abi::property(&["plugin_root_id"]) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    }
}
