//! State one wasm VM keeps for its Envoy worker thread. All roles of the module
//! run in the same VM on a worker, so the tunnel table written by the upstream
//! role is read by the stats role without any host call.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;

use crate::host::{HostError, MetricKind, Metrics};
use crate::labels::{
    Labels, REQUEST_BYTES, REQUEST_DURATION, REQUEST_MESSAGES, REQUESTS_TOTAL, RESPONSE_BYTES, RESPONSE_MESSAGES,
    RequestFacts, RoutedService, Series,
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
    /// Peer metadata claimed a namespace its verified identity contradicts; the
    /// identity's namespace was used.
    IdentityMismatch,
}

impl ErrorReason {
    const ALL: [ErrorReason; 8] = [
        Self::BaggageRejected,
        Self::ValueRejected,
        Self::LegacyRejected,
        Self::HostCall,
        Self::CardinalityLimit,
        Self::TunnelLimit,
        Self::TunnelUnbound,
        Self::IdentityMismatch,
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
            Self::IdentityMismatch => "identity_mismatch",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Small dense ids for values seen often, so hot-path keys are integers.
/// Id 0 is the default value (an unknown service). Used for routed services,
/// whose number is fixed by the config.
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

/// Peers by id. Only label fields are kept ([`Peer::label_fields`]); each verified
/// identity may fill at most its own share of slots; ids are never reused, so an id
/// still held by a request in flight can never come to name another peer.
#[derive(Debug)]
struct PeerTable {
    ids: HashMap<Peer, u32>,
    values: HashMap<u32, Peer>,
    /// Live peers per principal (the empty principal: peers without a TLS identity).
    per_identity: HashMap<String, usize>,
    next: u32,
    max: usize,
    max_per_identity: usize,
}

/// Why a peer could not get a slot of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoSlot {
    /// Its identity already describes `max_peers_per_identity` peers.
    IdentityShare,
    /// `max_label_sets` peers are alive.
    Full,
}

impl PeerTable {
    fn new(limits: &crate::Limits) -> Self {
        let mut table = Self {
            ids: HashMap::new(),
            values: HashMap::new(),
            per_identity: HashMap::new(),
            next: 1,
            max: limits.max_label_sets,
            max_per_identity: limits.max_peers_per_identity,
        };
        table.ids.insert(Peer::default(), 0);
        table.values.insert(0, Peer::default());
        table
    }

    fn get(&self, id: u32) -> Option<&Peer> {
        self.values.get(&id)
    }

    fn find(&self, peer: &Peer) -> Option<u32> {
        self.ids.get(peer).copied()
    }

    /// A new slot for `peer`. A peer reduced to its identity ([`Peer::verified_only`])
    /// is not charged to the identity's share: there is one such peer per identity.
    fn insert(&mut self, peer: Peer) -> Result<u32, NoSlot> {
        let reduced = peer == peer.verified_only();
        let share = self.per_identity.get(&peer.principal).copied().unwrap_or(0);
        if !reduced && share >= self.max_per_identity {
            return Err(NoSlot::IdentityShare);
        }
        // Reduced peers may use a second `max` of slots: their number is bounded by the
        // identities the mesh CA issued, and they are what keeps labels verified.
        let room = if reduced { self.max.saturating_mul(2) } else { self.max };
        if self.values.len() > room {
            return Err(NoSlot::Full);
        }
        let id = self.next;
        self.next = self.next.checked_add(1).ok_or(NoSlot::Full)?;
        if !reduced {
            *self.per_identity.entry(peer.principal.clone()).or_default() += 1;
        }
        self.values.insert(id, peer.clone());
        self.ids.insert(peer, id);
        Ok(id)
    }

    /// Frees every peer but 0 and those in `live`; returns how many were freed.
    fn retain(&mut self, live: &HashSet<u32>) -> usize {
        let dead: Vec<u32> = self.values.keys().copied().filter(|id| *id != 0 && !live.contains(id)).collect();
        for id in &dead {
            if let Some(peer) = self.values.remove(id) {
                if peer != peer.verified_only()
                    && let Some(share) = self.per_identity.get_mut(&peer.principal)
                {
                    *share = share.saturating_sub(1);
                }
                self.ids.remove(&peer);
            }
        }
        self.per_identity.retain(|_, share| *share > 0);
        dead.len()
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
    tunnels: BTreeMap<u64, TunnelState>,
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
        self.tunnels.insert(connection_id, TunnelState::Pending);
        within_limit
    }

    pub fn answered(&mut self, connection_id: u64, state: TunnelState) {
        if let Some(entry) = self.tunnels.get_mut(&connection_id) {
            *entry = state;
        }
    }

    pub fn close(&mut self, connection_id: u64) {
        if self.tunnels.contains_key(&connection_id) {
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
        self.tunnels.range(x.saturating_add(1)..).next().map(|(_, state)| *state)
    }

    /// Tunnels and tombstones held.
    pub fn entries(&self) -> usize {
        self.tunnels.len()
    }

    /// The peers the table still names.
    fn peers(&self) -> impl Iterator<Item = u32> + '_ {
        self.tunnels.values().filter_map(|state| match state {
            TunnelState::Established(peer) => Some(*peer),
            TunnelState::Pending | TunnelState::Failed => None,
        })
    }
}

/// Caches what a raw header value resolved to; a full cache is dropped, which
/// only costs parsing again.
fn remember<K: Eq + Hash>(cache: &mut HashMap<K, u32>, key: K, id: u32, max: usize) {
    if cache.len() >= max {
        cache.clear();
    }
    cache.insert(key, id);
}

/// Metric ids of one label set: the counter and the three histograms, then, for
/// gRPC, the two message counters.
#[derive(Debug, Clone, Copy)]
struct SeriesIds {
    requests: u32,
    duration: u32,
    request_bytes: u32,
    response_bytes: u32,
    messages: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey {
    source: u32,
    destination: u32,
    service: u32,
    response_code: u32,
    response_flags: u64,
    grpc: bool,
    grpc_status: Option<i32>,
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
    pub grpc_status: Option<i32>,
    pub duration_ms: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// gRPC messages (request, response), when Envoy's grpc_stats counted them.
    pub messages: Option<(u64, u64)>,
}

/// The per-worker state.
#[derive(Debug)]
pub struct Worker {
    pub tunnels: TunnelTable,
    peers: PeerTable,
    services: Interner<RoutedService>,
    /// Raw downstream descriptions (the three `x-wp-peer-*` values) already decoded.
    downstream_cache: HashMap<Vec<u8>, u32>,
    /// Raw endpoint metadata (the `x-wp-endpoint` values) already decoded.
    endpoint_cache: HashMap<Vec<u8>, u32>,
    /// (tunnel peer, endpoint peer) to the destination peer they make together.
    destination_cache: HashMap<(u32, u32), u32>,
    /// Raw cluster names (the `x-wp-service` values) already read.
    service_cache: HashMap<Vec<u8>, u32>,
    series: HashMap<SeriesKey, SeriesIds>,
    max_series: usize,
    error_ids: [Option<u32>; ErrorReason::ALL.len()],
    /// Peers held by requests in flight, with how many hold each: never freed meanwhile.
    held: HashMap<u32, u32>,
}

impl Worker {
    pub fn new(limits: &crate::Limits) -> Self {
        Self {
            tunnels: TunnelTable::new(limits.max_tunnels),
            peers: PeerTable::new(limits),
            services: Interner::new(limits.max_label_sets),
            downstream_cache: HashMap::new(),
            endpoint_cache: HashMap::new(),
            destination_cache: HashMap::new(),
            service_cache: HashMap::new(),
            series: HashMap::new(),
            max_series: limits.max_label_sets,
            error_ids: [None; ErrorReason::ALL.len()],
            held: HashMap::new(),
        }
    }

    /// A request in flight uses peer `id`: it stays until [`Worker::release`].
    pub fn hold(&mut self, id: u32) {
        if id != 0 {
            *self.held.entry(id).or_default() += 1;
        }
    }

    pub fn release(&mut self, id: u32) {
        if let Some(count) = self.held.get_mut(&id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.held.remove(&id);
            }
        }
    }

    /// Exports `istio_build` once per worker (the gauge is shared, so every worker sets 1).
    pub fn announce_build(&mut self, metrics: &impl Metrics) {
        let set = metrics.define(MetricKind::Gauge, &Series::build()).and_then(|id| metrics.record(id, 1));
        if set.is_err() {
            self.count(ErrorReason::HostCall, metrics);
        }
    }

    /// Counts an error. Costs two host calls the first time a reason occurs, one after.
    pub fn count(&mut self, reason: ErrorReason, metrics: &impl Metrics) {
        let Some(slot) = self.error_ids.get_mut(reason.index()) else { return };
        if slot.is_none() {
            *slot = metrics.define(MetricKind::Counter, &Series::errors(&reason.as_str())).ok();
        }
        if let Some(id) = *slot {
            let _ = metrics.increment(id, 1);
        }
    }

    /// The id of a peer (0 = unknown). Only label fields are kept. A peer that gets no
    /// slot of its own (its identity's share or the table is full) keeps what its
    /// certificate vouches for; both are counted.
    pub fn peer_id(&mut self, peer: Peer, metrics: &impl Metrics) -> u32 {
        let peer = peer.label_fields();
        if let Some(id) = self.peers.find(&peer) {
            return id;
        }
        let inserted = match self.peers.insert(peer.clone()) {
            Err(NoSlot::Full) if self.collect_unused_peers() > 0 => self.peers.insert(peer.clone()),
            other => other,
        };
        match inserted {
            Ok(id) => id,
            Err(_) => {
                self.count(ErrorReason::CardinalityLimit, metrics);
                let reduced = peer.verified_only();
                self.peers.find(&reduced).or_else(|| self.peers.insert(reduced).ok()).unwrap_or(0)
            }
        }
    }

    /// Frees the peers that no series, tunnel, cache or request in flight names any more, so a one-off
    /// flood does not hold slots until restart. Runs only when the table is full.
    fn collect_unused_peers(&mut self) -> usize {
        let mut live: HashSet<u32> = HashSet::new();
        for key in self.series.keys() {
            live.insert(key.source);
            live.insert(key.destination);
        }
        live.extend(self.tunnels.peers());
        live.extend(self.held.keys().copied());
        live.extend(self.downstream_cache.values().copied());
        live.extend(self.endpoint_cache.values().copied());
        for ((tunnel, endpoint), destination) in &self.destination_cache {
            live.extend([*tunnel, *endpoint, *destination]);
        }
        self.peers.retain(&live)
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
        remember(&mut self.service_cache, cluster.to_vec(), id, self.max_series);
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
        remember(&mut self.downstream_cache, raw.to_vec(), id, self.max_series);
        id
    }

    /// The peer id of raw endpoint metadata, decoded once per distinct value.
    pub fn endpoint_peer(&mut self, raw: &[u8], metrics: &impl Metrics, decode: impl FnOnce(&[u8]) -> Peer) -> u32 {
        if let Some(id) = self.endpoint_cache.get(raw) {
            return *id;
        }
        let id = self.peer_id(decode(raw), metrics);
        remember(&mut self.endpoint_cache, raw.to_vec(), id, self.max_series);
        id
    }

    /// The destination peer from what the tunnel learnt (its CONNECT 200 `baggage` and
    /// TLS identity) and the endpoint metadata: baggage wins; without it the endpoint
    /// metadata fills in, under the tunnel's identity, whose namespace wins.
    pub fn destination(&mut self, tunnel: u32, endpoint: u32, metrics: &impl Metrics) -> u32 {
        if endpoint == 0 {
            return tunnel;
        }
        if let Some(id) = self.destination_cache.get(&(tunnel, endpoint)) {
            return *id;
        }
        let known = self.peers.get(tunnel).cloned().unwrap_or_default();
        let id = if known.has_metadata() {
            tunnel
        } else {
            let mut peer = self.peers.get(endpoint).cloned().unwrap_or_default();
            peer.principal = known.principal;
            peer.pin_namespace();
            self.peer_id(peer, metrics)
        };
        remember(&mut self.destination_cache, (tunnel, endpoint), id, self.max_series);
        id
    }

    /// Emits the Istio metrics for one request. Each label set is defined once
    /// (Envoy allocates per definition), then only incremented/recorded.
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
            self.count(ErrorReason::CardinalityLimit, metrics);
            self.reduced_key(key, metrics)
        };
        let ids = match self.series.get(&key) {
            Some(ids) => *ids,
            None => {
                let ids = self.define_series(&key, metrics)?;
                self.series.insert(key, ids);
                ids
            }
        };
        // The request counter last: whoever sees the request counted (a scrape runs on
        // another thread) also sees its messages. Every call is made even if one fails, and
        // Envoy refuses to add 0 to a counter, so empty message counts are skipped.
        let mut first_error = Ok(());
        let mut keep = |result: Result<(), HostError>| {
            if first_error.is_ok() {
                first_error = result;
            }
        };
        if let (Some((requests, responses)), Some((sent, received))) = (ids.messages, obs.messages) {
            for (id, count) in [(requests, sent), (responses, received)] {
                if count > 0 {
                    keep(metrics.increment(id, i64::try_from(count).unwrap_or(i64::MAX)));
                }
            }
        }
        keep(metrics.record(ids.duration, obs.duration_ms));
        keep(metrics.record(ids.request_bytes, obs.request_bytes));
        keep(metrics.record(ids.response_bytes, obs.response_bytes));
        keep(metrics.increment(ids.requests, 1));
        first_error
    }

    /// Past the series limit a new label set keeps what certificates vouch for. Those
    /// sets are bounded by the issued identities; past twice the limit, by services,
    /// codes and flags alone (unknown peers).
    fn reduced_key(&mut self, key: SeriesKey, metrics: &impl Metrics) -> SeriesKey {
        let reduce = |worker: &mut Self, id: u32| {
            let peer = worker.peers.get(id).map(Peer::verified_only).unwrap_or_default();
            worker.peer_id(peer, metrics)
        };
        let reduced = SeriesKey { source: reduce(self, key.source), destination: reduce(self, key.destination), ..key };
        if self.series.contains_key(&reduced) || self.series.len() < self.max_series.saturating_mul(2) {
            reduced
        } else {
            SeriesKey { source: 0, destination: 0, ..key }
        }
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
        let values = labels.values();
        let define = |kind, name| metrics.define(kind, &Series::istio(name, &values));
        let messages = if key.grpc {
            Some((define(MetricKind::Counter, REQUEST_MESSAGES)?, define(MetricKind::Counter, RESPONSE_MESSAGES)?))
        } else {
            None
        };
        Ok(SeriesIds {
            requests: define(MetricKind::Counter, REQUESTS_TOTAL)?,
            duration: define(MetricKind::Histogram, REQUEST_DURATION)?,
            request_bytes: define(MetricKind::Histogram, REQUEST_BYTES)?,
            response_bytes: define(MetricKind::Histogram, RESPONSE_BYTES)?,
            messages,
        })
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
        assert!(tunnels.entries() <= TOMBSTONES);
        let mut full = TunnelTable::new(2);
        let kept = (0..(TOMBSTONES as u64 + 10)).filter(|id| full.open(*id)).count();
        assert_eq!(kept, TOMBSTONES + 2);
        assert_eq!(full.entries(), TOMBSTONES + 2);
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
