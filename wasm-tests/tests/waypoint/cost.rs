//! What the module costs Envoy: host calls and VM entries per request and per CONNECT, counted
//! by the host (a budget, not a timing). Run with `--nocapture` to see the breakdown.

use crate::harness::*;

/// The plain-HTTP budget of the stats role once the label set is defined: two header-map
/// reads (the peer and the service ride in them), four access-log properties (flags,
/// duration, both sizes), one increment and three histogram records.
const STATS_HTTP_BUDGET: u64 = 10;
/// gRPC adds the read of `grpc-status` in the trailers, the grpc_stats filter state
/// (messages each way) and the two message counter increments.
const STATS_GRPC_BUDGET: u64 = STATS_HTTP_BUDGET + 4;
/// Downstream: read the CONNECT, remove `baggage`; read `:status`, add our `baggage`.
const DOWNSTREAM_BUDGET: u64 = 4;
/// Upstream: add our `baggage`, read `connection.id`; read the 200's headers and the peer SAN.
const UPSTREAM_BUDGET: u64 = 4;

fn report(what: &str, trace: &Trace) {
    println!("{what}: {} host calls, {} VM entries [{}]", trace.hostcalls(), trace.entries, trace.hostcall_list());
}

/// Serves `request()` twice from the same peers and returns the second (steady-state) trace.
fn steady_state(request: impl Fn(&Tunnel) -> InnerRequest) -> (Trace, Trace) {
    let mut wp = Waypoint::start();
    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    let first = wp.serve(request(&tunnel)).trace;
    let second = wp.serve(request(&tunnel)).trace;
    assert_eq!(wp.only_request_series().count(), 2, "both requests in one label set");
    wp.assert_healthy();
    (first, second)
}

fn curl() -> Vec<u8> {
    peer_with_baggage(CLIENT_SAN, CLIENT_BAGGAGE_1_29)
}

#[test]
fn a_plain_http_request_costs_at_most_10_host_calls_in_steady_state() {
    let (first, steady) = steady_state(|t| InnerRequest::get("/echo").downstream_peer(&curl()).via(t.upconn()));
    report("stats, plain HTTP, first request of a label set", &first);
    report("stats, plain HTTP, steady state", &steady);
    assert!(
        steady.hostcalls() <= STATS_HTTP_BUDGET,
        "a plain HTTP request costs {} host calls (budget {STATS_HTTP_BUDGET}): {}",
        steady.hostcalls(),
        steady.hostcall_list()
    );
    assert_eq!(steady.state.hostcalls.get("proxy_define_metric"), None, "no define in steady state");
    assert_eq!(steady.entries, 6, "create, request headers, response headers, log, done, delete");
}

#[test]
fn a_grpc_request_costs_four_more_host_calls_for_its_status_and_messages() {
    let (first, steady) =
        steady_state(|t| InnerRequest::grpc("/echo.Echo/Say", "0").downstream_peer(&curl()).via(t.upconn()));
    report("stats, gRPC, first request of a label set", &first);
    report("stats, gRPC, steady state", &steady);
    assert!(
        steady.hostcalls() <= STATS_GRPC_BUDGET,
        "a gRPC request costs {} host calls (budget {STATS_GRPC_BUDGET}): {}",
        steady.hostcalls(),
        steady.hostcall_list()
    );
    assert_eq!(steady.entries, 9, "plus request body, response body, response trailers");
}

#[test]
fn a_connect_costs_at_most_4_host_calls_in_each_tunnel_role() {
    let mut wp = Waypoint::start();
    let mut connect = wp.client_connect(CLIENT_SAN, ztunnel_connect(Some(CLIENT_BAGGAGE_1_29.as_bytes())));
    wp.answer_client(&mut connect, "200");
    let downstream = wp.close_client(connect);
    report("downstream, one CONNECT (request, 200, end)", &downstream);

    let tunnel = wp.established_tunnel(8, ECHO_V2_BAGGAGE, ECHO_SAN);
    let upstream = wp.close_tunnel(tunnel);
    report("upstream, one CONNECT (request, 200, end)", &upstream);

    assert!(
        downstream.hostcalls() <= DOWNSTREAM_BUDGET,
        "downstream CONNECT: {} host calls (budget {DOWNSTREAM_BUDGET}): {}",
        downstream.hostcalls(),
        downstream.hostcall_list()
    );
    assert!(
        upstream.hostcalls() <= UPSTREAM_BUDGET,
        "upstream CONNECT: {} host calls (budget {UPSTREAM_BUDGET}): {}",
        upstream.hostcalls(),
        upstream.hostcall_list()
    );
    wp.assert_healthy();
}
