//! Plugin configuration, read from Envoy's `configuration` StringValue (JSON), and
//! written by the renderer from the same type ([`PluginConfig::to_json`]).
//!
//! Unknown fields are an error: a typo must stop the plugin at start-up with a
//! clear message rather than silently switch a feature off.

use serde::{Deserialize, Serialize};

use crate::discovery::{Discovery, DiscoveryError, Method, Side};
use crate::peer::{Peer, WorkloadType};
use crate::value;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin configuration is not valid JSON for this plugin: {0}")]
    Json(#[from] serde_json::Error),
    #[error("plugin configuration: identity.{field}: {source}")]
    IdentityValue { field: &'static str, source: value::ValueError },
    #[error("plugin configuration: identity.workload_type: {0}")]
    WorkloadType(#[from] crate::peer::UnknownWorkloadType),
    #[error("plugin configuration: limits.{0} must be greater than zero")]
    ZeroLimit(&'static str),
    #[error("plugin configuration: {side}_discovery: {source}")]
    Discovery { side: &'static str, source: DiscoveryError },
    #[error("plugin configuration: {0} and the discovery lists say the same thing twice: use the lists")]
    Both(&'static str),
}

/// Bounds on what the plugin accepts from the network and keeps in memory.
/// `max_label_sets` and `max_tunnels` size per-worker tables shared by all roles:
/// the first plugin configured on a worker sets them, so every role of one
/// waypoint should be given the same configuration (the rendered config does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest `baggage` or `x-envoy-peer-metadata` value parsed; longer ones read as unknown.
    pub max_header_bytes: usize,
    /// Largest single field value (253 = longest Kubernetes DNS subdomain).
    pub max_value_bytes: usize,
    /// Most `key=value` members read from one `baggage` header.
    pub max_baggage_members: usize,
    /// Most distinct label sets defined as metrics per worker, and most distinct
    /// peers kept: bounds stat memory when peers send endless distinct values. Past
    /// it, requests still count, with only what certificates vouch for (principal
    /// and namespace); the other peer labels read `unknown`.
    pub max_label_sets: usize,
    /// Most distinct peers one verified identity may describe itself as. One
    /// identity flooding forged metadata then fills its own share, never the
    /// waypoint's: its further peers keep only principal and namespace.
    pub max_peers_per_identity: usize,
    /// Most tunnels whose upstream peer is remembered per worker.
    pub max_tunnels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 4096,
            max_value_bytes: 253,
            max_baggage_members: 64,
            max_label_sets: 10_000,
            max_peers_per_identity: 256,
            max_tunnels: 100_000,
        }
    }
}

/// The waypoint's own workload identity, propagated as `baggage` to both neighbours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct IdentityConfig {
    pub workload_name: String,
    pub workload_type: String,
    pub namespace: String,
    pub cluster: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub app: String,
    pub version: String,
    pub region: String,
    pub zone: String,
    pub instance: String,
}

/// The JSON form. `baggage_discovery` and `legacy_discovery` are the switches of the
/// first configurations (`false` drops the method from both sides' default lists, and
/// `baggage_discovery: false` our own baggage too, as Istio's `AMBIENT_ENABLE_BAGGAGE`);
/// the lists say the same per side and in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    baggage_discovery: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    legacy_discovery: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    downstream_discovery: Option<Vec<Method>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_discovery: Option<Vec<Method>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    propagate_baggage: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<IdentityConfig>,
    limits: Limits,
}

/// Validated plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// How the client is found, in order ([`crate::discovery`]).
    pub downstream: Discovery,
    /// How the destination is found, in order.
    pub upstream: Discovery,
    /// Send our own `baggage` on the upstream CONNECT and the CONNECT 200 (needs `identity`).
    pub propagate_baggage: bool,
    /// What this waypoint says about itself; `None` propagates nothing.
    pub identity: Option<Peer>,
    pub limits: Limits,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            downstream: Discovery::defaults(Side::Downstream),
            upstream: Discovery::defaults(Side::Upstream),
            propagate_baggage: true,
            identity: None,
            limits: Limits::default(),
        }
    }
}

impl PluginConfig {
    /// Parses the plugin configuration; empty input means all defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
            RawConfig::default()
        } else {
            serde_json::from_slice(bytes)?
        };
        Self::try_from(raw)
    }

    /// Istio's `AMBIENT_ENABLE_BAGGAGE` off: no `baggage` read on either side, none sent,
    /// as `baggage_discovery: false` says.
    pub fn without_baggage(mut self) -> Self {
        let drop = |discovery: &Discovery| {
            let methods = discovery.methods().iter().copied().filter(|m| *m != Method::Baggage).collect();
            Discovery::new(discovery.side(), methods).unwrap_or_else(|_| discovery.clone())
        };
        self.downstream = drop(&self.downstream);
        self.upstream = drop(&self.upstream);
        self.propagate_baggage = false;
        self
    }

    /// The JSON form with every choice spelled out, as [`Serialize`] writes it.
    fn raw(&self) -> RawConfig {
        RawConfig {
            baggage_discovery: None,
            legacy_discovery: None,
            downstream_discovery: Some(self.downstream.methods().to_vec()),
            upstream_discovery: Some(self.upstream.methods().to_vec()),
            propagate_baggage: Some(self.propagate_baggage),
            identity: self.identity.as_ref().map(identity_config),
            limits: self.limits.clone(),
        }
    }
}

/// The renderer writes the plugin's configuration from this type
/// (`serde_json::to_string(&config)`), so both read one definition.
impl Serialize for PluginConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw().serialize(serializer)
    }
}

impl TryFrom<RawConfig> for PluginConfig {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        for (name, value) in [
            ("max_header_bytes", raw.limits.max_header_bytes),
            ("max_value_bytes", raw.limits.max_value_bytes),
            ("max_baggage_members", raw.limits.max_baggage_members),
            ("max_label_sets", raw.limits.max_label_sets),
            ("max_peers_per_identity", raw.limits.max_peers_per_identity),
            ("max_tunnels", raw.limits.max_tunnels),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        let lists = raw.downstream_discovery.is_some() || raw.upstream_discovery.is_some();
        for (name, switch) in [("baggage_discovery", raw.baggage_discovery), ("legacy_discovery", raw.legacy_discovery)]
        {
            if lists && switch.is_some() {
                return Err(ConfigError::Both(name));
            }
        }
        let baggage = raw.baggage_discovery.unwrap_or(true);
        let legacy = raw.legacy_discovery.unwrap_or(true);
        let switched_on = |method: &Method| match method {
            Method::Baggage => baggage,
            Method::LegacyHeader => legacy,
            Method::EndpointMetadata | Method::TlsIdentity => true,
        };
        let side = |side: Side, list: Option<Vec<Method>>| {
            let methods = list.unwrap_or_else(|| side.default_methods().into_iter().filter(switched_on).collect());
            Discovery::new(side, methods).map_err(|source| ConfigError::Discovery { side: side.as_str(), source })
        };
        let identity = raw.identity.map(|id| identity_peer(&id, raw.limits.max_value_bytes)).transpose()?;
        Ok(Self {
            downstream: side(Side::Downstream, raw.downstream_discovery)?,
            upstream: side(Side::Upstream, raw.upstream_discovery)?,
            propagate_baggage: raw.propagate_baggage.unwrap_or(baggage),
            identity,
            limits: raw.limits,
        })
    }
}

fn identity_config(peer: &Peer) -> IdentityConfig {
    IdentityConfig {
        workload_name: peer.workload_name.clone(),
        workload_type: match peer.workload_type {
            WorkloadType::Unknown => String::new(),
            known => known.as_str().to_owned(),
        },
        namespace: peer.namespace.clone(),
        cluster: peer.cluster.clone(),
        canonical_service: peer.canonical_service.clone(),
        canonical_revision: peer.canonical_revision.clone(),
        app: peer.app.clone(),
        version: peer.version.clone(),
        region: peer.region.clone(),
        zone: peer.zone.clone(),
        instance: peer.instance.clone(),
    }
}

fn identity_peer(id: &IdentityConfig, max: usize) -> Result<Peer, ConfigError> {
    let field = |field: &'static str, v: &str| {
        value::sanitize(v.as_bytes(), max).map_err(|source| ConfigError::IdentityValue { field, source })
    };
    let workload_type =
        if id.workload_type.is_empty() { WorkloadType::Unknown } else { id.workload_type.parse::<WorkloadType>()? };
    let mut peer = Peer {
        workload_name: field("workload_name", &id.workload_name)?,
        workload_type,
        namespace: field("namespace", &id.namespace)?,
        cluster: field("cluster", &id.cluster)?,
        canonical_service: field("canonical_service", &id.canonical_service)?,
        canonical_revision: field("canonical_revision", &id.canonical_revision)?,
        app: field("app", &id.app)?,
        version: field("version", &id.version)?,
        region: field("region", &id.region)?,
        zone: field("zone", &id.zone)?,
        instance: field("instance", &id.instance)?,
        principal: String::new(),
    };
    peer.fill_service_fallbacks();
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_configuration_means_defaults() {
        assert_eq!(PluginConfig::from_json(b"").ok(), Some(PluginConfig::default()));
        assert_eq!(PluginConfig::from_json(b" {} ").ok(), Some(PluginConfig::default()));
    }

    #[test]
    fn switches_identity_and_limits_are_read() {
        let json = br#"{"baggage_discovery": false, "legacy_discovery": false,
            "identity": {"workload_name": "waypoint", "workload_type": "deployment", "namespace": "default",
                         "cluster": "cluster1", "canonical_service": "waypoint"},
            "limits": {"max_header_bytes": 100}}"#;
        let cfg = PluginConfig::from_json(json).ok();
        let cfg = cfg.as_ref();
        assert_eq!(cfg.map(|c| c.downstream.methods()), Some(&[Method::TlsIdentity][..]));
        assert_eq!(cfg.map(|c| c.upstream.methods()), Some(&[Method::EndpointMetadata, Method::TlsIdentity][..]));
        assert_eq!(cfg.map(|c| c.propagate_baggage), Some(false));
        assert_eq!(cfg.map(|c| c.limits.max_header_bytes), Some(100));
        assert_eq!(cfg.map(|c| c.limits.max_value_bytes), Some(253));
        let id = cfg.and_then(|c| c.identity.clone()).unwrap_or_default();
        assert_eq!(id.workload_type, WorkloadType::Deployment);
        assert_eq!(id.app, "waypoint", "app falls back on the canonical service");
    }

    #[test]
    fn mistakes_refuse_to_start_with_a_reason() {
        for (json, needle) in [
            (&br#"{"bagage_discovery": false}"#[..], "unknown field"),
            (br#"{"identity": {"namespace": "a;b"}}"#, "identity.namespace"),
            (br#"{"identity": {"workload_type": "daemonset"}}"#, "daemonset"),
            (br#"{"limits": {"max_tunnels": 0}}"#, "max_tunnels"),
            (b"not json", "not valid JSON"),
            (br#"{"upstream_discovery": ["legacy_header"]}"#, "legacy_header is not a method of the upstream side"),
            (br#"{"downstream_discovery": ["baggage", "baggage"]}"#, "baggage is listed twice"),
            (br#"{"downstream_discovery": ["dns"]}"#, "unknown variant"),
            (br#"{"baggage_discovery": true, "upstream_discovery": []}"#, "baggage_discovery"),
        ] {
            let err = PluginConfig::from_json(json).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn the_default_lists_are_the_order_of_the_first_configurations() {
        let cfg = PluginConfig::default();
        assert_eq!(cfg.downstream.methods(), [Method::Baggage, Method::LegacyHeader, Method::TlsIdentity]);
        assert_eq!(cfg.upstream.methods(), [Method::Baggage, Method::EndpointMetadata, Method::TlsIdentity]);
        assert!(cfg.propagate_baggage);
        let lists = br#"{"downstream_discovery": ["legacy_header", "tls_identity"],
            "upstream_discovery": ["endpoint_metadata", "baggage"], "propagate_baggage": false}"#;
        let cfg = PluginConfig::from_json(lists).ok().unwrap_or_default();
        assert_eq!(cfg.downstream.methods(), [Method::LegacyHeader, Method::TlsIdentity]);
        assert_eq!(cfg.upstream.methods(), [Method::EndpointMetadata, Method::Baggage]);
        assert!(!cfg.propagate_baggage);
    }

    #[test]
    fn what_the_type_writes_it_reads_back() {
        let json = br#"{"baggage_discovery": false,
            "identity": {"workload_name": "waypoint", "workload_type": "deployment", "namespace": "default",
                         "cluster": "cluster1", "canonical_service": "waypoint", "region": "r1"},
            "limits": {"max_tunnels": 7}}"#;
        let cfg = PluginConfig::from_json(json).ok().unwrap_or_default();
        let written = serde_json::to_string(&cfg).unwrap_or_default();
        assert!(written.contains(r#""downstream_discovery":["legacy_header","tls_identity"]"#), "{written}");
        assert!(written.contains(r#""workload_type":"deployment""#), "{written}");
        assert_eq!(PluginConfig::from_json(written.as_bytes()).ok(), Some(cfg));
        let defaults = serde_json::to_string(&PluginConfig::default()).unwrap_or_default();
        assert_eq!(PluginConfig::from_json(defaults.as_bytes()).ok(), Some(PluginConfig::default()));
    }

    #[test]
    fn without_baggage_is_what_the_switch_says() {
        assert_eq!(
            Some(PluginConfig::default().without_baggage()),
            PluginConfig::from_json(br#"{"baggage_discovery": false}"#).ok()
        );
    }
}
