//! Codec tests that run natively (`cargo test`) and inside a wasm engine
//! (`wasm-bindgen-test-runner` on wasm32-unknown-unknown): the same cases,
//! so the codecs are proven where the filter runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use waypoint_core::baggage::{self, BaggageError};
use waypoint_core::legacy::{self, LegacyError};
use waypoint_core::{Limits, Peer, WorkloadType};

fn decode(raw: &str) -> Peer {
    baggage::decode(raw.as_bytes(), &Limits::default()).map(|d| d.peer).unwrap_or_default()
}

const ZTUNNEL_129: &str = "k8s.cluster.name=cluster1,k8s.namespace.name=default,k8s.deployment.name=curl,\
service.name=curl,service.version=latest,cloud.region=us-east-1,cloud.availability_zone=us-east-1a";

const ENVOY_FORM: &str = "k8s.deployment.name=ratings-v1,service.name=ratings,service.version=version-1,\
app.version=v1,k8s.namespace.name=default,k8s.cluster.name=server-cluster,k8s.instance.name=ratings-v1-84975bc778-pxz2w";

#[test]
fn ztunnel_129_baggage_fills_every_field() {
    let peer = decode(ZTUNNEL_129);
    assert_eq!(peer.cluster, "cluster1");
    assert_eq!(peer.namespace, "default");
    assert_eq!(peer.workload_name, "curl");
    assert_eq!(peer.workload_type, WorkloadType::Deployment);
    assert_eq!(peer.canonical_service, "curl");
    assert_eq!(peer.canonical_revision, "latest");
    assert_eq!(peer.app, "curl", "service.name fills the app");
    assert_eq!(peer.version, "latest", "service.version fills the version");
    assert_eq!(peer.region, "us-east-1");
    assert_eq!(peer.zone, "us-east-1a");
    assert_eq!(peer.principal, "", "identity never comes from baggage");
}

#[test]
fn ztunnel_127_baggage_with_empty_keys_reads_empty_as_missing() {
    let peer = decode(
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.cronjob.name=backup,\
service.name=backup,service.version=,cloud.region=,cloud.availability_zone=",
    );
    assert_eq!(peer.cluster, "Kubernetes");
    assert_eq!(peer.workload_type, WorkloadType::CronJob);
    assert_eq!(peer.workload_name, "backup");
    assert_eq!((peer.canonical_revision.as_str(), peer.version.as_str()), ("", ""));
    assert_eq!((peer.region.as_str(), peer.zone.as_str()), ("", ""));
}

#[test]
fn envoy_baggage_keeps_distinct_app_version_and_instance() {
    let peer = decode(ENVOY_FORM);
    assert_eq!(peer.workload_name, "ratings-v1");
    assert_eq!(peer.canonical_service, "ratings");
    assert_eq!(peer.app, "ratings");
    assert_eq!(peer.canonical_revision, "version-1");
    assert_eq!(peer.version, "v1", "app.version is kept apart from service.version");
    assert_eq!(peer.cluster, "server-cluster");
    assert_eq!(peer.instance, "ratings-v1-84975bc778-pxz2w");
}

#[test]
fn app_name_fills_the_canonical_service_when_service_name_is_missing() {
    let peer = decode("app.name=web,app.version=v3");
    assert_eq!((peer.canonical_service.as_str(), peer.canonical_revision.as_str()), ("web", "v3"));
}

#[test]
fn unknown_keys_are_ignored_and_later_duplicates_win() {
    let peer = decode("foo=bar,k8s.namespace.name=a,k8s.namespace.name=b,k8s.pod.name=p,k8s.job.name=j");
    assert_eq!(peer.namespace, "b");
    assert_eq!((peer.workload_type, peer.workload_name.as_str()), (WorkloadType::Job, "j"));
    let cleared = decode("k8s.cluster.name=c1,k8s.cluster.name=");
    assert_eq!(cleared.cluster, "", "a later empty duplicate clears the value");
}

#[test]
fn keys_match_exactly_without_trimming() {
    let peer = decode("k8s.namespace.name =a, k8s.cluster.name=c,K8S.POD.NAME=x,k8s.deployment.name");
    assert_eq!(peer, Peer::default());
}

#[test]
fn hostile_values_read_as_unknown_and_are_counted() {
    let raw = b"k8s.namespace.name=ns;x=1,k8s.cluster.name=c\xff,service.name=a=b,k8s.pod.name=ok";
    let decoded = baggage::decode(raw, &Limits::default());
    let decoded = decoded.unwrap_or_default();
    assert_eq!(decoded.rejected_values, 3);
    assert_eq!(decoded.peer.namespace, "");
    assert_eq!(decoded.peer.cluster, "");
    assert_eq!(decoded.peer.canonical_service, "");
    assert_eq!(decoded.peer.workload_name, "ok");
}

#[test]
fn oversized_baggage_is_refused_whole() {
    let limits = Limits { max_header_bytes: 16, max_baggage_members: 3, ..Limits::default() };
    assert_eq!(
        baggage::decode(b"k8s.cluster.name=cluster1", &limits),
        Err(BaggageError::TooLarge { len: 25, max: 16 })
    );
    assert_eq!(baggage::decode(b"a=1,b=2,c=3,d=4", &limits), Err(BaggageError::TooManyMembers { max: 3 }));
    let long_value = Limits { max_value_bytes: 3, ..Limits::default() };
    let decoded = baggage::decode(b"k8s.cluster.name=abcd,k8s.pod.name=abc", &long_value).unwrap_or_default();
    assert_eq!((decoded.peer.cluster.as_str(), decoded.rejected_values), ("", 1));
    assert_eq!(decoded.peer.workload_name, "abc");
}

#[test]
fn empty_and_garbage_baggage_give_an_empty_peer() {
    for raw in [&b""[..], b",,,", b"====", b"\x00\x01\x02", b"k8s.pod.name="] {
        let decoded = baggage::decode(raw, &Limits::default()).unwrap_or_default();
        assert_eq!(decoded.peer, Peer::default(), "{raw:?}");
    }
}

#[test]
fn ztunnel_encoding_follows_ztunnel_order_and_skips_empty_values() {
    let mut peer = decode(ZTUNNEL_129);
    assert_eq!(baggage::encode_ztunnel(&peer), ZTUNNEL_129);
    peer.region.clear();
    peer.canonical_revision.clear();
    assert_eq!(
        baggage::encode_ztunnel(&peer),
        "k8s.cluster.name=cluster1,k8s.namespace.name=default,k8s.deployment.name=curl,service.name=curl,\
cloud.availability_zone=us-east-1a"
    );
}

#[test]
fn envoy_encoding_follows_envoy_order() {
    assert_eq!(baggage::encode_envoy(&decode(ENVOY_FORM)), ENVOY_FORM);
}

#[test]
fn a_workload_of_unknown_type_is_announced_as_a_pod() {
    let peer = Peer { workload_name: "w".into(), ..Peer::default() };
    assert_eq!(baggage::encode_ztunnel(&peer), "k8s.pod.name=w");
}

fn sidecar() -> Peer {
    Peer {
        workload_name: "productpage-v1".into(),
        workload_type: WorkloadType::Deployment,
        namespace: "bookinfo".into(),
        cluster: "cluster1".into(),
        canonical_service: "productpage".into(),
        canonical_revision: "v1".into(),
        app: "productpage".into(),
        version: "v1".into(),
        region: "eu-west-1".into(),
        zone: "eu-west-1b".into(),
        instance: "productpage-v1-6b746f74dc-9stvs".into(),
        ..Peer::default()
    }
}

#[test]
fn legacy_header_round_trips_padded_and_unpadded() {
    let mut saw_padding = false;
    // Three lengths in a row: at least one encodes with `=` padding.
    for suffix in ["", "x", "xx"] {
        let peer = Peer { instance: format!("productpage-v1-6b746f74dc-9stvs{suffix}"), ..sidecar() };
        let encoded = legacy::encode(&peer);
        saw_padding |= encoded.ends_with('=');
        for raw in [encoded.as_str(), encoded.trim_end_matches('=')] {
            let decoded = legacy::decode(raw.as_bytes(), &Limits::default());
            assert_eq!(decoded.map(|d| d.peer), Ok(peer.clone()));
        }
    }
    assert!(saw_padding);
}

#[test]
fn legacy_app_kubernetes_io_labels_win_over_app_and_version() {
    // Built by hand as a sidecar would: LABELS carries both label families.
    let peer = Peer { app: "plain-app".into(), version: "plain-v".into(), ..sidecar() };
    let encoded = legacy::encode(&peer);
    let with_k8s_labels = legacy::encode_with_extra_labels(
        &peer,
        &[("app.kubernetes.io/name", "k8s-app"), ("app.kubernetes.io/version", "k8s-v")],
    );
    let plain = legacy::decode(encoded.as_bytes(), &Limits::default()).unwrap_or_default().peer;
    assert_eq!((plain.app.as_str(), plain.version.as_str()), ("plain-app", "plain-v"));
    let k8s = legacy::decode(with_k8s_labels.as_bytes(), &Limits::default()).unwrap_or_default().peer;
    assert_eq!((k8s.app.as_str(), k8s.version.as_str()), ("k8s-app", "k8s-v"));
}

#[test]
fn legacy_header_never_sets_the_principal() {
    let peer = Peer { principal: "spiffe://cluster.local/ns/bookinfo/sa/pp".into(), ..sidecar() };
    let decoded = legacy::decode(legacy::encode(&peer).as_bytes(), &Limits::default()).unwrap_or_default();
    assert_eq!(decoded.peer.principal, "");
}

#[test]
fn legacy_garbage_is_a_clear_error() {
    let limits = Limits::default();
    assert!(matches!(legacy::decode(b"***", &limits), Err(LegacyError::Base64(_))));
    // "/////w" is base64 of ff ff ff ff: not a protobuf message.
    assert!(matches!(legacy::decode(b"/////w", &limits), Err(LegacyError::Protobuf(_))));
    let small = Limits { max_header_bytes: 4, ..limits };
    assert!(matches!(legacy::decode(b"AAAAAAAA", &small), Err(LegacyError::TooLarge { .. })));
    assert_eq!(legacy::decode(b"", &Limits::default()).map(|d| d.peer), Ok(Peer::default()));
}
