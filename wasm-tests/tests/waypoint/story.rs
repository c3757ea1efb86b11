//! The seed's five steps: `curl` (frontend) calls the `echo` service (backend) through the
//! waypoint; ztunnel 1.29 on both sides speaks baggage. Shared with native-tests: what
//! only one engine shows (proxy-wasm effects and host calls, Envoy's duration) is in
//! `story_wasm.rs` here and `story_native.rs` there.

use crate::harness::*;

/// connect_originate connection of the tunnel to echo-v2 in these scenarios.
pub const TUNNEL: u64 = 8;

/// The whole request: CONNECT in, tunnel out, one inner request over that tunnel.
pub struct Story {
    pub wp: Waypoint,
    pub connect: ClientConnect,
    pub tunnel: Tunnel,
    pub served: Served,
}

pub fn curl_calls_echo() -> Story {
    let mut wp = Waypoint::start();
    let mut connect = wp.client_connect(CLIENT_SAN, ztunnel_connect(Some(CLIENT_BAGGAGE_1_29.as_bytes())));
    wp.answer_client(&mut connect, "200");
    let tunnel = wp.established_tunnel(TUNNEL, ECHO_V2_BAGGAGE, ECHO_SAN);
    let request = InnerRequest::get("/echo")
        .header("baggage", "userId=alice,app=1")
        .downstream_peer(&connect.filter_state)
        .via(tunnel.upconn());
    let served = wp.serve(request);
    Story { wp, connect, tunnel, served }
}

/// What a real ztunnel 1.29 client sent on its CONNECT and a real destination ztunnel
/// answered on the 200 (PROTOCOL.md §6), byte for byte.
const OBSERVED_CLIENT_BAGGAGE: &str =
    "k8s.cluster.name=c1,k8s.namespace.name=ns1,k8s.deployment.name=curl,service.name=curl,service.version=v1";
const OBSERVED_SERVER_BAGGAGE: &str = "k8s.cluster.name=c1,k8s.namespace.name=ns2,k8s.deployment.name=server,\
service.name=server,service.version=v2,cloud.region=r1,cloud.availability_zone=z1";

/// Step 1's request, between the peers observed on the wire.
pub fn observed_peers_exchange() -> (Waypoint, Served) {
    let mut wp = Waypoint::start();
    let mut connect = wp.client_connect(
        "spiffe://cluster.local/ns/ns1/sa/curl",
        ztunnel_connect(Some(OBSERVED_CLIENT_BAGGAGE.as_bytes())),
    );
    wp.answer_client(&mut connect, "200");
    let tunnel = wp.established_tunnel(TUNNEL, OBSERVED_SERVER_BAGGAGE, "spiffe://cluster.local/ns/ns2/sa/server");
    let served = wp.serve(InnerRequest::get("/").downstream_peer(&connect.filter_state).via(tunnel.upconn()));
    (wp, served)
}

#[test]
fn step_1_the_connect_baggage_of_a_ztunnel_1_29_client_names_the_source_of_the_metric() {
    let (wp, _) = observed_peers_exchange();

    // The series: every label, in Istio's order, with its value.
    let series = wp.only_request_series();
    assert_eq!(
        series.labels(),
        vec![
            ("reporter", "waypoint"),
            ("source_workload", "curl"),
            ("source_canonical_service", "curl"),
            ("source_canonical_revision", "v1"),
            ("source_workload_namespace", "ns1"),
            ("source_principal", "spiffe://cluster.local/ns/ns1/sa/curl"),
            ("source_app", "curl"),
            ("source_version", "v1"),
            ("source_cluster", "c1"),
            ("destination_workload", "server"),
            ("destination_workload_namespace", "ns2"),
            ("destination_principal", "spiffe://cluster.local/ns/ns2/sa/server"),
            ("destination_app", "server"),
            ("destination_version", "v2"),
            ("destination_service", "echo.backend.svc.cluster.local"),
            ("destination_canonical_service", "server"),
            ("destination_canonical_revision", "v2"),
            ("destination_service_name", "echo"),
            ("destination_service_namespace", "backend"),
            ("destination_cluster", "c1"),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("grpc_response_status", ""),
            ("response_flags", "-"),
            ("connection_security_policy", "mutual_tls"),
        ]
    );
    assert_eq!(series.count(), 1);
    wp.assert_healthy();
}

#[test]
fn step_2_the_connect_baggage_is_removed_before_routing_and_an_application_baggage_is_untouched() {
    let Story { wp, connect, served, .. } = curl_calls_echo();

    assert!(connect.continued(), "the CONNECT is never held");
    assert_eq!(connect.routed.get("baggage"), None, "the client's baggage must not be routed on");
    for kept in [":method", ":authority", "forwarded", "traceparent"] {
        assert!(connect.routed.get(kept).is_some(), "{kept} must be routed on");
    }
    assert_eq!(
        wp.header_ops(connect.context, MapType::HttpRequestHeaders),
        vec![HeaderOp::Remove { key: b"baggage".to_vec() }],
        "the CONNECT request gets exactly one change"
    );

    // The inner request's `baggage` is the application's W3C baggage: never read, never changed.
    assert_eq!(served.request_as_routed.get_all("baggage"), vec![&b"userId=alice,app=1"[..]]);
    assert!(served.request_ops.is_empty(), "the stats filter must not touch the inner request here");
    assert!(served.all_continued(), "{served:?}");
    wp.assert_healthy();
}

#[test]
fn step_3_our_baggage_goes_on_the_upstream_connect_and_the_destination_baggage_is_bound_to_that_tunnel() {
    let Story { mut wp, connect, tunnel, .. } = curl_calls_echo();

    assert_eq!(tunnel.sent.get_str("baggage").as_deref(), Some(WAYPOINT_BAGGAGE));
    assert_eq!(tunnel.sent.get_all("baggage").len(), 1, "added once");
    assert_eq!(
        tunnel.sent.get_str(":authority").as_deref(),
        Some("10.0.2.7:8080"),
        "the CONNECT is otherwise untouched"
    );

    // A younger tunnel to another pod must not change what the first one is bound to.
    let younger = wp.established_tunnel(TUNNEL + 4, ECHO_V1_BAGGAGE, ECHO_SAN);
    wp.serve(InnerRequest::get("/again").downstream_peer(&connect.filter_state).via(tunnel.upconn()));
    wp.serve(InnerRequest::get("/other").downstream_peer(&connect.filter_state).via(younger.upconn()));
    let mut destinations: Vec<(String, i64)> =
        wp.request_series().iter().map(|s| (s.label("destination_workload").to_string(), s.count())).collect();
    destinations.sort();
    assert_eq!(
        destinations,
        vec![("echo-v1".into(), 1), ("echo-v2".into(), 2)],
        "each response is labelled with the peer of the tunnel that carried it"
    );
    wp.close_tunnel(tunnel);
    wp.close_tunnel(younger);
    wp.assert_healthy();
}

#[test]
fn step_4_the_request_is_counted_exactly_once_with_all_25_labels() {
    let Story { mut wp, connect, tunnel, .. } = curl_calls_echo();

    let series = wp.only_request_series();
    assert_eq!(series.count(), 1);
    series.assert_istio_label_names();
    series.assert_labels(&[
        ("reporter", "waypoint"),
        ("source_workload", "curl"),
        ("source_canonical_service", "curl"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "frontend"),
        ("source_principal", "spiffe://cluster.local/ns/frontend/sa/curl"),
        ("source_app", "curl"),
        ("source_version", "v1"),
        ("source_cluster", "cluster1"),
        ("destination_workload", "echo-v2"),
        ("destination_workload_namespace", "backend"),
        ("destination_principal", "spiffe://cluster.local/ns/backend/sa/echo"),
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
    ]);

    // The streams end in Envoy's order; nothing more is counted.
    wp.close_tunnel(tunnel);
    wp.close_client(connect);
    assert_eq!(wp.only_request_series().count(), 1);
    assert!(wp.all_errors().is_empty(), "no degradation on the happy path: {:?}", wp.all_errors());
    wp.assert_healthy();
}

#[test]
fn step_5_the_three_histograms_record_the_duration_and_both_sizes_once() {
    let Story { wp, .. } = curl_calls_echo();

    let series = wp.only_request_series();
    // The duration's value is each engine's own (story_wasm.rs, story_native.rs); the sizes
    // are request.total_size / response.total_size.
    assert_eq!(wp.histogram("istio_request_duration_milliseconds", &series).len(), 1);
    assert_eq!(wp.histogram("istio_request_bytes", &series), vec![120]);
    assert_eq!(wp.histogram("istio_response_bytes", &series), vec![340]);
    for base in HISTOGRAMS {
        assert_eq!(wp.defines(base), 1, "{base} defined once");
    }
    assert_eq!(wp.defines(REQUESTS_TOTAL), 1);
    wp.assert_healthy();
}

#[test]
fn the_client_gets_our_baggage_on_the_connect_200_and_never_on_an_error() {
    let mut wp = Waypoint::start();
    let mut ok = wp.client_connect(CLIENT_SAN, ztunnel_connect(Some(CLIENT_BAGGAGE_1_29.as_bytes())));
    let answer = wp.answer_client(&mut ok, "200");
    assert_eq!(answer.get_all("baggage"), vec![WAYPOINT_BAGGAGE.as_bytes()]);
    assert_eq!(
        wp.header_ops(ok.context, MapType::HttpResponseHeaders),
        vec![HeaderOp::Add { key: b"baggage".to_vec(), value: WAYPOINT_BAGGAGE.as_bytes().to_vec() }]
    );

    for status in ["400", "401", "503"] {
        let mut refused = wp.client_connect(CLIENT_SAN, ztunnel_connect(Some(CLIENT_BAGGAGE_1_29.as_bytes())));
        let answer = wp.answer_client(&mut refused, status);
        assert_eq!(answer.get("baggage"), None, "a {status} carries no baggage");
        assert!(wp.header_ops(refused.context, MapType::HttpResponseHeaders).is_empty());
        wp.close_client(refused);
    }
    wp.close_client(ok);
    wp.assert_healthy();
}
