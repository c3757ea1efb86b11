//! State one wasm VM keeps for its Envoy worker thread. All roles of the module
//! run in the same VM on a worker, so the tunnel table written by the upstream
//! role is read by the stats role without any host call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

use crate::host::{HostError, MetricKind, Metrics};
use crate::labels::{
    Labels, REQUEST_BYTES, REQUEST_DURATION, REQUESTS_TOTAL, RESPONSE_BYTES, RequestFacts, RoutedService,
};
use crate::peer::Peer;
use crate::response_flags;

/// Why something degraded to `unknown` or was not recorded. Each reason is
/// one series of `waypoint_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    /// A `baggage` header over the size or member limits.
    BaggageRejected,
    /// A field value in `baggage` or the legacy header with disallowed bytes or too long.
    ValueRejected,
    /// An `x-envoy-peer-metadata` header that is not base64 of a Struct, or too large.
    LegacyRejected,
    /// A proxy-wasm host call returned an error.
    HostCall,
    /// More distinct peers, services or label sets than the limits allow.
    CardinalityLimit,
    /// More open tunnels than `max_tunnels`; the oldest was forgotten.
    TunnelLimit,
    /// A response came through a tunnel this worker has no record of.
    TunnelUnbound,
}

impl ErrorReason {
    const ALL: [ErrorReason; 7] = [
        Self::BaggageRejected,
        Self::ValueRejected,
        Self::LegacyRejected,
        Self::HostCall,
        Self::CardinalityLimit,
        Self::TunnelLimit,
        Self::TunnelUnbound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BaggageRejected => "baggage_rejected",
            Self::ValueRejected => "value_rejected",
            Self::LegacyRejected => "legacy_rejected",
            Self::HostCall => "host_call",
            Self::CardinalityLimit => "cardinality_limit",
            Self::TunnelLimit => "tunnel_limit",
            Self::TunnelUnbound => "tunnel_unbound",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// The error counter's name: tags encoded like the Istio metrics.
pub fn error_metric_name(reason: ErrorReason) -> String {
    format!("waypoint_errors_total;reason={}", reason.as_str())
}

/// Small dense ids for values seen often, so hot-path keys are integers.
/// Id 0 is the default value (an unknown peer, an unknown service).
#[derive(Debug)]
struct Interner<T> {
    ids: HashMap<T, u32>,
    values: Vec<T>,
    max: usize,
}

impl<T: Clone + Eq + Hash + Default> Interner<T> {
    fn new(max: usize) -> Self {
        let mut ids = HashMap::new();
        ids.insert(T::default(), 0);
        Self { ids, values: vec![T::default()], max }
    }

    /// The id of `value`; `None` once `max` distinct values are known.
    fn intern(&mut self, value: T) -> Option<u32> {
        if let Some(id) = self.ids.get(&value) {
            return Some(*id);
        }
        if self.values.len() > self.max {
            return None;
        }
        let id = u32::try_from(self.values.len()).ok()?;
        self.values.push(value.clone());
        self.ids.insert(value, id);
        Some(id)
    }

    fn get(&self, id: u32) -> Option<&T> {
        self.values.get(id as usize)
    }
}

/// What became of the CONNECT of one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelState {
    /// CONNECT sent, no answer yet.
    Pending,
    /// `200`: the destination's peer id.
    Established(u32),
    /// Any other status: the destination is unknown.
    Failed,
}

/// Tunnels of this worker, keyed by the Envoy connection id of the
/// connect_originate connection that owns each.
///
/// main_internal's response carries the id X of its upstream (client-side)
/// internal connection. Envoy accepts an internal connection synchronously on
/// the same worker, so the server-side id is the next id this worker allocates
/// after X: the tunnel is the first entry with a key above X. Closed tunnels
/// stay as tombstones for a while so that a late lookup for a failed or closed
/// tunnel finds that tunnel, never a younger one.
#[derive(Debug)]
pub struct TunnelTable {
    tunnels: BTreeMap<u64, (TunnelState, bool)>,
    tombstones: VecDeque<u64>,
    max_tunnels: usize,
}

/// Tombstones kept: far more closures than can happen on one worker between an
/// upstream reset and the stats filter handling that same response.
const TOMBSTONES: usize = 4096;

impl TunnelTable {
    fn new(max_tunnels: usize) -> Self {
        Self { tunnels: BTreeMap::new(), tombstones: VecDeque::new(), max_tunnels }
    }

    /// Records a new tunnel; returns false when an old one had to be forgotten.
    pub fn open(&mut self, connection_id: u64) -> bool {
        let mut within_limit = true;
        while self.tunnels.len() >= self.max_tunnels.saturating_add(TOMBSTONES) {
            within_limit = false;
            self.tunnels.pop_first();
        }
        self.tunnels.insert(connection_id, (TunnelState::Pending, false));
        within_limit
    }

    pub fn answered(&mut self, connection_id: u64, state: TunnelState) {
        if let Some(entry) = self.tunnels.get_mut(&connection_id) {
            entry.0 = state;
        }
    }

    pub fn close(&mut self, connection_id: u64) {
        if let Some(entry) = self.tunnels.get_mut(&connection_id) {
            entry.1 = true;
            self.tombstones.push_back(connection_id);
        }
        while self.tombstones.len() > TOMBSTONES {
            if let Some(old) = self.tombstones.pop_front() {
                self.tunnels.remove(&old);
            }
        }
    }

    /// The tunnel that carried a response whose upstream connection id is `x`.
    pub fn carrier_of(&self, x: u64) -> Option<TunnelState> {
        self.tunnels.range(x.saturating_add(1)..).next().map(|(_, (state, _))| *state)
    }

    pub fn len(&self) -> usize {
        self.tunnels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }
}

/// Caches what a raw header value resolved to. Ids are interned, hence stable,
/// so dropping a full cache only costs parsing again.
fn remember(cache: &mut HashMap<Vec<u8>, u32>, raw: &[u8], id: u32, max: usize) {
    if cache.len() >= max {
        cache.clear();
    }
    cache.insert(raw.to_vec(), id);
}

/// Metric ids of one label set, in the order counter, duration, request bytes, response bytes.
type SeriesIds = [u32; 4];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey {
    source: u32,
    destination: u32,
    service: u32,
    response_code: u32,
    response_flags: u64,
    grpc: bool,
    grpc_status: Option<u32>,
}

/// One finished request, as the stats role hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub source: u32,
    pub destination: u32,
    pub service: u32,
    pub response_code: u32,
    pub response_flags: u64,
    pub grpc: bool,
    pub grpc_status: Option<u32>,
    pub duration_ms: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// The per-worker state.
#[derive(Debug)]
pub struct Worker {
    pub tunnels: TunnelTable,
    peers: Interner<Peer>,
    services: Interner<RoutedService>,
    /// Raw downstream descriptions (the `x-wp-peer` values) already decoded.
    downstream_cache: HashMap<Vec<u8>, u32>,
    /// Raw cluster names (the `x-wp-service` values) already read.
    service_cache: HashMap<Vec<u8>, u32>,
    series: HashMap<SeriesKey, SeriesIds>,
    max_series: usize,
    error_ids: [Option<u32>; ErrorReason::ALL.len()],
}

impl Worker {
    pub fn new(limits: &crate::Limits) -> Self {
        Self {
            tunnels: TunnelTable::new(limits.max_tunnels),
            peers: Interner::new(limits.max_label_sets),
            services: Interner::new(limits.max_label_sets),
            downstream_cache: HashMap::new(),
            service_cache: HashMap::new(),
            series: HashMap::new(),
            max_series: limits.max_label_sets,
            error_ids: [None; ErrorReason::ALL.len()],
        }
    }

    /// Counts an error. Costs two host calls the first time a reason occurs, one after.
    pub fn count(&mut self, reason: ErrorReason, metrics: &impl Metrics) {
        let Some(slot) = self.error_ids.get_mut(reason.index()) else { return };
        if slot.is_none() {
            *slot = metrics.define(MetricKind::Counter, &error_metric_name(reason)).ok();
        }
        if let Some(id) = *slot {
            let _ = metrics.increment(id, 1);
        }
    }

    /// The id of a peer (0 = unknown); counts when the cardinality limit is hit.
    pub fn peer_id(&mut self, peer: Peer, metrics: &impl Metrics) -> u32 {
        self.peers.intern(peer).unwrap_or_else(|| {
            self.count(ErrorReason::CardinalityLimit, metrics);
            0
        })
    }

    /// The id of the service a raw cluster name names, parsed once per distinct name.
    pub fn service_for(
        &mut self,
        cluster: &[u8],
        metrics: &impl Metrics,
        parse: impl FnOnce(&[u8]) -> RoutedService,
    ) -> u32 {
        if let Some(id) = self.service_cache.get(cluster) {
            return *id;
        }
        let id = self.services.intern(parse(cluster)).unwrap_or_else(|| {
            self.count(ErrorReason::CardinalityLimit, metrics);
            0
        });
        remember(&mut self.service_cache, cluster, id, self.max_series);
        id
    }

    /// The cached peer id for a raw downstream description, or decodes it with
    /// `decode` (which may count errors) and caches the result.
    pub fn downstream_peer(
        &mut self,
        raw: &[u8],
        metrics: &impl Metrics,
        decode: impl FnOnce(&mut Self) -> Peer,
    ) -> u32 {
        if let Some(id) = self.downstream_cache.get(raw) {
            return *id;
        }
        let peer = decode(self);
        let id = self.peer_id(peer, metrics);
        remember(&mut self.downstream_cache, raw, id, self.max_series);
        id
    }

    /// Emits the four Istio metrics for one request. Each label set is defined
    /// once (Envoy allocates per definition), then only incremented/recorded.
    pub fn record(&mut self, obs: &Observation, metrics: &impl Metrics) -> Result<(), HostError> {
        let key = SeriesKey {
            source: obs.source,
            destination: obs.destination,
            service: obs.service,
            response_code: obs.response_code,
            response_flags: obs.response_flags,
            grpc: obs.grpc,
            grpc_status: obs.grpc_status,
        };
        let key = if self.series.contains_key(&key) || self.series.len() < self.max_series {
            key
        } else {
            // Past the limit new peer pairs are still counted, as unknown peers:
            // those series are bounded by services x codes x flags.
            self.count(ErrorReason::CardinalityLimit, metrics);
            SeriesKey { source: 0, destination: 0, ..key }
        };
        let ids = match self.series.get(&key) {
            Some(ids) => *ids,
            None => {
                let ids = self.define_series(&key, metrics)?;
                self.series.insert(key, ids);
                ids
            }
        };
        let [requests, duration, request_bytes, response_bytes] = ids;
        metrics.increment(requests, 1)?;
        metrics.record(duration, obs.duration_ms)?;
        metrics.record(request_bytes, obs.request_bytes)?;
        metrics.record(response_bytes, obs.response_bytes)
    }

    fn define_series(&self, key: &SeriesKey, metrics: &impl Metrics) -> Result<SeriesIds, HostError> {
        let unknown_peer = Peer::default();
        let unknown_service = RoutedService::default();
        let flags = response_flags::short_string(key.response_flags);
        let labels = Labels::waypoint(
            self.peers.get(key.source).unwrap_or(&unknown_peer),
            self.peers.get(key.destination).unwrap_or(&unknown_peer),
            self.services.get(key.service).unwrap_or(&unknown_service),
            &RequestFacts {
                response_code: key.response_code,
                grpc: key.grpc,
                grpc_status: key.grpc_status,
                response_flags: &flags,
            },
        );
        let suffix = labels.stat_suffix();
        Ok([
            metrics.define(MetricKind::Counter, &format!("{REQUESTS_TOTAL}{suffix}"))?,
            metrics.define(MetricKind::Histogram, &format!("{REQUEST_DURATION}{suffix}"))?,
            metrics.define(MetricKind::Histogram, &format!("{REQUEST_BYTES}{suffix}"))?,
            metrics.define(MetricKind::Histogram, &format!("{RESPONSE_BYTES}{suffix}"))?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_finds_the_first_tunnel_opened_after_its_connection() {
        let mut tunnels = TunnelTable::new(8);
        for id in [11, 14, 20] {
            tunnels.open(id);
        }
        tunnels.answered(11, TunnelState::Established(1));
        tunnels.answered(14, TunnelState::Established(2));
        tunnels.answered(20, TunnelState::Failed);
        assert_eq!(tunnels.carrier_of(10), Some(TunnelState::Established(1)));
        assert_eq!(tunnels.carrier_of(12), Some(TunnelState::Established(2)), "ids of the other worker in between");
        assert_eq!(tunnels.carrier_of(19), Some(TunnelState::Failed));
        assert_eq!(tunnels.carrier_of(20), None);
    }

    #[test]
    fn a_closed_tunnel_stays_findable_so_a_younger_one_is_never_blamed() {
        let mut tunnels = TunnelTable::new(8);
        tunnels.open(5);
        tunnels.answered(5, TunnelState::Failed);
        tunnels.open(9);
        tunnels.answered(9, TunnelState::Established(3));
        tunnels.close(5);
        assert_eq!(tunnels.carrier_of(4), Some(TunnelState::Failed));
    }

    #[test]
    fn tombstones_and_open_tunnels_are_bounded() {
        let mut tunnels = TunnelTable::new(2);
        for id in 0..(TOMBSTONES as u64 + 100) {
            tunnels.open(id);
            tunnels.close(id);
        }
        assert!(tunnels.len() <= TOMBSTONES);
        let mut full = TunnelTable::new(2);
        let kept = (0..(TOMBSTONES as u64 + 10)).filter(|id| full.open(*id)).count();
        assert_eq!(kept, TOMBSTONES + 2);
        assert_eq!(full.len(), TOMBSTONES + 2);
    }

    #[test]
    fn interned_ids_are_stable_and_bounded() {
        let mut interner: Interner<String> = Interner::new(2);
        assert_eq!(interner.intern(String::new()), Some(0));
        assert_eq!(interner.intern("a".into()), Some(1));
        assert_eq!(interner.intern("b".into()), Some(2));
        assert_eq!(interner.intern("c".into()), None);
        assert_eq!(interner.intern("a".into()), Some(1));
    }
}
