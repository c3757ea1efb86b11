//! `make bench`, part 1: the waypoint's CPU per request with this project's
//! filters against the same waypoint without them, measured side by side in
//! one run. Two meshes run at once; rounds alternate between them so that
//! both see the same machine. Only the waypoint process's CPU is counted.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use harness::topology::{Options, Topology};
use harness::traffic;

const ROUNDS: usize = 5;
const CONNECTIONS: usize = 4;
const REQUESTS_PER_CONNECTION: usize = 500;

/// How clients use their connections.
#[derive(Clone, Copy)]
enum Shape {
    /// Keep-alive: the per-request cost (the stats role).
    KeepAlive,
    /// A new client connection, hence a new HBONE CONNECT and tunnel, every 10 requests.
    Churn,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::KeepAlive => "keep-alive",
            Shape::Churn => "new connection every 10 requests",
        }
    }
    fn requests_per_connection(self) -> usize {
        match self {
            Shape::KeepAlive => REQUESTS_PER_CONNECTION,
            Shape::Churn => 10,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let with = Topology::start(Options::default()).await.context("the mesh with the filters")?;
    let without = Topology::start(Options { telemetry: false, ..Options::default() }).await.context("the plain mesh")?;
    println!("waypoint CPU per request, with this project's filters vs a plain waypoint (same Envoy 1.40, same mesh)");
    println!("{ROUNDS} alternating rounds of {} requests per side, {CONNECTIONS} concurrent clients", CONNECTIONS * REQUESTS_PER_CONNECTION);
    for shape in [Shape::KeepAlive, Shape::Churn] {
        // One warm-up round each: VM start, first label sets, pools.
        load(&with, shape).await?;
        load(&without, shape).await?;
        let (mut ratios, mut total_with, mut total_without) = (Vec::new(), Duration::ZERO, Duration::ZERO);
        for _ in 0..ROUNDS {
            let a = load(&with, shape).await?;
            let b = load(&without, shape).await?;
            ratios.push(a.cpu.as_secs_f64() / b.cpu.as_secs_f64().max(1e-9));
            total_with += a.cpu;
            total_without += b.cpu;
        }
        ratios.sort_by(f64::total_cmp);
        let requests = (ROUNDS * CONNECTIONS * REQUESTS_PER_CONNECTION) as f64;
        println!(
            "  {:<34} with: {:>6.1} µs/request   plain: {:>6.1} µs/request   ratio {:.2} (median of rounds {:.2}, range {:.2}-{:.2})",
            shape.name(),
            total_with.as_secs_f64() * 1e6 / requests,
            total_without.as_secs_f64() * 1e6 / requests,
            total_with.as_secs_f64() / total_without.as_secs_f64().max(1e-9),
            ratios.get(ratios.len() / 2).copied().unwrap_or_default(),
            ratios.first().copied().unwrap_or_default(),
            ratios.last().copied().unwrap_or_default(),
        );
    }
    Ok(())
}

struct Measured {
    cpu: Duration,
}

/// One round against one mesh: every request must succeed.
async fn load(topology: &Topology, shape: Shape) -> anyhow::Result<Measured> {
    let entry = topology.plan.outbound(topology.plan.curl());
    let before = topology.waypoint_cpu_time().context("reading the waypoint's CPU time")?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..CONNECTIONS {
        let headers = vec![("baggage".to_owned(), traffic::app_baggage(n))];
        let per_connection = shape.requests_per_connection();
        tasks.push(tokio::spawn(async move {
            let mut outcome = traffic::Outcome::default();
            for _ in 0..REQUESTS_PER_CONNECTION / per_connection {
                outcome = outcome + traffic::client(entry, per_connection, headers.clone()).await;
            }
            outcome
        }));
    }
    let mut outcome = traffic::Outcome::default();
    for task in tasks {
        outcome = outcome + task.await?;
    }
    let _elapsed = started.elapsed();
    let after = topology.waypoint_cpu_time().context("reading the waypoint's CPU time")?;
    if outcome.failed > 0 {
        bail!("{} of {} requests failed", outcome.failed, outcome.ok + outcome.failed);
    }
    Ok(Measured { cpu: after.saturating_sub(before) })
}
