//! Label values taken from the network.
//!
//! Tags travel to Envoy inside the metric name (`;name=value;`), so a value
//! that could contain `;` or `=` could forge other labels. Values are therefore
//! restricted to the characters Kubernetes names, label values, cluster ids,
//! regions and SPIFFE identities use; anything else is rejected and the field
//! reads as unknown.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("value is {len} bytes, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("value has a byte outside the allowed set at offset {offset}")]
    BadByte { offset: usize },
}

/// True for the bytes a label value may hold.
pub fn is_allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/' | b':' | b'@' | b'+' | b'%')
}

/// Returns the value as a `String` if it is short enough and made of allowed bytes.
/// An empty input is a valid (missing) value.
pub fn sanitize(raw: &[u8], max_len: usize) -> Result<String, ValueError> {
    if raw.len() > max_len {
        return Err(ValueError::TooLong { len: raw.len(), max: max_len });
    }
    if let Some(offset) = raw.iter().position(|b| !is_allowed(*b)) {
        return Err(ValueError::BadByte { offset });
    }
    // Every allowed byte is ASCII, so this cannot fail; map the impossible case anyway.
    String::from_utf8(raw.to_vec()).map_err(|e| ValueError::BadByte { offset: e.utf8_error().valid_up_to() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_quotes_spaces_and_non_ascii_are_rejected() {
        for bad in [&b"a;b"[..], b"a=b", b"a,b", b"a b", b"a\"b", b"a\\b", b"\xff", "é".as_bytes(), b"a\n"] {
            assert!(matches!(sanitize(bad, 64), Err(ValueError::BadByte { .. })), "{bad:?}");
        }
    }

    #[test]
    fn identities_and_names_pass() {
        for good in ["spiffe://cluster.local/ns/default/sa/curl", "us-east-1a", "v1.2.3+build", "Kubernetes", ""] {
            assert_eq!(sanitize(good.as_bytes(), 64).as_deref(), Ok(good));
        }
    }

    #[test]
    fn length_is_bounded() {
        assert_eq!(sanitize(b"abcd", 3), Err(ValueError::TooLong { len: 4, max: 3 }));
    }
}
