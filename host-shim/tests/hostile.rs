//! What an attacker tried on the shim (issue 9), each as a sentence: forged baggage
//! namespaces lose to the verified identity, the first URI SAN counts, slow and idle
//! connections are closed while busy tunnels are not, a dead destination costs one
//! shared connect, and the drain deadline still closes every record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use host_shim::tuning::Tuning;
use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits (up to `limit`) for the peer to close a stream we never write to: true if it did.
async fn closed_by_peer<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_request_baggage_namespace_loses_to_the_client_identity_and_is_counted() {
    let b = Bookinfo::new();
    let server = b.server(test_tuning()).await;
    echo_app(b.app()).await;
    let (client, _connection) = raw_h2_client(b.curl_tls(), b.server_hbone()).await;
    let forged = "k8s.cluster.name=c1,k8s.namespace.name=kube-system,k8s.deployment.name=curl,\
                  service.name=curl,service.version=v1";
    let response = send(&client, ztunnel_connect(&b.app().to_string(), forged)).await;
    assert_eq!(response.status(), StatusCode::OK);

    let text = scrape(&server).await;
    let pinned = [
        ("reporter", "destination"),
        ("source_workload", "curl"),
        ("source_workload_namespace", "default"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/curl"),
        ("source_cluster", "c1"),
    ];
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &pinned), 1.0, "{text}");
    let forged_ns = [("source_workload_namespace", "kube-system")];
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &forged_ns), 0.0);
    let mismatch = [("reporter", "destination"), ("peer", "source")];
    assert_eq!(metric(&text, "host_shim_peer_identity_mismatch_total", &mismatch), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baggage_that_agrees_with_the_identity_is_not_counted_as_a_mismatch() {
    let b = Bookinfo::new();
    let server = b.server(test_tuning()).await;
    echo_app(b.app()).await;
    let (client, _connection) = raw_h2_client(b.curl_tls(), b.server_hbone()).await;
    let response = send(&client, ztunnel_connect(&b.app().to_string(), CURL_BAGGAGE)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = scrape(&server).await;
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &[("source_workload_namespace", "default")]), 1.0);
    assert_eq!(metric(&text, "host_shim_peer_identity_mismatch_total", &[]), 0.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_uri_sans_the_first_is_the_clients_identity() {
    let b = Bookinfo::new();
    let ca = TestCa::new();
    ca.write_identity("spiffe://cluster.local/ns/bookinfo/sa/ratings-v1");
    let server = start_shim(&b.mesh, "node-b", &ca.certs(), test_tuning()).await;
    echo_app(b.app()).await;
    let config =
        ca.client_with_sans(&["spiffe://cluster.local/ns/first/sa/one", "spiffe://cluster.local/ns/second/sa/two"]);
    let (client, _connection) = raw_h2_client(config, b.server_hbone()).await;
    let claims_second = "k8s.namespace.name=second,k8s.deployment.name=two";
    let response = send(&client, ztunnel_connect(&b.app().to_string(), claims_second)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = scrape(&server).await;
    let first = [
        ("source_workload", "two"),
        ("source_workload_namespace", "first"),
        ("source_principal", "spiffe://cluster.local/ns/first/sa/one"),
    ];
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &first), 1.0, "{text}");
    assert_eq!(metric(&text, "host_shim_peer_identity_mismatch_total", &[("peer", "source")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_uri_san_from_another_trust_domain_is_refused_even_if_a_later_one_is_ours() {
    let b = Bookinfo::new();
    let ca = TestCa::new();
    ca.write_identity("spiffe://cluster.local/ns/bookinfo/sa/ratings-v1");
    let server = start_shim(&b.mesh, "node-b", &ca.certs(), test_tuning()).await;
    let config = ca
        .client_with_sans(&["spiffe://evil.local/ns/default/sa/mallory", "spiffe://cluster.local/ns/default/sa/curl"]);
    let tcp = TcpStream::connect(b.server_hbone()).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(b.server_hbone().ip().into());
    // TLS 1.3: the client may finish before the server's verdict; the server then closes.
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await {
        assert!(closed_by_peer(&mut tls, Duration::from_secs(5)).await);
    }
    let refused = [("reporter", "destination"), ("reason", "tls_peer_identity")];
    eventually_metric(&server, "the refusal", |t| metric(t, "host_shim_refusals_total", &refused) == 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_response_baggage_namespace_loses_to_the_destination_identity() {
    let b = Bookinfo::new();
    let client = b.client(test_tuning()).await;
    raw_h2_server(&b.certs, &identity("bookinfo", "ratings-v1"), b.server_hbone(), |request, mut respond| async move {
        let forged = "k8s.cluster.name=c1,k8s.namespace.name=kube-system,k8s.deployment.name=ratings-v1,\
                      service.name=ratings,service.version=v1";
        let ok = http::Response::builder().status(200).header("baggage", forged).body(()).unwrap();
        let mut send = respond.send_response(ok, false).unwrap();
        let mut body = request.into_body();
        let all = read_to_end(&mut body).await;
        send.send_data(all.into(), true).unwrap();
    })
    .await;
    assert_eq!(round_trip(b.outbound, b"ping".to_vec()).await, b"ping");
    let text = eventually_metric(&client, "the closed tunnel", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[]) == 1.0
    })
    .await;
    let pinned = [
        ("reporter", "source"),
        ("destination_workload", "ratings-v1"),
        ("destination_workload_namespace", "bookinfo"),
        ("destination_principal", "spiffe://cluster.local/ns/bookinfo/sa/ratings-v1"),
    ];
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &pinned), 1.0, "{text}");
    let mismatch = [("reporter", "source"), ("peer", "destination")];
    assert_eq!(metric(&text, "host_shim_peer_identity_mismatch_total", &mismatch), 1.0, "{text}");
}

fn short(tuning: Tuning) -> Tuning {
    Tuning {
        handshake_timeout: Duration::from_millis(300),
        h2_handshake_timeout: Duration::from_millis(300),
        idle_connection_timeout: Duration::from_millis(300),
        ..tuning
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_that_never_speaks_is_closed_at_the_tls_handshake_timeout() {
    let b = Bookinfo::new();
    let server = b.server(short(test_tuning())).await;
    let mut tcp = TcpStream::connect(b.server_hbone()).await.unwrap();
    assert!(closed_by_peer(&mut tcp, Duration::from_secs(5)).await, "still open after 5 s");
    let refused = [("reporter", "destination"), ("reason", "tls_other")];
    eventually_metric(&server, "the refusal", |t| metric(t, "host_shim_refusals_total", &refused) == 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_that_never_sends_the_http2_preface_is_closed_at_the_h2_handshake_timeout() {
    let b = Bookinfo::new();
    let tuning = Tuning { h2_handshake_timeout: Duration::from_millis(300), ..test_tuning() };
    let server = b.server(tuning).await;
    let tcp = TcpStream::connect(b.server_hbone()).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(b.server_hbone().ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(b.curl_tls()).connect(name, tcp).await.unwrap();
    assert!(closed_by_peer(&mut tls, Duration::from_secs(5)).await, "still open after 5 s");
    let refused = [("reporter", "destination"), ("reason", "h2_handshake")];
    eventually_metric(&server, "the refusal", |t| metric(t, "host_shim_refusals_total", &refused) == 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_streams_is_closed_at_the_idle_timeout() {
    let b = Bookinfo::new();
    let server = b.server(short(test_tuning())).await;
    let (_client, connection) = raw_h2_client(b.curl_tls(), b.server_hbone()).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the idle connection is still open after 5 s");
    let idle = [("reporter", "destination"), ("reason", "idle_timeout")];
    eventually_metric(&server, "the idle close", |t| metric(t, "host_shim_refusals_total", &idle) == 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_again_after_its_stream_ended_is_closed_too() {
    let b = Bookinfo::new();
    let server = b.server(short(test_tuning())).await;
    echo_app(b.app()).await;
    let (client, connection) = raw_h2_client(b.curl_tls(), b.server_hbone()).await;
    let mut ready = client.ready().await.unwrap();
    let (response, mut send) = ready.send_request(ztunnel_connect(&b.app().to_string(), CURL_BAGGAGE), false).unwrap();
    let mut body = response.await.unwrap().into_body();
    send.send_data(Bytes::from_static(b"x"), true).unwrap();
    assert_eq!(read_to_end(&mut body).await, b"x");
    drop((ready, send, body));
    assert!(tokio::time::timeout(Duration::from_secs(5), connection).await.is_ok(), "still open after 5 s");
    let closed = [("reporter", "destination"), ("response_flags", "-")];
    assert_eq!(metric(&scrape(&server).await, "istio_tcp_connections_closed_total", &closed), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_outlives_many_idle_timeouts_quiet_or_busy() {
    let b = Bookinfo::new();
    let tuning = short(test_tuning());
    let (client, server) = (b.client(tuning).await, b.server(tuning).await);
    echo_app(b.app()).await;
    let mut app = TcpStream::connect(b.outbound).await.unwrap();
    // Busy: a byte every 100 ms for 1.5 s (5 idle timeouts) ...
    for i in 0..15u8 {
        app.write_all(&[i]).await.unwrap();
        let mut back = [0u8; 1];
        app.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [i]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... then quiet for 3 idle timeouts: an open stream is never idle.
    tokio::time::sleep(Duration::from_millis(900)).await;
    app.write_all(b"still here").await.unwrap();
    app.shutdown().await.unwrap();
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"still here");
    let text = eventually_metric(&server, "the closed tunnel", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[]) == 1.0
    })
    .await;
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &[("response_flags", "-")]), 1.0, "{text}");
    assert_eq!(metric(&text, "host_shim_refusals_total", &[("reason", "idle_timeout")]), 0.0, "{text}");
    assert_eq!(metric(&scrape(&client).await, "host_shim_pool_connections_opened_total", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_callers_to_a_dead_destination_share_one_connect() {
    let b = Bookinfo::new();
    // A "destination" that accepts TCP and never answers TLS; it counts what it accepts.
    let listener = tokio::net::TcpListener::bind(b.server_hbone()).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    let tuning = Tuning { handshake_timeout: Duration::from_millis(500), ..test_tuning() };
    let client = b.client(tuning).await;
    let callers: Vec<_> = (0..8).map(|_| tokio::spawn(closed_without_reply(b.outbound, b"anyone?"))).collect();
    for caller in callers {
        assert!(caller.await.unwrap());
    }
    let text = eventually_metric(&client, "eight failures", |t| {
        metric(t, "host_shim_refusals_total", &[("reporter", "source"), ("reason", "tls_other")]) == 8.0
    })
    .await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one TCP connection for eight callers");
    assert_eq!(metric(&text, "host_shim_pool_connect_attempts_total", &[]), 1.0, "{text}");
    let failed = [("reporter", "source"), ("response_flags", "TLS_FAILURE")];
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &failed), 8.0);
    // The next caller, after the failure, tries afresh.
    assert!(closed_without_reply(b.outbound, b"again?").await);
    let text = eventually_metric(&client, "a ninth failure", |t| {
        metric(t, "host_shim_refusals_total", &[("reason", "tls_other")]) == 9.0
    })
    .await;
    assert_eq!(metric(&text, "host_shim_pool_connect_attempts_total", &[]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_still_open_at_the_drain_deadline_are_closed_and_counted() {
    let b = Bookinfo::new();
    let tuning = Tuning { drain_deadline: Duration::from_millis(300), ..test_tuning() };
    let (client, server) = (b.client(tuning).await, b.server(tuning).await);
    echo_app(b.app()).await;
    let mut app = TcpStream::connect(b.outbound).await.unwrap();
    app.write_all(b"hold").await.unwrap();
    let mut back = [0u8; 4];
    app.read_exact(&mut back).await.unwrap();
    let (client_metrics, server_metrics) = (client.metrics().clone(), server.metrics().clone());
    let (client_drained, server_drained) = tokio::join!(client.shutdown(), server.shutdown());
    assert!(!client_drained && !server_drained, "the open tunnel kept both shims past the deadline");
    for (metrics, reporter) in [(client_metrics, "source"), (server_metrics, "destination")] {
        let mut text = String::new();
        for _ in 0..100 {
            text = metrics.encode();
            if metric(&text, "istio_tcp_connections_closed_total", &[]) == 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let labels = [("reporter", reporter)];
        assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &labels), 1.0, "{text}");
        assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &labels), 1.0, "{text}");
    }
    // The app's connection is closed too.
    assert!(closed_by_peer(&mut app, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_exports_its_build_as_ztunnel() {
    let b = Bookinfo::new();
    let server = b.server(test_tuning()).await;
    let text = scrape(&server).await;
    assert!(text.contains("istio_build{component=\"ztunnel\",tag=\"0.1.0\"} 1\n"), "{text}");
}
