//! `waypoint_core::host` implemented with the proxy-wasm host calls of [`crate::abi`].

use std::time::Duration;

use waypoint_core::contract::GRPC_STATS_FILTER_STATE;
use waypoint_core::host::{HeaderMap, Headers, HostError, HostStatus, MetricKind, Metrics, Stream};
use waypoint_core::labels::Series;

use crate::abi::{self, Map, Metric, Status};
use crate::wire;

/// The proxy, as seen from the current context.
pub struct Envoy;

const GET_PROPERTY: &str = "proxy_get_property";

/// proxy-wasm's `Status` codes (ABI 0.2.1) as the host seam's statuses.
fn host_status(status: Status) -> HostStatus {
    match status.0 {
        1 => HostStatus::NotFound,
        // BadArgument, BadExpression, InvalidMemoryAccess.
        2 | 5 | 6 => HostStatus::BadArgument,
        // SerializationFailure, ParseFailure.
        3 | 4 => HostStatus::ParseFailure,
        12 => HostStatus::Unsupported,
        _ => HostStatus::Internal,
    }
}

fn failed(call: &'static str) -> impl Fn(Status) -> HostError {
    move |status| HostError { call, status: host_status(status) }
}

fn map(map: HeaderMap) -> Map {
    match map {
        HeaderMap::Request => Map::RequestHeaders,
        HeaderMap::Response => Map::ResponseHeaders,
        HeaderMap::ResponseTrailers => Map::ResponseTrailers,
    }
}

fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    abi::property(path).map_err(failed(GET_PROPERTY))
}

/// An integer attribute; `None` when absent, an error when not 8 bytes.
fn integer(path: &[&str]) -> Result<Option<u64>, HostError> {
    let unreadable = HostError { call: GET_PROPERTY, status: HostStatus::ParseFailure };
    property(path)?.map(|bytes| wire::le_u64(&bytes).ok_or(unreadable)).transpose()
}

impl Stream for Envoy {
    fn headers(&self, which: HeaderMap) -> Result<Headers, HostError> {
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

    fn connection_id(&self) -> Result<Option<u64>, HostError> {
        integer(&["connection", "id"])
    }

    fn upstream_peer_uri_san(&self) -> Result<Option<Vec<u8>>, HostError> {
        property(&["upstream", "uri_san_peer_certificate"])
    }

    fn cluster_name(&self) -> Result<Option<Vec<u8>>, HostError> {
        property(&["xds", "cluster_name"])
    }

    fn response_flags(&self) -> Result<u64, HostError> {
        Ok(integer(&["response", "flags"])?.unwrap_or(0))
    }

    fn request_duration(&self) -> Result<Duration, HostError> {
        Ok(Duration::from_nanos(integer(&["request", "duration"])?.unwrap_or(0)))
    }

    fn request_total_size(&self) -> Result<u64, HostError> {
        Ok(integer(&["request", "total_size"])?.unwrap_or(0))
    }

    fn response_total_size(&self) -> Result<u64, HostError> {
        Ok(integer(&["response", "total_size"])?.unwrap_or(0))
    }

    fn grpc_messages(&self) -> Result<Option<(u64, u64)>, HostError> {
        // An object this module cannot read is as good as none: grpc_stats is optional.
        Ok(property(&["filter_state", GRPC_STATS_FILTER_STATE])?.and_then(|bytes| wire::grpc_messages(&bytes)))
    }
}

impl Metrics for Envoy {
    fn define(&self, kind: MetricKind, series: &Series<'_>) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => Metric::Counter,
            MetricKind::Gauge => Metric::Gauge,
            MetricKind::Histogram => Metric::Histogram,
        };
        abi::define_metric(kind, &series.stat_name()).map_err(failed("proxy_define_metric"))
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
