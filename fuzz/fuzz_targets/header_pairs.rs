//! Any bytes as a header map from the host: parsed within bounds or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint::wire::parse_header_pairs;

fuzz_target!(|data: &[u8]| {
    if let Some(headers) = parse_header_pairs(data) {
        let carried: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(carried <= data.len(), "every name and value is a part of the input");
    }
});
