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

#[cfg(test)]
mod tests {
    use super::short_string;

    #[test]
    fn flags_are_named_in_bit_order() {
        assert_eq!(short_string(0), "");
        assert_eq!(short_string(1 << 5), "UF");
        assert_eq!(short_string((1 << 15) | (1 << 5)), "UF,URX");
        assert_eq!(short_string(1 << 29), "UDO");
        assert_eq!(short_string(1 << 40), "", "an unknown bit is not guessed");
    }
}
