//! `mesh-app`: the applications of the Docker testbed (testbed/README.md), one
//! small binary so that the mesh image needs nothing else.
//!
//! ```text
//! mesh-app echo   --mesh FILE --workload NAME [--listen ADDR] [--grpc-port PORT]
//!     the echo server of apps.rs on the pod's address and its service's target port
//!     (or ADDR); one JSON line per request on stdout:
//!     {"workload", "path", "baggage", "peer_metadata_leaked"}
//!     with --grpc-port also grpc.rs's tonic server on <pod address>:PORT, one JSON line
//!     per call {"workload", "grpc", "http"}
//! mesh-app grpc   --mesh FILE --workload NAME --service HOST:PORT [--connections 4] [--calls 5] [--replies 3] [--pause-ms 0]
//!     per connection (h2c, through the workload's outbound listener for HOST:PORT; PAUSE
//!     between connections) CALLS unary calls and CALLS server-streaming calls of REPLIES
//!     messages; one JSON summary
//!     {"unary_ok", "stream_ok", "replies", "failed", "errors": [first few]}
//! mesh-app client --mesh FILE --workload NAME [--entry ADDR] [--baggage B] [--interval-ms 200] [--timeout-ms 5000]
//!     a steady trickle, forever: one GET on a new connection per interval, with the
//!     app's own W3C `baggage`; one JSON line per request {"n", "status", "workload", "error", "ms"}
//! mesh-app burst  --mesh FILE --workload NAME [--entry ADDR] --connections N [--concurrency C] [--baggage B]
//!     N new connections, one GET each, C at a time; prints one JSON summary
//!     {"ok", "failed", "workloads": {name: replies}, "errors": [first few]}
//! mesh-app probe  ADDR [--timeout-ms 2000]
//!     exit 0 when a TCP connection to ADDR opens, 1 otherwise
//! mesh-app identities --mesh FILE
//!     every SPIFFE identity the mesh file names (workloads, waypoints, gateways), one per line
//! mesh-app pods --mesh FILE --node NODE
//!     the addresses of the workloads NODE serves, one per line
//! ```
//!
//! Addresses come from the mesh file, the one place they are written: the echo server
//! listens on its pod's address, the clients enter the mesh through their workload's
//! first outbound listener (the ztunnel's stand-in for iptables capture). Requests name
//! the service (`Host: echo.backend.svc.cluster.local:8080`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use harness::apps;
use harness::grpc::{GrpcClient, GrpcServer};
use harness::http::Connection;
use harness::traffic::service_host;
use mesh::Mesh;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// The client's own baggage when none is given: W3C members, one with a property.
const DEFAULT_BAGGAGE: &str = "user.id=alice,session.id=trickle-1,feature.flag=blue;ttl=60";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        bail!("usage: mesh-app echo|client|burst|probe|identities ... (see the source's header)");
    }
    let command = args.remove(0);
    let mut flags = Flags::parse(args)?;
    match command.as_str() {
        "echo" => {
            let workload = flags.string("workload")?;
            let mesh = if flags.named.contains_key("mesh") { Some(flags.mesh()?) } else { None };
            let mesh_file = || mesh.as_ref().ok_or_else(|| anyhow!("--mesh is required"));
            let listen = if flags.named.contains_key("listen") {
                flags.addr("listen")?
            } else {
                pod_listen(mesh_file()?, &workload)?
            };
            let grpc = if flags.named.contains_key("grpc-port") {
                Some(grpc_listen(mesh_file()?, &workload, flags.number("grpc-port")?)?)
            } else {
                None
            };
            echo(listen, grpc, &workload).await
        }
        "grpc" => {
            let mesh = flags.mesh()?;
            let workload = flags.string("workload")?;
            let service = flags.string("service")?;
            let entry = outbound_to(&mesh, &workload, &service)?;
            let (host, port) =
                service.rsplit_once(':').ok_or_else(|| anyhow!("--service {service:?} is not HOST:PORT"))?;
            let port: u16 = port.parse().with_context(|| format!("--service {service:?}: port"))?;
            let plan = GrpcPlan {
                connections: flags.number_or("connections", 4)?.max(1),
                calls: flags.number_or("calls", 5)?,
                replies: flags.number_or("replies", 3)? as u32,
                pause: flags.millis_or("pause-ms", 0)?,
                timeout: flags.millis_or("timeout-ms", 10_000)?,
            };
            grpc_calls(entry, host, port, plan).await
        }
        "client" => {
            let entry = flags.entry()?;
            let baggage = flags.string_or("baggage", DEFAULT_BAGGAGE);
            let interval = flags.millis_or("interval-ms", 200)?;
            let timeout = flags.millis_or("timeout-ms", 5000)?;
            trickle(entry, &baggage, interval, timeout).await
        }
        "burst" => {
            let entry = flags.entry()?;
            let connections = flags.number("connections")?;
            let concurrency = flags.number_or("concurrency", 16)?.max(1);
            let baggage = flags.string_or("baggage", DEFAULT_BAGGAGE);
            let timeout = flags.millis_or("timeout-ms", 5000)?;
            burst(entry, connections, concurrency, &baggage, timeout).await
        }
        "probe" => {
            let target = flags.positional()?.parse::<SocketAddr>().context("probe ADDR")?;
            let timeout = flags.millis_or("timeout-ms", 2000)?;
            match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
                Ok(Ok(_)) => {
                    println!("connected to {target}");
                    Ok(())
                }
                Ok(Err(e)) => {
                    println!("cannot connect to {target}: {e}");
                    std::process::exit(1)
                }
                Err(_) => {
                    println!("cannot connect to {target}: no answer within {timeout:?}");
                    std::process::exit(1)
                }
            }
        }
        "identities" => {
            let mesh = flags.mesh()?;
            let mut ids: BTreeSet<String> = mesh.workloads.iter().map(|w| mesh.identity_of(w)).collect();
            ids.extend(mesh.services.iter().filter_map(|s| s.waypoint.as_ref()).map(|w| w.identity.clone()));
            ids.extend(mesh.networks.values().filter_map(|n| n.east_west_gateway.as_ref()).map(|g| g.identity.clone()));
            for id in ids {
                println!("{id}");
            }
            Ok(())
        }
        "pods" => {
            let mesh = flags.mesh()?;
            let node = flags.string("node")?;
            for w in mesh.workloads_on_node(&node) {
                println!("{}", w.address);
            }
            Ok(())
        }
        other => bail!("unknown command {other:?}: echo, client, burst, grpc, probe, identities or pods"),
    }
}

/// Where a server pod's app listens: its address, on the target port of a service it backs.
fn pod_listen(mesh: &Mesh, workload: &str) -> anyhow::Result<SocketAddr> {
    let w = mesh.workload(workload).ok_or_else(|| anyhow!("no workload {workload:?} in the mesh file"))?;
    let service = mesh.services_of(w).next().ok_or_else(|| anyhow!("workload {workload:?} backs no service"))?;
    Ok(SocketAddr::new(w.address, service.target_port))
}

/// Where a server pod's gRPC app listens: its address, on `port`.
fn grpc_listen(mesh: &Mesh, workload: &str, port: usize) -> anyhow::Result<SocketAddr> {
    let w = mesh.workload(workload).ok_or_else(|| anyhow!("no workload {workload:?} in the mesh file"))?;
    let port = u16::try_from(port).with_context(|| format!("--grpc-port {port}"))?;
    Ok(SocketAddr::new(w.address, port))
}

/// The outbound listener of `workload` whose destination is `service` (HOST:PORT).
fn outbound_to(mesh: &Mesh, workload: &str, service: &str) -> anyhow::Result<SocketAddr> {
    let w = mesh.workload(workload).ok_or_else(|| anyhow!("no workload {workload:?} in the mesh file"))?;
    w.outbound
        .iter()
        .find(|o| o.destination == service)
        .map(|o| o.listen)
        .ok_or_else(|| anyhow!("workload {workload:?} has no outbound listener for {service:?}"))
}

/// `--name value` pairs and at most one positional argument.
struct Flags {
    named: BTreeMap<String, String>,
    positional: Vec<String>,
}

impl Flags {
    fn parse(args: Vec<String>) -> anyhow::Result<Self> {
        let mut named = BTreeMap::new();
        let mut positional = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if let Some(name) = arg.strip_prefix("--") {
                let value = args.next().ok_or_else(|| anyhow!("--{name} needs a value"))?;
                named.insert(name.to_owned(), value);
            } else {
                positional.push(arg);
            }
        }
        Ok(Self { named, positional })
    }

    fn string(&mut self, name: &str) -> anyhow::Result<String> {
        self.named.remove(name).ok_or_else(|| anyhow!("--{name} is required"))
    }

    fn string_or(&mut self, name: &str, default: &str) -> String {
        self.named.remove(name).unwrap_or_else(|| default.to_owned())
    }

    fn addr(&mut self, name: &str) -> anyhow::Result<SocketAddr> {
        let value = self.string(name)?;
        value.parse().with_context(|| format!("--{name} {value:?} is not an ip:port"))
    }

    fn mesh(&mut self) -> anyhow::Result<Mesh> {
        let path = self.string("mesh")?;
        Mesh::load(std::path::Path::new(&path)).with_context(|| format!("mesh file {path}"))
    }

    /// `--entry`, else the first outbound listener of `--workload` in `--mesh`.
    fn entry(&mut self) -> anyhow::Result<SocketAddr> {
        if self.named.contains_key("entry") {
            return self.addr("entry");
        }
        let mesh = self.mesh()?;
        let name = self.string("workload")?;
        let w = mesh.workload(&name).ok_or_else(|| anyhow!("no workload {name:?} in the mesh file"))?;
        w.outbound.first().map(|o| o.listen).ok_or_else(|| anyhow!("workload {name:?} has no outbound listener"))
    }

    fn number(&mut self, name: &str) -> anyhow::Result<usize> {
        let value = self.string(name)?;
        value.parse().with_context(|| format!("--{name} {value:?} is not a number"))
    }

    fn number_or(&mut self, name: &str, default: usize) -> anyhow::Result<usize> {
        if self.named.contains_key(name) { self.number(name) } else { Ok(default) }
    }

    fn millis_or(&mut self, name: &str, default: u64) -> anyhow::Result<Duration> {
        Ok(Duration::from_millis(self.number_or(name, default as usize)? as u64))
    }

    fn positional(&mut self) -> anyhow::Result<String> {
        if self.positional.is_empty() { bail!("an address is required") } else { Ok(self.positional.remove(0)) }
    }
}

/// The echo server (and the gRPC one on `grpc`), with what they received printed as it arrives.
async fn echo(listen: SocketAddr, grpc: Option<SocketAddr>, workload: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    println!("{}", json!({ "event": "listening", "workload": workload, "address": listen }));
    let grpc_server = match grpc {
        Some(address) => {
            let server = GrpcServer::start(workload, address).await.with_context(|| format!("gRPC on {address}"))?;
            println!("{}", json!({ "event": "listening", "workload": workload, "grpc_address": address }));
            Some(server)
        }
        None => None,
    };
    let mut grpc_logged = 0;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = tokio::spawn(apps::serve(listener, workload.to_owned(), seen.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let batch = seen.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
        let calls = grpc_server.as_ref().map(GrpcServer::seen).unwrap_or_default();
        let new_calls = calls.get(grpc_logged..).unwrap_or_default();
        if batch.is_empty() && new_calls.is_empty() {
            if server.is_finished() {
                bail!("the echo server stopped");
            }
            continue;
        }
        let mut out = std::io::stdout().lock();
        for s in batch {
            let line = json!({
                "workload": workload, "path": s.path, "baggage": s.baggage,
                "peer_metadata_leaked": s.peer_metadata_leaked,
            });
            writeln!(out, "{line}")?;
        }
        for call in new_calls {
            writeln!(
                out,
                "{}",
                json!({ "workload": workload, "grpc": call.path, "http": format!("{:?}", call.version) })
            )?;
        }
        grpc_logged = calls.len();
        out.flush()?;
    }
}

struct GrpcPlan {
    connections: usize,
    calls: usize,
    replies: u32,
    pause: Duration,
    timeout: Duration,
}

/// `plan.connections` gRPC connections, one after another (`plan.pause` apart), each with
/// its unary and server-streaming calls; all of it within `plan.timeout`.
async fn grpc_calls(entry: SocketAddr, host: &str, port: u16, plan: GrpcPlan) -> anyhow::Result<()> {
    let started = Instant::now();
    let (mut unary_ok, mut stream_ok, mut replies, mut failed) = (0usize, 0usize, 0usize, 0usize);
    let mut errors = Vec::new();
    let mut note = |errors: &mut Vec<String>, e: String| {
        failed += 1;
        if errors.len() < 5 {
            errors.push(e);
        }
    };
    let all = async {
        for c in 0..plan.connections {
            if c > 0 {
                tokio::time::sleep(plan.pause).await;
            }
            let mut client = match GrpcClient::connect(entry, host, port).await {
                Ok(client) => client,
                Err(e) => {
                    note(&mut errors, format!("connection {c}: {e}"));
                    continue;
                }
            };
            for n in 0..plan.calls {
                match client.unary(&format!("unary {c}/{n}"), 0).await {
                    Ok(_) => unary_ok += 1,
                    Err(e) => note(&mut errors, format!("unary {c}/{n}: {e}")),
                }
                match client.stream(&format!("stream {c}/{n}"), plan.replies).await {
                    Ok((got, _)) => {
                        stream_ok += 1;
                        replies += got.len();
                    }
                    Err(e) => note(&mut errors, format!("stream {c}/{n}: {e}")),
                }
            }
        }
    };
    let timed_out = tokio::time::timeout(plan.timeout, all).await.is_err();
    if timed_out {
        errors.push(format!("not done within {:?}", plan.timeout));
    }
    let summary = json!({
        "unary_ok": unary_ok, "stream_ok": stream_ok, "replies": replies, "failed": failed,
        "timed_out": timed_out, "errors": errors, "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{summary}");
    Ok(())
}

/// What one request through the mesh came to.
struct Answer {
    status: Option<u16>,
    workload: Option<String>,
    error: Option<String>,
    elapsed: Duration,
}

/// One GET on a new connection, all of it within `timeout`.
async fn one_request(entry: SocketAddr, path: &str, baggage: &str, timeout: Duration) -> Answer {
    let started = Instant::now();
    let attempt = async {
        let mut connection = Connection::open(entry).await?;
        connection.get(&service_host(), path, &[("baggage", baggage)]).await
    };
    let (status, workload, error) = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(reply)) => {
            let workload = reply.json().get("workload").and_then(|w| w.as_str()).map(str::to_owned);
            (Some(reply.status.as_u16()), workload, None)
        }
        Ok(Err(e)) => (None, None, Some(e.to_string())),
        Err(_) => (None, None, Some(format!("no reply within {timeout:?}"))),
    };
    Answer { status, workload, error, elapsed: started.elapsed() }
}

async fn trickle(entry: SocketAddr, baggage: &str, interval: Duration, timeout: Duration) -> anyhow::Result<()> {
    println!("{}", json!({ "event": "start", "entry": entry, "host": service_host(), "baggage": baggage }));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        let answer = one_request(entry, &format!("/trickle/{n}"), baggage, timeout).await;
        let line = json!({
            "n": n, "status": answer.status, "workload": answer.workload, "error": answer.error,
            "ms": answer.elapsed.as_millis() as u64,
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

async fn burst(
    entry: SocketAddr,
    connections: usize,
    concurrency: usize,
    baggage: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(connections.max(1)) {
        let (next, baggage) = (next.clone(), baggage.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= connections {
                    return answers;
                }
                answers.push(one_request(entry, &format!("/burst/{n}"), &baggage, timeout).await);
            }
        }));
    }
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut workloads: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors = Vec::new();
    for task in tasks {
        for answer in task.await.context("burst task")? {
            match (answer.status, answer.workload) {
                (Some(200), Some(workload)) => {
                    ok += 1;
                    *workloads.entry(workload).or_default() += 1;
                }
                (status, _) => {
                    failed += 1;
                    if errors.len() < 5 {
                        errors.push(json!({ "status": status, "error": answer.error }));
                    }
                }
            }
        }
    }
    let summary = json!({
        "connections": connections, "concurrency": concurrency, "ok": ok, "failed": failed,
        "workloads": workloads, "errors": errors, "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{summary}");
    Ok(())
}
