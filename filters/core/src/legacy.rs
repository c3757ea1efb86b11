//! The sidecar-era `x-envoy-peer-metadata` header (PROTOCOL.md §3): base64 of
//! a serialized `google.protobuf.Struct` describing the peer proxy's node.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use prost::Message as _;
use prost_types::value::Kind;
use prost_types::{Struct, Value};

use crate::config::Limits;
use crate::peer::{Decoded, Peer, WorkloadType};
use crate::value;

/// The header carrying the metadata, and its companion carrying the node id.
pub const HEADER: &str = "x-envoy-peer-metadata";
pub const ID_HEADER: &str = "x-envoy-peer-metadata-id";

const OWNER_PREFIX: &str = "kubernetes://apis/apps/v1/namespaces/";

/// Sidecars have written it with and without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyError {
    #[error("x-envoy-peer-metadata is {len} bytes, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("x-envoy-peer-metadata is not base64: {0}")]
    Base64(String),
    #[error("x-envoy-peer-metadata is not a protobuf Struct: {0}")]
    Protobuf(String),
}

/// Decodes the header. The principal is never taken from it (it comes from TLS).
pub fn decode(raw: &[u8], limits: &Limits) -> Result<Decoded, LegacyError> {
    if raw.len() > limits.max_header_bytes {
        return Err(LegacyError::TooLarge { len: raw.len(), max: limits.max_header_bytes });
    }
    let bytes = BASE64.decode(raw).map_err(|e| LegacyError::Base64(e.to_string()))?;
    let node = Struct::decode(bytes.as_slice()).map_err(|e| LegacyError::Protobuf(e.to_string()))?;

    let mut rejected_values = 0;
    let mut text = |fields: &BTreeMap<String, Value>, key: &str| -> String {
        match fields.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(s)) => value::sanitize(s.as_bytes(), limits.max_value_bytes).unwrap_or_else(|_| {
                rejected_values += 1;
                String::new()
            }),
            _ => String::new(),
        }
    };
    let no_labels = BTreeMap::new();
    let labels = match node.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => &s.fields,
        _ => &no_labels,
    };
    let first_of = |a: String, b: String| if a.is_empty() { b } else { a };

    let workload_name = text(&node.fields, "WORKLOAD_NAME");
    let owner = text(&node.fields, "OWNER");
    let peer = Peer {
        workload_type: owner_workload_type(&owner, &workload_name),
        workload_name,
        namespace: text(&node.fields, "NAMESPACE"),
        cluster: text(&node.fields, "CLUSTER_ID"),
        canonical_service: text(labels, "service.istio.io/canonical-name"),
        canonical_revision: text(labels, "service.istio.io/canonical-revision"),
        app: first_of(text(labels, "app.kubernetes.io/name"), text(labels, "app")),
        version: first_of(text(labels, "app.kubernetes.io/version"), text(labels, "version")),
        region: text(&node.fields, "REGION"),
        zone: text(&node.fields, "AVAILABILITY_ZONE"),
        instance: text(&node.fields, "NAME"),
        principal: String::new(),
    };
    Ok(Decoded { peer, rejected_values })
}

/// `kubernetes://apis/apps/v1/namespaces/<ns>/<kind>s/<workload>` → the kind.
fn owner_workload_type(owner: &str, workload: &str) -> WorkloadType {
    let Some(path) = owner.strip_prefix(OWNER_PREFIX) else { return WorkloadType::Unknown };
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_namespace), Some(kind), Some(name), None) if name == workload => WorkloadType::from_owner_kind(kind),
        _ => WorkloadType::Unknown,
    }
}

/// Encodes a peer as a sidecar would (padded base64). Used by test clients.
pub fn encode(peer: &Peer) -> String {
    encode_with_extra_labels(peer, &[])
}

/// [`encode`], with more pod labels (e.g. `app.kubernetes.io/name`) in `LABELS`.
pub fn encode_with_extra_labels(peer: &Peer, extra_labels: &[(&str, &str)]) -> String {
    let mut fields = BTreeMap::new();
    let put = |map: &mut BTreeMap<String, Value>, key: &str, val: &str| {
        if !val.is_empty() {
            map.insert(key.to_owned(), Value { kind: Some(Kind::StringValue(val.to_owned())) });
        }
    };
    put(&mut fields, "NAME", &peer.instance);
    put(&mut fields, "NAMESPACE", &peer.namespace);
    put(&mut fields, "WORKLOAD_NAME", &peer.workload_name);
    put(&mut fields, "CLUSTER_ID", &peer.cluster);
    put(&mut fields, "IDENTITY", &peer.principal);
    put(&mut fields, "REGION", &peer.region);
    put(&mut fields, "AVAILABILITY_ZONE", &peer.zone);
    if let Some(kind) = peer.workload_type.owner_kind() {
        let owner = format!("{OWNER_PREFIX}{}/{kind}/{}", peer.namespace, peer.workload_name);
        put(&mut fields, "OWNER", &owner);
    }
    let mut labels = BTreeMap::new();
    put(&mut labels, "service.istio.io/canonical-name", &peer.canonical_service);
    put(&mut labels, "service.istio.io/canonical-revision", &peer.canonical_revision);
    put(&mut labels, "app", &peer.app);
    put(&mut labels, "version", &peer.version);
    for (key, val) in extra_labels {
        put(&mut labels, key, val);
    }
    fields.insert("LABELS".to_owned(), Value { kind: Some(Kind::StructValue(Struct { fields: labels })) });
    base64::engine::general_purpose::STANDARD.encode(Struct { fields }.encode_to_vec())
}
