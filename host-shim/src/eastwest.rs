//! Renders `envoy-configs/eastwest.yaml.in` for one network of a mesh file:
//! the stock-Envoy east-west gateway that terminates the outer CONNECT of
//! double HBONE and forwards the inner TLS bytes to the service's pods.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};

use crate::ca::{CaError, CertDir};
use crate::config::{Mesh, Service};
use crate::template::{self, quoted};

/// The template, built in so the binary and the tests render the same file.
pub const TEMPLATE: &str = include_str!("../../envoy-configs/eastwest.yaml.in");

#[derive(Debug, thiserror::Error)]
pub enum EastWestError {
    #[error("network {0:?} has no east_west_gateway in the mesh file")]
    NoGateway(String),
    #[error("gateway identity: {0}")]
    Identity(#[from] CaError),
    #[error(transparent)]
    Template(#[from] crate::template::Leftover),
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
    let services: Vec<&Service> =
        mesh.services.iter().filter(|s| mesh.endpoints(s).any(|w| w.network == params.network)).collect();
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
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_example_mesh_renders_one_route_and_cluster_per_remote_service() {
        let mesh = Mesh::parse(include_str!("../mesh.example.json")).unwrap();
        let certs = CertDir("/certs".into());
        let params = EastWest {
            mesh: &mesh,
            network: "network-b",
            certs: &certs,
            admin: "127.0.0.1:15000".parse().unwrap(),
            access_log: Path::new("/tmp/eastwest.log"),
        };
        let yaml = render(TEMPLATE, &params).unwrap();
        assert!(yaml.contains(r#""domains":["ratings.bookinfo.svc.cluster.local:9080"]"#));
        assert!(yaml.contains(r#""address":"127.10.2.2","port_value":15008"#));
        assert!(yaml.contains(r#"filename: "/certs/istio-system.istio-eastwestgateway.cert.pem""#));
        assert!(!yaml.contains("reviews"), "a service without pods in network-b has no route");
    }
}
