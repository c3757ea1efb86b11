//! The Docker testbed's checks (testbed/README.md says what each shows). Ignored by a
//! plain `cargo test`: `make testbed-test` (testbed/testbed.sh test) builds the images,
//! brings the testbed up, runs this with `--ignored`, and tears everything down whatever
//! happens. Docker is driven through its CLI; Prometheus is read through its HTTP query
//! API from inside its container, so the host needs no route into the testbed networks.
//!
//! Every check runs and prints `ok` or `FAIL` with what it saw; the test fails at the end
//! if any did, so one failure never hides the others' results.
//!
//! testbed.sh runs these checks once per engine of the waypoint's filters and names the
//! engine it started in TESTBED_ENGINE (`wasm` or `native`; unset: the default engine);
//! every line says which engine it checked, and one check reads the engine off the
//! running waypoint's config.
//!
//! Observability as users run it: the target labels Kubernetes service discovery would
//! attach (testbed/prometheus.yml), and the PromQL Kiali itself builds for its graph and
//! detail charts (module `kiali`, each query citing its Kiali source), read the way Kiali
//! reads the series (`kiali_request_edges`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use harness::topology::Engine;
use mesh::{Mesh, Workload};
use serde_json::Value;

const PROMETHEUS: &str = "testbed-prometheus";
const CLIENT: &str = "testbed-client";
const WAYPOINT: &str = "testbed-waypoint";
const GATEWAY: &str = "testbed-eastwest-gateway";
const ZTUNNEL_B: &str = "testbed-ztunnel-b";
const MESH_INIT: &str = "testbed-mesh-init";
/// Every container of the testbed (docker-compose.yml's container names).
const CONTAINERS: [&str; 11] = [
    "testbed-mesh-init",
    "testbed-node-a",
    "testbed-ztunnel-a",
    "testbed-client",
    "testbed-waypoint",
    "testbed-eastwest-gateway",
    "testbed-node-b",
    "testbed-ztunnel-b",
    "testbed-echo-v1",
    "testbed-echo-v2",
    "testbed-prometheus",
];
/// The load-spread burst's own application baggage.
const BURST_BAGGAGE: &str = "user.id=bob,session.id=burst-1;ttl=30";
const BURST_CONNECTIONS: usize = 1000;
const MAX_SHARE_RATIO: f64 = 1.2;
/// A failed request "fails fast" when the client has its answer within this.
const FAST: u64 = 1000;

#[test]
#[ignore = "needs the Docker testbed: make testbed-test"]
fn testbed() {
    let started = Instant::now();
    let engine_name = std::env::var("TESTBED_ENGINE").unwrap_or_else(|_| Engine::default().name().to_owned());
    let mut report = Report { engine: engine_name.clone(), passed: 0, failed: Vec::new() };
    let Some(engine) = Engine::parse(&engine_name) else {
        report.check("TESTBED_ENGINE names an engine", Err(anyhow!("{engine_name:?} is neither wasm nor native")));
        report.finish(started);
        return;
    };
    let tb = match Testbed::new() {
        Ok(tb) => tb,
        Err(e) => {
            report.check("testbed found", Err(e));
            report.finish(started);
            return;
        }
    };
    report.check("containers up and healthy", tb.all_up());
    report.check(&format!("the waypoint's filters run in the {} engine", engine.name()), waypoint_engine(engine));
    report.check("addresses of the mesh file are on their containers", tb.addresses());
    report.check("Prometheus scrapes the waypoint, the gateway and both ztunnels", tb.scrapes());
    report.check("two-sided istio_requests_total at the waypoint", tb.two_sided_labels());
    report.check("ztunnels' L4 metrics name the waypoint", tb.shim_metrics());
    report.check("target labels as Kubernetes service discovery attaches them", tb.target_labels());
    report.check("istio_build: the waypoint (proxy) and both ztunnels (ztunnel)", tb.istio_build());
    report.check("Kiali graph: curl (cluster1) -> echo-v1, echo-v2 (cluster2), no unknown node", tb.kiali_graph());
    report.check("Kiali graph, ambient: app!=\"ztunnel\" filter and the ztunnel mTLS branch", tb.kiali_ambient());
    report.check("gRPC through the mesh: Kiali's gRPC charts, exact message counts", tb.kiali_grpc());
    report.check("Kiali detail charts: workload echo-v1, service echo, workload curl", tb.kiali_charts());
    report.check("Grafana dashboards: every panel's query, the testbed's workloads set", dashboards());
    report.check("the traffic picture from Prometheus: curl (cluster1) -> echo-v1, echo-v2 (cluster2)", picture());
    report.check("isolation: network-a cannot reach network-b", tb.isolation());
    report.check("load spread over new connections", tb.load_spread());
    let mut kiali_outage = None;
    report.check(
        "ztunnel-b stopped: fast 503s, counted with flags; started: recovers",
        tb.ztunnel_b_fault(&mut kiali_outage),
    );
    report.check(
        "Kiali during the ztunnel-b outage: the 503s drawn in cluster2",
        kiali_outage.unwrap_or_else(|| Err(anyhow!("not run: the outage step failed before it"))),
    );
    report.check("waypoint killed: client errors; started: recovers", tb.waypoint_fault());
    report.check("servers get the app's baggage unchanged, never ztunnel's", tb.server_baggage());
    report.check("east-west gateway never sees inner baggage", tb.gateway_privacy());
    report.check("no crash loops, nothing restarted but what the test did", tb.no_crash_loops());
    report.finish(started);
}

// ------------------------------------------------------------------ dashboards and picture

/// Every panel of dashboards/*.json run against the testbed's Prometheus with the variables
/// set to its workloads (after the gRPC calls, so the gRPC panels have data): each returns
/// series, or its description says why it cannot have data in the testbed.
fn dashboards() -> Result<String> {
    let variables: BTreeMap<String, String> = [
        ("reporter", "waypoint"),
        ("cluster", "cluster2"),
        ("namespace", "backend"),
        ("workload", "echo-v1"),
        ("service", "echo.backend.svc.cluster.local|grpc-echo.backend.svc.cluster.local"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let report = harness::dashboards::check_with(&variables, |query| {
        prom(query).map(|series| series.into_iter().map(|s| s.labels).collect::<Vec<_>>())
    })?;
    let empty = report.unexplained_empty();
    ensure!(empty.is_empty(), "{} panels without data or a reason:\n{}", empty.len(), report.summary());
    let with_data = report.panels.iter().filter(|p| p.has_data()).count();
    ensure!(with_data > report.panels.len() / 2, "only {with_data} of {} panels drew data", report.panels.len());
    Ok(format!("{with_data} of {} panels drew data, the rest say why they cannot here", report.panels.len()))
}

/// The traffic picture drawn from the testbed's Prometheus, and its content checked.
fn picture() -> Result<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mesh: Value = serde_json::from_str(&std::fs::read_to_string(root.join("testbed/mesh.json"))?)?;
    let graph = harness::graph::TrafficGraph::from_prometheus_with(Duration::from_secs(60), |query| {
        prom(query).map(|series| {
            series
                .into_iter()
                .map(|s| harness::prom::Sample { name: String::new(), labels: s.labels, value: s.value })
                .collect::<Vec<_>>()
        })
    })?
    .with_mesh_file(&mesh);
    let (svg, _png) = graph.render(&root.join("target/testbed"), "traffic")?;
    // Graphviz escapes `-` and `>` in the SVG's text and titles.
    let text = std::fs::read_to_string(&svg)?.replace("&#45;", "-").replace("&gt;", ">");
    let needles = [">curl<", ">echo-v1<", ">echo-v2<", "<title>curl->echo-v1</title>", "<title>curl->echo-v2</title>"];
    for needle in ["cluster1", "cluster2"].into_iter().chain(needles) {
        ensure!(text.contains(needle), "{} lacks {needle:?}", svg.display());
    }
    Ok(format!("{} ({} edges)", svg.display(), graph.edges.len()))
}

/// The HTTP filters of the waypoint's running config are the engine's, and none of the other's:
/// their typed configs' full type URLs (the node's list of extensions names both engines'
/// filters, with type URLs that lack the `type.googleapis.com/` prefix).
fn waypoint_engine(engine: Engine) -> Result<String> {
    let dump = docker(&["exec", WAYPOINT, "wget", "-q", "-O", "-", "http://10.251.1.100:15000/config_dump"])?;
    let wasm = dump.matches("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\"").count();
    let native = dump
        .matches("type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter\"")
        .count();
    let (ours, other) = match engine {
        Engine::Wasm => (wasm, native),
        Engine::Native | Engine::NativeNoop => (native, wasm),
    };
    ensure!(ours > 0 && other == 0, "the config dump has {wasm} wasm and {native} dynamic-module filters");
    Ok(format!("{ours} filters of the {} engine, none of the other", engine.name()))
}

// ------------------------------------------------------------------ report

struct Report {
    /// The engine of the waypoint's filters these checks ran against.
    engine: String,
    passed: usize,
    failed: Vec<String>,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<String>) {
        let engine = &self.engine;
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("testbed ({engine}): ok   {name}: {detail}");
            }
            Err(e) => {
                println!("testbed ({engine}): FAIL {name}: {e:#}");
                self.failed.push(name.to_owned());
            }
        }
    }

    fn finish(self, started: Instant) {
        println!(
            "testbed checks, {} engine: {} passed, {} failed ({:.0}s)",
            self.engine,
            self.passed,
            self.failed.len(),
            started.elapsed().as_secs_f64()
        );
        assert!(self.failed.is_empty(), "{} engine failed: {}", self.engine, self.failed.join("; "));
    }
}

// ------------------------------------------------------------------ docker

fn run(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program).args(args).output().with_context(|| format!("running {program} {}", args.join(" ")))
}

/// `docker ARGS`, its stdout; an error (with its stderr) when it fails.
fn docker(args: &[&str]) -> Result<String> {
    let out = run("docker", args)?;
    if !out.status.success() {
        bail!("docker {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn inspect(container: &str) -> Result<Value> {
    let text = docker(&["inspect", container])?;
    let all: Value = serde_json::from_str(&text).context("docker inspect output")?;
    all.get(0).cloned().ok_or_else(|| anyhow!("docker inspect {container}: nothing"))
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// A container's output since `since` (unix seconds), stdout and stderr together.
fn logs(container: &str, since: Option<f64>) -> Result<String> {
    let since = since.map(|t| format!("{t:.3}"));
    let mut args = vec!["logs"];
    if let Some(since) = &since {
        args.extend(["--since", since.as_str()]);
    }
    args.push(container);
    let out = run("docker", &args)?;
    ensure!(out.status.success(), "docker logs {container}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Polls `probe` until it gives `Ok`, or returns its last error after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("{what}: gave up after {timeout:?}"))),
            #[allow(clippy::disallowed_methods, reason = "a sync test polling docker with a deadline")]
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn wait_healthy(container: &str, timeout: Duration) -> Result<()> {
    wait_for(&format!("{container} healthy"), timeout, || {
        let state = inspect(container)?;
        let health = str_at(&state, "/State/Health/Status");
        ensure!(health == "healthy", "{container} is {}/{health}", str_at(&state, "/State/Status"));
        Ok(())
    })
}

// ------------------------------------------------------------------ prometheus

#[derive(Debug, Clone)]
struct Series {
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Series {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query through Prometheus' HTTP API.
fn prom(query: &str) -> Result<Vec<Series>> {
    let url = format!("http://127.0.0.1:9090/api/v1/query?query={}", url_encode(query));
    let body = docker(&["exec", PROMETHEUS, "wget", "-q", "-O", "-", &url])?;
    let answer: Value = serde_json::from_str(&body).with_context(|| format!("Prometheus answer to {query}"))?;
    ensure!(str_at(&answer, "/status") == "success", "Prometheus: {body}");
    let result = answer.pointer("/data/result").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(result
        .iter()
        .map(|r| Series {
            labels: r
                .get("metric")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned())).collect())
                .unwrap_or_default(),
            value: r.pointer("/value/1").and_then(Value::as_str).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
        })
        .collect())
}

/// A range wide enough to hold what happened since `t` (and two scrapes).
fn window_since(t: f64) -> String {
    format!("{}s", (now() - t).ceil().max(1.0) as u64 + 4)
}

// ------------------------------------------------------------------ client log

#[derive(Debug)]
struct Request {
    status: Option<u64>,
    ms: u64,
    error: Option<String>,
}

impl Request {
    fn ok(&self) -> bool {
        self.status == Some(200)
    }
}

/// The trickle client's requests since `since`.
fn client_requests(since: f64) -> Result<Vec<Request>> {
    Ok(logs(CLIENT, Some(since))?
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v.get("n").is_some())
        .map(|v| Request {
            status: v.get("status").and_then(Value::as_u64),
            ms: v.get("ms").and_then(Value::as_u64).unwrap_or(0),
            error: v.get("error").and_then(Value::as_str).map(str::to_owned),
        })
        .collect())
}

/// Waits for `count` successes in a row since `since`; how long after `since` that was.
fn wait_consecutive_ok(since: f64, count: usize, timeout: Duration) -> Result<Duration> {
    wait_for("client requests succeed again", timeout, || {
        let requests = client_requests(since)?;
        let streak = requests.iter().rev().take_while(|r| r.ok()).count();
        ensure!(streak >= count, "last {streak} requests succeeded, {} requests since", requests.len());
        Ok(Duration::from_secs_f64((now() - since).max(0.0)))
    })
}

// ------------------------------------------------------------------ the testbed

struct Testbed {
    mesh: Mesh,
    /// The trickle client's workload and baggage, as docker-compose.yml starts it.
    client_workload: String,
    client_baggage: String,
    started_at: BTreeMap<String, String>,
}

/// The container that owns a node's network namespace (docker-compose.yml's naming).
fn node_container(node: &str) -> String {
    format!("testbed-{node}")
}

fn arg_after(args: &[Value], flag: &str) -> Option<String> {
    let at = args.iter().position(|a| a.as_str() == Some(flag))?;
    args.get(at + 1).and_then(Value::as_str).map(str::to_owned)
}

impl Testbed {
    fn new() -> Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mesh = Mesh::load(&root.join("testbed/mesh.json")).context("testbed/mesh.json")?;
        let client = inspect(CLIENT).context("is the testbed up? (make testbed)")?;
        let args = client.get("Args").and_then(Value::as_array).cloned().unwrap_or_default();
        let client_workload = arg_after(&args, "--workload").ok_or_else(|| anyhow!("client has no --workload"))?;
        let client_baggage = arg_after(&args, "--baggage").ok_or_else(|| anyhow!("client has no --baggage"))?;
        let mut started_at = BTreeMap::new();
        for c in CONTAINERS {
            started_at.insert(c.to_owned(), str_at(&inspect(c)?, "/State/StartedAt").to_owned());
        }
        Ok(Self { mesh, client_workload, client_baggage, started_at })
    }

    fn client(&self) -> Result<&Workload> {
        self.mesh
            .workload(&self.client_workload)
            .ok_or_else(|| anyhow!("{} is not in the mesh file", self.client_workload))
    }

    fn all_up(&self) -> Result<String> {
        for c in CONTAINERS {
            let state = inspect(c)?;
            let status = str_at(&state, "/State/Status");
            if c == MESH_INIT {
                let code = state.pointer("/State/ExitCode").and_then(Value::as_i64);
                ensure!(status == "exited" && code == Some(0), "{c} is {status}, exit code {code:?}");
                continue;
            }
            ensure!(status == "running", "{c} is {status}");
            let health = str_at(&state, "/State/Health/Status");
            ensure!(health.is_empty() || health == "healthy", "{c} is {health}");
        }
        Ok(format!("{} containers, mesh-init exited 0", CONTAINERS.len()))
    }

    /// Every address of the mesh file is configured in the network namespace that serves it.
    fn addresses(&self) -> Result<String> {
        let mut expected: Vec<(String, String)> =
            self.mesh.workloads.iter().map(|w| (node_container(&w.node), w.address.to_string())).collect();
        for s in &self.mesh.services {
            if let Some(w) = &s.waypoint {
                expected.push((WAYPOINT.to_owned(), w.address.ip().to_string()));
            }
        }
        for n in self.mesh.networks.values() {
            if let Some(g) = &n.east_west_gateway {
                expected.push((GATEWAY.to_owned(), g.address.ip().to_string()));
            }
        }
        expected.sort();
        expected.dedup();
        let mut seen = Vec::new();
        for (container, address) in expected {
            let addrs = docker(&["exec", &container, "ip", "-4", "-o", "addr", "show"])?;
            ensure!(addrs.contains(&format!("inet {address}/")), "{address} is not on {container}:\n{addrs}");
            seen.push(format!("{address}@{}", container.trim_start_matches("testbed-")));
        }
        Ok(seen.join(", "))
    }

    fn scrapes(&self) -> Result<String> {
        wait_for("every target up", Duration::from_secs(30), || {
            let up = prom("up")?;
            let mut seen = Vec::new();
            for (job, node) in [
                ("waypoint", "waypoint"),
                ("eastwest-gateway", "eastwest-network-b"),
                ("ztunnel", "node-a"),
                ("ztunnel", "node-b"),
            ] {
                let target = up.iter().find(|s| s.label("job") == job && s.label("node") == node);
                ensure!(target.is_some_and(|s| s.value == 1.0), "{job}/{node} is not up: {target:?}");
                seen.push(format!("{job}/{node}"));
            }
            Ok(format!("up == 1 for {}", seen.join(", ")))
        })
    }

    /// A waypoint series with every label from the mesh file, nothing unknown.
    fn check_series(&self, s: &Series) -> Result<()> {
        let src = self.client()?;
        let service = self.mesh.services.first().ok_or_else(|| anyhow!("the mesh file has no service"))?;
        let dst_name = s.label("destination_workload");
        let dst =
            self.mesh.endpoints(service).find(|w| w.name == dst_name).ok_or_else(|| {
                anyhow!("destination_workload {dst_name:?} is not an endpoint of {}", service.hostname)
            })?;
        let want = [
            ("source_workload", src.name.clone()),
            ("source_workload_namespace", src.namespace.clone()),
            ("source_canonical_service", src.canonical_service.clone()),
            ("source_canonical_revision", src.canonical_revision.clone()),
            ("source_principal", self.mesh.identity_of(src)),
            ("source_cluster", src.cluster.clone()),
            ("destination_workload_namespace", dst.namespace.clone()),
            ("destination_canonical_service", dst.canonical_service.clone()),
            ("destination_canonical_revision", dst.canonical_revision.clone()),
            ("destination_principal", self.mesh.identity_of(dst)),
            ("destination_cluster", dst.cluster.clone()),
            ("destination_service", service.hostname.clone()),
            ("destination_service_name", service.name.clone()),
            ("destination_service_namespace", service.namespace.clone()),
        ];
        for (label, value) in want {
            ensure!(s.label(label) == value, "{label}={:?}, want {value:?} in {:?}", s.label(label), s.labels);
        }
        ensure!(src.cluster == "cluster1" && dst.cluster == "cluster2", "the mesh file's clusters changed");
        let unknown: Vec<&String> = s.labels.iter().filter(|(_, v)| *v == "unknown").map(|(k, _)| k).collect();
        ensure!(unknown.is_empty(), "unknown labels {unknown:?} in {:?}", s.labels);
        Ok(())
    }

    /// The 200 series at the waypoint that grew over `window` (all of them when None).
    fn labelled_ok_series(&self, window: Option<String>) -> Result<String> {
        let selector = r#"istio_requests_total{job="waypoint",reporter="waypoint",response_code="200",destination_service="echo.backend.svc.cluster.local"}"#;
        let query = match &window {
            Some(w) => format!("increase({selector}[{w}]) > 0"),
            None => selector.to_owned(),
        };
        let series = prom(&query)?;
        ensure!(!series.is_empty(), "no series for {query}");
        let mut destinations = BTreeSet::new();
        for s in &series {
            self.check_series(s)?;
            destinations.insert(format!(
                "{}({})",
                s.label("destination_workload"),
                s.label("destination_canonical_revision")
            ));
        }
        let unknown = prom(&format!(
            r#"increase(istio_requests_total{{job="waypoint",reporter="waypoint",response_code="200",destination_service="echo.backend.svc.cluster.local",destination_workload="unknown"}}[{}])"#,
            window.unwrap_or_else(|| "1h".into())
        ))?;
        ensure!(unknown.iter().all(|s| s.value == 0.0), "200s with an unknown destination: {unknown:?}");
        let first = series.first().map(|s| s.labels.clone()).unwrap_or_default();
        Ok(format!(
            "source {}/{} ({}, {}, rev {}) -> destinations {} in {}, principals {} -> {}",
            first.get("source_workload_namespace").map_or("", String::as_str),
            first.get("source_workload").map_or("", String::as_str),
            first.get("source_cluster").map_or("", String::as_str),
            first.get("source_principal").map_or("", String::as_str),
            first.get("source_canonical_revision").map_or("", String::as_str),
            destinations.into_iter().collect::<Vec<_>>().join(" "),
            first.get("destination_cluster").map_or("", String::as_str),
            first.get("source_principal").map_or("", String::as_str),
            first.get("destination_principal").map_or("", String::as_str),
        ))
    }

    fn two_sided_labels(&self) -> Result<String> {
        wait_for("labelled traffic at the waypoint", Duration::from_secs(60), || self.labelled_ok_series(None))
    }

    /// The ztunnels' own view: ztunnel-b's inbound tunnels come from the waypoint (its
    /// CONNECT baggage and TLS identity), ztunnel-a's outbound ones go to it.
    fn shim_metrics(&self) -> Result<String> {
        let waypoint = self.mesh.workload("waypoint").ok_or_else(|| anyhow!("no waypoint workload"))?;
        let waypoint_id = self.mesh.identity_of(waypoint);
        let inbound =
            prom(r#"istio_tcp_connections_opened_total{job="ztunnel",node="node-b",reporter="destination"}"#)?;
        ensure!(!inbound.is_empty(), "ztunnel-b reports no inbound connections");
        for s in &inbound {
            ensure!(
                s.label("source_workload") == "waypoint"
                    && s.label("source_principal") == waypoint_id
                    && s.label("source_cluster") == waypoint.cluster
                    && s.label("destination_cluster") == "cluster2",
                "ztunnel-b inbound series {:?}",
                s.labels
            );
        }
        let outbound = prom(r#"istio_tcp_connections_opened_total{job="ztunnel",node="node-a",reporter="source"}"#)?;
        ensure!(!outbound.is_empty(), "ztunnel-a reports no outbound connections");
        for s in &outbound {
            ensure!(
                s.label("source_workload") == self.client_workload && s.label("destination_principal") == waypoint_id,
                "ztunnel-a outbound series {:?}",
                s.labels
            );
        }
        Ok(format!(
            "ztunnel-b inbound from {} ({}), ztunnel-a outbound {} -> {}",
            waypoint.name, waypoint_id, self.client_workload, waypoint_id
        ))
    }

    /// Nothing on network-a reaches network-b or transit directly; the waypoint reaches
    /// network-b only through the gateway. Each target is first shown to be listening.
    fn isolation(&self) -> Result<String> {
        let mut network_b = Vec::new();
        for w in self.mesh.workloads.iter().filter(|w| w.network == "network-b") {
            network_b.push(format!("{}:{}", w.address, self.mesh.hbone_port));
            for s in self.mesh.services_of(w) {
                network_b.push(format!("{}:{}", w.address, s.target_port));
            }
        }
        let on_b = |container: &str| -> Result<String> {
            let state = inspect(container)?;
            let ip = str_at(&state, "/NetworkSettings/Networks/testbed-network-b/IPAddress");
            ensure!(!ip.is_empty(), "{container} has no address on network-b");
            Ok(ip.to_owned())
        };
        network_b.push(format!("{}:15020", on_b("testbed-node-b")?));
        network_b.push(format!("{}:15000", on_b(GATEWAY)?));
        let transit: Vec<String> = self
            .mesh
            .networks
            .values()
            .filter_map(|n| n.east_west_gateway.as_ref())
            .map(|g| g.address.to_string())
            .collect();
        let waypoint_addr = self
            .mesh
            .services
            .iter()
            .find_map(|s| s.waypoint.as_ref())
            .map(|w| w.address.to_string())
            .ok_or_else(|| anyhow!("no waypoint address"))?;

        // (container, command, target, must connect)
        let probe = |container: &str, target: &str| -> Vec<String> {
            if container == WAYPOINT {
                let (ip, port) = target.rsplit_once(':').unwrap_or((target, ""));
                ["exec", container, "nc", "-w", "2", ip, port].iter().map(|s| s.to_string()).collect()
            } else {
                ["exec", container, "mesh-app", "probe", target].iter().map(|s| s.to_string()).collect()
            }
        };
        let mut plan: Vec<(String, String, bool)> = Vec::new();
        for t in &network_b {
            plan.push(("testbed-node-b".into(), t.clone(), true));
            plan.push((CLIENT.into(), t.clone(), false));
            plan.push((WAYPOINT.into(), t.clone(), false));
        }
        for t in &transit {
            plan.push((WAYPOINT.into(), t.clone(), true));
            plan.push((CLIENT.into(), t.clone(), false));
        }
        plan.push((CLIENT.into(), waypoint_addr.clone(), true));
        // All at once: a dropped SYN takes the whole 2 s timeout.
        let children: Vec<(String, String, bool, std::io::Result<Child>)> = plan
            .into_iter()
            .map(|(c, t, want)| {
                let args = probe(&c, &t);
                let child = Command::new("docker")
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn();
                (c, t, want, child)
            })
            .collect();
        let mut wrong = Vec::new();
        let mut blocked = 0;
        for (c, t, want, child) in children {
            let out = child.and_then(Child::wait_with_output).with_context(|| format!("probe {t} from {c}"))?;
            let connected = out.status.success();
            if connected != want {
                wrong.push(format!(
                    "{c} -> {t}: {} ({})",
                    if connected { "connected" } else { "failed" },
                    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim()
                ));
            } else if !want {
                blocked += 1;
            }
        }
        ensure!(wrong.is_empty(), "{}", wrong.join("; "));
        Ok(format!(
            "{blocked} direct connections blocked (client -> {} network-b and {} transit targets, waypoint -> network-b), \
             all of them listening; client -> waypoint {waypoint_addr} connects",
            network_b.len(),
            transit.len()
        ))
    }

    /// ≥ 1000 new connections, one request each, one after another: each server
    /// endpoint's share of them, from the client's replies and from the servers' logs.
    fn load_spread(&self) -> Result<String> {
        let service = self.mesh.services.first().ok_or_else(|| anyhow!("no service"))?;
        let endpoints: Vec<String> = self.mesh.endpoints(service).map(|w| w.name.clone()).collect();
        let tunnels = || -> Result<BTreeMap<String, f64>> {
            Ok(prom(r#"sum by (destination_workload) (istio_tcp_connections_opened_total{job="ztunnel",node="node-b",reporter="destination"})"#)?
                .into_iter()
                .map(|s| (s.label("destination_workload").to_owned(), s.value))
                .collect())
        };
        let tunnels_before = tunnels()?;
        let since = now();
        let connections = BURST_CONNECTIONS.to_string();
        let out = docker(&[
            "exec",
            CLIENT,
            "mesh-app",
            "burst",
            "--mesh",
            "/etc/mesh/mesh.json",
            "--workload",
            &self.client_workload,
            "--connections",
            &connections,
            "--concurrency",
            "1",
            "--baggage",
            BURST_BAGGAGE,
        ])?;
        let summary: Value = serde_json::from_str(out.trim()).with_context(|| format!("burst summary {out}"))?;
        let ok = summary.get("ok").and_then(Value::as_u64).unwrap_or(0);
        let failed = summary.get("failed").and_then(Value::as_u64).unwrap_or(0);
        let counted = |name: &str| summary.pointer(&format!("/workloads/{name}")).and_then(Value::as_u64).unwrap_or(0);
        let shares: Vec<(String, u64)> = endpoints.iter().map(|e| (e.clone(), counted(e))).collect();
        // The servers' own account of the same requests.
        #[allow(clippy::disallowed_methods, reason = "a sync test; container logs have no readiness signal")]
        std::thread::sleep(Duration::from_millis(500));
        let mut served = Vec::new();
        for e in &endpoints {
            let text = logs(&format!("testbed-{e}"), Some(since - 1.0))?;
            served.push((e.clone(), text.lines().filter(|l| l.contains("\"path\":\"/burst/")).count() as u64));
        }
        #[allow(clippy::disallowed_methods, reason = "a sync test waiting out one Prometheus scrape of ztunnel-b")]
        std::thread::sleep(Duration::from_secs(3));
        let tunnels_after = tunnels()?;
        let new_tunnels: Vec<String> = endpoints
            .iter()
            .map(|e| {
                let delta =
                    tunnels_after.get(e).copied().unwrap_or(0.0) - tunnels_before.get(e).copied().unwrap_or(0.0);
                format!("{e} +{delta}")
            })
            .collect();
        let max = shares.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let min = shares.iter().map(|(_, n)| *n).min().unwrap_or(0);
        let ratio = if min == 0 { f64::INFINITY } else { max as f64 / min as f64 };
        let detail = format!(
            "{ok} of {BURST_CONNECTIONS} new connections answered ({failed} failed) in {:.1}s; replies by endpoint {}; \
             servers logged {}; max/min {ratio:.2} (limit {MAX_SHARE_RATIO}); new tunnels at ztunnel-b: {}; \
             first errors: {}",
            summary.get("seconds").and_then(Value::as_f64).unwrap_or(0.0),
            shares.iter().map(|(e, n)| format!("{e} {n}")).collect::<Vec<_>>().join(", "),
            served.iter().map(|(e, n)| format!("{e} {n}")).collect::<Vec<_>>().join(", "),
            new_tunnels.join(", "),
            summary.get("errors").map(Value::to_string).unwrap_or_default(),
        );
        ensure!(ok == BURST_CONNECTIONS as u64 && failed == 0, "{detail}");
        ensure!(served == shares, "the servers' logs disagree with the replies: {detail}");
        ensure!(ratio <= MAX_SHARE_RATIO, "uneven: {detail}");
        Ok(detail)
    }

    /// `kiali` gets the Kiali outage check's result, taken while ztunnel-b is down.
    fn ztunnel_b_fault(&self, kiali: &mut Option<Result<String>>) -> Result<String> {
        let t0 = now();
        docker(&["stop", ZTUNNEL_B])?;
        let stopped = now();
        let failures = wait_for("client sees 503s", Duration::from_secs(30), || {
            let requests = client_requests(stopped)?;
            ensure!(requests.iter().filter(|r| !r.ok()).count() >= 10, "{} requests since the stop", requests.len());
            Ok(requests)
        })?;
        let wrong: Vec<&Request> = failures.iter().filter(|r| r.status != Some(503) || r.ms > FAST).collect();
        ensure!(wrong.is_empty(), "with ztunnel-b stopped, not a fast 503: {wrong:?}");
        let slowest = failures.iter().map(|r| r.ms).max().unwrap_or(0);
        let counted = wait_for("503s in the waypoint's metrics", Duration::from_secs(30), || {
            let q = format!(
                r#"sum by (response_code, response_flags) (increase(istio_requests_total{{job="waypoint",reporter="waypoint",response_code="503"}}[{}]))"#,
                window_since(t0)
            );
            let series = prom(&q)?;
            let flagged: Vec<String> = series
                .iter()
                .filter(|s| s.value > 0.0 && !s.label("response_flags").is_empty() && s.label("response_flags") != "-")
                .map(|s| format!("503 flags={} (+{:.0})", s.label("response_flags"), s.value))
                .collect();
            ensure!(!flagged.is_empty(), "no flagged 503 series yet: {series:?}");
            Ok(flagged.join(", "))
        })?;
        *kiali = Some(self.kiali_outage());

        let t1 = now();
        docker(&["start", ZTUNNEL_B])?;
        let recovered = wait_consecutive_ok(t1, 10, Duration::from_secs(30))?;
        wait_healthy(ZTUNNEL_B, Duration::from_secs(30))?;
        let labels = wait_for("labelled 200s again", Duration::from_secs(30), || {
            self.labelled_ok_series(Some(window_since(t1)))
        })?;
        Ok(format!(
            "{} requests failed with 503 (slowest {slowest} ms); metrics: {counted}; restarted: 10 successes in a row \
             after {:.1}s, two-sided again ({labels})",
            failures.len(),
            recovered.as_secs_f64()
        ))
    }

    fn waypoint_fault(&self) -> Result<String> {
        let t0 = now();
        docker(&["kill", WAYPOINT])?;
        let errors = wait_for("client sees errors", Duration::from_secs(30), || {
            let requests = client_requests(t0)?;
            let failed: Vec<&Request> = requests.iter().filter(|r| !r.ok()).collect();
            ensure!(failed.len() >= 2, "{} failures since the kill", failed.len());
            // The first may have been answered just before the kill.
            ensure!(requests.iter().skip(1).all(|r| !r.ok()), "a request succeeded with the waypoint dead");
            Ok(failed
                .iter()
                .map(|r| r.error.clone().unwrap_or_else(|| format!("status {:?}", r.status)))
                .collect::<Vec<_>>())
        })?;
        let t1 = now();
        docker(&["start", WAYPOINT])?;
        let recovered = wait_consecutive_ok(t1, 10, Duration::from_secs(60))?;
        wait_healthy(WAYPOINT, Duration::from_secs(60))?;
        let labels = wait_for("labelled 200s again", Duration::from_secs(30), || {
            self.labelled_ok_series(Some(window_since(t1)))
        })?;
        let mut kinds: Vec<String> = errors.iter().map(|e| e.rsplit(": ").next().unwrap_or(e).to_owned()).collect();
        kinds.sort();
        kinds.dedup();
        Ok(format!(
            "{} client errors while it was down ({}); restarted: 10 successes in a row after {:.1}s; two-sided again: {labels}",
            errors.len(),
            kinds.join(", "),
            recovered.as_secs_f64()
        ))
    }

    /// Everything both servers received during the run.
    fn server_baggage(&self) -> Result<String> {
        let service = self.mesh.services.first().ok_or_else(|| anyhow!("no service"))?;
        let mut counts = Vec::new();
        for e in self.mesh.endpoints(service) {
            let container = format!("testbed-{}", e.name);
            let (mut trickle, mut burst) = (0, 0);
            for line in logs(&container, None)?.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
                let Some(path) = v.get("path").and_then(Value::as_str) else { continue };
                let baggage = v.get("baggage").and_then(Value::as_str);
                let want = if path.starts_with("/trickle/") {
                    trickle += 1;
                    self.client_baggage.as_str()
                } else if path.starts_with("/burst/") {
                    burst += 1;
                    BURST_BAGGAGE
                } else {
                    bail!("{container} got an unexpected request: {line}");
                };
                ensure!(baggage == Some(want), "{container} got baggage {baggage:?} for {path}, the app sent {want:?}");
                ensure!(
                    v.get("peer_metadata_leaked") == Some(&Value::Bool(false)),
                    "{container}: metadata leaked: {line}"
                );
            }
            counts.push(format!("{}: {trickle} trickle + {burst} burst requests", e.name));
        }
        Ok(format!("{}; each with the client's own baggage exactly, no ztunnel or peer metadata", counts.join(", ")))
    }

    /// The gateway logs every outer CONNECT's headers (http:debug) and one access-log line
    /// per outer CONNECT; none of it holds a peer's baggage, the app's, or x-forwarded-network.
    fn gateway_privacy(&self) -> Result<String> {
        let text = logs(GATEWAY, None)?;
        let connects = text.matches("':method', 'CONNECT'").count();
        let access: Vec<&str> = text.lines().filter(|l| l.contains("] CONNECT authority=")).collect();
        ensure!(connects > 0, "the gateway logged no CONNECT headers (is http:debug on?)");
        ensure!(!access.is_empty(), "the gateway logged no access-log lines");
        // Every peer's baggage has k8s.* members; the inner CONNECT's x-forwarded-network
        // names the waypoint's network; the app's own baggage travels inside the inner TLS.
        let forbidden: Vec<String> = vec![
            "k8s.".into(),
            "network-a".into(),
            self.client_baggage.clone(),
            BURST_BAGGAGE.into(),
            "user.id=".into(),
        ];
        for f in &forbidden {
            if let Some(line) = text.lines().find(|l| l.contains(f.as_str())) {
                bail!("the gateway saw {f:?}: {line}");
            }
        }
        let with_headers =
            access.iter().filter(|l| !l.contains("baggage=- x-forwarded-network=- response_baggage=-")).count();
        ensure!(with_headers == 0, "{with_headers} access-log lines carry baggage or x-forwarded-network");
        Ok(format!(
            "{connects} outer CONNECTs with headers logged, {} access-log lines, all with baggage=- x-forwarded-network=- \
             response_baggage=-; none of {forbidden:?} anywhere",
            access.len()
        ))
    }

    fn no_crash_loops(&self) -> Result<String> {
        let restarted_by_test = [ZTUNNEL_B, WAYPOINT];
        let mut restarted = Vec::new();
        for c in CONTAINERS {
            let state = inspect(c)?;
            let count = state.get("RestartCount").and_then(Value::as_u64).unwrap_or(u64::MAX);
            ensure!(count == 0, "{c} was restarted {count} times by Docker (crash)");
            let started = str_at(&state, "/State/StartedAt");
            let before = self.started_at.get(c).map_or("", String::as_str);
            if restarted_by_test.contains(&c) {
                ensure!(started != before, "{c} was not restarted by the test?");
                restarted.push(c);
            } else {
                ensure!(started == before, "{c} started again at {started} (was {before})");
            }
            let status = str_at(&state, "/State/Status");
            ensure!(status == if c == MESH_INIT { "exited" } else { "running" }, "{c} is {status}");
        }
        Ok(format!("restart counts all 0; only {} started again, by the test", restarted.join(" and ")))
    }
}

// ------------------------------------------------------------------ Kiali's queries

/// The PromQL Kiali builds, copied as text from kiali/kiali (commit d733a096e02e, Aug 2026)
/// with the variables set to this testbed: namespaces `frontend` (curl, cluster1) and
/// `backend` (echo-v1, echo-v2, cluster2; ambient, with the waypoint), Kiali's defaults
/// otherwise. Graph: workload graph, ambient traffic "total" (`reporter=~"waypoint|…"`),
/// rates http/grpc=requests, tcp=sent, duration 10m (`[600s]`). Detail charts: what the
/// workload and service pages request for an ambient workload (reporter `destination,waypoint`
/// inbound, `source,waypoint` outbound; group by the peer's canonical service and namespace),
/// rate interval 12s (Kiali's frontend: a 10-minute range / 50 points, at least 2 scrapes of
/// 2s). Checked as instant queries: a chart's newest point.
mod kiali {
    // ---- graph: graph/telemetry/istio/istio.go, buildNamespaceTrafficMap, HTTP/gRPC requests.
    // Reporter fragments from graph/telemetry/istio/util/util.go GetReporter (ambient "total"
    // or "waypoint" adds the waypoint), the app fragment from GetApp.

    /// Query 0 for `backend`: source telemetry of requests that reached no destination workload.
    pub const GRAPH_BACKEND_UNSERVICED: &str = r#"sum(rate(istio_requests_total{reporter=~"waypoint|source",source_workload_namespace!="backend",destination_workload_namespace="unknown",destination_workload="unknown",destination_service=~"^.+\\.backend\\..+$"} [600s])) by (source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags) > 0"#;
    /// Query 1 for `backend` (ambient namespaces only): source telemetry from outside it.
    pub const GRAPH_BACKEND_AMBIENT_IN: &str = r#"sum(rate(istio_requests_total{reporter="source",source_workload_namespace!="backend",destination_workload_namespace="backend"} [600s])) by (source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags) > 0"#;
    /// Query 2 for `backend`: destination (and waypoint) telemetry of its incoming traffic.
    pub const GRAPH_BACKEND_IN: &str = r#"sum(rate(istio_requests_total{reporter=~"waypoint|destination",destination_workload_namespace="backend"} [600s])) by (source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags) > 0"#;
    /// Query 3 for `frontend`: source (and waypoint) telemetry of its outgoing traffic.
    pub const GRAPH_FRONTEND_OUT: &str = r#"sum(rate(istio_requests_total{reporter=~"waypoint|source",source_workload_namespace="frontend"} [600s])) by (source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags) > 0"#;

    // ---- graph: the same function, TCP bytes (tcp=sent reads istio_tcp_received_bytes_total,
    // Kiali's note on istio/istio#32399), query 1 for `backend`.

    /// Ambient traffic "total": GetApp adds nothing, ztunnel's own series are in.
    pub const GRAPH_TCP_BACKEND_IN_TOTAL: &str = r#"sum(rate(istio_tcp_received_bytes_total{reporter=~"waypoint|destination",destination_workload_namespace="backend"} [600s])) by (app,source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,response_flags) > 0"#;
    /// Ambient traffic "waypoint": GetApp's `app!="ztunnel"` keeps ztunnel's series out.
    pub const GRAPH_TCP_BACKEND_IN_WAYPOINT: &str = r#"sum(rate(istio_tcp_received_bytes_total{app!="ztunnel",reporter=~"waypoint|destination",destination_workload_namespace="backend"} [600s])) by (app,source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,response_flags) > 0"#;

    // ---- graph: graph/telemetry/istio/appender/security_policy.go, appendGraph (the mTLS
    // padlock on edges).

    /// Requests into `backend` from outside it (query 1 of the appender, requests part).
    pub const MTLS_BACKEND_REQUESTS_IN: &str = r#"sum(rate(istio_requests_total{reporter=~"waypoint|destination",source_workload_namespace!="backend",destination_service_namespace="backend"}[600s])) by (source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,source_principal,destination_cluster,destination_service_namespace,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,destination_principal,connection_security_policy) > 0"#;
    /// The ztunnel branch (ambient "total" or "ztunnel", tcp=sent) for `frontend`: ztunnel
    /// reports as source, selected by the target label app="ztunnel".
    pub const MTLS_ZTUNNEL_FRONTEND: &str = r#"sum(rate(istio_tcp_sent_bytes_total{app="ztunnel",reporter="source",source_workload_namespace="frontend"}[600s])) by (source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,source_principal,destination_cluster,destination_service_namespace,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,destination_principal,connection_security_policy) > 0"#;

    // ---- detail charts: business/metrics.go fetchAllMetrics over business/metrics_definitions.go
    // istioMetrics; labels from business/metrics_labels_builder.go (Reporters sorted into one
    // regexp, then Workload or Service, then Cluster; BuildForErrors for the error chart);
    // query shapes from prometheus/metrics.go fetchRateRange and buildHistogramQueries.

    /// Workload echo-v1 (backend, cluster2), inbound: request_count.
    pub const ECHO_V1_IN_REQUESTS: &str = r#"sum(rate(istio_requests_total{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;
    /// request_error_count: the HTTP error labels OR the gRPC error labels.
    pub const ECHO_V1_IN_ERRORS: &str = r#"(sum(rate(istio_requests_total{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2",response_code=~"^0$|^[4-5]\\d\\d$"}[12s])) by (source_canonical_service,source_workload_namespace) OR sum(rate(istio_requests_total{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2",grpc_response_status=~"^[1-9]$|^1[0-6]$",response_code!~"^0$|^[4-5]\\d\\d$"}[12s])) by (source_canonical_service,source_workload_namespace))"#;
    /// request_duration_millis, average.
    pub const ECHO_V1_IN_DURATION_AVG: &str = r#"sum(rate(istio_request_duration_milliseconds_sum{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace) / sum(rate(istio_request_duration_milliseconds_count{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;
    /// request_duration_millis, the 0.95 quantile (the charts' quantile setting).
    pub const ECHO_V1_IN_DURATION_P95: &str = r#"histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (le,source_canonical_service,source_workload_namespace))"#;
    /// request_size, average.
    pub const ECHO_V1_IN_REQUEST_SIZE_AVG: &str = r#"sum(rate(istio_request_bytes_sum{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace) / sum(rate(istio_request_bytes_count{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;
    /// response_size, average.
    pub const ECHO_V1_IN_RESPONSE_SIZE_AVG: &str = r#"sum(rate(istio_response_bytes_sum{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace) / sum(rate(istio_response_bytes_count{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;
    /// response_throughput.
    pub const ECHO_V1_IN_RESPONSE_THROUGHPUT: &str = r#"sum(rate(istio_response_bytes_sum{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;
    /// tcp_sent (istio_tcp_received_bytes_total, Kiali's note on istio/istio#32399).
    pub const ECHO_V1_IN_TCP_SENT: &str = r#"sum(rate(istio_tcp_received_bytes_total{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;
    /// tcp_received (istio_tcp_sent_bytes_total).
    pub const ECHO_V1_IN_TCP_RECEIVED: &str = r#"sum(rate(istio_tcp_sent_bytes_total{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;
    /// tcp_opened.
    pub const ECHO_V1_IN_TCP_OPENED: &str = r#"sum(rate(istio_tcp_connections_opened_total{reporter=~"destination|waypoint",destination_workload_namespace="backend",destination_workload="echo-v1",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;

    /// Service echo (backend, cluster2), inbound: request_count.
    pub const ECHO_SVC_IN_REQUESTS: &str = r#"sum(rate(istio_requests_total{reporter=~"destination|waypoint",destination_service_name="echo",destination_service_namespace="backend",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;
    /// Service echo, inbound: request_error_count.
    pub const ECHO_SVC_IN_ERRORS: &str = r#"(sum(rate(istio_requests_total{reporter=~"destination|waypoint",destination_service_name="echo",destination_service_namespace="backend",destination_cluster="cluster2",response_code=~"^0$|^[4-5]\\d\\d$"}[12s])) by (source_canonical_service,source_workload_namespace) OR sum(rate(istio_requests_total{reporter=~"destination|waypoint",destination_service_name="echo",destination_service_namespace="backend",destination_cluster="cluster2",grpc_response_status=~"^[1-9]$|^1[0-6]$",response_code!~"^0$|^[4-5]\\d\\d$"}[12s])) by (source_canonical_service,source_workload_namespace))"#;
    /// Service echo, inbound: request_duration_millis, the 0.95 quantile.
    pub const ECHO_SVC_IN_DURATION_P95: &str = r#"histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket{reporter=~"destination|waypoint",destination_service_name="echo",destination_service_namespace="backend",destination_cluster="cluster2"}[12s])) by (le,source_canonical_service,source_workload_namespace))"#;

    /// Service echo, inbound: grpc_sent (an HTTP/1.1 service: nothing).
    pub const ECHO_SVC_IN_GRPC_SENT: &str = r#"sum(rate(istio_request_messages_total{reporter=~"destination|waypoint",destination_service_name="echo",destination_service_namespace="backend",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;

    /// Service grpc-echo (backend, cluster2), inbound: request_count.
    pub const GRPC_SVC_IN_REQUESTS: &str = r#"sum(rate(istio_requests_total{reporter=~"destination|waypoint",destination_service_name="grpc-echo",destination_service_namespace="backend",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;
    /// Service grpc-echo, inbound: request_error_count (the gRPC half counts grpc-status 1..16).
    pub const GRPC_SVC_IN_ERRORS: &str = r#"(sum(rate(istio_requests_total{reporter=~"destination|waypoint",destination_service_name="grpc-echo",destination_service_namespace="backend",destination_cluster="cluster2",response_code=~"^0$|^[4-5]\\d\\d$"}[12s])) by (source_canonical_service,source_workload_namespace) OR sum(rate(istio_requests_total{reporter=~"destination|waypoint",destination_service_name="grpc-echo",destination_service_namespace="backend",destination_cluster="cluster2",grpc_response_status=~"^[1-9]$|^1[0-6]$",response_code!~"^0$|^[4-5]\\d\\d$"}[12s])) by (source_canonical_service,source_workload_namespace))"#;
    /// Service grpc-echo, inbound: grpc_sent.
    pub const GRPC_SVC_IN_GRPC_SENT: &str = r#"sum(rate(istio_request_messages_total{reporter=~"destination|waypoint",destination_service_name="grpc-echo",destination_service_namespace="backend",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;
    /// Service grpc-echo, inbound: grpc_received.
    pub const GRPC_SVC_IN_GRPC_RECEIVED: &str = r#"sum(rate(istio_response_messages_total{reporter=~"destination|waypoint",destination_service_name="grpc-echo",destination_service_namespace="backend",destination_cluster="cluster2"}[12s])) by (source_canonical_service,source_workload_namespace)"#;

    /// Workload curl (frontend, cluster1), outbound: request_count.
    pub const CURL_OUT_REQUESTS: &str = r#"sum(rate(istio_requests_total{reporter=~"source|waypoint",source_workload_namespace="frontend",source_workload="curl",source_cluster="cluster1"}[12s])) by (destination_canonical_service,destination_workload_namespace)"#;
    /// Workload curl, outbound: tcp_sent.
    pub const CURL_OUT_TCP_SENT: &str = r#"sum(rate(istio_tcp_received_bytes_total{reporter=~"source|waypoint",source_workload_namespace="frontend",source_workload="curl",source_cluster="cluster1"}[12s])) by (destination_canonical_service,destination_workload_namespace)"#;

    // ---- ztunnel dashboard: business/metrics.go GetZtunnelMetrics (FetchRateRange and FetchRange
    // of prometheus/client.go), selected by the target label pod=~"ztunnel-.*".

    /// ztunnel_connections (opened).
    pub const ZTUNNEL_CONNECTIONS_OPENED: &str =
        r#"sum(rate(istio_tcp_connections_opened_total{pod=~"ztunnel-.*"}[12s])) by (pod)"#;
    /// ztunnel_versions.
    pub const ZTUNNEL_VERSIONS: &str = r#"sum(istio_build{component="ztunnel"}) by (tag)"#;
}

// ------------------------------------------------------------------ Kiali's reading of the series

/// Kiali's graph.IsOK: set, and not "unknown".
fn is_ok(value: &str) -> bool {
    !value.is_empty() && value != "unknown"
}

/// An edge of Kiali's workload graph: node ids as graph/types.go `Id` makes them
/// (`wl_<cluster>_<namespace>_<workload>`, `svc_<cluster>_<namespace>_<service>`), the response
/// code as util.HandleResponseCode reads it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    source: String,
    dest: String,
    code: String,
    flags: String,
}

impl Edge {
    fn new(source: &str, dest: &str, code: &str, flags: &str) -> Self {
        Self { source: source.into(), dest: dest.into(), code: code.into(), flags: flags.into() }
    }
}

/// graph/types.go `Id` for the workload graph (Kiali's default graph type).
fn kiali_node_id(
    cluster: &str,
    service_ns: &str,
    service: &str,
    workload_ns: &str,
    workload: &str,
    app: &str,
) -> Result<String> {
    let namespace = if is_ok(workload_ns) { workload_ns } else { service_ns };
    if namespace == "unknown" && workload == "unknown" && app == "unknown" && service.is_empty() {
        return Ok(format!("{cluster}_unknown_source"));
    }
    if workload == "unknown" && app == "unknown" && service == "unknown" {
        return Ok(format!("svc_{cluster}_{namespace}_unknown"));
    }
    ensure!(
        is_ok(workload) || is_ok(app) || is_ok(service),
        "no node id: {cluster}/{namespace} {workload} {app} {service}"
    );
    Ok(if is_ok(workload) {
        format!("wl_{cluster}_{namespace}_{workload}")
    } else if is_ok(service) {
        format!("svc_{cluster}_{namespace}_{service}")
    } else {
        format!("svc_{cluster}_{namespace}_unknown")
    })
}

/// What populateTrafficMap (graph/telemetry/istio/istio.go) makes of istio_requests_total
/// series: each edge's rate, and the series Kiali would skip, with why. The same series
/// returned by two queries counts once (Kiali's edge time-series hash).
fn kiali_request_edges(series: &[Series]) -> (BTreeMap<Edge, f64>, Vec<String>) {
    const REQUIRED: [&str; 14] = [
        "source_workload_namespace",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "destination_service_namespace",
        "destination_service",
        "destination_service_name",
        "destination_workload_namespace",
        "destination_workload",
        "destination_canonical_service",
        "destination_canonical_revision",
        "response_flags",
        "request_protocol",
        "response_code",
    ];
    let mut edges = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut seen = BTreeSet::new();
    for s in series {
        if !seen.insert(s.labels.clone()) {
            continue;
        }
        let l = |name: &str| s.label(name);
        let missing: Vec<&str> = REQUIRED.iter().copied().filter(|k| !s.labels.contains_key(*k)).collect();
        if !missing.is_empty() {
            skipped.push(format!("missing {missing:?}: {:?}", s.labels));
            continue;
        }
        // util.HandleClusters: an absent cluster label reads "unknown".
        let source_cluster = if s.labels.contains_key("source_cluster") { l("source_cluster") } else { "unknown" };
        let mut dest_cluster =
            if s.labels.contains_key("destination_cluster") { l("destination_cluster") } else { "unknown" };
        let source_ns = l("source_workload_namespace");
        // util.IsBadSourceTelemetry
        if is_ok(source_ns) && !is_ok(l("source_workload")) && !is_ok(l("source_canonical_service"))
            || is_ok(source_ns) && s.labels.contains_key("source_cluster") && !is_ok(source_cluster)
        {
            skipped.push(format!("bad source telemetry: {:?}", s.labels));
            continue;
        }
        // util.HandleDestination: an unknown destination cluster is taken to be the source's.
        let dest_svc_ns = l("destination_service_namespace");
        if !is_ok(dest_cluster) && is_ok(source_cluster) && is_ok(dest_svc_ns) {
            dest_cluster = source_cluster;
        }
        // util.IsBadDestTelemetry, case 2 (case 1 needs an IP address as service name)
        if is_ok(dest_svc_ns) && s.labels.contains_key("destination_cluster") && !is_ok(dest_cluster) {
            skipped.push(format!("bad destination telemetry: {:?}", s.labels));
            continue;
        }
        // util.HandleResponseCode
        let code = match l("response_code") {
            "0" => "-",
            http if l("request_protocol") != "grpc"
                || http.starts_with('4')
                || http.starts_with('5')
                || !s.labels.contains_key("grpc_response_status") =>
            {
                http
            }
            _ => l("grpc_response_status"),
        };
        let source = kiali_node_id(
            source_cluster,
            source_ns,
            "",
            source_ns,
            l("source_workload"),
            l("source_canonical_service"),
        );
        let dest = kiali_node_id(
            dest_cluster,
            dest_svc_ns,
            l("destination_service_name"),
            l("destination_workload_namespace"),
            l("destination_workload"),
            l("destination_canonical_service"),
        );
        match (source, dest) {
            (Ok(source), Ok(dest)) => {
                *edges
                    .entry(Edge { source, dest, code: code.into(), flags: l("response_flags").into() })
                    .or_insert(0.0) += s.value;
            }
            (source, dest) => skipped.push(format!("{source:?} -> {dest:?}: {:?}", s.labels)),
        }
    }
    (edges, skipped)
}

fn show_edges(edges: &BTreeMap<Edge, f64>) -> String {
    edges
        .iter()
        .map(|(e, rate)| format!("{} -> {} {} flags={} ({rate:.3}/s)", e.source, e.dest, e.code, e.flags))
        .collect::<Vec<_>>()
        .join("; ")
}

/// How a detail chart's series must look.
#[derive(Clone, Copy)]
enum Points {
    /// > 0: traffic flows.
    Positive,
    /// a number (a duration of 0 ms is possible), not NaN.
    Finite,
}

/// One of Kiali's charts: the query, and exactly the series it must draw (each a label set).
struct Chart {
    name: &'static str,
    query: &'static str,
    series: &'static [&'static [(&'static str, &'static str)]],
    points: Points,
}

const fn chart(
    name: &'static str,
    query: &'static str,
    series: &'static [&'static [(&'static str, &'static str)]],
    points: Points,
) -> Chart {
    Chart { name, query, series, points }
}

const FROM_CURL: &[(&str, &str)] = &[("source_canonical_service", "curl"), ("source_workload_namespace", "frontend")];
/// Inbound at echo's ztunnel the TCP peer is the waypoint, which opened the tunnel.
const FROM_WAYPOINT: &[(&str, &str)] =
    &[("source_canonical_service", "waypoint"), ("source_workload_namespace", "backend")];
const TO_ECHO: &[(&str, &str)] =
    &[("destination_canonical_service", "echo"), ("destination_workload_namespace", "backend")];
/// curl's ztunnel tunnels to the waypoint, the TCP peer it reports.
const TO_WAYPOINT: &[(&str, &str)] =
    &[("destination_canonical_service", "waypoint"), ("destination_workload_namespace", "backend")];

const CHARTS: &[Chart] = &[
    chart("echo-v1 in: request_count", kiali::ECHO_V1_IN_REQUESTS, &[FROM_CURL], Points::Positive),
    chart("echo-v1 in: request_error_count", kiali::ECHO_V1_IN_ERRORS, &[], Points::Positive),
    chart("echo-v1 in: request_duration_millis avg", kiali::ECHO_V1_IN_DURATION_AVG, &[FROM_CURL], Points::Finite),
    chart("echo-v1 in: request_duration_millis p95", kiali::ECHO_V1_IN_DURATION_P95, &[FROM_CURL], Points::Finite),
    chart("echo-v1 in: request_size avg", kiali::ECHO_V1_IN_REQUEST_SIZE_AVG, &[FROM_CURL], Points::Positive),
    chart("echo-v1 in: response_size avg", kiali::ECHO_V1_IN_RESPONSE_SIZE_AVG, &[FROM_CURL], Points::Positive),
    chart("echo-v1 in: response_throughput", kiali::ECHO_V1_IN_RESPONSE_THROUGHPUT, &[FROM_CURL], Points::Positive),
    chart("echo-v1 in: tcp_sent", kiali::ECHO_V1_IN_TCP_SENT, &[FROM_WAYPOINT], Points::Positive),
    chart("echo-v1 in: tcp_received", kiali::ECHO_V1_IN_TCP_RECEIVED, &[FROM_WAYPOINT], Points::Positive),
    chart("echo-v1 in: tcp_opened", kiali::ECHO_V1_IN_TCP_OPENED, &[FROM_WAYPOINT], Points::Positive),
    chart("service echo in: request_count", kiali::ECHO_SVC_IN_REQUESTS, &[FROM_CURL], Points::Positive),
    chart("service echo in: request_error_count", kiali::ECHO_SVC_IN_ERRORS, &[], Points::Positive),
    chart(
        "service echo in: request_duration_millis p95",
        kiali::ECHO_SVC_IN_DURATION_P95,
        &[FROM_CURL],
        Points::Finite,
    ),
    // An HTTP/1.1 service: the message counters are for gRPC requests alone.
    chart("service echo in: grpc_sent", kiali::ECHO_SVC_IN_GRPC_SENT, &[], Points::Positive),
    chart("curl out: request_count", kiali::CURL_OUT_REQUESTS, &[TO_ECHO], Points::Positive),
    chart("curl out: tcp_sent", kiali::CURL_OUT_TCP_SENT, &[TO_WAYPOINT], Points::Positive),
    chart(
        "ztunnel dashboard: connections by pod",
        kiali::ZTUNNEL_CONNECTIONS_OPENED,
        &[&[("pod", "ztunnel-k7x2p")], &[("pod", "ztunnel-m4q9z")]],
        Points::Positive,
    ),
];

/// The chart's series against what it must show. A series is drawn when its point is > 0
/// (Positive) or a number (Finite): a peer that sent nothing in the interval reads 0 or NaN
/// (0/0) and draws nothing.
fn check_chart(chart: &Chart) -> Result<String> {
    let got = prom(chart.query)?;
    let want: BTreeSet<BTreeMap<String, String>> = chart
        .series
        .iter()
        .map(|labels| labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        .collect();
    let drawn: Vec<&Series> = got
        .iter()
        .filter(|s| match chart.points {
            Points::Positive => s.value > 0.0,
            Points::Finite => s.value.is_finite() && s.value >= 0.0,
        })
        .collect();
    let seen: BTreeSet<BTreeMap<String, String>> = drawn.iter().map(|s| s.labels.clone()).collect();
    ensure!(
        seen == want && drawn.len() == want.len(),
        "{}: draws {seen:?}, want {want:?} (all series: {got:?})",
        chart.name
    );
    let values: Vec<String> = drawn.iter().map(|s| format!("{:.1}", s.value)).collect();
    Ok(if drawn.is_empty() { format!("{} empty", chart.name) } else { format!("{} {}", chart.name, values.join("/")) })
}

impl Testbed {
    /// Every scraped series carries the target labels of its pod (testbed/prometheus.yml).
    fn target_labels(&self) -> Result<String> {
        let combos = prom(
            r#"count by (job, node, namespace, pod, app, gateway_networking_k8s_io_gateway_name) ({job=~"waypoint|eastwest-gateway|ztunnel"})"#,
        )?;
        let want: BTreeSet<BTreeMap<String, String>> = [
            // Istio's waypoint template sets no app label; the Gateway's name instead.
            &[
                ("job", "waypoint"),
                ("node", "waypoint"),
                ("namespace", "backend"),
                ("pod", "waypoint-6b8f9c7d54-x2k4q"),
                ("gateway_networking_k8s_io_gateway_name", "waypoint"),
            ][..],
            &[
                ("job", "eastwest-gateway"),
                ("node", "eastwest-network-b"),
                ("namespace", "istio-system"),
                ("pod", "istio-eastwestgateway-7d5c8f9b6-q8w3n"),
                ("app", "istio-eastwestgateway"),
            ],
            &[
                ("job", "ztunnel"),
                ("node", "node-a"),
                ("namespace", "istio-system"),
                ("pod", "ztunnel-k7x2p"),
                ("app", "ztunnel"),
            ],
            &[
                ("job", "ztunnel"),
                ("node", "node-b"),
                ("namespace", "istio-system"),
                ("pod", "ztunnel-m4q9z"),
                ("app", "ztunnel"),
            ],
        ]
        .iter()
        .map(|labels| labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        .collect();
        let seen: BTreeSet<BTreeMap<String, String>> = combos.iter().map(|s| s.labels.clone()).collect();
        ensure!(seen == want, "label sets of the scraped series:\n{seen:#?}\nwant:\n{want:#?}");
        let counts: Vec<String> = combos.iter().map(|s| format!("{} {} series", s.label("pod"), s.value)).collect();
        Ok(format!(
            "every series of each target has its app/namespace/pod (waypoint: no app, as Istio's template): {}",
            counts.join(", ")
        ))
    }

    /// istio_build from the waypoint and both ztunnels, with their pods' labels; Kiali's
    /// ztunnel dashboard reads the version from it.
    fn istio_build(&self) -> Result<String> {
        let proxy = prom(r#"istio_build{component="proxy",job="waypoint"}"#)?;
        let waypoint = match proxy.as_slice() {
            [one] => one,
            _ => bail!("the waypoint's istio_build{{component=\"proxy\"}}: {proxy:?}"),
        };
        ensure!(
            waypoint.value == 1.0
                && !waypoint.label("tag").is_empty()
                && waypoint.label("namespace") == "backend"
                && waypoint.label("pod") == "waypoint-6b8f9c7d54-x2k4q",
            "the waypoint's istio_build: {waypoint:?}"
        );
        let ztunnels = prom(r#"istio_build{component="ztunnel"}"#)?;
        let pods: BTreeSet<&str> = ztunnels.iter().map(|s| s.label("pod")).collect();
        ensure!(
            pods == BTreeSet::from(["ztunnel-k7x2p", "ztunnel-m4q9z"]) && ztunnels.len() == 2,
            "istio_build{{component=\"ztunnel\"}}: {ztunnels:?}"
        );
        let tags: BTreeSet<&str> = ztunnels.iter().map(|s| s.label("tag")).collect();
        for s in &ztunnels {
            ensure!(
                s.value == 1.0
                    && !s.label("tag").is_empty()
                    && s.label("app") == "ztunnel"
                    && s.label("namespace") == "istio-system",
                "a ztunnel's istio_build: {s:?}"
            );
        }
        let versions = prom(kiali::ZTUNNEL_VERSIONS)?;
        let shown: BTreeSet<&str> = versions.iter().map(|s| s.label("tag")).collect();
        ensure!(
            shown == tags && versions.len() == 1 && versions.iter().all(|s| s.value == 2.0),
            "Kiali's ztunnel versions {versions:?}, the ztunnels' tags {tags:?}"
        );
        Ok(format!(
            "waypoint proxy tag {:?}; ztunnel tag {tags:?} on {}; Kiali's ztunnel versions: 2 x {shown:?}",
            waypoint.label("tag"),
            pods.into_iter().collect::<Vec<_>>().join(", "),
        ))
    }

    /// Kiali's traffic graph of frontend + backend: the request edges it draws.
    fn kiali_graph(&self) -> Result<String> {
        let want = [
            Edge::new("wl_cluster1_frontend_curl", "wl_cluster2_backend_echo-v1", "200", "-"),
            Edge::new("wl_cluster1_frontend_curl", "wl_cluster2_backend_echo-v2", "200", "-"),
        ];
        let (edges, skipped) = wait_for("Kiali's graph edges", Duration::from_secs(15), || {
            let mut series = Vec::new();
            for query in [
                kiali::GRAPH_BACKEND_UNSERVICED,
                kiali::GRAPH_BACKEND_AMBIENT_IN,
                kiali::GRAPH_BACKEND_IN,
                kiali::GRAPH_FRONTEND_OUT,
            ] {
                series.extend(prom(query)?);
            }
            let (edges, skipped) = kiali_request_edges(&series);
            let missing: Vec<&Edge> = want.iter().filter(|w| !edges.get(*w).is_some_and(|r| *r > 0.0)).collect();
            ensure!(missing.is_empty(), "no edge {missing:?}; edges: {}", show_edges(&edges));
            Ok((edges, skipped))
        })?;
        ensure!(skipped.is_empty(), "series Kiali would skip: {skipped:?}");
        let nodes: BTreeSet<&str> = edges.keys().flat_map(|e| [e.source.as_str(), e.dest.as_str()]).collect();
        let unknown: Vec<&&str> = nodes.iter().filter(|n| n.contains("unknown")).collect();
        ensure!(unknown.is_empty(), "unknown nodes {unknown:?}; edges: {}", show_edges(&edges));
        Ok(format!("nodes {}; edges: {}", nodes.into_iter().collect::<Vec<_>>().join(", "), show_edges(&edges)))
    }

    /// Ambient traffic "total" shows ztunnel's TCP series, "waypoint" filters them out with
    /// app!="ztunnel"; the security-policy appender finds curl's mTLS in ztunnel's own series
    /// (app="ztunnel") and in the waypoint's requests.
    fn kiali_ambient(&self) -> Result<String> {
        wait_for("Kiali's ambient queries", Duration::from_secs(10), || {
            let total = prom(kiali::GRAPH_TCP_BACKEND_IN_TOTAL)?;
            let from_ztunnel: BTreeSet<String> = total
                .iter()
                .filter(|s| s.label("app") == "ztunnel")
                .map(|s| format!("{}->{}", s.label("source_workload"), s.label("destination_workload")))
                .collect();
            ensure!(
                from_ztunnel == BTreeSet::from(["waypoint->echo-v1".to_owned(), "waypoint->echo-v2".to_owned()]),
                "TCP into backend, ambient total: {total:?}"
            );
            let waypoint_only = prom(kiali::GRAPH_TCP_BACKEND_IN_WAYPOINT)?;
            ensure!(
                waypoint_only.iter().all(|s| s.label("app") != "ztunnel"),
                "app!=\"ztunnel\" let ztunnel series through: {waypoint_only:?}"
            );
            let ztunnel_mtls = prom(kiali::MTLS_ZTUNNEL_FRONTEND)?;
            ensure!(!ztunnel_mtls.is_empty(), "no app=\"ztunnel\" source series from frontend");
            for s in &ztunnel_mtls {
                ensure!(
                    s.label("source_workload") == "curl"
                        && s.label("source_principal") == "spiffe://cluster.local/ns/frontend/sa/curl"
                        && s.label("destination_principal") == "spiffe://cluster.local/ns/backend/sa/waypoint"
                        && s.label("connection_security_policy") == "mutual_tls",
                    "ztunnel's mTLS series: {:?}",
                    s.labels
                );
            }
            // Requests that reached echo (failed ones, if any, have no destination workload).
            let requests: Vec<Series> = prom(kiali::MTLS_BACKEND_REQUESTS_IN)?
                .into_iter()
                .filter(|s| s.label("destination_workload").starts_with("echo-"))
                .collect();
            let into: BTreeSet<&str> = requests.iter().map(|s| s.label("destination_workload")).collect();
            ensure!(into == BTreeSet::from(["echo-v1", "echo-v2"]), "requests into backend: {requests:?}");
            for s in &requests {
                ensure!(
                    s.label("source_principal") == "spiffe://cluster.local/ns/frontend/sa/curl"
                        && s.label("destination_principal") == "spiffe://cluster.local/ns/backend/sa/echo"
                        && s.label("connection_security_policy") == "mutual_tls",
                    "the waypoint's mTLS series: {:?}",
                    s.labels
                );
            }
            Ok(format!(
                "ambient total: TCP {} from ztunnel (app=\"ztunnel\"); ambient waypoint: {} series, none from ztunnel; \
                 ztunnel branch: {} mutual_tls series curl -> waypoint; requests curl -> echo-v1, echo-v2 mutual_tls",
                from_ztunnel.into_iter().collect::<Vec<_>>().join(", "),
                waypoint_only.len(),
                ztunnel_mtls.len()
            ))
        })
    }

    /// gRPC calls from curl to grpc-echo (h2c through both ztunnels, the waypoint and the
    /// gateway), spread over a few scrapes: Kiali's charts of service grpc-echo show requests
    /// and messages both ways, no errors; the waypoint's counters match the calls exactly.
    fn kiali_grpc(&self) -> Result<String> {
        let out = docker(&[
            "exec",
            CLIENT,
            "mesh-app",
            "grpc",
            "--mesh",
            "/etc/mesh/mesh.json",
            "--workload",
            &self.client_workload,
            "--service",
            "grpc-echo.backend.svc.cluster.local:50051",
            "--connections",
            "6",
            "--calls",
            "3",
            "--replies",
            "3",
            "--pause-ms",
            "1000",
            "--timeout-ms",
            "20000",
        ])?;
        let summary: Value = serde_json::from_str(out.trim()).with_context(|| format!("gRPC summary {out}"))?;
        let count = |key: &str| summary.get(key).and_then(Value::as_u64).unwrap_or(0);
        ensure!(
            count("unary_ok") == 18 && count("stream_ok") == 18 && count("replies") == 54 && count("failed") == 0,
            "6 connections x 3 unary + 3 streaming calls of 3 replies: {summary}"
        );
        // 18 unary + 18 streaming calls: 36 requests of one message each; 18 + 54 replies.
        // Counts and charts both judged, so that one failing does not hide the other.
        let exact = wait_for("the waypoint's gRPC counters", Duration::from_secs(10), || {
            let total = |metric: &str| -> Result<f64> {
                let q = format!(
                    r#"sum({metric}{{job="waypoint",reporter="waypoint",destination_service_name="grpc-echo"}})"#
                );
                Ok(prom(&q)?.first().map_or(0.0, |s| s.value))
            };
            let (requests, sent, received) = (
                total("istio_requests_total")?,
                total("istio_request_messages_total")?,
                total("istio_response_messages_total")?,
            );
            ensure!(
                requests == 36.0 && sent == 36.0 && received == 72.0,
                "requests {requests}, request messages {sent}, response messages {received}; want 36, 36, 72"
            );
            Ok(format!("{requests} requests, {sent} request and {received} response messages"))
        });
        let labels =
            prom(r#"istio_requests_total{job="waypoint",reporter="waypoint",destination_service_name="grpc-echo"}"#)?;
        for s in &labels {
            ensure!(
                s.label("request_protocol") == "grpc"
                    && s.label("response_code") == "200"
                    && s.label("grpc_response_status") == "0"
                    && s.label("source_workload") == "curl"
                    && s.label("destination_cluster") == "cluster2"
                    && s.label("destination_workload").starts_with("echo-"),
                "a gRPC series at the waypoint: {:?}",
                s.labels
            );
        }
        let charts = [
            chart("grpc-echo in: request_count", kiali::GRPC_SVC_IN_REQUESTS, &[FROM_CURL], Points::Positive),
            chart("grpc-echo in: request_error_count", kiali::GRPC_SVC_IN_ERRORS, &[], Points::Positive),
            chart("grpc-echo in: grpc_sent", kiali::GRPC_SVC_IN_GRPC_SENT, &[FROM_CURL], Points::Positive),
            chart("grpc-echo in: grpc_received", kiali::GRPC_SVC_IN_GRPC_RECEIVED, &[FROM_CURL], Points::Positive),
        ];
        let shown = wait_for("Kiali's gRPC charts", Duration::from_secs(10), || {
            charts.iter().map(check_chart).collect::<Result<Vec<String>>>()
        });
        match (exact, shown) {
            (Ok(exact), Ok(shown)) => {
                Ok(format!("{exact} (grpc, grpc_response_status 0, into cluster2); {}", shown.join("; ")))
            }
            (exact, shown) => bail!(
                "counters: {}; charts: {}",
                exact.unwrap_or_else(|e| format!("FAIL {e:#}")),
                shown.map(|s| s.join("; ")).unwrap_or_else(|e| format!("FAIL {e:#}"))
            ),
        }
    }

    /// The detail pages' charts (CHARTS) for the testbed's workloads and service.
    fn kiali_charts(&self) -> Result<String> {
        wait_for("Kiali's charts", Duration::from_secs(10), || {
            let mut shown = Vec::new();
            for chart in CHARTS {
                shown.push(check_chart(chart)?);
            }
            Ok(shown.join("; "))
        })
    }

    /// While ztunnel-b is down: the 503s as Kiali's backend graph reads them (queries 0 and 2)
    /// end at service echo in cluster2, and service echo's error chart in cluster2 has them.
    fn kiali_outage(&self) -> Result<String> {
        let failed = wait_for("503s in Kiali's graph queries", Duration::from_secs(20), || {
            let mut series = prom(kiali::GRAPH_BACKEND_UNSERVICED)?;
            series.extend(prom(kiali::GRAPH_BACKEND_IN)?);
            let failed: Vec<Series> = series.into_iter().filter(|s| s.label("response_code") == "503").collect();
            ensure!(!failed.is_empty(), "no 503 series in Kiali's graph queries for backend");
            Ok(failed)
        })?;
        let (edges, skipped) = kiali_request_edges(&failed);
        ensure!(skipped.is_empty(), "503 series Kiali would skip: {skipped:?}");
        let raw: BTreeSet<String> = failed
            .iter()
            .map(|s| {
                format!(
                    "destination_cluster={:?} destination_workload_namespace={:?}",
                    s.label("destination_cluster"),
                    s.label("destination_workload_namespace")
                )
            })
            .collect();
        for e in edges.keys() {
            ensure!(
                e.source == "wl_cluster1_frontend_curl" && e.dest == "svc_cluster2_backend_echo",
                "503s drawn as {} -> {}, want wl_cluster1_frontend_curl -> svc_cluster2_backend_echo (series: {raw:?})",
                e.source,
                e.dest
            );
        }
        let chart = wait_for("503s in service echo's error chart", Duration::from_secs(20), || {
            let errors = prom(kiali::ECHO_SVC_IN_ERRORS)?;
            let from_curl = errors.iter().find(|s| {
                s.label("source_canonical_service") == "curl" && s.label("source_workload_namespace") == "frontend"
            });
            ensure!(from_curl.is_some_and(|s| s.value > 0.0), "service echo's error chart in cluster2: {errors:?}");
            Ok(from_curl.map(|s| s.value).unwrap_or(0.0))
        })?;
        Ok(format!("edges {}; service echo's error chart (cluster2): {chart:.1}/s from curl", show_edges(&edges)))
    }
}
