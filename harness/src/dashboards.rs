//! The Grafana dashboards in `dashboards/*.json`: load them, take every panel target's
//! PromQL, fill in the template variables and Grafana's built-in intervals, and run each
//! against a Prometheus HTTP API to see which panels would show data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::graph::{self, GraphError};

/// A dashboard file is a few tens of KiB; anything far larger is not one of ours.
const MAX_DASHBOARD_BYTES: u64 = 1 << 20;
/// Panels whose description starts so explain why the testbed cannot give them data.
pub const NO_TESTBED_DATA: &str = "No data in the testbed: ";
/// Grafana's built-in variables, and what they stand for when no value is given.
pub const BUILTINS: [(&str, &str); 4] =
    [("__rate_interval", "1m"), ("__interval", "15s"), ("__range", "1h"), ("datasource", "prometheus")];

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error(transparent)]
    Query(#[from] GraphError),
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub id: u64,
    pub title: String,
    pub description: String,
    pub exprs: Vec<String>,
}

impl Panel {
    /// The description says why the testbed cannot fill this panel.
    pub fn may_be_empty_in_testbed(&self) -> bool {
        self.description.starts_with(NO_TESTBED_DATA)
    }
}

#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub kind: String,
    /// A `label_values(selector, label)` or a custom list; empty for a datasource.
    pub query: String,
}

#[derive(Debug, Clone)]
pub struct Dashboard {
    pub file: PathBuf,
    pub title: String,
    pub json: Value,
    pub variables: Vec<Variable>,
    /// Every panel but rows, nested row panels included.
    pub panels: Vec<Panel>,
}

fn text(value: &Value, pointer: &str) -> String {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_owned()
}

impl Dashboard {
    pub fn load(path: &Path) -> Result<Self, DashboardError> {
        let io = |source| DashboardError::Io { path: path.display().to_string(), source };
        let invalid = |reason: String| DashboardError::Invalid { path: path.display().to_string(), reason };
        if std::fs::metadata(path).map_err(io)?.len() > MAX_DASHBOARD_BYTES {
            return Err(invalid("larger than a dashboard".to_owned()));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let variables = json
            .pointer("/templating/list")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|v| Variable {
                        name: text(v, "/name"),
                        kind: text(v, "/type"),
                        query: v
                            .get("definition")
                            .and_then(Value::as_str)
                            .or_else(|| v.get("query").and_then(Value::as_str))
                            .or_else(|| v.pointer("/query/query").and_then(Value::as_str))
                            .unwrap_or_default()
                            .to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut panels = Vec::new();
        let mut pending: Vec<&Value> =
            json.get("panels").and_then(Value::as_array).map(|p| p.iter().collect()).unwrap_or_default();
        while let Some(panel) = pending.pop() {
            if let Some(nested) = panel.get("panels").and_then(Value::as_array) {
                pending.extend(nested.iter());
            }
            if panel.get("type").and_then(Value::as_str) == Some("row") {
                continue;
            }
            let exprs = panel
                .get("targets")
                .and_then(Value::as_array)
                .map(|targets| targets.iter().map(|t| text(t, "/expr")).collect())
                .unwrap_or_default();
            panels.push(Panel {
                id: panel.get("id").and_then(Value::as_u64).unwrap_or(0),
                title: text(panel, "/title"),
                description: text(panel, "/description"),
                exprs,
            });
        }
        panels.sort_by_key(|p| p.id);
        Ok(Self { file: path.to_owned(), title: text(&json, "/title"), json, variables, panels })
    }

    /// The variables this dashboard defines, with Grafana's built-ins.
    pub fn defined_variables(&self) -> BTreeSet<String> {
        self.variables
            .iter()
            .map(|v| v.name.clone())
            .chain(BUILTINS.iter().map(|(name, _)| (*name).to_owned()))
            .collect()
    }
}

/// `dashboards/` of this repository.
pub fn directory() -> PathBuf {
    crate::topology::workspace_root().join("dashboards")
}

/// Every `*.json` in `dir`, sorted by file name.
pub fn load_all(dir: &Path) -> Result<Vec<Dashboard>, DashboardError> {
    let io = |source| DashboardError::Io { path: dir.display().to_string(), source };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files.iter().map(|f| Dashboard::load(f)).collect()
}

/// The names of the variables `text` refers to: `$name`, `${name}`, `${name:format}`, `[[name]]`.
pub fn variables_used(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    scan(text, |name| {
        names.insert(name.to_owned());
        None
    });
    names
}

/// `text` with every variable replaced by its value (Grafana's built-ins by theirs unless
/// `values` names them); an unknown variable stays as written.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    scan(text, |name| {
        values.get(name).cloned().or_else(|| BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()))
    })
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Walks `text`, calls `replace` with each variable name; returns the text with each
/// variable replaced where `replace` gave a value.
fn scan(text: &str, mut replace: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(['$', '[']) {
        let (before, at) = rest.split_at(start);
        out.push_str(before);
        let (name, length) = if let Some(braced) = at.strip_prefix("${") {
            match braced.find('}') {
                Some(end) => (braced.get(..end).unwrap_or_default().split(':').next().unwrap_or_default(), end + 3),
                None => ("", 1),
            }
        } else if let Some(bracketed) = at.strip_prefix("[[") {
            match bracketed.find("]]") {
                Some(end) => (bracketed.get(..end).unwrap_or_default(), end + 4),
                None => ("", 1),
            }
        } else if let Some(bare) = at.strip_prefix('$') {
            let end = bare.find(|c: char| !is_name_char(c)).unwrap_or(bare.len());
            (bare.get(..end).unwrap_or_default(), end + 1)
        } else {
            ("", 1)
        };
        let written = at.get(..length).unwrap_or(at);
        // `$1` is a regex group (label_replace), not a variable.
        let starts_well = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        if !starts_well || !name.chars().all(is_name_char) {
            out.push_str(at.get(..1).unwrap_or_default());
            rest = at.get(1..).unwrap_or_default();
            continue;
        }
        match replace(name) {
            Some(value) => out.push_str(&value),
            None => out.push_str(written),
        }
        rest = at.get(length..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// A variable's query as an instant query: `query_result(q)` is `q`, and
/// `label_values(selector, label)` becomes `count by (label) (selector)`.
pub fn variable_query(definition: &str) -> Option<String> {
    let definition = definition.trim();
    if let Some(inner) = definition.strip_prefix("query_result(").and_then(|q| q.strip_suffix(')')) {
        return Some(inner.to_owned());
    }
    label_values_query(definition)
}

/// `label_values(selector, label)` as an instant query that returns one series per value.
pub fn label_values_query(definition: &str) -> Option<String> {
    let inner = definition.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some(format!("count by ({}) ({})", label.trim(), selector.trim()))
}

#[derive(Debug, Clone)]
pub struct QueryResult {
    pub expr: String,
    pub series: usize,
}

#[derive(Debug, Clone)]
pub struct PanelResult {
    pub dashboard: String,
    pub panel: String,
    pub may_be_empty_in_testbed: bool,
    pub queries: Vec<QueryResult>,
}

impl PanelResult {
    pub fn has_data(&self) -> bool {
        self.queries.iter().any(|q| q.series > 0)
    }
}

#[derive(Debug, Clone)]
pub struct VariableResult {
    pub dashboard: String,
    pub variable: String,
    pub expr: String,
    pub values: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub panels: Vec<PanelResult>,
    pub variables: Vec<VariableResult>,
}

impl Report {
    /// Panels without data whose description does not say why.
    pub fn unexplained_empty(&self) -> Vec<&PanelResult> {
        self.panels.iter().filter(|p| !p.has_data() && !p.may_be_empty_in_testbed).collect()
    }

    /// One line per panel: dashboard, title, series per query.
    pub fn summary(&self) -> String {
        let mut lines: Vec<String> = self
            .panels
            .iter()
            .map(|p| {
                let counts: Vec<String> = p.queries.iter().map(|q| q.series.to_string()).collect();
                let verdict = match (p.has_data(), p.may_be_empty_in_testbed) {
                    (true, _) => "data",
                    (false, true) => "empty (explained)",
                    (false, false) => "EMPTY",
                };
                format!("{:<28} {:<55} series [{}] {verdict}", p.dashboard, p.panel, counts.join(", "))
            })
            .collect();
        lines.extend(
            self.variables
                .iter()
                .map(|v| format!("{:<28} variable {:<46} values {:?}", v.dashboard, v.variable, v.values)),
        );
        lines.join("\n")
    }
}

/// The label sets of one query's series, as a Prometheus instant query returns them.
pub type Answer = Vec<BTreeMap<String, String>>;

/// Every query the dashboards make with `variables` filled in, each once: panel targets
/// and the variables' own queries.
pub fn queries(dashboards: &[Dashboard], variables: &BTreeMap<String, String>) -> Vec<String> {
    let mut all = BTreeSet::new();
    for dashboard in dashboards {
        all.extend(
            dashboard.variables.iter().filter_map(|v| variable_query(&v.query)).map(|q| substitute(&q, variables)),
        );
        all.extend(dashboard.panels.iter().flat_map(|p| p.exprs.iter()).map(|e| substitute(e, variables)));
    }
    all.into_iter().collect()
}

/// The report from the answers to [`queries`] (a query without an answer has no series).
pub fn report(
    dashboards: &[Dashboard],
    variables: &BTreeMap<String, String>,
    answers: &BTreeMap<String, Answer>,
) -> Report {
    let mut report = Report::default();
    let answer = |expr: &str| answers.get(expr).map(Vec::as_slice).unwrap_or_default();
    for dashboard in dashboards {
        for variable in &dashboard.variables {
            let Some(expr) = variable_query(&variable.query) else { continue };
            let expr = substitute(&expr, variables);
            // Each series of `count by (label) (...)` carries just the one label.
            let values = answer(&expr)
                .iter()
                .filter_map(|labels| labels.iter().find(|(name, _)| *name != "__name__").map(|(_, v)| v.clone()))
                .collect();
            report.variables.push(VariableResult {
                dashboard: dashboard.title.clone(),
                variable: variable.name.clone(),
                expr,
                values,
            });
        }
        for panel in &dashboard.panels {
            let queries = panel
                .exprs
                .iter()
                .map(|expr| {
                    let expr = substitute(expr, variables);
                    let series = answer(&expr).len();
                    QueryResult { expr, series }
                })
                .collect();
            report.panels.push(PanelResult {
                dashboard: dashboard.title.clone(),
                panel: panel.title.clone(),
                may_be_empty_in_testbed: panel.may_be_empty_in_testbed(),
                queries,
            });
        }
    }
    report
}

/// Runs every panel query and every variable query of every dashboard in `dashboards/`
/// against the Prometheus HTTP API at `prometheus_url` (`http://ip:port`), with
/// `variables` (name → value; regex alternatives such as `a|b` work, every dashboard
/// selector matches with `=~`; `__rate_interval` etc. override the built-ins).
pub async fn check_against(
    prometheus_url: &str,
    variables: &BTreeMap<String, String>,
) -> Result<Report, DashboardError> {
    let dashboards = load_all(&directory())?;
    let mut answers = BTreeMap::new();
    for expr in queries(&dashboards, variables) {
        let series = graph::query(prometheus_url, &expr).await?.into_iter().map(|s| s.labels).collect();
        answers.insert(expr, series);
    }
    Ok(report(&dashboards, variables, &answers))
}

/// The same with the caller's way of asking Prometheus (e.g. `docker exec ... wget`):
/// `run` answers one instant query with its series' label sets.
pub fn check_with<E: std::fmt::Display>(
    variables: &BTreeMap<String, String>,
    mut run: impl FnMut(&str) -> Result<Answer, E>,
) -> Result<Report, DashboardError> {
    let dashboards = load_all(&directory())?;
    let mut answers = BTreeMap::new();
    for expr in queries(&dashboards, variables) {
        let series = run(&expr)
            .map_err(|e| DashboardError::Query(GraphError::Query { query: expr.clone(), reason: e.to_string() }))?;
        answers.insert(expr, series);
    }
    Ok(report(&dashboards, variables, &answers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dashboards() -> Vec<Dashboard> {
        load_all(&directory()).unwrap()
    }

    #[test]
    fn the_four_dashboards_parse_and_import_unchanged() {
        let all = dashboards();
        let titles: Vec<&str> = all.iter().map(|d| d.title.as_str()).collect();
        assert_eq!(
            titles,
            ["Waypoint / Cross-cluster", "Waypoint / Mesh overview", "Waypoint / Service", "Waypoint / Workload"]
        );
        for d in &all {
            let name = d.file.display();
            assert!(d.json["schemaVersion"].as_u64().unwrap() >= 39, "{name}: schemaVersion");
            assert_eq!(d.json["__inputs"][0]["name"], "DS_PROMETHEUS", "{name}: __inputs");
            assert_eq!(d.json["__inputs"][0]["pluginId"], "prometheus", "{name}");
            assert!(d.json["id"].is_null(), "{name}: an exported dashboard has no id");
            assert!(d.json["uid"].as_str().is_some_and(|u| u.starts_with("waypoint-")), "{name}: uid");
            let datasource = d.variables.iter().find(|v| v.name == "datasource").unwrap();
            assert_eq!(datasource.kind, "datasource");
            for name_of in ["reporter", "cluster"] {
                assert!(d.variables.iter().any(|v| v.name == name_of), "{name}: variable {name_of}");
            }
            // Every panel and every target reads from the datasource variable.
            let panels = d.json["panels"].as_array().unwrap();
            for panel in panels.iter().filter(|p| p["type"] != "row") {
                assert_eq!(panel["datasource"]["uid"], "${datasource}", "{name}: {}", panel["title"]);
                for target in panel["targets"].as_array().unwrap() {
                    assert_eq!(target["datasource"]["uid"], "${datasource}", "{name}: {}", panel["title"]);
                }
            }
        }
        let variables: BTreeSet<String> = all.iter().flat_map(|d| d.variables.iter().map(|v| v.name.clone())).collect();
        for expected in ["namespace", "workload", "service", "cluster", "reporter"] {
            assert!(variables.contains(expected), "some dashboard has a {expected} variable");
        }
    }

    #[test]
    fn every_panel_has_a_query_and_every_variable_used_is_defined() {
        for d in dashboards() {
            let defined = d.defined_variables();
            assert!(!d.panels.is_empty(), "{}", d.title);
            for panel in &d.panels {
                assert!(!panel.exprs.is_empty(), "{}: {} has no query", d.title, panel.title);
                assert!(!panel.description.is_empty(), "{}: {} has no description", d.title, panel.title);
                for expr in &panel.exprs {
                    assert!(!expr.trim().is_empty(), "{}: {} has an empty query", d.title, panel.title);
                    for used in variables_used(expr).iter().chain(&variables_used(&panel.title)) {
                        assert!(defined.contains(used), "{}: {} uses ${used}, not defined", d.title, panel.title);
                    }
                }
            }
            for variable in &d.variables {
                for used in variables_used(&variable.query) {
                    assert!(defined.contains(&used), "{}: variable {} uses ${used}", d.title, variable.name);
                }
                if variable.kind == "query" {
                    assert!(variable_query(&variable.query).is_some(), "{}: {}", d.title, variable.name);
                }
            }
        }
    }

    #[test]
    fn l7_queries_select_the_reporter_and_l4_queries_ztunnel() {
        for d in dashboards() {
            for panel in &d.panels {
                for expr in &panel.exprs {
                    let l7 =
                        ["istio_requests_total{", "istio_request_", "istio_response_"].iter().any(|m| expr.contains(m));
                    if l7 {
                        assert!(expr.contains("reporter=~\"$reporter\""), "{}: {}: {expr}", d.title, panel.title);
                    }
                    if expr.contains("istio_tcp_") {
                        assert!(expr.contains("app=\"ztunnel\""), "{}: {}: {expr}", d.title, panel.title);
                    }
                }
            }
        }
    }

    #[test]
    fn the_report_says_which_panels_had_series() {
        let all = dashboards();
        let values = BTreeMap::from([("reporter".to_owned(), "waypoint".to_owned())]);
        let asked = queries(&all, &values);
        assert!(asked.iter().all(|q| !q.contains("$reporter") && !q.contains("$__rate_interval")), "{asked:?}");
        let one_series = vec![BTreeMap::from([("destination_cluster".to_owned(), "cluster2".to_owned())])];
        let answered = "round(sum(rate(istio_requests_total{reporter=~\"waypoint\", destination_cluster=~\"$cluster\", \
                        destination_workload_namespace=~\"$namespace\"}[1m])), 0.001)";
        assert!(asked.iter().any(|q| q == answered), "the mesh overview's Requests/s query is asked");
        let answers = BTreeMap::from([(answered.to_owned(), one_series)]);
        let result = report(&all, &values, &answers);
        let with_data: Vec<(&str, &str)> =
            result.panels.iter().filter(|p| p.has_data()).map(|p| (p.dashboard.as_str(), p.panel.as_str())).collect();
        assert_eq!(with_data, [("Waypoint / Mesh overview", "Requests/s")]);
        let unexplained = result.unexplained_empty();
        assert!(unexplained.iter().all(|p| !p.may_be_empty_in_testbed));
        assert_eq!(
            unexplained.len() + 1 + result.panels.iter().filter(|p| p.may_be_empty_in_testbed).count(),
            result.panels.len()
        );
        assert!(result.panels.iter().any(|p| p.panel == "5xx/s" && p.may_be_empty_in_testbed));
    }

    #[test]
    fn variables_are_found_and_substituted() {
        let expr = "sum(rate(x{a=~\"$namespace\",b=\"${workload}\",c=\"${cluster:regex}\",d=\"[[service]]\"}[$__rate_interval])) $5";
        let used: Vec<String> = variables_used(expr).into_iter().collect();
        assert_eq!(used, ["__rate_interval", "cluster", "namespace", "service", "workload"]);
        let values = BTreeMap::from([
            ("namespace".to_owned(), "backend".to_owned()),
            ("workload".to_owned(), "echo-v1|echo-v2".to_owned()),
            ("cluster".to_owned(), "cluster2".to_owned()),
            ("service".to_owned(), "echo.backend.svc.cluster.local".to_owned()),
        ]);
        assert_eq!(
            substitute(expr, &values),
            "sum(rate(x{a=~\"backend\",b=\"echo-v1|echo-v2\",c=\"cluster2\",d=\"echo.backend.svc.cluster.local\"}[1m])) $5"
        );
        let faster = BTreeMap::from([("__rate_interval".to_owned(), "30s".to_owned())]);
        assert_eq!(substitute("rate(x[$__rate_interval]) $unknown", &faster), "rate(x[30s]) $unknown");
        assert_eq!(
            label_values_query("label_values(istio_requests_total{reporter=~\"$reporter\"}, destination_cluster)")
                .as_deref(),
            Some("count by (destination_cluster) (istio_requests_total{reporter=~\"$reporter\"})")
        );
    }
}
