//! The story's native side: the duration. Envoy 1.40 has no `request.duration` when the
//! stream completes (measured), so the module times the stream itself; when Envoy does
//! report one, it is recorded as is.

use crate::harness::*;
use crate::story::{Story, TUNNEL, curl_calls_echo};

#[test]
fn step_5_without_request_duration_the_module_records_the_stream_s_own_time() {
    let Story { wp, .. } = curl_calls_echo();
    let series = wp.only_request_series();
    let duration = wp.histogram("istio_request_duration_milliseconds", &series);
    assert_eq!(duration.len(), 1, "one duration sample: {duration:?}");
    assert!(duration[0] < 1000, "the stream's own time, in milliseconds: {duration:?}");
    wp.assert_healthy();
}

#[test]
fn step_5_a_request_duration_envoy_reports_is_recorded_as_is() {
    let mut wp = Waypoint::start();
    let mut connect = wp.client_connect(CLIENT_SAN, ztunnel_connect(Some(CLIENT_BAGGAGE_1_29.as_bytes())));
    wp.answer_client(&mut connect, "200");
    let tunnel = wp.established_tunnel(TUNNEL, ECHO_V2_BAGGAGE, ECHO_SAN);
    let mut request = InnerRequest::get("/echo").downstream_peer(&connect.filter_state).via(tunnel.upconn());
    request.duration_ms = Some(3);
    wp.serve(request);
    let series = wp.only_request_series();
    assert_eq!(wp.histogram("istio_request_duration_milliseconds", &series), vec![3]);
    wp.assert_healthy();
}
