//! What the native engine does at the edges of the ABI: configurations it refuses, the
//! metrics it defines while it may (Envoy freezes definitions after config creation), and
//! a mocked Envoy as strict as the real one, so a misuse fails the test that caused it.

use native_tests::{Envoy, MetricKind};

use crate::harness::*;

#[test]
fn bad_plugin_configuration_is_refused_at_config_creation_with_an_error_log() {
    for (name, config, needle) in [
        ("stats", r#"{"bagage_discovery": false}"#, "unknown field"),
        ("downstream", r#"{"identity": {"namespace": "back;end"}}"#, "identity.namespace"),
        ("upstream", r#"{"identity": {"workload_type": "daemonset"}}"#, "daemonset"),
        ("stats", r#"{"limits": {"max_label_sets": 0}}"#, "max_label_sets"),
        ("stats", "identity: waypoint", "not valid JSON"),
        ("connect_originate", WAYPOINT_CONFIG, "unknown filter name"),
    ] {
        let envoy = Envoy::start();
        assert!(
            envoy.filter_config(name, config.as_bytes(), "").is_none(),
            "filter {name:?} with {config} must be refused (null from config new)"
        );
        let errors = envoy.error_logs();
        assert!(
            errors.iter().any(|m| m.contains(needle)),
            "filter {name:?} with {config}: the error log must say {needle:?}, got {errors:?}"
        );
        assert!(envoy.misuses().is_empty(), "{:?}", envoy.misuses());
    }
}

#[test]
fn each_filter_config_defines_every_metric_with_its_label_names_while_it_is_created() {
    let wp = Waypoint::start();
    let histogram = |name: &str| (MetricKind::Histogram, name.to_string(), LABEL_NAMES.map(String::from).to_vec());
    let counter = |name: &str| (MetricKind::Counter, name.to_string(), LABEL_NAMES.map(String::from).to_vec());
    let expected = vec![
        counter("istio_requests_total"),
        histogram("istio_request_duration_milliseconds"),
        histogram("istio_request_bytes"),
        histogram("istio_response_bytes"),
        counter("istio_request_messages_total"),
        counter("istio_response_messages_total"),
        (MetricKind::Counter, "waypoint_errors_total".to_string(), vec!["reason".to_string()]),
        (MetricKind::Gauge, "istio_build".to_string(), vec!["component".to_string(), "tag".to_string()]),
    ];
    for (role, config) in [("downstream", &wp.downstream), ("upstream", &wp.upstream), ("stats", &wp.stats)] {
        assert_eq!(wp.envoy.definitions(config), expected, "{role}");
    }
    // No definition after creation (Envoy would answer Frozen), none refused.
    wp.assert_healthy();
}

#[test]
fn the_noop_filter_defines_nothing_and_touches_nothing() {
    let envoy = Envoy::start();
    let noop = envoy.filter_config("noop", b"", "").expect("noop is accepted");
    assert!(envoy.definitions(&noop).is_empty());
    let mut stream = envoy.stream(&noop, vec![]);
    stream.request_headers(ztunnel_connect(Some(CLIENT_BAGGAGE_1_29.as_bytes())), false);
    stream.response_headers(native_tests::HeaderMap::from_pairs([(":status", "200")]), true);
    stream.complete();
    assert!(stream.header_ops(native_tests::MapKind::RequestHeaders).is_empty());
    assert!(stream.header_ops(native_tests::MapKind::ResponseHeaders).is_empty());
    stream.destroy();
    assert!(envoy.all_series().is_empty());
    envoy.assert_healthy();
}

#[test]
fn the_upstream_role_s_metrics_reach_the_root_scope_not_the_cluster_s() {
    // Envoy gives a cluster's upstream filters the cluster's stats scope: the module holds
    // what the upstream role counts and emits it through the next root-scoped stream.
    let mut wp = Waypoint::start();
    let mut tunnel = wp.open_tunnel(8);
    // A hostile identity on the tunnel: the upstream role counts it.
    wp.answer_tunnel(&mut tunnel, "200", Some(ECHO_V2_BAGGAGE.as_bytes()), Some("spiffe://td/ns/a;reporter=x/sa/b"));
    let peer = peer_with_baggage(CLIENT_SAN, CLIENT_BAGGAGE_1_29);
    wp.serve(InnerRequest::get("/").downstream_peer(&peer).via(tunnel.upconn()));
    assert_eq!(wp.errors("value_rejected"), 1, "{:?}", wp.all_errors());
    wp.close_tunnel(tunnel);
    wp.assert_healthy();
}
