//! Failing host calls, bad configuration and hostile cardinality: the module degrades to
//! `unknown`, counts why, and never takes the worker's VM down.

use wasm_tests::{Error, Failure, LogLevel, Status};

use crate::harness::*;

/// One injected failure and the label it must degrade (checked on the request it hit).
struct Case {
    what: &'static str,
    failure: Failure,
    /// `(label, value)` the request that met the failure must show, if any.
    degraded: Option<(&'static str, &'static str)>,
}

fn case(what: &'static str, failure: Failure, degraded: Option<(&'static str, &'static str)>) -> Case {
    Case { what, failure, degraded }
}

fn header_call(name: &str) -> Failure {
    Failure::hostcall(name, Status::BadArgument)
}

fn property(path: &[&str]) -> Failure {
    Failure::property(path, Status::InternalFailure)
}

/// Runs `step` (the role's part of one request) with `case.failure` injected, then a healthy
/// request; returns what went wrong, if anything.
fn check(case: &Case, step: impl FnOnce(&mut Waypoint) -> Result<(), Error>) -> Option<String> {
    let mut wp = Waypoint::start();
    wp.vm.inject(case.failure.clone());
    let result = step(&mut wp);
    wp.vm.clear_failures();
    let what = case.what;
    match result {
        Err(Error::Trap { callback, panic, .. }) => {
            return Some(format!("{what}: TRAP in {callback}: {}", panic.unwrap_or_default()));
        }
        Err(e) => return Some(format!("{what}: driver error {e}")),
        Ok(()) => {}
    }
    let mut problems = Vec::new();
    if wp.errors("host_call") < 1 {
        problems.push(format!("not counted as host_call (errors: {:?})", wp.all_errors()));
    }
    if let Some((label, want)) = case.degraded {
        match wp.request_series().first() {
            Some(series) if series.label(label) == want => {}
            Some(series) => problems.push(format!("{label}={:?}, want {want:?}", series.label(label))),
            None => problems.push("the request was not counted".to_string()),
        }
    }
    // The worker keeps serving: a clean request afterwards is labelled in full.
    let before = wp.request_series().iter().map(Series::count).sum::<i64>();
    wp.exchange(Some(CLIENT_BAGGAGE_1_29.as_bytes()), Some(ECHO_V2_BAGGAGE.as_bytes()));
    let healthy = wp
        .request_series()
        .iter()
        .any(|s| s.label("source_workload") == "curl" && s.label("destination_workload") == "echo-v2");
    let after = wp.request_series().iter().map(Series::count).sum::<i64>();
    if !healthy || after != before + 1 {
        problems.push("the next clean request was not labelled in full".to_string());
    }
    if wp.vm.is_dead() {
        problems.push(format!("VM dead: {:?}", wp.vm.dead_reason()));
    }
    (!problems.is_empty()).then(|| format!("{what}: {}", problems.join("; ")))
}

fn assert_all_degrade(role: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "injected host-call failures in the {role} role must degrade, be counted and leave the VM alive:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn a_failing_host_call_in_the_downstream_role_degrades_is_counted_and_the_vm_survives() {
    let cases = [
        case("get_header_map_pairs (CONNECT request)", header_call("proxy_get_header_map_pairs"), None),
        case("remove_header_map_value (baggage)", header_call("proxy_remove_header_map_value"), None),
        case("get_header_map_value (:status)", header_call("proxy_get_header_map_value").key(":status"), None),
        case("add_header_map_value (our baggage)", header_call("proxy_add_header_map_value"), None),
    ];
    let problems = cases
        .iter()
        .filter_map(|case| {
            check(case, |wp| {
                let mut connect =
                    wp.try_client_connect(CLIENT_SAN, ztunnel_connect(Some(CLIENT_BAGGAGE_1_29.as_bytes())))?;
                wp.try_answer_client(&mut connect, "200")?;
                Ok(())
            })
        })
        .collect();
    assert_all_degrade("downstream", problems);
}

#[test]
fn a_failing_host_call_in_the_upstream_role_degrades_is_counted_and_the_vm_survives() {
    let cases = [
        case(
            "add_header_map_value (our baggage)",
            header_call("proxy_add_header_map_value"),
            Some(("destination_workload", "echo-v2")),
        ),
        case("get_property connection.id", property(&["connection", "id"]), Some(("destination_workload", "unknown"))),
        case(
            "get_header_map_pairs (CONNECT 200)",
            header_call("proxy_get_header_map_pairs"),
            Some(("destination_workload", "unknown")),
        ),
        case(
            "get_property upstream.uri_san_peer_certificate",
            property(&["upstream", "uri_san_peer_certificate"]),
            Some(("destination_principal", "unknown")),
        ),
    ];
    let problems = cases
        .iter()
        .filter_map(|case| {
            check(case, |wp| {
                let mut tunnel = wp.try_open_tunnel(8)?;
                wp.try_answer_tunnel(&mut tunnel, "200", Some(ECHO_V2_BAGGAGE.as_bytes()), Some(ECHO_SAN))?;
                wp.vm.clear_failures();
                let peer = String::from_utf8_lossy(&peer_with_baggage(CLIENT_SAN, CLIENT_BAGGAGE_1_29)).into_owned();
                wp.try_serve(InnerRequest::get("/").downstream_peer(peer.as_bytes()).via(7))?;
                wp.try_close_tunnel(tunnel)?;
                Ok(())
            })
        })
        .collect();
    assert_all_degrade("upstream", problems);
}

#[test]
fn a_failing_host_call_in_the_stats_role_degrades_is_counted_and_the_vm_survives() {
    let cases = [
        case(
            "get_header_map_pairs (request and response)",
            header_call("proxy_get_header_map_pairs"),
            Some(("response_code", "0")),
        ),
        case(
            "get_header_map_value (grpc-status trailer)",
            header_call("proxy_get_header_map_value").key("grpc-status"),
            // No status seen: read as Envoy infers it from the HTTP 200 (UNKNOWN).
            Some(("grpc_response_status", "2")),
        ),
        case("get_property response.flags", property(&["response", "flags"]), Some(("response_flags", "-"))),
        case("get_property request.duration", property(&["request", "duration"]), Some(("source_workload", "curl"))),
        case(
            "get_property request.total_size",
            property(&["request", "total_size"]),
            Some(("source_workload", "curl")),
        ),
        case(
            "get_property response.total_size",
            property(&["response", "total_size"]),
            Some(("source_workload", "curl")),
        ),
        case(
            "every get_property",
            Failure::hostcall("proxy_get_property", Status::InternalFailure),
            Some(("response_flags", "-")),
        ),
        case(
            "get_property response.flags (not serializable)",
            Failure::property(&["response", "flags"], Status::SerializationFailure),
            Some(("response_flags", "-")),
        ),
        // Metric calls fail once, so that the error counter itself can still be written.
        case("define_metric", Failure::hostcall("proxy_define_metric", Status::BadArgument).times(1), None),
        case("increment_metric", Failure::hostcall("proxy_increment_metric", Status::NotFound).times(1), None),
        case("record_metric", Failure::hostcall("proxy_record_metric", Status::NotFound).times(1), None),
    ];
    let problems = cases
        .iter()
        .filter_map(|case| {
            check(case, |wp| {
                let peer = String::from_utf8_lossy(&peer_with_baggage(CLIENT_SAN, CLIENT_BAGGAGE_1_29)).into_owned();
                wp.try_serve(InnerRequest::grpc("/echo.Echo/Say", "0").downstream_peer(peer.as_bytes()))?;
                Ok(())
            })
        })
        .collect();
    assert_all_degrade("stats", problems);
}

#[test]
fn bad_plugin_configuration_is_refused_at_on_configure_with_an_error_log() {
    let valid = WAYPOINT_CONFIG;
    for (root_id, config, needle) in [
        ("stats", r#"{"bagage_discovery": false}"#, "unknown field"),
        ("downstream", r#"{"identity": {"namespace": "back;end"}}"#, "identity.namespace"),
        ("upstream", r#"{"identity": {"workload_type": "daemonset"}}"#, "daemonset"),
        ("stats", r#"{"limits": {"max_label_sets": 0}}"#, "max_label_sets"),
        ("stats", "identity: waypoint", "not valid JSON"),
        ("connect_originate", valid, "unknown root_id"),
    ] {
        let mut vm = new_vm();
        let refused = vm.start_root(root_id, config.as_bytes().to_vec());
        match refused {
            Err(Error::Rejected { callback: "proxy_on_configure", .. }) => {}
            other => panic!("root {root_id:?} with {config} must be refused at on_configure, got {other:?}"),
        }
        let errors: Vec<String> =
            vm.logs().into_iter().filter(|(level, _)| *level == LogLevel::Error).map(|(_, m)| m).collect();
        assert!(
            errors.iter().any(|m| m.contains(needle)),
            "root {root_id:?} with {config}: the error log must say {needle:?}, got {errors:?}"
        );
        assert!(!vm.is_dead(), "refusing is not a trap");
    }
}
