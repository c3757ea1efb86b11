//! Property tests of the codecs: round trips and robustness on any bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg(not(target_arch = "wasm32"))]

use proptest::prelude::*;
use waypoint_core::{Limits, Peer, WorkloadType, baggage, legacy};

fn value() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9][a-z0-9.-]{0,20}"]
}

fn workload_type() -> impl Strategy<Value = WorkloadType> {
    prop_oneof![
        Just(WorkloadType::Deployment),
        Just(WorkloadType::CronJob),
        Just(WorkloadType::Pod),
        Just(WorkloadType::Job)
    ]
}

prop_compose! {
    fn peer()(workload_name in value(), workload_type in workload_type(), namespace in value(), cluster in value(),
              canonical_service in value(), canonical_revision in value(), app in value(), version in value(),
              region in value(), zone in value(), instance in value()) -> Peer {
        let workload_type = if workload_name.is_empty() { WorkloadType::Unknown } else { workload_type };
        Peer { workload_name, workload_type, namespace, cluster, canonical_service, canonical_revision, app,
               version, region, zone, instance, ..Peer::default() }
    }
}

/// What a receiver can know after the fallbacks between service and app.
fn as_received(mut peer: Peer, carries_app_and_instance: bool) -> Peer {
    if !carries_app_and_instance {
        peer.app.clear();
        peer.version.clear();
        peer.instance.clear();
    }
    if peer.canonical_service.is_empty() {
        peer.canonical_service.clone_from(&peer.app);
    }
    if peer.app.is_empty() {
        peer.app.clone_from(&peer.canonical_service);
    }
    if peer.canonical_revision.is_empty() {
        peer.canonical_revision.clone_from(&peer.version);
    }
    if peer.version.is_empty() {
        peer.version.clone_from(&peer.canonical_revision);
    }
    peer
}

proptest! {
    #[test]
    fn ztunnel_form_round_trips(peer in peer()) {
        let decoded = baggage::decode(baggage::encode_ztunnel(&peer).as_bytes(), &Limits::default());
        prop_assert_eq!(decoded.map(|d| d.peer), Ok(as_received(peer, false)));
    }

    #[test]
    fn envoy_form_round_trips(peer in peer()) {
        let decoded = baggage::decode(baggage::encode_envoy(&peer).as_bytes(), &Limits::default());
        prop_assert_eq!(decoded.map(|d| d.peer), Ok(as_received(peer, true)));
    }

    #[test]
    fn legacy_form_round_trips(peer in peer()) {
        let decoded = legacy::decode(legacy::encode(&peer).as_bytes(), &Limits::default());
        prop_assert_eq!(decoded.map(|d| d.peer), Ok(peer));
    }

    #[test]
    fn any_bytes_decode_to_safe_values_or_a_clear_error(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
        let limits = Limits::default();
        if let Ok(d) = baggage::decode(&raw, &limits) {
            for v in [&d.peer.workload_name, &d.peer.namespace, &d.peer.cluster, &d.peer.canonical_service,
                      &d.peer.canonical_revision, &d.peer.app, &d.peer.version, &d.peer.region, &d.peer.zone] {
                prop_assert!(v.bytes().all(waypoint_core::value::is_allowed));
            }
        }
        let _ = legacy::decode(&raw, &limits);
    }

    #[test]
    fn baggage_like_input_never_yields_separators(raw in "([a-z0-9.]{1,20}=[ -~]{0,20},){0,12}") {
        let d = baggage::decode(raw.as_bytes(), &Limits::default()).unwrap_or_default();
        for v in [&d.peer.workload_name, &d.peer.namespace, &d.peer.cluster, &d.peer.canonical_service] {
            prop_assert!(!v.contains(';') && !v.contains('=') && !v.contains(','));
        }
    }
}
