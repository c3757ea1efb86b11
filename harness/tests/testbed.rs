//! The Docker testbed's checks (testbed/README.md says what each shows). Ignored by a
//! plain `cargo test`: `make testbed-test` (testbed/testbed.sh test) builds the images,
//! brings the testbed up, runs this with `--ignored`, and tears everything down whatever
//! happens. Docker is driven through its CLI; Prometheus is read through its HTTP query
//! API from inside its container, so the host needs no route into the testbed networks.
//!
//! Every check runs and prints `ok` or `FAIL` with what it saw; the test fails at the end
//! if any did, so one failure never hides the others' results.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use host_shim::config::{Mesh, Workload};
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
    let mut report = Report::default();
    let tb = match Testbed::new() {
        Ok(tb) => tb,
        Err(e) => {
            report.check("testbed found", Err(e));
            report.finish(started);
            return;
        }
    };
    report.check("containers up and healthy", tb.all_up());
    report.check("addresses of the mesh file are on their containers", tb.addresses());
    report.check("Prometheus scrapes the waypoint, the gateway and both ztunnels", tb.scrapes());
    report.check("two-sided istio_requests_total at the waypoint", tb.two_sided_labels());
    report.check("ztunnels' L4 metrics name the waypoint", tb.shim_metrics());
    report.check("isolation: network-a cannot reach network-b", tb.isolation());
    report.check("load spread over new connections", tb.load_spread());
    report.check("ztunnel-b stopped: fast 503s, counted with flags; started: recovers", tb.ztunnel_b_fault());
    report.check("waypoint killed: client errors; started: recovers", tb.waypoint_fault());
    report.check("servers get the app's baggage unchanged, never ztunnel's", tb.server_baggage());
    report.check("east-west gateway never sees inner baggage", tb.gateway_privacy());
    report.check("no crash loops, nothing restarted but what the test did", tb.no_crash_loops());
    report.finish(started);
}

// ------------------------------------------------------------------ report

#[derive(Default)]
struct Report {
    passed: usize,
    failed: Vec<String>,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<String>) {
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("testbed: ok   {name}: {detail}");
            }
            Err(e) => {
                println!("testbed: FAIL {name}: {e:#}");
                self.failed.push(name.to_owned());
            }
        }
    }

    fn finish(self, started: Instant) {
        println!(
            "testbed checks: {} passed, {} failed ({:.0}s)",
            self.passed,
            self.failed.len(),
            started.elapsed().as_secs_f64()
        );
        assert!(self.failed.is_empty(), "failed: {}", self.failed.join("; "));
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
        let selector = r#"istio_requests_total{job="waypoint",reporter="waypoint",response_code="200"}"#;
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
            r#"increase(istio_requests_total{{job="waypoint",reporter="waypoint",response_code="200",destination_workload="unknown"}}[{}])"#,
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
                    String::from_utf8_lossy(&out.stdout).trim()
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
        std::thread::sleep(Duration::from_millis(500));
        let mut served = Vec::new();
        for e in &endpoints {
            let text = logs(&format!("testbed-{e}"), Some(since - 1.0))?;
            served.push((e.clone(), text.lines().filter(|l| l.contains("\"path\":\"/burst/")).count() as u64));
        }
        std::thread::sleep(Duration::from_secs(3)); // a scrape of ztunnel-b
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

    fn ztunnel_b_fault(&self) -> Result<String> {
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
