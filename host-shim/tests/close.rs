//! How a tunnel ends, recorded as a real ztunnel 1.29 records it: a CONNECT stream
//! reset with an error code is a failed connection (`response_flags="CONNECT"`, an
//! error log line), END_STREAM both ways is clean (`-`); bytes are counted in ztunnel's
//! direction (client → server is "received") and reach the log line even when the
//! tunnel ends in a reset. The peers here are written directly against `h2`, with
//! literal headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use bytes::Bytes;
use h2::Reason;
use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw client opens a CONNECT to the server shim, exchanges `ping` with the echo
/// app, then ends the stream with `reset` (or END_STREAM when `None`).
async fn inbound_stream_ended_with(reset: Option<Reason>) -> (Bookinfo, host_shim::Shim) {
    capture_logs();
    let b = Bookinfo::new();
    let server = b.server(test_tuning()).await;
    echo_app(b.app()).await;
    let (client, _connection) = raw_h2_client(b.curl_tls(), b.server_hbone()).await;
    let mut client = client.ready().await.unwrap();
    let (response, mut send) = client.send_request(ztunnel_connect(&b.app().to_string(), CURL_BAGGAGE), false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    send.send_data(Bytes::from_static(b"ping"), false).unwrap();
    assert_eq!(read_chunk(&mut body).await.unwrap(), "ping");
    match reset {
        Some(reason) => send.send_reset(reason),
        None => {
            send.send_data(Bytes::new(), true).unwrap();
            assert!(read_to_end(&mut body).await.is_empty(), "the echo app closed after our END_STREAM");
        }
    }
    (b, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_reset_with_cancel_is_a_failed_connection_logged_as_an_error() {
    let (b, server) = inbound_stream_ended_with(Some(Reason::CANCEL)).await;
    let text = eventually_metric(&server, "the closed stream", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[("reporter", "destination")]) == 1.0
    })
    .await;
    let failed = [("reporter", "destination"), ("source_workload", "curl"), ("response_flags", "CONNECT")];
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &failed), 1.0, "{text}");
    let app = format!("dst.app={}", b.app());
    let lines = log_lines(&[&app, "connection complete"]).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(" ERROR "), "{}", lines[0]);
    // The bytes of the reset tunnel are counted and logged (they used to read 0).
    assert!(lines[0].contains("bytes_sent=4 bytes_recv=4"), "{}", lines[0]);
    // Bytes carry the labels the connection opened with.
    let opened = [("reporter", "destination"), ("source_workload", "curl"), ("response_flags", "-")];
    assert_eq!(metric(&text, "istio_tcp_received_bytes_total", &opened), 4.0);
    assert_eq!(metric(&text, "istio_tcp_sent_bytes_total", &opened), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_reset_with_internal_error_is_a_failed_connection() {
    let (b, server) = inbound_stream_ended_with(Some(Reason::INTERNAL_ERROR)).await;
    let text = eventually_metric(&server, "the closed stream", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[("reporter", "destination")]) == 1.0
    })
    .await;
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &[("response_flags", "CONNECT")]), 1.0, "{text}");
    let app = format!("dst.app={}", b.app());
    let lines = log_lines(&[&app, "connection complete", " ERROR "]).await;
    assert_eq!(lines.len(), 1, "no error log line for the reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_ended_with_end_stream_both_ways_is_clean() {
    let (b, server) = inbound_stream_ended_with(None).await;
    let text = eventually_metric(&server, "the closed stream", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[("reporter", "destination")]) == 1.0
    })
    .await;
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &[("response_flags", "-")]), 1.0, "{text}");
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &[("response_flags", "CONNECT")]), 0.0);
    let app = format!("dst.app={}", b.app());
    let lines = log_lines(&[&app, "connection complete"]).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(" INFO "), "{}", lines[0]);
}

/// The client shim's outbound tunnel to a raw destination that answers 200 and then
/// ends the stream with `reset` (or echoes and ends it cleanly when `None`).
async fn outbound_stream_ended_with(reset: Option<Reason>) -> host_shim::Shim {
    let b = Bookinfo::new();
    let client = b.client(test_tuning()).await;
    raw_h2_server(&b.certs, &identity("bookinfo", "ratings-v1"), b.server_hbone(), move |request, mut respond| {
        async move {
            let ok = http::Response::builder().status(200).header("baggage", RATINGS_BAGGAGE).body(()).unwrap();
            let mut send = respond.send_response(ok, false).unwrap();
            let mut body = request.into_body();
            let first = read_chunk(&mut body).await.unwrap();
            send.send_data(first, false).unwrap();
            match reset {
                // Once the app has its echo (it then says "bye"): a reset drops queued DATA.
                Some(reason) => {
                    assert_eq!(read_chunk(&mut body).await.unwrap(), "bye");
                    send.send_reset(reason);
                }
                None => {
                    let rest = read_to_end(&mut body).await;
                    send.send_data(rest.into(), true).unwrap();
                }
            }
            // Keep the stream's halves until the shim has seen the end.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
    .await;
    let mut app = TcpStream::connect(b.outbound).await.unwrap();
    app.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    app.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    app.write_all(b"bye").await.unwrap();
    app.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = app.read_to_end(&mut rest).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_tunnel_reset_by_the_destination_is_a_failed_connection() {
    let client = outbound_stream_ended_with(Some(Reason::CANCEL)).await;
    let text = eventually_metric(&client, "the closed tunnel", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[("reporter", "source")]) == 1.0
    })
    .await;
    let failed = [("reporter", "source"), ("destination_workload", "ratings-v1"), ("response_flags", "CONNECT")];
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &failed), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_tunnel_ended_cleanly_by_both_sides_is_clean() {
    let client = outbound_stream_ended_with(None).await;
    let text = eventually_metric(&client, "the closed tunnel", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[("reporter", "source")]) == 1.0
    })
    .await;
    let clean = [("reporter", "source"), ("destination_workload", "ratings-v1"), ("response_flags", "-")];
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &clean), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_from_the_client_are_received_and_bytes_back_are_sent_on_both_reporters() {
    capture_logs();
    let b = Bookinfo::new();
    let (client, server) = (b.client(test_tuning()).await, b.server(test_tuning()).await);
    // The server app reads the 10,000 bytes, answers 10 and closes.
    let listener = tokio::net::TcpListener::bind(b.app()).await.unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut up = vec![0u8; 10_000];
        stream.read_exact(&mut up).await.unwrap();
        stream.write_all(b"0123456789").await.unwrap();
        stream.shutdown().await.unwrap();
    });
    let back = round_trip(b.outbound, pattern(10_000)).await;
    assert_eq!(back, b"0123456789");

    let closed = |t: &str| metric(t, "istio_tcp_connections_closed_total", &[]) == 1.0;
    let source = eventually_metric(&client, "the closed outbound connection", closed).await;
    let destination = eventually_metric(&server, "the closed inbound connection", closed).await;
    let src = [("reporter", "source")];
    let dst = [("reporter", "destination")];
    assert_eq!(metric(&source, "istio_tcp_received_bytes_total", &src), 10_000.0, "{source}");
    assert_eq!(metric(&source, "istio_tcp_sent_bytes_total", &src), 10.0);
    assert_eq!(metric(&destination, "istio_tcp_received_bytes_total", &dst), 10_000.0, "{destination}");
    assert_eq!(metric(&destination, "istio_tcp_sent_bytes_total", &dst), 10.0);

    // Logs as ztunnel's: each side's own view, outbound sent what the client sent.
    let hop = format!("address: {}", b.server_hbone());
    let outbound = log_lines(&["connection complete", "direction=\"outbound\"", &hop]).await;
    assert!(outbound.iter().any(|l| l.contains("bytes_sent=10000 bytes_recv=10 ")), "{outbound:?}");
    let inbound = log_lines(&["connection complete", "direction=\"inbound\"", &format!("dst.app={}", b.app())]).await;
    assert!(inbound.iter().any(|l| l.contains("bytes_sent=10 bytes_recv=10000 ")), "{inbound:?}");
}
