//! End to end, on the real local mesh (issue 4): stock Envoy 1.40 as the waypoint with
//! its filters in each engine (every test runs as `<name>::wasm` with dist/waypoint.wasm
//! and as `<name>::native` with dist/libwaypoint_native.so), host-shim ztunnels on both
//! sides, a stock Envoy east-west gateway and the echo apps, all on loopback. Every test
//! starts its own [`Topology`] (its own 127.x.0.0/16 block) and drops it at the end, which
//! stops every process it started.
//!
//! ```text
//! network-a (cluster1)                                      network-b (cluster2)
//! curl ─▶ ztunnel-a ─HBONE─▶ waypoint ─double HBONE─▶ east-west gateway ─▶ ztunnel-b ─▶ echo-v1
//! productpage (sidecar) ─┘                                                            └─▶ echo-v2
//!                            └─HBONE─▶ ztunnel-a ─▶ ratings-v1 (same network)
//! ```
//!
//! The binaries come from `make build` (dist/) and the venv's Envoy; when one is missing
//! the tests fail and say so, they never skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    CURL, ISTIO_LABELS, REQUESTS, assert_labels, echo_destination, for_both_engines, metrics_after, metrics_when,
    start, wait_for_counter, waypoint_counter,
};
use harness::Options;
use harness::http::{Connection, Reply};
use harness::prom::{self, Sample};
use harness::topology::{Engine, SERVICE_HOST, Topology};
use harness::traffic::{self, Tally, service_host};
use tokio::task::JoinHandle;

const HISTOGRAMS: [&str; 3] = ["istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"];
const ERRORS: &str = "waypoint_errors_total";

const CURL_PRINCIPAL: &str = "spiffe://cluster.local/ns/frontend/sa/curl";
const PRODUCTPAGE_PRINCIPAL: &str = "spiffe://cluster.local/ns/frontend/sa/productpage";
const ECHO_PRINCIPAL: &str = "spiffe://cluster.local/ns/backend/sa/echo";
const WAYPOINT_PRINCIPAL: &str = "spiffe://cluster.local/ns/backend/sa/waypoint";

/// The source labels of the sidecar-style productpage client (x-envoy-peer-metadata + TLS).
const PRODUCTPAGE: [(&str, &str); 8] = [
    ("source_workload", "productpage-v1"),
    ("source_canonical_service", "productpage"),
    ("source_canonical_revision", "v1"),
    ("source_workload_namespace", "frontend"),
    ("source_principal", PRODUCTPAGE_PRINCIPAL),
    ("source_app", "productpage"),
    ("source_version", "v1"),
    ("source_cluster", "cluster1"),
];

/// The service labels, from the route (inbound-vip|8080|http|echo.backend.svc.cluster.local).
const ROUTE: [(&str, &str); 3] = [
    ("destination_service", SERVICE_HOST),
    ("destination_service_name", "echo"),
    ("destination_service_namespace", "backend"),
];

/// The destination peer labels of a request that reached no echo pod (LEAD-BEHAVIOUR item 5):
/// the cluster from the endpoint metadata of the service's pods in network-b (all in
/// cluster2), the namespace from the service; nothing else is known.
const UNREACHED_ECHO: [(&str, &str); 8] = [
    ("destination_workload", "unknown"),
    ("destination_workload_namespace", "backend"),
    ("destination_principal", "unknown"),
    ("destination_app", "unknown"),
    ("destination_version", "unknown"),
    ("destination_canonical_service", "unknown"),
    ("destination_canonical_revision", "unknown"),
    ("destination_cluster", "cluster2"),
];

// ------------------------------------------------------------------ helpers

/// curl's entry into the mesh: ztunnel-a's outbound listener on curl's address.
fn curl(t: &Topology) -> SocketAddr {
    t.plan.outbound(t.plan.curl())
}

fn productpage(t: &Topology) -> SocketAddr {
    t.plan.outbound(t.plan.productpage())
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Starts a client (see [`traffic::counting_client`]) on its own task.
fn spawn_client(
    entry: SocketAddr,
    requests: usize,
    per_connection: usize,
    headers: Vec<(String, String)>,
) -> JoinHandle<Tally> {
    tokio::spawn(traffic::counting_client(entry, requests, per_connection, headers))
}

/// Waits for concurrent clients and adds up what they saw.
async fn sum(clients: Vec<JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for client in clients {
        total = total + client.await.expect("client task");
    }
    total
}

/// No `waypoint_errors_total` series, or only zeros: nothing degraded to unknown.
fn assert_no_waypoint_errors(text: &str) {
    let errors: Vec<Sample> = prom::samples(text, ERRORS).into_iter().filter(|s| s.value != 0.0).collect();
    assert!(errors.is_empty(), "the waypoint counted errors in a healthy run: {errors:?}");
}

/// What the echo apps received, across both endpoints.
fn all_seen(t: &Topology) -> Vec<harness::apps::Seen> {
    t.echo.iter().flat_map(|e| e.seen()).collect()
}

fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

async fn get(entry: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut connection = Connection::open(entry).await.expect("connecting to ztunnel-a");
    connection.get(&service_host(), path, headers).await.expect("request through the mesh")
}

/// Sends one request at a time until one is answered 200; panics after `timeout`.
async fn wait_for_recovery(entry: SocketAddr, timeout: Duration) -> Tally {
    let deadline = Instant::now() + timeout;
    let mut seen = Tally::default();
    loop {
        let tally = traffic::counting_client(entry, 1, 1, vec![]).await;
        let recovered = tally.outcome().ok == 1;
        seen = seen + tally;
        if recovered {
            return seen;
        }
        assert!(Instant::now() < deadline, "no 200 within {timeout:?} of the restart: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------ 1. the 25 labels

for_both_engines!(a_request_from_curl_to_the_other_network_carries_all_25_labels_from_both_peers_and_the_route);
async fn a_request_from_curl_to_the_other_network_carries_all_25_labels_from_both_peers_and_the_route(engine: Engine) {
    let t = start(Options::with_engine(engine)).await;

    let reply = get(curl(&t), "/one", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let served = reply.json()["workload"].as_str().expect("the echo app names itself").to_owned();
    let v = match served.as_str() {
        "echo-v1" => "v1",
        "echo-v2" => "v2",
        other => panic!("served by {other:?}, not an echo endpoint"),
    };

    let text = metrics_after(&t, 1).await;
    let series = prom::samples(&text, REQUESTS);
    assert_eq!(series.len(), 1, "one request, one series: {series:?}");
    let s = &series[0];
    assert_eq!(s.value, 1.0);
    let expected: [(&str, &str); 25] = [
        ("reporter", "waypoint"),
        ("source_workload", "curl"),
        ("source_canonical_service", "curl"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "frontend"),
        ("source_principal", "spiffe://cluster.local/ns/frontend/sa/curl"),
        ("source_app", "curl"),
        ("source_version", "v1"),
        ("source_cluster", "cluster1"),
        ("destination_workload", served.as_str()),
        ("destination_workload_namespace", "backend"),
        ("destination_principal", "spiffe://cluster.local/ns/backend/sa/echo"),
        ("destination_app", "echo"),
        ("destination_version", v),
        ("destination_service", "echo.backend.svc.cluster.local"),
        ("destination_canonical_service", "echo"),
        ("destination_canonical_revision", v),
        ("destination_service_name", "echo"),
        ("destination_service_namespace", "backend"),
        ("destination_cluster", "cluster2"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_labels(s, &expected);
    assert_eq!(s.labels.len(), 25, "exactly Istio's 25 labels: {:?}", s.labels);
    let unknown: Vec<&String> = s.labels.iter().filter(|(_, v)| *v == "unknown").map(|(k, _)| k).collect();
    assert!(unknown.is_empty(), "labels left unknown: {unknown:?}");

    // Histograms reach /stats/prometheus at Envoy's next stats flush (1 s).
    let text = metrics_when(&t, "the three histograms", |text| {
        HISTOGRAMS
            .iter()
            .all(|h| prom::samples(text, &format!("{h}_count")).iter().any(|c| c.labels == s.labels && c.value > 0.0))
    })
    .await;
    for h in HISTOGRAMS {
        for (suffix, at_least) in [("_count", 1.0), ("_sum", 0.0)] {
            let found: Vec<Sample> =
                prom::samples(&text, &format!("{h}{suffix}")).into_iter().filter(|c| c.labels == s.labels).collect();
            assert_eq!(found.len(), 1, "{h}{suffix} for the request's label set: {found:?}");
            assert!(found[0].value >= at_least, "{h}{suffix} = {}", found[0].value);
            if suffix == "_count" {
                assert_eq!(found[0].value, 1.0, "{h}: one request recorded");
            }
        }
        let inf = prom::samples(&text, &format!("{h}_bucket"))
            .into_iter()
            .find(|b| b.label("le") == "+Inf" && ISTIO_LABELS.iter().all(|l| b.label(l) == s.label(l)))
            .unwrap_or_else(|| panic!("{h}_bucket{{le=\"+Inf\"}} for the request's label set"));
        assert_eq!(inf.value, 1.0);
    }
    for h in ["istio_request_bytes", "istio_response_bytes"] {
        let sum = prom::samples(&text, &format!("{h}_sum")).into_iter().find(|c| c.labels == s.labels).unwrap();
        assert!(sum.value > 0.0, "{h}_sum: a request and a response have bytes");
    }
    assert_no_waypoint_errors(&text);
}

for_both_engines!(a_request_to_a_service_in_the_waypoints_own_network_goes_direct_and_names_both_peers);
async fn a_request_to_a_service_in_the_waypoints_own_network_goes_direct_and_names_both_peers(engine: Engine) {
    let t = start(Options::with_engine(engine)).await;
    const REQUESTS_SENT: usize = 5;
    let mut connection = Connection::open(t.plan.local_outbound(t.plan.curl())).await.expect("ztunnel-a");
    for n in 0..REQUESTS_SENT {
        let reply = connection.get(&traffic::local_service_host(), &format!("/local/{n}"), &[]).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["workload"], "ratings-v1");
    }
    assert_eq!(t.ratings.seen().len(), REQUESTS_SENT);

    let text = metrics_after(&t, REQUESTS_SENT).await;
    let series = prom::samples(&text, REQUESTS);
    assert_eq!(series.len(), 1, "{series:?}");
    let s = &series[0];
    assert_eq!(s.value, REQUESTS_SENT as f64);
    assert_labels(s, &CURL);
    assert_labels(
        s,
        &[
            ("destination_workload", "ratings-v1"),
            ("destination_workload_namespace", "backend"),
            ("destination_principal", "spiffe://cluster.local/ns/backend/sa/ratings"),
            ("destination_app", "ratings"),
            ("destination_version", "v1"),
            ("destination_canonical_service", "ratings"),
            ("destination_canonical_revision", "v1"),
            ("destination_cluster", "cluster1"),
            ("destination_service", "ratings.backend.svc.cluster.local"),
            ("destination_service_name", "ratings"),
            ("destination_service_namespace", "backend"),
            ("response_code", "200"),
            ("response_flags", "-"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    // One direct HBONE tunnel to the pod's ztunnel; nothing went through the gateway.
    assert!(waypoint_counter(&t, "cluster.hbone_direct.upstream_rq_total").await >= 1);
    assert_eq!(waypoint_counter(&t, "cluster.hbone_outer.upstream_rq_total").await, 0);
    assert_no_waypoint_errors(&text);
}

// ------------------------------------------------------------------ 2. what the apps see

for_both_engines!(apps_never_see_mesh_metadata_and_their_own_baggage_passes_byte_for_byte);
async fn apps_never_see_mesh_metadata_and_their_own_baggage_passes_byte_for_byte(engine: Engine) {
    let t = start(Options::with_engine(engine)).await;
    // The apps' own W3C baggage, one with properties, odd characters and keys that look like
    // mesh metadata (application data: never trusted, never changed), and a client with none.
    let clients: [(&str, Option<&str>); 3] = [
        ("plain", Some("user=client-0,session=s0")),
        ("tricky", Some("userId=alice;ttl=30,k8s.deployment.name=spoofed,service.name=spoofed,serverNode=DF%2028")),
        ("none", None),
    ];
    const PER_CLIENT: usize = 10;
    for (name, baggage) in clients {
        let mut sent = vec![("x-client", name)];
        if let Some(b) = baggage {
            sent.push(("baggage", b));
        }
        let mut connection = Connection::open(curl(&t)).await.expect("connecting to ztunnel-a");
        for n in 0..PER_CLIENT {
            let reply = connection.get(&service_host(), &format!("/{name}/{n}"), &sent).await.expect("request");
            assert_eq!(reply.status, 200, "{}", reply.text());
            for leaked in ["x-wp-upconn", "x-wp-service", "x-wp-peer", "baggage", "x-envoy-peer-metadata"] {
                assert_eq!(header(&reply, leaked), None, "the client got {leaked} in a response: {:?}", reply.headers);
            }
            assert_eq!(reply.json()["baggage"].as_str(), baggage, "the app's echo of its baggage");
        }
    }

    let seen = all_seen(&t);
    assert_eq!(seen.len(), clients.len() * PER_CLIENT, "every request reached an app once");
    for request in &seen {
        let client = request.headers.iter().find(|(k, _)| k == "x-client").map(|(_, v)| v.as_str()).unwrap();
        let sent = clients.iter().find(|(name, _)| *name == client).unwrap().1;
        assert_eq!(request.baggage.as_deref(), sent, "{client}: baggage changed on the way to the app");
        let baggage_headers = request.headers.iter().filter(|(k, _)| k == "baggage").count();
        assert_eq!(baggage_headers, usize::from(sent.is_some()), "{client}: a baggage header was added");
        assert!(!request.peer_metadata_leaked, "{client}: peer metadata reached the app: {:?}", request.headers);
        for (name, value) in &request.headers {
            assert!(
                !["x-envoy-peer-metadata", "x-envoy-peer-metadata-id", "x-forwarded-network"].contains(&name.as_str())
                    && !name.starts_with("x-wp-"),
                "{client}: {name} reached the app"
            );
            if name != "baggage" {
                for mesh in ["k8s.", "service.name=", "cluster1", "cluster2", "spiffe://", "network-a"] {
                    assert!(!value.contains(mesh), "{client}: mesh metadata in {name}: {value}");
                }
            }
        }
    }

    // The application's look-alike keys were not taken as the client's identity.
    let text = metrics_after(&t, clients.len() * PER_CLIENT).await;
    for s in prom::samples(&text, REQUESTS) {
        assert_labels(&s, &CURL);
    }
    assert_no_waypoint_errors(&text);
}

// ------------------------------------------------------------------ 3. double HBONE precision

for_both_engines!(behind_the_gateway_each_endpoints_served_count_equals_its_metric_series_exactly);
async fn behind_the_gateway_each_endpoints_served_count_equals_its_metric_series_exactly(engine: Engine) {
    let t = start(Options::with_engine(engine)).await;
    const KEEP_ALIVE: usize = 4;
    const CHURNING: usize = 2;
    const REQUESTS_EACH: usize = 60;
    const SIDECAR_REQUESTS: usize = 30;
    let mut clients = Vec::new();
    for n in 0..KEEP_ALIVE {
        clients.push(spawn_client(
            curl(&t),
            REQUESTS_EACH,
            usize::MAX,
            headers(&[("baggage", &traffic::app_baggage(n))]),
        ));
    }
    // Connection churn: a new connection (hence a new CONNECT and new upstream
    // connections at the waypoint) every few requests.
    for n in 0..CHURNING {
        clients.push(spawn_client(
            curl(&t),
            REQUESTS_EACH,
            3 + n,
            headers(&[("baggage", &traffic::app_baggage(10 + n))]),
        ));
    }
    let curl_requests = (KEEP_ALIVE + CHURNING) * REQUESTS_EACH;
    let sidecar = spawn_client(productpage(&t), SIDECAR_REQUESTS, 5, traffic::sidecar_headers());
    let (curl_tally, sidecar_tally) = (sum(clients).await, sidecar.await.unwrap());

    assert_eq!(curl_tally.outcome().failed, 0, "curl clients: {curl_tally:?}");
    assert_eq!(sidecar_tally.outcome().failed, 0, "sidecar client: {sidecar_tally:?}");
    assert_eq!(curl_tally.requests(), curl_requests);
    let total = curl_requests + SIDECAR_REQUESTS;

    // What the endpoints say they served, what the clients were told, what the metrics say.
    let served: BTreeMap<String, usize> = t.served().into_iter().collect();
    let told = curl_tally.clone() + sidecar_tally.clone();
    assert_eq!(served, told.by_workload, "the apps' own counts and the replies' workload fields agree");
    assert!(served.values().all(|n| *n > 0) && served.len() == 2, "both endpoints got traffic: {served:?}");

    let text = metrics_after(&t, total).await;
    let as_counts = |sums: BTreeMap<String, f64>| -> BTreeMap<String, usize> {
        sums.into_iter().map(|(k, v)| (k, v as usize)).collect()
    };
    assert_eq!(
        as_counts(prom::sum_by(&text, REQUESTS, "destination_workload")),
        served,
        "istio_requests_total per destination_workload must equal what each endpoint served"
    );
    // Per source too: each client's own split across the endpoints.
    for (source, tally) in [("curl", &curl_tally), ("productpage-v1", &sidecar_tally)] {
        let mut by_destination = BTreeMap::new();
        for s in prom::samples(&text, REQUESTS).iter().filter(|s| s.label("source_workload") == source) {
            *by_destination.entry(s.label("destination_workload").to_owned()).or_insert(0) += s.value as usize;
        }
        assert_eq!(by_destination, tally.by_workload, "{source}: per-endpoint counts");
    }
    // Every series names one endpoint consistently, with its whole label set.
    for s in prom::samples(&text, REQUESTS) {
        let source = if s.label("source_workload") == "curl" { CURL } else { PRODUCTPAGE };
        assert_labels(&s, &source);
        assert_labels(&s, &echo_destination(s.label("destination_workload")));
        assert_labels(&s, &ROUTE);
        assert_labels(
            &s,
            &[("response_code", "200"), ("response_flags", "-"), ("connection_security_policy", "mutual_tls")],
        );
    }
    println!("served {served:?}; metric series agree exactly over {total} requests");
    assert_no_waypoint_errors(&text);
}

// ------------------------------------------------------------------ 4. the gateway's view

for_both_engines!(the_waypoint_reaches_the_remote_service_directly_and_the_gateway_sees_only_its_outer_connect);
async fn the_waypoint_reaches_the_remote_service_directly_and_the_gateway_sees_only_its_outer_connect(engine: Engine) {
    let mut t = start(Options::with_engine(engine)).await;
    let tally = sum(vec![
        spawn_client(curl(&t), 20, 4, headers(&[("baggage", "user=gateway-test")])),
        spawn_client(productpage(&t), 10, usize::MAX, traffic::sidecar_headers()),
    ])
    .await;
    assert_eq!(tally.outcome().failed, 0, "{tally:?}");
    let text = metrics_after(&t, 30).await;
    for s in prom::samples(&text, REQUESTS) {
        assert_labels(&s, &echo_destination(s.label("destination_workload")));
    }
    assert_no_waypoint_errors(&text);

    // ztunnel-b was reached by the waypoint itself: no waypoint in cluster2 in between.
    let ztunnel_b = t.shim_metrics(2).await.expect("ztunnel-b /metrics");
    let opened = prom::samples(&ztunnel_b, "istio_tcp_connections_opened_total");
    assert!(!opened.is_empty(), "ztunnel-b reports the inner tunnels:\n{ztunnel_b}");
    for s in &opened {
        assert_labels(s, &[("source_workload", "waypoint"), ("source_principal", WAYPOINT_PRINCIPAL)]);
    }

    // Envoy logs a CONNECT when it ends: close every tunnel by stopping the waypoint.
    let outer_connects = t.waypoint_stats().await.expect("waypoint /stats");
    let outer_connects = stat(&outer_connects, "cluster.hbone_outer.upstream_rq_total");
    assert!(outer_connects > 0, "the waypoint opened outer CONNECTs to the gateway");
    t.stop_waypoint();
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = t.gateway_view();
        if view.lines().filter(|l| l.contains("] CONNECT ")).count() >= outer_connects as usize {
            break view;
        }
        assert!(Instant::now() < deadline, "waited for {outer_connects} outer CONNECTs in the gateway log:\n{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let echo_pods = [t.plan.echo(1), t.plan.echo(2)].map(|ip| format!("upstream={ip}:15008"));
    let connects: Vec<&str> = view.lines().filter(|l| l.contains("] CONNECT ")).collect();
    assert_eq!(connects.len() as u64, outer_connects, "{view}");
    for line in &connects {
        assert!(line.contains(&format!(" authority={SERVICE_HOST}:8080 ")), "outer authority: {line}");
        assert!(line.contains(&format!(" client={WAYPOINT_PRINCIPAL} ")), "outer client identity: {line}");
        assert!(line.contains(" baggage=- "), "the outer CONNECT carries no baggage: {line}");
        assert!(line.contains(" x-forwarded-network=- "), "x-forwarded-network is inner only: {line}");
        assert!(line.contains(" response_baggage=- "), "the destination's baggage is inner only: {line}");
        assert!(echo_pods.iter().any(|pod| line.contains(pod.as_str())), "straight to an echo pod: {line}");
    }
    for inner in [
        "k8s.",
        "service.name",
        "echo-v1",
        "echo-v2",
        "curl",
        "productpage",
        "cluster1",
        "cluster2",
        "network-a",
        "gateway-test",
    ] {
        assert!(!view.contains(inner), "the gateway saw {inner:?}:\n{view}");
    }
}

/// One counter from Envoy's `/stats` text (`name: value`).
fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(": ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stat {name}"))
}

// ------------------------------------------------------------------ 5. a sidecar client

for_both_engines!(a_sidecar_client_is_labelled_from_its_peer_metadata_header_which_never_reaches_the_app);
async fn a_sidecar_client_is_labelled_from_its_peer_metadata_header_which_never_reaches_the_app(engine: Engine) {
    let t = start(Options::with_engine(engine)).await;
    const N: usize = 12;
    let tally = traffic::counting_client(productpage(&t), N, usize::MAX, traffic::sidecar_headers()).await;
    assert_eq!(tally.outcome().ok, N, "{tally:?}");

    let text = metrics_after(&t, N).await;
    let series = prom::samples(&text, REQUESTS);
    for s in &series {
        assert_labels(s, &PRODUCTPAGE);
        assert_labels(s, &echo_destination(s.label("destination_workload")));
        assert_labels(s, &ROUTE);
        assert_labels(
            s,
            &[("reporter", "waypoint"), ("response_code", "200"), ("connection_security_policy", "mutual_tls")],
        );
    }
    let by_workload: BTreeMap<String, usize> =
        prom::sum_by(&text, REQUESTS, "destination_workload").into_iter().map(|(k, v)| (k, v as usize)).collect();
    assert_eq!(by_workload, tally.by_workload);

    let seen = all_seen(&t);
    assert_eq!(seen.len(), N);
    for request in &seen {
        assert!(!request.peer_metadata_leaked, "{:?}", request.headers);
        for (name, _) in &request.headers {
            assert!(!name.starts_with("x-envoy-peer-metadata"), "{name} reached the app");
        }
        assert_eq!(request.baggage, None, "no baggage was sent, none may arrive");
    }
    assert_no_waypoint_errors(&text);
}

// ------------------------------------------------------------------ 6. the switch

for_both_engines!(with_baggage_discovery_off_only_tls_identities_and_the_route_are_known_and_requests_succeed);
async fn with_baggage_discovery_off_only_tls_identities_and_the_route_are_known_and_requests_succeed(engine: Engine) {
    let t = start(Options { baggage_discovery: false, ..Options::with_engine(engine) }).await;
    const N: usize = 10;
    let tally = traffic::counting_client(curl(&t), N, usize::MAX, headers(&[("baggage", "user=switch-off")])).await;
    assert_eq!(tally.outcome().ok, N, "{tally:?}");

    let text = metrics_after(&t, N).await;
    let series = prom::samples(&text, REQUESTS);
    assert_eq!(series.len(), 1, "without peers' baggage both endpoints read alike: {series:?}");
    // The documented fallback (PROTOCOL.md §4, LEAD-BEHAVIOUR items 4 and 6): principals
    // from TLS, both namespaces from the SPIFFE identities, the destination cluster from the
    // endpoint metadata (every echo pod of network-b is in cluster2), the service from the route.
    assert_labels(
        &series[0],
        &[
            ("reporter", "waypoint"),
            ("source_workload", "unknown"),
            ("source_canonical_service", "unknown"),
            ("source_canonical_revision", "latest"),
            ("source_workload_namespace", "frontend"),
            ("source_principal", CURL_PRINCIPAL),
            ("source_app", "unknown"),
            ("source_version", "unknown"),
            ("source_cluster", "unknown"),
            ("destination_workload", "unknown"),
            ("destination_workload_namespace", "backend"),
            ("destination_principal", ECHO_PRINCIPAL),
            ("destination_app", "unknown"),
            ("destination_version", "unknown"),
            ("destination_service", SERVICE_HOST),
            ("destination_canonical_service", "unknown"),
            ("destination_canonical_revision", "unknown"),
            ("destination_service_name", "echo"),
            ("destination_service_namespace", "backend"),
            ("destination_cluster", "cluster2"),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("grpc_response_status", ""),
            ("response_flags", "-"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert_eq!(series[0].value, N as f64);
    for request in all_seen(&t) {
        assert_eq!(request.baggage.as_deref(), Some("user=switch-off"));
        assert!(!request.peer_metadata_leaked);
    }
    assert_no_waypoint_errors(&text);
}

// ------------------------------------------------------------------ 7. faults

for_both_engines!(
    with_the_destination_ztunnel_down_clients_get_503_counted_in_the_destination_cluster_until_it_returns
);
async fn with_the_destination_ztunnel_down_clients_get_503_counted_in_the_destination_cluster_until_it_returns(
    engine: Engine,
) {
    let mut t = start(Options::with_engine(engine)).await;
    let warm = traffic::counting_client(curl(&t), 5, usize::MAX, vec![]).await;
    assert_eq!(warm.outcome().ok, 5, "{warm:?}");

    t.stop_ztunnel_b();
    // Requests *sent while* ztunnel-b is down: wait until the waypoint has seen its pooled
    // tunnels close. (A request caught on a tunnel that dies under it keeps that tunnel's
    // peer, as in Istio: see the restart-under-load test.)
    wait_for_counter(&t, "cluster.inbound-vip|8080|http|echo.backend.svc.cluster.local.upstream_cx_active", 0).await;
    const DOWN: usize = 8;
    let down = traffic::counting_client(curl(&t), DOWN, 2, vec![]).await;
    assert_eq!(down.by_status, BTreeMap::from([(503, DOWN)]), "every request while ztunnel-b is down: {down:?}");
    let text = metrics_after(&t, 5 + DOWN).await;
    let failed: Vec<Sample> =
        prom::samples(&text, REQUESTS).into_iter().filter(|s| s.label("response_code") != "200").collect();
    assert_eq!(failed.iter().map(|s| s.value).sum::<f64>(), DOWN as f64, "{failed:?}");
    let mut flags = Vec::new();
    for s in &failed {
        assert_labels(s, &[("response_code", "503")]);
        assert_labels(s, &CURL);
        assert_labels(s, &ROUTE);
        assert_labels(s, &UNREACHED_ECHO);
        let f = s.label("response_flags");
        assert!(!f.is_empty() && f != "-", "a failed request names why: {:?}", s.labels);
        flags.push(format!("{f} x{}", s.value));
    }
    println!("ztunnel-b down: response_flags {flags:?}; waypoint_errors_total {:?}", prom::samples(&text, ERRORS));
    assert!(t.waypoint_running(), "the waypoint's Envoy survived the fault");

    t.start_ztunnel_b().await.expect("ztunnel-b restarts");
    let recovery = wait_for_recovery(curl(&t), Duration::from_secs(15)).await;
    const AFTER: usize = 20;
    let after = traffic::counting_client(curl(&t), AFTER, 4, vec![]).await;
    assert_eq!(after.outcome().ok, AFTER, "after ztunnel-b returned: {after:?}");
    let all = warm.clone() + down.clone() + recovery.clone() + after.clone();
    let text = metrics_after(&t, all.requests()).await;
    let ok: Vec<Sample> =
        prom::samples(&text, REQUESTS).into_iter().filter(|s| s.label("response_code") == "200").collect();
    for s in &ok {
        assert_labels(s, &CURL);
        assert_labels(s, &echo_destination(s.label("destination_workload")));
    }
    let ok_counted: f64 = ok.iter().map(|s| s.value).sum();
    assert_eq!(ok_counted as usize, all.outcome().ok, "every 200 is counted two-sided");
    assert!(t.waypoint_running());
}

for_both_engines!(while_ztunnel_b_restarts_under_load_every_200_is_still_counted_against_the_endpoint_that_served_it);
/// Tunnels fail and new ones open while requests are in flight on both workers: the
/// tunnel table's tombstones must keep every answer bound to the tunnel that carried it.
async fn while_ztunnel_b_restarts_under_load_every_200_is_still_counted_against_the_endpoint_that_served_it(
    engine: Engine,
) {
    let mut t = start(Options::with_engine(engine)).await;
    let load_for = Duration::from_secs(4);
    let clients: Vec<JoinHandle<Tally>> = [usize::MAX, 1, 2, 5, usize::MAX, 1, 2, 5]
        .into_iter()
        .map(|per_connection| {
            let entry = curl(&t);
            tokio::spawn(async move {
                let end = Instant::now() + load_for;
                let mut tally = Tally::default();
                while Instant::now() < end {
                    tally = tally + traffic::counting_client(entry, 5, per_connection, vec![]).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tally
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    t.stop_ztunnel_b();
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.start_ztunnel_b().await.expect("ztunnel-b restarts");
    let tally = sum(clients).await;
    let failed = tally.requests() - tally.outcome().ok;
    assert!(failed > 0, "the fault happened under load: {tally:?}");
    assert_eq!(tally.no_answer, 0, "every request got an HTTP answer: {tally:?}");

    let text = metrics_after(&t, tally.requests()).await;
    let mut ok_by_endpoint = BTreeMap::new();
    let mut failed_by_endpoint: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for s in prom::samples(&text, REQUESTS) {
        assert_labels(&s, &CURL);
        if s.label("response_code") == "200" {
            assert_labels(&s, &echo_destination(s.label("destination_workload")));
            *ok_by_endpoint.entry(s.label("destination_workload").to_owned()).or_insert(0) += s.value as usize;
        } else {
            assert_labels(&s, &[("response_code", "503")]);
            assert_ne!(s.label("response_flags"), "-", "{:?}", s.labels);
            *failed_by_endpoint.entry(s.label("destination_workload").to_owned()).or_default() += s.value as usize;
            failures.push(format!("{} {} x{}", s.label("response_flags"), s.label("destination_workload"), s.value));
        }
    }
    assert_eq!(ok_by_endpoint, tally.by_workload, "200s per destination_workload equal the endpoints' own answers");
    // An endpoint may have answered a request whose response then died with ztunnel-b: the
    // client got a 503 (UC), which must then name that endpoint, not unknown or the other one.
    for (endpoint, served) in t.served() {
        let ok = tally.by_workload.get(&endpoint).copied().unwrap_or(0);
        let failed_there = failed_by_endpoint.get(&endpoint).copied().unwrap_or(0);
        assert!(
            ok <= served && served <= ok + failed_there,
            "{endpoint} served {served}: {ok} answered 200 and {failed_there} failed requests name it"
        );
    }
    println!("restart under load: {} requests, {failed} failed: {failures:?}", tally.requests());
    assert!(t.waypoint_running());
}

for_both_engines!(a_request_that_fails_upstream_still_arrived_over_mutual_tls_as_istio_reports_it);
/// Istio's waypoint reporter (istio/proxy istio_stats.cc, `Reporter::ServerGateway`) sets
/// `connection_security_policy` from the downstream connection alone: `mutual_tls` when it
/// has both a peer and a local URI SAN, else `none`; never `unknown`. A request that
/// reached the waypoint over HBONE and then failed upstream is still `mutual_tls` there.
async fn a_request_that_fails_upstream_still_arrived_over_mutual_tls_as_istio_reports_it(engine: Engine) {
    let mut t = start(Options::with_engine(engine)).await;
    t.stop_ztunnel_b();
    let down = traffic::counting_client(curl(&t), 3, usize::MAX, vec![]).await;
    assert_eq!(down.by_status, BTreeMap::from([(503, 3)]), "{down:?}");
    let text = metrics_after(&t, 3).await;
    for s in prom::samples(&text, REQUESTS) {
        assert_labels(&s, &[("source_principal", CURL_PRINCIPAL), ("response_code", "503")]);
        assert_eq!(
            s.label("connection_security_policy"),
            "mutual_tls",
            "the request came in over HBONE mTLS (peer and local SAN); Istio's waypoint reports mutual_tls \
             whatever happened upstream, never unknown: {:?}",
            s.labels
        );
    }
}

for_both_engines!(after_the_east_west_gateway_restarts_new_requests_succeed_with_full_labels);
async fn after_the_east_west_gateway_restarts_new_requests_succeed_with_full_labels(engine: Engine) {
    let mut t = start(Options::with_engine(engine)).await;
    let warm = traffic::counting_client(curl(&t), 5, usize::MAX, vec![]).await;
    assert_eq!(warm.outcome().ok, 5, "{warm:?}");

    t.stop_gateway();
    let down = traffic::counting_client(curl(&t), 4, 2, vec![]).await;
    assert_eq!(down.outcome().ok, 0, "no request succeeds without the gateway: {down:?}");
    let text = metrics_after(&t, warm.requests() + down.requests()).await;
    let failed: Vec<String> = prom::samples(&text, REQUESTS)
        .into_iter()
        .filter(|s| s.label("response_code") != "200")
        .map(|s| format!("{} {} x{}", s.label("response_code"), s.label("response_flags"), s.value))
        .collect();
    println!("gateway down: {failed:?}");
    t.start_gateway().await.expect("the gateway restarts");

    let recovery = wait_for_recovery(curl(&t), Duration::from_secs(15)).await;
    const AFTER: usize = 30;
    let after =
        sum(vec![spawn_client(curl(&t), AFTER / 2, usize::MAX, vec![]), spawn_client(curl(&t), AFTER / 2, 3, vec![])])
            .await;
    assert_eq!(after.outcome().ok, AFTER, "after the gateway returned: {after:?}");
    assert!(after.by_workload.len() == 2, "both endpoints serve again: {after:?}");
    let all = warm.requests() + down.requests() + recovery.requests() + AFTER;
    let text = metrics_after(&t, all).await;
    let ok = prom::sum_by(&text, REQUESTS, "response_code").get("200").copied().unwrap_or(0.0);
    let ok_seen = warm.outcome().ok + recovery.outcome().ok + after.outcome().ok;
    assert_eq!(ok as usize, ok_seen, "every 200 the clients got is counted as a 200");
    for s in prom::samples(&text, REQUESTS).iter().filter(|s| s.label("response_code") == "200") {
        assert_labels(s, &CURL);
        assert_labels(s, &echo_destination(s.label("destination_workload")));
        assert_labels(s, &ROUTE);
        assert_labels(s, &[("response_flags", "-"), ("connection_security_policy", "mutual_tls")]);
    }
    assert!(t.waypoint_running());
}

// ------------------------------------------------------------------ 8. health and format

for_both_engines!(healthy_traffic_counts_no_waypoint_errors_and_prometheus_shows_istios_25_labels_in_order);
async fn healthy_traffic_counts_no_waypoint_errors_and_prometheus_shows_istios_25_labels_in_order(engine: Engine) {
    let t = start(Options::with_engine(engine)).await;
    let outcome = traffic::run_demo_load(&t, 4, 25, 10).await.expect("demo load");
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    assert_eq!(outcome.ok, 4 * 25 + 10 + 25, "echo from 4 curl clients and the sidecar, ratings from curl");
    metrics_after(&t, outcome.ok).await;
    let text = metrics_when(&t, "histograms for every series", |text| {
        HISTOGRAMS.iter().all(|h| prom::total(text, &format!("{h}_count")) == outcome.ok as f64)
    })
    .await;

    let errors = prom::samples(&text, ERRORS);
    assert!(errors.iter().all(|s| s.value == 0.0), "waypoint_errors_total in a healthy run: {errors:?}");

    let counter_lines = prom::raw_lines(&text, REQUESTS);
    assert!(counter_lines.len() >= 2, "{counter_lines:?}");
    for line in counter_lines {
        assert_eq!(prom::label_names(line).unwrap(), ISTIO_LABELS, "{line}");
    }
    for h in HISTOGRAMS {
        for suffix in ["_count", "_sum"] {
            for line in prom::raw_lines(&text, &format!("{h}{suffix}")) {
                assert_eq!(prom::label_names(line).unwrap(), ISTIO_LABELS, "{line}");
            }
        }
        let buckets = prom::raw_lines(&text, &format!("{h}_bucket"));
        assert!(!buckets.is_empty(), "{h}_bucket");
        for line in buckets {
            let names = prom::label_names(line).unwrap();
            assert_eq!(names[..25], ISTIO_LABELS, "{line}");
            assert_eq!(names[25..], ["le"], "{line}");
        }
    }
    assert!(text.contains(&format!("# TYPE {REQUESTS} counter")), "istio_requests_total is a counter");
    for h in HISTOGRAMS {
        assert!(text.contains(&format!("# TYPE {h} histogram")), "{h} is a histogram");
    }
}
