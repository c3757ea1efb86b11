//! Any bytes as a `baggage` header: never a panic, only safe label values, and
//! what we encode decodes back to the same peer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint_core::{Limits, baggage, value};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(decoded) = baggage::decode(data, &limits) {
        let peer = &decoded.peer;
        for field in [&peer.workload_name, &peer.namespace, &peer.cluster, &peer.canonical_service,
                      &peer.canonical_revision, &peer.app, &peer.version, &peer.region, &peer.zone, &peer.instance] {
            assert!(field.bytes().all(value::is_allowed));
        }
        let again = baggage::decode(baggage::encode_envoy(peer).as_bytes(), &limits).map(|d| d.peer);
        assert_eq!(again.as_ref(), Ok(peer));
    }
});
