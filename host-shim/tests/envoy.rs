//! Interop with real Envoy 1.40 (ENVOY_BIN): the shim on both ends of Envoy's
//! HBONE, and double HBONE through the stock-Envoy east-west gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::net::SocketAddr;

use envoy_config::eastwest::{self, EastWest};
use mesh::Mesh;
use mesh::ca::CertDir;
use serde_json::json;
use support::*;

const RATINGS: &str = "ratings.bookinfo.svc.cluster.local";
const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";

fn cert_values(certs: &CertDir, identity: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CERT_CHAIN", certs.cert(identity).unwrap().display().to_string()),
        ("PRIVATE_KEY", certs.key(identity).unwrap().display().to_string()),
        ("ROOT_CERT", certs.root().display().to_string()),
    ]
}

fn ip(address: SocketAddr) -> String {
    address.ip().to_string()
}

fn port(address: SocketAddr) -> String {
    address.port().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_as_hbone_client_reaches_the_inbound_shim_and_sees_its_response_baggage() {
    let net = Net::new();
    let mesh = mesh(
        vec![workload("ratings-v1", "bookinfo", "node-b", "net", net.ip(2), json!({}))],
        vec![json!({ "hostname": RATINGS, "name": "ratings", "namespace": "bookinfo",
                     "port": 9080, "target_port": 8080, "endpoints": ["ratings-v1"] })],
        json!({}),
    );
    let (ratings, client) = (identity("bookinfo", "ratings-v1"), identity("default", "envoy-client"));
    let (dir, certs) = certs(&[ratings.clone(), client.clone()]);
    let server = start_shim(&mesh, "node-b", &certs, test_tuning()).await;
    echo_app(net.addr(2, 8080)).await;

    let access_log = dir.path().join("client-access.log");
    let client_baggage = "k8s.cluster.name=c1,k8s.namespace.name=default,k8s.deployment.name=envoy-client,\
                          service.name=envoy-client,service.version=v7";
    let (admin, listen, server_hbone) = (net.addr(200, 15000), net.addr(1, 15001), net.addr(2, 15008));
    let mut values = cert_values(&certs, &client);
    values.extend([
        ("ADMIN_ADDRESS", ip(admin)),
        ("ADMIN_PORT", port(admin)),
        ("LISTEN_ADDRESS", ip(listen)),
        ("LISTEN_PORT", port(listen)),
        ("SERVER_ADDRESS", ip(server_hbone)),
        ("SERVER_PORT", port(server_hbone)),
        ("SERVER_IDENTITY", ratings.clone()),
        ("AUTHORITY", net.addr(2, 8080).to_string()),
        ("BAGGAGE", client_baggage.to_owned()),
        ("ACCESS_LOG", access_log.display().to_string()),
    ]);
    let yaml = fill(include_str!("fixtures/hbone_client.yaml.in"), &values);
    let _envoy = Envoy::start(dir.path(), "hbone-client", &yaml, net.addr(200, 15000), "info").await;

    let data = pattern(1024 * 1024);
    assert!(round_trip(net.addr(1, 15001), data.clone()).await == data, "bytes differ");

    let log = eventually_lines(&access_log, 1).await;
    assert!(log.contains(&format!("server={ratings}")), "{log}");
    assert!(
        log.contains(r#"{"key":"baggage","value":"k8s.cluster.name=cluster-net,k8s.namespace.name=bookinfo,k8s.deployment.name=ratings-v1,"#),
        "Envoy kept the response baggage: {log}"
    );
    let inbound = [
        ("reporter", "destination"),
        ("source_workload", "envoy-client"),
        ("source_canonical_revision", "v7"),
        ("source_cluster", "c1"),
        ("source_principal", client.as_str()),
        ("destination_workload", "ratings-v1"),
    ];
    let text = eventually_metric(&server, "Envoy's connection", |t| {
        metric(t, "istio_tcp_connections_closed_total", &inbound) == 1.0
    })
    .await;
    assert_eq!(metric(&text, "istio_tcp_sent_bytes_total", &inbound), data.len() as f64);
    // Both apps finished: Envoy ends the CONNECT with END_STREAM, not an error reset.
    let clean = [("reporter", "destination"), ("response_flags", "-")];
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &clean), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_shim_tunnels_into_envoy_terminating_connect_as_a_waypoint() {
    let net = Net::new();
    let waypoint = identity("bookinfo", "waypoint");
    let mesh = mesh(
        vec![
            workload(
                "curl",
                "default",
                "node-a",
                "net",
                net.ip(1),
                json!({
                    "outbound": [{ "listen": net.addr(1, 15001).to_string(), "destination": format!("{REVIEWS}:9080") }],
                }),
            ),
            workload("reviews-v1", "bookinfo", "node-b", "net", net.ip(2), json!({})),
        ],
        vec![json!({ "hostname": REVIEWS, "name": "reviews", "namespace": "bookinfo", "vip": "10.96.0.20",
                     "port": 9080, "target_port": 8080, "endpoints": ["reviews-v1"],
                     "waypoint": { "address": net.addr(100, 15008).to_string(), "identity": waypoint } })],
        json!({}),
    );
    let curl = identity("default", "curl");
    let (dir, certs) = certs(&[curl.clone(), waypoint.clone()]);
    echo_app(net.addr(2, 8080)).await;
    let access_log = dir.path().join("waypoint-access.log");
    let waypoint_baggage = "k8s.deployment.name=waypoint,service.name=waypoint,service.version=v9,\
                            k8s.namespace.name=bookinfo,k8s.cluster.name=wp-cluster";
    let (admin, listen, app) = (net.addr(200, 15000), net.addr(100, 15008), net.addr(2, 8080));
    let mut values = cert_values(&certs, &waypoint);
    values.extend([
        ("ADMIN_ADDRESS", ip(admin)),
        ("ADMIN_PORT", port(admin)),
        ("LISTEN_ADDRESS", ip(listen)),
        ("LISTEN_PORT", port(listen)),
        ("APP_ADDRESS", ip(app)),
        ("APP_PORT", port(app)),
        ("TRUST_DOMAIN", TRUST_DOMAIN.to_owned()),
        ("RESPONSE_BAGGAGE", waypoint_baggage.to_owned()),
        ("ACCESS_LOG", access_log.display().to_string()),
    ]);
    let yaml = fill(include_str!("fixtures/connect_terminate.yaml.in"), &values);
    let _envoy = Envoy::start(dir.path(), "waypoint", &yaml, net.addr(200, 15000), "info").await;
    let client = start_shim(&mesh, "node-a", &certs, test_tuning()).await;

    let data = pattern(1024 * 1024);
    assert!(round_trip(net.addr(1, 15001), data.clone()).await == data, "bytes differ");

    let log = eventually_lines(&access_log, 1).await;
    for expected in [
        "authority=10.96.0.20:9080".to_owned(),
        format!("client={curl}"),
        "baggage=k8s.cluster.name=cluster-net,k8s.namespace.name=default,k8s.deployment.name=curl,".to_owned(),
        r#"forwarded=for="127."#.to_owned(),
        format!(";host={REVIEWS} traceparent=00-"),
        "code=200".to_owned(),
    ] {
        assert!(log.contains(&expected), "waypoint log lacks {expected:?}: {log}");
    }
    let outbound = [
        ("reporter", "source"),
        ("source_workload", "curl"),
        ("destination_service", REVIEWS),
        ("destination_workload", "waypoint"),
        ("destination_canonical_revision", "v9"),
        ("destination_cluster", "wp-cluster"),
        ("destination_principal", waypoint.as_str()),
    ];
    let text = eventually_metric(&client, "the tunnel's labels", |t| {
        metric(t, "istio_tcp_connections_closed_total", &outbound) == 1.0
    })
    .await;
    // Envoy ends a finished CONNECT with END_STREAM, not an error reset.
    let clean = [("reporter", "source"), ("response_flags", "-")];
    assert_eq!(metric(&text, "istio_tcp_connections_closed_total", &clean), 1.0, "{text}");
}

/// curl in network-a; ratings-v1-a and -b in network-b behind the east-west gateway.
struct TwoNetworks {
    net: Net,
    _dir: tempfile::TempDir,
    certs: CertDir,
    client: host_shim::Shim,
    server: host_shim::Shim,
    gateway: Envoy,
    access_log: std::path::PathBuf,
}

impl TwoNetworks {
    async fn start(gateway_log_level: &str) -> Self {
        let net = Net::new();
        let gateway_identity = identity("istio-system", "istio-eastwestgateway");
        let mesh: Mesh = mesh(
            vec![
                workload(
                    "curl",
                    "default",
                    "node-a",
                    "network-a",
                    net.ip(1),
                    json!({
                        "outbound": [{ "listen": net.addr(1, 15001).to_string(), "destination": format!("{RATINGS}:9080") }],
                    }),
                ),
                workload("ratings-v1-a", "bookinfo", "node-b", "network-b", net.ip(2), json!({})),
                workload("ratings-v1-b", "bookinfo", "node-b", "network-b", net.ip(3), json!({})),
            ],
            vec![json!({ "hostname": RATINGS, "name": "ratings", "namespace": "bookinfo",
                         "port": 9080, "target_port": 8080, "endpoints": ["ratings-v1-a", "ratings-v1-b"] })],
            json!({ "network-b": { "east_west_gateway": {
                "address": net.addr(100, 15008).to_string(), "identity": gateway_identity } } }),
        );
        let (dir, certs) = certs(&[
            identity("default", "curl"),
            identity("bookinfo", "ratings-v1-a"),
            identity("bookinfo", "ratings-v1-b"),
            gateway_identity,
        ]);
        echo_app(net.addr(2, 8080)).await;
        echo_app(net.addr(3, 8080)).await;
        let access_log = dir.path().join("eastwest-access.log");
        let params = EastWest {
            mesh: &mesh,
            network: "network-b",
            certs: &certs,
            admin: net.addr(200, 15000),
            access_log: &access_log,
        };
        let yaml = eastwest::render(eastwest::TEMPLATE, &params).unwrap();
        let gateway = Envoy::start(dir.path(), "eastwest", &yaml, net.addr(200, 15000), gateway_log_level).await;
        let client = start_shim(&mesh, "node-a", &certs, test_tuning()).await;
        let server = start_shim(&mesh, "node-b", &certs, test_tuning()).await;
        Self { net, _dir: dir, certs, client, server, gateway, access_log }
    }

    fn outbound(&self) -> SocketAddr {
        self.net.addr(1, 15001)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_hbone_through_the_gateway_keeps_bytes_intact_and_the_inner_baggage_from_the_gateway() {
    let m = TwoNetworks::start("trace").await;
    for size in [1, 1024 * 1024, 3 * 1024 * 1024 + 17, 5] {
        let data = pattern(size);
        assert!(round_trip(m.outbound(), data.clone()).await == data, "{size} bytes differ");
    }

    // The destinations got the inner CONNECT: curl's baggage and x-forwarded-network.
    let inner = [("reporter", "destination"), ("source_workload", "curl"), ("source_cluster", "cluster-network-a")];
    let server = eventually_metric(&m.server, "4 inner tunnels", |t| {
        metric(t, "istio_tcp_connections_closed_total", &inner) == 4.0
    })
    .await;
    // Through the gateway too, each finished tunnel ends cleanly on both shims.
    let clean = |reporter| [("reporter", reporter), ("response_flags", "-")];
    assert_eq!(metric(&server, "istio_tcp_connections_closed_total", &clean("destination")), 4.0, "{server}");
    // The client got the inner 200's baggage: the pod that answered, never the gateway.
    let client = eventually_metric(&m.client, "4 outbound tunnels", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[("reporter", "source")]) == 4.0
    })
    .await;
    assert_eq!(metric(&client, "istio_tcp_connections_closed_total", &clean("source")), 4.0, "{client}");
    let by_pod = |pod| metric(&client, "istio_tcp_connections_opened_total", &[("destination_workload", pod)]);
    assert_eq!(by_pod("ratings-v1-a") + by_pod("ratings-v1-b"), 4.0, "{client}");
    assert_eq!(
        metric(
            &client,
            "istio_tcp_connections_opened_total",
            &[("destination_principal", &identity("bookinfo", "ratings-v1-a"))]
        ) + metric(
            &client,
            "istio_tcp_connections_opened_total",
            &[("destination_principal", &identity("bookinfo", "ratings-v1-b"))]
        ),
        4.0
    );

    // The gateway's own view: the outer CONNECT only. ztunnel sends the client's baggage on
    // the outer CONNECT too, so that appears; nothing of the inner exchange does.
    let access = eventually_lines(&m.access_log, 4).await;
    for line in access.lines() {
        assert!(line.contains(&format!("authority={RATINGS}:9080")), "{line}");
        assert!(line.contains("client=spiffe://cluster.local/ns/default/sa/curl"), "{line}");
        assert!(line.contains("x-forwarded-network=- response_baggage=- code=200"), "{line}");
    }
    // An authority the gateway has no route for is answered 404.
    let (curl, gateway) = (identity("default", "curl"), identity("istio-system", "istio-eastwestgateway"));
    let raw = hbone_client(&m.certs, TRUST_DOMAIN, &curl, m.net.addr(100, 15008), &gateway).await.unwrap();
    assert_eq!(send(&raw, connect_request("unknown.svc.cluster.local:80")).await.status(), 404);

    let trace = m.gateway.log();
    let outer_headers = format!("':authority', '{RATINGS}:9080'\n'baggage', 'k8s.cluster.name=cluster-network-a,");
    assert!(trace.contains(&outer_headers), "the trace log dumps the outer CONNECT's headers");
    for inner_only in ["ratings-v1-a", "ratings-v1-b", "'x-forwarded-network'"] {
        assert!(!access.contains(inner_only), "access log shows {inner_only}");
        assert!(!trace.contains(inner_only), "trace log shows {inner_only}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_spreads_a_thousand_connections_evenly_over_the_pods() {
    let m = TwoNetworks::start("warning").await;
    let outbound = m.outbound();
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..1000usize {
        batch.spawn(async move { round_trip(outbound, format!("ping {i}").into_bytes()).await });
        if batch.len() == 50 {
            assert!(!batch.join_next().await.unwrap().unwrap().is_empty());
        }
    }
    while let Some(echoed) = batch.join_next().await {
        assert!(!echoed.unwrap().is_empty());
    }
    let server = eventually_metric(&m.server, "1000 tunnels", |t| {
        metric(t, "istio_tcp_connections_closed_total", &[("reporter", "destination")]) == 1000.0
    })
    .await;
    let share = |pod| metric(&server, "istio_tcp_connections_opened_total", &[("destination_workload", pod)]);
    let (a, b) = (share("ratings-v1-a"), share("ratings-v1-b"));
    assert_eq!(a + b, 1000.0);
    assert!(a.max(b) / a.min(b) <= 1.2, "uneven spread: {a} vs {b}");
    // The gateway's own count per endpoint agrees.
    let clusters = http_get(m.gateway.admin, "/clusters").await;
    let cx = |ip: std::net::IpAddr| {
        clusters
            .lines()
            .find(|l| l.contains(&format!("::{ip}:15008::cx_total::")))
            .and_then(|l| l.rsplit("::").next()?.parse::<f64>().ok())
            .unwrap_or_default()
    };
    assert_eq!((cx(m.net.ip(2)), cx(m.net.ip(3))), (a, b));
}
