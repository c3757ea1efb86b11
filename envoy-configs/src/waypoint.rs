//! Renders `envoy-configs/waypoint.yaml.in` for one waypoint of a mesh file:
//! the services it serves, their endpoints (same network: direct HBONE; other
//! networks: double HBONE through that network's east-west gateway), the TLS
//! identities each hop must present, and the three roles' filters with their
//! configuration, in the engine chosen ([`Engine`]: the wasm module or the native one).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};
use waypoint_core::contract::{
    DOWNSTREAM_PARTS, ENDPOINT_HEADER, ENDPOINT_METADATA_KEY, ENDPOINT_METADATA_NAMESPACE, NATIVE_METRICS_NAMESPACE,
    NATIVE_MODULE, ROLE_DOWNSTREAM, ROLE_NOOP, ROLE_STATS, ROLE_UPSTREAM, SERVICE_HEADER, UPSTREAM_CONNECTION_HEADER,
    route_response_headers,
};
use waypoint_core::labels::{stat_tag_names, stats_tag_regex};
use waypoint_core::{Limits, PluginConfig, endpoint};

use crate::template::{self, Edge, quoted};
use mesh::ca::{CaError, CertDir};
use mesh::{Mesh, Service, Workload};

/// The template, built in so the binary and the tests render the same file.
pub const TEMPLATE: &str = include_str!("../waypoint.yaml.in");

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
    #[error("plugin configuration: {0}")]
    PluginConfig(serde_json::Error),
}

/// Which build of the waypoint's filters the config loads, from the same waypoint-core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The proxy-wasm module ([`Waypoint::wasm`]), one V8 VM per worker.
    Wasm,
    /// The native dynamic module `lib`[`NATIVE_MODULE`]`.so`, which Envoy loads from
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` (the caller sets it for the Envoy process).
    Native,
    /// The native module's do-nothing filter in the three places: the benchmark's floor.
    NativeNoop,
}

impl Default for Engine {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Engine {
    /// The engine used unless one is asked for: the renderer's `--engine` default, the
    /// harness's `Options::default()`, `make demo` and the testbed all take it from here.
    /// Native: it passes every test the wasm module passes and costs less per request
    /// (BENCHMARKS.md).
    pub const DEFAULT: Self = Self::Native;
    pub const ALL: [Self; 3] = [Self::Wasm, Self::Native, Self::NativeNoop];

    /// Its `--engine` value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Wasm => "wasm",
            Self::Native => "native",
            Self::NativeNoop => "native-noop",
        }
    }

    /// The engine an `--engine` value names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|engine| engine.name() == name)
    }

    /// One role's HTTP filter, with the plugin configuration (a JSON string).
    fn filter(self, role: &str, wasm: &Path, plugin_config: &str) -> Value {
        let configuration =
            json!({ "@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config });
        match self {
            // One identical vm_config for every role: Envoy runs one VM per worker for all
            // three, so the roles share the module's per-worker state. If the VM dies,
            // traffic keeps flowing, unlabelled (FAIL_OPEN).
            Self::Wasm => json!({
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": role,
                        "root_id": role,
                        "vm_config": {
                            "vm_id": "waypoint",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": { "local": { "filename": wasm.display().to_string() } },
                        },
                        "configuration": configuration,
                        "failure_policy": "FAIL_OPEN",
                    },
                },
            }),
            // One module for every role (loaded once per process): the roles share its
            // per-worker state. Kept loaded, so that state outlives a config reload.
            Self::Native | Self::NativeNoop => json!({
                "name": "envoy.extensions.filters.http.dynamic_modules",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                    "dynamic_module_config": {
                        "name": NATIVE_MODULE,
                        "do_not_close": true,
                        "metrics_namespace": NATIVE_METRICS_NAMESPACE,
                    },
                    "filter_name": if self == Self::NativeNoop { ROLE_NOOP } else { role },
                    "filter_config": configuration,
                },
            }),
        }
    }
}

pub struct Waypoint<'a> {
    pub mesh: &'a Mesh,
    /// The waypoint's own workload entry (its identity, cluster, network).
    pub workload: &'a str,
    pub certs: &'a CertDir,
    /// The filters' engine.
    pub engine: Engine,
    /// The wasm module (the wasm engine only).
    pub wasm: &'a Path,
    pub admin: SocketAddr,
    pub access_log: &'a Path,
    /// Istio's `AMBIENT_ENABLE_BAGGAGE`.
    pub baggage_discovery: bool,
    /// This project's filters; without them a plain waypoint (the benchmarks' baseline).
    pub telemetry: bool,
    /// The plugins' limits (the plugin's defaults unless a test or an operator says otherwise).
    pub limits: Limits,
    /// How long slow or idle clients may hold a connection.
    pub edge: Edge,
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
            let pods: Vec<&Workload> = mesh.endpoints(service).filter(|w| w.network == network).collect();
            endpoints.push(remote_endpoint(service, network, gateway.address, &pods));
        }
        clusters.push(service_cluster(service, endpoints));
    }

    let path = |p: &Path| quoted(&p.display().to_string());
    // Written from the type the filters parse, so both read one definition.
    let mut config =
        PluginConfig { identity: Some(mesh.peer_of(me)), limits: params.limits.clone(), ..PluginConfig::default() };
    if !params.baggage_discovery {
        config = config.without_baggage();
    }
    let plugin_config = serde_json::to_string(&config).map_err(WaypointError::PluginConfig)?;
    let mut replacements = vec![
        ("@STATS_TAGS@", stats_tags()),
        ("@DOWNSTREAM_FILTER_STATE@", downstream_filter_state()),
        ("@STATS_INPUTS@", stats_inputs().to_string()),
        ("@STATS_INPUTS_CLEANUP@", stats_inputs_cleanup().to_string()),
        ("@ADMIN_ADDRESS@", quoted(&params.admin.ip().to_string())),
        ("@ADMIN_PORT@", params.admin.port().to_string()),
        ("@LISTEN_ADDRESS@", quoted(&listen.ip().to_string())),
        ("@LISTEN_PORT@", listen.port().to_string()),
        ("@CERT_CHAIN@", path(&params.certs.cert(&identity)?)),
        ("@PRIVATE_KEY@", path(&params.certs.key(&identity)?)),
        ("@ROOT_CERT@", path(&params.certs.root())),
        ("@SAN_PREFIX@", quoted(&format!("spiffe://{}/", mesh.trust_domain))),
        ("@DOWNSTREAM_FILTER@", params.engine.filter(ROLE_DOWNSTREAM, params.wasm, &plugin_config).to_string()),
        ("@STATS_FILTER@", params.engine.filter(ROLE_STATS, params.wasm, &plugin_config).to_string()),
        ("@UPSTREAM_FILTER@", params.engine.filter(ROLE_UPSTREAM, params.wasm, &plugin_config).to_string()),
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
    replacements.extend(params.edge.replacements());
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
        // the destination peer), the upstream host's endpoint metadata, and the service
        // the route chose.
        let mut headers: Vec<Value> = route_response_headers()
            .into_iter()
            .map(|(key, value)| json!({ "header": { "key": key, "value": value }, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD" }))
            .collect();
        headers.push(json!({
            "header": { "key": SERVICE_HEADER, "value": cluster_name(s) },
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }));
        host.insert("response_headers_to_add".into(), Value::from(headers));
        // An app's own copies go first (Envoy removes before it adds): these headers are
        // the stats role's input, never the app's to set, even where a value is empty.
        let ours = [UPSTREAM_CONNECTION_HEADER, ENDPOINT_HEADER, SERVICE_HEADER];
        host.insert("response_headers_to_remove".into(), json!(ours));
    }
    host
}

/// One `stats_tags` entry per Istio label, then the error counter's reason and
/// `istio_build`'s tags: generated from the label list, never written by hand.
fn stats_tags() -> String {
    let tags: Vec<Value> =
        stat_tag_names().map(|name| json!({ "tag_name": name, "regex": stats_tag_regex(name) })).collect();
    Value::from(tags).to_string()
}

/// connect_terminate's `set_filter_state` entries: one object per part of the downstream peer.
fn downstream_filter_state() -> String {
    let entries: Vec<Value> = DOWNSTREAM_PARTS
        .iter()
        .map(|part| {
            json!({
                "object_key": part.filter_state,
                "factory_key": "envoy.hashable_string",
                "format_string": { "text_format_source": { "inline_string": part.format }, "omit_empty_values": true },
                "shared_with_upstream": "ONCE",
            })
        })
        .collect();
    Value::from(entries).to_string()
}

/// main_internal's first header_mutation: each downstream part into its own request
/// header (a client's own copy removed first); the route's response headers removed
/// once the stats filter has read them.
fn stats_inputs() -> Value {
    let mut request: Vec<Value> = DOWNSTREAM_PARTS.iter().map(|part| json!({ "remove": part.header })).collect();
    request.extend(DOWNSTREAM_PARTS.iter().map(|part| {
        json!({ "append": {
            "header": { "key": part.header, "value": format!("%FILTER_STATE({}:PLAIN)%", part.filter_state) },
            "append_action": "ADD_IF_ABSENT",
        } })
    }));
    let response: Vec<Value> = [UPSTREAM_CONNECTION_HEADER, ENDPOINT_HEADER, SERVICE_HEADER]
        .iter()
        .map(|header| json!({ "remove": header }))
        .collect();
    json!({ "request_mutations": request, "response_mutations": response })
}

/// main_internal's last header_mutation: the downstream peer never reaches the app.
fn stats_inputs_cleanup() -> Value {
    let request: Vec<Value> = DOWNSTREAM_PARTS.iter().map(|part| json!({ "remove": part.header })).collect();
    json!({ "request_mutations": request })
}

/// The plugin limits as the plugin configuration spells them.
/// Istio's endpoint metadata, the stats role's last discovery method for the destination.
fn istio_metadata(workload: &str, namespace: &str, canonical_service: &str, revision: &str, cluster: &str) -> Value {
    json!({ ENDPOINT_METADATA_NAMESPACE: {
        ENDPOINT_METADATA_KEY: endpoint::encode(workload, namespace, canonical_service, revision, cluster),
    } })
}

/// A same-network pod, reached by connect_originate at `<pod ip>:<hbone port>`.
fn direct_endpoint(mesh: &Mesh, s: &Service, pod: &Workload) -> Value {
    let address = format!("{}:{}", pod.address, s.target_port);
    let mut metadata =
        istio_metadata(&pod.name, &pod.namespace, &pod.canonical_service, &pod.canonical_revision, &pod.cluster);
    if let Some(metadata) = metadata.as_object_mut() {
        metadata.insert(
            "tunnel".into(),
            json!({ "destination": format!("{}:{}", pod.address, mesh.hbone_port), "address": address }),
        );
    }
    json!({
        "endpoint": { "address": { "envoy_internal_address": { "server_listener_name": "connect_originate", "endpoint_id": address } } },
        "metadata": { "filter_metadata": metadata },
    })
}

/// Another network's pods, as one endpoint weighted by their number: the
/// gateway picks the pod, so the waypoint cannot. Its endpoint metadata names no
/// workload, only the service's namespace and, when all those pods are in one
/// cluster, that cluster: enough to place a failure in the right cluster.
fn remote_endpoint(s: &Service, network: &str, gateway: SocketAddr, pods: &[&Workload]) -> Value {
    let address = format!("{}:{}", s.hostname, s.port);
    let clusters: BTreeSet<&str> = pods.iter().map(|pod| pod.cluster.as_str()).collect();
    let cluster = match clusters.iter().next() {
        Some(only) if clusters.len() == 1 => *only,
        _ => "",
    };
    let mut metadata = istio_metadata("", &s.namespace, "", "", cluster);
    if let Some(metadata) = metadata.as_object_mut() {
        metadata.insert("tunnel".into(), json!({ "destination": gateway.to_string(), "address": address }));
    }
    json!({
        "endpoint": { "address": { "envoy_internal_address": {
            "server_listener_name": "connect_originate_remote", "endpoint_id": format!("{network}/{address}") } } },
        "load_balancing_weight": pods.len().max(1),
        "metadata": { "filter_metadata": metadata },
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
            // As Istio's waypoint: HTTP/2 (and gRPC) stay HTTP/2 toward the destination,
            // HTTP/1.1 stays HTTP/1.1; trailers pass both ways.
            "use_downstream_protocol_config": { "http_protocol_options": {}, "http2_protocol_options": {} },
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
    fn endpoints_carry_istio_endpoint_metadata() {
        let mesh = Mesh::parse(include_str!("../../mesh/mesh.example.json")).unwrap();
        let reviews = mesh.services.iter().find(|s| s.name == "reviews").unwrap();
        let pod = mesh.workload("reviews-v1").unwrap();
        let direct = direct_endpoint(&mesh, reviews, pod);
        assert_eq!(
            direct["metadata"]["filter_metadata"]["istio"]["workload"],
            "reviews-v1;bookinfo;reviews;v1;cluster-a"
        );
        let ratings = mesh.services.iter().find(|s| s.name == "ratings").unwrap();
        let pods: Vec<&Workload> = mesh.endpoints(ratings).filter(|w| w.network == "network-b").collect();
        let remote = remote_endpoint(ratings, "network-b", "127.0.0.1:15008".parse().unwrap(), &pods);
        assert_eq!(remote["metadata"]["filter_metadata"]["istio"]["workload"], ";bookinfo;;;cluster-b");
        assert_eq!(remote["load_balancing_weight"], 2);
    }
}
