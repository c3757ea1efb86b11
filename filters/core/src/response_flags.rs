//! Envoy's response flags. The `response.flags` property is a bitmask whose
//! bit N is `CoreResponseFlag` N (envoy/stream_info/stream_info.h); metrics
//! carry the short names joined by `,` in bit order, as Envoy's
//! `ResponseFlagUtils::toShortString` writes them.

/// Short names indexed by bit.
const SHORT_NAMES: [&str; 30] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX", "SI", "IH",
    "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR", "UDO",
];

/// The short string for a bitmask; empty when no flag is set. Bits Envoy may
/// add later and we do not know are left out rather than guessed.
pub fn short_string(bits: u64) -> String {
    let mut out = String::new();
    for (bit, name) in SHORT_NAMES.iter().enumerate() {
        if bits & (1u64 << bit) != 0 {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(name);
        }
    }
    out
}

/// Flags of a request that never reached an upstream tunnel: failed local
/// health check, no healthy upstream, connection failure, overflow, no route,
/// no cluster, DNS failure, dropped by overload. Such a request has no
/// destination peer, whatever connection id its local reply carries.
const NO_UPSTREAM: u64 = 1 << 0 | 1 << 1 | 1 << 5 | 1 << 7 | 1 << 8 | 1 << 24 | 1 << 26 | 1 << 27 | 1 << 29;

pub fn no_upstream_reached(bits: u64) -> bool {
    bits & NO_UPSTREAM != 0
}

#[cfg(test)]
mod tests {
    use super::{no_upstream_reached, short_string};

    #[test]
    fn failures_before_any_tunnel_are_recognised() {
        assert!(no_upstream_reached(1 << 5), "UF");
        assert!(no_upstream_reached((1 << 5) | (1 << 15)), "UF,URX");
        assert!(no_upstream_reached(1 << 8), "NR");
        assert!(!no_upstream_reached(1 << 6), "UC: the tunnel existed and its record says what it was");
        assert!(!no_upstream_reached(1 << 2), "UT: the tunnel carried the request");
        assert!(!no_upstream_reached(0));
    }

    #[test]
    fn flags_are_named_in_bit_order() {
        assert_eq!(short_string(0), "");
        assert_eq!(short_string(1 << 5), "UF");
        assert_eq!(short_string((1 << 15) | (1 << 5)), "UF,URX");
        assert_eq!(short_string(1 << 29), "UDO");
        assert_eq!(short_string(1 << 40), "", "an unknown bit is not guessed");
    }
}
