//! The three roles driven through a request's life against an in-memory host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg(not(target_arch = "wasm32"))]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use std::time::Duration;

use waypoint_core::host::{HeaderMap, Headers, HostError, HostStatus, MetricKind, Metrics, Stream};
use waypoint_core::labels::LABEL_NAMES;
use waypoint_core::labels::Series;
use waypoint_core::roles::{Downstream, RequestState, Stats, Upstream};
use waypoint_core::worker::Worker;
use waypoint_core::{PluginConfig, legacy};

/// The fake host's own mutable header maps.
type HeaderList = Vec<(String, Vec<u8>)>;

#[derive(Default)]
struct FakeHost {
    maps: RefCell<HashMap<&'static str, HeaderList>>,
    /// Envoy's attributes by their path, as the typed accessors stand for them.
    properties: HashMap<String, Vec<u8>>,
    numbers: HashMap<String, u64>,
    grpc_messages: Option<(u64, u64)>,
    defined: RefCell<Vec<(MetricKind, String)>>,
    values: RefCell<HashMap<u32, Vec<i128>>>,
    failing: HashSet<&'static str>,
}

fn map_name(map: HeaderMap) -> &'static str {
    match map {
        HeaderMap::Request => "request",
        HeaderMap::Response => "response",
        HeaderMap::ResponseTrailers => "trailers",
    }
}

impl FakeHost {
    fn with(mut self, map: HeaderMap, headers: &[(&str, &str)]) -> Self {
        let list = headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        self.maps.get_mut().insert(map_name(map), list);
        self
    }
    fn prop(mut self, path: &str, value: &[u8]) -> Self {
        self.properties.insert(path.to_string(), value.to_vec());
        self
    }
    fn num(mut self, path: &str, value: u64) -> Self {
        self.numbers.insert(path.to_string(), value);
        self
    }
    fn messages(mut self, requests: u64, responses: u64) -> Self {
        self.grpc_messages = Some((requests, responses));
        self
    }
    fn property(&self, path: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.check("property")?;
        Ok(self.properties.get(path).cloned())
    }
    fn number(&self, path: &str) -> Result<Option<u64>, HostError> {
        self.check("property")?;
        Ok(self.numbers.get(path).copied())
    }
    fn failing(mut self, call: &'static str) -> Self {
        self.failing.insert(call);
        self
    }
    fn check(&self, call: &'static str) -> Result<(), HostError> {
        if self.failing.contains(call) { Err(HostError { call, status: HostStatus::Internal }) } else { Ok(()) }
    }
    fn get(&self, map: HeaderMap, name: &str) -> Option<String> {
        let maps = self.maps.borrow();
        let list = maps.get(map_name(map))?;
        list.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
    /// The labels and count of the only `istio_requests_total` series.
    fn requests_total(&self) -> (HashMap<String, String>, i128) {
        let defined = self.defined.borrow();
        let counters: Vec<_> = defined
            .iter()
            .enumerate()
            .filter(|(_, (k, n))| *k == MetricKind::Counter && n.starts_with("istio_requests_total;"))
            .collect();
        assert_eq!(counters.len(), 1, "exactly one label set: {defined:?}");
        let (id, (_, name)) = counters[0];
        let labels = name.split(';').skip(1).filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into()));
        let count = self.values.borrow().get(&(id as u32)).map(|v| v.iter().sum()).unwrap_or(0);
        (labels.collect(), count)
    }
}

impl Stream for FakeHost {
    fn headers(&self, map: HeaderMap) -> Result<Headers, HostError> {
        self.check("headers")?;
        Ok(self.maps.borrow().get(map_name(map)).map(|list| list.iter().cloned().collect()).unwrap_or_default())
    }
    fn header(&self, map: HeaderMap, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.check("header")?;
        Ok(self.get(map, name).map(String::into_bytes))
    }
    fn remove_header(&self, map: HeaderMap, name: &str) -> Result<(), HostError> {
        self.check("remove_header")?;
        self.maps.borrow_mut().entry(map_name(map)).or_default().retain(|(k, _)| k != name);
        Ok(())
    }
    fn add_header(&self, map: HeaderMap, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.check("add_header")?;
        self.maps.borrow_mut().entry(map_name(map)).or_default().push((name.into(), value.to_vec()));
        Ok(())
    }
    fn connection_id(&self) -> Result<Option<u64>, HostError> {
        self.number("connection.id")
    }
    fn upstream_peer_uri_san(&self) -> Result<Option<Vec<u8>>, HostError> {
        self.property("upstream.uri_san_peer_certificate")
    }
    fn cluster_name(&self) -> Result<Option<Vec<u8>>, HostError> {
        self.property("xds.cluster_name")
    }
    fn response_flags(&self) -> Result<u64, HostError> {
        Ok(self.number("response.flags")?.unwrap_or(0))
    }
    fn request_duration(&self) -> Result<Duration, HostError> {
        Ok(Duration::from_nanos(self.number("request.duration")?.unwrap_or(0)))
    }
    fn request_total_size(&self) -> Result<u64, HostError> {
        Ok(self.number("request.total_size")?.unwrap_or(0))
    }
    fn response_total_size(&self) -> Result<u64, HostError> {
        Ok(self.number("response.total_size")?.unwrap_or(0))
    }
    fn grpc_messages(&self) -> Result<Option<(u64, u64)>, HostError> {
        self.check("property")?;
        Ok(self.grpc_messages)
    }
}

impl Metrics for FakeHost {
    /// Keeps each series as `name;label=value...`, the way the tests read it back.
    fn define(&self, kind: MetricKind, series: &Series<'_>) -> Result<u32, HostError> {
        self.check("define")?;
        assert_eq!(series.label_names().len(), series.label_values().len(), "{series:?}");
        let mut name = series.name().to_string();
        for (label, value) in series.label_names().iter().zip(series.label_values()) {
            name.push_str(&format!(";{label}={value}"));
        }
        let mut defined = self.defined.borrow_mut();
        defined.push((kind, name));
        Ok(defined.len() as u32 - 1)
    }
    fn increment(&self, id: u32, by: i64) -> Result<(), HostError> {
        self.values.borrow_mut().entry(id).or_default().push(by.into());
        Ok(())
    }
    fn record(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.values.borrow_mut().entry(id).or_default().push(value.into());
        Ok(())
    }
}

const CLIENT_BAGGAGE: &str = "k8s.cluster.name=cluster1,k8s.namespace.name=frontend,k8s.deployment.name=curl,\
service.name=curl,service.version=v1,cloud.region=region-a,cloud.availability_zone=zone-a";
const SERVER_BAGGAGE: &str = "k8s.cluster.name=cluster2,k8s.namespace.name=backend,k8s.deployment.name=echo-v2,\
service.name=echo,service.version=v2";
const CLIENT_SAN: &str = "spiffe://cluster.local/ns/frontend/sa/curl";
const SERVER_SAN: &str = "spiffe://cluster.local/ns/backend/sa/echo";
const CLUSTER: &str = "inbound-vip|8080|http|echo.backend.svc.cluster.local";

fn config(json: &str) -> PluginConfig {
    PluginConfig::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn waypoint_config() -> PluginConfig {
    config(
        r#"{"identity": {"workload_name": "waypoint", "workload_type": "deployment", "namespace": "backend",
                             "cluster": "cluster1", "canonical_service": "waypoint"}}"#,
    )
}

/// What main_internal's header_mutation hands the stats role: each part of the
/// downstream peer in its own header; Envoy adds no header for an empty part.
fn downstream(san: &str, baggage: &str, legacy: &str) -> Vec<(&'static str, String)> {
    [("x-wp-peer-san", san), ("x-wp-peer-legacy", legacy), ("x-wp-peer-baggage", baggage)]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| (name, value.to_owned()))
        .collect()
}

fn headers<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// One tunnel with connection id 8 answered by `server_baggage`, then one
/// inner request whose upstream connection was id 7, ending with `status`.
fn one_request(
    config: PluginConfig,
    peer: Vec<(&'static str, String)>,
    server_baggage: &str,
    inner: &[(&str, &str)],
) -> FakeHost {
    one_request_with(config, peer, Some(server_baggage), SERVER_SAN, inner, &[(":status", "200")], 0)
}

/// Like [`one_request`], with the tunnel's answer, the destination identity, the
/// inner response headers (beyond x-wp-upconn and x-wp-service) and flags chosen.
fn one_request_with(
    config: PluginConfig,
    peer: Vec<(&'static str, String)>,
    server_baggage: Option<&str>,
    server_san: &str,
    inner: &[(&str, &str)],
    response: &[(&str, &str)],
    flags: u64,
) -> FakeHost {
    let mut worker = Worker::new(&config.limits);
    let upstream = Upstream::new(config.clone());
    let mut answer = vec![(":status", "200")];
    answer.extend(server_baggage.map(|b| ("baggage", b)));
    let tunnel_host = FakeHost::default()
        .with(HeaderMap::Request, &[(":method", "CONNECT"), (":authority", "echo.backend.svc.cluster.local:8080")])
        .with(HeaderMap::Response, &answer)
        .num("connection.id", 8)
        .prop("upstream.uri_san_peer_certificate", server_san.as_bytes());
    let tunnel = upstream.on_connect_request(&tunnel_host, &mut worker);
    assert_eq!(tunnel, Some(8));
    upstream.on_connect_response(&tunnel_host, &mut worker, 8);

    let stats = Stats::new(config);
    let mut request: Vec<(&str, &str)> = inner.to_vec();
    request.extend(headers(&peer));
    let mut response = response.to_vec();
    response.extend([("x-wp-upconn", "7"), ("x-wp-service", CLUSTER)]);
    let host = FakeHost::default()
        .with(HeaderMap::Request, &request)
        .with(HeaderMap::Response, &response)
        .num("response.flags", flags)
        .num("request.duration", 3_000_000)
        .num("request.total_size", 120)
        .num("response.total_size", 340);
    let mut state = RequestState::default();
    stats.on_request_headers(&host, &mut worker, &mut state);
    stats.on_response_headers(&host, &mut worker, &mut state);
    stats.on_response_trailers(&host, &mut worker, &mut state);
    stats.on_log(&host, &mut worker, &state);
    host
}

#[test]
fn the_connect_loses_its_baggage_and_the_client_gets_ours_on_the_200() {
    let downstream = Downstream::new(waypoint_config());
    let mut worker = Worker::new(&waypoint_config().limits);
    let host = FakeHost::default()
        .with(
            HeaderMap::Request,
            &[(":method", "CONNECT"), ("baggage", CLIENT_BAGGAGE), ("forwarded", "for=\"1.2.3.4\"")],
        )
        .with(HeaderMap::Response, &[(":status", "200")]);
    downstream.on_connect_request(&host, &mut worker);
    downstream.on_connect_response(&host, &mut worker);
    assert_eq!(host.get(HeaderMap::Request, "baggage"), None);
    assert!(host.get(HeaderMap::Request, "forwarded").is_some());
    assert_eq!(
        host.get(HeaderMap::Response, "baggage").as_deref(),
        Some("k8s.deployment.name=waypoint,service.name=waypoint,k8s.namespace.name=backend,k8s.cluster.name=cluster1")
    );
}

#[test]
fn a_failed_connect_gets_no_baggage() {
    let downstream = Downstream::new(waypoint_config());
    let mut worker = Worker::new(&waypoint_config().limits);
    let host = FakeHost::default().with(HeaderMap::Response, &[(":status", "503")]);
    downstream.on_connect_response(&host, &mut worker);
    assert_eq!(host.get(HeaderMap::Response, "baggage"), None);
}

#[test]
fn the_upstream_connect_carries_our_baggage() {
    let upstream = Upstream::new(waypoint_config());
    let mut worker = Worker::new(&waypoint_config().limits);
    let host = FakeHost::default().num("connection.id", 3);
    upstream.on_connect_request(&host, &mut worker);
    assert!(host.get(HeaderMap::Request, "baggage").is_some_and(|b| b.starts_with("k8s.deployment.name=waypoint")));
}

#[test]
fn both_peers_name_the_request_in_all_25_labels() {
    let host = one_request(
        waypoint_config(),
        downstream(CLIENT_SAN, CLIENT_BAGGAGE, ""),
        SERVER_BAGGAGE,
        &[(":path", "/"), ("baggage", "app=1")],
    );
    assert_eq!(host.get(HeaderMap::Request, "baggage").as_deref(), Some("app=1"), "application baggage untouched");
    let (labels, count) = host.requests_total();
    assert_eq!(count, 1);
    let expected = [
        ("reporter", "waypoint"),
        ("source_workload", "curl"),
        ("source_canonical_service", "curl"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "frontend"),
        ("source_principal", CLIENT_SAN),
        ("source_app", "curl"),
        ("source_version", "v1"),
        ("source_cluster", "cluster1"),
        ("destination_workload", "echo-v2"),
        ("destination_workload_namespace", "backend"),
        ("destination_principal", SERVER_SAN),
        ("destination_app", "echo"),
        ("destination_version", "v2"),
        ("destination_service", "echo.backend.svc.cluster.local"),
        ("destination_canonical_service", "echo"),
        ("destination_canonical_revision", "v2"),
        ("destination_service_name", "echo"),
        ("destination_service_namespace", "backend"),
        ("destination_cluster", "cluster2"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(expected.len(), LABEL_NAMES.len());
    for (name, value) in expected {
        assert_eq!(labels.get(name).map(String::as_str), Some(value), "{name}");
    }
    let histograms: Vec<_> =
        host.defined.borrow().iter().filter(|(k, _)| *k == MetricKind::Histogram).cloned().collect();
    assert_eq!(histograms.len(), 3);
    assert_eq!(host.values.borrow().get(&1).cloned(), Some(vec![3]), "duration in ms");
    assert_eq!(host.values.borrow().get(&2).cloned(), Some(vec![120]));
    assert_eq!(host.values.borrow().get(&3).cloned(), Some(vec![340]));
}

#[test]
fn the_identity_namespace_beats_the_claimed_one() {
    let lying = CLIENT_BAGGAGE.replace("k8s.namespace.name=frontend", "k8s.namespace.name=kube-system");
    let host = one_request(waypoint_config(), downstream(CLIENT_SAN, &lying, ""), SERVER_BAGGAGE, &[]);
    assert_eq!(host.requests_total().0["source_workload_namespace"], "frontend");
}

#[test]
fn a_sidecar_legacy_header_on_the_inner_request_is_consumed() {
    let sidecar = waypoint_core::Peer {
        workload_name: "productpage-v1".into(),
        workload_type: waypoint_core::WorkloadType::Deployment,
        namespace: "frontend".into(),
        cluster: "cluster1".into(),
        canonical_service: "productpage".into(),
        canonical_revision: "v1".into(),
        app: "productpage".into(),
        version: "v1".into(),
        ..Default::default()
    };
    let encoded = legacy::encode(&sidecar);
    let host = one_request(
        waypoint_config(),
        downstream(CLIENT_SAN, "", ""),
        SERVER_BAGGAGE,
        &[("x-envoy-peer-metadata", &encoded), ("x-envoy-peer-metadata-id", "sidecar~1.2.3.4~pp~frontend")],
    );
    assert_eq!(host.get(HeaderMap::Request, "x-envoy-peer-metadata"), None);
    assert_eq!(host.get(HeaderMap::Request, "x-envoy-peer-metadata-id"), None);
    let (labels, _) = host.requests_total();
    assert_eq!(labels["source_workload"], "productpage-v1");
    assert_eq!(labels["source_canonical_service"], "productpage");
    assert_eq!(labels["source_principal"], CLIENT_SAN);
}

#[test]
fn with_baggage_discovery_off_only_tls_identities_are_known() {
    let off = config(r#"{"baggage_discovery": false}"#);
    let host = one_request(off, downstream(CLIENT_SAN, CLIENT_BAGGAGE, ""), SERVER_BAGGAGE, &[]);
    let (labels, _) = host.requests_total();
    assert_eq!(labels["source_workload"], "unknown");
    assert_eq!(labels["source_workload_namespace"], "frontend", "from the SPIFFE identity");
    assert_eq!(labels["destination_workload"], "unknown");
    assert_eq!(labels["destination_cluster"], "unknown");
    assert_eq!(labels["destination_principal"], SERVER_SAN);
}

#[test]
fn garbled_baggage_reads_unknown_field_by_field_and_is_counted() {
    let garbled = "k8s.cluster.name=clu;ster1,k8s.namespace.name=frontend,k8s.deployment.name=curl\u{1}";
    let host = one_request(waypoint_config(), downstream(CLIENT_SAN, garbled, ""), SERVER_BAGGAGE, &[]);
    let (labels, _) = host.requests_total();
    assert_eq!(labels["source_cluster"], "unknown");
    assert_eq!(labels["source_workload"], "unknown");
    assert_eq!(labels["source_workload_namespace"], "frontend");
    assert_eq!(labels["source_canonical_revision"], "latest");
    assert!(host.defined.borrow().iter().any(|(_, n)| n == "waypoint_errors_total;reason=value_rejected"));
}

#[test]
fn a_grpc_status_in_trailers_is_labelled() {
    let config = waypoint_config();
    let mut worker = Worker::new(&config.limits);
    let stats = Stats::new(config);
    let host = FakeHost::default()
        .with(HeaderMap::Request, &[("content-type", "application/grpc+proto")])
        .with(HeaderMap::Response, &[(":status", "200"), ("content-type", "application/grpc")])
        .with(HeaderMap::ResponseTrailers, &[("grpc-status", "7")]);
    let mut state = RequestState::default();
    stats.on_request_headers(&host, &mut worker, &mut state);
    stats.on_response_headers(&host, &mut worker, &mut state);
    stats.on_response_trailers(&host, &mut worker, &mut state);
    stats.on_log(&host, &mut worker, &state);
    let (labels, _) = host.requests_total();
    assert_eq!(labels["request_protocol"], "grpc");
    assert_eq!(labels["grpc_response_status"], "7");
    assert_eq!(labels["source_workload"], "unknown");
    assert_eq!(labels["destination_service"], "unknown");
}

#[test]
fn failing_host_calls_degrade_to_unknown_and_are_counted() {
    let config = waypoint_config();
    let mut worker = Worker::new(&config.limits);
    let stats = Stats::new(config);
    let host = FakeHost::default().failing("headers").failing("property");
    let mut state = RequestState::default();
    stats.on_request_headers(&host, &mut worker, &mut state);
    stats.on_response_headers(&host, &mut worker, &mut state);
    stats.on_log(&host, &mut worker, &state);
    let (labels, count) = host.requests_total();
    assert_eq!(count, 1, "the request is still counted");
    assert_eq!(labels["response_code"], "0");
    assert_eq!(labels["connection_security_policy"], "none", "no client identity: not mutual TLS");
    assert!(host.defined.borrow().iter().any(|(_, n)| n == "waypoint_errors_total;reason=host_call"));
}

#[test]
fn each_label_set_is_defined_once() {
    let config = waypoint_config();
    let mut worker = Worker::new(&config.limits);
    let stats = Stats::new(config);
    let host = FakeHost::default()
        .with(HeaderMap::Request, &headers(&downstream(CLIENT_SAN, CLIENT_BAGGAGE, "")))
        .with(HeaderMap::Response, &[(":status", "200")]);
    for _ in 0..100 {
        let mut state = RequestState::default();
        stats.on_request_headers(&host, &mut worker, &mut state);
        stats.on_response_headers(&host, &mut worker, &mut state);
        stats.on_log(&host, &mut worker, &state);
    }
    assert_eq!(host.defined.borrow().len(), 4);
    assert_eq!(host.requests_total().1, 100);
}

#[test]
fn a_request_reset_before_any_answer_still_names_its_service_from_the_route() {
    let config = waypoint_config();
    let mut worker = Worker::new(&config.limits);
    let stats = Stats::new(config);
    let host = FakeHost::default()
        .with(HeaderMap::Request, &headers(&downstream(CLIENT_SAN, CLIENT_BAGGAGE, "")))
        .prop("xds.cluster_name", CLUSTER.as_bytes());
    let mut state = RequestState::default();
    stats.on_request_headers(&host, &mut worker, &mut state);
    stats.on_log(&host, &mut worker, &state);
    let (labels, _) = host.requests_total();
    assert_eq!(labels["destination_service"], "echo.backend.svc.cluster.local");
    assert_eq!(labels["response_code"], "0");
    assert_eq!(labels["source_workload"], "curl");
}

fn error_count(host: &FakeHost, reason: &str) -> i128 {
    let name = format!("waypoint_errors_total;reason={reason}");
    let defined = host.defined.borrow();
    let Some(id) = defined.iter().position(|(_, n)| *n == name) else { return 0 };
    host.values.borrow().get(&(id as u32)).map(|v| v.iter().sum()).unwrap_or(0)
}

#[test]
fn a_destination_cannot_claim_a_namespace_its_certificate_does_not_prove() {
    let forged = SERVER_BAGGAGE.replace("k8s.namespace.name=backend", "k8s.namespace.name=kube-system");
    let host = one_request(waypoint_config(), downstream(CLIENT_SAN, CLIENT_BAGGAGE, ""), &forged, &[]);
    let (labels, _) = host.requests_total();
    assert_eq!(labels["destination_workload_namespace"], "backend");
    assert_eq!(labels["destination_principal"], SERVER_SAN);
}

#[test]
fn a_forged_source_namespace_is_counted() {
    let lying = CLIENT_BAGGAGE.replace("k8s.namespace.name=frontend", "k8s.namespace.name=kube-system");
    let host = one_request(waypoint_config(), downstream(CLIENT_SAN, &lying, ""), SERVER_BAGGAGE, &[]);
    assert_eq!(host.requests_total().0["source_workload_namespace"], "frontend");
    assert_eq!(error_count(&host, "identity_mismatch"), 1);
}

#[test]
fn the_first_of_several_uri_sans_is_the_principal() {
    let two = format!("{CLIENT_SAN},spiffe://cluster.local/ns/other/sa/x");
    let host = one_request(waypoint_config(), downstream(&two, CLIENT_BAGGAGE, ""), SERVER_BAGGAGE, &[]);
    let (labels, _) = host.requests_total();
    assert_eq!(labels["source_principal"], CLIENT_SAN);
    assert_eq!(labels["connection_security_policy"], "mutual_tls");
}

#[test]
fn a_space_in_the_legacy_header_is_never_read_as_baggage() {
    let injected = "AAAA k8s.deployment.name=injected-via-legacy";
    let host = one_request(waypoint_config(), downstream(CLIENT_SAN, "", injected), SERVER_BAGGAGE, &[]);
    let (labels, _) = host.requests_total();
    assert_eq!(labels["source_workload"], "unknown");
    assert_eq!(labels["source_workload_namespace"], "frontend");
}

#[test]
fn without_response_baggage_the_endpoint_metadata_names_the_destination() {
    let host = one_request_with(
        waypoint_config(),
        downstream(CLIENT_SAN, CLIENT_BAGGAGE, ""),
        None,
        "spiffe://cluster.local/ns/backend/sa/ratings",
        &[],
        &[(":status", "200"), ("x-wp-endpoint", "ratings-v1;backend;ratings;v1;cluster1")],
        0,
    );
    let (labels, _) = host.requests_total();
    for (name, value) in [
        ("destination_workload", "ratings-v1"),
        ("destination_workload_namespace", "backend"),
        ("destination_principal", "spiffe://cluster.local/ns/backend/sa/ratings"),
        ("destination_canonical_service", "ratings"),
        ("destination_canonical_revision", "v1"),
        ("destination_cluster", "cluster1"),
        ("destination_app", "unknown"),
        ("destination_version", "unknown"),
    ] {
        assert_eq!(labels[name], value, "{name}");
    }
}

#[test]
fn response_baggage_wins_over_the_endpoint_metadata() {
    let host = one_request_with(
        waypoint_config(),
        downstream(CLIENT_SAN, CLIENT_BAGGAGE, ""),
        Some(SERVER_BAGGAGE),
        SERVER_SAN,
        &[],
        &[(":status", "200"), ("x-wp-endpoint", "other;elsewhere;other;v9;cluster9")],
        0,
    );
    let (labels, _) = host.requests_total();
    assert_eq!(labels["destination_workload"], "echo-v2");
    assert_eq!(labels["destination_cluster"], "cluster2");
}

#[test]
fn the_configured_order_decides_between_the_destinations_baggage_and_its_endpoint_metadata() {
    let endpoint_first = config(r#"{"upstream_discovery": ["endpoint_metadata", "baggage", "tls_identity"]}"#);
    let host = one_request_with(
        endpoint_first,
        downstream(CLIENT_SAN, CLIENT_BAGGAGE, ""),
        Some(SERVER_BAGGAGE),
        SERVER_SAN,
        &[],
        &[(":status", "200"), ("x-wp-endpoint", "echo-v9;elsewhere;echo;v9;cluster9")],
        0,
    );
    let (labels, _) = host.requests_total();
    assert_eq!(labels["destination_workload"], "echo-v9");
    assert_eq!(labels["destination_cluster"], "cluster9");
    assert_eq!(labels["destination_principal"], SERVER_SAN, "under the tunnel's identity");
    assert_eq!(labels["destination_workload_namespace"], "backend", "whose namespace wins");
}

#[test]
fn without_tls_identity_in_the_list_no_principal_is_read() {
    let no_identity = config(r#"{"downstream_discovery": ["baggage"], "upstream_discovery": ["baggage"]}"#);
    let host = one_request(no_identity, downstream(CLIENT_SAN, CLIENT_BAGGAGE, ""), SERVER_BAGGAGE, &[]);
    let (labels, _) = host.requests_total();
    assert_eq!(labels["source_principal"], "unknown");
    assert_eq!(labels["destination_principal"], "unknown");
    assert_eq!(labels["source_workload"], "curl");
    assert_eq!(labels["destination_workload"], "echo-v2");
}

#[test]
fn a_request_that_reached_no_destination_names_its_cluster_from_the_endpoint() {
    const UF: u64 = 1 << 5;
    let host = one_request_with(
        waypoint_config(),
        downstream(CLIENT_SAN, CLIENT_BAGGAGE, ""),
        Some(SERVER_BAGGAGE),
        SERVER_SAN,
        &[],
        &[(":status", "503"), ("x-wp-endpoint", ";backend;;;cluster2")],
        UF,
    );
    let (labels, _) = host.requests_total();
    assert_eq!(labels["destination_cluster"], "cluster2");
    assert_eq!(labels["destination_workload_namespace"], "backend");
    assert_eq!(labels["destination_principal"], "unknown");
    assert_eq!(labels["destination_workload"], "unknown");
    assert_eq!(labels["response_flags"], "UF");
}

fn grpc_request(trailers: &[(&str, &str)], response: &[(&str, &str)], messages: Option<(u64, u64)>) -> FakeHost {
    let config = waypoint_config();
    let mut worker = Worker::new(&config.limits);
    let stats = Stats::new(config);
    let mut host = FakeHost::default()
        .with(HeaderMap::Request, &[("content-type", "application/grpc")])
        .with(HeaderMap::Response, response)
        .with(HeaderMap::ResponseTrailers, trailers);
    if let Some((requests, responses)) = messages {
        host = host.messages(requests, responses);
    }
    let mut state = RequestState::default();
    stats.on_request_headers(&host, &mut worker, &mut state);
    stats.on_response_headers(&host, &mut worker, &mut state);
    stats.on_response_trailers(&host, &mut worker, &mut state);
    stats.on_log(&host, &mut worker, &state);
    host
}

#[test]
fn a_grpc_response_without_a_status_reads_as_envoy_infers_it() {
    let host = grpc_request(&[], &[(":status", "200"), ("content-type", "application/grpc")], None);
    assert_eq!(host.requests_total().0["grpc_response_status"], "2");
    let unavailable = grpc_request(&[], &[(":status", "503")], None);
    assert_eq!(unavailable.requests_total().0["grpc_response_status"], "14");
}

#[test]
fn grpc_statuses_outside_the_seventeen_codes_read_one_value() {
    for raw in ["17", "200", "abc", "-3"] {
        let host = grpc_request(&[("grpc-status", raw)], &[(":status", "200")], None);
        assert_eq!(host.requests_total().0["grpc_response_status"], "-1", "{raw}");
    }
}

#[test]
fn grpc_messages_are_counted_each_way() {
    let host = grpc_request(&[("grpc-status", "0")], &[(":status", "200")], Some((1, 3)));
    let defined = host.defined.borrow();
    let sum = |base: &str| {
        let id = defined.iter().position(|(_, n)| n.split(';').next() == Some(base)).expect(base);
        host.values.borrow().get(&(id as u32)).map(|v| v.iter().sum::<i128>()).unwrap_or(0)
    };
    assert_eq!(sum("istio_request_messages_total"), 1);
    assert_eq!(sum("istio_response_messages_total"), 3);
}

/// `n` distinct peers of one identity through one worker, then a legit one of another.
fn flood(limits: &str, n: usize, baggage: impl Fn(usize) -> String) -> FakeHost {
    let config = config(&format!(r#"{{"limits": {limits}}}"#));
    let mut worker = Worker::new(&config.limits);
    let stats = Stats::new(config);
    let host = FakeHost::default().with(HeaderMap::Response, &[(":status", "200"), ("x-wp-service", CLUSTER)]);
    let mut serve = |san: &str, baggage: &str| {
        host.maps.borrow_mut().insert("request", {
            let list = downstream(san, baggage, "");
            list.into_iter().map(|(k, v)| (k.to_owned(), v.into_bytes())).collect()
        });
        let mut state = RequestState::default();
        stats.on_request_headers(&host, &mut worker, &mut state);
        stats.on_response_headers(&host, &mut worker, &mut state);
        stats.on_log(&host, &mut worker, &state);
    };
    for i in 0..n {
        serve("spiffe://cluster.local/ns/attack/sa/flood", &baggage(i));
    }
    serve(CLIENT_SAN, CLIENT_BAGGAGE);
    host
}

fn series_with(host: &FakeHost, label: &str, value: &str) -> usize {
    host.defined
        .borrow()
        .iter()
        .filter(|(k, n)| *k == MetricKind::Counter && n.starts_with("istio_requests_total;"))
        .filter(|(_, n)| n.contains(&format!(";{label}={value};")))
        .count()
}

#[test]
fn a_flood_from_one_identity_fills_only_its_share_and_keeps_its_identity() {
    let host = flood(r#"{"max_peers_per_identity": 8}"#, 1000, |i| format!("k8s.deployment.name=forged-{i}"));
    let requests = host.defined.borrow().iter().filter(|(_, n)| n.starts_with("istio_requests_total;")).count();
    assert!(requests <= 8 + 2, "{requests} series");
    assert_eq!(series_with(&host, "source_workload", "curl"), 1, "legit traffic keeps its full labels");
    assert!(series_with(&host, "source_principal", "spiffe://cluster.local/ns/attack/sa/flood") >= 8);
    assert_eq!(
        series_with(&host, "source_workload_namespace", "attack"),
        series_with(&host, "source_principal", "spiffe://cluster.local/ns/attack/sa/flood"),
        "the collapsed series keep the verified namespace"
    );
    assert!(error_count(&host, "cardinality_limit") > 0);
}

#[test]
fn pods_of_one_deployment_share_one_peer() {
    let host = flood("{}", 5000, |i| {
        format!("k8s.deployment.name=web,service.name=web,k8s.namespace.name=attack,k8s.instance.name=web-{i}")
    });
    assert_eq!(series_with(&host, "source_workload", "web"), 1);
    assert_eq!(error_count(&host, "cardinality_limit"), 0);
}

#[test]
fn past_the_series_cap_principal_and_namespace_stay() {
    let host = flood(r#"{"max_label_sets": 4}"#, 50, |i| format!("k8s.deployment.name=forged-{i}"));
    let defined = host.defined.borrow();
    let legit: Vec<_> =
        defined.iter().filter(|(_, n)| n.contains(&format!(";source_principal={CLIENT_SAN};"))).collect();
    assert!(!legit.is_empty());
    for (_, name) in legit.iter().filter(|(k, _)| *k == MetricKind::Counter) {
        assert!(name.contains(";source_workload_namespace=frontend;"), "{name}");
    }
}

#[test]
fn a_request_in_flight_keeps_its_peer_while_a_flood_frees_slots() {
    let config = config(r#"{"limits": {"max_label_sets": 4}}"#);
    let mut worker = Worker::new(&config.limits);
    let stats = Stats::new(config);
    let response = [(":status", "200"), ("x-wp-service", CLUSTER)];
    let in_flight = FakeHost::default()
        .with(HeaderMap::Request, &headers(&downstream(CLIENT_SAN, CLIENT_BAGGAGE, "")))
        .with(HeaderMap::Response, &response);
    let mut slow = RequestState::default();
    stats.on_request_headers(&in_flight, &mut worker, &mut slow);
    // While it runs, one identity claims 200 workloads: the tables fill and are freed again and again.
    for n in 0..200 {
        let peer = downstream("spiffe://cluster.local/ns/attack/sa/flood", &format!("k8s.deployment.name=app-{n}"), "");
        let host = FakeHost::default().with(HeaderMap::Request, &headers(&peer)).with(HeaderMap::Response, &response);
        let mut state = RequestState::default();
        stats.on_request_headers(&host, &mut worker, &mut state);
        stats.on_response_headers(&host, &mut worker, &mut state);
        stats.on_log(&host, &mut worker, &state);
        stats.on_done(&mut worker, &mut state);
    }
    stats.on_response_headers(&in_flight, &mut worker, &mut slow);
    stats.on_log(&in_flight, &mut worker, &slow);
    let defined = in_flight.defined.borrow();
    let name = defined.iter().map(|(_, n)| n.as_str()).find(|n| n.starts_with("istio_requests_total;"));
    let name = name.expect("the request in flight defines its own series");
    assert!(name.contains(&format!(";source_principal={CLIENT_SAN};")), "{name}");
    assert!(name.contains(";source_workload_namespace=frontend;"), "{name}");
}
