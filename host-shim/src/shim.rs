//! One shim instance: the ztunnel of one node. Binds an inbound listener per
//! served workload, an outbound listener per configured destination and the
//! admin endpoint, then runs until drained.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use waypoint_core::Limits;

use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::tls::{Credentials, TlsError};
use crate::tuning::Tuning;
use crate::{admin, drain, inbound, outbound};
use mesh::ca::CertDir;
use mesh::{Mesh, MeshError};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    Config(#[from] MeshError),
    #[error("no workload in the mesh file runs on node {0:?}")]
    NoWorkloads(String),
    #[error("credentials: {0}")]
    Credentials(#[from] TlsError),
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind { what: String, address: SocketAddr, source: std::io::Error },
}

pub struct ShimOptions {
    pub mesh: Mesh,
    /// Serve the workloads whose `node` is this.
    pub node: String,
    pub certs: CertDir,
    /// Admin endpoint (`/metrics`, `/ready`); port 0 picks a free one.
    pub admin: SocketAddr,
    pub tuning: Tuning,
}

/// What every listener and connection task shares.
pub(crate) struct Context {
    pub mesh: Arc<Mesh>,
    pub credentials: Arc<Credentials>,
    pub metrics: Arc<Metrics>,
    pub pool: Pool,
    pub tuning: Tuning,
    pub limits: Limits,
}

/// A running shim. Dropping it without `shutdown` also starts the drain.
pub struct Shim {
    admin: SocketAddr,
    metrics: Arc<Metrics>,
    trigger: drain::Trigger,
    drain_deadline: Duration,
}

impl Shim {
    /// Binds every listener (failing before anything runs), then starts serving.
    pub async fn start(options: ShimOptions) -> Result<Self, ShimError> {
        options.mesh.validate()?;
        let mesh = Arc::new(options.mesh);
        let served: Vec<_> = mesh.workloads_on_node(&options.node).cloned().collect();
        if served.is_empty() {
            return Err(ShimError::NoWorkloads(options.node));
        }
        let identities: Vec<String> = served.iter().map(|w| mesh.identity_of(w)).collect();
        let credentials =
            Arc::new(Credentials::load(&options.certs, &mesh.trust_domain, identities.iter().map(String::as_str))?);

        let mut inbound_listeners = Vec::new();
        let mut outbound_listeners = Vec::new();
        for (workload, identity) in served.iter().zip(&identities) {
            let address = SocketAddr::new(workload.address, mesh.hbone_port);
            let listener = bind(address, format!("inbound of {}", workload.name)).await?;
            inbound_listeners.push((listener, workload.clone(), credentials.server_config(identity)?));
            for entry in &workload.outbound {
                let destination = mesh.destination(workload, entry)?;
                let listener =
                    bind(entry.listen, format!("outbound of {} to {}", workload.name, entry.destination)).await?;
                outbound_listeners.push((listener, workload.clone(), destination));
            }
        }
        let admin_listener = bind(options.admin, "admin".to_owned()).await?;
        let admin = admin_listener.local_addr().map_err(|source| ShimError::Bind {
            what: "admin".to_owned(),
            address: options.admin,
            source,
        })?;

        let metrics = Arc::new(Metrics::default());
        let (trigger, watcher) = drain::channel();
        let tuning = options.tuning;
        let pool = Pool::new(credentials.clone(), metrics.clone(), tuning, watcher.clone());
        let ctx =
            Arc::new(Context { mesh, credentials, metrics: metrics.clone(), pool, tuning, limits: Limits::default() });
        for (listener, workload, config) in inbound_listeners {
            tokio::spawn(inbound::serve(listener, workload, config, ctx.clone(), watcher.clone()));
        }
        for (listener, workload, destination) in outbound_listeners {
            tokio::spawn(outbound::serve(listener, workload, destination, ctx.clone(), watcher.clone()));
        }
        tokio::spawn(admin::serve(admin_listener, metrics.clone(), tuning, watcher));
        tracing::info!(node = %options.node, %admin, workloads = served.len(), "host-shim ready");
        Ok(Self { admin, metrics, trigger, drain_deadline: tuning.drain_deadline })
    }

    pub fn admin_address(&self) -> SocketAddr {
        self.admin
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, lets open tunnels finish (up to the drain deadline) and
    /// returns whether everything finished in time.
    pub async fn shutdown(self) -> bool {
        self.trigger.drain(self.drain_deadline).await
    }
}

async fn bind(address: SocketAddr, what: String) -> Result<TcpListener, ShimError> {
    TcpListener::bind(address).await.map_err(|source| ShimError::Bind { what, address, source })
}
