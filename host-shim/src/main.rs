//! `host-shim`: the ztunnel stand-in (`run`), and the command line of the mesh CA
//! (`ca`, from the `mesh` crate) and of the Envoy config renderer (`*-config`, from
//! `envoy-config`). See the crate docs (src/lib.rs) and README.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use envoy_config::eastwest::{self, EastWest};
use envoy_config::waypoint::{self, Waypoint};
use host_shim::tuning::Tuning;
use host_shim::{Shim, ShimOptions};
use mesh::Mesh;
use mesh::ca::{self, CertDir};

#[derive(Parser)]
#[command(version, about = "Istio ztunnel's HBONE endpoints for local waypoint testing")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a mesh root and one key + certificate per identity in DIR.
    Ca {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// spiffe://<trust domain>/ns/<ns>/sa/<sa>; repeat for more.
        #[arg(long = "identity", value_name = "SPIFFE_ID", required = true)]
        identities: Vec<String>,
    },
    /// Serve the workloads of one node: inbound HBONE, outbound listeners, admin.
    Run {
        #[arg(long, value_name = "FILE")]
        mesh: PathBuf,
        #[arg(long)]
        node: String,
        /// A `host-shim ca` directory holding this node's workload identities.
        #[arg(long, value_name = "DIR")]
        certs: PathBuf,
        /// Admin endpoint serving /metrics and /ready.
        #[arg(long, default_value = "127.0.0.1:15020")]
        admin: SocketAddr,
        /// Seconds open tunnels may take to finish after SIGTERM.
        #[arg(long, value_name = "SECONDS")]
        drain_deadline: Option<u64>,
    },
    /// Render the east-west gateway's Envoy config for one network of the mesh.
    EastwestConfig {
        #[arg(long, value_name = "FILE")]
        mesh: PathBuf,
        #[arg(long)]
        network: String,
        #[arg(long, value_name = "DIR")]
        certs: PathBuf,
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        #[arg(long, value_name = "FILE")]
        access_log: PathBuf,
        /// Template to render instead of the built-in envoy-configs/eastwest.yaml.in.
        #[arg(long, value_name = "FILE")]
        template: Option<PathBuf>,
        /// Output file (default: stdout).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Render a waypoint's Envoy config (with this project's filters) from the mesh file.
    WaypointConfig {
        #[arg(long, value_name = "FILE")]
        mesh: PathBuf,
        /// The waypoint's workload name in the mesh file.
        #[arg(long)]
        workload: String,
        #[arg(long, value_name = "DIR")]
        certs: PathBuf,
        /// The waypoint module (dist/waypoint.wasm), for the wasm engine.
        #[arg(long, value_name = "FILE", default_value = "dist/waypoint.wasm")]
        wasm: PathBuf,
        /// The filters' engine: `wasm`, `native` (dist/libwaypoint_native.so, loaded from
        /// ENVOY_DYNAMIC_MODULES_SEARCH_PATH) or `native-noop` (its do-nothing filter).
        #[arg(
            long,
            default_value = waypoint::Engine::DEFAULT.name(),
            value_parser = clap::builder::PossibleValuesParser::new(waypoint::Engine::ALL.map(waypoint::Engine::name))
        )]
        engine: String,
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// Access log of the inner requests.
        #[arg(long, value_name = "FILE")]
        access_log: PathBuf,
        /// Istio's AMBIENT_ENABLE_BAGGAGE: peers from HBONE baggage (true) or TLS identities only.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        baggage_discovery: bool,
        /// This project's filters; `false` renders a plain waypoint (a benchmark baseline).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        telemetry: bool,
        /// Template to render instead of the built-in envoy-configs/waypoint.yaml.in.
        #[arg(long, value_name = "FILE")]
        template: Option<PathBuf>,
        /// Output file (default: stdout).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Ca { out, identities } => {
            ca::generate(&out, &identities).context("mesh CA")?;
            println!("wrote {} identities and root.pem to {}", identities.len(), out.display());
            Ok(())
        }
        Command::Run { mesh, node, certs, admin, drain_deadline } => {
            let mut tuning = Tuning::default();
            if let Some(seconds) = drain_deadline {
                tuning.drain_deadline = Duration::from_secs(seconds);
            }
            let mesh = Mesh::load(&mesh)?;
            let options = ShimOptions { mesh, node, certs: CertDir(certs), admin, tuning };
            tokio::runtime::Runtime::new()?.block_on(run(options))
        }
        Command::EastwestConfig { mesh, network, certs, admin, access_log, template, out } => {
            let mesh = Mesh::load(&mesh)?;
            let template = read_template(template, eastwest::TEMPLATE)?;
            let certs = CertDir(certs);
            let params = EastWest { mesh: &mesh, network: &network, certs: &certs, admin, access_log: &access_log };
            write_output(out, &eastwest::render(&template, &params)?)
        }
        Command::WaypointConfig {
            mesh,
            workload,
            certs,
            wasm,
            engine,
            admin,
            access_log,
            baggage_discovery,
            telemetry,
            template,
            out,
        } => {
            let mesh = Mesh::load(&mesh)?;
            let template = read_template(template, waypoint::TEMPLATE)?;
            let certs = CertDir(certs);
            let params = Waypoint {
                mesh: &mesh,
                workload: &workload,
                certs: &certs,
                engine: waypoint::Engine::parse(&engine).unwrap_or_default(),
                wasm: &wasm,
                admin,
                access_log: &access_log,
                baggage_discovery,
                telemetry,
                limits: Default::default(),
                edge: Default::default(),
            };
            write_output(out, &waypoint::render(&template, &params)?)
        }
    }
}

fn read_template(path: Option<PathBuf>, built_in: &str) -> anyhow::Result<String> {
    match path {
        Some(path) => std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display())),
        None => Ok(built_in.to_owned()),
    }
}

fn write_output(out: Option<PathBuf>, text: &str) -> anyhow::Result<()> {
    match out {
        Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

async fn run(options: ShimOptions) -> anyhow::Result<()> {
    let shim = Shim::start(options).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
    if shim.shutdown().await {
        tracing::info!("drained");
    } else {
        tracing::warn!("drain deadline passed with tunnels still open; closing them");
    }
    Ok(())
}
