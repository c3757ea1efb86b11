//! Istio's L7 metric labels for `reporter="waypoint"` (PROTOCOL.md §4) and the
//! encoding of labels into an Envoy stat name for `stats_config.stats_tags`.

use crate::peer::{Peer, SpiffeId};
use crate::value;

/// The label names, in Istio's order.
pub const LABEL_NAMES: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// The four waypoint metrics. Counter first, then the histograms.
pub const REQUESTS_TOTAL: &str = "istio_requests_total";
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
pub const REQUEST_BYTES: &str = "istio_request_bytes";
pub const RESPONSE_BYTES: &str = "istio_response_bytes";

const UNKNOWN: &str = "unknown";

/// The service a request was routed to, known from the route's cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RoutedService {
    /// Fully qualified host, e.g. `reviews.default.svc.cluster.local`.
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl RoutedService {
    /// Reads Istio's cluster naming, `<direction>|<port>|<subset>|<host>`
    /// (waypoints route to `inbound-vip|9080|http|reviews.default.svc.cluster.local`).
    /// A host of the form `<name>.<namespace>.svc.<domain>` gives name and namespace;
    /// any other host is its own name with an unknown namespace.
    pub fn from_cluster_name(cluster: &[u8], max_len: usize) -> Self {
        let host_bytes = cluster.rsplit(|b| *b == b'|').next().unwrap_or_default();
        if cluster.iter().filter(|b| **b == b'|').count() != 3 {
            return Self::default();
        }
        let Ok(host) = value::sanitize(host_bytes, max_len) else { return Self::default() };
        let mut parts = host.split('.');
        let (name, namespace) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(namespace), Some("svc"), Some(_)) => (name.to_owned(), namespace.to_owned()),
            _ => (host.clone(), String::new()),
        };
        Self { host, name, namespace }
    }
}

/// Facts about one request that are not about either peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestFacts<'a> {
    /// HTTP status, 0 when no response was sent.
    pub response_code: u32,
    /// True when the request's content-type is `application/grpc*`.
    pub grpc: bool,
    /// The numeric gRPC status, when the request is gRPC and one was seen.
    pub grpc_status: Option<u32>,
    /// Envoy's short response flags, e.g. `UF,URX`; empty when none.
    pub response_flags: &'a str,
}

/// The 25 label values, in [`LABEL_NAMES`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels(pub [String; 25]);

impl Labels {
    /// Applies the waypoint rules: source from the downstream peer, destination
    /// from the upstream peer, service from the route, `unknown` for gaps.
    pub fn waypoint(source: &Peer, destination: &Peer, service: &RoutedService, facts: &RequestFacts<'_>) -> Self {
        let or_unknown = |v: &str| if v.is_empty() { UNKNOWN.to_owned() } else { v.to_owned() };
        // The namespace proven by the TLS identity beats the one claimed in baggage.
        let source_namespace = SpiffeId::parse(&source.principal).map_or(source.namespace.as_str(), |id| id.namespace);
        let source_revision =
            if source.canonical_revision.is_empty() { "latest".to_owned() } else { source.canonical_revision.clone() };
        // As Istio's stats filter for a waypoint: the policy of the downstream
        // connection, which presented the client's certificate (or did not).
        let mutual_tls = !source.principal.is_empty();
        Self([
            "waypoint".to_owned(),
            or_unknown(&source.workload_name),
            or_unknown(&source.canonical_service),
            source_revision,
            or_unknown(source_namespace),
            or_unknown(&source.principal),
            or_unknown(&source.app),
            or_unknown(&source.version),
            or_unknown(&source.cluster),
            or_unknown(&destination.workload_name),
            or_unknown(&destination.namespace),
            or_unknown(&destination.principal),
            or_unknown(&destination.app),
            or_unknown(&destination.version),
            or_unknown(&service.host),
            or_unknown(&destination.canonical_service),
            or_unknown(&destination.canonical_revision),
            or_unknown(&service.name),
            or_unknown(&service.namespace),
            or_unknown(&destination.cluster),
            if facts.grpc { "grpc" } else { "http" }.to_owned(),
            facts.response_code.to_string(),
            match (facts.grpc, facts.grpc_status) {
                (true, Some(status)) => status.to_string(),
                _ => String::new(),
            },
            if facts.response_flags.is_empty() { "-".to_owned() } else { facts.response_flags.to_owned() },
            if mutual_tls { "mutual_tls" } else { "none" }.to_owned(),
        ])
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        LABEL_NAMES.iter().position(|n| *n == name).and_then(|i| self.0.get(i)).map(String::as_str)
    }

    /// `;name=value` for every label, appended to a metric's base name to form
    /// the Envoy stat name. Envoy's `stats_tags` (see [`stats_tag_regex`]) cut
    /// each pair back out, leaving the base name with real labels.
    pub fn stat_suffix(&self) -> String {
        let mut out = String::with_capacity(640);
        for (name, val) in LABEL_NAMES.iter().zip(self.0.iter()) {
            out.push(';');
            out.push_str(name);
            out.push('=');
            out.push_str(val);
        }
        out
    }
}

/// The `stats_tags` regex that extracts label `name` from a stat name built
/// with [`Labels::stat_suffix`]: the first group is cut, the second is the value.
pub fn stats_tag_regex(name: &str) -> String {
    format!("(;{name}=([^;]*))")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_service_reads_istio_cluster_names() {
        let svc = RoutedService::from_cluster_name(b"inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local", 253);
        assert_eq!(
            (svc.host.as_str(), svc.name.as_str(), svc.namespace.as_str()),
            ("reviews.bookinfo.svc.cluster.local", "reviews", "bookinfo")
        );
        let external = RoutedService::from_cluster_name(b"outbound|443||httpbin.org", 253);
        assert_eq!((external.name.as_str(), external.namespace.as_str()), ("httpbin.org", ""));
        for bad in [&b"main_internal"[..], b"a|b|c", b"inbound-vip|1|http|bad;host", b"a|b|c|d|e"] {
            assert_eq!(RoutedService::from_cluster_name(bad, 253), RoutedService::default(), "{bad:?}");
        }
    }

    #[test]
    fn label_names_are_unique_and_regexes_do_not_overlap() {
        for (i, a) in LABEL_NAMES.iter().enumerate() {
            for b in LABEL_NAMES.iter().skip(i + 1) {
                assert_ne!(a, b);
                // `;a=` must never occur inside `;b=...`: a value holds no `;` or `=`.
                assert!(!format!(";{b}=").contains(&format!(";{a}=")));
            }
        }
    }
}
