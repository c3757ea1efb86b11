//! `make soak`: the mesh under steady churn for SOAK_SECONDS (default 120), with hostile
//! traffic mixed in (issue 9):
//!
//! - legit: clients that reconnect every few requests, to both services, with their own
//!   baggage; a gRPC client whose calls end in every `grpc-status` 0..=200 in turn;
//! - forged peers: an attacker with productpage's certificate speaking HBONE straight to
//!   the waypoint, every CONNECT claiming a new workload; and with curl's, a deployment
//!   whose pods churn (Envoy-form baggage, a new `k8s.instance.name` each time);
//! - slow connections: raw TCP, TLS without the HTTP/2 preface, and HTTP/2 without a
//!   stream, opened all along against the waypoint's and the gateway's :15008.
//!
//! Every 10 s it prints each process's memory. At the end it checks that nothing legit
//! failed, that the waypoint counted exactly what the apps served (legit and forged), that
//! legit traffic kept its labels (no unknown destination, curl's full source labels),
//! that grpc_response_status took only the gRPC codes or "-1", that every slow connection was closed
//! by Envoy before a generous bound, and that memory and tunnels settled.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use harness::grpc::GrpcClient;
use harness::hostile::{self, Closes, FloodOutcome, FloodTarget, header};
use harness::prom;
use harness::topology::{GRPC_PORT, GRPC_SERVICE_HOST, Options, Topology};
use harness::traffic::{self, Tally};

const CLIENTS: usize = 8;
const BATCH: usize = 25;
const CURL: &str = "spiffe://cluster.local/ns/frontend/sa/curl";
const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/frontend/sa/productpage";
const WAYPOINT: &str = "spiffe://cluster.local/ns/backend/sa/waypoint";
const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway";
const RATINGS_VIP: &str = "10.96.0.11:8080";
const RATINGS_HOST: &str = "ratings.backend.svc.cluster.local:8080";
/// A slow connection must be closed by Envoy well before this (the configured idle
/// timeout is 60 s, the TLS handshake timeout 10 s).
const CLOSE_BOUND: Duration = Duration::from_secs(150);
/// The waypoint's RSS must stay under this (`make flood` proves it with 20,000 peers).
const RSS_BOUND_MIB: f64 = 1024.0;

/// curl as ztunnel-a describes it.
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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// What the gRPC client saw: calls answered with the status the app was asked for.
#[derive(Debug, Default, Clone, Copy)]
struct GrpcTally {
    answered: usize,
    wrong_status: usize,
    no_answer: usize,
}

async fn grpc_client(entry: SocketAddr, deadline: Instant) -> GrpcTally {
    let mut tally = GrpcTally::default();
    let mut code: i32 = 0;
    while Instant::now() < deadline {
        let Ok(mut client) = GrpcClient::connect(entry, GRPC_SERVICE_HOST, GRPC_PORT).await else {
            tally.no_answer += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // A new connection every 20 calls: tunnels open and close under the gRPC load too.
        for _ in 0..20 {
            if Instant::now() >= deadline {
                break;
            }
            // tonic reads any status outside 0..=16 as 2 (UNKNOWN), as the waypoint must.
            let expected = if (0..=16).contains(&code) { code } else { 2 };
            match client.unary(&format!("soak-{code}"), code).await {
                Ok(_) if expected == 0 => tally.answered += 1,
                Err(status) if status.code() as i32 == expected && expected != 0 => tally.answered += 1,
                Err(status) if status.code() == tonic::Code::Unavailable => tally.no_answer += 1,
                _ => tally.wrong_status += 1,
            }
            code = (code + 1) % 201;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tally
}

/// A forged peer: a new workload each time.
fn forged_peer(i: usize) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let value = format!(
        "k8s.cluster.name=cluster1,k8s.namespace.name=frontend,k8s.deployment.name=soak-forged-{i},\
         service.name=soak-forged-{i},service.version=v{i}"
    );
    header("baggage", value.as_bytes()).map(|h| vec![h]).unwrap_or_default()
}

/// A new pod of one deployment (Envoy-form baggage, its own `k8s.instance.name`).
fn churning_pod(i: usize) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let value = format!(
        "k8s.deployment.name=reviews-v2,service.name=reviews,service.version=v2,k8s.namespace.name=frontend,\
         k8s.cluster.name=cluster1,k8s.instance.name=reviews-v2-5d8f7c9b4-{i:06}"
    );
    header("baggage", value.as_bytes()).map(|h| vec![h]).unwrap_or_default()
}

/// Forged CONNECTs in batches of 100 until the deadline, every batch with new names:
/// forged peers with productpage's certificate, churning pods with curl's, in turn.
async fn forger(target: FloodTarget, deadline: Instant) -> FloodOutcome {
    let mut total = FloodOutcome::default();
    let mut batch = 0usize;
    while Instant::now() < deadline {
        let base = batch * 100;
        let outcome = if batch.is_multiple_of(2) {
            let forger = FloodTarget { identity: PRODUCTPAGE.to_owned(), ..target.clone() };
            hostile::flood(&forger, 100, 2, move |i| forged_peer(base + i)).await
        } else {
            hostile::flood(&target, 100, 2, move |i| churning_pod(base + i)).await
        };
        batch += 1;
        total.ok += outcome.ok;
        total.failed += outcome.failed;
        total.errors.extend(outcome.errors.into_iter().take(5usize.saturating_sub(total.errors.len())));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    total
}

/// Slow connections against both edge listeners, a few every 5 s until the deadline;
/// then waits for all of them to be closed (or the bound).
async fn slow_connections(
    waypoint: (SocketAddr, Arc<rustls::ClientConfig>),
    gateway: (SocketAddr, Arc<rustls::ClientConfig>),
    deadline: Instant,
) -> BTreeMap<String, Closes> {
    let mut tasks: BTreeMap<String, Vec<_>> = BTreeMap::new();
    while Instant::now() < deadline {
        for (name, (address, tls)) in [("waypoint", &waypoint), ("gateway", &gateway)] {
            for _ in 0..4 {
                tasks
                    .entry(format!("{name} raw TCP"))
                    .or_default()
                    .push(tokio::spawn(hostile::silent_tcp(*address, CLOSE_BOUND)));
                tasks.entry(format!("{name} TLS, no preface")).or_default().push(tokio::spawn(hostile::silent_tls(
                    *address,
                    tls.clone(),
                    CLOSE_BOUND,
                )));
            }
            tasks.entry(format!("{name} h2, no stream")).or_default().push(tokio::spawn(hostile::silent_h2(
                *address,
                tls.clone(),
                CLOSE_BOUND,
            )));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let mut closes = BTreeMap::new();
    for (what, list) in tasks {
        closes.insert(what, hostile::closes(list).await);
    }
    closes
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let topology = Topology::start(Options { grpc: true, ..Options::default() }).await.context("starting the mesh")?;
    println!(
        "soak: {seconds} s, {CLIENTS} clients reconnecting every 1-{BATCH} requests, a gRPC client cycling \
         grpc-status 0..=200, forged peers and slow connections; run dir {}",
        topology.dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let plan = topology.plan;
    let certs = topology.dir.join("certs");
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut round = 0usize;
            while Instant::now() < deadline {
                round += 1;
                // Connections of every length, so tunnels keep opening, idling and closing.
                let per_connection = 1 + (round * 7 + n * 3) % BATCH;
                let baggage = vec![("baggage".to_owned(), traffic::app_baggage(round % 50))];
                tally = tally
                    + if n == 0 {
                        let entry = plan.local_outbound(plan.curl());
                        traffic::counting_client_for(
                            entry,
                            &traffic::local_service_host(),
                            BATCH,
                            per_connection,
                            baggage,
                        )
                        .await
                    } else {
                        traffic::counting_client(plan.outbound(plan.curl()), BATCH, per_connection, baggage).await
                    };
            }
            tally
        }));
    }
    let grpc = tokio::spawn(grpc_client(plan.grpc_outbound(plan.curl()), deadline));
    let target = FloodTarget {
        certs: certs.clone(),
        identity: CURL.to_owned(),
        hbone: plan.waypoint_hbone(),
        expected: vec![WAYPOINT.to_owned()],
        authority: RATINGS_VIP.to_owned(),
        host: RATINGS_HOST.to_owned(),
    };
    let forged = tokio::spawn(forger(target, deadline));
    let waypoint_tls = hostile::client_tls(&certs, CURL, &[WAYPOINT.to_owned()])?;
    let gateway_tls = hostile::client_tls(&certs, WAYPOINT, &[GATEWAY.to_owned()])?;
    let slow = tokio::spawn(slow_connections(
        (plan.waypoint_hbone(), waypoint_tls),
        (plan.hbone(plan.gateway()), gateway_tls),
        deadline,
    ));

    let started = Instant::now();
    let mut first_sample = None;
    let mut last_sample = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()))).await;
        let memory = topology.memory();
        first_sample.get_or_insert_with(|| memory.clone());
        last_sample.clone_from(&memory);
        let line: Vec<String> = memory.iter().map(|(name, rss)| format!("{name} {:.1} MiB", mib(*rss))).collect();
        println!("  {:>4} s  {}", started.elapsed().as_secs(), line.join("  "));
    }
    let mut tally = Tally::default();
    for client in clients {
        tally = tally + client.await?;
    }
    let grpc = grpc.await?;
    let forged = forged.await?;
    let outcome = tally.outcome();
    println!("soak: {} legit HTTP requests, {} failed", tally.requests(), outcome.failed);
    println!(
        "soak: gRPC: {} calls answered with the status asked for, {} with another, {} unanswered",
        grpc.answered, grpc.wrong_status, grpc.no_answer
    );
    println!("soak: forged CONNECTs: {} answered, {} failed {:?}", forged.ok, forged.failed, forged.errors);
    println!("soak: waiting for the slow connections to be closed (bound {CLOSE_BOUND:?}) ...");
    let slow = slow.await?;
    for (what, closes) in &slow {
        println!("soak: slow connections, {what}: {closes}");
    }

    // Counters are live; histograms wait for the next stats flush.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = topology.waypoint_prometheus().await?;
    let series = prom::samples(&text, "istio_requests_total");
    let counted = prom::total(&text, "istio_requests_total") as usize;
    let served_http: usize = topology.echo.iter().chain([&topology.ratings]).map(|e| e.seen().len()).sum();
    let served_grpc: usize = topology.grpc.iter().map(|g| g.seen().len()).sum();
    let served = served_http + served_grpc;
    let legit_series: Vec<&prom::Sample> = series.iter().filter(|s| s.label("source_workload") == "curl").collect();
    let legit_counted: f64 = legit_series.iter().map(|s| s.value).sum();
    let legit_by_destination = legit_series.iter().fold(BTreeMap::<String, f64>::new(), |mut m, s| {
        *m.entry(s.label("destination_workload").to_owned()).or_default() += s.value;
        m
    });
    let grpc_statuses: BTreeSet<String> = series.iter().map(|s| s.label("grpc_response_status").to_owned()).collect();
    let mut grpc_per_pair: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in series.iter().filter(|s| s.label("request_protocol") == "grpc") {
        *grpc_per_pair
            .entry((s.label("source_workload").into(), s.label("destination_workload").into()))
            .or_default() += 1;
    }
    let errors = prom::samples(&text, "waypoint_errors_total").into_iter().filter(|s| s.value > 0.0).fold(
        BTreeMap::<String, f64>::new(),
        |mut m, s| {
            *m.entry(s.label("reason").to_owned()).or_default() += s.value;
            m
        },
    );
    println!(
        "soak: the apps served {served} ({served_http} HTTP, {served_grpc} gRPC); the waypoint counted {counted} in {} series; \
         curl's {legit_counted} by destination {legit_by_destination:?}",
        series.len()
    );
    println!("soak: grpc_response_status values {grpc_statuses:?}; gRPC series per pair {grpc_per_pair:?}");
    println!("soak: waypoint_errors_total by reason (forged peers may add some): {errors:?}");

    // After the idle timeout every client connection's tunnels are gone.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = topology.waypoint_stats().await?;
    let active: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cluster.inbound-vip|") && l.contains(".upstream_cx_active: "))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    println!("soak: upstream connections still open after the idle timeout: {active}");
    let last = topology.memory();
    for ((name, first), (_, end)) in first_sample.clone().unwrap_or_default().iter().zip(&last) {
        println!("soak: {name} memory {:.1} MiB at 10 s, {:.1} MiB at the end", mib(*first), mib(*end));
    }
    let waypoint_of =
        |sample: &[(String, u64)]| sample.iter().find(|(name, _)| name == "waypoint").map_or(0, |(_, rss)| *rss);
    let waypoint_rss = waypoint_of(&last);
    // Flat under load: from the 10 s sample to the last one taken under load.
    let (under_load_first, under_load_last) =
        (waypoint_of(first_sample.as_deref().unwrap_or_default()), waypoint_of(&last_sample));
    println!(
        "soak: waypoint RSS under load {:.1} MiB -> {:.1} MiB (at most +25% + 16 MiB)",
        mib(under_load_first),
        mib(under_load_last)
    );

    let legit_ok = outcome.ok + grpc.answered;
    ensure!(outcome.failed == 0, "{} legit requests failed: {:?}", outcome.failed, tally.by_status);
    ensure!(grpc.wrong_status == 0 && grpc.no_answer == 0, "gRPC calls failed: {grpc:?}");
    ensure!(forged.failed == 0, "forged CONNECTs failed (Envoy refused or broke): {:?}", forged.errors);
    ensure!(
        counted == served && served == legit_ok + forged.ok,
        "counted {counted}, served {served}, answered {} legit + {} forged",
        legit_ok,
        forged.ok
    );
    ensure!(legit_counted as usize == legit_ok, "curl's full labels on {legit_counted} of {legit_ok} legit requests");
    for s in &legit_series {
        for (name, value) in CURL_SOURCE {
            ensure!(s.label(name) == value, "legit traffic lost {name}: {:?}", s.labels);
        }
    }
    ensure!(
        !legit_by_destination.contains_key("unknown"),
        "legit requests with an unknown destination: {legit_by_destination:?}"
    );
    // "" for plain HTTP, the 17 codes, and "-1" (Envoy's InvalidCode) for anything else.
    let allowed: BTreeSet<String> =
        ["".to_owned(), "-1".to_owned()].into_iter().chain((0..=16).map(|c| c.to_string())).collect();
    ensure!(grpc_statuses.is_subset(&allowed), "grpc_response_status outside the gRPC codes: {grpc_statuses:?}");
    ensure!(grpc_per_pair.values().all(|n| *n <= 18), "more than 18 gRPC series for a pair: {grpc_per_pair:?}");
    for (what, closes) in &slow {
        ensure!(closes.still_open == 0 && closes.closed == closes.opened, "slow connections, {what}: {closes}");
    }
    ensure!(active == 0, "{active} upstream connections outlived their clients");
    ensure!(
        mib(under_load_last) <= mib(under_load_first) * 1.25 + 16.0,
        "the waypoint's memory grew under load: {:.1} MiB -> {:.1} MiB",
        mib(under_load_first),
        mib(under_load_last)
    );
    ensure!(mib(waypoint_rss) <= RSS_BOUND_MIB, "waypoint RSS {:.0} MiB > {RSS_BOUND_MIB} MiB", mib(waypoint_rss));
    println!("soak: passed");
    Ok(())
}
