//! The native engine (issue 11): the same waypoint-core roles as an Envoy dynamic module
//! (dist/libwaypoint_native.so) in the real two-network mesh. It must print what the wasm
//! engine prints, byte for byte: the same metric names, the same 25 labels in the same
//! order, the same values. Every expected line is a literal (PROTOCOL.md §4 and §6).
//!
//! The upstream peer travels as with wasm: the upstream filter files the destination's
//! CONNECT 200 under its tunnel's connection id, the stats filter finds it by the route's
//! `%UPSTREAM_CONNECTION_ID%` (connection-id adjacency, envoy-configs/README.md). The
//! dynamic-module ABI of Envoy 1.40 offers no object shared from a tunnel back to the
//! request it carries, so the precision test below is what holds it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use harness::Options;
use harness::grpc::GrpcClient;
use harness::prom;
use harness::topology::{Engine, GRPC_PORT, PodHbone, Topology};
use harness::traffic;
use hbone_peers::HboneClient;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

/// What a real ztunnel 1.29 sent as a client (PROTOCOL.md §6).
const ZTUNNEL_REQUEST_BAGGAGE: &str =
    "k8s.cluster.name=c1,k8s.namespace.name=ns1,k8s.deployment.name=curl,service.name=curl,service.version=v1";
/// What a real ztunnel 1.29 answered as a destination (PROTOCOL.md §6).
const ZTUNNEL_RESPONSE_BAGGAGE: &str = "k8s.cluster.name=c1,k8s.namespace.name=ns2,k8s.deployment.name=server,service.name=server,service.version=v2,cloud.region=r1,cloud.availability_zone=z1";
const WAYPOINT_PRINCIPAL: &str = "spiffe://cluster.local/ns/backend/sa/waypoint";

/// The two series of `both_engines_print_the_same_lines`, as `/stats/prometheus` prints them.
const EXPECTED_LINES: [&str; 2] = [
    concat!(
        "istio_requests_total{reporter=\"waypoint\",source_workload=\"curl\",source_canonical_service=\"curl\",",
        "source_canonical_revision=\"v1\",source_workload_namespace=\"frontend\",",
        "source_principal=\"spiffe://cluster.local/ns/frontend/sa/curl\",source_app=\"curl\",source_version=\"v1\",",
        "source_cluster=\"c1\",destination_workload=\"server\",destination_workload_namespace=\"backend\",",
        "destination_principal=\"spiffe://cluster.local/ns/backend/sa/echo\",destination_app=\"server\",",
        "destination_version=\"v2\",destination_service=\"echo.backend.svc.cluster.local\",",
        "destination_canonical_service=\"server\",destination_canonical_revision=\"v2\",",
        "destination_service_name=\"echo\",destination_service_namespace=\"backend\",destination_cluster=\"c1\",",
        "request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",",
        "connection_security_policy=\"mutual_tls\"} 1"
    ),
    concat!(
        "istio_requests_total{reporter=\"waypoint\",source_workload=\"curl\",source_canonical_service=\"curl\",",
        "source_canonical_revision=\"v1\",source_workload_namespace=\"frontend\",",
        "source_principal=\"spiffe://cluster.local/ns/frontend/sa/curl\",source_app=\"curl\",source_version=\"v1\",",
        "source_cluster=\"c1\",destination_workload=\"server\",destination_workload_namespace=\"backend\",",
        "destination_principal=\"spiffe://cluster.local/ns/backend/sa/ratings\",destination_app=\"server\",",
        "destination_version=\"v2\",destination_service=\"ratings.backend.svc.cluster.local\",",
        "destination_canonical_service=\"server\",destination_canonical_revision=\"v2\",",
        "destination_service_name=\"ratings\",destination_service_namespace=\"backend\",destination_cluster=\"c1\",",
        "request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",",
        "connection_security_policy=\"mutual_tls\"} 1"
    ),
];

fn with_engine(engine: Engine, options: Options) -> Options {
    Options { engine, ..options }
}

/// One HTTP/1.1 request through an HBONE tunnel the test holds.
async fn http1_through_tunnel(stream: hbone_peers::TunnelStream, host: &str, path: &str) -> u16 {
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 in the tunnel");
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path).header("host", host).body(Empty::new()).unwrap();
    let response = sender.send_request(request).await.expect("a response through the tunnel");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    drop(sender);
    let _ = driver.await;
    status
}

/// A real ztunnel's literal headers on both sides, one request to each service; the
/// waypoint's metrics afterwards.
async fn literal_traffic(engine: Engine) -> String {
    let destinations = |pods: &[&str]| {
        PodHbone::independent(&pods.iter().map(|pod| (*pod, ZTUNNEL_RESPONSE_BAGGAGE)).collect::<Vec<_>>())
    };
    let t = start(with_engine(
        engine,
        Options {
            node_b: destinations(&["echo-v1", "echo-v2"]),
            ratings: destinations(&["ratings-v1"]),
            ..Options::default()
        },
    ))
    .await;
    let client = HboneClient::dial(t.plan.waypoint_hbone(), &t.tls_files("frontend", "curl"), Some(WAYPOINT_PRINCIPAL))
        .await
        .expect("mTLS to the waypoint's :15008");
    for (vip, host) in [
        ("10.96.0.10:8080", "echo.backend.svc.cluster.local"),
        ("10.96.0.11:8080", "ratings.backend.svc.cluster.local"),
    ] {
        let tunnel = client.connect(vip, &[("baggage", ZTUNNEL_REQUEST_BAGGAGE)]).await.expect("CONNECT");
        assert_eq!(tunnel.status, 200, "{engine:?} {host}: {:?}", tunnel.headers);
        assert_eq!(http1_through_tunnel(tunnel.stream, &format!("{host}:8080"), "/literal").await, 200);
    }
    metrics_after(&t, 2).await
}

#[tokio::test(flavor = "multi_thread")]
async fn both_engines_print_the_same_istio_requests_total_lines_byte_for_byte() {
    for engine in [Engine::Wasm, Engine::Native] {
        let text = literal_traffic(engine).await;
        let mut lines = prom::raw_lines(&text, REQUESTS);
        lines.sort_unstable();
        assert_eq!(lines, EXPECTED_LINES, "{engine:?}");
        // Both baggages claim a namespace their verified identity contradicts: counted.
        let mismatches: f64 = prom::samples(&text, "waypoint_errors_total")
            .iter()
            .filter(|s| s.label("reason") == "identity_mismatch")
            .map(|s| s.value)
            .sum();
        assert!(mismatches > 0.0, "{engine:?}: waypoint_errors_total{{reason=\"identity_mismatch\"}}");
        assert!(text.contains("# TYPE istio_requests_total counter"), "{engine:?}");
        assert!(!text.contains("dynamicmodulescustom"), "{engine:?}: no namespace prefix");
        // The upstream role counts in the root scope too, not under its cluster's.
        assert!(!text.contains("_waypoint_errors_total"), "{engine:?}: only waypoint_errors_total");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn native_histograms_count_each_request_once_under_the_requests_labels() {
    let t = start(with_engine(Engine::Native, Options::default())).await;
    let outcome = traffic::run_demo_load(&t, 2, 10, 5).await.expect("demo load");
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    metrics_after(&t, outcome.ok).await;
    let histograms = ["istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"];
    let text = metrics_when(&t, "the three histograms", |text| {
        histograms.iter().all(|h| prom::total(text, &format!("{h}_count")) == outcome.ok as f64)
    })
    .await;
    for h in histograms {
        assert!(text.contains(&format!("# TYPE {h} histogram")), "{h} is a histogram");
        for line in prom::raw_lines(&text, &format!("{h}_count")) {
            assert_eq!(prom::label_names(line).unwrap(), ISTIO_LABELS, "{line}");
        }
    }
    // Same label sets as the counter, request for request.
    for s in prom::samples(&text, REQUESTS) {
        let count = same_series(&text, "istio_request_duration_milliseconds_count", &s).expect("a duration series");
        assert_eq!(count.value, s.value, "{:?}", s.labels);
    }
}

/// The precision test of e2e.rs with the native engine: behind the east-west gateway
/// one service address reaches two pods; per-endpoint request counts must equal the
/// metric series exactly (connection-id adjacency holds in the native module too).
#[tokio::test(flavor = "multi_thread")]
async fn native_behind_the_gateway_each_endpoints_served_count_equals_its_metric_series_exactly() {
    let t = start(with_engine(Engine::Native, Options::default())).await;
    let entry = t.plan.outbound(t.plan.curl());
    let mut clients = Vec::new();
    for n in 0..3 {
        let headers = vec![("baggage".to_owned(), traffic::app_baggage(n))];
        clients.push(tokio::spawn(traffic::counting_client(entry, 40, usize::MAX, headers)));
    }
    // Connection churn: new CONNECTs and new tunnels every few requests.
    for n in 0..2 {
        let headers = vec![("baggage".to_owned(), traffic::app_baggage(10 + n))];
        clients.push(tokio::spawn(traffic::counting_client(entry, 40, 3 + n, headers)));
    }
    let mut told = traffic::Tally::default();
    for client in clients {
        told = told + client.await.unwrap();
    }
    assert_eq!(told.outcome().failed, 0, "{told:?}");
    assert_eq!(told.requests(), 5 * 40);
    let served: BTreeMap<String, usize> = t.served().into_iter().collect();
    assert_eq!(served, told.by_workload, "the apps' own counts and the replies agree");
    assert!(served.len() == 2 && served.values().all(|n| *n > 0), "both endpoints got traffic: {served:?}");

    let text = metrics_after(&t, 5 * 40).await;
    let by_destination: BTreeMap<String, usize> =
        prom::sum_by(&text, REQUESTS, "destination_workload").into_iter().map(|(k, v)| (k, v as usize)).collect();
    assert_eq!(by_destination, served, "istio_requests_total per destination_workload equals what each pod served");
    for s in prom::samples(&text, REQUESTS) {
        assert_labels(&s, &CURL);
        assert_labels(&s, &echo_destination(s.label("destination_workload")));
    }
}

/// A plugin configuration the module cannot read: Envoy refuses the config with the
/// module's one clear line, and exits as Envoy does on a bad config (status 1), not
/// from a signal.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_plugin_configuration_is_refused_without_a_crash() {
    let t: Topology = start(with_engine(Engine::Native, Options::default())).await;
    let good = std::fs::read_to_string(t.dir.join("waypoint.yaml")).unwrap();
    // Every role's filter_config holds the plugin JSON as a string; drop one of its colons.
    let key = "\\\"propagate_baggage\\\":";
    assert!(good.matches(key).count() >= 3, "the three roles' configurations");
    let bad = good.replace(key, "\\\"propagate_baggage\\\"");
    let file = t.dir.join("bad-plugin-config.yaml");
    std::fs::write(&file, bad).unwrap();
    let out = std::process::Command::new(&t.binaries.envoy)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", &t.binaries.native_dir)
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "info", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "Envoy refuses the config and exits normally:\n{said}");
    assert!(said.contains("waypoint native module refuses filter"), "{said}");
    assert!(said.contains("bad plugin configuration"), "{said}");
    assert!(!said.contains("panic"), "{said}");
    // The good one passes, so the check can tell them apart.
    let out = std::process::Command::new(&t.binaries.envoy)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", &t.binaries.native_dir)
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c"])
        .arg(t.dir.join("waypoint.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// gRPC through the native engine: status from the trailers, message counts from Envoy's
/// grpc_stats filter state (a unary call: 1 and 1; a server stream of 3: 1 and 3).
#[tokio::test(flavor = "multi_thread")]
async fn native_grpc_reads_the_status_and_every_message_count() {
    let t = start(with_engine(Engine::Native, Options { grpc: true, ..Options::default() })).await;
    let entry = t.plan.grpc_outbound(t.plan.curl());
    let mut client = GrpcClient::connect(entry, "grpc-echo.backend.svc.cluster.local", GRPC_PORT).await.expect("tonic");
    client.unary("native", 0).await.expect("unary");
    let (replies, _) = client.stream("native", 3).await.expect("server stream");
    assert_eq!(replies.len(), 3);
    let text = metrics_when(&t, "two gRPC requests and their messages", |text| {
        prom::total(text, REQUESTS) == 2.0 && prom::total(text, RESPONSE_MESSAGES) == 4.0
    })
    .await;
    assert_eq!(prom::total(&text, REQUEST_MESSAGES), 2.0);
    for s in prom::samples(&text, REQUESTS) {
        assert_labels(&s, &CURL);
        assert_labels(&s, &[("request_protocol", "grpc"), ("response_code", "200"), ("grpc_response_status", "0")]);
    }
}
