//! The waypoint as Envoy drives it, in small steps a test can read like a sentence.
//!
//! One [`Waypoint`] is one Envoy worker: one VM (`vm_id` "waypoint") holding the three roots.
//! - [`Waypoint::client_connect`] / [`Waypoint::answer_client`] / [`Waypoint::close_client`]:
//!   connect_terminate's HBONE CONNECT from the client's ztunnel (`downstream` root). Envoy's
//!   stock `set_filter_state` filter runs first and captures the downstream peer in three
//!   objects (`%DOWNSTREAM_PEER_URI_SAN%`, `%REQ(x-envoy-peer-metadata)%`, `%REQ(baggage)%`),
//!   which main_internal's header_mutation hands our filter as the request headers
//!   `x-wp-peer-san`, `x-wp-peer-legacy` and `x-wp-peer-baggage` (none for an empty part).
//!   The harness writes a downstream peer as `"<san> <legacy> <baggage>"`.
//! - [`Waypoint::open_tunnel`] / [`Waypoint::answer_tunnel`] / [`Waypoint::close_tunnel`]: the
//!   tunnel cluster's CONNECT to the destination ztunnel (`upstream` root); property
//!   `connection.id` is the connect_originate connection, the stream gets `on_done`, never `on_log`.
//! - [`Waypoint::serve`]: one inner HTTP request on main_internal (`stats` root), with
//!   `x-wp-upconn` on the response and the access-log properties set only for `on_log`.
//!
//! Every VM entry the harness makes is counted, so the cost tests can report them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use wasm_tests::{Action, ContextState, Effect, Error, LogLevel, Metric, MetricType, Vm, VmConfig, WasmModule};
// The scenario files shared with native-tests take these from the harness.
pub use crate::legacy_header::legacy_peer_metadata;
pub use wasm_tests::{HeaderMap, HeaderOp, MapType};

// ---- the mesh of the scenarios --------------------------------------------------------------

/// The plugin configuration of all three roots (the same `vm_config` and configuration in Envoy).
pub const WAYPOINT_CONFIG: &str = r#"{"identity": {"workload_name": "waypoint", "workload_type": "deployment",
    "namespace": "backend", "cluster": "cluster1", "canonical_service": "waypoint"}}"#;

/// What the waypoint must announce about itself: the Envoy form of PROTOCOL.md §2, written by
/// hand (`app.name` is left out because it equals `service.name`; no version configured).
pub const WAYPOINT_BAGGAGE: &str =
    "k8s.deployment.name=waypoint,service.name=waypoint,k8s.namespace.name=backend,k8s.cluster.name=cluster1";

/// The client workload (`curl` in `frontend`), and its ztunnel 1.29 baggage.
pub const CLIENT_SAN: &str = "spiffe://cluster.local/ns/frontend/sa/curl";
pub const CLIENT_BAGGAGE_1_29: &str = "k8s.cluster.name=cluster1,k8s.namespace.name=frontend,\
k8s.deployment.name=curl,service.name=curl,service.version=v1,cloud.region=region-a,cloud.availability_zone=zone-a";

/// The destination workloads behind the `echo` service, and their ztunnel 1.29 response baggage.
pub const ECHO_SAN: &str = "spiffe://cluster.local/ns/backend/sa/echo";
pub const ECHO_V1_BAGGAGE: &str = "k8s.cluster.name=cluster2,k8s.namespace.name=backend,\
k8s.deployment.name=echo-v1,service.name=echo,service.version=v1";
pub const ECHO_V2_BAGGAGE: &str = "k8s.cluster.name=cluster2,k8s.namespace.name=backend,\
k8s.deployment.name=echo-v2,service.name=echo,service.version=v2";

/// main_internal's route cluster for the `echo` service VIP.
pub const ECHO_CLUSTER: &str = "inbound-vip|8080|http|echo.backend.svc.cluster.local";

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

// ---- the module under test ------------------------------------------------------------------

fn wasm_path() -> PathBuf {
    match std::env::var_os("WAYPOINT_WASM") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/release/waypoint.wasm"),
    }
}

/// The built module, compiled once per test binary. Panics (fails the test) when it is missing.
pub fn module() -> &'static WasmModule {
    static MODULE: OnceLock<WasmModule> = OnceLock::new();
    MODULE.get_or_init(|| {
        let path = wasm_path();
        assert!(
            path.is_file(),
            "the waypoint module is not built: {} does not exist.\n\
             Build it with `cargo build --release -p waypoint --target wasm32-wasip1` \
             (or `make`, which copies it to dist/ and sets WAYPOINT_WASM), \
             or point WAYPOINT_WASM at a built waypoint.wasm.",
            path.display()
        );
        warn_if_older_than_sources(&path);
        WasmModule::from_file(&path).unwrap_or_else(|e| panic!("cannot compile {}: {e}", path.display()))
    })
}

/// The tests run whatever was built: say so when `filters/` changed after the build (shown
/// with a failing test's output).
fn warn_if_older_than_sources(wasm: &Path) {
    fn newest(dir: &Path) -> Option<SystemTime> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                if path.is_dir() { newest(&path) } else { entry.metadata().ok()?.modified().ok() }
            })
            .max()
    }
    let filters = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../filters");
    let built = std::fs::metadata(wasm).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(source)) = (built, newest(&filters))
        && source > built
    {
        eprintln!("warning: {} is older than filters/: rebuild it to test the current code", wasm.display());
    }
}

// ---- one worker -----------------------------------------------------------------------------

/// One Envoy worker: the module's VM with its three roots.
pub struct Waypoint {
    pub vm: Vm,
    pub downstream: u32,
    pub upstream: u32,
    pub stats: u32,
    /// Next connection id handed to [`Waypoint::exchange`]'s tunnels.
    next_connection: u64,
}

/// What the host saw of one finished stream.
#[derive(Debug)]
pub struct Trace {
    pub state: ContextState,
    /// Calls into the VM for this stream (context create and every callback).
    pub entries: u32,
}

impl Trace {
    pub fn hostcalls(&self) -> u64 {
        self.state.hostcall_total()
    }

    /// `name=count` pairs, for messages.
    pub fn hostcall_list(&self) -> String {
        let calls: Vec<String> = self.state.hostcalls.iter().map(|(name, n)| format!("{name}={n}")).collect();
        calls.join(" ")
    }
}

/// A fresh VM (`vm_id` "waypoint") started like Envoy starts it, with no root yet.
pub fn new_vm() -> Vm {
    let config = VmConfig { vm_id: "waypoint".to_string(), ..VmConfig::default() };
    Vm::new(module(), config).unwrap_or_else(|e| panic!("the waypoint VM does not start: {e}"))
}

impl Waypoint {
    /// A worker whose three roots have the standard configuration.
    pub fn start() -> Self {
        Self::with_config(WAYPOINT_CONFIG)
    }

    /// A worker whose three roots have `config` (Envoy gives each plugin the same one).
    pub fn with_config(config: &str) -> Self {
        let mut vm = new_vm();
        let mut root = |root_id: &str| {
            vm.start_root(root_id, config.as_bytes().to_vec())
                .unwrap_or_else(|e| panic!("root {root_id:?} refused {config}: {e}\nlogs: {:?}", vm.logs()))
        };
        let (downstream, upstream, stats) = (root("downstream"), root("upstream"), root("stats"));
        Self { vm, downstream, upstream, stats, next_connection: 100 }
    }

    /// The usual life of one request: `curl`'s CONNECT (with `client_baggage`), a new tunnel to
    /// `echo` answered 200 with `destination_baggage`, one inner GET over it, then both CONNECT
    /// streams end.
    pub fn exchange(&mut self, client_baggage: Option<&[u8]>, destination_baggage: Option<&[u8]>) -> Served {
        let mut connect = self.client_connect(CLIENT_SAN, ztunnel_connect(client_baggage));
        self.answer_client(&mut connect, "200");
        // Another worker's connections take some ids in between.
        self.next_connection += 3;
        let mut tunnel = self.open_tunnel(self.next_connection);
        self.answer_tunnel(&mut tunnel, "200", destination_baggage, Some(ECHO_SAN));
        let served = self.serve(InnerRequest::get("/echo").downstream_peer(&connect.filter_state).via(tunnel.upconn()));
        self.close_tunnel(tunnel);
        self.close_client(connect);
        served
    }

    // ---- connect_terminate: the client's CONNECT (downstream root) --------------------------

    /// The client's ztunnel opens an HBONE CONNECT. `set_filter_state` captures the peer first,
    /// then our filter's `on_request_headers` runs; `routed` is what the router then sees.
    pub fn client_connect(&mut self, san: &str, headers: HeaderMap) -> ClientConnect {
        self.try_client_connect(san, headers).unwrap_or_else(|e| panic!("downstream CONNECT request: {e}"))
    }

    pub fn try_client_connect(&mut self, san: &str, headers: HeaderMap) -> Result<ClientConnect, Error> {
        let filter_state = downstream_filter_state(san, &headers);
        let context = self.vm.create_http_context(self.downstream)?;
        let action = self.vm.on_request_headers(context, headers, false)?;
        let routed = self.headers(context, |c| &c.request_headers);
        Ok(ClientConnect { context, filter_state, routed, action, entries: 2 })
    }

    /// main_internal answers the CONNECT; returns the response headers as the client gets them.
    pub fn answer_client(&mut self, connect: &mut ClientConnect, status: &str) -> HeaderMap {
        self.try_answer_client(connect, status).unwrap_or_else(|e| panic!("downstream CONNECT response {status}: {e}"))
    }

    pub fn try_answer_client(&mut self, connect: &mut ClientConnect, status: &str) -> Result<HeaderMap, Error> {
        let response = HeaderMap::from_pairs([(":status", status)]);
        connect.entries += 1;
        let action = self.vm.on_response_headers(connect.context, response, status != "200")?;
        assert_eq!(action, Action::Continue, "the CONNECT answer must never be held");
        Ok(self.headers(connect.context, |c| &c.response_headers))
    }

    /// The client's HBONE stream ends (on_log, on_done, on_delete).
    pub fn close_client(&mut self, connect: ClientConnect) -> Trace {
        let state = self.vm.finish(connect.context).unwrap_or_else(|e| panic!("downstream CONNECT end: {e}"));
        Trace { state, entries: connect.entries + 3 }
    }

    // ---- the tunnel cluster: our CONNECT to the destination (upstream root) -----------------

    /// connect_originate's connection `connection_id` sends its CONNECT to the destination ztunnel.
    pub fn open_tunnel(&mut self, connection_id: u64) -> Tunnel {
        self.try_open_tunnel(connection_id)
            .unwrap_or_else(|e| panic!("upstream CONNECT request on tunnel {connection_id}: {e}"))
    }

    pub fn try_open_tunnel(&mut self, connection_id: u64) -> Result<Tunnel, Error> {
        let context = self.vm.create_http_context(self.upstream)?;
        self.vm.set_context_property(context, &["connection", "id"], connection_id.to_le_bytes().to_vec())?;
        let connect = HeaderMap::from_pairs([(":method", "CONNECT"), (":authority", "10.0.2.7:8080")]);
        let action = self.vm.on_request_headers(context, connect, false)?;
        assert_eq!(action, Action::Continue, "the upstream CONNECT must never be held");
        let sent = self.headers(context, |c| &c.request_headers);
        Ok(Tunnel { context, connection_id, sent, entries: 2 })
    }

    /// The destination ztunnel (TLS identity `san`) answers the CONNECT.
    pub fn answer_tunnel(&mut self, tunnel: &mut Tunnel, status: &str, baggage: Option<&[u8]>, san: Option<&str>) {
        self.try_answer_tunnel(tunnel, status, baggage, san)
            .unwrap_or_else(|e| panic!("upstream CONNECT response {status} on tunnel {}: {e}", tunnel.connection_id))
    }

    pub fn try_answer_tunnel(
        &mut self,
        tunnel: &mut Tunnel,
        status: &str,
        baggage: Option<&[u8]>,
        san: Option<&str>,
    ) -> Result<(), Error> {
        if let Some(san) = san {
            self.vm.set_context_property(
                tunnel.context,
                &["upstream", "uri_san_peer_certificate"],
                san.as_bytes().to_vec(),
            )?;
        }
        let mut response = HeaderMap::from_pairs([(":status", status)]);
        if let Some(baggage) = baggage {
            response.add("baggage", baggage);
        }
        tunnel.entries += 1;
        let action = self.vm.on_response_headers(tunnel.context, response, status != "200")?;
        assert_eq!(action, Action::Continue, "the CONNECT answer must never be held");
        Ok(())
    }

    /// A tunnel whose CONNECT got `200` with the destination's `baggage`.
    pub fn established_tunnel(&mut self, connection_id: u64, baggage: &str, san: &str) -> Tunnel {
        let mut tunnel = self.open_tunnel(connection_id);
        self.answer_tunnel(&mut tunnel, "200", Some(baggage.as_bytes()), Some(san));
        tunnel
    }

    /// The tunnel's stream ends: the upstream filter gets on_done and on_delete, never on_log.
    pub fn close_tunnel(&mut self, tunnel: Tunnel) -> Trace {
        self.try_close_tunnel(tunnel).unwrap_or_else(|e| panic!("upstream CONNECT end: {e}"))
    }

    pub fn try_close_tunnel(&mut self, tunnel: Tunnel) -> Result<Trace, Error> {
        self.vm.on_done(tunnel.context)?;
        let state = self.vm.on_delete(tunnel.context)?;
        Ok(Trace { state, entries: tunnel.entries + 2 })
    }

    // ---- main_internal: one inner request (stats root) --------------------------------------

    /// One inner HTTP request through main_internal, from start to access log.
    pub fn serve(&mut self, request: InnerRequest) -> Served {
        self.try_serve(request).unwrap_or_else(|e| panic!("inner request on main_internal: {e}"))
    }

    pub fn try_serve(&mut self, r: InnerRequest) -> Result<Served, Error> {
        let vm = &mut self.vm;
        let id = vm.create_http_context(self.stats)?;
        let mut entries = 1;
        let mut response = r.response;
        // Envoy's header_mutation copies the filter state into x-wp-peer-* before our filter
        // runs; the route adds x-wp-service to the response; xds.cluster_name is there too.
        let mut request = r.request;
        if let Some(filter_state) = &r.filter_state {
            for (header, part) in ["x-wp-peer-san", "x-wp-peer-legacy", "x-wp-peer-baggage"].iter().zip(filter_state) {
                if !part.is_empty() {
                    request.add(header, part.clone());
                }
            }
        }
        if let Some(endpoint) = &r.endpoint {
            response.add("x-wp-endpoint", endpoint.clone());
        }
        if let Some(cluster) = &r.cluster {
            response.add("x-wp-service", cluster.clone());
            vm.set_context_property(id, &["xds", "cluster_name"], cluster.clone())?;
        }
        let mut actions = Vec::new();
        actions.push(vm.on_request_headers(id, request, r.request_body.is_none())?);
        entries += 1;
        let request_as_routed = vm.context(id).map(|c| c.request_headers.clone()).unwrap_or_default();
        if let Some(body) = &r.request_body {
            actions.push(vm.on_request_body(id, body, true)?);
            entries += 1;
        }
        let response_ends = r.response_body.is_none() && r.trailers.is_none();
        actions.push(vm.on_response_headers(id, response, response_ends)?);
        entries += 1;
        if let Some(body) = &r.response_body {
            actions.push(vm.on_response_body(id, body, r.trailers.is_none())?);
            entries += 1;
        }
        if let Some(trailers) = r.trailers {
            actions.push(vm.on_response_trailers(id, trailers)?);
            entries += 1;
        }
        // Known only when the stream ends: Envoy's access-log attributes.
        let log = [
            (["response", "flags"], r.response_flags),
            (["request", "duration"], r.duration_ns),
            (["request", "total_size"], r.request_bytes),
            (["response", "total_size"], r.response_bytes),
        ];
        for (path, value) in log {
            vm.set_context_property(id, &path, value.to_le_bytes().to_vec())?;
        }
        if let Some(messages) = &r.grpc_messages {
            vm.set_context_property(id, &["filter_state", "envoy.filters.http.grpc_stats"], messages.clone())?;
        }
        let state = vm.finish(id)?;
        entries += 3;
        let request_ops = self.header_ops(state.id, MapType::HttpRequestHeaders);
        Ok(Served { request_as_routed, actions, request_ops, trace: Trace { state, entries } })
    }

    // ---- what Envoy ends up with ------------------------------------------------------------

    fn headers(&self, context: u32, map: impl Fn(&ContextState) -> &HeaderMap) -> HeaderMap {
        self.vm.context(context).map(map).cloned().unwrap_or_default()
    }

    /// Every `istio_requests_total` series the module defined.
    pub fn request_series(&self) -> Vec<Series> {
        self.vm
            .metrics()
            .iter()
            .filter(|m| m.metric_type == Some(MetricType::Counter))
            .filter(|m| m.name.split(';').next() == Some(REQUESTS_TOTAL))
            .map(Series::parse)
            .collect()
    }

    /// The only `istio_requests_total` series (panics listing them if there is not exactly one).
    pub fn only_request_series(&self) -> Series {
        let mut all = self.request_series();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one istio_requests_total series, got {:#?}",
            all.iter().map(|s| &s.metric.name).collect::<Vec<_>>()
        );
        all.remove(0)
    }

    /// Samples of histogram `base` for the label set of `series`.
    pub fn histogram(&self, base: &str, series: &Series) -> Vec<u64> {
        let name = format!("{base}{}", series.suffix());
        let metric = self
            .vm
            .metrics()
            .iter()
            .find(|m| m.metric_type == Some(MetricType::Histogram) && m.name == name)
            .unwrap_or_else(|| panic!("histogram {base} is not defined for {}", series.suffix()));
        metric.samples.clone()
    }

    /// `waypoint_errors_total{reason}` (0 when never defined).
    pub fn errors(&self, reason: &str) -> i64 {
        let name = format!("waypoint_errors_total;reason={reason}");
        self.vm.metric(&name).map_or(0, |m| m.value)
    }

    /// Every error reason counted so far, as `reason=count`.
    pub fn all_errors(&self) -> BTreeMap<String, i64> {
        self.vm
            .metrics()
            .iter()
            .filter_map(|m| {
                let reason = m.name.strip_prefix("waypoint_errors_total;reason=")?;
                Some((reason.to_string(), m.value))
            })
            .filter(|(_, v)| *v != 0)
            .collect()
    }

    /// Every series of counter `base`: its labels in order and its value.
    pub fn counters(&self, base: &str) -> Vec<(Vec<(String, String)>, i64)> {
        self.series_of(MetricType::Counter, base)
    }

    /// Every series of gauge `base`: its labels in order and its value.
    pub fn gauges(&self, base: &str) -> Vec<(Vec<(String, String)>, i64)> {
        self.series_of(MetricType::Gauge, base)
    }

    fn series_of(&self, kind: MetricType, base: &str) -> Vec<(Vec<(String, String)>, i64)> {
        self.vm
            .metrics()
            .iter()
            .filter(|m| m.metric_type == Some(kind) && m.name.split(';').next() == Some(base))
            .map(|m| (Series::parse(m).labels, m.value))
            .collect()
    }

    /// How many times the module called `proxy_define_metric` for names starting with `prefix`.
    pub fn defines(&self, prefix: &str) -> usize {
        self.vm
            .effects()
            .iter()
            .filter(|e| matches!(e, Effect::MetricDefined { name, .. } if name.starts_with(prefix)))
            .count()
    }

    /// Header-map changes the module made in `context` on `map`.
    pub fn header_ops(&self, context: u32, map: MapType) -> Vec<HeaderOp> {
        self.vm
            .effects()
            .iter()
            .filter_map(|e| match e {
                Effect::HeaderMap { context_id, map: m, op } if *context_id == context && *m == map => Some(op.clone()),
                _ => None,
            })
            .collect()
    }

    /// Error-level logs (the module logs nothing else on purpose).
    pub fn error_logs(&self) -> Vec<String> {
        self.vm.logs().into_iter().filter(|(level, _)| *level >= LogLevel::Error).map(|(_, m)| m).collect()
    }

    /// Panics unless the VM is alive and the module logged nothing at error level or above.
    pub fn assert_healthy(&self) {
        assert!(!self.vm.is_dead(), "the VM died: {:?}", self.vm.dead_reason());
        assert!(self.error_logs().is_empty(), "unexpected error logs: {:?}", self.error_logs());
    }
}

/// What `set_filter_state` stores on connect_terminate, in the harness's notation:
/// identity, legacy header and baggage separated by spaces (absent parts empty).
pub fn downstream_filter_state(san: &str, connect: &HeaderMap) -> Vec<u8> {
    let mut value = san.as_bytes().to_vec();
    value.push(b' ');
    value.extend_from_slice(connect.get("x-envoy-peer-metadata").unwrap_or_default());
    value.push(b' ');
    value.extend_from_slice(connect.get("baggage").unwrap_or_default());
    value
}

/// The downstream peer of a ztunnel client that sent `baggage`, as the stats role receives it.
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

/// The client's CONNECT on connect_terminate (the downstream filter's stream).
#[derive(Debug)]
pub struct ClientConnect {
    pub context: u32,
    /// `wp.downstream_peer` as Envoy stored it before our filter ran.
    pub filter_state: Vec<u8>,
    /// The request headers after our filter: what is routed on.
    pub routed: HeaderMap,
    pub action: Action,
    entries: u32,
}

impl ClientConnect {
    /// The CONNECT's request headers went on (nothing held).
    pub fn continued(&self) -> bool {
        self.action == Action::Continue
    }
}

/// Our CONNECT to a destination ztunnel over connect_originate connection `connection_id`.
#[derive(Debug)]
pub struct Tunnel {
    pub context: u32,
    pub connection_id: u64,
    /// The CONNECT request headers as sent.
    pub sent: HeaderMap,
    entries: u32,
}

impl Tunnel {
    /// The `x-wp-upconn` main_internal reports for a request this tunnel carries when no other
    /// worker allocated a connection id in between: the internal connection just before.
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
    /// The downstream peer's three parts (identity, legacy header, baggage).
    pub filter_state: Option<[Vec<u8>; 3]>,
    pub cluster: Option<Vec<u8>>,
    /// `x-wp-endpoint`: the upstream host's Istio endpoint metadata.
    pub endpoint: Option<Vec<u8>>,
    /// Envoy's grpc_stats filter state, as Envoy hands it to wasm.
    pub grpc_messages: Option<Vec<u8>>,
    pub response_flags: u64,
    pub duration_ns: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl InnerRequest {
    /// `GET path` to the echo service, answered 200 with no tunnel binding yet.
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
            duration_ns: 3_400_000,
            request_bytes: 120,
            response_bytes: 340,
        }
    }

    /// A unary gRPC call: bodies both ways, the status in the trailers.
    pub fn grpc(method: &str, grpc_status: &str) -> Self {
        let mut r = Self::get(method);
        r.request.replace(":method", "POST");
        r.request.add("content-type", "application/grpc+proto");
        r.request.add("te", "trailers");
        r.request_body = Some(b"\0\0\0\0\x05hello".to_vec());
        r.response = HeaderMap::from_pairs([(":status", "200"), ("content-type", "application/grpc")]);
        r.response_body = Some(b"\0\0\0\0\x05world".to_vec());
        r.trailers = Some(HeaderMap::from_pairs([("grpc-status", grpc_status)]));
        // Envoy's grpc_stats filter counted one message each way.
        r.grpc_messages(1, 1)
    }

    /// The downstream peer Envoy's `set_filter_state` stored on the CONNECT, in the
    /// harness's `"<san> <legacy> <baggage>"` notation (a SAN and base64 hold no space).
    pub fn downstream_peer(self, filter_state: &[u8]) -> Self {
        let mut parts = filter_state.splitn(3, |b| *b == b' ');
        let mut next = || parts.next().unwrap_or_default().to_vec();
        let (san, legacy, baggage) = (next(), next(), next());
        self.downstream_parts(&san, &legacy, &baggage)
    }

    /// The downstream peer's three parts as Envoy captured them, each possibly hostile.
    pub fn downstream_parts(mut self, san: &[u8], legacy: &[u8], baggage: &[u8]) -> Self {
        self.filter_state = Some([san.to_vec(), legacy.to_vec(), baggage.to_vec()]);
        self
    }

    /// The route reported the upstream host's endpoint metadata.
    pub fn endpoint(mut self, metadata: &str) -> Self {
        self.endpoint = Some(metadata.as_bytes().to_vec());
        self
    }

    /// Envoy's grpc_stats counted `requests` and `responses` messages; Envoy 1.40 hands wasm
    /// the object's string form, "<requests>,<responses>".
    pub fn grpc_messages(mut self, requests: u8, responses: u8) -> Self {
        self.grpc_messages = Some(format!("{requests},{responses}").into_bytes());
        self
    }

    /// The response came back over main_internal's upstream internal connection `x`.
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
    /// The request headers after the stats filter's `on_request_headers` (what goes upstream).
    pub request_as_routed: HeaderMap,
    pub actions: Vec<Action>,
    /// The stats filter's changes to the inner request's headers.
    pub request_ops: Vec<HeaderOp>,
    pub trace: Trace,
}

impl Served {
    /// Every callback let the stream continue.
    pub fn all_continued(&self) -> bool {
        self.actions.iter().all(|a| *a == Action::Continue)
    }
}

/// One metric series: base name plus its `;label=value` pairs.
#[derive(Debug, Clone)]
pub struct Series {
    pub metric: Metric,
    pub labels: Vec<(String, String)>,
}

impl Series {
    fn parse(metric: &Metric) -> Self {
        let labels = metric
            .name
            .split(';')
            .skip(1)
            .map(|pair| {
                let (k, v) =
                    pair.split_once('=').unwrap_or_else(|| panic!("{pair:?} in {:?} is not label=value", metric.name));
                (k.to_string(), v.to_string())
            })
            .collect();
        Self { metric: metric.clone(), labels }
    }

    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("label {name} missing from {}", self.metric.name))
    }

    pub fn count(&self) -> i64 {
        self.metric.value
    }

    /// The labels in order, as (name, value).
    pub fn labels(&self) -> Vec<(&str, &str)> {
        self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    fn suffix(&self) -> &str {
        let at = self.metric.name.find(';').unwrap_or(self.metric.name.len());
        &self.metric.name[at..]
    }

    /// Checks the given labels by value and reports every mismatch at once.
    pub fn assert_labels(&self, expected: &[(&str, &str)]) {
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(name, value)| self.label(name) != *value)
            .map(|(name, value)| format!("  {name}: got {:?}, want {value:?}", self.label(name)))
            .collect();
        assert!(wrong.is_empty(), "wrong labels in {}:\n{}", self.metric.name, wrong.join("\n"));
    }

    /// Checks that the label names are exactly Istio's 25, in order, each once.
    pub fn assert_istio_label_names(&self) {
        let names: Vec<&str> = self.labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, LABEL_NAMES, "label names/order of {}", self.metric.name);
    }
}
