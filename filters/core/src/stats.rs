//! The stats role's own facts: what one request was (protocol, status, gRPC status,
//! the service the route chose, flags, duration, sizes, gRPC messages), read from the
//! two header maps it reads anyway and at stream end. With the two peers that
//! discovery found, they become one [`Observation`], which the worker maps to
//! Istio's labels ([`crate::labels::Labels::waypoint`]) and metrics.

use crate::config::Limits;
use crate::contract::SERVICE_HEADER;
use crate::discovery::counted;
use crate::host::{HeaderMap, Headers, Host};
use crate::labels::{self, RoutedService};
use crate::response_flags;
use crate::worker::{ErrorReason, Worker};

/// One finished request, as the worker records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub source: u32,
    pub destination: u32,
    pub service: u32,
    pub response_code: u32,
    pub response_flags: u64,
    pub grpc: bool,
    pub grpc_status: Option<i32>,
    pub duration_ms: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// gRPC messages (request, response), when Envoy's grpc_stats counted them.
    pub messages: Option<(u64, u64)>,
}

/// What the headers of one request say about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    grpc: bool,
    response_code: u32,
    grpc_status: Option<i32>,
    /// `None` until the response headers name it.
    service: Option<u32>,
}

impl Facts {
    pub fn on_request_headers(&mut self, headers: &Headers) {
        self.grpc = headers.get("content-type").is_some_and(|ct| ct.starts_with(b"application/grpc"));
    }

    pub fn on_response_headers(&mut self, headers: &Headers, limits: &Limits, host: &impl Host, worker: &mut Worker) {
        self.response_code = headers.get(":status").and_then(parse_u32).unwrap_or(0);
        if self.grpc {
            // A trailers-only gRPC answer carries its status in the headers.
            self.grpc_status = headers.get("grpc-status").map(labels::grpc_status);
        }
        if let Some(cluster) = headers.get(SERVICE_HEADER) {
            self.service = Some(service(cluster, limits, host, worker));
        }
    }

    pub fn on_response_trailers(&mut self, host: &impl Host, worker: &mut Worker) {
        if self.grpc {
            let status = counted(host.header(HeaderMap::ResponseTrailers, "grpc-status"), host, worker).flatten();
            if let Some(status) = status {
                self.grpc_status = Some(labels::grpc_status(&status));
            }
        }
    }
}

/// What is known only once the stream is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    service: u32,
    response_flags: u64,
}

impl StreamEnd {
    /// The service (without response headers, as after a reset before any answer, the
    /// route names it) and the response flags.
    pub fn read(facts: &Facts, limits: &Limits, host: &impl Host, worker: &mut Worker) -> Self {
        let service = match facts.service {
            Some(service) => service,
            None => {
                let cluster = counted(host.cluster_name(), host, worker).flatten().unwrap_or_default();
                service(&cluster, limits, host, worker)
            }
        };
        let response_flags = counted(host.response_flags(), host, worker).unwrap_or(0);
        Self { service, response_flags }
    }

    /// True when the request reached no tunnel: only the endpoint Envoy picked is known.
    pub fn no_upstream_reached(&self) -> bool {
        response_flags::no_upstream_reached(self.response_flags)
    }
}

/// Records the request with both peers: reads the remaining stream-end facts (gRPC
/// messages, duration, sizes) and emits the metrics.
pub fn record(facts: &Facts, end: StreamEnd, (source, destination): (u32, u32), host: &impl Host, worker: &mut Worker) {
    let (grpc_status, messages) = if facts.grpc {
        let status = facts.grpc_status.or_else(|| labels::grpc_status_from_http(facts.response_code));
        (status, counted(host.grpc_messages(), host, worker).flatten())
    } else {
        (None, None)
    };
    let duration = counted(host.request_duration(), host, worker).unwrap_or_default();
    let observation = Observation {
        source,
        destination,
        service: end.service,
        response_code: facts.response_code,
        response_flags: end.response_flags,
        grpc: facts.grpc,
        grpc_status,
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        request_bytes: counted(host.request_total_size(), host, worker).unwrap_or(0),
        response_bytes: counted(host.response_total_size(), host, worker).unwrap_or(0),
        messages,
    };
    if worker.record(&observation, host).is_err() {
        worker.count(ErrorReason::HostCall, host);
    }
}

fn service(cluster: &[u8], limits: &Limits, host: &impl Host, worker: &mut Worker) -> u32 {
    let max = limits.max_value_bytes;
    worker.service_for(cluster, host, |cluster| RoutedService::from_cluster_name(cluster, max))
}

fn parse_u32(raw: &[u8]) -> Option<u32> {
    std::str::from_utf8(raw).ok()?.trim().parse().ok()
}
