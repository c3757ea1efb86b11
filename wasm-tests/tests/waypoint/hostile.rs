//! What an attacker tried (issue 9's D1–D5 and the cardinality floods), through the built
//! module in the mocked host: every expectation a literal. Shared with native-tests.

use crate::harness::*;

fn curl() -> Vec<u8> {
    peer_with_baggage(CLIENT_SAN, CLIENT_BAGGAGE_1_29)
}

/// Live `istio_requests_total` series and every metric the module defined.
fn series_and_defines(wp: &Waypoint) -> (usize, usize) {
    (wp.request_series().len(), wp.defines(""))
}

#[test]
fn a_hundred_thousand_forged_peers_stay_bounded_and_legit_traffic_keeps_its_labels() {
    let mut wp = Waypoint::start();
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    // Before the flood: curl is known.
    wp.serve(InnerRequest::get("/").downstream_peer(&curl()).via(tunnel.upconn()));
    let attacker = "spiffe://cluster.local/ns/attack/sa/flood";
    for n in 0..100_000 {
        let forged = format!("k8s.namespace.name=attack,k8s.deployment.name=forged-{n},service.name=forged-{n}");
        wp.serve(
            InnerRequest::get("/").downstream_parts(attacker.as_bytes(), b"", forged.as_bytes()).via(tunnel.upconn()),
        );
    }
    // After the flood: a new legit client (another identity) and curl again.
    let web = "k8s.cluster.name=cluster1,k8s.namespace.name=frontend,k8s.deployment.name=web,service.name=web";
    wp.serve(
        InnerRequest::get("/")
            .downstream_parts(b"spiffe://cluster.local/ns/frontend/sa/web", b"", web.as_bytes())
            .via(tunnel.upconn()),
    );
    wp.serve(InnerRequest::get("/").downstream_peer(&curl()).via(tunnel.upconn()));

    let (series, defines) = series_and_defines(&wp);
    // The identity's share (256 peers) plus its one reduced peer, plus curl and web.
    assert!(series <= 256 + 1 + 2, "{series} istio_requests_total series");
    assert!(defines <= 4 * series + 3, "{defines} metrics defined");
    let all = wp.request_series();
    let curl_series = all.iter().find(|s| s.label("source_workload") == "curl").expect("curl keeps its labels");
    assert_eq!(curl_series.count(), 2);
    let web_series = all.iter().find(|s| s.label("source_workload") == "web").expect("a new client after the flood");
    web_series.assert_labels(&[
        ("source_principal", "spiffe://cluster.local/ns/frontend/sa/web"),
        ("source_workload_namespace", "frontend"),
        ("source_cluster", "cluster1"),
    ]);
    for s in all.iter().filter(|s| s.label("source_principal") == attacker) {
        assert_eq!(s.label("source_workload_namespace"), "attack", "{s:?}");
    }
    let reduced = all
        .iter()
        .find(|s| s.label("source_principal") == attacker && s.label("source_workload") == "unknown")
        .expect("the flood past its share keeps only what the certificate says");
    assert_eq!(reduced.count(), 100_000 - 256);
    assert!(wp.errors("cardinality_limit") >= 99_000);
    wp.assert_healthy();
}

#[test]
fn twenty_thousand_pods_of_one_deployment_are_one_peer_and_new_pods_stay_labelled() {
    let mut wp = Waypoint::start();
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    let san = b"spiffe://cluster.local/ns/frontend/sa/web";
    for n in 0..20_001 {
        // Envoy-form baggage: each pod names its instance.
        let baggage = format!(
            "k8s.deployment.name=web,service.name=web,service.version=v1,k8s.namespace.name=frontend,\
             k8s.cluster.name=cluster1,k8s.instance.name=web-7d4f9b-{n:05},cloud.region=r1"
        );
        wp.serve(InnerRequest::get("/").downstream_parts(san, b"", baggage.as_bytes()).via(tunnel.upconn()));
    }
    let series = wp.only_request_series();
    series.assert_labels(&[("source_workload", "web"), ("source_version", "v1"), ("source_cluster", "cluster1")]);
    assert_eq!(series.count(), 20_001);
    assert_eq!(wp.errors("cardinality_limit"), 0);
}

#[test]
fn past_max_label_sets_only_unverified_labels_collapse() {
    let limited = r#"{"identity": {"workload_name": "waypoint", "namespace": "backend", "cluster": "cluster1"},
        "limits": {"max_label_sets": 4}}"#;
    let mut wp = Waypoint::with_config(limited);
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    // Three teams, each claiming twenty workloads: far more label sets than allowed.
    for n in 0..60 {
        let team = n % 3;
        let san = format!("spiffe://cluster.local/ns/team-{team}/sa/app");
        let baggage = format!("k8s.namespace.name=team-{team},k8s.deployment.name=app-{n},k8s.cluster.name=cluster1");
        wp.serve(InnerRequest::get("/").downstream_parts(san.as_bytes(), b"", baggage.as_bytes()).via(tunnel.upconn()));
    }
    let series = wp.request_series();
    assert!(series.len() <= 8, "at most twice max_label_sets: {}", series.len());
    assert_eq!(series.iter().map(|s| s.count()).sum::<i64>(), 60, "every request counted");
    for team in 0..3 {
        let san = format!("spiffe://cluster.local/ns/team-{team}/sa/app");
        let mine: Vec<_> = series.iter().filter(|s| s.label("source_principal") == san).collect();
        assert_eq!(mine.iter().map(|s| s.count()).sum::<i64>(), 20, "{san} keeps its identity: {mine:#?}");
        for s in mine {
            assert_eq!(s.label("source_workload_namespace"), format!("team-{team}"));
            assert_eq!(s.label("destination_principal"), ECHO_SAN);
        }
    }
    assert!(series.iter().any(|s| s.label("source_workload") == "unknown"), "past the cap workloads collapse");
}

#[test]
fn a_destination_claiming_another_namespace_is_pinned_to_its_certificate_and_counted() {
    let mut wp = Waypoint::start();
    let forged =
        "k8s.cluster.name=cluster2,k8s.namespace.name=kube-system,k8s.deployment.name=echo-v1,service.name=echo";
    let tunnel = wp.established_tunnel(8, forged, ECHO_SAN);
    wp.serve(InnerRequest::get("/").downstream_peer(&curl()).via(tunnel.upconn()));
    wp.only_request_series().assert_labels(&[
        ("destination_workload_namespace", "backend"),
        ("destination_principal", "spiffe://cluster.local/ns/backend/sa/echo"),
        ("destination_workload", "echo-v1"),
    ]);
    assert_eq!(wp.errors("identity_mismatch"), 1);
}

#[test]
fn a_space_in_the_legacy_header_cannot_become_baggage() {
    let mut wp = Waypoint::start();
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    let request = InnerRequest::get("/").downstream_parts(
        b"spiffe://cluster.local/ns/frontend/sa/curl",
        b"AAAA k8s.deployment.name=injected-via-legacy",
        b"",
    );
    wp.serve(request.via(tunnel.upconn()));
    wp.only_request_series()
        .assert_labels(&[("source_workload", "unknown"), ("source_workload_namespace", "frontend")]);
    assert!(wp.errors("legacy_rejected") >= 1, "{:?}", wp.all_errors());
}

#[test]
fn two_uri_sans_mean_the_first() {
    let mut wp = Waypoint::start();
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    let request = InnerRequest::get("/").downstream_parts(
        b"spiffe://cluster.local/ns/frontend/sa/curl,spiffe://cluster.local/ns/other/sa/x",
        b"",
        CLIENT_BAGGAGE_1_29.as_bytes(),
    );
    wp.serve(request.via(tunnel.upconn()));
    wp.only_request_series().assert_labels(&[
        ("source_principal", "spiffe://cluster.local/ns/frontend/sa/curl"),
        ("connection_security_policy", "mutual_tls"),
        ("source_workload", "curl"),
    ]);
}

#[test]
fn without_response_baggage_the_endpoint_metadata_names_a_same_network_destination() {
    let mut wp = Waypoint::start();
    let mut tunnel = wp.open_tunnel(8);
    wp.answer_tunnel(&mut tunnel, "200", None, Some("spiffe://cluster.local/ns/backend/sa/ratings"));
    wp.serve(
        InnerRequest::get("/")
            .downstream_peer(&curl())
            .via(tunnel.upconn())
            .endpoint("ratings-v1;backend;ratings;v1;cluster1"),
    );
    wp.only_request_series().assert_labels(&[
        ("destination_workload", "ratings-v1"),
        ("destination_workload_namespace", "backend"),
        ("destination_principal", "spiffe://cluster.local/ns/backend/sa/ratings"),
        ("destination_app", "unknown"),
        ("destination_version", "unknown"),
        ("destination_canonical_service", "ratings"),
        ("destination_canonical_revision", "v1"),
        ("destination_cluster", "cluster1"),
    ]);
}

#[test]
fn a_request_that_reached_no_destination_is_placed_in_the_destination_cluster() {
    let mut wp = Waypoint::start();
    let request = InnerRequest::get("/").downstream_peer(&curl()).status("503").flags(UF).via(41);
    wp.serve(request.endpoint(";backend;;;cluster2"));
    wp.only_request_series().assert_labels(&[
        ("destination_cluster", "cluster2"),
        ("destination_workload_namespace", "backend"),
        ("destination_principal", "unknown"),
        ("destination_workload", "unknown"),
        ("response_flags", "UF"),
    ]);
}

#[test]
fn grpc_statuses_are_bounded_and_a_missing_one_is_inferred() {
    let mut wp = Waypoint::start();
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    for status in 0..300 {
        wp.serve(
            InnerRequest::grpc("/echo.Echo/Say", &status.to_string()).downstream_peer(&curl()).via(tunnel.upconn()),
        );
    }
    let mut missing = InnerRequest::grpc("/echo.Echo/Say", "0").downstream_peer(&curl()).via(tunnel.upconn());
    missing.trailers = Some(HeaderMap::default());
    wp.serve(missing);
    let statuses: std::collections::BTreeSet<String> =
        wp.request_series().iter().map(|s| s.label("grpc_response_status").to_string()).collect();
    let expected: std::collections::BTreeSet<String> =
        ["-1", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(statuses, expected);
    let invalid = wp.request_series().into_iter().find(|s| s.label("grpc_response_status") == "-1").unwrap();
    assert_eq!(invalid.count(), 283, "17..=299 read as one value");
    let unknown = wp.request_series().into_iter().find(|s| s.label("grpc_response_status") == "2").unwrap();
    assert_eq!(unknown.count(), 2, "status 2, and the response with no status at all");
}

#[test]
fn grpc_messages_are_counted_with_the_request_labels() {
    let mut wp = Waypoint::start();
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    wp.serve(
        InnerRequest::grpc("/echo.Echo/List", "0").grpc_messages(1, 5).downstream_peer(&curl()).via(tunnel.upconn()),
    );
    wp.serve(
        InnerRequest::grpc("/echo.Echo/List", "0").grpc_messages(1, 3).downstream_peer(&curl()).via(tunnel.upconn()),
    );
    let value = |base: &str| {
        let found = wp.counters(base);
        assert_eq!(found.len(), 1, "{base}: {found:?}");
        let (labels, value) = &found[0];
        for wanted in [("source_workload", "curl"), ("request_protocol", "grpc")] {
            assert!(labels.iter().any(|(k, v)| (k.as_str(), v.as_str()) == wanted), "{wanted:?} in {labels:?}");
        }
        *value
    };
    assert_eq!(value("istio_request_messages_total"), 2);
    assert_eq!(value("istio_response_messages_total"), 8);
}

#[test]
fn the_module_exports_istio_build() {
    let mut wp = Waypoint::start();
    // The wasm module announces itself when its VM starts, the native one on its worker's first stream.
    wp.exchange(Some(CLIENT_BAGGAGE_1_29.as_bytes()), Some(ECHO_V2_BAGGAGE.as_bytes()));
    let build = wp.gauges("istio_build");
    assert_eq!(build.len(), 1, "{build:?}");
    let (labels, value) = &build[0];
    assert_eq!(labels.first().map(|(k, v)| (k.as_str(), v.as_str())), Some(("component", "proxy")), "{labels:?}");
    assert_eq!(labels.get(1).map(|(k, _)| k.as_str()), Some("tag"), "{labels:?}");
    assert_eq!(*value, 1);
}
