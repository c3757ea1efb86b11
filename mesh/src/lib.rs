//! What every part of the local mesh knows about it:
//! - the mesh file: what xDS would tell a ztunnel, as one JSON document that can
//!   describe a whole multi-network mesh ([`Mesh`]; each shim serves the workloads
//!   of one node, the renderer configures the waypoint and gateways from it);
//! - [`ca`]: the mesh CA and the layout of its certificate directory.

pub mod ca;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Deserializer};
use waypoint_core::{Limits, Peer, SpiffeId, WorkloadType, value};

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot read mesh file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("mesh file is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{what} {value:?} is not a SPIFFE identity spiffe://<trust domain>/ns/<ns>/sa/<sa>")]
    Identity { what: String, value: String },
    #[error("workload {0:?} is defined twice")]
    DuplicateWorkload(String),
    #[error("address {0} is used by two workloads")]
    DuplicateAddress(IpAddr),
    #[error("service {0} is defined twice")]
    DuplicateService(String),
    #[error("service {service} lists endpoint {workload:?}, which is not a workload")]
    UnknownEndpoint { service: String, workload: String },
    #[error("workload {workload:?}: {field} {value:?} is not a valid label value: {source}")]
    LabelValue { workload: String, field: &'static str, value: String, source: value::ValueError },
    #[error("workload {workload:?}: outbound destination {destination:?}: {reason}")]
    Destination { workload: String, destination: String, reason: &'static str },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    /// The trust domain every workload identity and accepted peer belongs to.
    pub trust_domain: String,
    /// The HBONE port of every ztunnel (and of every pod address in this model).
    #[serde(default = "default_hbone_port")]
    pub hbone_port: u16,
    /// Per network: how traffic from other networks gets in.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
}

fn default_hbone_port() -> u16 {
    15008
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub east_west_gateway: Option<HboneEndpoint>,
}

/// A proxy that terminates HBONE: an east-west gateway or a waypoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HboneEndpoint {
    pub address: SocketAddr,
    pub identity: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    #[serde(default, deserialize_with = "workload_type")]
    pub workload_type: WorkloadType,
    /// The shim instance (ztunnel) that serves this workload.
    pub node: String,
    #[serde(default)]
    pub cluster: String,
    pub network: String,
    #[serde(default)]
    pub canonical_service: String,
    #[serde(default)]
    pub canonical_revision: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    /// The pod IP: a loopback address of its own (127.x.y.z) on one host.
    pub address: IpAddr,
    /// Plain TCP listeners standing in for iptables capture: the app connects here.
    #[serde(default)]
    pub outbound: Vec<OutboundListener>,
    /// A pre-1.29 sidecar originates this workload's HBONE: its CONNECTs carry no
    /// `baggage`; its peer metadata travels in-band as `x-envoy-peer-metadata`.
    #[serde(default)]
    pub sidecar: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundListener {
    pub listen: SocketAddr,
    /// `<service hostname>:<port>` or `<workload address>:<target port>`.
    pub destination: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub hostname: String,
    pub name: String,
    pub namespace: String,
    /// The cluster IP; sent as the authority to a waypoint when set.
    #[serde(default)]
    pub vip: Option<IpAddr>,
    pub port: u16,
    pub target_port: u16,
    /// Names of the workloads backing the service, in any network.
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub waypoint: Option<HboneEndpoint>,
}

/// Where an outbound listener sends its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Service { hostname: String, port: u16 },
    Workload(SocketAddr),
}

fn workload_type<'de, D: Deserializer<'de>>(d: D) -> Result<WorkloadType, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

impl Mesh {
    pub fn load(path: &Path) -> Result<Self, MeshError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| MeshError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, MeshError> {
        let mesh: Mesh = serde_json::from_str(text)?;
        mesh.validate()?;
        Ok(mesh)
    }

    /// Checks what serde cannot: references resolve, identities parse, and every
    /// value that becomes a metric label or baggage member is a clean label value.
    pub fn validate(&self) -> Result<(), MeshError> {
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for w in &self.workloads {
            if !names.insert(w.name.as_str()) {
                return Err(MeshError::DuplicateWorkload(w.name.clone()));
            }
            if !addresses.insert(w.address) {
                return Err(MeshError::DuplicateAddress(w.address));
            }
            check_identity(&format!("workload {:?} identity", w.name), &self.identity_of(w))?;
            check_labels(w)?;
            for listener in &w.outbound {
                self.destination(w, listener)?;
            }
        }
        let mut services = HashSet::new();
        for s in &self.services {
            let key = format!("{}:{}", s.hostname, s.port);
            if let Some(unknown) = s.endpoints.iter().find(|e| !names.contains(e.as_str())) {
                return Err(MeshError::UnknownEndpoint { service: key, workload: unknown.clone() });
            }
            if let Some(waypoint) = &s.waypoint {
                check_identity(&format!("service {key} waypoint identity"), &waypoint.identity)?;
            }
            if !services.insert(key.clone()) {
                return Err(MeshError::DuplicateService(key));
            }
        }
        for (name, network) in &self.networks {
            if let Some(gateway) = &network.east_west_gateway {
                check_identity(&format!("network {name:?} gateway identity"), &gateway.identity)?;
            }
        }
        Ok(())
    }

    pub fn identity_of(&self, w: &Workload) -> String {
        format!("spiffe://{}/ns/{}/sa/{}", self.trust_domain, w.namespace, w.service_account)
    }

    /// The workload as a peer, as its ztunnel announces it in `baggage`.
    pub fn peer_of(&self, w: &Workload) -> Peer {
        Peer {
            workload_name: w.name.clone(),
            workload_type: w.workload_type,
            namespace: w.namespace.clone(),
            cluster: w.cluster.clone(),
            canonical_service: w.canonical_service.clone(),
            canonical_revision: w.canonical_revision.clone(),
            app: w.canonical_service.clone(),
            version: w.canonical_revision.clone(),
            region: w.region.clone(),
            zone: w.zone.clone(),
            instance: String::new(),
            principal: self.identity_of(w),
        }
    }

    pub fn workloads_on_node<'m>(&'m self, node: &'m str) -> impl Iterator<Item = &'m Workload> + 'm {
        self.workloads.iter().filter(move |w| w.node == node)
    }

    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name == name)
    }

    pub fn workload_at(&self, address: IpAddr) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.address == address)
    }

    pub fn service(&self, hostname: &str, port: u16) -> Option<&Service> {
        self.services.iter().find(|s| s.hostname == hostname && s.port == port)
    }

    pub fn endpoints<'m>(&'m self, service: &'m Service) -> impl Iterator<Item = &'m Workload> + 'm {
        service.endpoints.iter().filter_map(|name| self.workload(name))
    }

    /// The services a workload backs.
    pub fn services_of<'m>(&'m self, w: &Workload) -> impl Iterator<Item = &'m Service> + 'm {
        let name = w.name.clone();
        self.services.iter().filter(move |s| s.endpoints.contains(&name))
    }

    pub fn gateway_of(&self, network: &str) -> Option<&HboneEndpoint> {
        self.networks.get(network)?.east_west_gateway.as_ref()
    }

    /// Resolves an outbound listener's destination against the mesh.
    pub fn destination(&self, w: &Workload, listener: &OutboundListener) -> Result<Destination, MeshError> {
        let fail = |reason| MeshError::Destination {
            workload: w.name.clone(),
            destination: listener.destination.clone(),
            reason,
        };
        if let Ok(address) = listener.destination.parse::<SocketAddr>() {
            return match self.workload_at(address.ip()) {
                Some(_) => Ok(Destination::Workload(address)),
                None => Err(fail("no workload has this address")),
            };
        }
        let (hostname, port) = listener.destination.rsplit_once(':').ok_or_else(|| fail("expected host:port"))?;
        let port = port.parse().map_err(|_| fail("bad port"))?;
        match self.service(hostname, port) {
            Some(_) => Ok(Destination::Service { hostname: hostname.to_owned(), port }),
            None => Err(fail("no service has this hostname and port")),
        }
    }
}

fn check_identity(what: &str, identity: &str) -> Result<(), MeshError> {
    match SpiffeId::parse(identity) {
        Some(_) => Ok(()),
        None => Err(MeshError::Identity { what: what.to_owned(), value: identity.to_owned() }),
    }
}

fn check_labels(w: &Workload) -> Result<(), MeshError> {
    let max = Limits::default().max_value_bytes;
    for (field, val) in [
        ("name", &w.name),
        ("namespace", &w.namespace),
        ("service_account", &w.service_account),
        ("cluster", &w.cluster),
        ("network", &w.network),
        ("canonical_service", &w.canonical_service),
        ("canonical_revision", &w.canonical_revision),
        ("region", &w.region),
        ("zone", &w.zone),
    ] {
        value::sanitize(val.as_bytes(), max).map_err(|source| MeshError::LabelValue {
            workload: w.name.clone(),
            field,
            value: val.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_example_mesh_file_is_valid() {
        let text = include_str!("../mesh.example.json");
        let mesh = Mesh::parse(text).unwrap();
        assert_eq!(mesh.workloads_on_node("node-b").count(), 3);
        assert!(mesh.gateway_of("network-b").is_some());
    }

    #[test]
    fn a_label_value_that_could_forge_labels_is_rejected() {
        let text = include_str!("../mesh.example.json").replacen("\"cluster-a\"", "\"a;b=c\"", 1);
        assert!(matches!(Mesh::parse(&text), Err(MeshError::LabelValue { field: "cluster", .. })));
    }

    #[test]
    fn an_endpoint_must_name_a_workload() {
        let text = include_str!("../mesh.example.json").replacen("\"ratings-v1-a\"]", "\"nobody\"]", 1);
        let text = text.replacen("\"ratings-v1-a\",", "\"nobody\",", 1);
        assert!(matches!(Mesh::parse(&text), Err(MeshError::UnknownEndpoint { .. })), "{text}");
    }
}
