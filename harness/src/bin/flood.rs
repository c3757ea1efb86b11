//! `make flood`: the cardinality proof on real Envoy (issue 9, item 2). An attacker with
//! one mesh certificate (curl's, ns/frontend) speaks HBONE straight to the waypoint:
//!
//! 1. legit traffic through ztunnel-a, to both services;
//! 2. FLOOD_PODS (20,000) pods of one deployment, each CONNECT with Envoy-form baggage and
//!    its own `k8s.instance.name`; then a new pod, which must still be labelled;
//! 3. FLOOD_PEERS (20,000) distinct forged peers (distinct workload, service, version);
//! 4. legit traffic again, which must keep its full labels, and one more new pod.
//!
//! The pods use curl's certificate, the forged peers productpage's (ns/frontend both), so
//! the legit client (curl, through ztunnel-a) is another identity than the flooder.
//!
//! It prints the number of `istio_requests_total` series and the waypoint's RSS (peak
//! and end) after each phase, and fails if the series exceed 2 workers x (2 identities x
//! `max_peers_per_identity` + 100) = 1,224 with the defaults, or the waypoint's peak RSS
//! exceeds FLOOD_RSS_BOUND_MIB (512).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use harness::hostile::{self, FloodTarget, header};
use harness::prom::{self, Sample};
use harness::topology::Topology;
use harness::traffic;

const CURL: &str = "spiffe://cluster.local/ns/frontend/sa/curl";
/// The forged peers' certificate: another identity than the legit client's.
const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/frontend/sa/productpage";
const WAYPOINT: &str = "spiffe://cluster.local/ns/backend/sa/waypoint";
const RATINGS_VIP: &str = "10.96.0.11:8080";
const RATINGS_HOST: &str = "ratings.backend.svc.cluster.local:8080";
const HBONE_PORT: u16 = 15008;
const CONCURRENCY: usize = 32;
const LEGIT: usize = 20;
/// The plugin's default `limits.max_peers_per_identity` (filters/core/src/config.rs),
/// when the rendered config does not set one.
const DEFAULT_MAX_PEERS_PER_IDENTITY: usize = 256;
const WORKERS: usize = 2;

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

/// A pod of the churning deployment, as an Envoy-based proxy describes it.
const REVIEWS_SOURCE: [(&str, &str); 8] = [
    ("source_workload", "reviews-v2"),
    ("source_canonical_service", "reviews"),
    ("source_canonical_revision", "v2"),
    ("source_workload_namespace", "frontend"),
    ("source_principal", CURL),
    ("source_app", "reviews"),
    ("source_version", "v2"),
    ("source_cluster", "cluster1"),
];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn reviews_pod(instance: &str) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let value = format!(
        "k8s.deployment.name=reviews-v2,service.name=reviews,service.version=v2,k8s.namespace.name=frontend,\
         k8s.cluster.name=cluster1,k8s.instance.name={instance},cloud.region=region-a,cloud.availability_zone=zone-a1"
    );
    header("baggage", value.as_bytes()).map(|h| vec![h]).unwrap_or_default()
}

fn forged_peer(i: usize) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let value = format!(
        "k8s.cluster.name=cluster1,k8s.namespace.name=frontend,k8s.deployment.name=forged-{i},\
         service.name=forged-{i},service.version=v{i}"
    );
    header("baggage", value.as_bytes()).map(|h| vec![h]).unwrap_or_default()
}

/// Only the istio_requests_total lines: the full exposition of 20,000 series with
/// histograms is hundreds of MiB.
async fn request_series(t: &Topology) -> anyhow::Result<Vec<Sample>> {
    let text = harness::http::get(t.plan.waypoint_admin(), "/stats/prometheus?filter=istio_requests_total")
        .await
        .context("waypoint /stats/prometheus")?
        .text();
    Ok(prom::samples(&text, "istio_requests_total"))
}

/// The series once `ready` holds (a request is counted at stream end), or after 10 s.
async fn series_when(t: &Topology, ready: impl Fn(&[Sample]) -> bool) -> anyhow::Result<Vec<Sample>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let series = request_series(t).await?;
        if ready(&series) || Instant::now() > deadline {
            return Ok(series);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn has_labels(s: &Sample, expected: &[(&str, &str)]) -> bool {
    expected.iter().all(|(name, value)| s.label(name) == *value)
}

fn waypoint_rss(t: &Topology) -> u64 {
    t.memory().into_iter().find(|(name, _)| name == "waypoint").map_or(0, |(_, rss)| rss)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// A limit from the rendered plugin configuration (a JSON string inside the YAML).
fn rendered_limit(t: &Topology, name: &str) -> Option<usize> {
    let yaml = std::fs::read_to_string(t.dir.join("waypoint.yaml")).unwrap_or_default();
    let key = format!(r#"\"{name}\":"#);
    let at = yaml.find(&key)?;
    yaml.get(at + key.len()..)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

struct Phase {
    name: &'static str,
    requests: usize,
    failed: usize,
    seconds: f64,
    series: usize,
    peak_rss: u64,
    end_rss: u64,
}

/// Runs `work` while sampling the waypoint's RSS every 500 ms.
async fn phase<F>(t: &Topology, name: &'static str, work: F) -> anyhow::Result<Phase>
where
    F: std::future::Future<Output = hostile::FloodOutcome> + Send + 'static,
{
    let started = Instant::now();
    let task = tokio::spawn(work);
    let mut peak = waypoint_rss(t);
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(waypoint_rss(t));
    }
    let outcome = task.await.context("flood task")?;
    let seconds = started.elapsed().as_secs_f64();
    if !outcome.errors.is_empty() {
        println!("  {name}: first errors {:?}", outcome.errors);
    }
    let series = request_series(t).await?.len();
    let end_rss = waypoint_rss(t);
    let phase = Phase {
        name,
        requests: outcome.ok + outcome.failed,
        failed: outcome.failed,
        seconds,
        series,
        peak_rss: peak.max(end_rss),
        end_rss,
    };
    println!(
        "flood: {:<22} {:>6} requests ({} failed) in {:>5.1} s ({:>4.0}/s): {:>6} series, waypoint RSS peak {:.0} MiB, end {:.0} MiB",
        phase.name,
        phase.requests,
        phase.failed,
        phase.seconds,
        phase.requests as f64 / phase.seconds.max(0.001),
        phase.series,
        mib(phase.peak_rss),
        mib(phase.end_rss)
    );
    Ok(phase)
}

/// Legit requests through ztunnel-a, to the echo service (other network) and ratings.
async fn legit(t: &Topology) -> traffic::Tally {
    let entry = t.plan.outbound(t.plan.curl());
    let local = t.plan.local_outbound(t.plan.curl());
    traffic::counting_client(entry, LEGIT, 5, vec![]).await
        + traffic::counting_client_for(local, &traffic::local_service_host(), LEGIT, 5, vec![]).await
}

/// Requests counted in series that carry curl's full labels and a known destination.
fn curl_fully_labelled(series: &[Sample]) -> f64 {
    series
        .iter()
        .filter(|s| has_labels(s, &CURL_SOURCE) && s.label("destination_workload") != "unknown")
        .filter(|s| {
            s.label("destination_principal") != "unknown" && s.label("destination_workload_namespace") == "backend"
        })
        .map(|s| s.value)
        .sum()
}

fn reviews_fully_labelled(series: &[Sample]) -> f64 {
    series.iter().filter(|s| has_labels(s, &REVIEWS_SOURCE)).map(|s| s.value).sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let peers = env_or("FLOOD_PEERS", 20_000);
    let pods = env_or("FLOOD_PODS", 20_000);
    let rss_bound_mib = env_or("FLOOD_RSS_BOUND_MIB", 512) as u64;
    let topology = Topology::start(Default::default()).await.context("starting the mesh")?;
    let t = &topology;
    let share = rendered_limit(t, "max_peers_per_identity").unwrap_or(DEFAULT_MAX_PEERS_PER_IDENTITY);
    let cap = rendered_limit(t, "max_label_sets");
    // Per worker: each identity's share of full label sets (curl's pods, productpage's forged
    // peers), plus the collapsed and legit ones (a few per destination and response code).
    let series_bound = WORKERS * (2 * share + 100);
    println!(
        "flood: {pods} pods of one deployment as {CURL}, then {peers} forged peers as {PRODUCTPAGE}, \
         {CONCURRENCY} at a time; max_peers_per_identity {share}, max_label_sets {cap:?}; \
         bounds: {series_bound} series, {rss_bound_mib} MiB; run dir {}",
        t.dir.display()
    );
    let target = FloodTarget {
        certs: t.dir.join("certs"),
        identity: CURL.to_owned(),
        hbone: SocketAddr::new(t.plan.waypoint(), HBONE_PORT),
        expected: vec![WAYPOINT.to_owned()],
        authority: RATINGS_VIP.to_owned(),
        host: RATINGS_HOST.to_owned(),
    };

    let before = legit(t).await;
    ensure!(before.outcome().failed == 0, "legit traffic before the flood failed: {before:?}");
    let start_rss = waypoint_rss(t);
    let start_series = series_when(t, |series| curl_fully_labelled(series) >= (2 * LEGIT) as f64).await?;
    ensure!(
        curl_fully_labelled(&start_series) == (2 * LEGIT) as f64,
        "legit traffic before the flood is not fully labelled: {start_series:?}"
    );
    println!("flood: start: {} series, waypoint RSS {:.0} MiB", start_series.len(), mib(start_rss));

    let churn_target = target.clone();
    let churn = phase(t, "pod churn", async move {
        hostile::flood(&churn_target, pods, CONCURRENCY, |i| reviews_pod(&format!("reviews-v2-5d8f7c9b4-{i:05}"))).await
    })
    .await?;
    let new_pod = hostile::flood(&target, 1, 1, |_| reviews_pod("reviews-v2-5d8f7c9b4-after-churn")).await;
    let after_churn = series_when(t, |series| reviews_fully_labelled(series) >= (pods + 1) as f64).await?;
    let reviews_after_churn = reviews_fully_labelled(&after_churn);
    println!(
        "flood: after {pods} pods: {reviews_after_churn} of {} reviews-v2 requests fully labelled",
        churn.requests + 1
    );

    let flood_target = FloodTarget { identity: PRODUCTPAGE.to_owned(), ..target.clone() };
    let forged =
        phase(t, "forged peers", async move { hostile::flood(&flood_target, peers, CONCURRENCY, forged_peer).await })
            .await?;

    let after = legit(t).await;
    let newest_pod = hostile::flood(&target, 1, 1, |_| reviews_pod("reviews-v2-5d8f7c9b4-after-flood")).await;
    let end_series = series_when(t, |series| {
        curl_fully_labelled(series) >= (4 * LEGIT) as f64 && reviews_fully_labelled(series) >= (pods + 2) as f64
    })
    .await?;
    let curl_labelled = curl_fully_labelled(&end_series);
    let reviews_labelled = reviews_fully_labelled(&end_series);
    let collapsed: BTreeMap<String, f64> =
        end_series.iter().filter(|s| s.label("source_workload") == "unknown").fold(BTreeMap::new(), |mut m, s| {
            *m.entry(format!("{} / {}", s.label("source_principal"), s.label("source_workload_namespace")))
                .or_default() += s.value;
            m
        });
    let end_rss = waypoint_rss(t);
    let peak_rss = churn.peak_rss.max(forged.peak_rss).max(end_rss);
    println!("flood: collapsed sources (principal / namespace: requests): {collapsed:?}");
    println!(
        "flood: end: {} series (bound {series_bound}); waypoint RSS {:.0} MiB at start, peak {:.0} MiB, end {:.0} MiB (bound {rss_bound_mib} MiB)",
        end_series.len(),
        mib(start_rss),
        mib(peak_rss),
        mib(end_rss)
    );
    println!(
        "flood: legit after the flood: {} of {} requests answered; curl fully labelled {} of {} in all; \
         reviews-v2 pods fully labelled {} of {}",
        after.outcome().ok,
        after.requests(),
        curl_labelled,
        4 * LEGIT,
        reviews_labelled,
        churn.requests + 2
    );

    ensure!(churn.failed == 0 && forged.failed == 0, "forged requests failed: {} + {}", churn.failed, forged.failed);
    ensure!(new_pod.ok == 1 && newest_pod.ok == 1, "the new pods' requests failed: {new_pod:?} {newest_pod:?}");
    ensure!(after.outcome().failed == 0, "legit traffic after the flood failed: {after:?}");
    ensure!(
        reviews_after_churn == (pods + 1) as f64,
        "after {pods} pods of one deployment a new pod is no longer fully labelled ({reviews_after_churn} of {})",
        pods + 1
    );
    ensure!(
        reviews_labelled == (pods + 2) as f64,
        "after the forged flood a new pod of reviews-v2 is no longer fully labelled ({reviews_labelled} of {})",
        pods + 2
    );
    ensure!(
        curl_labelled == (4 * LEGIT) as f64,
        "legit traffic lost its labels: {curl_labelled} of {} fully labelled",
        4 * LEGIT
    );
    for s in end_series.iter().filter(|s| [CURL, PRODUCTPAGE].contains(&s.label("source_principal"))) {
        ensure!(s.label("source_workload_namespace") == "frontend", "a forged peer lost its namespace: {:?}", s.labels);
    }
    ensure!(end_series.len() <= series_bound, "{} series > {series_bound}", end_series.len());
    ensure!(mib(peak_rss) <= rss_bound_mib as f64, "waypoint peak RSS {:.0} MiB > {rss_bound_mib} MiB", mib(peak_rss));
    println!("flood: passed");
    Ok(())
}
