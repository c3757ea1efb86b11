//! Any bytes as a header map from the host: parsed within bounds or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint::wire::parse_header_pairs;

fuzz_target!(|data: &[u8]| {
    if let Some(pairs) = parse_header_pairs(data) {
        let carried: usize = pairs.iter().map(|(k, v)| k.len().min(v.len() + k.len()) + v.len()).sum();
        assert!(carried <= data.len() * 3, "lossy UTF-8 can at most triple a key");
    }
});
