//! The story's proxy-wasm side: the stat names the module defines, the host calls and
//! effects of one request, the duration from `request.duration`.

use wasm_tests::Effect;

use crate::harness::*;
use crate::story::{Story, curl_calls_echo, observed_peers_exchange};

#[test]
fn step_1_the_stat_name_the_module_defines_carries_every_label_for_the_stats_tags() {
    let (wp, served) = observed_peers_exchange();

    // The stat name the module defines, which the config's stats_tags cut into these labels.
    let defined: Vec<&str> = wp
        .vm
        .effects()
        .iter()
        .filter_map(|e| match e {
            Effect::MetricDefined { name, .. } if name.starts_with("istio_requests_total;") => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        defined,
        vec![
            "istio_requests_total;reporter=waypoint;source_workload=curl;source_canonical_service=curl;\
source_canonical_revision=v1;source_workload_namespace=ns1;source_principal=spiffe://cluster.local/ns/ns1/sa/curl;\
source_app=curl;source_version=v1;source_cluster=c1;destination_workload=server;destination_workload_namespace=ns2;\
destination_principal=spiffe://cluster.local/ns/ns2/sa/server;destination_app=server;destination_version=v2;\
destination_service=echo.backend.svc.cluster.local;destination_canonical_service=server;\
destination_canonical_revision=v2;destination_service_name=echo;destination_service_namespace=backend;\
destination_cluster=c1;request_protocol=http;response_code=200;grpc_response_status=;response_flags=-;\
connection_security_policy=mutual_tls"
        ]
    );
    // Storing the peer is Envoy's job (a wasm filter cannot share filter state with main_internal)...
    let sets: Vec<_> = wp.vm.effects().iter().filter(|e| matches!(e, Effect::PropertySet { .. })).collect();
    assert!(sets.is_empty(), "the module must not write filter state itself: {sets:?}");
    // ...and main_internal's stats filter gets it with the request headers: no property read
    // for it. The four reads left are the facts known only at stream end: flags, duration and
    // both sizes.
    assert_eq!(served.trace.state.hostcalls.get("proxy_get_property").copied().unwrap_or(0), 4);
    wp.assert_healthy();
}

#[test]
fn step_4_one_request_is_one_increment() {
    let Story { wp, .. } = curl_calls_echo();
    let increments: Vec<_> = wp
        .vm
        .effects()
        .iter()
        .filter(|e| matches!(e, Effect::MetricIncremented { name, .. } if name.starts_with(REQUESTS_TOTAL)))
        .collect();
    assert_eq!(increments.len(), 1, "one increment per request: {increments:?}");
    wp.assert_healthy();
}

#[test]
fn step_5_the_duration_is_request_duration_in_milliseconds() {
    let Story { wp, .. } = curl_calls_echo();
    let series = wp.only_request_series();
    // request.duration is 3.4 ms in nanoseconds.
    assert_eq!(wp.histogram("istio_request_duration_milliseconds", &series), vec![3]);
    wp.assert_healthy();
}
