//! Ad hoc (issue 12): the loopback mesh with gRPC, a Prometheus binary (PROMETHEUS_BIN)
//! scraping the waypoint and both ztunnels with the testbed's target labels, steady
//! traffic, then every dashboard panel's query and the traffic picture from PromQL.
//! `PROMETHEUS_BIN=/path/prometheus cargo run -p harness --example local_prometheus`;
//! with `PROMETHEUS_URL=http://ip:port` instead, only the checks against that Prometheus;
//! with `PROMETHEUS_DOCKER=testbed-prometheus`, the same through `docker exec ... wget`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use harness::graph::TrafficGraph;
use harness::grpc::GrpcClient;
use harness::topology::{GRPC_PORT, GRPC_SERVICE_HOST, Topology};
use harness::{Options, dashboards, traffic};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Against a running Prometheus (the Docker testbed's: PROMETHEUS_URL=http://10.251.1.90:9090).
    if let Ok(url) = std::env::var("PROMETHEUS_URL") {
        return check(&url).await;
    }
    // Through `docker exec <container> wget` (the testbed's Prometheus, as testbed.rs asks it).
    if let Ok(container) = std::env::var("PROMETHEUS_DOCKER") {
        return check_in_docker(&container);
    }
    let prometheus_bin = std::env::var("PROMETHEUS_BIN").context("PROMETHEUS_BIN")?;
    let topology = Topology::start(Options { grpc: true, ..Options::default() }).await?;
    let plan = topology.plan;
    let listen = std::net::SocketAddr::new(plan.waypoint(), 19090);
    let config = format!(
        "global: {{scrape_interval: 2s, scrape_timeout: 2s}}\nscrape_configs:\n\
         - job_name: waypoint\n  metrics_path: /stats/prometheus\n  honor_labels: true\n  static_configs:\n  - targets: [\"{}\"]\n    labels: {{namespace: backend, pod: waypoint-1}}\n\
         - job_name: ztunnel\n  metrics_path: /metrics\n  honor_labels: true\n  static_configs:\n  - targets: [\"{}\", \"{}\"]\n    labels: {{app: ztunnel, namespace: istio-system}}\n",
        plan.waypoint_admin(),
        plan.shim_admin(1),
        plan.shim_admin(2)
    );
    let dir = topology.dir.join("prometheus");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("prometheus.yml"), config)?;
    let mut prometheus = tokio::process::Command::new(prometheus_bin)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(std::fs::File::create(dir.join("log"))?)
        .stderr(std::fs::File::create(dir.join("err"))?)
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://{listen}");
    println!("prometheus at {url}");
    // 50 s of traffic: HTTP to echo and ratings, the sidecar client, gRPC to grpc-echo.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(50);
    while tokio::time::Instant::now() < deadline {
        traffic::run_demo_load(&topology, 2, 10, 2).await?;
        if let Ok(mut grpc) = GrpcClient::connect(plan.grpc_outbound(plan.curl()), GRPC_SERVICE_HOST, GRPC_PORT).await {
            let _ = grpc.unary("hello", 0).await;
            let _ = grpc.stream("hello", 3).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    check(&url).await?;
    let _ = prometheus.kill().await;
    Ok(())
}

async fn check(url: &str) -> anyhow::Result<()> {
    let url = url.to_owned();
    let variables = testbed_variables();
    let report = dashboards::check_against(&url, &variables).await?;
    println!("{}", report.summary());
    println!("unexplained empty panels: {}", report.unexplained_empty().len());
    // The client's side: the workload dashboard's outbound panels.
    let mut client = variables.clone();
    client.insert("workload".to_owned(), "curl".to_owned());
    client.insert("namespace".to_owned(), "frontend".to_owned());
    client.insert("cluster".to_owned(), "cluster1".to_owned());
    let report = dashboards::check_against(&url, &client).await?;
    println!("\nwith workload=curl, namespace=frontend, cluster=cluster1:");
    for panel in report.panels.iter().filter(|p| p.dashboard == "Waypoint / Workload") {
        println!("{:<55} has data: {}", panel.panel, panel.has_data());
    }
    let graph = TrafficGraph::from_prometheus(&url, Duration::from_secs(60))
        .await?
        .with_networks([("cluster1", "network-a"), ("cluster2", "network-b")]);
    let (svg, png) = graph.render(&harness::topology::workspace_root().join("target/demo"), "traffic-promql")?;
    println!("picture from PromQL: {} {}", svg.display(), png.display());
    Ok(())
}

fn testbed_variables() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("reporter".to_owned(), "waypoint".to_owned()),
        ("cluster".to_owned(), "cluster2".to_owned()),
        ("namespace".to_owned(), "backend".to_owned()),
        ("workload".to_owned(), "echo-v1".to_owned()),
        ("service".to_owned(), "echo.backend.svc.cluster.local|grpc-echo.backend.svc.cluster.local".to_owned()),
    ])
}

/// One instant query through `docker exec <container> wget`: the series' label sets.
fn docker_query(container: &str, promql: &str) -> anyhow::Result<Vec<harness::prom::Sample>> {
    let url = format!("http://127.0.0.1:9090/api/v1/query?query={}", encode(promql));
    let output =
        std::process::Command::new("docker").args(["exec", container, "wget", "-q", "-O", "-", &url]).output()?;
    anyhow::ensure!(output.status.success(), "docker exec wget: {}", String::from_utf8_lossy(&output.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    anyhow::ensure!(
        answer.get("status").and_then(serde_json::Value::as_str) == Some("success"),
        "Prometheus: {answer}"
    );
    let result = answer.pointer("/data/result").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
    Ok(result
        .iter()
        .map(|series| {
            let labels: BTreeMap<String, String> = series
                .get("metric")
                .and_then(serde_json::Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned())).collect())
                .unwrap_or_default();
            let value = series.pointer("/value/1").and_then(|v| v.as_str()).and_then(|v| v.parse().ok());
            harness::prom::Sample { name: String::new(), labels, value: value.unwrap_or(f64::NAN) }
        })
        .collect())
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn check_in_docker(container: &str) -> anyhow::Result<()> {
    let report = dashboards::check_with(&testbed_variables(), |q| {
        docker_query(container, q).map(|series| series.into_iter().map(|s| s.labels).collect())
    })?;
    println!("{}", report.summary());
    println!("unexplained empty panels: {}", report.unexplained_empty().len());
    let graph = TrafficGraph::from_prometheus_with(Duration::from_secs(60), |q| docker_query(container, q))?
        .with_networks([("cluster1", "network-a"), ("cluster2", "network-b")]);
    let (svg, png) = graph.render(&harness::topology::workspace_root().join("target/testbed"), "traffic")?;
    println!("picture from the testbed's Prometheus: {} {}", svg.display(), png.display());
    Ok(())
}
