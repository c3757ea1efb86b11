//! ztunnel's L4 metrics (`istio_tcp_*`, PROTOCOL.md §4), `istio_build`, plus the
//! shim's own counters: refusals per reason, identity mismatches and the outbound pool.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use waypoint_core::{Limits, Peer, value};

use crate::tls::HandshakeFailure;
use mesh::Service;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// The outbound side, next to the client.
    Source,
    /// The inbound side, next to the server.
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// Envoy-style short flags, as ztunnel writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlags {
    None,
    ConnectionFailure,
    TlsFailure,
    Http2HandshakeFailure,
}

impl ResponseFlags {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::ConnectionFailure => "CONNECT",
            Self::TlsFailure => "TLS_FAILURE",
            Self::Http2HandshakeFailure => "H2_HANDSHAKE_FAILURE",
        }
    }
}

/// Why a connection or a CONNECT was refused or failed; one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Handshake(HandshakeFailure),
    Http2Handshake,
    /// 400: the method is not CONNECT.
    NotConnect,
    /// 400: the authority is malformed or not the pod address it arrived on.
    BadAuthority,
    /// 503: the authority names a service this workload does not back (ztunnel: NoHostname).
    UnknownService,
    /// 503: the app did not accept the connection.
    AppUnreachable,
    /// Outbound: nothing to send to (no endpoint, no gateway for its network).
    NoRoute,
    /// Outbound: the HBONE peer did not accept a TCP connection.
    UpstreamUnreachable,
    /// Outbound: the HTTP/2 exchange with the HBONE peer failed.
    UpstreamHttp2,
    /// Outbound: the HBONE peer answered the CONNECT with a status other than 200.
    UpstreamStatus,
    /// Inbound: a connection without open streams reached the idle timeout and was closed.
    IdleConnection,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshake(HandshakeFailure::NoClientCert) => "tls_no_client_cert",
            Self::Handshake(HandshakeFailure::PeerIdentity) => "tls_peer_identity",
            Self::Handshake(HandshakeFailure::UntrustedCert) => "tls_untrusted_cert",
            Self::Handshake(HandshakeFailure::Other) => "tls_other",
            Self::Http2Handshake => "h2_handshake",
            Self::NotConnect => "not_connect",
            Self::BadAuthority => "bad_authority",
            Self::UnknownService => "unknown_service",
            Self::AppUnreachable => "app_unreachable",
            Self::NoRoute => "no_route",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamHttp2 => "upstream_h2",
            Self::UpstreamStatus => "upstream_status",
            Self::IdleConnection => "idle_timeout",
        }
    }

    /// The flag ztunnel puts on the closed connection for this failure.
    pub fn flags(self) -> ResponseFlags {
        match self {
            Self::Handshake(_) => ResponseFlags::TlsFailure,
            Self::Http2Handshake | Self::UpstreamHttp2 => ResponseFlags::Http2HandshakeFailure,
            _ => ResponseFlags::ConnectionFailure,
        }
    }
}

/// The label set of `istio_tcp_*`, in ztunnel's order.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    reporter: &'static str,
    source_workload: String,
    source_canonical_service: String,
    source_canonical_revision: String,
    source_workload_namespace: String,
    source_principal: String,
    source_app: String,
    source_version: String,
    source_cluster: String,
    destination_service: String,
    destination_service_namespace: String,
    destination_service_name: String,
    destination_workload: String,
    destination_canonical_service: String,
    destination_canonical_revision: String,
    destination_workload_namespace: String,
    destination_principal: String,
    destination_app: String,
    destination_version: String,
    destination_cluster: String,
    request_protocol: &'static str,
    response_flags: &'static str,
    connection_security_policy: &'static str,
    source_region: String,
    source_zone: String,
    destination_region: String,
    destination_zone: String,
}

/// A label value: `unknown` when empty or when it holds bytes a label may not.
fn label(raw: &str) -> String {
    match value::sanitize(raw.as_bytes(), Limits::default().max_value_bytes) {
        Ok(clean) if !clean.is_empty() => clean,
        _ => "unknown".to_owned(),
    }
}

impl TrafficLabels {
    /// Labels for one connection; both peers carry their TLS identity in `principal`.
    pub fn new(reporter: Reporter, source: &Peer, destination: &Peer, service: Option<&Service>) -> Self {
        let service_field = |f: fn(&Service) -> &str| label(service.map(f).unwrap_or_default());
        Self {
            reporter: reporter.as_str(),
            source_workload: label(&source.workload_name),
            source_canonical_service: label(&source.canonical_service),
            source_canonical_revision: label(&source.canonical_revision),
            source_workload_namespace: label(&source.namespace),
            source_principal: label(&source.principal),
            source_app: label(&source.app),
            source_version: label(&source.version),
            source_cluster: label(&source.cluster),
            destination_service: service_field(|s| &s.hostname),
            destination_service_namespace: service_field(|s| &s.namespace),
            destination_service_name: service_field(|s| &s.name),
            destination_workload: label(&destination.workload_name),
            destination_canonical_service: label(&destination.canonical_service),
            destination_canonical_revision: label(&destination.canonical_revision),
            destination_workload_namespace: label(&destination.namespace),
            destination_principal: label(&destination.principal),
            destination_app: label(&destination.app),
            destination_version: label(&destination.version),
            destination_cluster: label(&destination.cluster),
            request_protocol: "tcp",
            response_flags: ResponseFlags::None.as_str(),
            connection_security_policy: "mutual_tls",
            source_region: label(&source.region),
            source_zone: label(&source.zone),
            destination_region: label(&destination.region),
            destination_zone: label(&destination.zone),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reporter: &'static str,
    reason: &'static str,
}

/// Which peer's baggage claimed a namespace its verified identity contradicts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MismatchLabels {
    reporter: &'static str,
    /// `source` (request baggage, inbound) or `destination` (response baggage, outbound).
    peer: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    tag: &'static str,
}

pub struct Metrics {
    registry: Registry,
    opened: Family<TrafficLabels, Counter>,
    closed: Family<TrafficLabels, Counter>,
    sent: Family<TrafficLabels, Counter>,
    received: Family<TrafficLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    identity_mismatches: Family<MismatchLabels, Counter>,
    pub pool_connections: Gauge,
    /// TCP + TLS + HTTP/2 connects the pool started, successful or not.
    pub pool_connect_attempts: Counter,
    pub pool_connections_opened: Counter,
    pub pool_streams_opened: Counter,
    pub inbound_connections: Counter,
    /// Label sets seen so far: peers choose label values, so their number is capped.
    label_sets: Mutex<HashSet<TrafficLabels>>,
    max_label_sets: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        let (opened, closed, sent, received) =
            (Family::default(), Family::default(), Family::default(), Family::default());
        let (refusals, identity_mismatches) = (Family::default(), Family::default());
        let (pool_connections, pool_connections_opened) = (Gauge::default(), Counter::default());
        let (pool_streams_opened, inbound_connections) = (Counter::default(), Counter::default());
        let pool_connect_attempts = Counter::default();
        let mut registry = Registry::default();
        // Istio's proxies export their build; dashboards and Kiali read the version from it.
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { component: "ztunnel", tag: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("istio_build", "Istio component build info", build);
        registry.register("istio_tcp_connections_opened", "TCP connections opened", opened.clone());
        registry.register("istio_tcp_connections_closed", "TCP connections closed", closed.clone());
        // ztunnel's direction, on both reporters: "received" is what the client sent.
        registry.register("istio_tcp_sent_bytes", "Bytes sent from the server back to the client", sent.clone());
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client for the server",
            received.clone(),
        );
        registry.register(
            "host_shim_refusals",
            "Connections and CONNECT requests refused or failed, per reason",
            refusals.clone(),
        );
        registry.register(
            "host_shim_peer_identity_mismatch",
            "Peers whose baggage namespace contradicts their verified SPIFFE identity (the identity wins)",
            identity_mismatches.clone(),
        );
        registry.register(
            "host_shim_pool_connect_attempts",
            "Outbound HBONE connects started (TCP + TLS + HTTP/2), shared by concurrent callers",
            pool_connect_attempts.clone(),
        );
        registry.register(
            "host_shim_pool_connections",
            "Outbound HBONE connections open now",
            pool_connections.clone(),
        );
        registry.register(
            "host_shim_pool_connections_opened",
            "Outbound HBONE connections opened",
            pool_connections_opened.clone(),
        );
        registry.register(
            "host_shim_pool_streams_opened",
            "CONNECT streams opened on pooled connections",
            pool_streams_opened.clone(),
        );
        registry.register(
            "host_shim_inbound_connections",
            "Inbound HBONE connections accepted (TLS and HTTP/2 established)",
            inbound_connections.clone(),
        );
        Self {
            registry,
            opened,
            closed,
            sent,
            received,
            refusals,
            identity_mismatches,
            pool_connections,
            pool_connect_attempts,
            pool_connections_opened,
            pool_streams_opened,
            inbound_connections,
            label_sets: Mutex::default(),
            max_label_sets: Limits::default().max_label_sets,
        }
    }
}

impl Metrics {
    pub fn refuse(&self, reporter: Reporter, refusal: Refusal) {
        self.refusals.get_or_create(&RefusalLabels { reporter: reporter.as_str(), reason: refusal.as_str() }).inc();
    }

    /// Counts a baggage namespace that the peer's verified identity contradicts.
    pub fn identity_mismatch(&self, reporter: Reporter, peer: Reporter) {
        let labels = MismatchLabels { reporter: reporter.as_str(), peer: peer.as_str() };
        self.identity_mismatches.get_or_create(&labels).inc();
    }

    /// Counts a connection as opened; the record counts bytes as they move and the
    /// close once, at `close` or at the latest when dropped.
    pub fn open(self: &Arc<Self>, labels: TrafficLabels) -> ConnectionRecord {
        let labels = self.bounded(labels);
        self.opened.get_or_create(&labels).inc();
        ConnectionRecord {
            server_to_client: self.sent.get_or_create(&labels).clone(),
            client_to_server: self.received.get_or_create(&labels).clone(),
            bytes_server_to_client: AtomicU64::new(0),
            bytes_client_to_server: AtomicU64::new(0),
            metrics: self.clone(),
            labels,
            started: Instant::now(),
            recorded: false,
        }
    }

    /// Past the cap, new label sets lose everything a peer could have chosen.
    fn bounded(&self, labels: TrafficLabels) -> TrafficLabels {
        let Ok(mut seen) = self.label_sets.lock() else { return labels };
        if seen.contains(&labels) {
            return labels;
        }
        let labels = if seen.len() < self.max_label_sets {
            labels
        } else {
            let reporter = if labels.reporter == "source" { Reporter::Source } else { Reporter::Destination };
            TrafficLabels::new(reporter, &Peer::default(), &Peer::default(), None)
        };
        seen.insert(labels.clone());
        labels
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Bytes one connection moved so far, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub client_to_server: u64,
    pub server_to_client: u64,
}

/// One connection's L4 metrics, from open to close (ztunnel's `ConnectionResult`):
/// bytes are counted as they are spliced, and the close is recorded exactly once,
/// by `close` or, failing that, on drop — so opened == closed by construction.
pub struct ConnectionRecord {
    metrics: Arc<Metrics>,
    labels: TrafficLabels,
    /// `istio_tcp_sent_bytes_total` of these labels.
    server_to_client: Counter,
    /// `istio_tcp_received_bytes_total` of these labels.
    client_to_server: Counter,
    bytes_server_to_client: AtomicU64,
    bytes_client_to_server: AtomicU64,
    started: Instant,
    recorded: bool,
}

impl ConnectionRecord {
    /// Bytes from the client toward the server: ztunnel's "received".
    pub fn client_to_server(&self, n: u64) {
        self.client_to_server.inc_by(n);
        self.bytes_client_to_server.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes from the server back to the client: ztunnel's "sent".
    pub fn server_to_client(&self, n: u64) {
        self.server_to_client.inc_by(n);
        self.bytes_server_to_client.fetch_add(n, Ordering::Relaxed);
    }

    pub fn moved(&self) -> Moved {
        Moved {
            client_to_server: self.bytes_client_to_server.load(Ordering::Relaxed),
            server_to_client: self.bytes_server_to_client.load(Ordering::Relaxed),
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn close(mut self, flags: ResponseFlags) {
        self.record(flags);
    }

    fn record(&mut self, flags: ResponseFlags) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        self.labels.response_flags = flags.as_str();
        self.metrics.closed.get_or_create(&self.labels).inc();
    }
}

impl Drop for ConnectionRecord {
    /// A connection dropped without a result (a task cut at the drain deadline, a
    /// runtime shut down) is still counted as closed, with the flags it had, and logged
    /// as an error as ztunnel logs its drain closes.
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        let flags = ResponseFlags::None;
        self.record(flags);
        let moved = self.moved();
        tracing::error!(
            reporter = self.labels.reporter,
            src.identity = %self.labels.source_principal,
            dst.identity = %self.labels.destination_principal,
            client_to_server = moved.client_to_server,
            server_to_client = moved.server_to_client,
            duration_ms = self.started.elapsed().as_millis() as u64,
            error = "closed without a result (drain deadline or shutdown)",
            "connection complete"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> f64 {
        text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    fn labels() -> TrafficLabels {
        TrafficLabels::new(Reporter::Destination, &Peer::default(), &Peer::default(), None)
    }

    #[test]
    fn a_record_dropped_without_close_is_counted_as_closed_once() {
        let metrics = Arc::new(Metrics::default());
        let record = metrics.open(labels());
        record.client_to_server(7);
        drop(record);
        let text = metrics.encode();
        assert_eq!(sample(&text, "istio_tcp_connections_opened_total{"), 1.0);
        assert_eq!(sample(&text, "istio_tcp_connections_closed_total{"), 1.0);
        assert!(text.contains(r#"response_flags="-""#), "{text}");
        assert_eq!(sample(&text, "istio_tcp_received_bytes_total{"), 7.0);
    }

    #[test]
    fn a_closed_record_is_not_counted_again_when_dropped() {
        let metrics = Arc::new(Metrics::default());
        metrics.open(labels()).close(ResponseFlags::ConnectionFailure);
        let text = metrics.encode();
        assert_eq!(sample(&text, "istio_tcp_connections_closed_total{"), 1.0);
        assert!(text.contains(r#"response_flags="CONNECT""#), "{text}");
    }

    #[test]
    fn bytes_are_counted_in_ztunnels_direction() {
        let metrics = Arc::new(Metrics::default());
        let record = metrics.open(labels());
        record.client_to_server(10_000);
        record.server_to_client(10);
        assert_eq!(record.moved(), Moved { client_to_server: 10_000, server_to_client: 10 });
        record.close(ResponseFlags::None);
        let text = metrics.encode();
        assert_eq!(sample(&text, "istio_tcp_received_bytes_total{"), 10_000.0);
        assert_eq!(sample(&text, "istio_tcp_sent_bytes_total{"), 10.0);
    }

    #[test]
    fn the_build_is_exported_as_ztunnels() {
        let text = Metrics::default().encode();
        assert!(text.contains("istio_build{component=\"ztunnel\",tag=\"0.1.0\"} 1\n"), "{text}");
    }
}
