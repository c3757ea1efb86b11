//! The waypoint as Envoy drives the native module, in the steps of
//! `wasm-tests/tests/waypoint/harness.rs` (same names, same notation), over the mocked
//! dynamic-module host.
//!
//! One [`Waypoint`] is one Envoy worker with the module's three filter configs, as the
//! rendered config has them: `downstream` on connect_terminate, `upstream` on the tunnel
//! cluster (its stats scope is the cluster's), `stats` on main_internal.
//! - [`Waypoint::client_connect`] / [`Waypoint::answer_client`] / [`Waypoint::close_client`]:
//!   the HBONE CONNECT from the client's ztunnel. Envoy's `set_filter_state` captures the
//!   downstream peer, which main_internal's header_mutation hands the stats filter as the
//!   request headers `x-wp-peer-san`, `x-wp-peer-legacy`, `x-wp-peer-baggage`; the harness
//!   writes it as `"<san> <legacy> <baggage>"`.
//! - [`Waypoint::open_tunnel`] / [`Waypoint::answer_tunnel`] / [`Waypoint::close_tunnel`]: the
//!   tunnel cluster's CONNECT; attribute `connection.id` is the connect_originate
//!   connection, `upstream.uri_san_peer_certificate` the destination's identity.
//! - [`Waypoint::serve`]: one inner request on main_internal, `x-wp-upconn` on the response,
//!   the access-log attributes set only before stream complete. Envoy 1.40 has no
//!   `request.duration` then (measured), so none is set unless a test asks.

pub use crate::legacy_header::legacy_peer_metadata;
use native_tests::{Attribute, Envoy, FilterConfig, HttpStream, MapKind, MetricKind, attribute};
pub use native_tests::{HeaderMap, HeaderOp};
use std::collections::BTreeMap;
use std::rc::Rc;

// ---- the mesh of the scenarios (the same literals as the wasm scenarios) --------------------

pub const WAYPOINT_CONFIG: &str = r#"{"identity": {"workload_name": "waypoint", "workload_type": "deployment",
    "namespace": "backend", "cluster": "cluster1", "canonical_service": "waypoint"}}"#;

pub const WAYPOINT_BAGGAGE: &str =
    "k8s.deployment.name=waypoint,service.name=waypoint,k8s.namespace.name=backend,k8s.cluster.name=cluster1";

pub const CLIENT_SAN: &str = "spiffe://cluster.local/ns/frontend/sa/curl";
pub const CLIENT_BAGGAGE_1_29: &str = "k8s.cluster.name=cluster1,k8s.namespace.name=frontend,\
k8s.deployment.name=curl,service.name=curl,service.version=v1,cloud.region=region-a,cloud.availability_zone=zone-a";

pub const ECHO_SAN: &str = "spiffe://cluster.local/ns/backend/sa/echo";
pub const ECHO_V1_BAGGAGE: &str = "k8s.cluster.name=cluster2,k8s.namespace.name=backend,\
k8s.deployment.name=echo-v1,service.name=echo,service.version=v1";
pub const ECHO_V2_BAGGAGE: &str = "k8s.cluster.name=cluster2,k8s.namespace.name=backend,\
k8s.deployment.name=echo-v2,service.name=echo,service.version=v2";

pub const ECHO_CLUSTER: &str = "inbound-vip|8080|http|echo.backend.svc.cluster.local";

/// The tunnel cluster's stats scope, where Envoy puts its upstream filters' metrics.
pub const TUNNEL_SCOPE: &str = "cluster.outbound-tunnel.";

pub const REQUESTS_TOTAL: &str = "istio_requests_total";
pub const HISTOGRAMS: [&str; 3] =
    ["istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"];

/// The 25 labels in Istio's order (PROTOCOL.md §4), written here, not taken from the module.
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

/// Envoy's response flag bits (`response.flags`).
pub const UF: u64 = 1 << 5;
pub const URX: u64 = 1 << 15;

/// Every filter status the module returns is Continue (0).
pub const CONTINUE: u32 = 0;

// ---- one worker -----------------------------------------------------------------------------

/// One Envoy worker with the module's three filter configs.
pub struct Waypoint {
    pub downstream: Rc<FilterConfig>,
    pub upstream: Rc<FilterConfig>,
    pub stats: Rc<FilterConfig>,
    /// Last: the configs are destroyed before the worker's state goes.
    pub envoy: Envoy,
    next_connection: u64,
}

impl Waypoint {
    pub fn start() -> Self {
        Self::with_config(WAYPOINT_CONFIG)
    }

    /// A worker whose three filters have `config` (the rendered config gives each the same).
    pub fn with_config(config: &str) -> Self {
        let envoy = Envoy::start();
        let filter = |name: &str, scope: &str| {
            envoy
                .filter_config(name, config.as_bytes(), scope)
                .unwrap_or_else(|| panic!("filter {name:?} refused {config}: {:?}", envoy.logs()))
        };
        let (downstream, upstream, stats) =
            (filter("downstream", ""), filter("upstream", TUNNEL_SCOPE), filter("stats", ""));
        Self { downstream, upstream, stats, envoy, next_connection: 100 }
    }

    /// curl's CONNECT with `client_baggage`, a new tunnel to echo answered 200 with
    /// `destination_baggage`, one inner GET over it, then both CONNECT streams end.
    pub fn exchange(&mut self, client_baggage: Option<&[u8]>, destination_baggage: Option<&[u8]>) -> Served {
        let mut connect = self.client_connect(CLIENT_SAN, ztunnel_connect(client_baggage));
        self.answer_client(&mut connect, "200");
        self.next_connection += 3;
        let mut tunnel = self.open_tunnel(self.next_connection);
        self.answer_tunnel(&mut tunnel, "200", destination_baggage, Some(ECHO_SAN));
        let served = self.serve(InnerRequest::get("/echo").downstream_peer(&connect.filter_state).via(tunnel.upconn()));
        self.close_tunnel(tunnel);
        self.close_client(connect);
        served
    }

    fn connection(&mut self) -> Attribute {
        self.next_connection += 1;
        Attribute::Int(self.next_connection)
    }

    // ---- connect_terminate: the client's CONNECT --------------------------------------------

    pub fn client_connect(&mut self, san: &str, headers: HeaderMap) -> ClientConnect {
        let filter_state = downstream_filter_state(san, &headers);
        let connection = self.connection();
        let mut stream = self.envoy.stream(&self.downstream, vec![(attribute::CONNECTION_ID, connection)]);
        let status = stream.request_headers(headers, false);
        let routed = stream.map(MapKind::RequestHeaders).unwrap_or_default();
        ClientConnect { context: stream.id(), stream, filter_state, routed, status }
    }

    /// main_internal answers the CONNECT; the response headers as the client gets them.
    pub fn answer_client(&mut self, connect: &mut ClientConnect, status: &str) -> HeaderMap {
        let response = HeaderMap::from_pairs([(":status", status)]);
        let filter_status = connect.stream.response_headers(response, status != "200");
        assert_eq!(filter_status, CONTINUE, "the CONNECT answer must never be held");
        connect.stream.map(MapKind::ResponseHeaders).unwrap_or_default()
    }

    /// The client's HBONE stream ends: stream complete, destroy.
    pub fn close_client(&mut self, mut connect: ClientConnect) {
        connect.stream.complete();
        connect.stream.destroy();
    }

    // ---- the tunnel cluster: our CONNECT to the destination ---------------------------------

    pub fn open_tunnel(&mut self, connection_id: u64) -> Tunnel {
        let mut stream =
            self.envoy.stream(&self.upstream, vec![(attribute::CONNECTION_ID, Attribute::Int(connection_id))]);
        let connect = HeaderMap::from_pairs([(":method", "CONNECT"), (":authority", "10.0.2.7:8080")]);
        let status = stream.request_headers(connect, false);
        assert_eq!(status, CONTINUE, "the upstream CONNECT must never be held");
        let sent = stream.map(MapKind::RequestHeaders).unwrap_or_default();
        Tunnel { context: stream.id(), stream, connection_id, sent }
    }

    /// The destination ztunnel (TLS identity `san`) answers the CONNECT.
    pub fn answer_tunnel(&mut self, tunnel: &mut Tunnel, status: &str, baggage: Option<&[u8]>, san: Option<&str>) {
        if let Some(san) = san {
            tunnel
                .stream
                .set_attribute(attribute::UPSTREAM_URI_SAN_PEER_CERTIFICATE, Attribute::Str(san.as_bytes().to_vec()));
        }
        let mut response = HeaderMap::from_pairs([(":status", status)]);
        if let Some(baggage) = baggage {
            response.add("baggage", baggage);
        }
        let filter_status = tunnel.stream.response_headers(response, status != "200");
        assert_eq!(filter_status, CONTINUE, "the CONNECT answer must never be held");
    }

    pub fn established_tunnel(&mut self, connection_id: u64, baggage: &str, san: &str) -> Tunnel {
        let mut tunnel = self.open_tunnel(connection_id);
        self.answer_tunnel(&mut tunnel, "200", Some(baggage.as_bytes()), Some(san));
        tunnel
    }

    /// The tunnel's stream ends: its upstream filter is destroyed.
    pub fn close_tunnel(&mut self, tunnel: Tunnel) {
        tunnel.stream.destroy();
    }

    // ---- main_internal: one inner request ---------------------------------------------------

    pub fn serve(&mut self, r: InnerRequest) -> Served {
        let mut attributes = vec![(attribute::CONNECTION_ID, self.connection())];
        if let Some(cluster) = &r.cluster {
            attributes.push((attribute::XDS_CLUSTER_NAME, Attribute::Str(cluster.clone())));
        }
        let mut stream = self.envoy.stream(&self.stats, attributes);
        let mut request = r.request;
        if let Some(filter_state) = &r.filter_state {
            for (header, part) in ["x-wp-peer-san", "x-wp-peer-legacy", "x-wp-peer-baggage"].iter().zip(filter_state) {
                if !part.is_empty() {
                    request.add(header, part);
                }
            }
        }
        let mut response = r.response;
        if let Some(endpoint) = &r.endpoint {
            response.add("x-wp-endpoint", endpoint);
        }
        if let Some(cluster) = &r.cluster {
            response.add("x-wp-service", cluster);
        }
        let mut statuses = vec![stream.request_headers(request, r.request_body.is_none())];
        let request_as_routed = stream.map(MapKind::RequestHeaders).unwrap_or_default();
        if r.request_body.is_some() {
            statuses.push(stream.request_body(true));
        }
        let response_ends = r.response_body.is_none() && r.trailers.is_none();
        statuses.push(stream.response_headers(response, response_ends));
        if r.response_body.is_some() {
            statuses.push(stream.response_body(r.trailers.is_none()));
        }
        if let Some(trailers) = r.trailers {
            statuses.push(stream.response_trailers(trailers));
        }
        // Known only when the stream ends: Envoy's access-log attributes.
        stream.set_attribute(attribute::RESPONSE_FLAGS, Attribute::Int(r.response_flags));
        stream.set_attribute(attribute::REQUEST_TOTAL_SIZE, Attribute::Int(r.request_bytes));
        stream.set_attribute(attribute::RESPONSE_TOTAL_SIZE, Attribute::Int(r.response_bytes));
        if let Some(ms) = r.duration_ms {
            stream.set_attribute(attribute::REQUEST_DURATION, Attribute::Int(ms));
        }
        if let Some(messages) = &r.grpc_messages {
            stream.set_filter_state("envoy.filters.http.grpc_stats", messages);
        }
        stream.complete();
        let request_ops = stream.header_ops(MapKind::RequestHeaders);
        stream.destroy();
        Served { request_as_routed, statuses, request_ops }
    }

    // ---- what Envoy ends up with ------------------------------------------------------------

    /// Every `istio_requests_total` series in the root scope.
    pub fn request_series(&self) -> Vec<Series> {
        self.envoy
            .series()
            .into_iter()
            .filter(|s| s.kind == MetricKind::Counter && s.name == REQUESTS_TOTAL)
            .map(Series)
            .collect()
    }

    pub fn only_request_series(&self) -> Series {
        let mut all = self.request_series();
        assert_eq!(all.len(), 1, "expected exactly one istio_requests_total series, got {all:#?}");
        all.remove(0)
    }

    /// Samples of histogram `base` for the label set of `series`.
    pub fn histogram(&self, base: &str, series: &Series) -> Vec<u64> {
        self.envoy
            .series()
            .into_iter()
            .find(|s| s.kind == MetricKind::Histogram && s.name == base && s.labels == series.0.labels)
            .unwrap_or_else(|| panic!("histogram {base} has no series {:?}", series.0.labels))
            .samples
    }

    /// `waypoint_errors_total{reason}` (0 when never emitted).
    pub fn errors(&self, reason: &str) -> i64 {
        self.all_errors().get(reason).copied().unwrap_or(0)
    }

    /// Every error reason counted so far, in the root scope.
    pub fn all_errors(&self) -> BTreeMap<String, i64> {
        self.envoy
            .series()
            .into_iter()
            .filter(|s| s.name == "waypoint_errors_total" && s.value != 0)
            .map(|s| {
                assert_eq!(s.labels.len(), 1, "waypoint_errors_total has one label: {s:?}");
                assert_eq!(s.labels[0].0, "reason");
                (s.labels[0].1.clone(), i64::try_from(s.value).expect("a count in i64"))
            })
            .collect()
    }

    /// Every series of counter `base`: its labels in order and its value.
    pub fn counters(&self, base: &str) -> Vec<(Vec<(String, String)>, i64)> {
        self.series_of(MetricKind::Counter, base)
    }

    /// Every series of gauge `base`: its labels in order and its value.
    pub fn gauges(&self, base: &str) -> Vec<(Vec<(String, String)>, i64)> {
        self.series_of(MetricKind::Gauge, base)
    }

    fn series_of(&self, kind: MetricKind, base: &str) -> Vec<(Vec<(String, String)>, i64)> {
        self.envoy
            .series()
            .into_iter()
            .filter(|s| s.kind == kind && s.name == base)
            .map(|s| (s.labels, i64::try_from(s.value).expect("a value in i64")))
            .collect()
    }

    /// Series Envoy holds whose metric name starts with `prefix`: what the wasm harness
    /// counts as `proxy_define_metric` calls (the wasm module defines one stat per series).
    pub fn defines(&self, prefix: &str) -> usize {
        self.envoy.series().iter().filter(|s| s.name.starts_with(prefix)).count()
    }

    /// The module's changes to one header map of the stream `context`.
    pub fn header_ops(&self, context: usize, map: MapType) -> Vec<HeaderOp> {
        self.envoy.header_ops(context, map.kind())
    }

    /// Nothing landed in the tunnel cluster's scope (the module defers it to the root).
    pub fn assert_nothing_in_cluster_scope(&self) {
        let scoped: Vec<_> = self.envoy.all_series().into_iter().filter(|s| !s.scope.is_empty()).collect();
        assert!(scoped.is_empty(), "series in a cluster's scope: {scoped:#?}");
    }

    pub fn assert_healthy(&self) {
        self.envoy.assert_healthy();
        self.assert_nothing_in_cluster_scope();
    }
}

/// What `set_filter_state` stores on connect_terminate, in the harness's notation.
pub fn downstream_filter_state(san: &str, connect: &HeaderMap) -> Vec<u8> {
    let mut value = san.as_bytes().to_vec();
    value.push(b' ');
    value.extend_from_slice(connect.get("x-envoy-peer-metadata").unwrap_or_default());
    value.push(b' ');
    value.extend_from_slice(connect.get("baggage").unwrap_or_default());
    value
}

pub fn peer_with_baggage(san: &str, baggage: &str) -> Vec<u8> {
    format!("{san}  {baggage}").into_bytes()
}

/// The HBONE CONNECT a client ztunnel sends to the service VIP, with `baggage` when given.
pub fn ztunnel_connect(baggage: Option<&[u8]>) -> HeaderMap {
    let mut headers = HeaderMap::from_pairs([(":method", "CONNECT"), (":authority", "10.96.0.20:8080")]);
    if let Some(baggage) = baggage {
        headers.add("baggage", baggage);
    }
    headers.add("forwarded", "for=\"10.0.1.5:43210\"");
    headers.add("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    headers
}

/// The client's CONNECT on connect_terminate.
pub struct ClientConnect {
    /// The stream, by the id [`Waypoint::header_ops`] takes.
    pub context: usize,
    pub stream: HttpStream,
    pub filter_state: Vec<u8>,
    /// The request headers after our filter: what is routed on.
    pub routed: HeaderMap,
    pub status: u32,
}

impl ClientConnect {
    /// The CONNECT's request headers went on (nothing held).
    pub fn continued(&self) -> bool {
        self.status == CONTINUE
    }
}

/// The header maps the scenarios look at, by the wasm harness's names.
#[derive(Debug, Clone, Copy)]
pub enum MapType {
    HttpRequestHeaders,
    HttpResponseHeaders,
}

impl MapType {
    fn kind(self) -> MapKind {
        match self {
            Self::HttpRequestHeaders => MapKind::RequestHeaders,
            Self::HttpResponseHeaders => MapKind::ResponseHeaders,
        }
    }
}

/// Our CONNECT to a destination ztunnel over connect_originate connection `connection_id`.
pub struct Tunnel {
    pub context: usize,
    pub stream: HttpStream,
    pub connection_id: u64,
    pub sent: HeaderMap,
}

impl Tunnel {
    /// The `x-wp-upconn` main_internal reports for a request this tunnel carries.
    pub fn upconn(&self) -> u64 {
        self.connection_id - 1
    }
}

/// One inner request as main_internal sees it.
#[derive(Debug, Clone)]
pub struct InnerRequest {
    pub request: HeaderMap,
    pub request_body: Option<Vec<u8>>,
    pub response: HeaderMap,
    pub response_body: Option<Vec<u8>>,
    pub trailers: Option<HeaderMap>,
    pub filter_state: Option<[Vec<u8>; 3]>,
    pub cluster: Option<Vec<u8>>,
    pub endpoint: Option<Vec<u8>>,
    /// Envoy's grpc_stats filter state, by its `serializeAsString`.
    pub grpc_messages: Option<Vec<u8>>,
    pub response_flags: u64,
    /// `request.duration` at stream complete: none in Envoy 1.40 (the module times it).
    pub duration_ms: Option<u64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl InnerRequest {
    pub fn get(path: &str) -> Self {
        Self {
            request: HeaderMap::from_pairs([
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "echo.backend.svc.cluster.local:8080"),
                (":path", path),
                ("user-agent", "curl/8.5.0"),
            ]),
            request_body: None,
            response: HeaderMap::from_pairs([(":status", "200"), ("content-type", "text/plain")]),
            response_body: None,
            trailers: None,
            filter_state: None,
            cluster: Some(ECHO_CLUSTER.as_bytes().to_vec()),
            endpoint: None,
            grpc_messages: None,
            response_flags: 0,
            duration_ms: None,
            request_bytes: 120,
            response_bytes: 340,
        }
    }

    pub fn grpc(method: &str, grpc_status: &str) -> Self {
        let mut r = Self::get(method);
        r.request.replace(":method", "POST");
        r.request.add("content-type", "application/grpc+proto");
        r.request.add("te", "trailers");
        r.request_body = Some(b"\0\0\0\0\x05hello".to_vec());
        r.response = HeaderMap::from_pairs([(":status", "200"), ("content-type", "application/grpc")]);
        r.response_body = Some(b"\0\0\0\0\x05world".to_vec());
        r.trailers = Some(HeaderMap::from_pairs([("grpc-status", grpc_status)]));
        r.grpc_messages(1, 1)
    }

    pub fn downstream_peer(self, filter_state: &[u8]) -> Self {
        let mut parts = filter_state.splitn(3, |b| *b == b' ');
        let mut next = || parts.next().unwrap_or_default().to_vec();
        let (san, legacy, baggage) = (next(), next(), next());
        self.downstream_parts(&san, &legacy, &baggage)
    }

    pub fn downstream_parts(mut self, san: &[u8], legacy: &[u8], baggage: &[u8]) -> Self {
        self.filter_state = Some([san.to_vec(), legacy.to_vec(), baggage.to_vec()]);
        self
    }

    pub fn endpoint(mut self, metadata: &str) -> Self {
        self.endpoint = Some(metadata.as_bytes().to_vec());
        self
    }

    /// Envoy's grpc_stats counted `requests` and `responses` messages ("<requests>,<responses>").
    pub fn grpc_messages(mut self, requests: u8, responses: u8) -> Self {
        self.grpc_messages = Some(format!("{requests},{responses}").into_bytes());
        self
    }

    pub fn via(mut self, x: u64) -> Self {
        self.response.add("x-wp-upconn", x.to_string());
        self
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.request.add(name, value);
        self
    }

    pub fn status(mut self, status: &str) -> Self {
        self.response.replace(":status", status);
        self
    }

    pub fn flags(mut self, bits: u64) -> Self {
        self.response_flags = bits;
        self
    }

    pub fn routed_to(mut self, cluster: &str) -> Self {
        self.cluster = Some(cluster.as_bytes().to_vec());
        self
    }
}

/// A finished inner request.
#[derive(Debug)]
pub struct Served {
    pub request_as_routed: HeaderMap,
    pub statuses: Vec<u32>,
    /// The stats filter's changes to the inner request's headers.
    pub request_ops: Vec<HeaderOp>,
}

impl Served {
    /// Every hook let the stream continue.
    pub fn all_continued(&self) -> bool {
        self.statuses.iter().all(|s| *s == CONTINUE)
    }
}

/// One `istio_requests_total` series as Envoy holds it.
#[derive(Debug, Clone)]
pub struct Series(pub native_tests::Series);

impl Series {
    pub fn label(&self, name: &str) -> &str {
        self.0
            .labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("label {name} missing from {:?}", self.0.labels))
    }

    pub fn count(&self) -> i64 {
        i64::try_from(self.0.value).expect("a count in i64")
    }

    pub fn labels(&self) -> Vec<(&str, &str)> {
        self.0.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    pub fn assert_labels(&self, expected: &[(&str, &str)]) {
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(name, value)| self.label(name) != *value)
            .map(|(name, value)| format!("  {name}: got {:?}, want {value:?}", self.label(name)))
            .collect();
        assert!(wrong.is_empty(), "wrong labels in {:?}:\n{}", self.0.labels, wrong.join("\n"));
    }

    pub fn assert_istio_label_names(&self) {
        let names: Vec<&str> = self.0.labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, LABEL_NAMES, "label names/order");
    }
}
