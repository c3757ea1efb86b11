//! `make soak`: the mesh under steady churn for SOAK_SECONDS (default 120):
//! clients that reconnect every few requests, to both services, with their own
//! baggage. Every 10 s it prints each process's memory; at the end it checks
//! that nothing failed, that the waypoint counted exactly what the apps
//! served, with no degradation, and that memory and tunnels settled.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use harness::prom;
use harness::topology::Topology;
use harness::traffic::{self, Tally};

const CLIENTS: usize = 8;
const BATCH: usize = 25;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let topology = Topology::start(Default::default()).await.context("starting the mesh")?;
    println!(
        "soak: {seconds} s, {CLIENTS} clients reconnecting every 1-{BATCH} requests; run dir {}",
        topology.dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let plan = topology.plan;
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
    let started = Instant::now();
    let mut first_sample = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()))).await;
        let memory = topology.memory();
        first_sample.get_or_insert_with(|| memory.clone());
        let line: Vec<String> =
            memory.iter().map(|(name, rss)| format!("{name} {:.1} MiB", *rss as f64 / 1048576.0)).collect();
        println!("  {:>4} s  {}", started.elapsed().as_secs(), line.join("  "));
    }
    let mut tally = Tally::default();
    for client in clients {
        tally = tally + client.await?;
    }
    let outcome = tally.outcome();
    println!("soak: {} requests, {} failed", tally.requests(), outcome.failed);

    // Counters are live; histograms wait for the next stats flush.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = topology.waypoint_prometheus().await?;
    let counted = prom::total(&text, "istio_requests_total") as usize;
    let errors = prom::total(&text, "waypoint_errors_total");
    let served: usize = topology.echo.iter().chain([&topology.ratings]).map(|e| e.seen().len()).sum();
    let by_destination = prom::sum_by(&text, "istio_requests_total", "destination_workload");
    println!(
        "soak: the apps served {served}; the waypoint counted {counted} by destination {by_destination:?}; errors {errors}"
    );

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
    for ((name, first), (_, end)) in first_sample.unwrap_or_default().iter().zip(&last) {
        println!(
            "soak: {name} memory {:.1} MiB at 10 s, {:.1} MiB at the end",
            *first as f64 / 1048576.0,
            *end as f64 / 1048576.0
        );
    }

    ensure!(outcome.failed == 0, "{} requests failed: {:?}", outcome.failed, tally.by_status);
    ensure!(counted == served && served == outcome.ok, "counted {counted}, served {served}, answered {}", outcome.ok);
    ensure!(!by_destination.contains_key("unknown"), "requests with an unknown destination: {by_destination:?}");
    ensure!(errors == 0.0, "waypoint_errors_total {errors}");
    ensure!(active == 0, "{active} upstream connections outlived their clients");
    println!("soak: passed");
    Ok(())
}
