//! Label sets, not requests, make series: each is defined once, and past `max_label_sets`
//! no new ones appear. Shared with native-tests (there "defined" is a series Envoy holds).

use crate::harness::*;

#[test]
fn thousands_of_requests_from_the_same_peers_define_each_metric_once() {
    let mut wp = Waypoint::start();
    let v1 = "k8s.namespace.name=backend,k8s.deployment.name=echo-v1,service.name=echo,service.version=v1";
    let tunnels = [wp.established_tunnel(10, v1, ECHO_SAN), wp.established_tunnel(20, ECHO_V2_BAGGAGE, ECHO_SAN)];
    let clients = [
        String::from_utf8_lossy(&peer_with_baggage(CLIENT_SAN, CLIENT_BAGGAGE_1_29)).into_owned(),
        "spiffe://cluster.local/ns/frontend/sa/web  k8s.namespace.name=frontend,k8s.deployment.name=web".to_string(),
    ];
    const REQUESTS: usize = 3000;
    for i in 0..REQUESTS {
        let client = &clients[i % 2];
        let tunnel = &tunnels[(i / 2) % 2];
        wp.serve(InnerRequest::get("/").downstream_peer(client.as_bytes()).via(tunnel.upconn()));
    }

    let series = wp.request_series();
    assert_eq!(series.len(), 4, "2 sources x 2 destinations");
    assert!(series.iter().all(|s| s.count() == (REQUESTS / 4) as i64), "{series:#?}");
    assert_eq!(wp.defines(REQUESTS_TOTAL), 4, "one define per label set, not per request");
    for base in HISTOGRAMS {
        assert_eq!(wp.defines(base), 4, "{base}");
        assert_eq!(series.iter().map(|s| wp.histogram(base, s).len()).sum::<usize>(), REQUESTS);
    }
    assert_eq!(wp.defines(""), 17, "nothing else defined but istio_build");
    wp.assert_healthy();
}

#[test]
fn distinct_hostile_peers_beyond_max_label_sets_stop_new_series_and_count_cardinality_limit() {
    let limited = r#"{"identity": {"workload_name": "waypoint", "workload_type": "deployment", "namespace": "backend",
        "cluster": "cluster1", "canonical_service": "waypoint"}, "limits": {"max_label_sets": 5}}"#;
    let mut wp = Waypoint::with_config(limited);
    let tunnel = wp.established_tunnel(10, ECHO_V2_BAGGAGE, ECHO_SAN);
    let hostile = |n: usize| format!("{CLIENT_SAN}  k8s.namespace.name=frontend,k8s.deployment.name=bot-{n}");

    for n in 0..200 {
        wp.serve(InnerRequest::get("/").downstream_peer(hostile(n).as_bytes()).via(tunnel.upconn()));
    }
    let defined = wp.defines(REQUESTS_TOTAL);
    assert!(defined <= 5, "at most max_label_sets label sets, got {defined}");
    assert!(defined >= 1);
    for base in HISTOGRAMS {
        assert_eq!(wp.defines(base), defined, "{base}");
    }
    assert!(wp.errors("cardinality_limit") >= 195, "{:?}", wp.all_errors());
    assert_eq!(wp.defines("waypoint_errors_total"), 1, "the error series is defined once too");

    // Series that exist keep counting.
    let first = wp.request_series()[0].label("source_workload").to_string();
    let n: usize = first.trim_start_matches("bot-").parse().expect("a bot-N workload");
    wp.serve(InnerRequest::get("/").downstream_peer(hostile(n).as_bytes()).via(tunnel.upconn()));
    let again = wp.request_series().into_iter().find(|s| s.label("source_workload") == first).expect("still there");
    assert_eq!(again.count(), 2);
    assert_eq!(wp.defines(REQUESTS_TOTAL), defined);
    wp.assert_healthy();
}
