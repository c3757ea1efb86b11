//! Every name and format the filters share with the Envoy configuration. The
//! renderer writes these into the configs, so each exists once: a grep for a
//! header finds its definition here and its uses, nothing written by hand twice.
//!
//! The stats role reads each request's facts from the two header maps it reads
//! anyway (a host call is the cost that matters); Envoy's config puts them there
//! natively and removes them before the request or response leaves:
//! - the downstream peer: connect_terminate's stock `set_filter_state` stores each
//!   [`DownstreamPart`] apart, shared with main_internal, where a `header_mutation`
//!   copies each into its own request header, so no part can bleed into another;
//! - the tunnel that carried the response: [`UPSTREAM_CONNECTION_HEADER`];
//! - the service the route chose: [`SERVICE_HEADER`];
//! - Istio's endpoint metadata of the upstream host: [`ENDPOINT_HEADER`].

/// One part of the downstream peer, as captured on connect_terminate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamPart {
    /// Filter state key on connect_terminate, shared once with main_internal.
    pub filter_state: &'static str,
    /// What `set_filter_state` stores (Envoy substitution format).
    pub format: &'static str,
    /// Request header main_internal's `header_mutation` copies it into.
    pub header: &'static str,
}

/// The TLS identity of the client's HBONE connection.
pub const DOWNSTREAM_SAN: DownstreamPart =
    DownstreamPart { filter_state: "wp.peer_san", format: "%DOWNSTREAM_PEER_URI_SAN%", header: "x-wp-peer-san" };

/// A sidecar-era client's `x-envoy-peer-metadata` on the CONNECT.
pub const DOWNSTREAM_LEGACY: DownstreamPart = DownstreamPart {
    filter_state: "wp.peer_legacy",
    format: "%REQ(x-envoy-peer-metadata)%",
    header: "x-wp-peer-legacy",
};

/// The client ztunnel's CONNECT `baggage`.
pub const DOWNSTREAM_BAGGAGE: DownstreamPart =
    DownstreamPart { filter_state: "wp.peer_baggage", format: "%REQ(baggage)%", header: "x-wp-peer-baggage" };

pub const DOWNSTREAM_PARTS: [DownstreamPart; 3] = [DOWNSTREAM_SAN, DOWNSTREAM_LEGACY, DOWNSTREAM_BAGGAGE];

/// Response header main_internal's tunnel routes add with `%UPSTREAM_CONNECTION_ID%`.
pub const UPSTREAM_CONNECTION_HEADER: &str = "x-wp-upconn";
/// Response header main_internal's routes add: the name of the cluster they route to.
pub const SERVICE_HEADER: &str = "x-wp-service";
/// Response header main_internal's routes add: the upstream host's Istio endpoint metadata.
pub const ENDPOINT_HEADER: &str = "x-wp-endpoint";
/// Where the endpoint metadata lives: `filter_metadata.<namespace>.<key>`, as in Istio.
pub const ENDPOINT_METADATA_NAMESPACE: &str = "istio";
pub const ENDPOINT_METADATA_KEY: &str = "workload";

/// Envoy's `grpc_stats` filter state (`emit_filter_state: true`): messages each way.
pub const GRPC_STATS_FILTER_STATE: &str = "envoy.filters.http.grpc_stats";

/// Every response header the routes add for the stats role, with its value; the
/// first `header_mutation` removes them once the stats role has read them.
pub fn route_response_headers() -> [(&'static str, String); 2] {
    [
        (UPSTREAM_CONNECTION_HEADER, "%UPSTREAM_CONNECTION_ID%".to_owned()),
        (ENDPOINT_HEADER, format!("%UPSTREAM_METADATA({ENDPOINT_METADATA_NAMESPACE}:{ENDPOINT_METADATA_KEY})%")),
    ]
}

/// The stat-name tag the error counter uses, next to Istio's 25 labels.
pub const ERROR_REASON_TAG: &str = "reason";

/// The roles' filter names: the wasm module's `root_id`s and the native module's
/// `filter_name`s.
pub const ROLE_DOWNSTREAM: &str = "downstream";
pub const ROLE_UPSTREAM: &str = "upstream";
pub const ROLE_STATS: &str = "stats";
/// The native module's do-nothing filter: the benchmark's floor in the three places.
pub const ROLE_NOOP: &str = "noop";

/// The native engine's dynamic module: Envoy loads `lib<name>.so` from
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub const NATIVE_MODULE: &str = "waypoint_native";
/// The native module's `metrics_namespace`: registered as a custom stat namespace, it is
/// cut from `/stats/prometheus` names (no `envoy_` prefix either), as wasm's is.
pub const NATIVE_METRICS_NAMESPACE: &str = "waypoint";
