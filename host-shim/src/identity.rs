//! The two names a tunnel is about, as types: the SPIFFE [`Identity`] a peer
//! proves with its certificate, and the [`Authority`] a CONNECT asks for
//! (ztunnel's `Identity` and `HboneAddress`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use waypoint_core::SpiffeId;

/// An Istio-shaped SPIFFE identity, `spiffe://<trust domain>/ns/<ns>/sa/<sa>`,
/// checked when made. Cheap to clone: connections and streams share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<str>);

impl Identity {
    /// `None` for anything but an Istio-shaped SPIFFE identity.
    pub fn parse(uri: &str) -> Option<Self> {
        SpiffeId::parse(uri).map(|_| Self(uri.into()))
    }

    /// The identities among `uris`; the mesh file's are checked at load, so none is lost there.
    pub fn all<S: AsRef<str>>(uris: impl IntoIterator<Item = S>) -> Vec<Self> {
        uris.into_iter().filter_map(|uri| Self::parse(uri.as_ref())).collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn trust_domain(&self) -> &str {
        SpiffeId::parse(&self.0).map(|id| id.trust_domain).unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        SpiffeId::parse(&self.0).map(|id| id.namespace).unwrap_or_default()
    }
}

impl AsRef<str> for Identity {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a CONNECT asks for: a pod address, or a service by hostname (the inner
/// CONNECT of double HBONE, and the outer one to the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    Address(SocketAddr),
    Service { hostname: String, port: u16 },
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(address) => write!(f, "{address}"),
            Self::Service { hostname, port } => write!(f, "{hostname}:{port}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn only_an_istio_shaped_spiffe_id_is_an_identity() {
        let id = Identity::parse("spiffe://td/ns/shop/sa/cart").unwrap();
        assert_eq!((id.trust_domain(), id.namespace()), ("td", "shop"));
        assert_eq!(Identity::parse("spiffe://td/ns/shop"), None);
        assert_eq!(Identity::parse("https://td/ns/shop/sa/cart"), None);
    }

    #[test]
    fn authorities_print_as_a_connect_names_them() {
        assert_eq!(Authority::Address("10.0.0.1:8080".parse().unwrap()).to_string(), "10.0.0.1:8080");
        let service = Authority::Service { hostname: "a.b.svc.cluster.local".into(), port: 9080 };
        assert_eq!(service.to_string(), "a.b.svc.cluster.local:9080");
    }
}
