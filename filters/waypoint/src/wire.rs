//! How proxy-wasm hands values over, read without trusting their framing. Pure Rust,
//! built natively too so that its tests and the fuzz targets run without wasm.

use waypoint_core::host::Headers;

/// Parses proxy-wasm's pair list (a u32 count, then (key size, value size)
/// u32 pairs, then each key and value followed by a NUL), as the host hands
/// over a header map. `None` when the sizes do not fit the buffer.
pub fn parse_header_pairs(bytes: &[u8]) -> Option<Headers> {
    if bytes.is_empty() {
        return Some(Headers::default());
    }
    let word = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let count = word(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Headers::with_capacity(count.min(bytes.len() / 10), bytes.len());
    for n in 0..count {
        let sizes = 4 + n * 8;
        let (key_size, value_size) = (word(sizes)?, word(sizes + 4)?);
        let key = bytes.get(data..data.checked_add(key_size)?)?;
        data = data.checked_add(key_size)?.checked_add(1)?;
        let value = bytes.get(data..data.checked_add(value_size)?)?;
        data = data.checked_add(value_size)?.checked_add(1)?;
        pairs.push(key, value);
    }
    Some(pairs)
}

/// Envoy encodes integer attributes as 8 little-endian bytes.
pub fn le_u64(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_le_bytes(array))
}

/// gRPC messages (request, response) from Envoy's `grpc_stats` filter state. Envoy
/// 1.40 hands wasm the object's string form, `<request count>,<response count>`
/// (`GrpcStatsObject::serializeAsString`); its `FilterObject` proto (field 1
/// request_message_count, field 2 response_message_count, varints) is read too, for
/// hosts that serialize the proto instead. `None` for anything else.
pub fn grpc_messages(bytes: &[u8]) -> Option<(u64, u64)> {
    if let Some((requests, responses)) = std::str::from_utf8(bytes).ok().and_then(|text| text.split_once(',')) {
        return Some((requests.trim().parse().ok()?, responses.trim().parse().ok()?));
    }
    if bytes.is_empty() {
        return None;
    }
    let (mut requests, mut responses) = (0, 0);
    let mut rest = bytes;
    while !rest.is_empty() {
        let (tag, after_tag) = varint(rest)?;
        let (value, after_value) = varint(after_tag)?;
        match tag {
            0x08 => requests = value,
            0x10 => responses = value,
            // Anything but the two varint fields: not the object we know.
            _ => return None,
        }
        rest = after_value;
    }
    Some((requests, responses))
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, bytes.get(index + 1..).unwrap_or_default()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn header_pairs_round_trip_with_non_utf8_values() {
        let raw = serialize(&[(":status", b"200"), ("baggage", b"\xff\xfe"), ("empty", b"")]);
        let headers = parse_header_pairs(&raw).unwrap_or_default();
        let pairs: Vec<(&[u8], &[u8])> = headers.iter().collect();
        assert_eq!(pairs, [(&b":status"[..], &b"200"[..]), (b"baggage", b"\xff\xfe"), (b"empty", b"")]);
        assert_eq!(headers.get("baggage"), Some(&b"\xff\xfe"[..]));
        assert_eq!(headers.get("empty"), Some(&b""[..]));
        assert_eq!(headers.get("absent"), None);
    }

    #[test]
    fn truncated_or_lying_header_pairs_are_refused() {
        let raw = serialize(&[("a", b"b")]);
        // Every cut loses part of a size, a key or a value (the final NUL is not needed).
        for cut in 1..raw.len() - 1 {
            assert_eq!(parse_header_pairs(&raw[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse_header_pairs(&u32::MAX.to_le_bytes()), None);
    }

    #[test]
    fn integers_are_eight_little_endian_bytes_exactly() {
        assert_eq!(le_u64(&[8, 0, 0, 0, 0, 0, 0, 0]), Some(8));
        assert_eq!(le_u64(&[8, 0, 0, 0]), None);
        assert_eq!(le_u64(&[0; 9]), None);
    }

    #[test]
    fn grpc_messages_are_read_from_envoys_string_form_and_from_the_proto() {
        assert_eq!(grpc_messages(b"2,7"), Some((2, 7)));
        // FilterObject { request_message_count: 1, response_message_count: 3 }
        assert_eq!(grpc_messages(&[0x08, 0x01, 0x10, 0x03]), Some((1, 3)));
        for bad in [&b""[..], b"2,", b"x,1", &[0x18, 0x01], &[0x08, 0x80]] {
            assert_eq!(grpc_messages(bad), None, "{bad:?}");
        }
    }
}
