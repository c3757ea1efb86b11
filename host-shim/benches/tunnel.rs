//! Throughput of one HBONE tunnel against a plain rustls TLS stream, side by side
//! in one run: the same process, runtime, certificates and cipher suites.
//!
//!   tunnel: app → outbound shim → mTLS + HTTP/2 CONNECT → inbound shim → sink app
//!   tls:    client task → mTLS (TLS 1.3, same identities) → sink task
//!
//! Run: `cargo bench -p host-shim --bench tunnel` (optional argument: MiB per run, default 256).
//! With `TUNNEL_RESULT=<file>` (as `make bench` runs it) the figures also go to that
//! file as JSON, for the harness bench to put in `bench/results.json` and its tables.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use host_shim::proxy::pool;
use host_shim::tls::{self, Credentials};
use host_shim::tuning::Tuning;
use host_shim::{Shim, ShimOptions};
use mesh::Mesh;
use mesh::ca;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;
const RUNS: usize = 3;
const CURL: &str = "spiffe://cluster.local/ns/default/sa/curl";
const SINK: &str = "spiffe://cluster.local/ns/default/sa/sink";

fn main() {
    let mib: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(256);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(bench(mib));
}

async fn bench(mib: usize) {
    let dir = tempfile::tempdir().unwrap();
    let certs = ca::generate(dir.path(), &[CURL.to_owned(), SINK.to_owned()]).unwrap();
    let mesh = Mesh::parse(
        r#"{ "trust_domain": "cluster.local",
             "workloads": [
               { "name": "curl", "namespace": "default", "service_account": "curl", "node": "a",
                 "network": "n", "address": "127.251.0.1",
                 "outbound": [{ "listen": "127.251.0.1:15001", "destination": "127.251.0.2:8080" }] },
               { "name": "sink", "namespace": "default", "service_account": "sink", "node": "b",
                 "network": "n", "address": "127.251.0.2" } ] }"#,
    )
    .unwrap();
    let start = |node: &str| {
        Shim::start(ShimOptions {
            mesh: mesh.clone(),
            node: node.to_owned(),
            certs: certs.clone(),
            admin: "127.0.0.1:0".parse().unwrap(),
            tuning: Tuning::default(),
        })
    };
    let (_client, _server) = (start("a").await.unwrap(), start("b").await.unwrap());
    let sink_app: SocketAddr = "127.251.0.2:8080".parse().unwrap();
    spawn_sink(TcpListener::bind(sink_app).await.unwrap(), |tcp| async move { Ok(tcp) });

    let credentials = std::sync::Arc::new(Credentials::load(&certs, "cluster.local", [CURL, SINK]).unwrap());
    let tls_sink: SocketAddr = "127.251.0.2:9443".parse().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server_config(SINK).unwrap());
    spawn_sink(TcpListener::bind(tls_sink).await.unwrap(), move |tcp| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(tcp).await }
    });
    let client_config = credentials.client_config(CURL, &[SINK.to_owned()]).unwrap();

    let bytes = mib * 1024 * 1024;
    let (mut tunnel, mut plain) = (Duration::MAX, Duration::MAX);
    for _ in 0..RUNS {
        let outbound = TcpStream::connect("127.251.0.1:15001").await.unwrap();
        tunnel = tunnel.min(push(outbound, bytes).await);
        let tcp = TcpStream::connect(tls_sink).await.unwrap();
        let tls = pool::tls_connect(client_config.clone(), tcp, &Tuning::default()).await.unwrap();
        assert_eq!(tls::peer_identity(tls.get_ref().1).as_ref().map(|id| id.as_str()), Some(SINK));
        plain = plain.min(push(tls, bytes).await);
    }
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!("host-shim tunnel benchmark: {mib} MiB one way, best of {RUNS}");
    println!("  plain rustls TLS stream : {:8.1} MiB/s", rate(plain));
    println!("  HBONE tunnel (2 shims)  : {:8.1} MiB/s", rate(tunnel));
    println!("  tunnel / TLS ratio      : {:8.2}", rate(tunnel) / rate(plain));
    if let Some(file) = std::env::var_os("TUNNEL_RESULT") {
        let figures = serde_json::json!({
            "mib": mib,
            "runs": RUNS,
            "plain_mib_per_s": rate(plain),
            "tunnel_mib_per_s": rate(tunnel),
        });
        std::fs::write(&file, figures.to_string() + "\n").unwrap();
    }
}

/// Writes `bytes`, half-closes, and waits for the sink's byte count: the time
/// until every byte has arrived.
async fn push<S: AsyncRead + AsyncWrite + Unpin>(stream: S, bytes: usize) -> Duration {
    let (mut read, mut write) = tokio::io::split(stream);
    let chunk = vec![0x5a; CHUNK];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        write.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    write.shutdown().await.unwrap();
    let received = read.read_u64().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(received, bytes as u64);
    elapsed
}

/// Accepts connections, counts the bytes until EOF and answers the count.
fn spawn_sink<F, Fut, S>(listener: TcpListener, wrap: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let mut stream = wrap(tcp).await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                stream.write_u64(total).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
}
