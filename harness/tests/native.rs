//! The native engine (issue 11): the same waypoint-core roles as an Envoy dynamic module
//! (dist/libwaypoint_native.so) in the real two-network mesh. It must print what the wasm
//! engine prints, byte for byte: the same metric names, the same 25 labels in the same
//! order, the same values. Every expected line is a literal (PROTOCOL.md §4 and §6).
//!
//! Every end-to-end scenario (e2e.rs, hostile.rs, independent_peers.rs, real_apps.rs,
//! graph.rs) runs for both engines; what stays here is the comparison of both engines'
//! lines and what only the native engine has (its refusal of a bad configuration).
//!
//! The upstream peer travels as with wasm: the upstream filter files the destination's
//! CONNECT 200 under its tunnel's connection id, the stats filter finds it by the route's
//! `%UPSTREAM_CONNECTION_ID%` (connection-id adjacency, envoy-configs/README.md). The
//! dynamic-module ABI of Envoy 1.40 offers no object shared from a tunnel back to the
//! request it carries, so the precision test below is what holds it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use bytes::Bytes;
use common::*;
use harness::Options;
use harness::prom;
use harness::topology::{Engine, PodHbone, Topology};
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
    let t = start(Options {
        node_b: destinations(&["echo-v1", "echo-v2"]),
        ratings: destinations(&["ratings-v1"]),
        ..Options::with_engine(engine)
    })
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

/// A plugin configuration the module cannot read: Envoy refuses the config with the
/// module's one clear line, and exits as Envoy does on a bad config (status 1), not
/// from a signal. Native only: it reads the native module's own refusal line (the wasm
/// module refuses a bad configuration inside its VM; wasm-tests covers that).
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_plugin_configuration_is_refused_without_a_crash() {
    let t: Topology = start(Options::with_engine(Engine::Native)).await;
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
