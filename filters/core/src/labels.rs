//! Istio's L7 metric labels for `reporter="waypoint"` (PROTOCOL.md §4) and the
//! encoding of labels into an Envoy stat name for `stats_config.stats_tags`.

use crate::contract::ERROR_REASON_TAG;
use crate::peer::Peer;
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
/// gRPC messages each way (Envoy's `grpc_stats` filter state), for gRPC requests only.
pub const REQUEST_MESSAGES: &str = "istio_request_messages_total";
pub const RESPONSE_MESSAGES: &str = "istio_response_messages_total";

/// Istio's proxies export `istio_build{component,tag} 1`, which dashboards and Kiali read.
pub const BUILD: &str = "istio_build";
/// The labels of [`BUILD`].
pub const BUILD_TAGS: [&str; 2] = ["component", "tag"];
/// This module's [`BUILD`] labels: component `proxy` as Istio's proxies say, tag this
/// project's version.
const BUILD_VALUES: [&str; 2] = ["proxy", env!("CARGO_PKG_VERSION")];

/// This module's own counter of what degraded or was refused, by reason.
pub const ERRORS_TOTAL: &str = "waypoint_errors_total";

/// One series of a metric: the metric's name and its labels, names and values in
/// order. A host with labelled metrics defines each metric once with
/// [`Series::label_names`] and picks the series by [`Series::label_values`]; the
/// proxy-wasm module encodes it as one stat name ([`Series::stat_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series<'a> {
    name: &'static str,
    label_names: &'static [&'static str],
    label_values: &'a [&'a str],
}

impl<'a> Series<'a> {
    /// One of the Istio request metrics ([`REQUESTS_TOTAL`] and the others), with the
    /// waypoint's 25 labels.
    pub fn istio(name: &'static str, values: &'a [&'a str; 25]) -> Self {
        Self { name, label_names: &LABEL_NAMES, label_values: values }
    }

    /// [`ERRORS_TOTAL`] for one reason.
    pub fn errors(reason: &'a &'a str) -> Self {
        Self { name: ERRORS_TOTAL, label_names: &[ERROR_REASON_TAG], label_values: std::slice::from_ref(reason) }
    }

    /// [`BUILD`] for this module.
    pub fn build() -> Series<'static> {
        Series { name: BUILD, label_names: &BUILD_TAGS, label_values: &BUILD_VALUES }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn label_names(&self) -> &'static [&'static str] {
        self.label_names
    }

    pub fn label_values(&self) -> &'a [&'a str] {
        self.label_values
    }

    /// The stat name Envoy's `stats_tags` (see [`stats_tag_regex`]) cut back into the
    /// metric's name and its labels: `name;label=value;label=value...`. Safe because no
    /// label value holds `;` or `=` ([`crate::value`]).
    pub fn stat_name(&self) -> String {
        let mut out = String::with_capacity(640);
        out.push_str(self.name);
        for (name, value) in self.label_names.iter().zip(self.label_values) {
            out.push(';');
            out.push_str(name);
            out.push('=');
            out.push_str(value);
        }
        out
    }
}

/// Every label name the stat names carry, for the config's `stats_tags`: Istio's 25,
/// the error counter's reason, the build gauge's tags.
pub fn stat_tag_names() -> impl Iterator<Item = &'static str> {
    LABEL_NAMES.iter().copied().chain([ERROR_REASON_TAG]).chain(BUILD_TAGS)
}

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
    /// The gRPC status as [`grpc_status`] reads it, when the request is gRPC and one is known.
    pub grpc_status: Option<i32>,
    /// Envoy's short response flags, e.g. `UF,URX`; empty when none.
    pub response_flags: &'a str,
}

/// Envoy's `Grpc::Status::InvalidCode`: what Istio reports for a `grpc-status` that is not
/// one of the 17 codes. One fixed value, so an app cannot mint label values with it.
pub const INVALID_GRPC_STATUS: i32 = -1;

/// The highest gRPC status code (UNAUTHENTICATED).
const MAX_GRPC_STATUS: u32 = 16;

/// A `grpc-status` header value as Envoy's `Grpc::Common::getGrpcStatus` reads it: a code
/// 0..=16, anything else [`INVALID_GRPC_STATUS`].
pub fn grpc_status(raw: &[u8]) -> i32 {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|text| text.parse::<u32>().ok())
        .filter(|code| *code <= MAX_GRPC_STATUS)
        .and_then(|code| i32::try_from(code).ok())
        .unwrap_or(INVALID_GRPC_STATUS)
}

/// The gRPC status Envoy infers from the HTTP status of a gRPC response that carried no
/// `grpc-status` (`Grpc::Utility::httpToGrpcStatus`); `None` when no response was sent.
pub fn grpc_status_from_http(response_code: u32) -> Option<i32> {
    match response_code {
        0 => None,
        400 => Some(13),             // INTERNAL
        401 => Some(16),             // UNAUTHENTICATED
        403 => Some(7),              // PERMISSION_DENIED
        404 => Some(12),             // UNIMPLEMENTED
        429 | 502..=504 => Some(14), // UNAVAILABLE
        _ => Some(2),                // UNKNOWN
    }
}

/// The 25 label values, in [`LABEL_NAMES`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels(pub [String; 25]);

impl Labels {
    /// Applies the waypoint rules: source from the downstream peer, destination
    /// from the upstream peer, service from the route, `unknown` for gaps.
    pub fn waypoint(source: &Peer, destination: &Peer, service: &RoutedService, facts: &RequestFacts<'_>) -> Self {
        let or_unknown = |v: &str| if v.is_empty() { UNKNOWN.to_owned() } else { v.to_owned() };
        // The namespace proven by a TLS identity beats the one claimed in metadata, on both sides.
        let source_namespace = source.verified_namespace().unwrap_or(&source.namespace);
        let destination_namespace = destination.verified_namespace().unwrap_or(&destination.namespace);
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
            or_unknown(destination_namespace),
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

    /// The values in [`LABEL_NAMES`] order, for [`Series::istio`].
    pub fn values(&self) -> [&str; 25] {
        self.0.each_ref().map(String::as_str)
    }
}

/// The `stats_tags` regex that extracts label `name` from a [`Series::stat_name`]:
/// the first group is cut, the second is the value. The renderer writes one per
/// [`stat_tag_names`] into the Envoy config, so names exist once.
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
    fn grpc_status_takes_only_the_seventeen_codes() {
        assert_eq!(grpc_status(b"0"), 0);
        assert_eq!(grpc_status(b"14"), 14);
        assert_eq!(grpc_status(b"16"), 16);
        for bad in [&b"17"[..], b"200", b"-1", b"", b"abc", b"\xff", b"99999999999999999999"] {
            assert_eq!(grpc_status(bad), -1, "{bad:?}");
        }
        assert_eq!(grpc_status_from_http(200), Some(2));
        assert_eq!(grpc_status_from_http(503), Some(14));
        assert_eq!(grpc_status_from_http(404), Some(12));
        assert_eq!(grpc_status_from_http(0), None);
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

    #[test]
    fn series_encode_as_the_stat_names_the_config_cuts_back() {
        assert_eq!(Series::errors(&"host_call").stat_name(), "waypoint_errors_total;reason=host_call");
        let build = Series::build();
        assert_eq!((build.name(), build.label_names()), ("istio_build", &["component", "tag"][..]));
        assert_eq!(build.label_values().first(), Some(&"proxy"));
        let labels = Labels::waypoint(
            &Peer::default(),
            &Peer::default(),
            &RoutedService::default(),
            &RequestFacts { response_code: 200, grpc: false, grpc_status: None, response_flags: "" },
        );
        let values = labels.values();
        let name = Series::istio(REQUESTS_TOTAL, &values).stat_name();
        assert!(name.starts_with("istio_requests_total;reporter=waypoint;source_workload=unknown;"), "{name}");
        assert!(
            name.ends_with(";response_code=200;grpc_response_status=;response_flags=-;connection_security_policy=none")
        );
    }
}
