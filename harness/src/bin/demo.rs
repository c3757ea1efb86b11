//! `make demo`: the two-network mesh on loopback, some traffic, and the
//! waypoint's two-sided `istio_requests_total`, raw and as a table.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use harness::graph::TrafficGraph;
use harness::prom;
use harness::topology::{Engine, Topology};
use harness::{Options, traffic};

const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 50;
const SIDECAR_REQUESTS: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `make demo ENGINE=native`: the waypoint's filters as the native dynamic module.
    let engine_name = std::env::var("ENGINE").unwrap_or_else(|_| Engine::DEFAULT.name().to_owned());
    let engine = Engine::parse(&engine_name).context("ENGINE is wasm, native or native-noop")?;
    let module = if engine == Engine::Wasm { "waypoint.wasm" } else { "libwaypoint_native.so" };
    println!(
        "starting the mesh: ztunnel-a, waypoint (Envoy 1.40 + {module}), east-west gateway, ztunnel-b, echo-v1, echo-v2"
    );
    let topology = Topology::start(Options::with_engine(engine)).await.context("starting the mesh")?;
    println!("run directory (configs, certificates, logs): {}", topology.dir.display());
    tokio::select! {
        result = run(&topology) => result,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopping everything");
            Ok(())
        }
    }
    // `topology` drops here: every process it started is stopped.
}

async fn run(topology: &Topology) -> anyhow::Result<()> {
    println!(
        "\nsending traffic: {CLIENTS} curl clients x {REQUESTS_PER_CLIENT} keep-alive requests to echo in network-b \
         (each with its own application baggage), {SIDECAR_REQUESTS} from a sidecar-style client \
         (x-envoy-peer-metadata), {REQUESTS_PER_CLIENT} from curl to ratings in network-a"
    );
    let started = Instant::now();
    let outcome = traffic::run_demo_load(topology, CLIENTS, REQUESTS_PER_CLIENT, SIDECAR_REQUESTS).await?;
    // Each keep-alive client is one tunnel to one endpoint: more curl clients until curl
    // reached every echo pod, so the picture has all of curl's edges.
    let mut extra = 0;
    while extra < 16 && !curl_reached_every_echo(topology) {
        let more = traffic::client(
            topology.plan.outbound(topology.plan.curl()),
            REQUESTS_PER_CLIENT,
            vec![("baggage".to_owned(), traffic::app_baggage(CLIENTS + 1 + extra))],
        )
        .await;
        println!("  one more curl client: {} answered 200, {} failed", more.ok, more.failed);
        extra += 1;
    }
    let traffic_ran = started.elapsed();
    println!("  {} requests answered 200, {} failed", outcome.ok, outcome.failed);
    // Histograms reach /stats/prometheus at the next stats flush (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let text = topology.waypoint_prometheus().await?;
    println!("\n== raw istio_requests_total at the waypoint (/stats/prometheus) ==");
    for line in prom::raw_lines(&text, "istio_requests_total") {
        println!("{line}");
    }
    println!("\n== the same, readable ==");
    println!(
        "{:<40} {:<32} {:<12} {:<6} {:>8}",
        "source (namespace, cluster)", "destination (namespace, cluster)", "service", "code", "requests"
    );
    for s in prom::samples(&text, "istio_requests_total") {
        println!(
            "{:<40} {:<32} {:<12} {:<6} {:>8}",
            format!(
                "{} ({}, {})",
                s.label("source_workload"),
                s.label("source_workload_namespace"),
                s.label("source_cluster")
            ),
            format!(
                "{} ({}, {})",
                s.label("destination_workload"),
                s.label("destination_workload_namespace"),
                s.label("destination_cluster")
            ),
            s.label("destination_service_name"),
            s.label("response_code"),
            s.value
        );
    }
    println!("\n== what each server endpoint saw ==");
    for echo in topology.echo.iter().chain([&topology.ratings]) {
        let seen = echo.seen();
        let with_app_baggage =
            seen.iter().filter(|s| s.baggage.as_deref().is_some_and(|b| b.starts_with("user="))).count();
        let leaked = seen
            .iter()
            .filter(|s| s.peer_metadata_leaked || s.baggage.as_deref().is_some_and(|b| b.contains("k8s.")))
            .count();
        println!(
            "{:<8} served {:>4} requests; {:>4} carried the client's own baggage unchanged; {} carried mesh metadata",
            echo.workload,
            seen.len(),
            with_app_baggage,
            leaked
        );
    }
    // The picture: totals over how long the traffic ran (one scrape after it ended).
    let mesh: serde_json::Value = std::fs::read_to_string(topology.dir.join("mesh.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let picture = TrafficGraph::from_exposition(&text, traffic_ran).with_mesh_file(&mesh);
    let out = harness::topology::workspace_root().join("target/demo");
    let (svg, png) = picture.render(&out, "traffic").context("drawing the traffic picture")?;
    println!("\nstopping everything");
    println!("\nthe traffic picture (clusters, workloads, requests/s, error share, p99):");
    println!("  {}", svg.display());
    println!("  {}", png.display());
    Ok(())
}

fn curl_reached_every_echo(topology: &Topology) -> bool {
    topology
        .echo
        .iter()
        .all(|echo| echo.seen().iter().any(|s| s.baggage.as_deref().is_some_and(|b| b.starts_with("user=client-"))))
}
