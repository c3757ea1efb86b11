//! Where the peers come from: every baggage form, the legacy header, the baggage switch,
//! hostile input, and the gRPC labels.

use crate::harness::*;

/// Labels of the source side when only the TLS identity of `curl` is known.
const SOURCE_FROM_TLS_ONLY: [(&str, &str); 8] = [
    ("source_workload", "unknown"),
    ("source_canonical_service", "unknown"),
    ("source_canonical_revision", "latest"),
    ("source_workload_namespace", "frontend"),
    ("source_principal", CLIENT_SAN),
    ("source_app", "unknown"),
    ("source_version", "unknown"),
    ("source_cluster", "unknown"),
];

/// Labels of the destination side when only the TLS identity of `echo` is known: its
/// namespace is the one the identity proves.
const DESTINATION_FROM_TLS_ONLY: [(&str, &str); 8] = [
    ("destination_workload", "unknown"),
    ("destination_workload_namespace", "backend"),
    ("destination_principal", ECHO_SAN),
    ("destination_app", "unknown"),
    ("destination_version", "unknown"),
    ("destination_canonical_service", "unknown"),
    ("destination_canonical_revision", "unknown"),
    ("destination_cluster", "unknown"),
];

#[test]
fn a_ztunnel_1_27_client_with_all_seven_keys_and_empty_values_is_read() {
    let mut wp = Waypoint::start();
    let old = "k8s.cluster.name=Kubernetes,k8s.namespace.name=frontend,k8s.deployment.name=curl,\
               service.name=curl,service.version=,cloud.region=,cloud.availability_zone=";
    // A 1.27/1.28 destination ztunnel sends no response baggage.
    wp.exchange(Some(old.as_bytes()), None);

    let series = wp.only_request_series();
    series.assert_labels(&[
        ("source_workload", "curl"),
        ("source_canonical_service", "curl"),
        ("source_canonical_revision", "latest"),
        ("source_workload_namespace", "frontend"),
        ("source_principal", CLIENT_SAN),
        ("source_app", "curl"),
        ("source_version", "unknown"),
        ("source_cluster", "Kubernetes"),
        ("connection_security_policy", "mutual_tls"),
    ]);
    series.assert_labels(&DESTINATION_FROM_TLS_ONLY);
    assert!(wp.all_errors().is_empty(), "empty values are not errors: {:?}", wp.all_errors());
    wp.assert_healthy();
}

#[test]
fn an_envoy_based_peer_is_read_with_its_distinct_app_keys_and_instance_name() {
    let mut wp = Waypoint::start();
    let gateway_san = "spiffe://cluster.local/ns/istio-system/sa/ingress-gw";
    let gateway = "k8s.deployment.name=ingress-gw,service.name=ingress,app.name=istio-ingressgateway,\
                   service.version=1.29,app.version=v1,k8s.namespace.name=istio-system,k8s.cluster.name=cluster1,\
                   k8s.instance.name=ingress-gw-7d4f9b-abcde,cloud.region=region-a";
    let ratings = "k8s.deployment.name=ratings-v1,service.name=ratings,service.version=version-1,app.version=v1,\
                   k8s.namespace.name=default,k8s.cluster.name=server-cluster,k8s.instance.name=ratings-v1-84975bc778-pxz2w";
    let mut connect = wp.client_connect(gateway_san, ztunnel_connect(Some(gateway.as_bytes())));
    wp.answer_client(&mut connect, "200");
    let ratings_san = "spiffe://cluster.local/ns/default/sa/ratings";
    let tunnel = wp.established_tunnel(8, ratings, ratings_san);
    wp.serve(InnerRequest::get("/ratings/1").downstream_peer(&connect.filter_state).via(tunnel.upconn()));

    let series = wp.only_request_series();
    series.assert_istio_label_names();
    series.assert_labels(&[
        ("source_workload", "ingress-gw"),
        ("source_canonical_service", "ingress"),
        ("source_canonical_revision", "1.29"),
        ("source_workload_namespace", "istio-system"),
        ("source_principal", gateway_san),
        ("source_app", "istio-ingressgateway"),
        ("source_version", "v1"),
        ("source_cluster", "cluster1"),
        ("destination_workload", "ratings-v1"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", "spiffe://cluster.local/ns/default/sa/ratings"),
        ("destination_app", "ratings"),
        ("destination_version", "v1"),
        ("destination_canonical_service", "ratings"),
        ("destination_canonical_revision", "version-1"),
        ("destination_cluster", "server-cluster"),
    ]);
    assert!(wp.all_errors().is_empty(), "{:?}", wp.all_errors());
    wp.assert_healthy();
}

#[test]
fn a_sidecar_legacy_header_on_the_inner_request_names_the_source_and_is_removed() {
    let mut wp = Waypoint::start();
    let sidecar_san = "spiffe://cluster.local/ns/frontend/sa/productpage";
    let metadata = legacy_peer_metadata(
        &[
            ("NAME", "productpage-v1-6b746f74dc-9stvs"),
            ("NAMESPACE", "frontend"),
            ("WORKLOAD_NAME", "productpage-v1"),
            ("CLUSTER_ID", "cluster1"),
            ("OWNER", "kubernetes://apis/apps/v1/namespaces/frontend/deployments/productpage-v1"),
            ("MESH_ID", "cluster.local"),
            ("ISTIO_VERSION", "1.22.0"),
        ],
        &[
            ("service.istio.io/canonical-name", "productpage"),
            ("service.istio.io/canonical-revision", "v1"),
            ("app", "productpage"),
            ("app.kubernetes.io/name", "bookinfo-productpage"),
            ("version", "v1"),
        ],
    );
    // The sidecar's HBONE CONNECT carried no baggage; its inner request carries the legacy pair.
    let mut connect = wp.client_connect(sidecar_san, ztunnel_connect(None));
    wp.answer_client(&mut connect, "200");
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    let served = wp.serve(
        InnerRequest::get("/productpage")
            .header("x-envoy-peer-metadata", &metadata)
            .header(
                "x-envoy-peer-metadata-id",
                "sidecar~10.0.1.9~productpage-v1-6b746f74dc-9stvs.frontend~frontend.svc.cluster.local",
            )
            .downstream_peer(&connect.filter_state)
            .via(tunnel.upconn()),
    );

    assert_eq!(served.request_as_routed.get("x-envoy-peer-metadata"), None, "consumed");
    assert_eq!(served.request_as_routed.get("x-envoy-peer-metadata-id"), None, "consumed");
    assert!(served.request_as_routed.get(":path").is_some());
    let series = wp.only_request_series();
    series.assert_labels(&[
        ("source_workload", "productpage-v1"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "frontend"),
        ("source_principal", sidecar_san),
        ("source_app", "bookinfo-productpage"),
        ("source_version", "v1"),
        ("source_cluster", "cluster1"),
        ("destination_workload", "echo-v2"),
    ]);
    assert!(wp.all_errors().is_empty(), "{:?}", wp.all_errors());
    wp.assert_healthy();
}

#[test]
fn a_legacy_header_on_the_connect_is_removed_before_routing_and_names_the_source() {
    let mut wp = Waypoint::start();
    let metadata = legacy_peer_metadata(
        &[("WORKLOAD_NAME", "curl"), ("NAMESPACE", "frontend"), ("CLUSTER_ID", "cluster1")],
        &[("service.istio.io/canonical-name", "curl"), ("service.istio.io/canonical-revision", "v3")],
    );
    let mut headers = ztunnel_connect(None);
    headers.add("x-envoy-peer-metadata", &metadata);
    headers.add("x-envoy-peer-metadata-id", "sidecar~10.0.1.5~curl.frontend~frontend.svc.cluster.local");
    let mut connect = wp.client_connect(CLIENT_SAN, headers);
    wp.answer_client(&mut connect, "200");

    assert_eq!(connect.routed.get("x-envoy-peer-metadata"), None);
    assert_eq!(connect.routed.get("x-envoy-peer-metadata-id"), None);
    assert_eq!(
        wp.header_ops(connect.context, MapType::HttpRequestHeaders),
        vec![
            HeaderOp::Remove { key: b"x-envoy-peer-metadata".to_vec() },
            HeaderOp::Remove { key: b"x-envoy-peer-metadata-id".to_vec() }
        ],
        "exactly the pair is removed"
    );
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    wp.serve(InnerRequest::get("/").downstream_peer(&connect.filter_state).via(tunnel.upconn()));
    wp.only_request_series().assert_labels(&[
        ("source_workload", "curl"),
        ("source_canonical_revision", "v3"),
        ("source_cluster", "cluster1"),
    ]);
    wp.assert_healthy();
}

#[test]
fn with_baggage_discovery_off_baggage_is_left_alone_and_only_tls_identities_are_known() {
    let off = r#"{"baggage_discovery": false, "identity": {"workload_name": "waypoint", "workload_type": "deployment",
        "namespace": "backend", "cluster": "cluster1", "canonical_service": "waypoint"}}"#;
    let mut wp = Waypoint::with_config(off);

    let mut connect = wp.client_connect(CLIENT_SAN, ztunnel_connect(Some(CLIENT_BAGGAGE_1_29.as_bytes())));
    assert_eq!(connect.routed.get_str("baggage").as_deref(), Some(CLIENT_BAGGAGE_1_29), "left alone");
    let answer = wp.answer_client(&mut connect, "200");
    assert_eq!(answer.get("baggage"), None, "nothing added on the 200");
    assert!(wp.header_ops(connect.context, MapType::HttpRequestHeaders).is_empty());
    assert!(wp.header_ops(connect.context, MapType::HttpResponseHeaders).is_empty());

    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    assert_eq!(tunnel.sent.get("baggage"), None, "nothing added on our CONNECT");
    wp.serve(InnerRequest::get("/").downstream_peer(&connect.filter_state).via(tunnel.upconn()));

    let series = wp.only_request_series();
    series.assert_labels(&SOURCE_FROM_TLS_ONLY);
    series.assert_labels(&DESTINATION_FROM_TLS_ONLY);
    series.assert_labels(&[
        ("destination_service", "echo.backend.svc.cluster.local"),
        ("destination_service_name", "echo"),
        ("destination_service_namespace", "backend"),
        ("connection_security_policy", "mutual_tls"),
    ]);
    assert!(wp.all_errors().is_empty(), "{:?}", wp.all_errors());
    wp.assert_healthy();
}

#[test]
fn a_connect_without_baggage_leaves_every_source_field_unknown_but_the_tls_identity() {
    let mut wp = Waypoint::start();
    wp.exchange(None, Some(ECHO_V2_BAGGAGE.as_bytes()));
    let series = wp.only_request_series();
    series.assert_labels(&SOURCE_FROM_TLS_ONLY);
    series.assert_labels(&[("destination_workload", "echo-v2")]);
    // An absent header is how every pre-1.29 peer behaves: not a degradation.
    assert!(wp.all_errors().is_empty(), "{:?}", wp.all_errors());
    wp.assert_healthy();
}

/// One hostile `baggage` case: the header, the source labels it must give, the error counted.
struct Hostile {
    what: &'static str,
    baggage: Vec<u8>,
    labels: Vec<(&'static str, &'static str)>,
    reason: &'static str,
}

fn hostile_cases() -> Vec<Hostile> {
    let oversized = format!("{CLIENT_BAGGAGE_1_29},pad={}", "x".repeat(5000));
    let many_members = (0..100).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
    let long_value = format!("k8s.namespace.name=frontend,k8s.deployment.name={}", "a".repeat(300));
    vec![
        Hostile {
            what: "label forging with ';' and '='",
            baggage: b"k8s.cluster.name=cluster1,k8s.namespace.name=frontend,k8s.deployment.name=curl;reporter=evil,\
service.name=curl=x,service.version=v1"
                .to_vec(),
            labels: vec![
                ("source_workload", "unknown"),
                ("source_canonical_service", "unknown"),
                ("source_app", "unknown"),
                ("source_cluster", "cluster1"),
                ("source_canonical_revision", "v1"),
                ("reporter", "waypoint"),
            ],
            reason: "value_rejected",
        },
        Hostile {
            what: "non-UTF-8 values",
            baggage: b"k8s.cluster.name=clu\xffster,k8s.namespace.name=frontend,k8s.deployment.name=\xc3\x28,service.name=curl"
                .to_vec(),
            labels: vec![
                ("source_workload", "unknown"),
                ("source_cluster", "unknown"),
                ("source_canonical_service", "curl"),
            ],
            reason: "value_rejected",
        },
        Hostile {
            what: "spaces, quotes and control bytes",
            baggage: b"k8s.deployment.name=cu rl,service.name=\"curl\",k8s.cluster.name=c\x01,service.version=v1".to_vec(),
            labels: vec![
                ("source_workload", "unknown"),
                ("source_canonical_service", "unknown"),
                ("source_cluster", "unknown"),
                ("source_canonical_revision", "v1"),
            ],
            reason: "value_rejected",
        },
        Hostile {
            what: "a value longer than max_value_bytes",
            baggage: long_value.into_bytes(),
            labels: vec![("source_workload", "unknown"), ("source_workload_namespace", "frontend")],
            reason: "value_rejected",
        },
        Hostile {
            what: "a header longer than max_header_bytes",
            baggage: oversized.into_bytes(),
            labels: SOURCE_FROM_TLS_ONLY.to_vec(),
            reason: "baggage_rejected",
        },
        Hostile {
            what: "more members than max_baggage_members",
            baggage: many_members.into_bytes(),
            labels: SOURCE_FROM_TLS_ONLY.to_vec(),
            reason: "baggage_rejected",
        },
    ]
}

#[test]
fn hostile_client_baggage_reads_unknown_field_by_field_and_is_counted() {
    for case in hostile_cases() {
        let mut wp = Waypoint::start();
        wp.exchange(Some(&case.baggage), Some(ECHO_V2_BAGGAGE.as_bytes()));
        let series = wp.only_request_series();
        series.assert_istio_label_names();
        series.assert_labels(&case.labels);
        series.assert_labels(&[("source_principal", CLIENT_SAN), ("destination_workload", "echo-v2")]);
        assert_eq!(wp.errors(case.reason), 1, "{}: {:?}", case.what, wp.all_errors());
        wp.assert_healthy();
    }
}

#[test]
fn hostile_destination_baggage_reads_unknown_field_by_field_and_is_counted() {
    for case in hostile_cases() {
        let mut wp = Waypoint::start();
        wp.exchange(Some(CLIENT_BAGGAGE_1_29.as_bytes()), Some(&case.baggage));
        let series = wp.only_request_series();
        series.assert_istio_label_names();
        // The same fields, on the destination side.
        let destination: Vec<(String, &str)> = case
            .labels
            .iter()
            .filter(|(name, _)| name.starts_with("source_") && *name != "source_workload_namespace")
            .filter(|(name, _)| *name != "source_principal")
            .map(|(name, value)| {
                let value = if *name == "source_canonical_revision" && *value == "latest" { "unknown" } else { value };
                (name.replacen("source_", "destination_", 1), value)
            })
            .collect();
        let destination: Vec<(&str, &str)> = destination.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        series.assert_labels(&destination);
        series.assert_labels(&[("destination_principal", ECHO_SAN), ("source_workload", "curl")]);
        assert_eq!(wp.errors(case.reason), 1, "{}: {:?}", case.what, wp.all_errors());
        wp.assert_healthy();
    }
}

#[test]
fn a_grpc_call_with_its_status_in_trailers_is_labelled_grpc_with_that_status() {
    let mut wp = Waypoint::start();
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    let peer = String::from_utf8_lossy(&peer_with_baggage(CLIENT_SAN, CLIENT_BAGGAGE_1_29)).into_owned();
    wp.serve(InnerRequest::grpc("/echo.Echo/Say", "7").downstream_peer(peer.as_bytes()).via(tunnel.upconn()));

    let series = wp.only_request_series();
    series.assert_labels(&[
        ("request_protocol", "grpc"),
        ("response_code", "200"),
        ("grpc_response_status", "7"),
        ("source_workload", "curl"),
        ("destination_workload", "echo-v2"),
    ]);
    wp.assert_healthy();
}

#[test]
fn a_trailers_only_grpc_answer_is_labelled_with_the_status_in_its_headers() {
    let mut wp = Waypoint::start();
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    let mut call = InnerRequest::grpc("/echo.Echo/Say", "0").via(tunnel.upconn());
    call.response = HeaderMap::from_pairs([
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "14"),
        ("grpc-message", "unavailable"),
        ("x-wp-upconn", &tunnel.upconn().to_string()),
    ]);
    call.response_body = None;
    call.trailers = None;
    wp.serve(call);
    wp.only_request_series().assert_labels(&[
        ("request_protocol", "grpc"),
        ("grpc_response_status", "14"),
        ("response_code", "200"),
    ]);
    wp.assert_healthy();
}

#[test]
fn the_header_changes_are_exactly_the_ones_documented() {
    // Downstream: one remove per consumed header, one add on the 200; upstream: one add.
    let mut wp = Waypoint::start();
    let mut connect = wp.client_connect(CLIENT_SAN, ztunnel_connect(Some(CLIENT_BAGGAGE_1_29.as_bytes())));
    wp.answer_client(&mut connect, "200");
    let tunnel = wp.open_tunnel(8);
    assert_eq!(
        wp.header_ops(tunnel.context, MapType::HttpRequestHeaders),
        vec![HeaderOp::Add { key: b"baggage".to_vec(), value: WAYPOINT_BAGGAGE.as_bytes().to_vec() }]
    );
    assert_eq!(wp.header_ops(connect.context, MapType::HttpRequestHeaders).len(), 1);
    assert_eq!(wp.header_ops(connect.context, MapType::HttpResponseHeaders).len(), 1);
    wp.assert_healthy();
}

#[test]
fn the_destination_service_comes_from_the_route_cluster_not_from_the_peer() {
    let mut wp = Waypoint::start();
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    let peer = String::from_utf8_lossy(&peer_with_baggage(CLIENT_SAN, CLIENT_BAGGAGE_1_29)).into_owned();
    let routed =
        |cluster: &str| InnerRequest::get("/").downstream_peer(peer.as_bytes()).via(tunnel.upconn()).routed_to(cluster);
    wp.serve(routed("inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local"));
    wp.serve(routed("inbound-vip|1|http|bad;host=x"));

    let mut by_service: Vec<Series> = wp.request_series();
    by_service.sort_by(|a, b| a.label("destination_service").cmp(b.label("destination_service")));
    let [reviews, hostile] = <[Series; 2]>::try_from(by_service).expect("two label sets");
    reviews.assert_labels(&[
        ("destination_service", "reviews.bookinfo.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "bookinfo"),
        ("destination_canonical_service", "echo"),
        ("destination_workload", "echo-v2"),
    ]);
    hostile.assert_istio_label_names();
    hostile.assert_labels(&[
        ("destination_service", "unknown"),
        ("destination_service_name", "unknown"),
        ("destination_service_namespace", "unknown"),
    ]);
    wp.assert_healthy();
}

#[test]
fn a_hostile_tls_identity_reads_unknown_and_is_counted() {
    let mut wp = Waypoint::start();
    let mut tunnel = wp.open_tunnel(8);
    wp.answer_tunnel(&mut tunnel, "200", Some(ECHO_V2_BAGGAGE.as_bytes()), Some("spiffe://td/ns/a;reporter=x/sa/b"));
    let peer = String::from_utf8_lossy(&peer_with_baggage(CLIENT_SAN, CLIENT_BAGGAGE_1_29)).into_owned();
    wp.serve(InnerRequest::get("/").downstream_peer(peer.as_bytes()).via(tunnel.upconn()));
    let series = wp.only_request_series();
    series.assert_istio_label_names();
    series.assert_labels(&[
        ("destination_principal", "unknown"),
        ("destination_workload", "echo-v2"),
        ("connection_security_policy", "mutual_tls"),
    ]);
    assert_eq!(wp.errors("value_rejected"), 1, "{:?}", wp.all_errors());
    wp.assert_healthy();
}
