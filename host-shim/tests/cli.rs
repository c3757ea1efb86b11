//! The binary as an operator runs it: `ca`, `run` on two nodes, `eastwest-config`,
//! one log line per connection, and a drain on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHIM: &str = env!("CARGO_BIN_EXE_host-shim");
const RATINGS: &str = "ratings.bookinfo.svc.cluster.local";

/// A `host-shim run` process, killed if the test ends early.
struct RunningShim(Child);

impl Drop for RunningShim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(mesh: &Path, node: &str, certs: &Path, admin: std::net::SocketAddr, log: &Path) -> RunningShim {
    let child = Command::new(SHIM)
        .args(["run", "--node", node, "--admin", &admin.to_string()])
        .arg("--mesh")
        .arg(mesh)
        .arg("--certs")
        .arg(certs)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    RunningShim(child)
}

fn sigterm(shim: &RunningShim) {
    let status = Command::new("kill").args(["-TERM", &shim.0.id().to_string()]).status().unwrap();
    assert!(status.success());
}

async fn exit_status(shim: &mut RunningShim) -> std::process::ExitStatus {
    for _ in 0..100 {
        if let Some(status) = shim.0.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the shim did not exit after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_issues_certificates_serves_two_nodes_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (curl, ratings) = (identity("default", "curl"), identity("bookinfo", "ratings-v1"));
    let ca = Command::new(SHIM)
        .args(["ca", "--identity", &curl, "--identity", &ratings])
        .arg("--out")
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ca.success());
    let key_mode = std::fs::metadata(certs.join("default.curl.key.pem")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600, "private keys are readable by their owner only");
    assert!(certs.join("root.pem").is_file() && certs.join("bookinfo.ratings-v1.cert.pem").is_file());

    let net = Net::new();
    let outbound = net.addr(1, 15001);
    let mesh_file = dir.path().join("mesh.json");
    let mesh_json = json!({
        "trust_domain": TRUST_DOMAIN,
        "workloads": [
            workload("curl", "default", "node-a", "net", net.ip(1), json!({
                "outbound": [{ "listen": outbound.to_string(), "destination": format!("{RATINGS}:9080") }] })),
            workload("ratings-v1", "bookinfo", "node-b", "net", net.ip(2), json!({})),
        ],
        "services": [{ "hostname": RATINGS, "name": "ratings", "namespace": "bookinfo",
                       "port": 9080, "target_port": 8080, "endpoints": ["ratings-v1"] }],
    });
    std::fs::write(&mesh_file, mesh_json.to_string()).unwrap();
    echo_app(net.addr(2, 8080)).await;
    let (admin_a, admin_b) = (net.addr(200, 15020), net.addr(201, 15020));
    let (log_a, log_b) = (dir.path().join("node-a.log"), dir.path().join("node-b.log"));
    let mut node_a = run(&mesh_file, "node-a", &certs, admin_a, &log_a);
    let mut node_b = run(&mesh_file, "node-b", &certs, admin_b, &log_b);
    assert!(http_get(admin_a, "/ready").await.starts_with("HTTP/1.1 200"));
    assert!(http_get(admin_b, "/ready").await.starts_with("HTTP/1.1 200"));

    let data = pattern(2 * 1024 * 1024);
    assert!(round_trip(outbound, data.clone()).await == data);

    // A tunnel open across SIGTERM still completes; then both processes exit cleanly.
    let mut open = tokio::net::TcpStream::connect(outbound).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.unwrap();
    sigterm(&node_a);
    sigterm(&node_b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    open.write_all(b" after").await.unwrap();
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b" after");
    assert!(exit_status(&mut node_a).await.success());
    assert!(exit_status(&mut node_b).await.success());

    let (log_a, log_b) = (std::fs::read_to_string(&log_a).unwrap(), std::fs::read_to_string(&log_b).unwrap());
    let complete = |log: &str| log.lines().filter(|l| l.contains("connection complete")).count();
    assert_eq!((complete(&log_a), complete(&log_b)), (2, 2), "one line per connection:\n{log_a}\n{log_b}");
    assert!(log_a.contains("drained") && log_b.contains("drained"));
    assert!(!log_a.contains('\u{1b}'), "no terminal colours in a log file");
}

#[test]
fn the_binary_renders_the_east_west_gateway_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eastwest.yaml");
    let status = Command::new(SHIM)
        .args(["eastwest-config", "--network", "network-b", "--certs", "/certs", "--access-log", "/logs/ew.log"])
        .arg("--mesh")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../mesh/mesh.example.json"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let yaml = std::fs::read_to_string(out).unwrap();
    assert!(yaml.contains(r#"address: "127.10.2.100", port_value: 15008"#), "{yaml}");
    assert!(yaml.contains(r#"path: "/logs/ew.log""#));
}
