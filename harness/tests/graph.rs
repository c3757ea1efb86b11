//! The traffic picture (issue 12): built from literal Prometheus text, rendered by Graphviz
//! `dot`, and read back from the SVG: which nodes, boxes, edges and labels it shows, where,
//! and in which colour. Then the same from the real loopback mesh's waypoint, in each engine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::for_both_engines;
use harness::graph::TrafficGraph;
use harness::topology::{Engine, Topology};
use harness::{Options, traffic};

/// One `<g class="...">` of Graphviz's SVG: its title, its text lines, its colours and the
/// box around its points.
#[derive(Debug, Clone, Default)]
struct Group {
    class: String,
    title: String,
    texts: Vec<(f64, f64, String)>,
    strokes: Vec<String>,
    text_fills: Vec<String>,
    dashed: bool,
    /// x min, y min, x max, y max of every `points="..."` in the group.
    bounds: Option<(f64, f64, f64, f64)>,
}

fn unescape(text: &str) -> String {
    text.replace("&#45;", "-")
        .replace("&gt;", ">")
        .replace("&lt;", "<")
        .replace("&quot;", "\"")
        .replace("&#160;", " ")
        .replace("&amp;", "&")
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_owned())
}

/// Reads the SVG's elements in order and groups them under their `<g class=...>`.
fn parse_svg(svg: &str) -> Vec<Group> {
    assert!(svg.contains("<svg"), "not an SVG: {}", &svg[..svg.len().min(200)]);
    let mut groups = Vec::new();
    let mut current: Option<Group> = None;
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        rest = &rest[open..];
        let close = rest.find('>').expect("every tag closes");
        let tag = &rest[..=close];
        let after = &rest[close + 1..];
        if tag.starts_with("<g ") {
            if let Some(done) = current.take() {
                groups.push(done);
            }
            current = Some(Group { class: attribute(tag, "class").unwrap_or_default(), ..Group::default() });
        } else if let Some(group) = current.as_mut() {
            let content = || unescape(&after[..after.find('<').unwrap_or(0)]);
            if tag.starts_with("<title") {
                group.title = content();
            } else if tag.starts_with("<text") {
                let x: f64 = attribute(tag, "x").and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                let y: f64 = attribute(tag, "y").and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                group.texts.push((x, y, content()));
                if let Some(fill) = attribute(tag, "fill") {
                    group.text_fills.push(fill);
                }
            } else if tag.starts_with("<path") || tag.starts_with("<polygon") || tag.starts_with("<ellipse") {
                if let Some(stroke) = attribute(tag, "stroke") {
                    group.strokes.push(stroke);
                }
                group.dashed |= attribute(tag, "stroke-dasharray").is_some();
                // `points="x,y x,y"` of polygons, `d="Mx,yCx,y ..."` of paths (dot writes
                // absolute commands only): every coordinate pair.
                let coordinates = attribute(tag, "points").or_else(|| attribute(tag, "d")).unwrap_or_default();
                let numbers: Vec<f64> = coordinates
                    .split(|c: char| c.is_ascii_alphabetic() || c == ',' || c.is_whitespace())
                    .filter(|n| !n.is_empty())
                    .map(|n| n.parse().expect("a coordinate"))
                    .collect();
                for point in numbers.chunks_exact(2) {
                    let (x, y) = (point[0], point[1]);
                    let b = group.bounds.get_or_insert((x, y, x, y));
                    *b = (b.0.min(x), b.1.min(y), b.2.max(x), b.3.max(y));
                }
            }
        }
        rest = after;
    }
    if let Some(done) = current {
        groups.push(done);
    }
    groups
}

struct Picture {
    groups: Vec<Group>,
}

impl Picture {
    fn read(svg_path: &std::path::Path) -> Self {
        let svg = std::fs::read_to_string(svg_path).expect("the SVG");
        Self { groups: parse_svg(&svg) }
    }

    fn of_class(&self, class: &str) -> Vec<&Group> {
        self.groups.iter().filter(|g| g.class == class).collect()
    }

    fn node(&self, title: &str) -> &Group {
        self.of_class("node").into_iter().find(|g| g.title == title).unwrap_or_else(|| {
            panic!("no node {title:?}; nodes: {:?}", self.of_class("node").iter().map(|g| &g.title).collect::<Vec<_>>())
        })
    }

    fn edge(&self, title: &str) -> &Group {
        self.of_class("edge").into_iter().find(|g| g.title == title).unwrap_or_else(|| {
            panic!("no edge {title:?}; edges: {:?}", self.of_class("edge").iter().map(|g| &g.title).collect::<Vec<_>>())
        })
    }

    /// The cluster box whose label is `label`.
    fn cluster(&self, label: &str) -> &Group {
        self.of_class("cluster").into_iter().find(|g| g.texts.iter().any(|t| t.2 == label)).unwrap_or_else(|| {
            panic!(
                "no cluster box {label:?}; boxes: {:?}",
                self.of_class("cluster").iter().map(|g| &g.texts).collect::<Vec<_>>()
            )
        })
    }

    /// Whether the node's first text line (its centre) lies inside the cluster's box.
    fn inside(&self, node: &str, cluster: &str) -> bool {
        let (x, y, _) = self.node(node).texts[0].clone();
        let (x0, y0, x1, y1) = self.cluster(cluster).bounds.expect("a cluster box has points");
        (x0..=x1).contains(&x) && (y0..=y1).contains(&y)
    }
}

fn lines(group: &Group) -> Vec<&str> {
    group.texts.iter().map(|t| t.2.as_str()).collect()
}

/// What a waypoint exports: the 5xx of curl → echo-v1 and the gRPC UNAVAILABLE (14) of
/// productpage-v1 → ratings-v1 are failures; a client without baggage is `unknown`.
const EXPOSITION: &str = r#"# TYPE istio_requests_total counter
istio_requests_total{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v1",destination_workload_namespace="backend",destination_cluster="cluster2",destination_service_name="echo",request_protocol="http",response_code="200",grpc_response_status="",response_flags="-"} 40
istio_requests_total{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v1",destination_workload_namespace="backend",destination_cluster="cluster2",destination_service_name="echo",request_protocol="http",response_code="503",grpc_response_status="",response_flags="UF"} 10
istio_requests_total{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v2",destination_workload_namespace="backend",destination_cluster="cluster2",destination_service_name="echo",request_protocol="http",response_code="200",grpc_response_status="",response_flags="-"} 30
istio_requests_total{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v2",destination_workload_namespace="backend",destination_cluster="cluster2",destination_service_name="echo",request_protocol="http",response_code="404",grpc_response_status="",response_flags="-"} 10
istio_requests_total{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="ratings-v1",destination_workload_namespace="backend",destination_cluster="cluster1",destination_service_name="ratings",request_protocol="http",response_code="200",grpc_response_status="",response_flags="-"} 20
istio_requests_total{reporter="waypoint",source_workload="productpage-v1",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="ratings-v1",destination_workload_namespace="backend",destination_cluster="cluster1",destination_service_name="grpc-ratings",request_protocol="grpc",response_code="200",grpc_response_status="0",response_flags="-"} 15
istio_requests_total{reporter="waypoint",source_workload="productpage-v1",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="ratings-v1",destination_workload_namespace="backend",destination_cluster="cluster1",destination_service_name="grpc-ratings",request_protocol="grpc",response_code="200",grpc_response_status="14",response_flags="-"} 5
istio_requests_total{reporter="waypoint",source_workload="unknown",source_workload_namespace="unknown",source_cluster="unknown",destination_workload="echo-v2",destination_workload_namespace="backend",destination_cluster="cluster2",destination_service_name="echo",request_protocol="http",response_code="200",grpc_response_status="",response_flags="-"} 5
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v1",destination_workload_namespace="backend",destination_cluster="cluster2",response_code="200",le="5"} 10
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v1",destination_workload_namespace="backend",destination_cluster="cluster2",response_code="200",le="10"} 35
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v1",destination_workload_namespace="backend",destination_cluster="cluster2",response_code="200",le="25"} 40
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v1",destination_workload_namespace="backend",destination_cluster="cluster2",response_code="200",le="+Inf"} 40
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v1",destination_workload_namespace="backend",destination_cluster="cluster2",response_code="503",le="5"} 10
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v1",destination_workload_namespace="backend",destination_cluster="cluster2",response_code="503",le="10"} 10
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v1",destination_workload_namespace="backend",destination_cluster="cluster2",response_code="503",le="25"} 10
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v1",destination_workload_namespace="backend",destination_cluster="cluster2",response_code="503",le="+Inf"} 10
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v2",destination_workload_namespace="backend",destination_cluster="cluster2",response_code="200",le="10"} 40
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="echo-v2",destination_workload_namespace="backend",destination_cluster="cluster2",response_code="200",le="+Inf"} 40
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="ratings-v1",destination_workload_namespace="backend",destination_cluster="cluster1",response_code="200",le="1"} 0
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="ratings-v1",destination_workload_namespace="backend",destination_cluster="cluster1",response_code="200",le="2"} 20
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="ratings-v1",destination_workload_namespace="backend",destination_cluster="cluster1",response_code="200",le="+Inf"} 20
istio_request_duration_milliseconds_count{reporter="waypoint",source_workload="curl",source_workload_namespace="frontend",source_cluster="cluster1",destination_workload="ratings-v1",destination_workload_namespace="backend",destination_cluster="cluster1",response_code="200"} 20
"#;

#[test]
fn the_picture_shows_clusters_workloads_and_labelled_edges() {
    let graph = TrafficGraph::from_exposition(EXPOSITION, Duration::from_secs(10))
        .with_networks([("cluster1", "network-a"), ("cluster2", "network-b")]);
    let dir = std::env::temp_dir().join(format!("graph-test-{}", std::process::id()));
    let (svg, png) = graph.render(&dir, "traffic").expect("dot renders the picture");
    let png_bytes = std::fs::read(&png).expect("the PNG");
    assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    let picture = Picture::read(&svg);

    // The two cluster boxes, with their networks, and who sits in which.
    picture.cluster("cluster1 (network-a)");
    picture.cluster("cluster2 (network-b)");
    assert_eq!(picture.of_class("cluster").len(), 2, "unknown sits in no box");
    for (node, cluster) in [
        ("curl", "cluster1 (network-a)"),
        ("productpage-v1", "cluster1 (network-a)"),
        ("ratings-v1", "cluster1 (network-a)"),
        ("echo-v1", "cluster2 (network-b)"),
        ("echo-v2", "cluster2 (network-b)"),
    ] {
        assert!(picture.inside(node, cluster), "{node} is drawn inside {cluster}");
    }
    for (other, cluster) in [("curl", "cluster2 (network-b)"), ("echo-v1", "cluster1 (network-a)")] {
        assert!(!picture.inside(other, cluster), "{other} is not drawn inside {cluster}");
    }
    assert_eq!(lines(picture.node("curl")), ["curl", "frontend"]);
    assert_eq!(lines(picture.node("echo-v1")), ["echo-v1", "backend"]);
    let unknown = picture.node("unknown");
    assert_eq!(lines(unknown), ["unknown"]);
    assert!(unknown.dashed, "an unknown peer is drawn dashed");
    assert!(unknown.strokes.iter().all(|s| s == "grey"), "and grey: {:?}", unknown.strokes);
    assert_eq!(picture.of_class("node").len(), 6);

    // One edge per pair: rate over the 10 s, error share, p99 (Prometheus' interpolation).
    let expected: BTreeMap<&str, [&str; 3]> = BTreeMap::from([
        ("curl->echo-v1", ["5.00 req/s", "20.0% errors", "p99 23.5 ms"]),
        ("curl->echo-v2", ["4.00 req/s", "0.0% errors", "p99 9.9 ms"]),
        ("curl->ratings-v1", ["2.00 req/s", "0.0% errors", "p99 2.0 ms"]),
        ("productpage-v1->ratings-v1", ["2.00 req/s", "25.0% errors", "p99 n/a"]),
        ("unknown->echo-v2", ["0.50 req/s", "0.0% errors", "p99 n/a"]),
    ]);
    let titles: Vec<&str> = picture.of_class("edge").iter().map(|g| g.title.as_str()).collect();
    assert_eq!(titles.len(), expected.len(), "one edge per pair: {titles:?}");
    for (title, label) in &expected {
        let edge = picture.edge(title);
        assert_eq!(lines(edge), label, "label of {title}");
    }
    // Failures are red, line and text; the rest are not.
    for failing in ["curl->echo-v1", "productpage-v1->ratings-v1"] {
        let edge = picture.edge(failing);
        assert!(!edge.strokes.is_empty() && edge.strokes.iter().all(|s| s == "red"), "{failing}: {:?}", edge.strokes);
        assert!(edge.text_fills.iter().all(|s| s == "red"), "{failing} text: {:?}", edge.text_fills);
    }
    for fine in ["curl->echo-v2", "curl->ratings-v1", "unknown->echo-v2"] {
        let edge = picture.edge(fine);
        assert!(edge.strokes.iter().all(|s| s != "red"), "{fine} is not red: {:?}", edge.strokes);
    }
    let _ = std::fs::remove_dir_all(dir);
}

for_both_engines!(the_picture_of_the_local_mesh_has_the_demo_edges);
async fn the_picture_of_the_local_mesh_has_the_demo_edges(engine: Engine) {
    let mut topology: Topology = common::start(Options::with_engine(engine)).await;
    let started = std::time::Instant::now();
    // Each keep-alive client is one tunnel to one endpoint: repeat until curl reached both
    // echo pods (rounds of 2 x 10 to echo, 5 from the sidecar client, 10 to ratings).
    let mut rounds = 0;
    let curl_reached_every_echo = |t: &Topology| {
        t.echo
            .iter()
            .all(|e| e.seen().iter().any(|s| s.baggage.as_deref().is_some_and(|b| b.starts_with("user=client-"))))
    };
    while rounds < 10 && (rounds == 0 || !curl_reached_every_echo(&topology)) {
        let outcome = traffic::run_demo_load(&topology, 2, 10, 5).await.expect("traffic");
        assert_eq!((outcome.ok, outcome.failed), (35, 0));
        rounds += 1;
    }
    let ran = started.elapsed();
    let sent = rounds * 35;
    common::metrics_after(&topology, sent).await;
    // Histograms reach /stats/prometheus at the next stats flush (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = topology.waypoint_prometheus().await.expect("waypoint /stats/prometheus");

    let graph =
        TrafficGraph::from_exposition(&text, ran).with_networks([("cluster1", "network-a"), ("cluster2", "network-b")]);
    let (svg, _png) = graph.render(&topology.dir, "traffic").expect("dot renders the picture");
    let picture = Picture::read(&svg);
    for (node, cluster) in [
        ("curl", "cluster1 (network-a)"),
        ("productpage-v1", "cluster1 (network-a)"),
        ("ratings-v1", "cluster1 (network-a)"),
        ("echo-v1", "cluster2 (network-b)"),
        ("echo-v2", "cluster2 (network-b)"),
    ] {
        assert!(picture.inside(node, cluster), "{node} is drawn inside {cluster}");
    }
    for title in ["curl->echo-v1", "curl->echo-v2", "curl->ratings-v1"] {
        let label = lines(picture.edge(title));
        assert!(label[0].ends_with(" req/s") && label[0] != "0.00 req/s", "{title}: {label:?}");
        assert_eq!(label[1], "0.0% errors", "{title}");
        assert!(label[2].starts_with("p99 ") && label[2].ends_with(" ms"), "{title} has a p99: {label:?}");
    }
    let sidecar: Vec<&str> = picture
        .of_class("edge")
        .iter()
        .map(|g| g.title.as_str())
        .filter(|t| *t == "productpage-v1->echo-v1" || *t == "productpage-v1->echo-v2")
        .collect();
    assert!(!sidecar.is_empty(), "the sidecar client has an edge to echo");
    assert!(picture.of_class("node").iter().all(|n| n.title != "unknown"), "every peer of the demo is known");
    for title in ["curl->echo-v1", "curl->echo-v2", "curl->ratings-v1"] {
        assert!(picture.edge(title).strokes.iter().all(|s| s != "red"), "{title} does not fail");
    }

    // ztunnel-b down: curl's requests to echo get 503 from a destination nobody answered
    // for, so the picture has a red edge to an unknown workload.
    topology.stop_ztunnel_b();
    let plan = topology.plan;
    let failed = traffic::client(plan.outbound(plan.curl()), 5, vec![]).await;
    assert_eq!((failed.ok, failed.failed), (0, 5));
    common::metrics_after(&topology, sent + 5).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = topology.waypoint_prometheus().await.expect("waypoint /stats/prometheus");
    let graph = TrafficGraph::from_exposition(&text, started.elapsed())
        .with_networks([("cluster1", "network-a"), ("cluster2", "network-b")]);
    let (svg, _png) = graph.render(&topology.dir, "traffic-outage").expect("dot renders the picture");
    let picture = Picture::read(&svg);
    let unknown = picture.node("unknown");
    assert!(unknown.dashed, "the unknown destination is dashed");
    let outage = picture.edge("curl->unknown");
    assert!(outage.strokes.iter().all(|s| s == "red"), "the failing edge is red: {:?}", outage.strokes);
    assert_eq!(lines(outage)[1], "100.0% errors");
    assert!(picture.edge("curl->echo-v1").strokes.iter().all(|s| s != "red"), "earlier successes stay green");
}
