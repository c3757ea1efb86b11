//! What the issue-8 test files share: Istio's label names and the literal label sets of
//! the mesh's workloads (written out here, never taken from the product), and waiting
//! for the waypoint's metrics.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use harness::Options;
use harness::prom::{self, Sample};
use harness::topology::Topology;

/// One end-to-end scenario for both engines of the waypoint's filters: after
/// `for_both_engines!(name);` an `async fn name(engine: Engine)` runs as the two tests
/// `name::wasm` and `name::native`, so a failure names the engine it failed on.
#[allow(unused_macros, reason = "native.rs, which compares the engines, has no scenario for both")]
macro_rules! for_both_engines {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn wasm() {
                super::$scenario(harness::topology::Engine::Wasm).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn native() {
                super::$scenario(harness::topology::Engine::Native).await
            }
        }
    };
}
#[allow(unused_imports, reason = "native.rs, which compares the engines, has no scenario for both")]
pub(crate) use for_both_engines;

/// Istio's waypoint labels, in Istio's order (PROTOCOL.md §4).
pub const ISTIO_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

pub const REQUESTS: &str = "istio_requests_total";
pub const REQUEST_MESSAGES: &str = "istio_request_messages_total";
pub const RESPONSE_MESSAGES: &str = "istio_response_messages_total";

/// curl's source labels: ztunnel-a's CONNECT baggage for the curl pod and its TLS identity.
pub const CURL: [(&str, &str); 8] = [
    ("source_workload", "curl"),
    ("source_canonical_service", "curl"),
    ("source_canonical_revision", "v1"),
    ("source_workload_namespace", "frontend"),
    ("source_principal", "spiffe://cluster.local/ns/frontend/sa/curl"),
    ("source_app", "curl"),
    ("source_version", "v1"),
    ("source_cluster", "cluster1"),
];

/// The destination labels of echo-v1 / echo-v2 as ztunnel-b's response baggage names them.
pub fn echo_destination(workload: &str) -> Vec<(&'static str, String)> {
    let version = match workload {
        "echo-v1" => "v1",
        "echo-v2" => "v2",
        other => panic!("{other:?} is not an echo pod"),
    };
    vec![
        ("destination_workload", workload.to_owned()),
        ("destination_workload_namespace", "backend".into()),
        ("destination_principal", "spiffe://cluster.local/ns/backend/sa/echo".into()),
        ("destination_app", "echo".into()),
        ("destination_version", version.into()),
        ("destination_canonical_service", "echo".into()),
        ("destination_canonical_revision", version.into()),
        ("destination_cluster", "cluster2".into()),
    ]
}

/// ratings-v1 as ztunnel-a's response baggage names it.
pub const RATINGS_DESTINATION: [(&str, &str); 8] = [
    ("destination_workload", "ratings-v1"),
    ("destination_workload_namespace", "backend"),
    ("destination_principal", "spiffe://cluster.local/ns/backend/sa/ratings"),
    ("destination_app", "ratings"),
    ("destination_version", "v1"),
    ("destination_canonical_service", "ratings"),
    ("destination_canonical_revision", "v1"),
    ("destination_cluster", "cluster1"),
];

pub async fn start(options: Options) -> Topology {
    Topology::start(options).await.unwrap_or_else(|e| panic!("the mesh did not start: {e}"))
}

/// Asserts every label in `expected` on `sample`, naming the label that differs.
pub fn assert_labels<V: AsRef<str>>(sample: &Sample, expected: &[(&str, V)]) {
    for (name, value) in expected {
        assert_eq!(sample.label(name), value.as_ref(), "label {name} of {:?}", sample.labels);
    }
}

/// `reporter`, for every waypoint series.
pub const WAYPOINT_REPORTER: [(&str, &str); 1] = [("reporter", "waypoint")];

/// A plain HTTP request answered 200, no flags, arrived over HBONE mTLS.
pub const HTTP_200: [(&str, &str); 5] = [
    ("request_protocol", "http"),
    ("response_code", "200"),
    ("grpc_response_status", ""),
    ("response_flags", "-"),
    ("connection_security_policy", "mutual_tls"),
];

/// The three service labels of the route to `<name>.backend.svc.cluster.local`.
pub fn route(host: &'static str, name: &'static str) -> [(&'static str, &'static str); 3] {
    [("destination_service", host), ("destination_service_name", name), ("destination_service_namespace", "backend")]
}

/// All 25 labels, exactly: `parts` together name each of Istio's labels once, and the
/// sample has those values and no other label.
pub fn assert_all_labels(sample: &Sample, parts: &[&[(&str, &str)]]) {
    let expected: Vec<(&str, &str)> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    let mut istio = ISTIO_LABELS.to_vec();
    istio.sort_unstable();
    assert_eq!(names, istio, "the test names each of Istio's 25 labels once");
    assert_labels(sample, &expected);
    assert_eq!(sample.labels.len(), 25, "exactly Istio's 25 labels: {:?}", sample.labels);
}

/// The waypoint's `/stats/prometheus` once `ready` holds; panics after 15 s.
pub async fn metrics_when(t: &Topology, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = t.waypoint_prometheus().await.expect("waypoint /stats/prometheus");
        if ready(&text) {
            return text;
        }
        if Instant::now() > deadline {
            panic!(
                "waited 15 s for {what}; the waypoint's istio_* lines are:\n{}",
                text.lines()
                    .filter(|l| l.starts_with("istio_") && !l.contains("_bucket"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The metrics once the waypoint has counted exactly `requests` requests in all.
pub async fn metrics_after(t: &Topology, requests: usize) -> String {
    let text = metrics_when(t, &format!("{requests} requests in {REQUESTS}"), |text| {
        prom::total(text, REQUESTS) >= requests as f64
    })
    .await;
    assert_eq!(prom::total(&text, REQUESTS), requests as f64, "the waypoint counted more requests than were sent");
    text
}

/// The one sample of `metric` whose labels equal `labels` (an istio_requests_total series).
pub fn same_series(text: &str, metric: &str, labels: &Sample) -> Option<Sample> {
    let found: Vec<Sample> = prom::samples(text, metric).into_iter().filter(|s| s.labels == labels.labels).collect();
    assert!(found.len() <= 1, "{metric}: one series per label set: {found:?}");
    found.into_iter().next()
}

/// A counter or gauge from the waypoint's `/stats` (Envoy's own format).
pub async fn waypoint_counter(t: &Topology, name: &str) -> u64 {
    let stats = t.waypoint_stats().await.expect("waypoint /stats");
    let value = stats.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")));
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("the waypoint has no stat {name}"))
}

/// Polls a waypoint counter or gauge until it equals `value`; panics after 10 s.
pub async fn wait_for_counter(t: &Topology, name: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while waypoint_counter(t, name).await != value {
        assert!(Instant::now() < deadline, "{name} did not reach {value} within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
