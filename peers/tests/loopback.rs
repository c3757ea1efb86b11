//! The two peers against each other and a TCP echo app on loopback: the recorded
//! ends, bytes and answers are what the client did.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use hbone_peers::{Answer, DestinationConfig, End, HboneClient, HboneDestination, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BAGGAGE: &str = "k8s.cluster.name=c1,k8s.namespace.name=ns2,k8s.deployment.name=server,service.name=server,service.version=v2,cloud.region=r1,cloud.availability_zone=z1";

/// A root and two leaves (client `ns1/curl`, server `ns2/server`) in a fresh directory.
fn certs() -> PathBuf {
    static N: AtomicU8 = AtomicU8::new(0);
    let dir =
        std::env::temp_dir().join(format!("hbone-peers-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::default();
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(dir.join("root.pem"), root.self_signed(&root_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(root, root_key);
    for (ns, sa) in [("ns1", "curl"), ("ns2", "server")] {
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::default();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        let uri = format!("spiffe://td/ns/{ns}/sa/{sa}");
        leaf.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().unwrap())];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{ns}.{sa}.cert.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{ns}.{sa}.key.pem")), key.serialize_pem()).unwrap();
    }
    dir
}

fn fresh_ip() -> IpAddr {
    static N: AtomicU8 = AtomicU8::new(1);
    IpAddr::V4(Ipv4Addr::new(127, 250, (std::process::id() % 250) as u8, N.fetch_add(1, Ordering::Relaxed)))
}

/// Echoes every byte; closes its write side once the client half-closed.
async fn echo_app(address: SocketAddr) {
    let listener = TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => tcp.write_all(&buf[..n]).await.unwrap(),
                    }
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
}

async fn setup(answer: Answer) -> (HboneDestination, HboneClient, IpAddr, PathBuf) {
    let dir = certs();
    let ip = fresh_ip();
    echo_app(SocketAddr::new(ip, 8080)).await;
    let destination = HboneDestination::start(
        DestinationConfig::new(SocketAddr::new(ip, 15008), TlsFiles::in_ca_dir(&dir, "ns2", "server"))
            .serve_port(8080)
            .serve_authority("server.ns2.svc.cluster.local:80", SocketAddr::new(ip, 8080))
            .answer(answer),
    )
    .await
    .unwrap();
    let client = HboneClient::dial(
        SocketAddr::new(ip, 15008),
        &TlsFiles::in_ca_dir(&dir, "ns1", "curl"),
        Some("spiffe://td/ns/ns2/sa/server"),
    )
    .await
    .unwrap();
    (destination, client, ip, dir)
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_clean_tunnel_carries_the_literal_headers_and_is_recorded_as_a_clean_end_with_its_bytes() {
    let (destination, client, ip, dir) = setup(Answer::Ok { baggage: Some(BAGGAGE.into()) }).await;
    assert_eq!(client.server_identities(), ["spiffe://td/ns/ns2/sa/server"]);
    let authority = format!("{ip}:8080");
    let mut tunnel = client
        .connect(
            &authority,
            &[
                ("baggage", "k8s.cluster.name=c1,k8s.namespace.name=ns1"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(tunnel.status, 200);
    assert_eq!(tunnel.header("baggage").as_deref(), Some(BAGGAGE));
    tunnel.stream.write_all(&[7u8; 10_000]).await.unwrap();
    tunnel.stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    tunnel.stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back.len(), 10_000);
    assert_eq!(tunnel.stream.peer_end(), End::EndStream);

    let records = destination.wait_for(Duration::from_secs(5), |r| r.len() == 1 && r[0].finished).await.unwrap();
    let r = &records[0];
    assert_eq!((r.method.as_str(), r.authority.as_str(), r.status), ("CONNECT", authority.as_str(), 200));
    assert_eq!(r.header("baggage").as_deref(), Some("k8s.cluster.name=c1,k8s.namespace.name=ns1"));
    let names: Vec<&str> = r.request_headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["baggage", "traceparent"]);
    assert_eq!(r.client_identities, ["spiffe://td/ns/ns1/sa/curl"]);
    assert_eq!((r.bytes_from_client, r.bytes_to_client), (10_000, 10_000));
    assert!(r.is_clean(), "{r:?}");
    cleanup(&dir);
}

#[tokio::test]
async fn a_reset_by_the_client_is_recorded_with_its_error_code() {
    let (destination, client, ip, dir) = setup(Answer::Ok { baggage: None }).await;
    let mut tunnel = client.connect("server.ns2.svc.cluster.local:80", &[]).await.unwrap();
    assert_eq!(tunnel.status, 200);
    assert_eq!(tunnel.header("baggage"), None, "no baggage configured, none sent");
    tunnel.stream.write_all(b"hello").await.unwrap();
    let mut five = [0u8; 5];
    tunnel.stream.read_exact(&mut five).await.unwrap();
    tunnel.stream.reset(2);
    let records = destination.wait_for(Duration::from_secs(5), |r| r.len() == 1 && r[0].finished).await.unwrap();
    let r = &records[0];
    assert_eq!(r.from_client, End::Reset(2), "{r:?}");
    assert_eq!(r.to_client, End::Reset(2), "{r:?}");
    assert!(!r.is_clean());
    assert_eq!((r.bytes_from_client, r.bytes_to_client), (5, 5));
    // A second stream on the same connection ending cleanly after only our END_STREAM is
    // not yet clean: the app has not closed until it saw the half-close.
    let mut tunnel = client.connect(&format!("{ip}:8080"), &[]).await.unwrap();
    tunnel.stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tunnel.stream.read_to_end(&mut rest).await.unwrap();
    let records = destination.wait_for(Duration::from_secs(5), |r| r.len() == 2 && r[1].finished).await.unwrap();
    assert!(records[1].is_clean(), "{:?}", records[1]);
    cleanup(&dir);
}

#[tokio::test]
async fn authorities_not_served_get_400_and_an_unavailable_destination_503_both_without_baggage() {
    let (destination, client, ip, dir) = setup(Answer::Ok { baggage: Some(BAGGAGE.into()) }).await;
    for authority in [format!("{ip}:9999"), "10.96.0.10:8080".to_owned(), "server.ns2.svc.cluster.local:81".to_owned()]
    {
        let tunnel = client.connect(&authority, &[]).await.unwrap();
        assert_eq!(tunnel.status, 400, "{authority}");
        assert_eq!(tunnel.header("baggage"), None);
    }
    destination.set_answer(Answer::Unavailable);
    let tunnel = client.connect(&format!("{ip}:8080"), &[]).await.unwrap();
    assert_eq!(tunnel.status, 503);
    assert_eq!(tunnel.header("baggage"), None);
    let statuses: Vec<u16> = destination.records().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400, 400, 400, 503]);
    cleanup(&dir);
}

#[tokio::test]
async fn a_client_certificate_is_required_and_a_wrong_server_identity_is_refused() {
    let (destination, _client, ip, dir) = setup(Answer::Ok { baggage: None }).await;
    let wrong = HboneClient::dial(
        SocketAddr::new(ip, 15008),
        &TlsFiles::in_ca_dir(&dir, "ns1", "curl"),
        Some("spiffe://td/ns/ns2/sa/someone-else"),
    )
    .await;
    assert!(wrong.is_err(), "the server's identity is not the expected one");
    // Plain TCP + a TLS client without a certificate: the handshake fails on the server.
    let config = rustls_client_without_cert();
    let tcp = tokio::net::TcpStream::connect(SocketAddr::new(ip, 15008)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls_pki_types::ServerName::IpAddress(Ipv4Addr::UNSPECIFIED.into());
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        // TLS 1.3: the server's refusal arrives after the client's Finished.
        let mut buf = [0u8; 1];
        assert!(tls.read(&mut buf).await.map(|n| n == 0).unwrap_or(true));
    }
    destination.wait_for(Duration::from_secs(5), |_| destination.handshakes().failed >= 1).await.unwrap();
    cleanup(&dir);
}

fn rustls_client_without_cert() -> std::sync::Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyServer;
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
        }
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer))
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(config)
}
