//! Istio's endpoint metadata, the last discovery method for the destination peer
//! (PROTOCOL.md §4): `filter_metadata.istio.workload` of the upstream host holds
//! `<workload>;<namespace>;<canonical service>;<canonical revision>;<cluster id>`.
//! The waypoint config is rendered from the mesh file, so the value is ours; it is
//! still bounded and checked like anything else that reaches a label.

use crate::peer::Peer;
use crate::value;

/// The peer the metadata names; `None` with fewer than five parts (Istio ignores those)
/// or nothing usable in them. No app or version: Istio's encoding carries neither.
pub fn decode(raw: &[u8], max_value_bytes: usize) -> Option<Peer> {
    let mut parts = raw.split(|b| *b == b';');
    let mut field = || value::sanitize(parts.next()?, max_value_bytes).ok();
    let (workload_name, namespace, canonical_service, canonical_revision, cluster) =
        (field()?, field()?, field()?, field()?, field()?);
    let peer = Peer { workload_name, namespace, canonical_service, canonical_revision, cluster, ..Peer::default() };
    (!peer.is_empty()).then_some(peer)
}

/// The encoding, for the renderer: one definition of the format.
pub fn encode(
    workload: &str,
    namespace: &str,
    canonical_service: &str,
    canonical_revision: &str,
    cluster: &str,
) -> String {
    format!("{workload};{namespace};{canonical_service};{canonical_revision};{cluster}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_parts_name_a_peer_as_istio_reads_them() {
        let peer = decode(b"ratings-v1;backend;ratings;v1;cluster1", 253).unwrap_or_default();
        assert_eq!(
            (
                peer.workload_name.as_str(),
                peer.namespace.as_str(),
                peer.canonical_service.as_str(),
                peer.canonical_revision.as_str(),
                peer.cluster.as_str(),
                peer.app.as_str(),
            ),
            ("ratings-v1", "backend", "ratings", "v1", "cluster1", "")
        );
        let remote = decode(b";backend;;;cluster2", 253).unwrap_or_default();
        assert_eq!((remote.namespace.as_str(), remote.cluster.as_str()), ("backend", "cluster2"));
    }

    #[test]
    fn short_empty_or_hostile_values_name_no_peer() {
        for bad in [&b""[..], b"a;b", b"a;;;b", b"a;b;c;d", b";;;;", b"a;b\xff;c;d;e", b"a;b c;c;d;e"] {
            assert_eq!(decode(bad, 253), None, "{bad:?}");
        }
    }
}
