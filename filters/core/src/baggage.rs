//! The `baggage` header as ztunnel and Istio's Envoy proxies write it
//! (PROTOCOL.md §2): `key=value` members joined by `,`, no spaces, no
//! percent-encoding.

use crate::config::Limits;
use crate::peer::{Decoded, Peer, WorkloadType};
use crate::value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaggageError {
    #[error("baggage is {len} bytes, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("baggage has more than {max} members")]
    TooManyMembers { max: usize },
}

/// Parses `baggage` as the reference systems do: split on `,`, then on the first
/// `=`; keys match exactly; unknown keys are ignored; a later duplicate wins; an
/// empty value counts as missing. The header is hostile input: bytes, not UTF-8.
pub fn decode(raw: &[u8], limits: &Limits) -> Result<Decoded, BaggageError> {
    if raw.len() > limits.max_header_bytes {
        return Err(BaggageError::TooLarge { len: raw.len(), max: limits.max_header_bytes });
    }
    let mut decoded = Decoded::default();
    for (index, member) in raw.split(|b| *b == b',').enumerate() {
        if index >= limits.max_baggage_members {
            return Err(BaggageError::TooManyMembers { max: limits.max_baggage_members });
        }
        let (key, raw_value) = match member.iter().position(|b| *b == b'=') {
            Some(eq) => (member.get(..eq).unwrap_or_default(), member.get(eq + 1..).unwrap_or_default()),
            None => (member, &b""[..]),
        };
        let Some(field) = field_for_key(&mut decoded.peer, key) else { continue };
        *field = value::sanitize(raw_value, limits.max_value_bytes).unwrap_or_else(|_| {
            decoded.rejected_values += 1;
            String::new()
        });
    }
    if decoded.peer.workload_name.is_empty() {
        decoded.peer.workload_type = WorkloadType::Unknown;
    }
    decoded.peer.fill_service_fallbacks();
    Ok(decoded)
}

/// The peer field a baggage key writes, or `None` for keys we ignore.
fn field_for_key<'p>(peer: &'p mut Peer, key: &[u8]) -> Option<&'p mut String> {
    if let Some(kind) = WorkloadType::from_baggage_key(key) {
        peer.workload_type = kind;
        return Some(&mut peer.workload_name);
    }
    Some(match key {
        b"k8s.cluster.name" => &mut peer.cluster,
        b"k8s.namespace.name" => &mut peer.namespace,
        b"service.name" => &mut peer.canonical_service,
        b"service.version" => &mut peer.canonical_revision,
        b"app.name" => &mut peer.app,
        b"app.version" => &mut peer.version,
        b"cloud.region" => &mut peer.region,
        b"cloud.availability_zone" => &mut peer.zone,
        b"k8s.instance.name" => &mut peer.instance,
        _ => return None,
    })
}

/// Encodes a peer as ztunnel 1.29 does: cluster, namespace, workload, service
/// name and version, region, zone; empty values left out.
pub fn encode_ztunnel(peer: &Peer) -> String {
    let workload_key = workload_key(peer);
    join(&[
        ("k8s.cluster.name", &peer.cluster),
        ("k8s.namespace.name", &peer.namespace),
        (workload_key, &peer.workload_name),
        ("service.name", &peer.canonical_service),
        ("service.version", &peer.canonical_revision),
        ("cloud.region", &peer.region),
        ("cloud.availability_zone", &peer.zone),
    ])
}

/// Encodes a peer as Istio's Envoy-based proxies do; `app.*` only when it
/// differs from `service.*`.
pub fn encode_envoy(peer: &Peer) -> String {
    let distinct = |twin: &str, own: &str| if own == twin { String::new() } else { own.to_owned() };
    let app = distinct(&peer.canonical_service, &peer.app);
    let version = distinct(&peer.canonical_revision, &peer.version);
    join(&[
        (workload_key(peer), &peer.workload_name),
        ("service.name", &peer.canonical_service),
        ("app.name", &app),
        ("service.version", &peer.canonical_revision),
        ("app.version", &version),
        ("k8s.namespace.name", &peer.namespace),
        ("k8s.cluster.name", &peer.cluster),
        ("k8s.instance.name", &peer.instance),
        ("cloud.region", &peer.region),
        ("cloud.availability_zone", &peer.zone),
    ])
}

/// A workload of unknown type is announced as a pod, as Istio does.
fn workload_key(peer: &Peer) -> &'static str {
    peer.workload_type.baggage_key().unwrap_or("k8s.pod.name")
}

/// Joins non-empty members; a value that could break the framing is left out
/// (a `Peer` built by this crate never holds one).
fn join(members: &[(&str, &String)]) -> String {
    let mut out = String::with_capacity(256);
    for (key, val) in members {
        if val.is_empty() || !val.bytes().all(value::is_allowed) {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(val);
    }
    out
}
