//! The sidecar-era `x-envoy-peer-metadata` header, encoded by hand (no prost, no base64
//! crate): shared by the wasm and the native scenario tests.

/// base64 of a `google.protobuf.Struct` with string `fields` and a `LABELS` struct.
pub fn legacy_peer_metadata(fields: &[(&str, &str)], labels: &[(&str, &str)]) -> String {
    let string_value = |s: &str| proto_field(3, s.as_bytes());
    let struct_of = |pairs: &[(&str, &str)]| -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|(k, v)| {
                proto_field(1, &[proto_field(1, k.as_bytes()), proto_field(2, &string_value(v))].concat())
            })
            .collect()
    };
    let mut node = struct_of(fields);
    let labels_value = proto_field(5, &struct_of(labels));
    node.extend(proto_field(1, &[proto_field(1, b"LABELS"), proto_field(2, &labels_value)].concat()));
    base64(&node)
}

/// A length-delimited protobuf field.
fn proto_field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 6);
    let mut varint = |mut v: u64| loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    };
    varint(u64::from((number << 3) | 2));
    varint(payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_hand_written_base64_matches_rfc_4648() {
    for (input, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
        assert_eq!(base64(input.as_bytes()), encoded);
    }
}
