//! Renders `envoy-configs/eastwest.yaml.in` for one network of a mesh file:
//! the stock-Envoy east-west gateway that terminates the outer CONNECT of
//! double HBONE and forwards the inner TLS bytes to the service's pods.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};

use crate::template::{self, quoted};
use mesh::ca::{CaError, CertDir};
use mesh::{Mesh, Service};

/// The template, built in so the binary and the tests render the same file.
pub const TEMPLATE: &str = include_str!("../eastwest.yaml.in");

#[derive(Debug, thiserror::Error)]
pub enum EastWestError {
    #[error("network {0:?} has no east_west_gateway in the mesh file")]
    NoGateway(String),
    #[error("gateway identity: {0}")]
    Identity(#[from] CaError),
    #[error(transparent)]
    Template(#[from] template::Leftover),
}

pub struct EastWest<'a> {
    pub mesh: &'a Mesh,
    pub network: &'a str,
    pub certs: &'a CertDir,
    pub admin: SocketAddr,
    pub access_log: &'a Path,
}

pub fn render(template: &str, params: &EastWest<'_>) -> Result<String, EastWestError> {
    let mesh = params.mesh;
    let gateway = mesh.gateway_of(params.network).ok_or_else(|| EastWestError::NoGateway(params.network.to_owned()))?;
    let path = |p: &Path| quoted(&p.display().to_string());
    let services = served(mesh, params.network);
    let virtual_hosts: Vec<Value> = services.iter().map(|s| virtual_host(s)).collect();
    let clusters: Vec<Value> = services.iter().map(|s| cluster(mesh, s, params.network)).collect();
    let mut replacements = vec![
        ("@ADMIN_ADDRESS@", quoted(&params.admin.ip().to_string())),
        ("@ADMIN_PORT@", params.admin.port().to_string()),
        ("@LISTEN_ADDRESS@", quoted(&gateway.address.ip().to_string())),
        ("@LISTEN_PORT@", gateway.address.port().to_string()),
        ("@CERT_CHAIN@", path(&params.certs.cert(&gateway.identity)?)),
        ("@PRIVATE_KEY@", path(&params.certs.key(&gateway.identity)?)),
        ("@ROOT_CERT@", path(&params.certs.root())),
        ("@SAN_PREFIX@", quoted(&format!("spiffe://{}/", mesh.trust_domain))),
        ("@ACCESS_LOG@", path(params.access_log)),
        ("@VIRTUAL_HOSTS@", Value::from(virtual_hosts).to_string()),
        ("@CLUSTERS@", Value::from(clusters).to_string()),
    ];
    replacements.extend(template::Edge::default().replacements());
    Ok(template::fill(template, &replacements)?)
}

/// The services with pods in the gateway's network: the only ones it routes.
fn served<'m>(mesh: &'m Mesh, network: &str) -> Vec<&'m Service> {
    mesh.services.iter().filter(|s| mesh.endpoints(s).any(|w| w.network == network)).collect()
}

fn cluster_name(s: &Service) -> String {
    format!("hbone|{}|{}", s.hostname, s.port)
}

fn virtual_host(s: &Service) -> Value {
    json!({
        "name": format!("{}:{}", s.hostname, s.port),
        "domains": [format!("{}:{}", s.hostname, s.port)],
        "routes": [{
            "match": { "connect_matcher": {} },
            "route": {
                "cluster": cluster_name(s),
                "upgrade_configs": [{ "upgrade_type": "CONNECT", "connect_config": {} }],
            },
        }],
    })
}

fn cluster(mesh: &Mesh, s: &Service, network: &str) -> Value {
    let endpoints: Vec<Value> = mesh
        .endpoints(s)
        .filter(|w| w.network == network)
        .map(|w| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": w.address.to_string(), "port_value": mesh.hbone_port } } } })
        })
        .collect();
    json!({
        "name": cluster_name(s),
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": template::unlimited_circuit_breakers(),
        "load_assignment": { "cluster_name": cluster_name(s), "endpoints": [{ "lb_endpoints": endpoints }] },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_routes_each_service_of_its_network_to_that_networks_pods() {
        let mesh = Mesh::parse(include_str!("../../mesh/mesh.example.json")).unwrap();
        let services = served(&mesh, "network-b");
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ratings", "details"], "reviews has no pods in network-b, hence no route");
        let ratings = services[0];
        assert_eq!(virtual_host(ratings)["domains"], json!(["ratings.bookinfo.svc.cluster.local:9080"]));
        let endpoints = &cluster(&mesh, ratings, "network-b")["load_assignment"]["endpoints"][0]["lb_endpoints"];
        let addresses: Vec<&Value> = endpoints.as_array().unwrap().iter().map(|e| &e["endpoint"]["address"]).collect();
        assert_eq!(
            addresses,
            [
                &json!({ "socket_address": { "address": "127.10.2.1", "port_value": 15008 } }),
                &json!({ "socket_address": { "address": "127.10.2.2", "port_value": 15008 } }),
            ]
        );
    }
}
