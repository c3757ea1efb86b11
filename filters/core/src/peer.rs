//! The peer model: what the waypoint knows about one side of a request.

use std::fmt;

/// Kubernetes workload kinds that appear in `k8s.<type>.name` baggage keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WorkloadType {
    #[default]
    Unknown,
    Deployment,
    CronJob,
    Pod,
    Job,
}

impl WorkloadType {
    /// The `<type>` of the `k8s.<type>.name` baggage key.
    pub fn baggage_key(self) -> Option<&'static str> {
        match self {
            Self::Deployment => Some("k8s.deployment.name"),
            Self::CronJob => Some("k8s.cronjob.name"),
            Self::Pod => Some("k8s.pod.name"),
            Self::Job => Some("k8s.job.name"),
            Self::Unknown => None,
        }
    }

    pub fn from_baggage_key(key: &[u8]) -> Option<Self> {
        match key {
            b"k8s.deployment.name" => Some(Self::Deployment),
            b"k8s.cronjob.name" => Some(Self::CronJob),
            b"k8s.pod.name" => Some(Self::Pod),
            b"k8s.job.name" => Some(Self::Job),
            _ => None,
        }
    }

    /// The plural kind used in an `OWNER` reference (`.../deployments/<name>`).
    pub fn owner_kind(self) -> Option<&'static str> {
        match self {
            Self::Deployment => Some("deployments"),
            Self::CronJob => Some("cronjobs"),
            Self::Pod => Some("pods"),
            Self::Job => Some("jobs"),
            Self::Unknown => None,
        }
    }

    pub fn from_owner_kind(kind: &str) -> Self {
        match kind {
            "deployments" => Self::Deployment,
            "cronjobs" => Self::CronJob,
            "pods" => Self::Pod,
            "jobs" => Self::Job,
            _ => Self::Unknown,
        }
    }

    /// Lower-case name as written in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::CronJob => "cronjob",
            Self::Pod => "pod",
            Self::Job => "job",
            Self::Unknown => "unknown",
        }
    }
}

impl std::str::FromStr for WorkloadType {
    type Err = UnknownWorkloadType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deployment" => Ok(Self::Deployment),
            "cronjob" => Ok(Self::CronJob),
            "pod" => Ok(Self::Pod),
            "job" => Ok(Self::Job),
            other => Err(UnknownWorkloadType(other.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown workload type {0:?} (expected deployment, cronjob, pod or job)")]
pub struct UnknownWorkloadType(pub String);

/// One side of a request. Every field is either empty (unknown) or a value that
/// passed [`crate::value::sanitize`], so it is safe to put in a metric name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Peer {
    pub workload_name: String,
    pub workload_type: WorkloadType,
    pub namespace: String,
    pub cluster: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub app: String,
    pub version: String,
    pub region: String,
    pub zone: String,
    /// Pod name (`k8s.instance.name`), sent by Envoy-based proxies only.
    pub instance: String,
    /// SPIFFE identity. Never taken from baggage: it comes from the TLS peer.
    pub principal: String,
}

impl Peer {
    /// True when nothing at all is known about the peer.
    pub fn is_empty(&self) -> bool {
        *self == Peer::default()
    }

    /// True when the peer's labels say more than its TLS identity proves (metadata arrived).
    pub fn has_metadata(&self) -> bool {
        self.clone().label_fields() != self.verified_only()
    }

    /// Only what the metric labels show: locality and the pod name are not labels, so
    /// interning them would give every pod of a deployment its own slot.
    pub fn label_fields(mut self) -> Self {
        self.region.clear();
        self.zone.clear();
        self.instance.clear();
        self
    }

    /// What a certificate vouches for and nothing else: the principal and its namespace.
    /// Past the cardinality cap a peer is reduced to this, never to unknown.
    pub fn verified_only(&self) -> Self {
        let namespace = SpiffeId::parse(&self.principal).map(|id| id.namespace.to_owned()).unwrap_or_default();
        Peer { principal: self.principal.clone(), namespace, ..Peer::default() }
    }

    /// The namespace of the verified identity, when there is one.
    pub fn verified_namespace(&self) -> Option<&str> {
        SpiffeId::parse(&self.principal).map(|id| id.namespace)
    }

    /// True when metadata claims a namespace other than the one the identity proves.
    pub fn contradicts_identity(&self) -> bool {
        self.verified_namespace().is_some_and(|proven| !self.namespace.is_empty() && self.namespace != proven)
    }

    /// Pins the namespace to the verified identity's: the certificate beats any claim.
    pub fn pin_namespace(&mut self) {
        if let Some(proven) = self.verified_namespace() {
            self.namespace = proven.to_owned();
        }
    }

    /// Fills the canonical service/revision and app/version from each other the
    /// way Istio does: each pair falls back on its twin when empty.
    pub(crate) fn fill_service_fallbacks(&mut self) {
        fill_from(&mut self.canonical_service, &self.app);
        fill_from(&mut self.app, &self.canonical_service);
        fill_from(&mut self.canonical_revision, &self.version);
        fill_from(&mut self.version, &self.canonical_revision);
    }
}

fn fill_from(target: &mut String, source: &str) {
    if target.is_empty() {
        source.clone_into(target);
    }
}

/// A peer read from a header, with the number of known fields whose value was
/// rejected (too long or with disallowed bytes) and therefore reads as unknown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    pub peer: Peer,
    pub rejected_values: usize,
}

/// A parsed `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    pub trust_domain: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
}

impl<'a> SpiffeId<'a> {
    /// Parses an Istio-shaped SPIFFE identity; anything else is `None`.
    pub fn parse(uri: &'a str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None)
                if !trust_domain.is_empty() && !namespace.is_empty() && !service_account.is_empty() =>
            {
                Some(Self { trust_domain, namespace, service_account })
            }
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_only_in_istio_shape() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/curl");
        assert_eq!(id, Some(SpiffeId { trust_domain: "cluster.local", namespace: "default", service_account: "curl" }));
        assert_eq!(id.map(|i| i.to_string()).as_deref(), Some("spiffe://cluster.local/ns/default/sa/curl"));
        for bad in [
            "",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns/a/sa/b/extra",
            "http://td/ns/a/sa/b",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn service_and_app_fall_back_on_each_other() {
        let mut peer = Peer { canonical_service: "svc".into(), version: "v2".into(), ..Peer::default() };
        peer.fill_service_fallbacks();
        assert_eq!((peer.app.as_str(), peer.canonical_revision.as_str()), ("svc", "v2"));
    }
}
