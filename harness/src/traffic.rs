//! Client traffic through the mesh: keep-alive clients behind ztunnel-a.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use waypoint_core::{Peer, WorkloadType, legacy};

use crate::HarnessError;
use crate::http::Connection;
use crate::topology::{LOCAL_SERVICE_HOST, SERVICE_HOST, SERVICE_PORT, Topology};

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

/// The `Host` of the same-network service.
pub fn local_service_host() -> String {
    format!("{LOCAL_SERVICE_HOST}:{SERVICE_PORT}")
}

/// `requests` keep-alive requests on one connection, each with `headers`; a
/// failed request opens a new connection.
pub async fn client(entry: SocketAddr, requests: usize, headers: Vec<(String, String)>) -> Outcome {
    counting_client(entry, requests, usize::MAX, headers).await.outcome()
}

/// What one client saw: answers by status, and the successful ones by the
/// workload that served them (the echo app's `workload` field).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub by_status: BTreeMap<u16, usize>,
    pub by_workload: BTreeMap<String, usize>,
    /// Requests that got no HTTP answer at all (connection refused or reset).
    pub no_answer: usize,
}

impl Tally {
    pub fn outcome(&self) -> Outcome {
        let ok = self.by_status.iter().filter(|(s, _)| (200..300).contains(*s)).map(|(_, n)| n).sum();
        let answered: usize = self.by_status.values().sum();
        Outcome { ok, failed: answered - ok + self.no_answer }
    }

    pub fn requests(&self) -> usize {
        self.by_status.values().sum::<usize>() + self.no_answer
    }
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(mut self, other: Tally) -> Tally {
        for (status, n) in other.by_status {
            *self.by_status.entry(status).or_default() += n;
        }
        for (workload, n) in other.by_workload {
            *self.by_workload.entry(workload).or_default() += n;
        }
        self.no_answer += other.no_answer;
        self
    }
}

/// `requests` requests to the echo service with `headers`, opening a new
/// connection every `per_connection` requests (`usize::MAX`: keep-alive
/// throughout) and after any request that got no answer.
pub async fn counting_client(
    entry: SocketAddr,
    requests: usize,
    per_connection: usize,
    headers: Vec<(String, String)>,
) -> Tally {
    counting_client_for(entry, &service_host(), requests, per_connection, headers).await
}

/// [`counting_client`] for the service named `host` (the `Host` the waypoint routes on).
pub async fn counting_client_for(
    entry: SocketAddr,
    host: &str,
    requests: usize,
    per_connection: usize,
    headers: Vec<(String, String)>,
) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<Connection> = None;
    let mut on_connection = 0;
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for n in 0..requests {
        if on_connection >= per_connection {
            connection = None;
        }
        if connection.is_none() {
            connection = Connection::open(entry).await.ok();
            on_connection = 0;
        }
        let Some(open) = connection.as_mut() else {
            tally.no_answer += 1;
            continue;
        };
        on_connection += 1;
        match open.get(host, &format!("/request/{n}"), &headers).await {
            Ok(reply) => {
                *tally.by_status.entry(reply.status.as_u16()).or_default() += 1;
                if reply.status.is_success() {
                    let json = reply.json();
                    let workload = json.get("workload").and_then(|w| w.as_str()).unwrap_or("<no workload in reply>");
                    *tally.by_workload.entry(workload.to_owned()).or_default() += 1;
                }
            }
            Err(_) => {
                tally.no_answer += 1;
                connection = None;
            }
        }
    }
    tally
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

/// The headers a productpage sidecar adds to each request: its metadata and node id.
pub fn sidecar_headers() -> Vec<(String, String)> {
    vec![
        ("x-envoy-peer-metadata".to_owned(), sidecar_metadata()),
        (
            "x-envoy-peer-metadata-id".to_owned(),
            "sidecar~127.0.0.2~productpage-v1.frontend~frontend.svc.cluster.local".to_owned(),
        ),
    ]
}

/// The demo's load: `clients` concurrent curl clients and one sidecar-style client
/// to the echo service in the other network, and one curl client to the
/// same-network ratings service.
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
    tasks.push(tokio::spawn(client(plan.outbound(plan.productpage()), sidecar_requests, sidecar_headers())));
    let local = vec![("baggage".to_owned(), app_baggage(clients))];
    let ratings = plan.local_outbound(plan.curl());
    tasks.push(tokio::spawn(async move {
        counting_client_for(ratings, &local_service_host(), requests, usize::MAX, local).await.outcome()
    }));
    let mut total = Outcome::default();
    for task in tasks {
        total = total + task.await.map_err(|e| HarnessError::Http(format!("client task: {e}")))?;
    }
    Ok(total)
}
