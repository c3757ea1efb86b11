//! Client traffic through the mesh: keep-alive clients behind ztunnel-a.

use std::net::SocketAddr;

use waypoint_core::{Peer, WorkloadType, legacy};

use crate::HarnessError;
use crate::http::Connection;
use crate::topology::{SERVICE_HOST, SERVICE_PORT, Topology};

/// The `Host` the apps use for the service.
pub fn service_host() -> String {
    format!("{SERVICE_HOST}:{SERVICE_PORT}")
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub ok: usize,
    pub failed: usize,
}

impl std::ops::Add for Outcome {
    type Output = Outcome;
    fn add(self, other: Outcome) -> Outcome {
        Outcome { ok: self.ok + other.ok, failed: self.failed + other.failed }
    }
}

/// `requests` keep-alive requests on one connection, each with `headers`; a
/// failed request opens a new connection.
pub async fn client(entry: SocketAddr, requests: usize, headers: Vec<(String, String)>) -> Outcome {
    let mut outcome = Outcome::default();
    let mut connection: Option<Connection> = None;
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for n in 0..requests {
        if connection.is_none() {
            connection = Connection::open(entry).await.ok();
        }
        let Some(open) = connection.as_mut() else {
            outcome.failed += 1;
            continue;
        };
        match open.get(&service_host(), &format!("/request/{n}"), &headers).await {
            Ok(reply) if reply.status.is_success() => outcome.ok += 1,
            Ok(_) => outcome.failed += 1,
            Err(_) => {
                outcome.failed += 1;
                connection = None;
            }
        }
    }
    outcome
}

/// The application baggage client `n` sends: W3C baggage of its own.
pub fn app_baggage(n: usize) -> String {
    format!("user=client-{n},session=s{n}")
}

/// The sidecar-era metadata a productpage sidecar would add to its requests.
pub fn sidecar_metadata() -> String {
    legacy::encode(&Peer {
        workload_name: "productpage-v1".into(),
        workload_type: WorkloadType::Deployment,
        namespace: "frontend".into(),
        cluster: "cluster1".into(),
        canonical_service: "productpage".into(),
        canonical_revision: "v1".into(),
        app: "productpage".into(),
        version: "v1".into(),
        ..Peer::default()
    })
}

/// The demo's load: `clients` concurrent curl clients and one sidecar-style client.
pub async fn run_demo_load(
    topology: &Topology,
    clients: usize,
    requests: usize,
    sidecar_requests: usize,
) -> Result<Outcome, HarnessError> {
    let plan = topology.plan;
    let mut tasks = Vec::new();
    for n in 0..clients {
        let headers = vec![("baggage".to_owned(), app_baggage(n))];
        tasks.push(tokio::spawn(client(plan.outbound(plan.curl()), requests, headers)));
    }
    let sidecar = vec![
        ("x-envoy-peer-metadata".to_owned(), sidecar_metadata()),
        (
            "x-envoy-peer-metadata-id".to_owned(),
            "sidecar~127.0.0.2~productpage-v1.frontend~frontend.svc.cluster.local".to_owned(),
        ),
    ];
    tasks.push(tokio::spawn(client(plan.outbound(plan.productpage()), sidecar_requests, sidecar)));
    let mut total = Outcome::default();
    for task in tasks {
        total = total + task.await.map_err(|e| HarnessError::Http(format!("client task: {e}")))?;
    }
    Ok(total)
}
