//! Scenario tests of the whole shim in-process, in the style of ztunnel's
//! tests/direct.rs: an app talks to a client shim's outbound listener, which
//! tunnels to a server shim's inbound side, which reaches the server app.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use host_shim::Shim;
use host_shim::tuning::Tuning;
use http::StatusCode;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RATINGS: &str = "ratings.bookinfo.svc.cluster.local";

/// curl (node-a, the client shim) → ratings service → ratings-v1 (node-b, the server shim) → app on :8080.
struct Scenario {
    net: Net,
    _dir: tempfile::TempDir,
    certs: mesh::ca::CertDir,
    client: Shim,
    server: Shim,
    /// Where the curl app connects to reach the ratings service.
    outbound: SocketAddr,
}

impl Scenario {
    async fn start(tuning: Tuning) -> Self {
        let net = Net::new();
        let outbound = net.addr(1, 15001);
        let mesh = mesh(
            vec![
                workload(
                    "curl",
                    "default",
                    "node-a",
                    "net",
                    net.ip(1),
                    json!({
                        "outbound": [{ "listen": outbound.to_string(), "destination": format!("{RATINGS}:9080") }],
                    }),
                ),
                workload("ratings-v1", "bookinfo", "node-b", "net", net.ip(2), json!({})),
            ],
            vec![json!({
                "hostname": RATINGS, "name": "ratings", "namespace": "bookinfo",
                "port": 9080, "target_port": 8080, "endpoints": ["ratings-v1"],
            })],
            json!({}),
        );
        let (dir, certs) = certs(&[
            identity("default", "curl"),
            identity("bookinfo", "ratings-v1"),
            "spiffe://evil.local/ns/default/sa/mallory".to_owned(),
        ]);
        let client = start_shim(&mesh, "node-a", &certs, tuning).await;
        let server = start_shim(&mesh, "node-b", &certs, tuning).await;
        Self { net, _dir: dir, certs, client, server, outbound }
    }

    fn app(&self) -> SocketAddr {
        self.net.addr(2, 8080)
    }

    fn server_hbone(&self) -> SocketAddr {
        self.net.addr(2, 15008)
    }

    /// A raw HBONE client presenting curl's identity to the server shim.
    async fn raw_client(&self) -> h2::client::SendRequest<bytes::Bytes> {
        let (curl, ratings) = (identity("default", "curl"), identity("bookinfo", "ratings-v1"));
        hbone_client(&self.certs, TRUST_DOMAIN, &curl, self.server_hbone(), &ratings).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mebibytes_each_way_arrive_intact() {
    let s = Scenario::start(test_tuning()).await;
    echo_app(s.app()).await;
    let data = pattern(10 * 1024 * 1024);
    let back = round_trip(s.outbound, data.clone()).await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
    let text = eventually_metric(&s.server, "the closed connection", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[]) == 1.0
    })
    .await;
    assert_eq!(metric(&text, "istio_tcp_sent_bytes_total", &[("reporter", "destination")]), data.len() as f64);
    assert_eq!(metric(&text, "istio_tcp_received_bytes_total", &[("reporter", "destination")]), data.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_after_the_client_half_closes_still_arrives() {
    let s = Scenario::start(test_tuning()).await;
    reply_after_eof_app(s.app()).await;
    let back = round_trip(s.outbound, pattern(300_000)).await;
    assert_eq!(String::from_utf8(back).unwrap(), "received 300000 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_connections_share_five_pooled_connections() {
    let s = Scenario::start(test_tuning()).await;
    echo_app(s.app()).await;
    // Every connection stays open until all 500 have echoed once, so all are concurrent.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(500));
    let mut tasks = Vec::new();
    for i in 0..500u32 {
        let (barrier, outbound) = (barrier.clone(), s.outbound);
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(outbound).await.unwrap();
            let hello = format!("hello {i}");
            stream.write_all(hello.as_bytes()).await.unwrap();
            let mut back = vec![0; hello.len()];
            stream.read_exact(&mut back).await.unwrap();
            assert_eq!(back, hello.as_bytes());
            barrier.wait().await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let text = scrape(&s.client).await;
    assert_eq!(metric(&text, "host_shim_pool_streams_opened_total", &[]), 500.0);
    assert_eq!(metric(&text, "host_shim_pool_connections_opened_total", &[]), 5.0, "100 streams per connection");
    let server = scrape(&s.server).await;
    assert_eq!(metric(&server, "host_shim_inbound_connections_total", &[]), 5.0);
    assert_eq!(metric(&server, "istio_tcp_connections_opened_total", &[]), 500.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_baggage_and_the_client_identity_drive_the_inbound_labels() {
    let s = Scenario::start(test_tuning()).await;
    echo_app(s.app()).await;
    round_trip(s.outbound, b"ping".to_vec()).await;
    let text = eventually_metric(&s.server, "a closed connection", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[]) == 1.0
    })
    .await;
    let expected = [
        ("reporter", "destination"),
        ("source_workload", "curl"),
        ("source_canonical_service", "curl"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "default"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/curl"),
        ("source_app", "curl"),
        ("source_version", "v1"),
        ("source_cluster", "cluster-net"),
        ("destination_service", RATINGS),
        ("destination_service_namespace", "bookinfo"),
        ("destination_service_name", "ratings"),
        ("destination_workload", "ratings-v1"),
        ("destination_principal", "spiffe://cluster.local/ns/bookinfo/sa/ratings-v1"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
        ("source_region", "region-net"),
        ("source_zone", "zone-curl"),
        ("destination_zone", "zone-ratings-v1"),
    ];
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &expected), 1.0, "{text}");
    assert_eq!(metric(&text, "istio_tcp_received_bytes_total", &expected), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_baggage_and_the_server_identity_drive_the_outbound_labels() {
    let s = Scenario::start(test_tuning()).await;
    echo_app(s.app()).await;
    round_trip(s.outbound, b"ping".to_vec()).await;
    let text = eventually_metric(&s.client, "a closed connection", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[]) == 1.0
    })
    .await;
    let expected = [
        ("reporter", "source"),
        ("source_workload", "curl"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/curl"),
        ("destination_service", RATINGS),
        ("destination_workload", "ratings-v1"),
        ("destination_canonical_service", "ratings"),
        ("destination_canonical_revision", "v1"),
        ("destination_workload_namespace", "bookinfo"),
        ("destination_principal", "spiffe://cluster.local/ns/bookinfo/sa/ratings-v1"),
        ("destination_cluster", "cluster-net"),
        ("destination_region", "region-net"),
        ("destination_zone", "zone-ratings-v1"),
    ];
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &expected), 1.0, "{text}");
    assert_eq!(metric(&text, "istio_tcp_sent_bytes_total", &expected), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_200_carries_the_pods_baggage_in_ztunnel_order() {
    let s = Scenario::start(test_tuning()).await;
    echo_app(s.app()).await;
    let client = s.raw_client().await;
    let response = send(&client, connect_request(&s.app().to_string())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("baggage").unwrap(),
        "k8s.cluster.name=cluster-net,k8s.namespace.name=bookinfo,k8s.deployment.name=ratings-v1,\
         service.name=ratings,service.version=v1,cloud.region=region-net,cloud.availability_zone=zone-ratings-v1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_baggage_reads_as_unknown_and_the_tunnel_still_opens() {
    let s = Scenario::start(test_tuning()).await;
    echo_app(s.app()).await;
    let client = s.raw_client().await;
    let forged = &b"k8s.deployment.name=\xff\xfe,k8s.namespace.name=a;b=c,service.name=ok"[..];
    let oversized = vec![b'a'; 10_000];
    for baggage in [forged, &oversized] {
        let request = http::Request::builder()
            .method("CONNECT")
            .uri(s.app().to_string())
            .header("baggage", http::HeaderValue::from_bytes(baggage).unwrap())
            .body(())
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    let text = scrape(&s.server).await;
    // Non-UTF-8 and label-forging values are dropped; the namespace falls back on the SPIFFE identity.
    let forged_labels = [
        ("source_workload", "unknown"),
        ("source_canonical_service", "ok"),
        ("source_workload_namespace", "default"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/curl"),
    ];
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &forged_labels), 1.0, "{text}");
    let oversized_labels = [("source_workload", "unknown"), ("source_canonical_service", "unknown")];
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &oversized_labels), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_presenting_another_identity_is_refused_by_the_client() {
    // The client's mesh says ratings-v1 runs as bookinfo/ratings-v1; the pod at that address presents bookinfo/impostor.
    let net = Net::new();
    let outbound = net.addr(1, 15001);
    let ratings = json!({ "hostname": RATINGS, "name": "ratings", "namespace": "bookinfo",
                          "port": 9080, "target_port": 8080, "endpoints": ["ratings-v1"] });
    let curl = workload(
        "curl",
        "default",
        "node-a",
        "net",
        net.ip(1),
        json!({
            "outbound": [{ "listen": outbound.to_string(), "destination": format!("{RATINGS}:9080") }],
        }),
    );
    let honest = workload("ratings-v1", "bookinfo", "node-b", "net", net.ip(2), json!({}));
    let impostor =
        workload("ratings-v1", "bookinfo", "node-b", "net", net.ip(2), json!({ "service_account": "impostor" }));
    let client_view = mesh(vec![curl, honest], vec![ratings.clone()], json!({}));
    let server_view = mesh(vec![impostor], vec![ratings], json!({}));
    let (_dir, certs) = certs(&[identity("default", "curl"), identity("bookinfo", "impostor")]);
    let client = start_shim(&client_view, "node-a", &certs, test_tuning()).await;
    let _server = start_shim(&server_view, "node-b", &certs, test_tuning()).await;
    echo_app(net.addr(2, 8080)).await;

    assert!(closed_without_reply(outbound, b"secret").await);
    let text = scrape(&client).await;
    let refused = [("reporter", "source"), ("reason", "tls_peer_identity")];
    assert_eq!(metric(&text, "host_shim_refusals_total", &refused), 1.0, "{text}");
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &[("response_flags", "TLS_FAILURE")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_another_trust_domain_is_refused() {
    let s = Scenario::start(test_tuning()).await;
    let mallory = "spiffe://evil.local/ns/default/sa/mallory";
    let ratings = identity("bookinfo", "ratings-v1");
    let client = hbone_client(&s.certs, "evil.local", mallory, s.server_hbone(), &ratings).await;
    assert!(connect_fails(client, &s.app().to_string()).await);
    let refused = [("reporter", "destination"), ("reason", "tls_peer_identity")];
    eventually_metric(&s.server, "the refusal", |t| metric(t, "host_shim_refusals_total", &refused) == 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let s = Scenario::start(test_tuning()).await;
    let config = rustls::ClientConfig::builder_with_provider(host_shim::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let client = hbone_client_with(std::sync::Arc::new(config), s.server_hbone()).await;
    assert!(connect_fails(client, &s.app().to_string()).await);
    let refused = [("reporter", "destination"), ("reason", "tls_no_client_cert")];
    eventually_metric(&s.server, "the refusal", |t| metric(t, "host_shim_refusals_total", &refused) == 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_other_than_connect_gets_400_without_baggage() {
    let s = Scenario::start(test_tuning()).await;
    let client = s.raw_client().await;
    let get = http::Request::get(format!("https://{}/", s.app())).body(()).unwrap();
    let response = send(&client, get).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("baggage").is_none());
    let text = scrape(&s.server).await;
    assert_eq!(metric(&text, "host_shim_refusals_total", &[("reason", "not_connect")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_that_is_not_this_pod_gets_400_and_an_unknown_service_503() {
    let s = Scenario::start(test_tuning()).await;
    let client = s.raw_client().await;
    let other_pod = s.net.addr(9, 8080).to_string();
    let response = send(&client, connect_request(&other_pod)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("baggage").is_none());
    let response = send(&client, connect_request("reviews.bookinfo.svc.cluster.local:9080")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("baggage").is_none());
    let text = scrape(&s.server).await;
    assert_eq!(metric(&text, "host_shim_refusals_total", &[("reason", "bad_authority")]), 1.0);
    assert_eq!(metric(&text, "host_shim_refusals_total", &[("reason", "unknown_service")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_app_gets_503_and_the_client_app_is_closed() {
    let s = Scenario::start(test_tuning()).await; // no app listens on :8080
    let client = s.raw_client().await;
    let response = send(&client, connect_request(&s.app().to_string())).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("baggage").is_none());

    assert!(closed_without_reply(s.outbound, b"anyone?").await);
    let client_text = eventually_metric(&s.client, "the failed CONNECT", |t| {
        metric(t, "host_shim_refusals_total", &[("reason", "upstream_status")]) == 1.0
    })
    .await;
    let failed = [("reporter", "source"), ("response_flags", "CONNECT")];
    assert_eq!(metric(&client_text, "istio_tcp_connections_closed_total", &failed), 1.0);
    let server_text = scrape(&s.server).await;
    assert_eq!(metric(&server_text, "host_shim_refusals_total", &[("reason", "app_unreachable")]), 2.0);
    let failed = [("reporter", "destination"), ("response_flags", "CONNECT")];
    assert_eq!(metric(&server_text, "istio_tcp_connections_closed_total", &failed), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_holds_the_writer_back_within_bounded_buffers() {
    let s = Scenario::start(test_tuning()).await;
    // The server app accepts and never reads.
    let listener = tokio::net::TcpListener::bind(s.app()).await.unwrap();
    tokio::spawn(async move {
        let (_stalled, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
    });
    let mut stream = TcpStream::connect(s.outbound).await.unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0usize;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), stream.write(&chunk)).await {
        written += n;
        assert!(written < 64 * 1024 * 1024, "the writer was never held back");
    }
    // The shims hold at most one 4 MiB stream window and 64 KiB splice buffers; the rest
    // sits in the kernel buffers of the three loopback connections (about 11 MiB in all here).
    assert!(written < 40 * 1024 * 1024, "{written} bytes were buffered");
    assert!(written > 4 * 1024 * 1024, "{written} bytes: the window was not used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_are_closed_after_the_idle_timeout() {
    let tuning = Tuning { pool_idle_timeout: Duration::from_millis(300), ..test_tuning() };
    let s = Scenario::start(tuning).await;
    echo_app(s.app()).await;
    round_trip(s.outbound, b"ping".to_vec()).await;
    assert_eq!(metric(&scrape(&s.client).await, "host_shim_pool_connections_opened_total", &[]), 1.0);
    eventually_metric(&s.client, "no pooled connection left", |t| metric(t, "host_shim_pool_connections", &[]) == 0.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_lets_an_open_tunnel_finish_and_refuses_new_ones() {
    let s = Scenario::start(test_tuning()).await;
    echo_app(s.app()).await;
    let mut stream = TcpStream::connect(s.outbound).await.unwrap();
    stream.write_all(b"before ").await.unwrap();
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).await.unwrap();

    let Scenario { client, server, outbound, .. } = s;
    let drained = tokio::spawn(async move { (client.shutdown().await, server.shutdown().await) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(outbound).await.is_err(), "the outbound listener is closed");

    stream.write_all(b"after").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"after");
    assert_eq!(drained.await.unwrap(), (true, true), "both shims drained before the deadline");
}

/// True if the handshake or the CONNECT fails. With TLS 1.3 a refused client
/// may finish its handshake before the server's verdict arrives, so any step may fail.
async fn connect_fails(client: std::io::Result<h2::client::SendRequest<bytes::Bytes>>, authority: &str) -> bool {
    let Ok(client) = client else { return true };
    let Ok(mut ready) = client.ready().await else { return true };
    let Ok((response, _send)) = ready.send_request(connect_request(authority), false) else { return true };
    response.await.is_err()
}

/// Test-only: a client that skips server verification, to reach the server's client-cert check.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        host_shim::tls::provider().signature_verification_algorithms.supported_schemes()
    }
}
