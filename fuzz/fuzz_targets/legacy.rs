//! Any bytes as `x-envoy-peer-metadata`: a peer or a clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint_core::{Limits, legacy, value};

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = legacy::decode(data, &Limits::default()) {
        assert!(decoded.peer.principal.is_empty());
        assert!(decoded.peer.workload_name.bytes().all(value::is_allowed));
        assert!(decoded.peer.app.bytes().all(value::is_allowed));
    }
});
