//! Plugin configuration, read from Envoy's `configuration` StringValue (JSON).
//!
//! Unknown fields are an error: a typo must stop the plugin at start-up with a
//! clear message rather than silently switch a feature off.

use serde::Deserialize;

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
}

/// Bounds on what the plugin accepts from the network and keeps in memory.
/// `max_label_sets` and `max_tunnels` size per-worker tables shared by all roles:
/// the first plugin configured on a worker sets them, so every role of one
/// waypoint should be given the same configuration (the rendered config does).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    baggage_discovery: bool,
    legacy_discovery: bool,
    identity: Option<IdentityConfig>,
    limits: Limits,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self { baggage_discovery: true, legacy_discovery: true, identity: None, limits: Limits::default() }
    }
}

/// Validated plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Read peers from HBONE `baggage` (Istio's `AMBIENT_ENABLE_BAGGAGE`). When off,
    /// only TLS identities and legacy headers are used, as before Istio 1.29.
    pub baggage_discovery: bool,
    /// Read peers from `x-envoy-peer-metadata` (sidecar-era metadata exchange).
    pub legacy_discovery: bool,
    /// What this waypoint says about itself; `None` propagates nothing.
    pub identity: Option<Peer>,
    pub limits: Limits,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self { baggage_discovery: true, legacy_discovery: true, identity: None, limits: Limits::default() }
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
        let identity = raw.identity.map(|id| identity_peer(&id, raw.limits.max_value_bytes)).transpose()?;
        Ok(Self {
            baggage_discovery: raw.baggage_discovery,
            legacy_discovery: raw.legacy_discovery,
            identity,
            limits: raw.limits,
        })
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
        assert_eq!(cfg.map(|c| c.baggage_discovery), Some(false));
        assert_eq!(cfg.map(|c| c.legacy_discovery), Some(false));
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
        ] {
            let err = PluginConfig::from_json(json).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }
}
