//! Real applications through the real waypoint (issue 8, item 1 and item 6): a tonic gRPC
//! client and server, and `/usr/bin/curl` over HTTP/1.1 and HTTP/2 (prior knowledge),
//! across networks (double HBONE through the east-west gateway) and on the same network.
//! Label expectations are literals (PROTOCOL.md §4, /work/notes/LEAD-BEHAVIOUR.md).
//! Every test runs for each engine of the waypoint's filters (`<name>::wasm`, `<name>::native`).
//!
//! ```text
//! tonic client / curl ─h2c or HTTP/1.1─▶ ztunnel-a ─HBONE─▶ waypoint ─double HBONE─▶ gateway ─▶ ztunnel-b ─▶ tonic / echo (echo-v1, echo-v2)
//!                                                           └─HBONE─▶ ztunnel-a ─▶ tonic / echo (ratings-v1)
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::*;
use harness::Options;
use harness::curl::{self, Protocol};
use harness::grpc::{self, GrpcClient, GrpcSeen};
use harness::prom::{self, Sample};
use harness::topology::{
    Engine, GRPC_LOCAL_SERVICE_HOST, GRPC_PORT, GRPC_SERVICE_HOST, LOCAL_SERVICE_HOST, SERVICE_HOST, SERVICE_PORT,
    Topology,
};
use hyper::Version;
use tonic::Code;

/// One way to the gRPC service: where the client connects, the service's name, its pods.
struct Route {
    entry: SocketAddr,
    host: &'static str,
    service_name: &'static str,
    pods: &'static [&'static str],
}

fn cross_network(t: &Topology) -> Route {
    Route {
        entry: t.plan.grpc_outbound(t.plan.curl()),
        host: "grpc-echo.backend.svc.cluster.local",
        service_name: "grpc-echo",
        pods: &["echo-v1", "echo-v2"],
    }
}

fn same_network(t: &Topology) -> Route {
    Route {
        entry: t.plan.grpc_local_outbound(t.plan.curl()),
        host: "grpc-ratings.backend.svc.cluster.local",
        service_name: "grpc-ratings",
        pods: &["ratings-v1"],
    }
}

fn destination_of(workload: &str) -> Vec<(&'static str, String)> {
    match workload {
        "ratings-v1" => RATINGS_DESTINATION.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        echo => echo_destination(echo),
    }
}

/// What the gRPC scenarios must show per `grpc_response_status`: requests, request
/// messages, response messages.
type Expected = BTreeMap<&'static str, (f64, f64, f64)>;

/// The scenarios of issue 8 item 1 on one channel; asserts what the client saw.
async fn grpc_scenarios(route: &Route) -> Expected {
    let mut client =
        GrpcClient::connect(route.entry, route.host, GRPC_PORT).await.expect("tonic channel via ztunnel-a");

    const UNARY: u32 = 3;
    for n in 0..UNARY {
        let reply = client.unary(&format!("hello {n}"), 0).await.expect("unary OK").into_inner();
        assert_eq!(reply.message, format!("hello {n}"));
        assert!(route.pods.contains(&reply.workload.as_str()), "answered by {:?}", reply.workload);
    }

    // UNAVAILABLE after the response headers: in the trailers, with the app's own trailer.
    let status = client.fail_in_trailers("drain").await.expect_err("FailInTrailers fails");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "backend draining", "grpc-message reached the client unchanged");
    assert_eq!(
        status.metadata().get("x-echo-trailer").and_then(|v| v.to_str().ok()),
        Some("kept"),
        "the app's trailer reached the client: {:?}",
        status.metadata()
    );

    // A trailers-only error: grpc-status 5 in the response headers, no body.
    let status = client.unary("missing", 5).await.expect_err("unary asked to fail");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "asked to fail with 5");

    // A code outside gRPC's 0..=16, written by the server as given: the waypoint reads it as
    // Envoy's InvalidCode, -1 (the lead's decision, 21:25; one value, so no label minting).
    let status = client.unary("out of range", 42).await.expect_err("unary asked to fail with 42");
    assert_eq!(status.code(), Code::Unknown, "tonic reads an unknown code as UNKNOWN: {status:?}");
    assert_eq!(status.message(), "asked to fail with 42");

    const STREAMED: u32 = 5;
    let (replies, trailers) = client.stream("tick", STREAMED).await.expect("server streaming");
    let sequence: Vec<u32> = replies.iter().map(|r| r.sequence).collect();
    assert_eq!(sequence, (1..=STREAMED).collect::<Vec<_>>(), "every streamed message, in order");
    if let Some(status) = trailers.get("grpc-status") {
        assert_eq!(status.to_str().ok(), Some("0"), "stream trailers: {trailers:?}");
    }

    const COLLECTED: [&str; 4] = ["a", "b", "c", "d"];
    let reply = client.collect(&COLLECTED).await.expect("client streaming").into_inner();
    assert_eq!((reply.received, reply.message.as_str()), (COLLECTED.len() as u32, "d"), "the server got every message");

    // No grpc-status anywhere, and none added on the way: tonic's client reads it as UNKNOWN.
    let status = client.no_status().await.expect_err("a response without grpc-status is not a success");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("missing grpc-status"), "{status:?}");

    BTreeMap::from([
        // 3 unary + 1 stream + 1 collect; messages 3+1+4 up, 3+5+1 down
        ("0", (5.0, (UNARY + 1 + COLLECTED.len() as u32) as f64, (UNARY + STREAMED + 1) as f64)),
        ("14", (1.0, 1.0, 0.0)),
        ("5", (1.0, 1.0, 0.0)),
        // NoStatus: no grpc-status at all, Envoy infers 2 from HTTP 200 (one reply)
        ("2", (1.0, 1.0, 1.0)),
        ("-1", (1.0, 1.0, 0.0)),
    ])
}

/// What the route's servers received: every call over HTTP/2 as gRPC, with no mesh header.
fn assert_app_side(t: &Topology, route: &Route, calls: usize) -> BTreeMap<String, usize> {
    let mut per_pod = BTreeMap::new();
    let mut all: Vec<GrpcSeen> = Vec::new();
    for pod in route.pods {
        let seen = t.grpc_server(pod).expect("a tonic server per pod").seen();
        per_pod.insert((*pod).to_owned(), seen.len());
        all.extend(seen);
    }
    assert_eq!(all.len(), calls, "every call reached a server once: {all:?}");
    for call in &all {
        assert_eq!(call.version, Version::HTTP_2, "{} reached the app as {:?}", call.path, call.version);
        let header = |name: &str| call.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert!(header("content-type").is_some_and(|c| c.starts_with("application/grpc")), "{call:?}");
        assert_eq!(header("te"), Some("trailers"), "{call:?}");
        for (name, _) in &call.headers {
            assert!(
                !name.starts_with("x-wp-") && name != "x-envoy-peer-metadata" && name != "x-forwarded-network",
                "{name} reached the app"
            );
        }
    }
    let paths: Vec<&str> = all.iter().map(|c| c.path.as_str()).collect();
    for path in [grpc::UNARY, grpc::FAIL_IN_TRAILERS, grpc::STREAM, grpc::COLLECT, grpc::NO_STATUS] {
        assert!(paths.contains(&path), "{path} was called: {paths:?}");
    }
    per_pod
}

/// The waypoint's series for the route: literal labels, counts and message counts.
async fn assert_grpc_metrics(t: &Topology, route: &Route, expected: &Expected, per_pod: &BTreeMap<String, usize>) {
    let requests: f64 = expected.values().map(|(r, _, _)| r).sum();
    let text = metrics_after(t, requests as usize).await;
    let series: Vec<Sample> = prom::samples(&text, REQUESTS);
    let mut by_status: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
    for s in &series {
        assert_labels(s, &CURL);
        assert_labels(s, &destination_of(s.label("destination_workload")));
        assert_labels(
            s,
            &[
                ("reporter", "waypoint"),
                ("destination_service", route.host),
                ("destination_service_name", route.service_name),
                ("destination_service_namespace", "backend"),
                ("request_protocol", "grpc"),
                ("response_code", "200"),
                ("response_flags", "-"),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        assert_eq!(s.labels.len(), 25, "{:?}", s.labels);
        let up = same_series(&text, REQUEST_MESSAGES, s).map_or(0.0, |m| m.value);
        let down = same_series(&text, RESPONSE_MESSAGES, s).map_or(0.0, |m| m.value);
        let entry = by_status.entry(s.label("grpc_response_status").to_owned()).or_default();
        *entry = (entry.0 + s.value, entry.1 + up, entry.2 + down);
        *by_pod.entry(s.label("destination_workload").to_owned()).or_default() += s.value as usize;
    }
    let expected: BTreeMap<String, (f64, f64, f64)> = expected.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    assert_eq!(
        by_status, expected,
        "(requests, request messages, response messages) per grpc_response_status; series: {series:?}"
    );
    let per_pod: BTreeMap<String, usize> =
        per_pod.iter().filter(|(_, n)| **n > 0).map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(by_pod, per_pod, "requests per destination_workload equal what each pod's server received");
    assert!(prom::samples(&text, REQUEST_MESSAGES).iter().all(|m| m.labels.len() == 25));
}

for_both_engines!(grpc_across_networks_through_double_hbone_keeps_trailers_and_reads_every_status_and_message_count);
async fn grpc_across_networks_through_double_hbone_keeps_trailers_and_reads_every_status_and_message_count(
    engine: Engine,
) {
    let t = start(Options { grpc: true, ..Options::with_engine(engine) }).await;
    let route = cross_network(&t);
    assert_eq!(route.host, GRPC_SERVICE_HOST);
    let expected = grpc_scenarios(&route).await;
    let per_pod = assert_app_side(&t, &route, 9);
    assert_grpc_metrics(&t, &route, &expected, &per_pod).await;
}

for_both_engines!(grpc_on_the_waypoints_own_network_keeps_trailers_and_reads_every_status_and_message_count);
async fn grpc_on_the_waypoints_own_network_keeps_trailers_and_reads_every_status_and_message_count(engine: Engine) {
    let t = start(Options { grpc: true, ..Options::with_engine(engine) }).await;
    let route = same_network(&t);
    assert_eq!(route.host, GRPC_LOCAL_SERVICE_HOST);
    let expected = grpc_scenarios(&route).await;
    let per_pod = assert_app_side(&t, &route, 9);
    assert_grpc_metrics(&t, &route, &expected, &per_pod).await;
}

// ------------------------------------------------------------------ curl

/// curl over both protocols to a service: the app sees the protocol curl spoke, and the
/// waypoint counts each request with literal labels.
async fn curl_both_protocols(entry: SocketAddr, host: &str, pods: &[&str]) -> BTreeMap<String, usize> {
    const PER_PROTOCOL: usize = 3;
    let mut answered_by = BTreeMap::new();
    for (protocol, version) in [(Protocol::Http1, "1.1"), (Protocol::Http2PriorKnowledge, "2")] {
        let paths: Vec<String> = (0..PER_PROTOCOL).map(|n| format!("/curl/{version}/{n}")).collect();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let replies = curl::get(entry, host, &paths, protocol, &[("baggage", "user=curl-app")]).await.expect("curl");
        for (reply, path) in replies.iter().zip(&paths) {
            assert_eq!((reply.status, reply.http_version.as_str()), (200, version), "{path}: {reply:?}");
            let json = reply.json();
            let workload = json["workload"].as_str().expect("the echo app names itself").to_owned();
            assert!(pods.contains(&workload.as_str()), "{workload}");
            assert_eq!(json["path"], *path);
            assert_eq!(json["baggage"], "user=curl-app", "the app's own baggage passes unchanged");
            let app_version = if version == "2" { "HTTP/2.0" } else { "HTTP/1.1" };
            assert_eq!(json["version"], app_version, "{path}: the app got the protocol curl spoke");
            *answered_by.entry(workload).or_default() += 1;
        }
    }
    answered_by
}

fn assert_http_series(s: &Sample, host: &str, service_name: &str) {
    assert_labels(s, &CURL);
    assert_labels(s, &destination_of(s.label("destination_workload")));
    assert_labels(
        s,
        &[
            ("reporter", "waypoint"),
            ("destination_service", host),
            ("destination_service_name", service_name),
            ("destination_service_namespace", "backend"),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("grpc_response_status", ""),
            ("response_flags", "-"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
}

for_both_engines!(curl_over_http1_and_http2_prior_knowledge_passes_both_ways_with_the_right_labels);
async fn curl_over_http1_and_http2_prior_knowledge_passes_both_ways_with_the_right_labels(engine: Engine) {
    let t = start(Options::with_engine(engine)).await;
    let echo_host = format!("{SERVICE_HOST}:{SERVICE_PORT}");
    let ratings_host = format!("{LOCAL_SERVICE_HOST}:{SERVICE_PORT}");
    let cross = curl_both_protocols(t.plan.outbound(t.plan.curl()), &echo_host, &["echo-v1", "echo-v2"]).await;
    let local = curl_both_protocols(t.plan.local_outbound(t.plan.curl()), &ratings_host, &["ratings-v1"]).await;

    let text = metrics_after(&t, 12).await;
    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    for s in prom::samples(&text, REQUESTS) {
        match s.label("destination_service") {
            "echo.backend.svc.cluster.local" => assert_http_series(&s, "echo.backend.svc.cluster.local", "echo"),
            "ratings.backend.svc.cluster.local" => {
                assert_http_series(&s, "ratings.backend.svc.cluster.local", "ratings")
            }
            other => panic!("a request counted for {other:?}: {:?}", s.labels),
        }
        *counted.entry(s.label("destination_workload").to_owned()).or_default() += s.value as usize;
    }
    let answered: BTreeMap<String, usize> = cross.into_iter().chain(local).collect();
    assert_eq!(counted, answered, "per destination_workload, the waypoint counted what each pod answered");
    assert!(prom::samples(&text, REQUEST_MESSAGES).is_empty(), "no gRPC message counts for plain HTTP");
}
