//! Which tunnel's destination peer a response is labelled with.
//!
//! main_internal's response carries `x-wp-upconn: X`, the id of its upstream internal
//! connection; the tunnel that carried it is the first tunnel of this worker with an id above X.
//! Connection ids are allocated process-wide, so a worker sees gaps where the other worker
//! allocated ids.

use crate::harness::*;

fn echo(version: &str) -> String {
    format!(
        "k8s.cluster.name=cluster2,k8s.namespace.name=backend,k8s.deployment.name=echo-{version},\
         service.name=echo,service.version={version}"
    )
}

fn curl() -> Vec<u8> {
    peer_with_baggage(CLIENT_SAN, CLIENT_BAGGAGE_1_29)
}

/// `destination_workload` → request count, over every series.
fn destinations(wp: &Waypoint) -> Vec<(String, i64)> {
    let mut all: Vec<(String, i64)> =
        wp.request_series().iter().map(|s| (s.label("destination_workload").to_string(), s.count())).collect();
    all.sort();
    all
}

#[test]
fn each_response_is_labelled_with_the_peer_of_the_tunnel_that_carried_it() {
    let mut wp = Waypoint::start();
    // Tunnels 10, 13, 14, 19 on this worker; 11, 12, 15..18 belong to the other worker.
    // Opened and answered out of order, as concurrent CONNECTs are.
    let mut t10 = wp.open_tunnel(10);
    let mut t13 = wp.open_tunnel(13);
    wp.answer_tunnel(&mut t13, "200", Some(echo("v2").as_bytes()), Some(ECHO_SAN));
    wp.answer_tunnel(&mut t10, "200", Some(echo("v1").as_bytes()), Some(ECHO_SAN));
    // A response over tunnel 10 before 14 and 19 exist.
    wp.serve(InnerRequest::get("/a").downstream_peer(&curl()).via(9));
    let mut t14 = wp.open_tunnel(14);
    let t19 = wp.established_tunnel(19, &echo("v4"), ECHO_SAN);
    wp.answer_tunnel(&mut t14, "200", Some(echo("v3").as_bytes()), Some(ECHO_SAN));

    for (x, path) in [(17, "/d"), (13, "/c"), (11, "/b"), (12, "/b2"), (9, "/a2"), (18, "/d2")] {
        wp.serve(InnerRequest::get(path).downstream_peer(&curl()).via(x));
    }
    assert_eq!(
        destinations(&wp),
        vec![
            ("echo-v1".into(), 2), // X = 9
            ("echo-v2".into(), 2), // X = 11, 12
            ("echo-v3".into(), 1), // X = 13
            ("echo-v4".into(), 2), // X = 17, 18
        ]
    );
    for tunnel in [t10, t13, t14, t19] {
        wp.close_tunnel(tunnel);
    }
    assert!(wp.all_errors().is_empty(), "{:?}", wp.all_errors());
    wp.assert_healthy();
}

#[test]
fn a_failed_connect_closed_before_the_lookup_reads_unknown_never_a_younger_tunnels_peer() {
    let mut wp = Waypoint::start();
    // Tunnel 21's CONNECT is refused and its stream is gone before main_internal answers.
    let mut refused = wp.open_tunnel(21);
    wp.answer_tunnel(&mut refused, "503", None, Some(ECHO_SAN));
    wp.close_tunnel(refused);
    // Tunnel 30 is reset before any answer.
    let reset = wp.open_tunnel(30);
    wp.close_tunnel(reset);
    // Younger, healthy tunnels of other requests.
    let t25 = wp.established_tunnel(25, &echo("v2"), ECHO_SAN);
    let t33 = wp.established_tunnel(33, &echo("v3"), ECHO_SAN);

    wp.serve(InnerRequest::get("/refused").downstream_peer(&curl()).via(20).status("503"));
    wp.serve(InnerRequest::get("/reset").downstream_peer(&curl()).via(29).status("503"));

    let series = wp.only_request_series();
    assert_eq!(series.count(), 2);
    series.assert_labels(&[
        ("destination_workload", "unknown"),
        ("destination_workload_namespace", "unknown"),
        ("destination_principal", "unknown"),
        ("destination_canonical_service", "unknown"),
        ("destination_cluster", "unknown"),
        ("destination_service", "echo.backend.svc.cluster.local"),
        ("response_code", "503"),
        ("connection_security_policy", "mutual_tls"),
        ("source_workload", "curl"),
    ]);
    wp.close_tunnel(t25);
    wp.close_tunnel(t33);
    wp.assert_healthy();
}

#[test]
fn a_request_flagged_uf_gets_an_unknown_destination() {
    let mut wp = Waypoint::start();
    // Tunnel 40 serves other requests; connection 42 failed to connect (UF), so no CONNECT of
    // its own ever reached the tunnel filter; tunnel 44 is a younger, healthy one.
    let t40 = wp.established_tunnel(40, &echo("v1"), ECHO_SAN);
    let t44 = wp.established_tunnel(44, &echo("v2"), ECHO_SAN);

    // Without the header (a local reply may carry none)...
    let mut no_header = InnerRequest::get("/uf-no-header").downstream_peer(&curl()).status("503").flags(UF);
    no_header.response.remove("x-wp-upconn");
    wp.serve(no_header);
    // ...and with it (the route adds it to local replies too): both UF and UF after retries.
    wp.serve(InnerRequest::get("/uf").downstream_peer(&curl()).status("503").flags(UF).via(41));
    wp.serve(InnerRequest::get("/uf-urx").downstream_peer(&curl()).status("503").flags(UF | URX).via(41));

    let mut wrong = Vec::new();
    for series in wp.request_series() {
        let flags = series.label("response_flags").to_string();
        for (name, want) in [
            ("destination_workload", "unknown"),
            ("destination_principal", "unknown"),
            ("connection_security_policy", "mutual_tls"),
        ] {
            if series.label(name) != want {
                wrong.push(format!(
                    "response_flags={flags} count={}: {name}={:?}, want {want:?}",
                    series.count(),
                    series.label(name)
                ));
            }
        }
    }
    let flags: Vec<(String, i64)> =
        wp.request_series().iter().map(|s| (s.label("response_flags").to_string(), s.count())).collect();
    let counted = |label: &str| flags.iter().filter(|(f, _)| f == label).map(|(_, n)| n).sum::<i64>();
    assert_eq!((counted("UF"), counted("UF,URX")), (2, 1), "response_flags labels: {flags:?}");
    assert!(
        wrong.is_empty(),
        "a request that never reached an upstream (UF) was labelled with a tunnel's peer:\n{}",
        wrong.join("\n")
    );
    wp.close_tunnel(t40);
    wp.close_tunnel(t44);
    wp.assert_healthy();
}

#[test]
fn two_workers_keep_their_own_tunnels() {
    // Worker A owns tunnels 10 and 14; worker B owns 12 (ids interleave across workers).
    // Each worker is a thread of its own, as in Envoy (the native module's state is per thread).
    let mut a = Waypoint::start();
    let a10 = a.established_tunnel(10, &echo("v1"), ECHO_SAN);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut b = Waypoint::start();
            let b12 = b.established_tunnel(12, &echo("v2"), ECHO_SAN);
            b.serve(InnerRequest::get("/").downstream_peer(&curl()).via(11));
            assert_eq!(destinations(&b), vec![("echo-v2".into(), 1)]);
            b.close_tunnel(b12);
            b.assert_healthy();
        });
    });
    let a14 = a.established_tunnel(14, &echo("v3"), ECHO_SAN);
    a.serve(InnerRequest::get("/").downstream_peer(&curl()).via(9));
    a.serve(InnerRequest::get("/").downstream_peer(&curl()).via(13));
    assert_eq!(destinations(&a), vec![("echo-v1".into(), 1), ("echo-v3".into(), 1)]);
    a.close_tunnel(a10);
    a.close_tunnel(a14);
    a.assert_healthy();
}

#[test]
fn a_response_over_a_tunnel_this_worker_never_saw_is_unknown_and_counted() {
    let mut wp = Waypoint::start();
    let t5 = wp.established_tunnel(5, &echo("v1"), ECHO_SAN);
    wp.serve(InnerRequest::get("/").downstream_peer(&curl()).via(7));
    let series = wp.only_request_series();
    series.assert_labels(&[("destination_workload", "unknown"), ("destination_principal", "unknown")]);
    assert_eq!(wp.errors("tunnel_unbound"), 1, "{:?}", wp.all_errors());
    wp.close_tunnel(t5);
    wp.assert_healthy();
}

#[test]
fn a_garbled_upconn_header_reads_unknown_and_never_traps() {
    let mut wp = Waypoint::start();
    let t10 = wp.established_tunnel(10, &echo("v1"), ECHO_SAN);
    for garbage in [&b"nine"[..], b"-1", b"18446744073709551616", b"\xff\xfe", b"9 9", b""] {
        let mut request = InnerRequest::get("/").downstream_peer(&curl());
        request.response.add("x-wp-upconn", garbage);
        wp.serve(request);
    }
    let series = wp.only_request_series();
    assert_eq!(series.count(), 6);
    series.assert_labels(&[("destination_workload", "unknown"), ("destination_principal", "unknown")]);
    wp.close_tunnel(t10);
    wp.assert_healthy();
}
