//! Renders `envoy-configs/waypoint.yaml.in` for one waypoint of a mesh file:
//! the services it serves, their endpoints (same network: direct HBONE; other
//! networks: double HBONE through that network's east-west gateway), the TLS
//! identities each hop must present, and the wasm plugins' configuration.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};
use waypoint_core::roles::{DOWNSTREAM_FORMAT, SERVICE_HEADER, UPSTREAM_CONNECTION_HEADER};

use crate::ca::{CaError, CertDir};
use crate::config::{Mesh, Service, Workload};
use crate::template::{self, quoted};

/// The template, built in so the binary and the tests render the same file.
pub const TEMPLATE: &str = include_str!("../../envoy-configs/waypoint.yaml.in");

#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    #[error("no workload named {0:?} in the mesh file")]
    UnknownWorkload(String),
    #[error("no service names {0} as its waypoint")]
    NothingServed(String),
    #[error("services disagree on the address of waypoint {0}")]
    AddressMismatch(String),
    #[error("service {service} has endpoints in network {network:?}, which has no east_west_gateway")]
    NoGateway { service: String, network: String },
    #[error("waypoint identity: {0}")]
    Identity(#[from] CaError),
    #[error(transparent)]
    Template(#[from] template::Leftover),
}

pub struct Waypoint<'a> {
    pub mesh: &'a Mesh,
    /// The waypoint's own workload entry (its identity, cluster, network).
    pub workload: &'a str,
    pub certs: &'a CertDir,
    pub wasm: &'a Path,
    pub admin: SocketAddr,
    pub access_log: &'a Path,
    /// Istio's `AMBIENT_ENABLE_BAGGAGE`.
    pub baggage_discovery: bool,
    /// This project's filters; without them a plain waypoint (the benchmarks' baseline).
    pub telemetry: bool,
}

pub fn render(template: &str, params: &Waypoint<'_>) -> Result<String, WaypointError> {
    let template = if params.telemetry { template.to_owned() } else { template::drop_section(template, "telemetry") };
    let mesh = params.mesh;
    let me = mesh.workload(params.workload).ok_or_else(|| WaypointError::UnknownWorkload(params.workload.into()))?;
    let identity = mesh.identity_of(me);
    let served: Vec<&Service> =
        mesh.services.iter().filter(|s| s.waypoint.as_ref().is_some_and(|w| w.identity == identity)).collect();
    let listen = served
        .first()
        .and_then(|s| s.waypoint.as_ref())
        .map(|w| w.address)
        .ok_or_else(|| WaypointError::NothingServed(identity.clone()))?;
    if served.iter().any(|s| s.waypoint.as_ref().is_some_and(|w| w.address != listen)) {
        return Err(WaypointError::AddressMismatch(identity));
    }

    let mut direct_sans = BTreeSet::new();
    let mut remote_sans = BTreeSet::new();
    let mut gateway_sans = BTreeSet::new();
    let mut clusters = Vec::new();
    for service in &served {
        let mut endpoints = Vec::new();
        let mut remote_networks = BTreeSet::new();
        for pod in mesh.endpoints(service) {
            if pod.network == me.network {
                direct_sans.insert(mesh.identity_of(pod));
                endpoints.push(direct_endpoint(mesh, service, pod));
            } else {
                remote_sans.insert(mesh.identity_of(pod));
                remote_networks.insert(pod.network.as_str());
            }
        }
        for network in remote_networks {
            let gateway = mesh.gateway_of(network).ok_or_else(|| WaypointError::NoGateway {
                service: service.hostname.clone(),
                network: network.to_owned(),
            })?;
            gateway_sans.insert(gateway.identity.clone());
            let pods = mesh.endpoints(service).filter(|w| w.network == network).count();
            endpoints.push(remote_endpoint(service, network, gateway.address, pods));
        }
        clusters.push(service_cluster(service, endpoints));
    }

    let path = |p: &Path| quoted(&p.display().to_string());
    let plugin_config = json!({
        "baggage_discovery": params.baggage_discovery,
        "identity": {
            "workload_name": me.name,
            "workload_type": me.workload_type.as_str(),
            "namespace": me.namespace,
            "cluster": me.cluster,
            "canonical_service": me.canonical_service,
            "canonical_revision": me.canonical_revision,
            "region": me.region,
            "zone": me.zone,
        },
    });
    let replacements = [
        ("@ADMIN_ADDRESS@", quoted(&params.admin.ip().to_string())),
        ("@ADMIN_PORT@", params.admin.port().to_string()),
        ("@LISTEN_ADDRESS@", quoted(&listen.ip().to_string())),
        ("@LISTEN_PORT@", listen.port().to_string()),
        ("@CERT_CHAIN@", path(&params.certs.cert(&identity)?)),
        ("@PRIVATE_KEY@", path(&params.certs.key(&identity)?)),
        ("@ROOT_CERT@", path(&params.certs.root())),
        ("@SAN_PREFIX@", quoted(&format!("spiffe://{}/", mesh.trust_domain))),
        ("@WASM@", path(params.wasm)),
        ("@DOWNSTREAM_FORMAT@", quoted(DOWNSTREAM_FORMAT)),
        ("@PLUGIN_CONFIG@", quoted(&plugin_config.to_string())),
        ("@NETWORK@", quoted(&me.network)),
        ("@ACCESS_LOG@", path(params.access_log)),
        ("@CONNECT_ROUTES@", Value::from(served.iter().map(|s| connect_route(s)).collect::<Vec<_>>()).to_string()),
        (
            "@VIRTUAL_HOSTS@",
            Value::from(served.iter().map(|s| virtual_host(s, params.telemetry)).collect::<Vec<_>>()).to_string(),
        ),
        ("@SERVICE_CLUSTERS@", yaml_list_items(&clusters)),
        ("@DIRECT_SANS@", san_matchers(&direct_sans)),
        ("@REMOTE_SANS@", san_matchers(&remote_sans)),
        ("@GATEWAY_SANS@", san_matchers(&gateway_sans)),
    ];
    Ok(template::fill(&template, &replacements)?)
}

/// The Istio name of a waypoint's cluster for a service; the stats role reads
/// the service labels back from it.
fn cluster_name(s: &Service) -> String {
    format!("inbound-vip|{}|http|{}", s.port, s.hostname)
}

/// The authority a client ztunnel sends to the waypoint: the VIP when the service has one.
fn authority(s: &Service) -> String {
    match s.vip {
        Some(vip) => format!("{vip}:{}", s.port),
        None => format!("{}:{}", s.hostname, s.port),
    }
}

fn connect_route(s: &Service) -> Value {
    json!({
        "match": { "connect_matcher": {}, "headers": [{ "name": ":authority", "string_match": { "exact": authority(s) } }] },
        "route": { "cluster": "main_internal", "upgrade_configs": [{ "upgrade_type": "CONNECT", "connect_config": {} }] },
    })
}

/// Names an app may use for the service in `Host`.
fn virtual_host(s: &Service, telemetry: bool) -> Value {
    let short = format!("{}.{}", s.name, s.namespace);
    let mut names = vec![s.hostname.clone(), s.name.clone(), short.clone(), format!("{short}.svc")];
    if let Some(vip) = s.vip {
        names.push(vip.to_string());
    }
    let domains: Vec<String> = names.iter().flat_map(|n| [n.clone(), format!("{n}:{}", s.port)]).collect();
    let mut host = json!({
        "name": s.hostname,
        "domains": domains,
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster_name(s), "timeout": "30s" } }],
    });
    if telemetry && let Some(host) = host.as_object_mut() {
        // For the stats role, in the response headers it reads anyway: the id of the
        // upstream connection that carried the response (which finds the tunnel, hence
        // the destination peer) and the service the route chose.
        host.insert(
            "response_headers_to_add".into(),
            json!([
                {
                    "header": { "key": UPSTREAM_CONNECTION_HEADER, "value": "%UPSTREAM_CONNECTION_ID%" },
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
                {
                    "header": { "key": SERVICE_HEADER, "value": cluster_name(s) },
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
            ]),
        );
    }
    host
}

/// A same-network pod, reached by connect_originate at `<pod ip>:<hbone port>`.
fn direct_endpoint(mesh: &Mesh, s: &Service, pod: &Workload) -> Value {
    let address = format!("{}:{}", pod.address, s.target_port);
    json!({
        "endpoint": { "address": { "envoy_internal_address": { "server_listener_name": "connect_originate", "endpoint_id": address } } },
        "metadata": { "filter_metadata": { "tunnel": {
            "destination": format!("{}:{}", pod.address, mesh.hbone_port),
            "address": address,
        } } },
    })
}

/// Another network's pods, as one endpoint weighted by their number: the
/// gateway picks the pod, so the waypoint cannot.
fn remote_endpoint(s: &Service, network: &str, gateway: SocketAddr, pods: usize) -> Value {
    let address = format!("{}:{}", s.hostname, s.port);
    json!({
        "endpoint": { "address": { "envoy_internal_address": {
            "server_listener_name": "connect_originate_remote", "endpoint_id": format!("{network}/{address}") } } },
        "load_balancing_weight": pods.max(1),
        "metadata": { "filter_metadata": { "tunnel": { "destination": gateway.to_string(), "address": address } } },
    })
}

/// How long a client connection's idle tunnel stays open. Pools are per client
/// connection, so once the client has gone its tunnels only wait for this.
const POOL_IDLE_TIMEOUT: &str = "2s";

fn service_cluster(s: &Service, endpoints: Vec<Value>) -> Value {
    json!({
        "name": cluster_name(s),
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": template::unlimited_circuit_breakers(),
        "load_assignment": { "cluster_name": cluster_name(s), "endpoints": [{ "lb_endpoints": endpoints }] },
        "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": { "idle_timeout": POOL_IDLE_TIMEOUT },
            "explicit_http_config": { "http_protocol_options": {} },
        } },
        "transport_socket": {
            "name": "envoy.transport_sockets.internal_upstream",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                // The endpoint's tunnel metadata becomes the connect_originate connection's.
                "passthrough_metadata": [{ "kind": { "host": {} }, "name": "tunnel" }],
                "transport_socket": { "name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" } },
            },
        },
    })
}

/// Exact URI SAN matchers. An empty set must not mean "no check" (Envoy's
/// reading of an empty list), so it becomes a matcher nothing satisfies.
fn san_matchers(identities: &BTreeSet<String>) -> String {
    let matchers: Vec<Value> = if identities.is_empty() {
        vec![json!({ "san_type": "URI", "matcher": { "safe_regex": { "regex": "a^" } } })]
    } else {
        identities.iter().map(|id| json!({ "san_type": "URI", "matcher": { "exact": id } })).collect()
    };
    Value::from(matchers).to_string()
}

/// Items for a block list whose placeholder sits where an item would.
fn yaml_list_items(items: &[Value]) -> String {
    items.iter().map(|item| format!("- {item}")).collect::<Vec<_>>().join("\n  ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_example_mesh_renders_direct_and_double_hbone_endpoints() {
        let mesh = Mesh::parse(include_str!("../mesh.example.json")).unwrap();
        let certs = CertDir("/certs".into());
        let params = Waypoint {
            mesh: &mesh,
            workload: "waypoint",
            certs: &certs,
            wasm: Path::new("/dist/waypoint.wasm"),
            admin: "127.0.0.1:15000".parse().unwrap(),
            access_log: Path::new("/tmp/waypoint.log"),
            baggage_discovery: true,
            telemetry: true,
        };
        let yaml = render(TEMPLATE, &params).unwrap();
        assert!(yaml.contains(r#""exact":"10.96.0.20:9080""#), "CONNECT route by VIP");
        assert!(yaml.contains(r#""name":"inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local""#));
        assert!(yaml.contains(r#""destination":"127.10.1.2:15008""#), "reviews-v1 is in the waypoint's network");
        assert!(yaml.contains(r#""destination":"127.10.2.100:15008""#), "details goes through the gateway");
        assert!(yaml.contains(r#""exact":"spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway""#));
        assert!(!yaml.contains(r#"{"san_type":"URI","matcher":{"safe_regex""#));
        assert!(yaml.contains("x-wp-upconn") && yaml.contains("root_id: stats"));

        let plain = render(TEMPLATE, &Waypoint { telemetry: false, ..params }).unwrap();
        for gone in ["x-wp-", "envoy.filters.http.wasm", "wp.downstream_peer", "header_mutation"] {
            assert!(!plain.contains(gone), "{gone} is one of the project's filters");
        }
    }
}
