//! `make bench`, part 1: the waypoint's CPU per request, side by side in one
//! run, for three waypoints on the same mesh:
//!
//! - plain: Istio's listener topology without this project's filters;
//! - floor: our Envoy config with a proxy-wasm module that does nothing, i.e.
//!   what Envoy charges for a wasm filter in each of the three positions;
//! - waypoint: our config with dist/waypoint.wasm.
//!
//! The three meshes run at once; rounds rotate the order among them so every
//! one sees the same machine, and only the waypoint process's CPU is counted.
//! The machine is shared and noisy, so the figures are medians over rounds.
//!
//! Arguments, if any, are more builds of the module to compare the same way
//! (`cargo run --release -p harness --bin bench -- /tmp/candidate.wasm`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use harness::topology::{Options, Topology, workspace_root};
use harness::traffic;

const ROUNDS: usize = 9;
const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 400;

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
    fn per_connection(self) -> usize {
        match self {
            Shape::KeepAlive => usize::MAX,
            Shape::Churn => 10,
        }
    }
}

struct Variant {
    name: String,
    mesh: Topology,
    /// CPU µs per request, one per round.
    samples: Vec<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let noop = std::env::var_os("NOOP_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/wasm32-wasip1/release/noop_filter.wasm"));
    if !noop.is_file() {
        bail!("{} is missing: cargo build --release -p noop-filter --target wasm32-wasip1", noop.display());
    }
    let mut variants = vec![
        ("plain".to_owned(), Options { telemetry: false, ..Options::default() }),
        ("floor".to_owned(), Options { module: Some(noop), ..Options::default() }),
        ("waypoint".to_owned(), Options::default()),
    ];
    for candidate in std::env::args().skip(1).map(PathBuf::from) {
        let name = candidate.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        variants.push((name, Options { module: Some(candidate), ..Options::default() }));
    }
    let mut meshes = Vec::new();
    for (name, options) in variants {
        let mesh = Topology::start(options).await.with_context(|| format!("starting the {name} mesh"))?;
        meshes.push(Variant { name, mesh, samples: Vec::new() });
    }
    println!("waypoint CPU per request (Envoy 1.40, --concurrency 2), medians of {ROUNDS} rotating rounds");
    println!("of {} requests per waypoint from {CLIENTS} concurrent clients", CLIENTS * REQUESTS_PER_CLIENT);
    for shape in [Shape::KeepAlive, Shape::Churn] {
        for v in &meshes {
            load(&v.mesh, shape).await?; // warm-up: VM start, first label sets, pools
        }
        for v in &mut meshes {
            v.samples.clear();
        }
        let count = meshes.len();
        for round in 0..ROUNDS {
            for i in 0..count {
                if let Some(v) = meshes.get_mut((i + round) % count) {
                    let cpu = load(&v.mesh, shape).await?;
                    v.samples.push(cpu.as_secs_f64() * 1e6 / (CLIENTS * REQUESTS_PER_CLIENT) as f64);
                }
            }
        }
        let plain = meshes.first().map(|v| median(&v.samples)).unwrap_or(1.0);
        println!("  {}:", shape.name());
        for v in &meshes {
            println!(
                "    {:<12} {:>6.1} µs/request (rounds {:>6.1}-{:>6.1})   x{:.2} of plain",
                v.name,
                median(&v.samples),
                v.samples.iter().copied().fold(f64::INFINITY, f64::min),
                v.samples.iter().copied().fold(0.0, f64::max),
                median(&v.samples) / plain
            );
        }
    }
    Ok(())
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// One round against one mesh; every request must succeed.
async fn load(topology: &Topology, shape: Shape) -> anyhow::Result<Duration> {
    let entry = topology.plan.outbound(topology.plan.curl());
    let before = topology.waypoint_cpu_time().context("reading the waypoint's CPU time")?;
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let headers = vec![("baggage".to_owned(), traffic::app_baggage(n))];
        clients.push(tokio::spawn(traffic::counting_client(
            entry,
            REQUESTS_PER_CLIENT,
            shape.per_connection(),
            headers,
        )));
    }
    let mut tally = traffic::Tally::default();
    for client in clients {
        tally = tally + client.await?;
    }
    let after = topology.waypoint_cpu_time().context("reading the waypoint's CPU time")?;
    let outcome = tally.outcome();
    if outcome.failed > 0 {
        bail!("{} of {} requests failed", outcome.failed, tally.requests());
    }
    Ok(after.saturating_sub(before))
}
