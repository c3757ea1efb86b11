//! The waypoint between peers this project did not derive from itself (issue 8, items 2,
//! 4 and 6): `hbone-peers`' HBONE destination in the place of ztunnel-b and of ztunnel-a's
//! inbound for ratings-v1, and its HBONE client in the place of ztunnel-a. Every header
//! they send is a literal (PROTOCOL.md §6, a real ztunnel 1.29's), every expected label a
//! literal (PROTOCOL.md §4, /work/notes/LEAD-BEHAVIOUR.md). Every test runs for each engine
//! of the waypoint's filters (`<name>::wasm`, `<name>::native`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use harness::Options;
use harness::curl::{self, Protocol};
use harness::grpc::GrpcClient;
use harness::prom::{self, Sample};
use harness::topology::{Engine, GRPC_PORT, PodHbone, Topology};
use harness::traffic;
use hbone_peers::{End, HboneClient, StreamRecord};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt as _;

/// What a real ztunnel 1.29 sent as a client (PROTOCOL.md §6).
const ZTUNNEL_REQUEST_BAGGAGE: &str =
    "k8s.cluster.name=c1,k8s.namespace.name=ns1,k8s.deployment.name=curl,service.name=curl,service.version=v1";
/// What a real ztunnel 1.29 answered as a destination (PROTOCOL.md §6).
const ZTUNNEL_RESPONSE_BAGGAGE: &str = "k8s.cluster.name=c1,k8s.namespace.name=ns2,k8s.deployment.name=server,service.name=server,service.version=v2,cloud.region=r1,cloud.availability_zone=z1";

/// The waypoint's own peer as it announces it on its upstream CONNECTs and its CONNECT 200
/// (Envoy's baggage order, PROTOCOL.md §2): the mesh file's waypoint workload.
const WAYPOINT_BAGGAGE: &str = "k8s.deployment.name=waypoint,service.name=waypoint,service.version=latest,k8s.namespace.name=backend,k8s.cluster.name=cluster1,cloud.region=region-a,cloud.availability_zone=zone-a1";
const WAYPOINT_PRINCIPAL: &str = "spiffe://cluster.local/ns/backend/sa/waypoint";

/// The waypoint's idle pool timeout is 2 s (envoy-configs/src/waypoint.rs POOL_IDLE_TIMEOUT);
/// past it every tunnel the waypoint opened must have ended.
const PAST_POOL_IDLE: Duration = Duration::from_secs(4);

/// Independent destinations for `pods`, each answering a real ztunnel's literal response baggage.
fn answering_ztunnels_baggage(pods: &[&str]) -> PodHbone {
    PodHbone::independent(&pods.iter().map(|pod| (*pod, ZTUNNEL_RESPONSE_BAGGAGE)).collect::<Vec<_>>())
}

/// `HboneClient` in ztunnel-a's place: the curl pod's certificate, the waypoint's identity checked.
async fn dial_waypoint_as_curl(t: &Topology) -> HboneClient {
    let client = HboneClient::dial(t.plan.waypoint_hbone(), &t.tls_files("frontend", "curl"), Some(WAYPOINT_PRINCIPAL))
        .await
        .expect("mTLS to the waypoint's :15008");
    assert_eq!(client.server_identities(), [WAYPOINT_PRINCIPAL]);
    client
}

fn records_of(t: &Topology, pods: &[&str]) -> Vec<(String, StreamRecord)> {
    pods.iter()
        .flat_map(|pod| {
            let destination = t.destination(pod).unwrap_or_else(|| panic!("an independent destination on {pod}"));
            destination.records().into_iter().map(|r| ((*pod).to_owned(), r))
        })
        .collect()
}

async fn http1_through_tunnel(stream: hbone_peers::TunnelStream, host: &str, path: &str) -> (u16, String) {
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 in the tunnel");
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path).header("host", host).body(Empty::new()).unwrap();
    let response = sender.send_request(request).await.expect("a response through the tunnel");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("the body").to_bytes();
    drop(sender);
    let _ = driver.await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

// ------------------------------------------------------------------ 3. clean tunnel close

for_both_engines!(every_tunnel_the_waypoint_opens_ends_cleanly_once_its_pool_is_idle);
/// A real ztunnel counts a tunnel that ends in RST_STREAM with an error code as a failed
/// connection (`response_flags="CONNECT"`). After the traffic, and past the waypoint's
/// 2 s pool idle timeout, every tunnel it opened to a destination must have ended with
/// END_STREAM both ways.
async fn every_tunnel_the_waypoint_opens_ends_cleanly_once_its_pool_is_idle(engine: Engine) {
    let t = start(Options {
        node_b: answering_ztunnels_baggage(&["echo-v1", "echo-v2"]),
        ratings: answering_ztunnels_baggage(&["ratings-v1"]),
        grpc: true,
        ..Options::with_engine(engine)
    })
    .await;
    let curl_ip = t.plan.curl();
    let mut sent = 0;
    for (entry, host) in [
        (t.plan.outbound(curl_ip), traffic::service_host()),
        (t.plan.local_outbound(curl_ip), traffic::local_service_host()),
    ] {
        for protocol in [Protocol::Http1, Protocol::Http2PriorKnowledge] {
            let replies = curl::get(entry, &host, &["/close/1", "/close/2"], protocol, &[]).await.expect("curl");
            assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
            sent += replies.len();
        }
    }
    for (entry, host) in [
        (t.plan.grpc_outbound(curl_ip), "grpc-echo.backend.svc.cluster.local"),
        (t.plan.grpc_local_outbound(curl_ip), "grpc-ratings.backend.svc.cluster.local"),
    ] {
        let mut client = GrpcClient::connect(entry, host, GRPC_PORT).await.expect("tonic channel");
        client.unary("close", 0).await.expect("unary");
        client.stream("close", 3).await.expect("stream");
        sent += 2;
    }
    metrics_after(&t, sent).await;
    tokio::time::sleep(PAST_POOL_IDLE).await;

    let pods = ["echo-v1", "echo-v2", "ratings-v1"];
    let all_finished = |t: &Topology| records_of(t, &pods).iter().all(|(_, r)| r.finished);
    for _ in 0..100 {
        if all_finished(&t) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = records_of(&t, &pods);
    let tunnels: Vec<&(String, StreamRecord)> = records.iter().filter(|(_, r)| r.status == 200).collect();
    assert!(tunnels.iter().any(|(pod, _)| pod == "ratings-v1"), "a same-network tunnel was used: {records:?}");
    assert!(tunnels.iter().any(|(pod, _)| pod.starts_with("echo")), "a double-HBONE tunnel was used: {records:?}");
    let ends: Vec<String> = tunnels
        .iter()
        .map(|(pod, r)| {
            format!(
                "{pod} {}: from the waypoint {:?}, to it {:?}, {}/{} bytes",
                r.authority, r.from_client, r.to_client, r.bytes_from_client, r.bytes_to_client
            )
        })
        .collect();
    println!("tunnels:\n{}", ends.join("\n"));
    for (pod, r) in &tunnels {
        assert_eq!(r.client_identities, [WAYPOINT_PRINCIPAL], "{pod}: the waypoint opened it");
        assert!(r.bytes_from_client > 0 && r.bytes_to_client > 0, "{pod}: traffic both ways: {r:?}");
        assert!(r.finished, "{pod}: still open {PAST_POOL_IDLE:?} after the last request: {r:?}");
        assert!(
            !matches!(r.from_client, End::Reset(_)) && !matches!(r.to_client, End::Reset(_)),
            "{pod}: the waypoint reset the tunnel with an error code (a real ztunnel counts response_flags=\"CONNECT\"):\n{}",
            ends.join("\n")
        );
        assert!(r.is_clean(), "{pod}: not END_STREAM both ways:\n{}", ends.join("\n"));
    }
}

// ------------------------------------------------------------------ 4. no response baggage

for_both_engines!(
    a_destination_that_sends_no_baggage_is_named_from_endpoint_metadata_here_and_from_its_identity_across
);
async fn a_destination_that_sends_no_baggage_is_named_from_endpoint_metadata_here_and_from_its_identity_across(
    engine: Engine,
) {
    let t = start(Options {
        node_b: PodHbone::independent_without_baggage(),
        ratings: PodHbone::independent_without_baggage(),
        ..Options::with_engine(engine)
    })
    .await;
    const N: usize = 4;
    let cross = traffic::counting_client(t.plan.outbound(t.plan.curl()), N, usize::MAX, vec![]).await;
    assert_eq!(cross.outcome().ok, N, "{cross:?}");
    let local = traffic::counting_client_for(
        t.plan.local_outbound(t.plan.curl()),
        &traffic::local_service_host(),
        N,
        usize::MAX,
        vec![],
    )
    .await;
    assert_eq!(local.outcome().ok, N, "{local:?}");

    let text = metrics_after(&t, 2 * N).await;
    let series = prom::samples(&text, REQUESTS);
    assert_eq!(series.len(), 2, "one series per service (both echo pods read alike without baggage): {series:?}");
    let by_service = |host: &str| -> Sample {
        series
            .iter()
            .find(|s| s.label("destination_service") == host)
            .cloned()
            .unwrap_or_else(|| panic!("{host}: {series:?}"))
    };

    let same_network = by_service("ratings.backend.svc.cluster.local");
    assert_eq!(same_network.value, N as f64);
    // From ratings-v1's endpoint metadata "ratings-v1;backend;ratings;v1;cluster1" and its identity.
    let ratings_without_baggage = [
        ("destination_workload", "ratings-v1"),
        ("destination_workload_namespace", "backend"),
        ("destination_principal", "spiffe://cluster.local/ns/backend/sa/ratings"),
        ("destination_app", "unknown"),
        ("destination_version", "unknown"),
        ("destination_canonical_service", "ratings"),
        ("destination_canonical_revision", "v1"),
        ("destination_cluster", "cluster1"),
    ];
    let ratings_route = route("ratings.backend.svc.cluster.local", "ratings");
    assert_all_labels(&same_network, &[&WAYPOINT_REPORTER, &CURL, &ratings_without_baggage, &ratings_route, &HTTP_200]);

    let other_network = by_service("echo.backend.svc.cluster.local");
    assert_eq!(other_network.value, N as f64);
    // The pod behind the gateway is not known: the identity's namespace, the cluster of all
    // of the service's pods in network-b.
    let echo_without_baggage = [
        ("destination_workload", "unknown"),
        ("destination_workload_namespace", "backend"),
        ("destination_principal", "spiffe://cluster.local/ns/backend/sa/echo"),
        ("destination_app", "unknown"),
        ("destination_version", "unknown"),
        ("destination_canonical_service", "unknown"),
        ("destination_canonical_revision", "unknown"),
        ("destination_cluster", "cluster2"),
    ];
    let echo_route = route("echo.backend.svc.cluster.local", "echo");
    assert_all_labels(&other_network, &[&WAYPOINT_REPORTER, &CURL, &echo_without_baggage, &echo_route, &HTTP_200]);
    // Every stream reached an independent destination (configured to send no baggage) and
    // was answered 200; the apps got every request.
    for (pod, r) in records_of(&t, &["echo-v1", "echo-v2", "ratings-v1"]) {
        assert_eq!(r.status, 200, "{pod}: {r:?}");
    }
    assert_eq!(t.served().iter().map(|(_, n)| n).sum::<usize>(), N);
    assert_eq!(t.ratings.seen().len(), N);
}

// ------------------------------------------------------------------ 5. outage

async fn assert_outage_labels(t: &Topology, warm: usize, down: usize) {
    let text = metrics_after(t, warm + down).await;
    let failed: Vec<Sample> =
        prom::samples(&text, REQUESTS).into_iter().filter(|s| s.label("response_code") != "200").collect();
    assert_eq!(failed.iter().map(|s| s.value).sum::<f64>(), down as f64, "{failed:?}");
    for s in &failed {
        assert_labels(s, &CURL);
        assert_labels(
            s,
            &[
                ("reporter", "waypoint"),
                ("destination_workload", "unknown"),
                ("destination_workload_namespace", "backend"),
                ("destination_principal", "unknown"),
                ("destination_app", "unknown"),
                ("destination_version", "unknown"),
                ("destination_service", "echo.backend.svc.cluster.local"),
                ("destination_canonical_service", "unknown"),
                ("destination_canonical_revision", "unknown"),
                ("destination_service_name", "echo"),
                ("destination_service_namespace", "backend"),
                ("destination_cluster", "cluster2"),
                ("request_protocol", "http"),
                ("response_code", "503"),
                ("grpc_response_status", ""),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        let flags = s.label("response_flags");
        assert!(!flags.is_empty() && flags != "-", "a failed request names why: {:?}", s.labels);
    }
}

for_both_engines!(with_ztunnel_b_down_the_503s_name_the_destination_cluster_and_the_services_namespace);
async fn with_ztunnel_b_down_the_503s_name_the_destination_cluster_and_the_services_namespace(engine: Engine) {
    let mut t = start(Options::with_engine(engine)).await;
    let warm = traffic::counting_client(t.plan.outbound(t.plan.curl()), 3, usize::MAX, vec![]).await;
    assert_eq!(warm.outcome().ok, 3, "{warm:?}");
    t.stop_ztunnel_b();
    wait_for_counter(&t, "cluster.inbound-vip|8080|http|echo.backend.svc.cluster.local.upstream_cx_active", 0).await;
    const DOWN: usize = 6;
    let down = traffic::counting_client(t.plan.outbound(t.plan.curl()), DOWN, 2, vec![]).await;
    assert_eq!(down.by_status, BTreeMap::from([(503, DOWN)]), "{down:?}");
    assert_outage_labels(&t, 3, DOWN).await;
}

for_both_engines!(with_the_independent_destinations_gone_the_503s_name_the_destination_cluster_too);
async fn with_the_independent_destinations_gone_the_503s_name_the_destination_cluster_too(engine: Engine) {
    let mut t =
        start(Options { node_b: answering_ztunnels_baggage(&["echo-v1", "echo-v2"]), ..Options::with_engine(engine) })
            .await;
    let warm = traffic::counting_client(t.plan.outbound(t.plan.curl()), 2, usize::MAX, vec![]).await;
    assert_eq!(warm.outcome().ok, 2, "{warm:?}");
    t.stop_destinations();
    wait_for_counter(&t, "cluster.inbound-vip|8080|http|echo.backend.svc.cluster.local.upstream_cx_active", 0).await;
    const DOWN: usize = 4;
    let down = traffic::counting_client(t.plan.outbound(t.plan.curl()), DOWN, 2, vec![]).await;
    assert_eq!(down.by_status, BTreeMap::from([(503, DOWN)]), "{down:?}");
    assert_outage_labels(&t, 2, DOWN).await;
}

// ------------------------------------------------------------------ 6. independent client

for_both_engines!(a_real_ztunnels_literal_headers_on_both_sides_give_all_25_labels);
/// ztunnel-a replaced by `HboneClient` with the curl identity and a real ztunnel's literal
/// request baggage; the destinations replaced by `HboneDestination`s answering a real
/// ztunnel's literal response baggage. All 25 labels are checked as literals.
async fn a_real_ztunnels_literal_headers_on_both_sides_give_all_25_labels(engine: Engine) {
    let t = start(Options {
        node_b: answering_ztunnels_baggage(&["echo-v1", "echo-v2"]),
        ratings: answering_ztunnels_baggage(&["ratings-v1"]),
        ..Options::with_engine(engine)
    })
    .await;
    let client = dial_waypoint_as_curl(&t).await;

    // (VIP authority, Host, destination principal, pods)
    let services = [
        ("10.96.0.10:8080", "echo.backend.svc.cluster.local", "spiffe://cluster.local/ns/backend/sa/echo", "echo"),
        (
            "10.96.0.11:8080",
            "ratings.backend.svc.cluster.local",
            "spiffe://cluster.local/ns/backend/sa/ratings",
            "ratings",
        ),
    ];
    for (vip, host, _, _) in services {
        let forwarded = format!("for=\"{}:41000\";host={host}", t.plan.curl());
        let tunnel = client
            .connect(
                vip,
                &[
                    ("baggage", ZTUNNEL_REQUEST_BAGGAGE),
                    ("forwarded", forwarded.as_str()),
                    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
                ],
            )
            .await
            .expect("CONNECT to the waypoint");
        assert_eq!(tunnel.status, 200, "{host}: {:?}", tunnel.headers);
        assert_eq!(tunnel.header("baggage").as_deref(), Some(WAYPOINT_BAGGAGE), "the waypoint announces itself");
        let (status, body) = http1_through_tunnel(tunnel.stream, &format!("{host}:8080"), "/literal").await;
        assert_eq!(status, 200, "{host}: {body}");
    }

    let text = metrics_after(&t, 2).await;
    let series = prom::samples(&text, REQUESTS);
    assert_eq!(series.len(), 2, "{series:?}");
    for (_, host, principal, name) in services {
        let s = series.iter().find(|s| s.label("destination_service") == host).unwrap_or_else(|| panic!("{host}"));
        assert_eq!(s.value, 1.0);
        assert_all_labels(
            s,
            &[&[
                ("reporter", "waypoint"),
                ("source_workload", "curl"),
                ("source_canonical_service", "curl"),
                ("source_canonical_revision", "v1"),
                // the verified identity (ns frontend) wins over the baggage's ns1
                ("source_workload_namespace", "frontend"),
                ("source_principal", "spiffe://cluster.local/ns/frontend/sa/curl"),
                ("source_app", "curl"),
                ("source_version", "v1"),
                ("source_cluster", "c1"),
                ("destination_workload", "server"),
                // the verified identity (ns backend) wins over the response baggage's ns2
                ("destination_workload_namespace", "backend"),
                ("destination_principal", principal),
                ("destination_app", "server"),
                ("destination_version", "v2"),
                ("destination_service", host),
                ("destination_canonical_service", "server"),
                ("destination_canonical_revision", "v2"),
                ("destination_service_name", name),
                ("destination_service_namespace", "backend"),
                ("destination_cluster", "c1"),
                ("request_protocol", "http"),
                ("response_code", "200"),
                ("grpc_response_status", ""),
                ("response_flags", "-"),
                ("connection_security_policy", "mutual_tls"),
            ]],
        );
    }

    // Both baggages claim a namespace their verified identity contradicts (ns1, ns2): counted.
    let mismatches: f64 = prom::samples(&text, "waypoint_errors_total")
        .iter()
        .filter(|s| s.label("reason") == "identity_mismatch")
        .map(|s| s.value)
        .sum();
    assert!(mismatches > 0.0, "waypoint_errors_total{{reason=\"identity_mismatch\"}}: {mismatches}");

    // What the destinations saw of the waypoint: its identity and its own baggage, never the
    // client's; across networks the inner CONNECT names the service and the sender's network.
    let echo: Vec<StreamRecord> =
        records_of(&t, &["echo-v1", "echo-v2"]).into_iter().map(|(_, r)| r).filter(|r| r.status == 200).collect();
    let ratings: Vec<StreamRecord> =
        records_of(&t, &["ratings-v1"]).into_iter().map(|(_, r)| r).filter(|r| r.status == 200).collect();
    assert_eq!((echo.len(), ratings.len()), (1, 1), "one tunnel each: {echo:?} {ratings:?}");
    for r in echo.iter().chain(&ratings) {
        assert_eq!(r.client_identities, [WAYPOINT_PRINCIPAL]);
        assert_eq!(r.header("baggage").as_deref(), Some(WAYPOINT_BAGGAGE), "{r:?}");
    }
    assert_eq!(echo[0].authority, "echo.backend.svc.cluster.local:8080");
    assert_eq!(echo[0].header("x-forwarded-network").as_deref(), Some("network-a"));
    assert_eq!(ratings[0].authority, format!("{}:8080", t.plan.ratings()));
    for seen in t.echo.iter().flat_map(|e| e.seen()).chain(t.ratings.seen()) {
        assert_eq!(seen.baggage, None, "no peer baggage reached the app: {:?}", seen.headers);
        assert!(!seen.peer_metadata_leaked, "{:?}", seen.headers);
    }
}

for_both_engines!(the_waypoint_ends_a_client_tunnel_cleanly_whichever_side_finishes_first);
/// The client side of a clean close, both orders: (a) the client ends first (its app is
/// done after a keep-alive exchange: END_STREAM), (b) the inner HTTP/1.1 connection ends
/// first (`connection: close`). Either way the waypoint must end the client's tunnel with
/// END_STREAM, not a reset a ztunnel would count as a failed connection.
async fn the_waypoint_ends_a_client_tunnel_cleanly_whichever_side_finishes_first(engine: Engine) {
    let t =
        start(Options { ratings: answering_ztunnels_baggage(&["ratings-v1"]), ..Options::with_engine(engine) }).await;
    let client = dial_waypoint_as_curl(&t).await;
    let mut ends = Vec::new();
    for (case, connection, client_first) in
        [("client ends first", "keep-alive", true), ("app ends first", "close", false)]
    {
        let mut tunnel =
            client.connect("10.96.0.11:8080", &[("baggage", ZTUNNEL_REQUEST_BAGGAGE)]).await.expect("CONNECT");
        assert_eq!(tunnel.status, 200);
        let request = format!(
            "GET /bye HTTP/1.1\r\nhost: ratings.backend.svc.cluster.local:8080\r\nconnection: {connection}\r\n\r\n"
        );
        tokio::io::AsyncWriteExt::write_all(&mut tunnel.stream, request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        if client_first {
            // Read the whole response (content-length), then end our side.
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&response).contains("\"workload\"") {
                let n = tunnel.stream.read(&mut buf).await.expect("the response");
                assert!(n > 0, "{case}: the tunnel ended before the response: {:?}", tunnel.stream.peer_end());
                response.extend_from_slice(&buf[..n]);
            }
            tokio::io::AsyncWriteExt::shutdown(&mut tunnel.stream).await.expect("our END_STREAM");
        }
        let read = tokio::time::timeout(Duration::from_secs(10), tunnel.stream.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200"), "{case}: {read:?}: {text}");
        ends.push(format!("{case}: read {read:?}, the waypoint's end {:?}", tunnel.stream.peer_end()));
        if !client_first {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tunnel.stream).await;
        }
    }
    for end in &ends {
        assert!(
            end.ends_with("end EndStream"),
            "the waypoint did not end the client tunnel with END_STREAM:\n{}",
            ends.join("\n")
        );
    }
}
