//! The local two-network mesh, every part on its own loopback address:
//!
//! ```text
//! network-a (cluster1)                               network-b (cluster2)
//! curl ─▶ ztunnel-a ─HBONE─▶ waypoint ─double HBONE─▶ east-west gateway ─▶ ztunnel-b ─▶ echo-v1
//! productpage (sidecar) ─┘   (Envoy + wasm)                                          └─▶ echo-v2
//!                            └─HBONE─▶ ztunnel-a ─▶ ratings-v1 (same network: no gateway)
//! ```
//!
//! Ports, addresses and paths are chosen here, in one place; the mesh file is
//! written from them and every Envoy config is rendered from the mesh file.
//!
//! [`Options`] can put independent peers (`hbone-peers`, no product code) in the place
//! of ztunnel-b (node-b: echo-v1, echo-v2) and of ztunnel-a's inbound for ratings-v1,
//! and add the gRPC services (`grpc-echo` in network-b, `grpc-ratings` in network-a)
//! with a tonic server on every one of those pods.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use envoy_config::eastwest::{self, EastWest};
use envoy_config::template::Edge;
pub use envoy_config::waypoint::Engine;
use envoy_config::waypoint::{self, Waypoint};
use hbone_peers::{DestinationConfig, HboneDestination, TlsFiles};
use mesh::Mesh;
use mesh::ca::{self, CertDir};
use serde_json::json;

use crate::HarnessError;
use crate::apps::EchoServer;
use crate::grpc::GrpcServer;
use crate::http;
use crate::process::Process;

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const SERVICE_HOST: &str = "echo.backend.svc.cluster.local";
/// A service in the waypoint's own network: reached without the gateway.
pub const LOCAL_SERVICE_HOST: &str = "ratings.backend.svc.cluster.local";
pub const SERVICE_PORT: u16 = 8080;
/// The gRPC service in network-b (echo-v1, echo-v2), with [`Options::grpc`].
pub const GRPC_SERVICE_HOST: &str = "grpc-echo.backend.svc.cluster.local";
/// The gRPC service in network-a (ratings-v1), with [`Options::grpc`].
pub const GRPC_LOCAL_SERVICE_HOST: &str = "grpc-ratings.backend.svc.cluster.local";
/// Service and target port of both gRPC services: the tonic servers listen on it.
pub const GRPC_PORT: u16 = 50051;
pub const HBONE_PORT: u16 = 15008;
const ENVOY_ADMIN_PORT: u16 = 15000;
const SHIM_ADMIN_PORT: u16 = 15020;
const OUTBOUND_PORT: u16 = 18080;
const LOCAL_OUTBOUND_PORT: u16 = 18081;
const GRPC_OUTBOUND_PORT: u16 = 18082;
const GRPC_LOCAL_OUTBOUND_PORT: u16 = 18083;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A waypoint under [`Options::waypoint_under`] (valgrind) starts 50-100 times slower.
const SLOW_READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the programs are: `make build` puts them in dist/, the venv holds Envoy.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub host_shim: PathBuf,
    pub envoy: PathBuf,
    pub wasm: PathBuf,
    /// The directory holding `libwaypoint_native.so`, Envoy's search path for the native engine.
    pub native_dir: PathBuf,
}

impl Binaries {
    /// From HOST_SHIM_BIN, ENVOY_BIN and WAYPOINT_WASM, else the project's default paths.
    pub fn from_env() -> Result<Self, HarnessError> {
        let root = workspace_root();
        let pick = |var: &str, default: PathBuf| -> Result<PathBuf, HarnessError> {
            let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
            if path.is_file() {
                Ok(path)
            } else {
                Err(HarnessError::Missing { what: var.to_owned(), path, hint: "run `make build` first" })
            }
        };
        Ok(Self {
            host_shim: pick("HOST_SHIM_BIN", root.join("dist/host-shim"))?,
            envoy: pick("ENVOY_BIN", root.join(".venv/lib/python3.11/site-packages/envoy/_bin/envoy"))?,
            wasm: pick("WAYPOINT_WASM", root.join("dist/waypoint.wasm"))?,
            native_dir: pick("WAYPOINT_NATIVE_SO", root.join("dist/libwaypoint_native.so"))?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        })
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The address plan: 127.<block>.<network>.<host>, a /16 of loopback per topology.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    block: u8,
}

static NEXT_BLOCK: AtomicU8 = AtomicU8::new(0);

impl Plan {
    /// A block no other topology of this process uses; the process id keeps
    /// concurrent test binaries apart.
    pub fn fresh() -> Self {
        let n = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
        let block = 30 + ((std::process::id() as u64 * 7 + n as u64 * 13) % 200) as u8;
        Self { block }
    }

    fn ip(&self, network: u8, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.block, network, host))
    }

    pub fn curl(&self) -> IpAddr {
        self.ip(1, 1)
    }
    pub fn productpage(&self) -> IpAddr {
        self.ip(1, 2)
    }
    pub fn waypoint(&self) -> IpAddr {
        self.ip(1, 100)
    }
    pub fn echo(&self, n: u8) -> IpAddr {
        self.ip(2, n)
    }
    pub fn ratings(&self) -> IpAddr {
        self.ip(1, 10)
    }
    pub fn gateway(&self) -> IpAddr {
        self.ip(2, 100)
    }
    /// The client apps' entry: the ztunnel-a outbound listener on their own address.
    pub fn outbound(&self, client: IpAddr) -> SocketAddr {
        SocketAddr::new(client, OUTBOUND_PORT)
    }
    /// The client apps' entry to the same-network ratings service.
    pub fn local_outbound(&self, client: IpAddr) -> SocketAddr {
        SocketAddr::new(client, LOCAL_OUTBOUND_PORT)
    }
    /// The client apps' entry to the gRPC service in network-b (h2c), with [`Options::grpc`].
    pub fn grpc_outbound(&self, client: IpAddr) -> SocketAddr {
        SocketAddr::new(client, GRPC_OUTBOUND_PORT)
    }
    /// The client apps' entry to the same-network gRPC service (h2c), with [`Options::grpc`].
    pub fn grpc_local_outbound(&self, client: IpAddr) -> SocketAddr {
        SocketAddr::new(client, GRPC_LOCAL_OUTBOUND_PORT)
    }
    /// The HBONE port of a pod address (its ztunnel's inbound, or an independent destination).
    pub fn hbone(&self, pod: IpAddr) -> SocketAddr {
        SocketAddr::new(pod, HBONE_PORT)
    }
    /// The waypoint's HBONE listener (connect_terminate).
    pub fn waypoint_hbone(&self) -> SocketAddr {
        self.hbone(self.waypoint())
    }
    pub fn waypoint_admin(&self) -> SocketAddr {
        SocketAddr::new(self.waypoint(), ENVOY_ADMIN_PORT)
    }
    pub fn gateway_admin(&self) -> SocketAddr {
        SocketAddr::new(self.gateway(), ENVOY_ADMIN_PORT)
    }
    pub fn shim_admin(&self, network: u8) -> SocketAddr {
        SocketAddr::new(self.ip(network, 250), SHIM_ADMIN_PORT)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Istio's AMBIENT_ENABLE_BAGGAGE, for the waypoint.
    pub baggage_discovery: bool,
    /// The waypoint with this project's filters; without, a plain waypoint (benchmark baseline).
    pub telemetry: bool,
    /// Another module in the filters' places (the benchmark's do-nothing floor); `None`:
    /// the waypoint module.
    pub module: Option<PathBuf>,
    /// The filters' engine: the wasm module or the native dynamic module ([`Engine::DEFAULT`]
    /// unless set).
    pub engine: Engine,
    /// Who answers HBONE for node-b's pods (echo-v1, echo-v2).
    pub node_b: PodHbone,
    /// Who answers HBONE for ratings-v1 (node-a); curl and productpage stay on ztunnel-a.
    pub ratings: PodHbone,
    /// The gRPC services and a tonic server on every echo and ratings pod.
    pub grpc: bool,
    /// The waypoint plugin's limits (e.g. a low `max_label_sets` for the cardinality tests).
    pub limits: waypoint_core::Limits,
    /// The waypoint's edge-proxy timeouts and connection limit.
    pub edge: Edge,
    /// A program and its arguments the waypoint's Envoy runs under, its command line
    /// appended (the benchmark's valgrind); `None`: Envoy itself.
    pub waypoint_under: Option<Vec<String>>,
}

impl Options {
    /// The defaults, with the filters in `engine`.
    pub fn with_engine(engine: Engine) -> Self {
        Self { engine, ..Self::default() }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            baggage_discovery: true,
            telemetry: true,
            module: None,
            engine: Engine::DEFAULT,
            node_b: PodHbone::Ztunnel,
            ratings: PodHbone::Ztunnel,
            grpc: false,
            limits: waypoint_core::Limits::default(),
            edge: Edge::default(),
            waypoint_under: None,
        }
    }
}

/// Who terminates HBONE on a pod's :15008.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PodHbone {
    /// host-shim, this project's ztunnel stand-in (today's behaviour).
    #[default]
    Ztunnel,
    /// An `hbone-peers` destination per pod, answering 200 with the literal `baggage`
    /// listed for its workload name, or with no `baggage` for a pod not listed.
    Independent(Vec<(String, String)>),
}

impl PodHbone {
    /// Independent destinations that send no response baggage at all.
    pub fn independent_without_baggage() -> Self {
        Self::Independent(Vec::new())
    }

    /// Independent destinations with these `(workload, literal baggage)` answers.
    pub fn independent(baggage: &[(&str, &str)]) -> Self {
        Self::Independent(baggage.iter().map(|(w, b)| ((*w).to_owned(), (*b).to_owned())).collect())
    }

    fn baggage_of(&self, workload: &str) -> Option<&str> {
        match self {
            Self::Ztunnel => None,
            Self::Independent(list) => list.iter().find(|(w, _)| w == workload).map(|(_, b)| b.as_str()),
        }
    }
}

/// The node ratings-v1 is on when an independent destination serves it: a node no
/// ztunnel serves, so ztunnel-a does not bind its :15008.
const INDEPENDENT_NODE: &str = "node-independent";

pub struct Topology {
    pub plan: Plan,
    pub dir: PathBuf,
    /// The endpoints of the echo service, in network-b.
    pub echo: Vec<EchoServer>,
    /// The one endpoint of the ratings service, in network-a with the waypoint.
    pub ratings: EchoServer,
    /// With [`Options::grpc`]: the tonic server of echo-v1, echo-v2 and ratings-v1.
    pub grpc: Vec<GrpcServer>,
    /// The independent HBONE destinations, by workload name.
    pub destinations: BTreeMap<String, HboneDestination>,
    pub binaries: Binaries,
    mesh_file: PathBuf,
    certs: PathBuf,
    ztunnel_a: Option<Process>,
    ztunnel_b: Option<Process>,
    gateway: Option<Process>,
    waypoint: Option<Process>,
    waypoint_under: Option<Vec<String>>,
}

/// The identities the CA issues.
fn identities() -> Vec<String> {
    [
        ("frontend", "curl"),
        ("frontend", "productpage"),
        ("backend", "echo"),
        ("backend", "ratings"),
        ("backend", "waypoint"),
        ("istio-system", "istio-eastwestgateway"),
    ]
    .iter()
    .map(|(ns, sa)| format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}"))
    .collect()
}

pub fn identity(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

fn mesh_json(plan: &Plan, options: &Options) -> serde_json::Value {
    let service = format!("{SERVICE_HOST}:{SERVICE_PORT}");
    // name, namespace, service account, node, cluster, network, revision, zone, address, extra fields
    let workload = |name: &str,
                    ns: &str,
                    sa: &str,
                    node: &str,
                    cluster: &str,
                    network: &str,
                    rev: &str,
                    zone: &str,
                    address: IpAddr,
                    extra: serde_json::Value| {
        let mut w = json!({
            "name": name, "namespace": ns, "service_account": sa, "workload_type": "deployment",
            "node": node, "cluster": cluster, "network": network,
            "canonical_service": name.split('-').next().unwrap_or(name), "canonical_revision": rev,
            "region": format!("region-{}", network.trim_start_matches("network-")), "zone": zone,
            "address": address,
        });
        if let (Some(w), serde_json::Value::Object(extra)) = (w.as_object_mut(), extra) {
            w.extend(extra);
        }
        w
    };
    let local_service = format!("{LOCAL_SERVICE_HOST}:{SERVICE_PORT}");
    let waypoint_ref =
        json!({ "address": SocketAddr::new(plan.waypoint(), HBONE_PORT), "identity": identity("backend", "waypoint") });
    let outbound =
        |client: IpAddr| json!({ "outbound": [{ "listen": plan.outbound(client), "destination": service }] });
    let mut curl_listeners = vec![
        json!({ "listen": plan.outbound(plan.curl()), "destination": service }),
        json!({ "listen": plan.local_outbound(plan.curl()), "destination": local_service }),
    ];
    if options.grpc {
        curl_listeners.extend([
            json!({ "listen": plan.grpc_outbound(plan.curl()),
                    "destination": format!("{GRPC_SERVICE_HOST}:{GRPC_PORT}") }),
            json!({ "listen": plan.grpc_local_outbound(plan.curl()),
                    "destination": format!("{GRPC_LOCAL_SERVICE_HOST}:{GRPC_PORT}") }),
        ]);
    }
    let curl_outbound = json!({ "outbound": curl_listeners });
    let ratings_node = if options.ratings == PodHbone::Ztunnel { "node-a" } else { INDEPENDENT_NODE };
    let mut sidecar = outbound(plan.productpage());
    if let Some(fields) = sidecar.as_object_mut() {
        fields.insert("sidecar".into(), json!(true));
    }
    let mut services = vec![
        json!({
            "hostname": SERVICE_HOST, "name": "echo", "namespace": "backend", "vip": "10.96.0.10",
            "port": SERVICE_PORT, "target_port": SERVICE_PORT, "endpoints": ["echo-v1", "echo-v2"],
            "waypoint": waypoint_ref,
        }),
        json!({
            "hostname": LOCAL_SERVICE_HOST, "name": "ratings", "namespace": "backend", "vip": "10.96.0.11",
            "port": SERVICE_PORT, "target_port": SERVICE_PORT, "endpoints": ["ratings-v1"],
            "waypoint": waypoint_ref,
        }),
    ];
    if options.grpc {
        services.extend([
            json!({
                "hostname": GRPC_SERVICE_HOST, "name": "grpc-echo", "namespace": "backend", "vip": "10.96.0.12",
                "port": GRPC_PORT, "target_port": GRPC_PORT, "endpoints": ["echo-v1", "echo-v2"],
                "waypoint": waypoint_ref,
            }),
            json!({
                "hostname": GRPC_LOCAL_SERVICE_HOST, "name": "grpc-ratings", "namespace": "backend",
                "vip": "10.96.0.13", "port": GRPC_PORT, "target_port": GRPC_PORT, "endpoints": ["ratings-v1"],
                "waypoint": waypoint_ref,
            }),
        ]);
    }
    json!({
        "trust_domain": TRUST_DOMAIN,
        "hbone_port": HBONE_PORT,
        "networks": { "network-b": { "east_west_gateway": {
            "address": SocketAddr::new(plan.gateway(), HBONE_PORT),
            "identity": identity("istio-system", "istio-eastwestgateway"),
        } } },
        "workloads": [
            workload("curl", "frontend", "curl", "node-a", "cluster1", "network-a", "v1", "zone-a1", plan.curl(),
                     curl_outbound),
            workload("productpage-v1", "frontend", "productpage", "node-a", "cluster1", "network-a", "v1", "zone-a1",
                     plan.productpage(), sidecar),
            workload("waypoint", "backend", "waypoint", "waypoint", "cluster1", "network-a", "latest", "zone-a1",
                     plan.waypoint(), json!({})),
            workload("echo-v1", "backend", "echo", "node-b", "cluster2", "network-b", "v1", "zone-b1", plan.echo(1),
                     json!({})),
            workload("echo-v2", "backend", "echo", "node-b", "cluster2", "network-b", "v2", "zone-b2", plan.echo(2),
                     json!({})),
            workload("ratings-v1", "backend", "ratings", ratings_node, "cluster1", "network-a", "v1", "zone-a2",
                     plan.ratings(), json!({})),
        ],
        "services": services,
    })
}

impl Topology {
    /// Starts everything and waits until every part answers; on any failure
    /// what was started is stopped again.
    pub async fn start(options: Options) -> Result<Self, HarnessError> {
        let binaries = Binaries::from_env()?;
        let plan = Plan::fresh();
        let dir = run_dir()?;
        let certs = dir.join("certs");
        ca::generate(&certs, &identities()).map_err(|e| HarnessError::Setup(format!("mesh CA: {e}")))?;
        let mesh_file = dir.join("mesh.json");
        let mesh_text = serde_json::to_string_pretty(&mesh_json(&plan, &options)).unwrap_or_default();
        std::fs::write(&mesh_file, &mesh_text).map_err(|e| HarnessError::io(&mesh_file, e))?;
        let mesh = Mesh::parse(&mesh_text).map_err(|e| HarnessError::Setup(format!("mesh file: {e}")))?;

        let mut echo = Vec::new();
        for (n, name) in [(1, "echo-v1"), (2, "echo-v2")] {
            echo.push(EchoServer::start(name, SocketAddr::new(plan.echo(n), SERVICE_PORT)).await?);
        }
        let ratings = EchoServer::start("ratings-v1", SocketAddr::new(plan.ratings(), SERVICE_PORT)).await?;
        let mut grpc = Vec::new();
        if options.grpc {
            for (name, ip) in [("echo-v1", plan.echo(1)), ("echo-v2", plan.echo(2)), ("ratings-v1", plan.ratings())] {
                grpc.push(GrpcServer::start(name, SocketAddr::new(ip, GRPC_PORT)).await?);
            }
        }
        let mut destinations = BTreeMap::new();
        for (pods, who) in [(&["echo-v1", "echo-v2"][..], &options.node_b), (&["ratings-v1"][..], &options.ratings)] {
            if *who == PodHbone::Ztunnel {
                continue;
            }
            for pod in pods {
                let destination = independent_destination(&mesh, pod, who.baggage_of(pod), &certs).await?;
                destinations.insert((*pod).to_owned(), destination);
            }
        }
        let mut topology = Self {
            plan,
            dir,
            echo,
            ratings,
            grpc,
            destinations,
            binaries,
            mesh_file,
            certs,
            ztunnel_a: None,
            ztunnel_b: None,
            gateway: None,
            waypoint: None,
            waypoint_under: options.waypoint_under.clone(),
        };
        topology.write_envoy_configs(&mesh, &options)?;
        if options.node_b == PodHbone::Ztunnel {
            topology.start_ztunnel_b().await?;
        }
        topology.start_gateway().await?;
        topology.start_waypoint().await?;
        topology.ztunnel_a = Some(topology.start_shim("node-a", 1).await?);
        Ok(topology)
    }

    fn write_envoy_configs(&self, mesh: &Mesh, options: &Options) -> Result<(), HarnessError> {
        let certs = CertDir(self.certs.clone());
        let gateway = eastwest::render(
            eastwest::TEMPLATE,
            &EastWest {
                mesh,
                network: "network-b",
                certs: &certs,
                admin: self.plan.gateway_admin(),
                access_log: &self.dir.join("gateway-access.log"),
            },
        )
        .map_err(|e| HarnessError::Setup(format!("gateway config: {e}")))?;
        let waypoint = waypoint::render(
            waypoint::TEMPLATE,
            &Waypoint {
                mesh,
                workload: "waypoint",
                certs: &certs,
                engine: options.engine,
                wasm: options.module.as_ref().unwrap_or(&self.binaries.wasm),
                admin: self.plan.waypoint_admin(),
                access_log: &self.dir.join("waypoint-access.log"),
                baggage_discovery: options.baggage_discovery,
                telemetry: options.telemetry,
                limits: options.limits.clone(),
                edge: options.edge,
            },
        )
        .map_err(|e| HarnessError::Setup(format!("waypoint config: {e}")))?;
        for (file, text) in [("gateway.yaml", gateway), ("waypoint.yaml", waypoint)] {
            let path = self.dir.join(file);
            std::fs::write(&path, text).map_err(|e| HarnessError::io(&path, e))?;
        }
        Ok(())
    }

    async fn start_shim(&self, node: &str, network: u8) -> Result<Process, HarnessError> {
        let admin = self.plan.shim_admin(network);
        let args = vec![
            "run".into(),
            "--mesh".into(),
            self.mesh_file.display().to_string(),
            "--node".into(),
            node.into(),
            "--certs".into(),
            self.certs.display().to_string(),
            "--admin".into(),
            admin.to_string(),
        ];
        let log = self.dir.join(format!("ztunnel-{node}.log"));
        let process = Process::spawn(&format!("ztunnel {node}"), &self.binaries.host_shim, &args, log)?;
        ready(process, admin, READY_TIMEOUT).await
    }

    async fn start_envoy(&self, name: &str, admin: SocketAddr) -> Result<Process, HarnessError> {
        self.start_envoy_under(name, admin, None).await
    }

    async fn start_envoy_under(
        &self,
        name: &str,
        admin: SocketAddr,
        under: Option<&[String]>,
    ) -> Result<Process, HarnessError> {
        let envoy_args = vec![
            "-c".into(),
            self.dir.join(format!("{name}.yaml")).display().to_string(),
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            "2".into(),
            "-l".into(),
            "warning".into(),
        ];
        let search_path = [("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", self.binaries.native_dir.as_path())];
        let log = self.dir.join(format!("{name}.log"));
        let Some((program, wrapper_args)) = under.and_then(<[String]>::split_first) else {
            let process = Process::spawn_with_env(name, &self.binaries.envoy, &envoy_args, &search_path, log)?;
            return ready(process, admin, READY_TIMEOUT).await;
        };
        let mut args = wrapper_args.to_vec();
        args.push(self.binaries.envoy.display().to_string());
        args.extend(envoy_args);
        let process = Process::spawn_with_env(name, Path::new(program), &args, &search_path, log)?;
        ready(process, admin, SLOW_READY_TIMEOUT).await
    }

    pub async fn start_ztunnel_b(&mut self) -> Result<(), HarnessError> {
        self.ztunnel_b = Some(self.start_shim("node-b", 2).await?);
        Ok(())
    }

    /// SIGTERM to the destination ztunnel: its pods become unreachable.
    pub fn stop_ztunnel_b(&mut self) {
        self.ztunnel_b = None;
    }

    pub async fn start_gateway(&mut self) -> Result<(), HarnessError> {
        self.gateway = Some(self.start_envoy("gateway", self.plan.gateway_admin()).await?);
        Ok(())
    }

    pub fn stop_gateway(&mut self) {
        self.gateway = None;
    }

    pub async fn start_waypoint(&mut self) -> Result<(), HarnessError> {
        let under = self.waypoint_under.as_deref();
        self.waypoint = Some(self.start_envoy_under("waypoint", self.plan.waypoint_admin(), under).await?);
        Ok(())
    }

    /// The waypoint's process id (valgrind's, under [`Options::waypoint_under`]).
    pub fn waypoint_pid(&self) -> Option<u32> {
        self.waypoint.as_ref()?.pid()
    }

    /// CPU time the waypoint's Envoy has used so far.
    pub fn waypoint_cpu_time(&self) -> Option<Duration> {
        self.waypoint.as_ref()?.cpu_time()
    }

    /// SIGTERM to the waypoint: every tunnel it holds closes, so the gateway
    /// logs the outer CONNECTs it carried (Envoy logs a stream when it ends).
    pub fn stop_waypoint(&mut self) {
        self.waypoint = None;
    }

    /// Resident memory of every process of the mesh, by name.
    pub fn memory(&self) -> Vec<(String, u64)> {
        [&self.waypoint, &self.gateway, &self.ztunnel_a, &self.ztunnel_b]
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone(), p.rss_bytes()?)))
            .collect()
    }

    /// Whether the waypoint's Envoy process is still up.
    pub fn waypoint_running(&mut self) -> bool {
        self.waypoint.as_mut().is_some_and(Process::is_running)
    }

    /// The waypoint's `/stats/prometheus`.
    pub async fn waypoint_prometheus(&self) -> Result<String, HarnessError> {
        Ok(http::get(self.plan.waypoint_admin(), "/stats/prometheus").await?.text())
    }

    /// The waypoint's `/stats` in Envoy's own format.
    pub async fn waypoint_stats(&self) -> Result<String, HarnessError> {
        Ok(http::get(self.plan.waypoint_admin(), "/stats").await?.text())
    }

    /// A shim's `/metrics` (network 1 = ztunnel-a, 2 = ztunnel-b).
    pub async fn shim_metrics(&self, network: u8) -> Result<String, HarnessError> {
        Ok(http::get(self.plan.shim_admin(network), "/metrics").await?.text())
    }

    /// Everything the east-west gateway logged: its access log and its own log.
    pub fn gateway_view(&self) -> String {
        ["gateway-access.log", "gateway.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The mesh CA's directory (host-shim's layout: `root.pem`, `<ns>.<sa>.{cert,key}.pem`).
    pub fn certs_dir(&self) -> &Path {
        &self.certs
    }

    /// The PEM files of identity `spiffe://cluster.local/ns/<namespace>/sa/<service_account>`.
    pub fn tls_files(&self, namespace: &str, service_account: &str) -> TlsFiles {
        TlsFiles::in_ca_dir(&self.certs, namespace, service_account)
    }

    /// The independent HBONE destination of pod `workload`, when the options put one there.
    pub fn destination(&self, workload: &str) -> Option<&HboneDestination> {
        self.destinations.get(workload)
    }

    /// Stops every independent destination (their pods become unreachable).
    pub fn stop_destinations(&mut self) {
        self.destinations.clear();
    }

    /// The tonic server of pod `workload`, with [`Options::grpc`].
    pub fn grpc_server(&self, workload: &str) -> Option<&GrpcServer> {
        self.grpc.iter().find(|g| g.workload == workload)
    }

    /// Requests per echo endpoint, by workload name.
    pub fn served(&self) -> Vec<(String, usize)> {
        self.echo.iter().map(|e| (e.workload.clone(), e.seen().len())).collect()
    }
}

/// An `hbone-peers` destination on `<pod ip>:15008` with the pod's own certificate,
/// accepting what a ztunnel would for that pod: `<pod ip>:<target port>` of each service
/// it backs, and `<service host>:<port>` (the inner CONNECT of double HBONE).
async fn independent_destination(
    mesh: &Mesh,
    pod: &str,
    baggage: Option<&str>,
    certs: &Path,
) -> Result<HboneDestination, HarnessError> {
    let w = mesh.workload(pod).ok_or_else(|| HarnessError::Setup(format!("no workload {pod} in the mesh")))?;
    let files = TlsFiles::in_ca_dir(certs, &w.namespace, &w.service_account);
    let mut config = DestinationConfig::new(SocketAddr::new(w.address, HBONE_PORT), files).baggage(baggage);
    let mut ports = Vec::new();
    for service in mesh.services_of(w) {
        if !ports.contains(&service.target_port) {
            ports.push(service.target_port);
            config = config.serve_port(service.target_port);
        }
        let app = SocketAddr::new(w.address, service.target_port);
        config = config.serve_authority(&format!("{}:{}", service.hostname, service.port), app);
    }
    HboneDestination::start(config)
        .await
        .map_err(|e| HarnessError::Setup(format!("independent destination {pod}: {e}")))
}

async fn ready(mut process: Process, admin: SocketAddr, timeout: Duration) -> Result<Process, HarnessError> {
    match http::wait_for_200(admin, "/ready", timeout).await {
        Ok(()) => Ok(process),
        Err(e) => {
            let running = process.is_running();
            Err(HarnessError::Setup(format!(
                "{} (running: {running}) is not ready: {e}\n--- {} ---\n{}",
                process.name,
                process.log.display(),
                process.log_tail()
            )))
        }
    }
}

/// A fresh directory for one topology's certificates, configs and logs, kept
/// after the run so its logs can be read.
fn run_dir() -> Result<PathBuf, HarnessError> {
    static COUNT: AtomicU8 = AtomicU8::new(0);
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let name = format!("{stamp}-{}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed));
    let dir = workspace_root().join("target/harness").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| HarnessError::io(&dir, e))?;
    Ok(dir)
}
