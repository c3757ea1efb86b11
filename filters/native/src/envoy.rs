//! `waypoint_core::host` implemented over Envoy's dynamic-module ABI ([`crate::abi`]).
//!
//! Metrics have real labels here: each filter configuration defines every metric the
//! module emits once, with its label names ([`define_metrics`]); a series the roles
//! define is only this worker's note of its label values ([`SeriesTable`]), passed
//! with every increment.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use waypoint_core::contract::{ERROR_REASON_TAG, GRPC_STATS_FILTER_STATE};
use waypoint_core::host::{HeaderMap, Headers, HostError, HostStatus, MetricKind, Metrics, Stream as HostStream};
use waypoint_core::labels::{
    BUILD, BUILD_TAGS, ERRORS_TOTAL, LABEL_NAMES, REQUEST_BYTES, REQUEST_DURATION, REQUEST_MESSAGES, REQUESTS_TOTAL,
    RESPONSE_BYTES, RESPONSE_MESSAGES, Series,
};

use crate::abi::{self, Attribute, ConfigBeingCreated, HeaderKind, Stream};

/// Every metric the module emits: name, kind, label names.
const METRICS: [(&str, MetricKind, &[&str]); 8] = [
    (REQUESTS_TOTAL, MetricKind::Counter, &LABEL_NAMES),
    (REQUEST_DURATION, MetricKind::Histogram, &LABEL_NAMES),
    (REQUEST_BYTES, MetricKind::Histogram, &LABEL_NAMES),
    (RESPONSE_BYTES, MetricKind::Histogram, &LABEL_NAMES),
    (REQUEST_MESSAGES, MetricKind::Counter, &LABEL_NAMES),
    (RESPONSE_MESSAGES, MetricKind::Counter, &LABEL_NAMES),
    (ERRORS_TOTAL, MetricKind::Counter, &[ERROR_REASON_TAG]),
    (BUILD, MetricKind::Gauge, &BUILD_TAGS),
];

/// Envoy's ids of [`METRICS`] in one filter configuration, in that order.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricIds {
    ids: [usize; METRICS.len()],
    /// Envoy gives a cluster's upstream filters the cluster's stats scope
    /// (`cluster.<name>.waypoint.…`, measured), so the upstream role's metrics are held
    /// on the worker and emitted by the next filter in the root scope ([`flush_deferred`]).
    deferred: bool,
}

fn abi_kind(kind: MetricKind) -> abi::MetricKind {
    match kind {
        MetricKind::Counter => abi::MetricKind::Counter,
        MetricKind::Gauge => abi::MetricKind::Gauge,
        MetricKind::Histogram => abi::MetricKind::Histogram,
    }
}

/// Defines every metric in a filter configuration being created; `deferred` for one
/// whose stats scope is not the root one (an upstream filter's).
pub fn define_metrics(creating: &ConfigBeingCreated<'_>, deferred: bool) -> Result<MetricIds, String> {
    let mut ids = MetricIds { deferred, ..MetricIds::default() };
    for (slot, (name, kind, label_names)) in ids.ids.iter_mut().zip(METRICS) {
        *slot = creating
            .define(abi_kind(kind), name, label_names)
            .map_err(|error| format!("defining the metric {name} failed (metrics result {})", error.0))?;
    }
    Ok(ids)
}

/// Series the roles defined on this worker: the metric and its label values, by id.
/// The roles define each series once and bound how many they keep, so this is
/// bounded by them; [`MAX_SERIES`] is the backstop.
#[derive(Default)]
struct SeriesTable {
    ids: HashMap<(usize, Vec<String>), u32>,
    series: Vec<(usize, Vec<String>)>,
}

/// Far above what the roles' label-set limits let through.
const MAX_SERIES: usize = 1 << 20;

/// Deferred values at most held per worker; past it new ones are dropped (they are
/// the upstream role's error counts, emitted on the next root-scoped stream).
const MAX_DEFERRED: usize = 4096;

thread_local! {
    static SERIES: RefCell<SeriesTable> = RefCell::new(SeriesTable::default());
    /// The upstream role's metric values, (series, value), until a root-scoped filter emits them.
    static DEFERRED: RefCell<Vec<(u32, u64)>> = const { RefCell::new(Vec::new()) };
}

impl SeriesTable {
    fn intern(&mut self, metric: usize, values: &[&str]) -> Option<u32> {
        let key = (metric, values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>());
        if let Some(id) = self.ids.get(&key) {
            return Some(*id);
        }
        if self.series.len() >= MAX_SERIES {
            return None;
        }
        let id = u32::try_from(self.series.len()).ok()?;
        self.series.push(key.clone());
        self.ids.insert(key, id);
        Some(id)
    }
}

/// The proxy as one stream's hook sees it.
pub struct Envoy<'hook> {
    stream: Stream<'hook>,
    metrics: &'hook MetricIds,
    /// When the stream's filter was created, for [`HostStream::request_duration`].
    started: Option<Instant>,
}

impl<'hook> Envoy<'hook> {
    pub fn new(stream: Stream<'hook>, metrics: &'hook MetricIds) -> Self {
        Self { stream, metrics, started: None }
    }

    /// The stream as of its end, with the time its filter was created.
    pub fn ending(stream: Stream<'hook>, metrics: &'hook MetricIds, started: Instant) -> Self {
        Self { stream, metrics, started: Some(started) }
    }

    /// Emits what the upstream role held on this worker, through this root-scoped stream.
    pub fn flush_deferred(&self) {
        if self.metrics.deferred {
            return;
        }
        let held =
            DEFERRED.with(|cell| cell.try_borrow_mut().map(|mut held| std::mem::take(&mut *held)).unwrap_or_default());
        for (id, value) in held {
            // A failure here is Envoy's: nothing left to count it with.
            let _ = self.emit("deferred metric", id, value);
        }
    }

    /// Adds to, sets or records into series `id`.
    fn emit(&self, call: &'static str, id: u32, value: u64) -> Result<(), HostError> {
        let failed = |status| HostError { call, status };
        if self.metrics.deferred {
            return DEFERRED.with(|cell| {
                let mut held = cell.try_borrow_mut().map_err(|_| failed(HostStatus::Internal))?;
                if held.len() >= MAX_DEFERRED {
                    return Err(failed(HostStatus::Internal));
                }
                held.push((id, value));
                Ok(())
            });
        }
        // The label values are passed from the table itself: no copy per metric call.
        SERIES.with(|table| {
            let table = table.try_borrow().map_err(|_| failed(HostStatus::Internal))?;
            let (metric, values) =
                usize::try_from(id).ok().and_then(|id| table.series.get(id)).ok_or(failed(HostStatus::NotFound))?;
            let (_, kind, _) = METRICS.get(*metric).ok_or(failed(HostStatus::NotFound))?;
            let envoy_id = *self.metrics.ids.get(*metric).ok_or(failed(HostStatus::NotFound))?;
            self.stream.metric(abi_kind(*kind), envoy_id, values, value).map_err(|error| {
                // InvalidLabels (2): Envoy refused the values; anything else is Envoy's.
                failed(if error.0 == 2 { HostStatus::BadArgument } else { HostStatus::Internal })
            })
        })
    }
}

fn kind(map: HeaderMap) -> HeaderKind {
    match map {
        HeaderMap::Request => HeaderKind::RequestHeaders,
        HeaderMap::Response => HeaderKind::ResponseHeaders,
        HeaderMap::ResponseTrailers => HeaderKind::ResponseTrailers,
    }
}

fn refused(call: &'static str) -> HostError {
    HostError { call, status: HostStatus::Internal }
}

impl HostStream for Envoy<'_> {
    fn headers(&self, map: HeaderMap) -> Result<Headers, HostError> {
        self.stream.headers(kind(map)).ok_or(refused("http_get_headers"))
    }

    fn header(&self, map: HeaderMap, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.stream.header(kind(map), name).map_err(|()| refused("http_get_header"))
    }

    fn remove_header(&self, map: HeaderMap, name: &str) -> Result<(), HostError> {
        self.stream.remove_header(kind(map), name).then_some(()).ok_or(refused("http_set_header"))
    }

    fn add_header(&self, map: HeaderMap, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.stream.add_header(kind(map), name, value).then_some(()).ok_or(refused("http_add_header"))
    }

    fn connection_id(&self) -> Result<Option<u64>, HostError> {
        Ok(self.stream.attribute_int(Attribute::ConnectionId))
    }

    fn upstream_peer_uri_san(&self) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.stream.attribute_string(Attribute::UpstreamUriSanPeerCertificate))
    }

    fn cluster_name(&self) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.stream.attribute_string(Attribute::XdsClusterName))
    }

    fn response_flags(&self) -> Result<u64, HostError> {
        Ok(self.stream.attribute_int(Attribute::ResponseFlags).unwrap_or(0))
    }

    fn request_duration(&self) -> Result<Duration, HostError> {
        // Envoy 1.40 has no `request.duration` yet when the stream completes (measured: 0
        // for requests delayed 200 ms), so the module times it: from the filter's creation,
        // as the request's headers arrive, to the stream's end.
        match self.stream.attribute_int(Attribute::RequestDuration).filter(|ms| *ms > 0) {
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(self.started.map(|started| started.elapsed()).unwrap_or_default()),
        }
    }

    fn request_total_size(&self) -> Result<u64, HostError> {
        Ok(self.stream.attribute_int(Attribute::RequestTotalSize).unwrap_or(0))
    }

    fn response_total_size(&self) -> Result<u64, HostError> {
        Ok(self.stream.attribute_int(Attribute::ResponseTotalSize).unwrap_or(0))
    }

    fn grpc_messages(&self) -> Result<Option<(u64, u64)>, HostError> {
        Ok(self.stream.filter_state(GRPC_STATS_FILTER_STATE).and_then(|bytes| grpc_stats(&bytes)))
    }
}

/// `GrpcStatsObject::serializeAsString`: `<request messages>,<response messages>`.
fn grpc_stats(bytes: &[u8]) -> Option<(u64, u64)> {
    let (requests, responses) = std::str::from_utf8(bytes).ok()?.split_once(',')?;
    Some((requests.trim().parse().ok()?, responses.trim().parse().ok()?))
}

impl Metrics for Envoy<'_> {
    fn define(&self, kind: MetricKind, series: &Series<'_>) -> Result<u32, HostError> {
        let failed = |status| HostError { call: "define series", status };
        let metric = METRICS
            .iter()
            .position(|(name, k, labels)| *name == series.name() && *k == kind && *labels == series.label_names())
            .ok_or(failed(HostStatus::BadArgument))?;
        SERIES
            .with(|table| table.try_borrow_mut().ok().and_then(|mut t| t.intern(metric, series.label_values())))
            .ok_or(failed(HostStatus::Internal))
    }

    fn increment(&self, id: u32, by: i64) -> Result<(), HostError> {
        let by = u64::try_from(by)
            .map_err(|_| HostError { call: "http_filter_increment_counter", status: HostStatus::BadArgument })?;
        self.emit("http_filter_increment_counter", id, by)
    }

    fn record(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.emit("http_filter_record_histogram_value", id, value)
    }
}
