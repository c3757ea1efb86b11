//! The local two-network mesh, for `make demo`, the end-to-end tests and the
//! benchmarks: one way to start it, wait for it and tear it down.
//!
//! - [`topology`]: the address plan, the mesh file, and every process;
//! - [`process`]: child processes that never outlive the harness;
//! - [`callgrind`]: instruction counts of a process under valgrind (the benchmark);
//! - [`loadgen`]: h2load, the benchmark's load generator; [`plot`]: its latency plot (SVG);
//! - [`apps`]: the echo servers behind the service (HTTP/1.1 and h2c);
//! - [`grpc`]: a tonic server and client (the gRPC services); [`curl`]: `/usr/bin/curl` as a client app;
//! - [`http`]: a small HTTP/1.1 client; [`prom`]: reads Prometheus text;
//! - [`hostile`]: what an attacker sends: forged peers and destinations, slow connections;
//! - [`graph`]: the traffic picture (Graphviz) from the waypoint's metrics or from PromQL;
//! - [`dashboards`]: runs every panel query of dashboards/*.json against a Prometheus.

pub mod apps;
pub mod callgrind;
pub mod curl;
pub mod dashboards;
pub mod graph;
pub mod grpc;
pub mod hostile;
pub mod http;
pub mod loadgen;
pub mod plot;
pub mod process;
pub mod prom;
pub mod topology;
pub mod traffic;

use std::path::Path;

pub use topology::{Options, Topology};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what} is not a file at {path}: {hint}")]
    Missing { what: String, path: std::path::PathBuf, hint: &'static str },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("setting up the mesh: {0}")]
    Setup(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("http: {0}")]
    Http(String),
}

impl HarnessError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io { path: path.as_ref().display().to_string(), source }
    }
}
