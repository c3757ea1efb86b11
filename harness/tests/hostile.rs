//! Hostile input through the real local mesh (issue 9): stock Envoy 1.40 as the waypoint
//! with its filters in each engine (`<name>::wasm`, `<name>::native`) and as the east-west
//! gateway, host-shim ztunnels, on loopback.
//! The attacker holds a mesh certificate (curl's, ns/frontend) and speaks HBONE itself
//! ([`harness::hostile::HboneClient`]), or stands in for a destination ztunnel with the
//! destination's real certificate ([`harness::hostile::ForgedDestination`]), or opens
//! connections and says nothing.
//!
//! Expected labels are literals (PROTOCOL.md §4, LEAD-BEHAVIOUR.md); timings are printed
//! and only ever checked against generous bounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::for_both_engines;
use harness::Options;
use harness::hostile::{self, ForgedDestination, ForgedPod, Grpc, HboneClient, HostileError, header};
use harness::http::{Connection, Reply};
use harness::prom::{self, Sample};
use harness::topology::{Engine, PodHbone, Topology};
use harness::traffic::{self, Tally};
use http::{HeaderName, HeaderValue};
use tokio::task::JoinHandle;

const REQUESTS: &str = "istio_requests_total";
const ERRORS: &str = "waypoint_errors_total";

const CURL: &str = "spiffe://cluster.local/ns/frontend/sa/curl";
const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/frontend/sa/productpage";
const ECHO: &str = "spiffe://cluster.local/ns/backend/sa/echo";
const RATINGS: &str = "spiffe://cluster.local/ns/backend/sa/ratings";
const WAYPOINT: &str = "spiffe://cluster.local/ns/backend/sa/waypoint";
const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway";

/// What a client ztunnel sends toward the waypoint: the service VIP (harness mesh file).
const RATINGS_VIP: &str = "10.96.0.11:8080";
const ECHO_HOST: &str = "echo.backend.svc.cluster.local:8080";
const RATINGS_HOST: &str = "ratings.backend.svc.cluster.local:8080";
const HBONE_PORT: u16 = 15008;

/// curl's own labels, as ztunnel-a describes it (e2e.rs).
const CURL_SOURCE: [(&str, &str); 8] = [
    ("source_workload", "curl"),
    ("source_canonical_service", "curl"),
    ("source_canonical_revision", "v1"),
    ("source_workload_namespace", "frontend"),
    ("source_principal", CURL),
    ("source_app", "curl"),
    ("source_version", "v1"),
    ("source_cluster", "cluster1"),
];

/// ratings-v1 as ztunnel-a's CONNECT 200 describes it.
const RATINGS_DESTINATION: [(&str, &str); 8] = [
    ("destination_workload", "ratings-v1"),
    ("destination_workload_namespace", "backend"),
    ("destination_principal", RATINGS),
    ("destination_app", "ratings"),
    ("destination_version", "v1"),
    ("destination_canonical_service", "ratings"),
    ("destination_canonical_revision", "v1"),
    ("destination_cluster", "cluster1"),
];

// ------------------------------------------------------------------ helpers

async fn start(engine: Engine) -> Topology {
    Topology::start(Options::with_engine(engine)).await.unwrap_or_else(|e| panic!("the mesh did not start: {e}"))
}

fn certs(t: &Topology) -> PathBuf {
    t.certs_dir().to_owned()
}

fn waypoint_hbone(t: &Topology) -> SocketAddr {
    SocketAddr::new(t.plan.waypoint(), HBONE_PORT)
}

fn gateway_hbone(t: &Topology) -> SocketAddr {
    SocketAddr::new(t.plan.gateway(), HBONE_PORT)
}

fn curl_entry(t: &Topology) -> SocketAddr {
    t.plan.outbound(t.plan.curl())
}

/// An attacker with curl's certificate, speaking HBONE straight to the waypoint.
async fn attacker(t: &Topology) -> HboneClient {
    let tls = hostile::client_tls(&certs(t), CURL, &[WAYPOINT.to_owned()]).expect("curl's credentials");
    HboneClient::open(waypoint_hbone(t), tls).await.expect("mTLS + h2 to the waypoint")
}

fn baggage(value: &str) -> Vec<(HeaderName, HeaderValue)> {
    vec![header("baggage", value.as_bytes()).unwrap()]
}

/// One CONNECT with `headers`, one GET to ratings inside; panics unless it is answered 200.
async fn forged_request(client: &HboneClient, headers: &[(HeaderName, HeaderValue)], path: &str) -> Reply {
    let reply = hostile::one_request(client, RATINGS_VIP, headers, RATINGS_HOST, path)
        .await
        .unwrap_or_else(|e| panic!("forged request {path}: {e}"));
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply
}

/// The waypoint's `/stats/prometheus` once `ready` holds; panics after 20 s.
async fn metrics_when(t: &Topology, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = t.waypoint_prometheus().await.expect("waypoint /stats/prometheus");
        if ready(&text) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("waited 20 s for {what}; istio_requests_total is:\n{}", prom::raw_lines(&text, REQUESTS).join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The metrics once exactly `requests` requests are counted.
async fn metrics_after(t: &Topology, requests: usize) -> String {
    let text =
        metrics_when(t, &format!("{requests} requests"), |text| prom::total(text, REQUESTS) >= requests as f64).await;
    assert_eq!(prom::total(&text, REQUESTS), requests as f64, "the waypoint counted more requests than were sent");
    text
}

fn assert_labels(sample: &Sample, expected: &[(&str, &str)]) {
    for (name, value) in expected {
        assert_eq!(sample.label(name), *value, "label {name} of {:?}", sample.labels);
    }
}

fn errors_for(text: &str, reason: &str) -> f64 {
    prom::samples(text, ERRORS).iter().filter(|s| s.label("reason") == reason).map(|s| s.value).sum()
}

/// Series whose source is curl's certificate.
fn from_curl(text: &str) -> Vec<Sample> {
    prom::samples(text, REQUESTS).into_iter().filter(|s| s.label("source_principal") == CURL).collect()
}

/// Runs `n` forged requests, `concurrency` at a time over `connections` HBONE
/// connections; `headers_of(i)` gives request i's CONNECT headers.
async fn forged_requests(
    t: &Topology,
    n: usize,
    connections: usize,
    concurrency: usize,
    headers_of: impl Fn(usize) -> Vec<(HeaderName, HeaderValue)> + Send + Sync + 'static,
) {
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Arc::new(attacker(t).await));
    }
    let headers_of = Arc::new(headers_of);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for worker in 0..concurrency {
        let (client, headers_of, next) = (clients[worker % connections].clone(), headers_of.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                forged_request(&client, &headers_of(i), &format!("/forged/{i}")).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("forged client task");
    }
}

/// The mesh with a waypoint whose plugins allow only `cap` label sets per worker.
async fn start_with_label_set_cap(engine: Engine, cap: usize) -> Topology {
    let limits = waypoint_core::Limits { max_label_sets: cap, ..waypoint_core::Limits::default() };
    Topology::start(Options { limits, ..Options::with_engine(engine) })
        .await
        .unwrap_or_else(|e| panic!("the mesh did not start: {e}"))
}

/// Stops ztunnel-b and puts a forged destination with echo's real certificate on both
/// echo pods' HBONE addresses; `baggage_of(workload)` is each pod's CONNECT 200 baggage.
async fn forge_echo_destination(t: &mut Topology, baggage_of: impl Fn(&str) -> String) -> ForgedDestination {
    forge_echo_destination_with(t, |workload| Some(baggage_of(workload))).await
}

/// [`forge_echo_destination`], where `baggage_of` may also send no baggage at all.
async fn forge_echo_destination_with(
    t: &mut Topology,
    baggage_of: impl Fn(&str) -> Option<String>,
) -> ForgedDestination {
    t.stop_ztunnel_b();
    let pods: Vec<ForgedPod> = [(1u8, "echo-v1"), (2, "echo-v2")]
        .into_iter()
        .map(|(n, workload)| ForgedPod {
            hbone: SocketAddr::new(t.plan.echo(n), HBONE_PORT),
            workload: workload.to_owned(),
            baggage: baggage_of(workload).map(String::into_bytes),
        })
        .collect();
    // ztunnel-b's sockets are gone once its process has exited; retry briefly all the same.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ForgedDestination::start(&certs(t), ECHO, pods.clone()).await {
            Ok(forged) => return forged,
            Err(e) if Instant::now() < deadline => {
                eprintln!("forged destination not bound yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("forged destination: {e}"),
        }
    }
}

/// Envoy's timeouts as rendered into a config (name: seconds), for the printout and for
/// making sure a test outlives them.
fn rendered_timeouts(config: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(config).unwrap_or_default();
    let mut found = BTreeMap::new();
    for piece in text.split([',', '{', '}', '\n']) {
        let Some((name, value)) = piece.split_once(':') else { continue };
        let name = name.trim_matches(|c: char| c == '-' || c == '"' || c.is_whitespace());
        let value = value.trim().trim_matches('"');
        if !name.ends_with("timeout") && name != "max_connection_duration" {
            continue;
        }
        if let Some(seconds) = value.strip_suffix('s').and_then(|s| s.parse::<f64>().ok()) {
            let entry = found.entry(name.to_owned()).or_insert(seconds);
            *entry = f64::max(*entry, seconds);
        }
    }
    found
}

// ------------------------------------------------------------------ identity pinning (D1)

for_both_engines!(
    d1_a_destination_claiming_another_namespace_in_its_baggage_is_labelled_with_its_certificates_namespace
);
/// D1: a destination that holds ns/backend's certificate but claims kube-system in its
/// CONNECT 200 baggage is labelled with the namespace of its certificate. The destinations
/// are `hbone-peers` (no product code) in ztunnel-b's place, answering literal baggage.
async fn d1_a_destination_claiming_another_namespace_in_its_baggage_is_labelled_with_its_certificates_namespace(
    engine: Engine,
) {
    let node_b = PodHbone::independent(&[
        (
            "echo-v1",
            "k8s.cluster.name=cluster2,k8s.namespace.name=kube-system,k8s.deployment.name=echo-v1,\
             service.name=echo,service.version=v1",
        ),
        (
            "echo-v2",
            "k8s.cluster.name=cluster2,k8s.namespace.name=kube-system,k8s.deployment.name=echo-v2,\
             service.name=echo,service.version=v2",
        ),
    ]);
    let t = Topology::start(Options { node_b, ..Options::with_engine(engine) }).await.expect("the mesh starts");
    const N: usize = 6;
    let tally = traffic::counting_client(curl_entry(&t), N, 1, vec![]).await;
    assert_eq!(tally.outcome().ok, N, "{tally:?}");
    let served: usize = t.served().iter().map(|(_, n)| n).sum();
    assert_eq!(served, N, "the echo apps behind the independent destinations answered every request");

    let text = metrics_after(&t, N).await;
    for s in prom::samples(&text, REQUESTS) {
        assert_labels(&s, &CURL_SOURCE);
        let workload = s.label("destination_workload").to_owned();
        assert!(workload == "echo-v1" || workload == "echo-v2", "{:?}", s.labels);
        assert_labels(
            &s,
            &[
                ("destination_workload_namespace", "backend"),
                ("destination_principal", ECHO),
                ("destination_cluster", "cluster2"),
                ("destination_canonical_service", "echo"),
                ("destination_app", "echo"),
            ],
        );
    }
    let mismatches = errors_for(&text, "identity_mismatch");
    println!("D1: {N} requests to destinations claiming kube-system; identity_mismatch {mismatches}");
    assert!(mismatches >= 1.0, "the contradiction is counted: {:?}", prom::samples(&text, ERRORS));
}

for_both_engines!(
    a_source_claiming_another_namespace_in_its_connect_baggage_is_labelled_with_its_certificates_namespace
);
/// The same on the source side: curl's certificate (ns/frontend), CONNECT baggage that
/// claims kube-system.
async fn a_source_claiming_another_namespace_in_its_connect_baggage_is_labelled_with_its_certificates_namespace(
    engine: Engine,
) {
    let t = start(engine).await;
    let client = attacker(&t).await;
    const N: usize = 4;
    let forged = baggage(
        "k8s.cluster.name=cluster1,k8s.namespace.name=kube-system,k8s.deployment.name=curl,\
         service.name=curl,service.version=v1",
    );
    for n in 0..N {
        forged_request(&client, &forged, &format!("/forged-ns/{n}")).await;
    }
    let text = metrics_after(&t, N).await;
    let series = prom::samples(&text, REQUESTS);
    assert!(!series.is_empty());
    for s in &series {
        assert_labels(s, &[("source_workload_namespace", "frontend"), ("source_principal", CURL)]);
        assert_labels(s, &RATINGS_DESTINATION);
        assert_ne!(s.label("source_workload_namespace"), "kube-system");
    }
    let mismatches = errors_for(&text, "identity_mismatch");
    println!("forged source namespace: {N} CONNECTs; identity_mismatch {mismatches}");
    assert!(mismatches >= 1.0, "the contradiction is counted: {:?}", prom::samples(&text, ERRORS));
}

for_both_engines!(a_client_certificate_with_two_uri_sans_is_labelled_with_the_first);
/// A client certificate with two URI SANs: the first counts, as in Istio (Envoy joins
/// them with ","). The second root that signs it is added to the waypoint's trust bundle
/// (the harness CA does not keep its key).
async fn a_client_certificate_with_two_uri_sans_is_labelled_with_the_first(engine: Engine) {
    let mut t = start(engine).await;
    let dir = t.dir.join("two-sans");
    std::fs::create_dir_all(&dir).unwrap();
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root = rcgen::CertificateParams::default();
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    root.distinguished_name.push(rcgen::DnType::CommonName, "second mesh root");
    let root_pem = root.self_signed(&root_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(root, root_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.subject_alt_names = vec![
        rcgen::SanType::URI("spiffe://cluster.local/ns/frontend/sa/curl".try_into().unwrap()),
        rcgen::SanType::URI("spiffe://cluster.local/ns/kube-system/sa/attacker".try_into().unwrap()),
    ];
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    leaf.use_authority_key_identifier_extension = true;
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("frontend.curl.cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("frontend.curl.key.pem"), key.serialize_pem()).unwrap();
    // Our side verifies the waypoint against the mesh root; the waypoint trusts both roots.
    let mesh_root = std::fs::read_to_string(certs(&t).join("root.pem")).unwrap();
    std::fs::write(dir.join("root.pem"), &mesh_root).unwrap();
    std::fs::write(certs(&t).join("root.pem"), format!("{mesh_root}{root_pem}")).unwrap();
    t.stop_waypoint();
    t.start_waypoint().await.expect("the waypoint restarts with both roots");

    let tls = hostile::client_tls(&dir, CURL, &[WAYPOINT.to_owned()]).unwrap();
    let client = HboneClient::open(waypoint_hbone(&t), tls).await.expect("the two-SAN certificate is accepted");
    let honest = baggage(
        "k8s.cluster.name=cluster1,k8s.namespace.name=frontend,k8s.deployment.name=curl,\
         service.name=curl,service.version=v1",
    );
    const N: usize = 3;
    for n in 0..N {
        forged_request(&client, &honest, &format!("/two-sans/{n}")).await;
    }
    let text = metrics_after(&t, N).await;
    let series = prom::samples(&text, REQUESTS);
    assert_eq!(series.len(), 1, "{series:?}");
    assert_labels(&series[0], &CURL_SOURCE);
    assert_labels(&series[0], &RATINGS_DESTINATION);
    assert_labels(&series[0], &[("connection_security_policy", "mutual_tls"), ("response_code", "200")]);
}

// ------------------------------------------------------------------ gRPC status (D2)

for_both_engines!(d2_an_app_answering_201_distinct_grpc_statuses_makes_at_most_18_series_per_peer_pair);
/// D2: an app answering 201 distinct grpc-status values makes at most 18 series for one
/// pair of peers: 0..=16 as they are, anything else "-1" (Envoy's `Grpc::Status::InvalidCode`,
/// which Istio prints; LEAD-BEHAVIOUR.md item 2).
async fn d2_an_app_answering_201_distinct_grpc_statuses_makes_at_most_18_series_per_peer_pair(engine: Engine) {
    let mut t = start(engine).await;
    let forged = forge_echo_destination(&mut t, |workload| {
        let version = workload.trim_start_matches("echo-");
        format!(
            "k8s.cluster.name=cluster2,k8s.namespace.name=backend,k8s.deployment.name={workload},\
             service.name=echo,service.version={version}"
        )
    })
    .await;
    // gRPC as an app behind ztunnel-a speaks it: h2c through curl's outbound listener.
    let tcp = tokio::net::TcpStream::connect(curl_entry(&t)).await.unwrap();
    let grpc = Grpc::over(tcp).await.expect("h2c through ztunnel-a");
    const CODES: u32 = 201;
    for code in 0..CODES {
        let answer = grpc.call(ECHO_HOST, &hostile::grpc_status_path(code)).await.expect("gRPC call");
        assert_eq!(answer.http_status, 200, "code {code}: {answer:?}");
        assert_eq!(answer.grpc_status.as_deref(), Some(code.to_string().as_str()), "the app's status passes unchanged");
    }
    assert_eq!(forged.served(), CODES as usize);

    let text = metrics_after(&t, CODES as usize).await;
    let series = prom::samples(&text, REQUESTS);
    let mut per_pair: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut by_status: BTreeMap<String, f64> = BTreeMap::new();
    for s in &series {
        assert_labels(s, &CURL_SOURCE);
        assert_labels(s, &[("request_protocol", "grpc"), ("response_code", "200")]);
        *per_pair.entry((s.label("source_workload").into(), s.label("destination_workload").into())).or_default() += 1;
        *by_status.entry(s.label("grpc_response_status").to_owned()).or_default() += s.value;
    }
    println!("D2: {} series for {CODES} distinct grpc-status values; per pair {per_pair:?}", series.len());
    let allowed: BTreeSet<String> = (0..=16).map(|c: u32| c.to_string()).chain(["-1".to_owned()]).collect();
    for status in by_status.keys() {
        assert!(allowed.contains(status), "grpc_response_status {status:?} is not a gRPC code: {by_status:?}");
    }
    for (pair, n) in &per_pair {
        assert!(*n <= 18, "{pair:?} has {n} series");
    }
    // 0..=16 once each; 17..=200 (184 values) all read "-1".
    assert_eq!(by_status.get("-1"), Some(&184.0), "{by_status:?}");
    for code in 0..=16 {
        assert_eq!(by_status.get(&code.to_string()), Some(&1.0), "code {code}: {by_status:?}");
    }
}

for_both_engines!(an_app_forging_the_waypoints_stats_inputs_changes_no_label);
/// An app cannot set the headers the waypoint's routes hand its stats filter: with no
/// response baggage, the destination labels come from Envoy's endpoint metadata and the
/// service from the route, never from the app's forged `x-wp-*` response headers.
async fn an_app_forging_the_waypoints_stats_inputs_changes_no_label(engine: Engine) {
    let mut t = start(engine).await;
    let forged = forge_echo_destination_with(&mut t, |_| None).await;
    let tcp = tokio::net::TcpStream::connect(curl_entry(&t)).await.unwrap();
    let mut http = hostile::Http1::over(tcp).await.expect("HTTP/1.1 through ztunnel-a");
    for n in 0..4 {
        let reply = http.get(ECHO_HOST, &format!("{}/{n}", hostile::FORGE_STATS_INPUTS)).await.expect("a reply");
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(forged.served(), 4);
    let text = metrics_after(&t, 4).await;
    let series = prom::samples(&text, REQUESTS);
    assert_eq!(series.len(), 1, "{series:#?}");
    assert_labels(&series[0], &CURL_SOURCE);
    assert_labels(
        &series[0],
        &[
            ("destination_workload", "unknown"),
            ("destination_workload_namespace", "backend"),
            ("destination_principal", "spiffe://cluster.local/ns/backend/sa/echo"),
            ("destination_cluster", "cluster2"),
            ("destination_service", "echo.backend.svc.cluster.local"),
            ("destination_service_name", "echo"),
            ("destination_service_namespace", "backend"),
        ],
    );
}

// ------------------------------------------------------------------ the label-set cap (D3)

for_both_engines!(d3_past_the_label_set_cap_forged_peers_keep_their_verified_principal_and_namespace);
/// D3: past a small `max_label_sets`, forged peers (one certificate, many claimed
/// workloads) collapse only the labels no certificate vouches for; the principal and
/// namespace stay; legit traffic keeps its full labels.
async fn d3_past_the_label_set_cap_forged_peers_keep_their_verified_principal_and_namespace(engine: Engine) {
    const CAP: usize = 20;
    let t = start_with_label_set_cap(engine, CAP).await;
    let ratings = t.plan.local_outbound(t.plan.curl());
    let before = traffic::counting_client_for(ratings, &traffic::local_service_host(), 5, usize::MAX, vec![]).await;
    assert_eq!(before.outcome().ok, 5, "{before:?}");

    const FORGED: usize = 120;
    forged_requests(&t, FORGED, 2, 8, |i| {
        baggage(&format!(
            "k8s.cluster.name=cluster1,k8s.namespace.name=frontend,k8s.deployment.name=forged-{i},\
             service.name=forged-{i},service.version=v{i}"
        ))
    })
    .await;
    let after = traffic::counting_client_for(ratings, &traffic::local_service_host(), 5, usize::MAX, vec![]).await;
    assert_eq!(after.outcome().ok, 5, "{after:?}");

    let text = metrics_after(&t, FORGED + 10).await;
    let series = prom::samples(&text, REQUESTS);
    let collapsed: Vec<&Sample> = series.iter().filter(|s| s.label("source_workload") == "unknown").collect();
    println!(
        "D3: {FORGED} forged peers past max_label_sets={CAP}: {} series, {} with the source collapsed",
        series.len(),
        collapsed.len()
    );
    for s in &series {
        // Verified by certificates on both sides: never lost.
        assert_labels(
            s,
            &[
                ("source_principal", CURL),
                ("source_workload_namespace", "frontend"),
                ("destination_principal", RATINGS),
                ("destination_workload_namespace", "backend"),
                ("destination_service", "ratings.backend.svc.cluster.local"),
                ("response_code", "200"),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        let workload = s.label("source_workload");
        if let Some(i) = workload.strip_prefix("forged-") {
            let version = format!("v{i}");
            assert_labels(
                s,
                &[
                    ("source_canonical_service", workload),
                    ("source_app", workload),
                    ("source_canonical_revision", &version),
                    ("source_version", &version),
                    ("source_cluster", "cluster1"),
                ],
            );
        }
    }
    assert!(!collapsed.is_empty(), "{FORGED} peers over 2 workers x {CAP} slots must pass the cap");
    for s in &collapsed {
        assert_labels(
            s,
            &[
                ("source_canonical_service", "unknown"),
                ("source_app", "unknown"),
                ("source_version", "unknown"),
                ("source_cluster", "unknown"),
            ],
        );
        let revision = s.label("source_canonical_revision");
        assert!(revision == "unknown" || revision == "latest", "collapsed revision {revision:?}: {:?}", s.labels);
    }
    // Distinct label sets: at most the cap per worker (2 workers), plus the collapsed ones.
    assert!(series.len() <= 2 * CAP + 2 * 2, "{} series with max_label_sets={CAP}", series.len());
    // curl's own series, defined before the flood, still carries all of curl's labels.
    let curl: f64 = series.iter().filter(|s| s.label("source_workload") == "curl").map(|s| s.value).sum();
    assert_eq!(curl, 10.0, "curl's 10 requests, before and after the flood, with full labels");
    for s in series.iter().filter(|s| s.label("source_workload") == "curl") {
        assert_labels(s, &CURL_SOURCE);
        assert_labels(s, &RATINGS_DESTINATION);
    }
}

for_both_engines!(d3_pod_churn_of_one_deployment_with_envoy_form_baggage_never_fills_the_cap);
/// D3: 500 pods of one deployment, each with its own `k8s.instance.name` (Envoy-form
/// baggage), all read as that deployment, even with a cap of 20 label sets.
async fn d3_pod_churn_of_one_deployment_with_envoy_form_baggage_never_fills_the_cap(engine: Engine) {
    let t = start_with_label_set_cap(engine, 20).await;
    const PODS: usize = 500;
    forged_requests(&t, PODS, 2, 16, |i| {
        baggage(&format!(
            "k8s.deployment.name=reviews-v2,service.name=reviews,service.version=v2,k8s.namespace.name=frontend,\
             k8s.cluster.name=cluster1,k8s.instance.name=reviews-v2-5d8f7c9b4-{i:05},cloud.region=region-a,\
             cloud.availability_zone=zone-a{}",
            i % 3
        ))
    })
    .await;
    let text = metrics_after(&t, PODS).await;
    let series = prom::samples(&text, REQUESTS);
    println!("D3 churn: {PODS} pods of reviews-v2 -> {} series", series.len());
    let mut counted = 0.0;
    for s in &series {
        assert_labels(
            s,
            &[
                ("source_workload", "reviews-v2"),
                ("source_canonical_service", "reviews"),
                ("source_canonical_revision", "v2"),
                ("source_workload_namespace", "frontend"),
                ("source_principal", CURL),
                ("source_app", "reviews"),
                ("source_version", "v2"),
                ("source_cluster", "cluster1"),
            ],
        );
        assert_labels(s, &RATINGS_DESTINATION);
        counted += s.value;
    }
    assert_eq!(counted, PODS as f64);
    assert!(series.len() <= 2, "one label set per worker at most: {}", series.len());
}

for_both_engines!(d3_one_identity_flooding_forged_peers_never_costs_another_identity_its_labels);
/// D3: one identity flooding forged peers fills only its own share
/// (`limits.max_peers_per_identity`, 256 by default): its further peers keep their
/// principal and namespace, and another identity arriving afterwards is fully labelled.
async fn d3_one_identity_flooding_forged_peers_never_costs_another_identity_its_labels(engine: Engine) {
    let t = start(engine).await;
    let target = hostile::FloodTarget {
        certs: certs(&t),
        identity: PRODUCTPAGE.to_owned(),
        hbone: waypoint_hbone(&t),
        expected: vec![WAYPOINT.to_owned()],
        authority: RATINGS_VIP.to_owned(),
        host: RATINGS_HOST.to_owned(),
    };
    const FORGED: usize = 600;
    let outcome = hostile::flood(&target, FORGED, 8, |i| {
        baggage(&format!(
            "k8s.cluster.name=cluster1,k8s.namespace.name=frontend,k8s.deployment.name=forged-{i},\
             service.name=forged-{i},service.version=v{i}"
        ))
    })
    .await;
    assert_eq!((outcome.ok, outcome.failed), (FORGED, 0), "{:?}", outcome.errors);
    // curl's first requests come after the flood.
    let ratings = t.plan.local_outbound(t.plan.curl());
    let legit = traffic::counting_client_for(ratings, &traffic::local_service_host(), 5, 1, vec![]).await;
    assert_eq!(legit.outcome().ok, 5, "{legit:?}");

    let text = metrics_after(&t, FORGED + 5).await;
    let series = prom::samples(&text, REQUESTS);
    let forged: Vec<&Sample> = series.iter().filter(|s| s.label("source_principal") == PRODUCTPAGE).collect();
    let collapsed: f64 = forged.iter().filter(|s| s.label("source_workload") == "unknown").map(|s| s.value).sum();
    println!(
        "D3 per identity: {FORGED} forged peers from one certificate -> {} series, {collapsed} requests collapsed",
        forged.len()
    );
    for s in &forged {
        assert_labels(s, &[("source_workload_namespace", "frontend")]);
        assert_labels(s, &RATINGS_DESTINATION);
    }
    assert!(collapsed >= (FORGED - 2 * 256) as f64, "past 256 peers per identity and worker the source collapses");
    assert!(forged.len() <= 2 * 256 + 2, "{} series for one identity", forged.len());
    let curl: Vec<&Sample> = series.iter().filter(|s| s.label("source_principal") == CURL).collect();
    assert_eq!(curl.iter().map(|s| s.value).sum::<f64>(), 5.0);
    for s in curl {
        assert_labels(s, &CURL_SOURCE);
        assert_labels(s, &RATINGS_DESTINATION);
    }
}

// ------------------------------------------------------------------ D5 and garbled headers

for_both_engines!(d5_a_space_in_the_legacy_header_is_never_read_as_baggage);
/// D5: a space inside `x-envoy-peer-metadata` followed by baggage-like text is never read
/// as baggage.
async fn d5_a_space_in_the_legacy_header_is_never_read_as_baggage(engine: Engine) {
    let t = start(engine).await;
    let client = attacker(&t).await;
    let injected = header("x-envoy-peer-metadata", b"AAAA k8s.deployment.name=injected-via-legacy").unwrap();
    forged_request(&client, std::slice::from_ref(&injected), "/d5/alone").await;
    let mut with_baggage = baggage("k8s.namespace.name=frontend,k8s.deployment.name=curl");
    with_baggage.insert(0, injected);
    forged_request(&client, &with_baggage, "/d5/with-baggage").await;
    let spaced =
        header("x-envoy-peer-metadata", b"  k8s.namespace.name=kube-system,k8s.deployment.name=injected-via-legacy")
            .unwrap();
    forged_request(&client, &[spaced], "/d5/leading-spaces").await;
    // A last member that soaks up whatever follows the injected text (unknown keys are ignored).
    let soaked = header("x-envoy-peer-metadata", b"AAAA k8s.deployment.name=injected-via-legacy,x=").unwrap();
    forged_request(&client, &[soaked], "/d5/soaked").await;

    let text = metrics_after(&t, 4).await;
    let series = prom::samples(&text, REQUESTS);
    println!(
        "D5: source_workload per series {:?}",
        series.iter().map(|s| (s.label("source_workload").to_owned(), s.value)).collect::<Vec<_>>()
    );
    for s in series {
        assert_ne!(s.label("source_workload"), "injected-via-legacy", "{:?}", s.labels);
        assert_labels(&s, &[("source_principal", CURL), ("source_workload_namespace", "frontend")]);
        assert_labels(&s, &RATINGS_DESTINATION);
    }
}

for_both_engines!(oversized_non_utf8_and_duplicate_baggage_read_unknown_with_the_certificates_identity);
/// Oversized, non-UTF-8 and duplicated baggage on the CONNECT: the source reads unknown,
/// with the principal and namespace of the certificate; Envoy keeps serving.
async fn oversized_non_utf8_and_duplicate_baggage_read_unknown_with_the_certificates_identity(engine: Engine) {
    let t = start(engine).await;
    let client = attacker(&t).await;
    let oversized = format!(
        "k8s.namespace.name=frontend,k8s.deployment.name=oversized,service.name=oversized,padding={}",
        "x".repeat(5000)
    );
    forged_request(&client, &baggage(&oversized), "/garbled/oversized").await;
    let non_utf8 =
        header("baggage", b"k8s.deployment.name=caf\xc3\xa9-\xff\xfe,service.name=\xfe\xfe,k8s.namespace.name=\xff")
            .unwrap();
    forged_request(&client, &[non_utf8], "/garbled/non-utf8").await;
    let duplicated = vec![
        header("baggage", b"k8s.deployment.name=dup-one,service.name=dup-one").unwrap(),
        header("baggage", b"k8s.deployment.name=dup-two,service.name=dup-two").unwrap(),
    ];
    forged_request(&client, &duplicated, "/garbled/duplicate").await;

    let text = metrics_after(&t, 3).await;
    let series = prom::samples(&text, REQUESTS);
    println!(
        "garbled baggage: source_workload per series {:?}; waypoint_errors_total {:?}",
        series.iter().map(|s| (s.label("source_workload").to_owned(), s.value)).collect::<Vec<_>>(),
        prom::samples(&text, ERRORS).iter().map(|s| (s.label("reason").to_owned(), s.value)).collect::<Vec<_>>()
    );
    for s in &series {
        assert_labels(s, &[("source_principal", CURL), ("source_workload_namespace", "frontend")]);
        assert_labels(s, &RATINGS_DESTINATION);
        // Duplicates may read as one of the two headers (Envoy's %REQ% takes the first),
        // never as a mix of both; everything else reads unknown.
        let workload = s.label("source_workload");
        assert!(["unknown", "dup-one", "dup-two"].contains(&workload), "{:?}", s.labels);
        assert_labels(s, &[("source_canonical_service", workload), ("source_app", workload)]);
    }
    let unknown: f64 = series.iter().filter(|s| s.label("source_workload") == "unknown").map(|s| s.value).sum();
    assert!(unknown >= 2.0, "the oversized and the non-UTF-8 baggage read unknown: {series:?}");
    // Envoy is still up and legit traffic keeps its labels.
    let legit = traffic::counting_client_for(
        t.plan.local_outbound(t.plan.curl()),
        &traffic::local_service_host(),
        3,
        usize::MAX,
        vec![],
    )
    .await;
    assert_eq!(legit.outcome().ok, 3, "{legit:?}");
    let text = metrics_after(&t, 6).await;
    let curl: Vec<Sample> = from_curl(&text).into_iter().filter(|s| s.label("source_workload") == "curl").collect();
    assert_eq!(curl.iter().map(|s| s.value).sum::<f64>(), 3.0);
    for s in &curl {
        assert_labels(s, &CURL_SOURCE);
    }
}

for_both_engines!(headers_over_envoys_size_limit_are_refused_and_envoy_keeps_serving);
/// Headers past Envoy's limits never reach a 200 and never take Envoy down; legit
/// traffic meanwhile keeps working.
async fn headers_over_envoys_size_limit_are_refused_and_envoy_keeps_serving(engine: Engine) {
    let mut t = start(engine).await;
    let mut refused = Vec::new();
    for (what, headers) in [
        ("one 100 KiB baggage", vec![header("baggage", "k=v,".repeat(25_000).as_bytes()).unwrap()]),
        (
            "200 headers of 1 KiB",
            (0..200).map(|i| header(&format!("x-junk-{i}"), "j".repeat(1024).as_bytes()).unwrap()).collect(),
        ),
        ("a 100 KiB legacy header", vec![header("x-envoy-peer-metadata", "A".repeat(100_000).as_bytes()).unwrap()]),
    ] {
        let client = attacker(&t).await;
        let outcome = hostile::one_request(&client, RATINGS_VIP, &headers, RATINGS_HOST, "/oversized").await;
        let seen = match &outcome {
            Ok(reply) => format!("answered {}", reply.status),
            Err(e) => format!("refused: {e}"),
        };
        println!("{what}: {seen}");
        assert!(outcome.as_ref().map_or(true, |r| r.status != 200), "{what} got through: {seen}");
        refused.push(seen);
        assert!(t.waypoint_running(), "the waypoint died on {what}");
    }
    let legit = traffic::counting_client(curl_entry(&t), 5, usize::MAX, vec![]).await;
    assert_eq!(legit.outcome().ok, 5, "after {refused:?}: {legit:?}");
    let text = metrics_when(&t, "the legit requests", |text| {
        from_curl(text).iter().filter(|s| s.label("source_workload") == "curl").map(|s| s.value).sum::<f64>() >= 5.0
    })
    .await;
    for s in from_curl(&text).iter().filter(|s| s.label("source_workload") == "curl") {
        assert_labels(s, &CURL_SOURCE);
    }
}

// ------------------------------------------------------------------ slow connections (D4)

/// Generous: a slow connection must be gone well before this, whatever the configured
/// timeouts (printed) are. Today's main holds them for ever.
const CLOSE_BOUND: Duration = Duration::from_secs(120);

/// 50 raw TCP connections that send nothing, 50 that finish TLS but never send the h2
/// preface, 20 h2 connections that never open a stream, all at once against `target`.
fn open_silent_connections(target: SocketAddr, tls: Arc<rustls::ClientConfig>) -> [Vec<SilentTask>; 3] {
    let raw = (0..50).map(|_| tokio::spawn(hostile::silent_tcp(target, CLOSE_BOUND))).collect();
    let tls_only = (0..50).map(|_| tokio::spawn(hostile::silent_tls(target, tls.clone(), CLOSE_BOUND))).collect();
    let h2 = (0..20).map(|_| tokio::spawn(hostile::silent_h2(target, tls.clone(), CLOSE_BOUND))).collect();
    [raw, tls_only, h2]
}

type SilentTask = JoinHandle<Result<hostile::Lifetime, HostileError>>;

/// Legit requests through ztunnel-a, one every 200 ms, until `stop` is set.
fn legit_trickle(t: &Topology, stop: Arc<std::sync::atomic::AtomicBool>) -> JoinHandle<Tally> {
    let entry = curl_entry(t);
    tokio::spawn(async move {
        let mut tally = Tally::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tally = tally + traffic::counting_client(entry, 1, 1, vec![]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tally
    })
}

async fn assert_silent_connections_closed(
    t: &Topology,
    name: &str,
    target: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) {
    let config = t.dir.join(format!("{name}.yaml"));
    println!("{name} timeouts as rendered: {:?}", rendered_timeouts(&config));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = legit_trickle(t, stop.clone());
    let [raw, tls_only, h2] = open_silent_connections(target, tls);
    let (raw, tls_only, h2) = (hostile::closes(raw).await, hostile::closes(tls_only).await, hostile::closes(h2).await);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let legit = trickle.await.unwrap();
    println!("{name} :15008, raw TCP, nothing sent:      {raw}");
    println!("{name} :15008, TLS, no HTTP/2 preface:     {tls_only}");
    println!("{name} :15008, HTTP/2, never a stream:     {h2}");
    println!("{name}: legit requests meanwhile: {:?}", legit.by_status);
    for (what, closes) in [("raw TCP", raw), ("TLS without preface", tls_only), ("h2 without streams", h2)] {
        assert_eq!(closes.refused, 0, "{name}, {what}: {closes}");
        assert_eq!(closes.still_open, 0, "{name}, {what}: open after {CLOSE_BOUND:?}: {closes}");
        assert_eq!(closes.closed, closes.opened, "{name}, {what}: {closes}");
    }
    assert!(legit.requests() > 0);
    assert_eq!(legit.outcome().failed, 0, "legit traffic while the slow connections were held: {legit:?}");
}

for_both_engines!(d4_slow_connections_to_the_waypoint_are_closed_and_legit_traffic_is_unaffected);
/// D4 on the waypoint's :15008.
async fn d4_slow_connections_to_the_waypoint_are_closed_and_legit_traffic_is_unaffected(engine: Engine) {
    let mut t = start(engine).await;
    let tls = hostile::client_tls(&certs(&t), CURL, &[WAYPOINT.to_owned()]).unwrap();
    assert_silent_connections_closed(&t, "waypoint", waypoint_hbone(&t), tls).await;
    assert!(t.waypoint_running());
}

for_both_engines!(d4_slow_connections_to_the_east_west_gateway_are_closed_and_legit_traffic_is_unaffected);
/// D4 on the east-west gateway's :15008.
async fn d4_slow_connections_to_the_east_west_gateway_are_closed_and_legit_traffic_is_unaffected(engine: Engine) {
    let t = start(engine).await;
    let tls = hostile::client_tls(&certs(&t), WAYPOINT, &[GATEWAY.to_owned()]).unwrap();
    assert_silent_connections_closed(&t, "gateway", gateway_hbone(&t), tls).await;
}

for_both_engines!(a_long_lived_tunnel_carrying_traffic_every_second_outlives_the_idle_timeouts);
/// A legit tunnel that carries a request every second is not idle: it outlives every
/// idle timeout of the waypoint (HBONE straight to the waypoint, and through ztunnel-a).
async fn a_long_lived_tunnel_carrying_traffic_every_second_outlives_the_idle_timeouts(engine: Engine) {
    let t = start(engine).await;
    let timeouts = rendered_timeouts(&t.dir.join("waypoint.yaml"));
    println!("waypoint timeouts as rendered: {timeouts:?}");
    // Longer than every idle/headers timeout configured (route and connect timeouts aside).
    let longest_idle = timeouts
        .iter()
        .filter(|(name, _)| name.contains("idle") || name.contains("headers") || name.contains("transport_socket"))
        .map(|(_, s)| *s)
        .fold(0.0, f64::max);
    let run_for = Duration::from_secs_f64((longest_idle + 5.0).clamp(20.0, 75.0));
    println!("keeping two tunnels busy for {run_for:?}");

    let client = attacker(&t).await;
    let honest = baggage(
        "k8s.cluster.name=cluster1,k8s.namespace.name=frontend,k8s.deployment.name=curl,\
         service.name=curl,service.version=v1",
    );
    let tunnel = client.connect(RATINGS_VIP, &honest).await.expect("CONNECT");
    assert_eq!(tunnel.status, 200);
    let mut direct = tunnel.http1().await.unwrap();
    let mut through_ztunnel = Connection::open(t.plan.local_outbound(t.plan.curl())).await.unwrap();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < run_for {
        let reply = direct.get(RATINGS_HOST, &format!("/long-lived/{n}")).await;
        let reply = reply.unwrap_or_else(|e| panic!("the direct tunnel was cut after {:?}: {e}", started.elapsed()));
        assert_eq!(reply.status, 200);
        let reply = through_ztunnel.get(&traffic::local_service_host(), &format!("/long-lived-zt/{n}"), &[]).await;
        let reply =
            reply.unwrap_or_else(|e| panic!("the ztunnel-a connection was cut after {:?}: {e}", started.elapsed()));
        assert_eq!(reply.status, 200);
        n += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(!client.is_closed(), "the HBONE connection is still open after {run_for:?}");
    println!("two tunnels carried {n} requests each over {:?}, never cut", started.elapsed());
    let text = metrics_after(&t, 2 * n).await;
    for s in prom::samples(&text, REQUESTS) {
        assert_labels(&s, &CURL_SOURCE);
        assert_labels(&s, &RATINGS_DESTINATION);
    }
}
