//! The mesh's traffic as a picture, the way Kiali's graph shows it: clusters (and their
//! networks) as boxes, workloads as nodes, one edge per source→destination workload pair
//! labelled with requests/s, error share and p99, failing edges red, `unknown` peers dashed
//! grey. Built from the waypoint's `istio_requests_total` and
//! `istio_request_duration_milliseconds` (its `/stats/prometheus` text, or PromQL against a
//! Prometheus), written as Graphviz DOT and rendered by Debian's `dot`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::prom::{self, Sample};

const REQUESTS: &str = "istio_requests_total";
const DURATION_BUCKETS: &str = "istio_request_duration_milliseconds_bucket";
const UNKNOWN: &str = "unknown";
/// Bounds what a hostile Prometheus can make us hold.
const MAX_ANSWER_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("running `{command}`: {reason} (Debian: apt-get install -y graphviz)")]
    Dot { command: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("Prometheus URL {0:?}: only http://<ip>:<port> is supported")]
    Url(String),
    #[error("Prometheus query {query:?}: {reason}")]
    Query { query: String, reason: String },
}

/// One workload as the metrics name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

impl Workload {
    pub fn is_unknown(&self) -> bool {
        self.name.is_empty() || self.name == UNKNOWN
    }
}

/// What one source→destination pair did over the picture's window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeStats {
    pub requests_per_second: f64,
    /// 5xx answers and non-zero gRPC statuses over all requests, 0..=1.
    pub error_share: f64,
    /// `None` when the pair has no duration histogram.
    pub p99_ms: Option<f64>,
}

impl EdgeStats {
    pub fn failing(&self) -> bool {
        self.error_share > 0.0
    }
}

#[derive(Debug, Clone, Default)]
pub struct TrafficGraph {
    pub title: String,
    /// cluster → network, for the box labels (the metrics carry no network label).
    pub networks: BTreeMap<String, String>,
    pub edges: BTreeMap<(Workload, Workload), EdgeStats>,
}

fn endpoint(sample: &Sample, side: &str) -> Workload {
    let label = |name: &str| {
        let value = sample.label(&format!("{side}_{name}"));
        if value.is_empty() { UNKNOWN.to_owned() } else { value.to_owned() }
    };
    Workload { cluster: label("cluster"), namespace: label("workload_namespace"), name: label("workload") }
}

fn pair(sample: &Sample) -> (Workload, Workload) {
    (endpoint(sample, "source"), endpoint(sample, "destination"))
}

/// A 5xx answer, or a gRPC status other than OK (an empty status: not gRPC).
pub fn is_error(response_code: &str, grpc_status: &str) -> bool {
    let server_error = response_code.len() == 3 && response_code.starts_with('5');
    let grpc_error = !grpc_status.is_empty() && grpc_status != "0";
    server_error || grpc_error
}

/// Prometheus' `histogram_quantile` on cumulative `(le, count)` buckets.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut sorted: Vec<(f64, f64)> = buckets.iter().copied().filter(|(le, _)| !le.is_nan()).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = sorted.last().map(|(_, count)| *count)?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &sorted {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let width = count - lower.1;
            let fraction = if width > 0.0 { (rank - lower.1) / width } else { 1.0 };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

fn parse_le(value: &str) -> f64 {
    if value == "+Inf" { f64::INFINITY } else { value.parse().unwrap_or(f64::NAN) }
}

impl TrafficGraph {
    /// From one `/stats/prometheus` text: totals since the waypoint started, divided by
    /// `window` (how long the traffic ran) to give requests/s.
    pub fn from_exposition(text: &str, window: Duration) -> Self {
        let seconds = window.as_secs_f64().max(0.001);
        let waypoint_only = |s: &Sample| {
            let reporter = s.label("reporter");
            reporter.is_empty() || reporter == "waypoint"
        };
        let mut totals: BTreeMap<(Workload, Workload), (f64, f64)> = BTreeMap::new();
        for sample in prom::samples(text, REQUESTS).into_iter().filter(waypoint_only) {
            let entry = totals.entry(pair(&sample)).or_default();
            entry.0 += sample.value;
            if is_error(sample.label("response_code"), sample.label("grpc_response_status")) {
                entry.1 += sample.value;
            }
        }
        let mut buckets: BTreeMap<(Workload, Workload), BTreeMap<String, f64>> = BTreeMap::new();
        for sample in prom::samples(text, DURATION_BUCKETS).into_iter().filter(waypoint_only) {
            *buckets.entry(pair(&sample)).or_default().entry(sample.label("le").to_owned()).or_default() +=
                sample.value;
        }
        let edges = totals
            .into_iter()
            .filter(|(_, (requests, _))| *requests > 0.0)
            .map(|(key, (requests, errors))| {
                let p99_ms = buckets.get(&key).and_then(|b| {
                    let cumulative: Vec<(f64, f64)> = b.iter().map(|(le, count)| (parse_le(le), *count)).collect();
                    quantile(0.99, &cumulative)
                });
                let stats =
                    EdgeStats { requests_per_second: requests / seconds, error_share: errors / requests, p99_ms };
                (key, stats)
            })
            .collect();
        Self {
            title: format!(
                "waypoint traffic: requests/s = totals from /stats/prometheus over the {:.1} s the traffic ran",
                seconds
            ),
            networks: BTreeMap::new(),
            edges,
        }
    }

    /// The same picture from a Prometheus HTTP API (`http://<ip>:<port>`), with rates over
    /// `window` (e.g. 1 minute): `sum by (...) (rate(...))` and `histogram_quantile`.
    pub async fn from_prometheus(base_url: &str, window: Duration) -> Result<Self, GraphError> {
        let [all, server_errors, grpc_errors, p99] = promql(window);
        let answers = [
            query(base_url, &all).await?,
            query(base_url, &server_errors).await?,
            query(base_url, &grpc_errors).await?,
            query(base_url, &p99).await?,
        ];
        Ok(Self::from_answers(&format!("PromQL rate(...[{}s]) from {base_url}", window.as_secs().max(1)), answers))
    }

    /// The same with the caller's way of asking Prometheus (e.g. `docker exec ... wget`):
    /// `run` answers one instant query with its series.
    pub fn from_prometheus_with<E: std::fmt::Display>(
        window: Duration,
        mut run: impl FnMut(&str) -> Result<Vec<Sample>, E>,
    ) -> Result<Self, GraphError> {
        let queries = promql(window);
        let mut answers: [Vec<Sample>; 4] = Default::default();
        for (answer, promql) in answers.iter_mut().zip(&queries) {
            *answer = run(promql).map_err(|e| GraphError::Query { query: promql.clone(), reason: e.to_string() })?;
        }
        Ok(Self::from_answers(&format!("PromQL rate(...[{}s])", window.as_secs().max(1)), answers))
    }

    /// From the answers to [`promql`]'s four queries, in its order.
    fn from_answers(source: &str, [all, server_errors, grpc_errors, p99]: [Vec<Sample>; 4]) -> Self {
        let mut edges: BTreeMap<(Workload, Workload), EdgeStats> = BTreeMap::new();
        for sample in all.iter().filter(|s| s.value > 0.0) {
            edges.entry(pair(sample)).or_default().requests_per_second = sample.value;
        }
        let mut error_rates: BTreeMap<(Workload, Workload), f64> = BTreeMap::new();
        for sample in server_errors.iter().chain(&grpc_errors).filter(|s| s.value.is_finite()) {
            *error_rates.entry(pair(sample)).or_default() += sample.value;
        }
        for (key, rate) in error_rates {
            if let Some(edge) = edges.get_mut(&key) {
                edge.error_share = (rate / edge.requests_per_second).min(1.0);
            }
        }
        for sample in &p99 {
            if let Some(edge) = edges.get_mut(&pair(sample)) {
                edge.p99_ms = sample.value.is_finite().then_some(sample.value);
            }
        }
        Self { title: format!("waypoint traffic: requests/s = {source}"), networks: BTreeMap::new(), edges }
    }

    pub fn with_networks<'a>(mut self, networks: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.networks.extend(networks.into_iter().map(|(c, n)| (c.to_owned(), n.to_owned())));
        self
    }

    /// The cluster → network map of a mesh file (`workloads[].cluster`, `.network`), e.g.
    /// the run directory's `mesh.json` or `testbed/mesh.json`.
    pub fn with_mesh_file(self, mesh: &serde_json::Value) -> Self {
        let pairs: Vec<(String, String)> = mesh
            .get("workloads")
            .and_then(serde_json::Value::as_array)
            .map(|all| {
                all.iter()
                    .filter_map(|w| {
                        let text = |key: &str| w.get(key).and_then(serde_json::Value::as_str).map(str::to_owned);
                        Some((text("cluster")?, text("network")?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.with_networks(pairs.iter().map(|(c, n)| (c.as_str(), n.as_str())))
    }

    /// Every workload of the picture, once.
    pub fn workloads(&self) -> Vec<Workload> {
        let mut all: Vec<Workload> = self.edges.keys().flat_map(|(s, d)| [s.clone(), d.clone()]).collect();
        all.sort();
        all.dedup();
        all
    }

    /// The Graphviz DOT text. A node's id is its workload name (so an SVG edge's title is
    /// `curl->echo-v1`), qualified by namespace and cluster only when two share a name;
    /// every `unknown` peer is one node outside any cluster.
    pub fn to_dot(&self) -> String {
        let workloads = self.workloads();
        let mut name_counts: BTreeMap<&str, usize> = BTreeMap::new();
        for w in workloads.iter().filter(|w| !w.is_unknown()) {
            *name_counts.entry(w.name.as_str()).or_default() += 1;
        }
        let id = |w: &Workload| -> String {
            if w.is_unknown() {
                UNKNOWN.to_owned()
            } else if name_counts.get(w.name.as_str()).copied().unwrap_or(0) > 1 {
                format!("{}.{}.{}", w.name, w.namespace, w.cluster)
            } else {
                w.name.clone()
            }
        };
        let mut dot = String::new();
        let _ = writeln!(dot, "digraph mesh {{");
        let _ = writeln!(
            dot,
            "  graph [label={}, labelloc=t, rankdir=LR, fontname=Helvetica, nodesep=0.6, ranksep=1.2];",
            quote(&self.title)
        );
        let _ =
            writeln!(dot, "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#e8f0fe\", fontname=Helvetica];");
        let _ = writeln!(dot, "  edge [fontname=Helvetica, fontsize=10, decorate=true];");
        let mut by_cluster: BTreeMap<&str, Vec<&Workload>> = BTreeMap::new();
        for w in workloads.iter().filter(|w| !w.is_unknown()) {
            by_cluster.entry(w.cluster.as_str()).or_default().push(w);
        }
        for (index, (cluster, members)) in by_cluster.iter().enumerate() {
            let label = match self.networks.get(*cluster) {
                Some(network) => format!("{cluster} ({network})"),
                None => (*cluster).to_owned(),
            };
            let _ = writeln!(dot, "  subgraph cluster_{index} {{");
            let _ = writeln!(dot, "    label={}; style=rounded; color=\"#5f6368\";", quote(&label));
            for w in members {
                let label = format!("{}\n{}", w.name, w.namespace);
                let _ = writeln!(dot, "    {} [label={}];", quote(&id(w)), quote(&label));
            }
            let _ = writeln!(dot, "  }}");
        }
        if workloads.iter().any(Workload::is_unknown) {
            let _ = writeln!(
                dot,
                "  {} [label=\"unknown\", style=\"rounded,dashed\", color=grey, fontcolor=grey, fillcolor=white];",
                quote(UNKNOWN)
            );
        }
        for ((source, destination), stats) in &self.edges {
            let p99 = stats.p99_ms.map_or_else(|| "p99 n/a".to_owned(), |ms| format!("p99 {ms:.1} ms"));
            let label =
                format!("{:.2} req/s\n{:.1}% errors\n{p99}", stats.requests_per_second, stats.error_share * 100.0);
            let colour = if stats.failing() { "red" } else { "#188038" };
            let _ = writeln!(
                dot,
                "  {} -> {} [label={}, color={}, fontcolor={}];",
                quote(&id(source)),
                quote(&id(destination)),
                quote(&label),
                quote(colour),
                quote(colour)
            );
        }
        let _ = writeln!(dot, "}}");
        dot
    }

    /// Writes `<stem>.dot`, `<stem>.svg` and `<stem>.png` into `dir`; returns (svg, png).
    pub fn render(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), GraphError> {
        std::fs::create_dir_all(dir).map_err(|source| GraphError::Io { path: dir.display().to_string(), source })?;
        let dot_path = dir.join(format!("{stem}.dot"));
        std::fs::write(&dot_path, self.to_dot())
            .map_err(|source| GraphError::Io { path: dot_path.display().to_string(), source })?;
        let svg = dir.join(format!("{stem}.svg"));
        let png = dir.join(format!("{stem}.png"));
        run_dot(&dot_path, "svg", &svg)?;
        run_dot(&dot_path, "png", &png)?;
        Ok((svg, png))
    }
}

/// The picture's four instant queries over `window`: all requests, 5xx, gRPC errors
/// that were not 5xx (separate, so one pair's two kinds add up), and p99.
pub fn promql(window: Duration) -> [String; 4] {
    let range = format!("{}s", window.as_secs().max(1));
    let by = "source_workload, source_workload_namespace, source_cluster, \
              destination_workload, destination_workload_namespace, destination_cluster";
    let rate = |selector: &str| format!("sum by ({by}) (rate(istio_requests_total{{{selector}}}[{range}]))");
    [
        rate("reporter=\"waypoint\""),
        rate("reporter=\"waypoint\",response_code=~\"5..\""),
        rate("reporter=\"waypoint\",response_code!~\"5..\",grpc_response_status!~\"|0\""),
        format!(
            "histogram_quantile(0.99, sum by (le, {by}) \
             (rate(istio_request_duration_milliseconds_bucket{{reporter=\"waypoint\"}}[{range}])))"
        ),
    ]
}

fn run_dot(input: &Path, format: &str, output: &Path) -> Result<(), GraphError> {
    let command = format!("dot -T{format} {} -o {}", input.display(), output.display());
    let status = std::process::Command::new("dot")
        .arg(format!("-T{format}"))
        .arg(input)
        .arg("-o")
        .arg(output)
        .status()
        .map_err(|e| GraphError::Dot { command: command.clone(), reason: e.to_string() })?;
    if status.success() { Ok(()) } else { Err(GraphError::Dot { command, reason: status.to_string() }) }
}

/// A DOT double-quoted string.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            c if c.is_control() => {}
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

pub(crate) fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn prometheus_address(base_url: &str) -> Result<SocketAddr, GraphError> {
    let rest = base_url.strip_prefix("http://").ok_or_else(|| GraphError::Url(base_url.to_owned()))?;
    rest.trim_end_matches('/').parse().map_err(|_| GraphError::Url(base_url.to_owned()))
}

/// An instant query through Prometheus' HTTP API (`/api/v1/query`): every vector sample
/// as a [`Sample`] (name from `__name__` when present).
pub async fn query(base_url: &str, promql: &str) -> Result<Vec<Sample>, GraphError> {
    let fail = |reason: String| GraphError::Query { query: promql.to_owned(), reason };
    let address = prometheus_address(base_url)?;
    let path = format!("/api/v1/query?query={}", url_encode(promql));
    let mut connection = crate::http::Connection::open(address).await.map_err(|e| fail(e.to_string()))?;
    let reply = tokio::time::timeout(Duration::from_secs(30), connection.get(&address.to_string(), &path, &[]))
        .await
        .map_err(|_| fail("no answer within 30 s".to_owned()))?
        .map_err(|e| fail(e.to_string()))?;
    if reply.body.len() > MAX_ANSWER_BYTES {
        return Err(fail(format!("answer of {} bytes is over the bound", reply.body.len())));
    }
    let answer = reply.json();
    if answer.get("status").and_then(serde_json::Value::as_str) != Some("success") {
        return Err(fail(format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body))));
    }
    let result = answer.pointer("/data/result").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
    Ok(result
        .iter()
        .map(|series| {
            let labels: BTreeMap<String, String> = series
                .get("metric")
                .and_then(serde_json::Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned())).collect())
                .unwrap_or_default();
            let value = series
                .pointer("/value/1")
                .and_then(serde_json::Value::as_str)
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            Sample { name: labels.get("__name__").cloned().unwrap_or_default(), labels, value }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_prometheus() {
        // 100 observations: 50 under 10, 90 under 25, all under 50.
        let buckets = [(10.0, 50.0), (25.0, 90.0), (50.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &buckets), Some(10.0));
        assert_eq!(quantile(0.99, &buckets), Some(47.5));
        assert_eq!(quantile(0.99, &[(f64::INFINITY, 0.0)]), None);
        // Everything beyond the last finite bound: that bound, as Prometheus answers.
        assert_eq!(quantile(0.99, &[(5.0, 0.0), (f64::INFINITY, 3.0)]), Some(5.0));
    }

    fn series(source: &str, destination: &str, value: f64) -> Sample {
        let labels = [
            ("source_workload", source),
            ("source_workload_namespace", "frontend"),
            ("source_cluster", "cluster1"),
            ("destination_workload", destination),
            ("destination_workload_namespace", "backend"),
            ("destination_cluster", "cluster2"),
        ];
        Sample {
            name: String::new(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            value,
        }
    }

    #[test]
    fn promql_answers_make_edges_and_both_kinds_of_error_add_up() {
        let queries = promql(Duration::from_secs(60));
        assert!(queries.iter().all(|q| q.contains("[60s]") && q.contains("reporter=\"waypoint\"")), "{queries:?}");
        let mut asked = Vec::new();
        let graph = TrafficGraph::from_prometheus_with(Duration::from_secs(60), |q: &str| {
            asked.push(q.to_owned());
            Ok::<_, String>(match asked.len() {
                1 => vec![series("curl", "echo-v1", 4.0), series("curl", "echo-v2", 2.0), series("curl", "gone", 0.0)],
                2 => vec![series("curl", "echo-v1", 0.5)],
                3 => vec![series("curl", "echo-v1", 0.5)],
                _ => vec![series("curl", "echo-v1", 12.5), series("curl", "echo-v2", f64::NAN)],
            })
        })
        .unwrap();
        assert_eq!(asked, queries);
        let edge = |d: &str| graph.edges.iter().find(|((_, dst), _)| dst.name == d).map(|(_, e)| e.clone());
        assert_eq!(
            edge("echo-v1"),
            Some(EdgeStats { requests_per_second: 4.0, error_share: 0.25, p99_ms: Some(12.5) })
        );
        assert_eq!(edge("echo-v2"), Some(EdgeStats { requests_per_second: 2.0, error_share: 0.0, p99_ms: None }));
        assert_eq!(edge("gone"), None, "a pair with no requests in the window is not drawn");
        assert!(graph.title.contains("rate(...[60s])"), "{}", graph.title);
    }

    #[test]
    fn errors_are_5xx_and_non_zero_grpc() {
        assert!(is_error("503", ""));
        assert!(is_error("200", "14"));
        assert!(!is_error("200", "0"));
        assert!(!is_error("404", ""));
        assert!(!is_error("200", ""));
    }
}
