#!/usr/bin/env python3
"""Writes the Grafana dashboards of this folder (waypoint-*.json): `python3 dashboards/generate.py`.
The JSON is what Grafana imports; this file is where it is edited."""
import json, os
DS = {"type": "prometheus", "uid": "${datasource}"}
R = 'reporter=~"$reporter"'
RI = "$__rate_interval"
TESTBED_EMPTY = "No data in the testbed: "

def var_datasource():
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {"selected": False, "text": "Prometheus", "value": "${DS_PROMETHEUS}"},
            "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": "", "skipUrlSync": False}

def var_reporter():
    opts = [{"selected": True, "text": "waypoint", "value": "waypoint"},
            {"selected": False, "text": "source", "value": "source"},
            {"selected": False, "text": "destination", "value": "destination"}]
    return {"name": "reporter", "label": "Reporter", "type": "custom", "query": "waypoint,source,destination",
            "description": "Who reported: the waypoint (ambient L7), or a sidecar's source/destination side where the mesh also has sidecars.",
            "current": {"selected": True, "text": ["waypoint"], "value": ["waypoint"]},
            "options": opts, "multi": True, "includeAll": False, "hide": 0, "skipUrlSync": False}

def var_query(name, label, query, description):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
            "description": description,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "regex": "", "sort": 1,
            "hide": 0, "options": [], "skipUrlSync": False}

CLUSTER = var_query("cluster", "Cluster", 'label_values(istio_requests_total{reporter=~"$reporter"}, destination_cluster)',
                    "The destination workload's cluster (destination_cluster).")
NAMESPACE = var_query("namespace", "Namespace", 'label_values(istio_requests_total{reporter=~"$reporter", destination_cluster=~"$cluster"}, destination_workload_namespace)',
                      "The destination workload's namespace.")
WORKLOAD = var_query("workload", "Workload", 'label_values(istio_requests_total{reporter=~"$reporter", destination_cluster=~"$cluster", destination_workload_namespace=~"$namespace"}, destination_workload)',
                     "A workload (Deployment name) seen as a destination.")
SERVICE = var_query("service", "Service", 'label_values(istio_requests_total{reporter=~"$reporter", destination_cluster=~"$cluster"}, destination_service)',
                    "The destination service's host name (destination_service).")

def var_union(name, label, src_label, dst_label, filters_src, filters_dst, description):
    def side(filters, lab):
        return f'label_replace(istio_requests_total{{reporter=~"$reporter"{filters}}}, "{name}", "$1", "{lab}", "(.+)")'
    query = f'query_result(count by ({name}) ({side(filters_dst, dst_label)} or {side(filters_src, src_label)}))'
    v = var_query(name, label, query, description)
    v["query"] = {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 3}
    v["regex"] = f'/{name}="([^"]+)"/'
    return v

W_CLUSTER = var_union("cluster", "Cluster", "source_cluster", "destination_cluster", "", "",
                      "Clusters seen on either side of a request (source_cluster or destination_cluster).")
W_NAMESPACE = var_union("namespace", "Namespace", "source_workload_namespace", "destination_workload_namespace",
                        ', source_cluster=~"$cluster"', ', destination_cluster=~"$cluster"',
                        "Namespaces of workloads seen on either side of a request.")
W_WORKLOAD = var_union("workload", "Workload", "source_workload", "destination_workload",
                       ', source_cluster=~"$cluster", source_workload_namespace=~"$namespace"',
                       ', destination_cluster=~"$cluster", destination_workload_namespace=~"$namespace"',
                       "Workloads seen as a client (source_workload) or a server (destination_workload).")

def share(by, sel, bad):
    """Share of `bad` requests per `by` (0 where none failed): bad, or the total times 0."""
    grp = f"sum by ({by}) " if by else "sum "
    total = f'{grp}(rate(istio_requests_total{{{sel}}}[{RI}]))'
    return f'({grp}(rate(istio_requests_total{{{sel}, {bad}}}[{RI}])) or {total} * 0) / {total}'

def share_5xx_or_grpc(by, sel):
    """5xx plus non-5xx gRPC errors, each 0 where absent, over all requests."""
    grp = f"sum by ({by}) " if by else "sum "
    total = f'{grp}(rate(istio_requests_total{{{sel}}}[{RI}]))'
    a = f'({grp}(rate(istio_requests_total{{{sel}, response_code=~"5.."}}[{RI}])) or {total} * 0)'
    b = f'({grp}(rate(istio_requests_total{{{sel}, response_code!~"5..", grpc_response_status!~"|0"}}[{RI}])) or {total} * 0)'
    return f'({a} + {b}) / {total}'

class Board:
    def __init__(self, uid, title, description, variables):
        self.uid, self.title, self.description, self.variables = uid, title, description, variables
        self.panels, self.y, self.x, self.row_h = [], 0, 0, 0
    def row(self, title):
        self._newline()
        self.panels.append({"id": len(self.panels) + 1, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1
    def _newline(self):
        if self.x:
            self.y += self.row_h; self.x = 0; self.row_h = 0
    def panel(self, kind, title, description, targets, unit="short", w=12, h=8, legend=True):
        if self.x + w > 24:
            self._newline()
        pid = len(self.panels) + 1
        tgts = []
        for i, t in enumerate(targets):
            expr, legendfmt = t
            tgt = {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legendfmt, "range": kind == "timeseries",
                   "instant": kind != "timeseries", "editorMode": "code"}
            if kind == "table":
                tgt["format"] = "table"
            tgts.append(tgt)
        p = {"id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
             "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}, "targets": tgts,
             "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}}
        if kind == "timeseries":
            p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False}
            p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": legend, "calcs": ["mean", "max", "lastNotNull"]},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
        elif kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value",
                            "graphMode": "area", "justifyMode": "auto", "textMode": "auto", "orientation": "auto"}
        elif kind == "table":
            p["options"] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
            p["transformations"] = [{"id": "merge", "options": {}},
                                    {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": {}}}]
        self.panels.append(p)
        self.x += w; self.row_h = max(self.row_h, h)
    def json(self):
        return {
            "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "The Prometheus that scrapes the waypoints and ztunnels",
                          "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}],
            "__elements": {},
            "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
                           {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
                           {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
                           {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
                           {"type": "panel", "id": "table", "name": "Table", "version": ""}],
            "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
                                      "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
            "description": self.description, "editable": True, "fiscalYearStartMonth": 0, "graphTooltip": 1,
            "id": None, "links": [{"asDropdown": True, "icon": "external link", "includeVars": True, "keepTime": True,
                                    "tags": ["waypoint"], "title": "Waypoint dashboards", "type": "dashboards"}],
            "panels": self.panels, "refresh": "30s", "schemaVersion": 39, "tags": ["istio", "ambient", "waypoint"],
            "templating": {"list": self.variables}, "time": {"from": "now-30m", "to": "now"},
            "timepicker": {}, "timezone": "browser", "title": self.title, "uid": self.uid, "version": 1, "weekStart": ""}

def q(metric_sel):
    return metric_sel

# ---------------------------------------------------------------- mesh overview
b = Board("waypoint-mesh", "Waypoint / Mesh overview",
          "Every workload pair the waypoints saw (istio_requests_total, reporter=waypoint), ztunnel's L4 traffic and the proxies' builds.",
          [var_datasource(), var_reporter(), CLUSTER, NAMESPACE])
sel = f'{R}, destination_cluster=~"$cluster", destination_workload_namespace=~"$namespace"'
b.row("Traffic")
b.panel("stat", "Requests/s", "All requests the selected reporters counted.",
        [(f'round(sum(rate(istio_requests_total{{{sel}}}[{RI}])), 0.001)', "")], unit="reqps", w=6, h=5)
b.panel("stat", "Success share (non-5xx)", "Requests not answered 5xx over all requests.",
        [(f'sum(rate(istio_requests_total{{{sel}, response_code!~"5.."}}[{RI}])) / sum(rate(istio_requests_total{{{sel}}}[{RI}]))', "")], unit="percentunit", w=6, h=5)
b.panel("stat", "4xx/s", TESTBED_EMPTY + "no app answers 4xx there. Requests answered 4xx.",
        [(f'round(sum(rate(istio_requests_total{{{sel}, response_code=~"4.."}}[{RI}])), 0.001)', "")], unit="reqps", w=6, h=5)
b.panel("stat", "5xx/s", TESTBED_EMPTY + "only while a check makes requests fail (ztunnel-b or gateway outage). Requests answered 5xx.",
        [(f'round(sum(rate(istio_requests_total{{{sel}, response_code=~"5.."}}[{RI}])), 0.001)', "")], unit="reqps", w=6, h=5)
b.panel("timeseries", "Requests/s by destination service", "Request rate per destination service and response code.",
        [(f'sum by (destination_service, response_code) (rate(istio_requests_total{{{sel}}}[{RI}]))', "{{destination_service}} {{response_code}}")], unit="reqps")
b.panel("timeseries", "Request duration p50 / p90 / p99", "Duration quantiles over every request (istio_request_duration_milliseconds).",
        [(f'histogram_quantile({qv}, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{sel}}}[{RI}])))', f"p{int(qv*100)}") for qv in (0.5, 0.9, 0.99)], unit="ms")
b.panel("table", "HTTP/gRPC workloads", "Per source→destination workload pair: requests/s, error share (5xx or non-zero gRPC status, 0 where none failed) and p99 ms, as the traffic picture draws them.",
        [(f'sum by (source_workload, source_cluster, destination_workload, destination_cluster) (rate(istio_requests_total{{{sel}}}[{RI}]))', "requests/s"),
         (share_5xx_or_grpc("source_workload, source_cluster, destination_workload, destination_cluster", sel), "error share"),
         (f'histogram_quantile(0.99, sum by (le, source_workload, source_cluster, destination_workload, destination_cluster) (rate(istio_request_duration_milliseconds_bucket{{{sel}}}[{RI}])))', "p99 ms")],
        w=24, h=8)
b.row("L4 (ztunnel)")
b.panel("timeseries", "TCP bytes/s (ztunnel)", "Bytes ztunnel moved, per destination workload, from istio_tcp_sent_bytes_total / istio_tcp_received_bytes_total (app=\"ztunnel\").",
        [('sum by (destination_workload) (rate(istio_tcp_sent_bytes_total{app="ztunnel", destination_workload_namespace=~"$namespace"}[' + RI + ']))', "sent to {{destination_workload}}"),
         ('sum by (destination_workload) (rate(istio_tcp_received_bytes_total{app="ztunnel", destination_workload_namespace=~"$namespace"}[' + RI + ']))', "received for {{destination_workload}}")], unit="Bps")
b.panel("timeseries", "TCP connections opened/closed per second (ztunnel)", "istio_tcp_connections_opened_total / istio_tcp_connections_closed_total from ztunnel.",
        [('sum by (reporter) (rate(istio_tcp_connections_opened_total{app="ztunnel"}[' + RI + ']))', "opened ({{reporter}})"),
         ('sum by (reporter) (rate(istio_tcp_connections_closed_total{app="ztunnel"}[' + RI + ']))', "closed ({{reporter}})")], unit="cps")
b.row("Proxies")
b.panel("table", "Proxy builds", "istio_build per component and tag: which proxies report.",
        [('sum by (component, tag) (istio_build)', "")], w=24, h=6)
mesh = b

# ---------------------------------------------------------------- service
b = Board("waypoint-service", "Waypoint / Service",
          "One destination service as its waypoint saw it: who calls it, how fast, how often it fails, how much it moves.",
          [var_datasource(), var_reporter(), CLUSTER, SERVICE])
sel = f'{R}, destination_service=~"$service", destination_cluster=~"$cluster"'
b.row("Service: $service")
b.panel("stat", "Requests/s", "Requests to the service.",
        [(f'round(sum(rate(istio_requests_total{{{sel}}}[{RI}])), 0.001)', "")], unit="reqps", w=6, h=5)
b.panel("stat", "Success share (non-5xx)", "Requests to the service not answered 5xx.",
        [(f'sum(rate(istio_requests_total{{{sel}, response_code!~"5.."}}[{RI}])) / sum(rate(istio_requests_total{{{sel}}}[{RI}]))', "")], unit="percentunit", w=6, h=5)
b.panel("stat", "p99 duration", "99th percentile of the request duration.",
        [(f'histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{sel}}}[{RI}])))', "")], unit="ms", w=6, h=5)
b.panel("stat", "Error share (5xx or gRPC non-zero)", "5xx answers plus non-zero grpc_response_status over all requests (0 while nothing fails).",
        [(share_5xx_or_grpc("", sel), "")], unit="percentunit", w=6, h=5)
b.panel("timeseries", "Requests/s by source workload and code", "Incoming requests per calling workload (and its cluster) and response code.",
        [(f'sum by (source_workload, source_cluster, response_code) (rate(istio_requests_total{{{sel}}}[{RI}]))', "{{source_workload}} ({{source_cluster}}) {{response_code}}")], unit="reqps")
b.panel("timeseries", "Requests/s by destination workload", "Which endpoint (workload, cluster) served the service's requests.",
        [(f'sum by (destination_workload, destination_cluster) (rate(istio_requests_total{{{sel}}}[{RI}]))', "{{destination_workload}} ({{destination_cluster}})")], unit="reqps")
b.panel("timeseries", "Request duration p50 / p90 / p99", "Duration quantiles of the service's requests.",
        [(f'histogram_quantile({qv}, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{sel}}}[{RI}])))', f"p{int(qv*100)}") for qv in (0.5, 0.9, 0.99)], unit="ms")
b.panel("timeseries", "Error share by source workload", "5xx or non-zero gRPC share per calling workload (0 while nothing fails).",
        [(share_5xx_or_grpc("source_workload", sel), "{{source_workload}}")], unit="percentunit")
b.panel("timeseries", "Request / response bytes p50 / p99", "Sizes from istio_request_bytes / istio_response_bytes.",
        [(f'histogram_quantile({qv}, sum by (le) (rate(istio_{d}_bytes_bucket{{{sel}}}[{RI}])))', f"{d} p{int(qv*100)}") for d in ("request", "response") for qv in (0.5, 0.99)], unit="decbytes")
b.panel("timeseries", "Request / response bytes/s", "Throughput: the rate of istio_request_bytes_sum / istio_response_bytes_sum.",
        [(f'sum(rate(istio_{d}_bytes_sum{{{sel}}}[{RI}]))', d) for d in ("request", "response")], unit="Bps")
b.panel("timeseries", "gRPC messages/s", TESTBED_EMPTY + "unless the service variable includes grpc-echo and gRPC calls ran in the window. gRPC messages each way (istio_request_messages_total / istio_response_messages_total).",
        [(f'sum by (source_workload) (rate(istio_request_messages_total{{{sel}}}[{RI}]))', "from {{source_workload}}"),
         (f'sum by (source_workload) (rate(istio_response_messages_total{{{sel}}}[{RI}]))', "to {{source_workload}}")], unit="short")
b.panel("timeseries", "gRPC calls by status", TESTBED_EMPTY + "unless the service variable includes grpc-echo and gRPC calls ran in the window. Calls per grpc_response_status.",
        [(f'sum by (grpc_response_status) (rate(istio_requests_total{{{sel}, request_protocol="grpc"}}[{RI}]))', "status {{grpc_response_status}}")], unit="reqps")
service = b

# ---------------------------------------------------------------- workload
b = Board("waypoint-workload", "Waypoint / Workload",
          "One workload: requests it received (inbound, destination_workload) and sent (outbound, source_workload) through waypoints, and its L4 traffic at ztunnel.",
          [var_datasource(), var_reporter(), W_CLUSTER, W_NAMESPACE, W_WORKLOAD])
inb = f'{R}, destination_workload=~"$workload", destination_workload_namespace=~"$namespace", destination_cluster=~"$cluster"'
out = f'{R}, source_workload=~"$workload", source_workload_namespace=~"$namespace", source_cluster=~"$cluster"'
b.row("Inbound to $workload")
b.panel("stat", "Inbound requests/s", "Requests the workload received.",
        [(f'round(sum(rate(istio_requests_total{{{inb}}}[{RI}])), 0.001)', "")], unit="reqps", w=8, h=5)
b.panel("stat", "Inbound success share (non-5xx)", "Inbound requests not answered 5xx.",
        [(f'sum(rate(istio_requests_total{{{inb}, response_code!~"5.."}}[{RI}])) / sum(rate(istio_requests_total{{{inb}}}[{RI}]))', "")], unit="percentunit", w=8, h=5)
b.panel("stat", "Inbound p99", "99th percentile duration of inbound requests.",
        [(f'histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{inb}}}[{RI}])))', "")], unit="ms", w=8, h=5)
b.panel("timeseries", "Inbound requests/s by source workload and code", "Who calls the workload, from which cluster, with which answer.",
        [(f'sum by (source_workload, source_cluster, response_code) (rate(istio_requests_total{{{inb}}}[{RI}]))', "{{source_workload}} ({{source_cluster}}) {{response_code}}")], unit="reqps")
b.panel("timeseries", "Inbound duration p50 / p90 / p99", "Duration quantiles of inbound requests.",
        [(f'histogram_quantile({qv}, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{inb}}}[{RI}])))', f"p{int(qv*100)}") for qv in (0.5, 0.9, 0.99)], unit="ms")
b.panel("timeseries", "Inbound request / response bytes/s", "Rate of istio_request_bytes_sum / istio_response_bytes_sum.",
        [(f'sum(rate(istio_{d}_bytes_sum{{{inb}}}[{RI}]))', d) for d in ("request", "response")], unit="Bps")
b.panel("timeseries", "Inbound gRPC messages/s", TESTBED_EMPTY + "unless gRPC calls to the workload ran in the window. istio_request_messages_total / istio_response_messages_total.",
        [(f'sum(rate(istio_request_messages_total{{{inb}}}[{RI}]))', "request messages"),
         (f'sum(rate(istio_response_messages_total{{{inb}}}[{RI}]))', "response messages")], unit="short")
b.row("Outbound from $workload")
b.panel("timeseries", "Outbound requests/s by destination and code", TESTBED_EMPTY + "when the workload variable names only servers (echo-v1, echo-v2 call no one); choose curl (namespace frontend). Requests the workload sent, per destination workload.",
        [(f'sum by (destination_workload, destination_cluster, response_code) (rate(istio_requests_total{{{out}}}[{RI}]))', "{{destination_workload}} ({{destination_cluster}}) {{response_code}}")], unit="reqps")
b.panel("timeseries", "Outbound duration p50 / p90 / p99", TESTBED_EMPTY + "when the workload variable names only servers; choose curl (namespace frontend). Duration quantiles of outbound requests.",
        [(f'histogram_quantile({qv}, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{out}}}[{RI}])))', f"p{int(qv*100)}") for qv in (0.5, 0.9, 0.99)], unit="ms")
b.panel("timeseries", "Outbound error share by destination", TESTBED_EMPTY + "when the workload variable names only servers; choose curl (namespace frontend). 5xx or non-zero gRPC share per destination workload (0 while nothing fails).",
        [(share_5xx_or_grpc("destination_workload", out), "{{destination_workload}}")], unit="percentunit")
b.panel("timeseries", "Outbound request / response bytes/s", TESTBED_EMPTY + "when the workload variable names only servers; choose curl (namespace frontend). Rate of istio_request_bytes_sum / istio_response_bytes_sum.",
        [(f'sum(rate(istio_{d}_bytes_sum{{{out}}}[{RI}]))', d) for d in ("request", "response")], unit="Bps")
b.row("L4 at ztunnel")
b.panel("timeseries", "TCP bytes/s to $workload (ztunnel)", "istio_tcp_sent_bytes_total / istio_tcp_received_bytes_total (app=\"ztunnel\") with the workload as destination.",
        [('sum by (reporter) (rate(istio_tcp_sent_bytes_total{app="ztunnel", destination_workload=~"$workload"}[' + RI + ']))', "sent ({{reporter}})"),
         ('sum by (reporter) (rate(istio_tcp_received_bytes_total{app="ztunnel", destination_workload=~"$workload"}[' + RI + ']))', "received ({{reporter}})")], unit="Bps")
b.panel("timeseries", "TCP connections/s to $workload (ztunnel)", "istio_tcp_connections_opened_total / istio_tcp_connections_closed_total (app=\"ztunnel\").",
        [('sum by (reporter) (rate(istio_tcp_connections_opened_total{app="ztunnel", destination_workload=~"$workload"}[' + RI + ']))', "opened ({{reporter}})"),
         ('sum by (reporter) (rate(istio_tcp_connections_closed_total{app="ztunnel", destination_workload=~"$workload"}[' + RI + ']))', "closed ({{reporter}})")], unit="cps")
workload = b

# ---------------------------------------------------------------- cross-cluster
b = Board("waypoint-cross-cluster", "Waypoint / Cross-cluster",
          "Traffic between clusters: the waypoint's two-sided labels name both source_cluster and destination_cluster, where one-sided telemetry says unknown.",
          [var_datasource(), var_reporter(), CLUSTER])
sel = f'{R}, destination_cluster=~"$cluster"'
b.row("By cluster pair")
b.panel("timeseries", "Requests/s source_cluster → destination_cluster", "Request rate per cluster pair.",
        [(f'sum by (source_cluster, destination_cluster) (rate(istio_requests_total{{{sel}}}[{RI}]))', "{{source_cluster}} → {{destination_cluster}}")], unit="reqps")
b.panel("timeseries", "Error share by cluster pair", "5xx or non-zero gRPC share per cluster pair (0 while nothing fails).",
        [(share_5xx_or_grpc("source_cluster, destination_cluster", sel), "{{source_cluster}} → {{destination_cluster}}")], unit="percentunit")
b.panel("timeseries", "p99 duration by cluster pair", "99th percentile request duration per cluster pair (crossing networks adds the east-west gateway hop).",
        [(f'histogram_quantile(0.99, sum by (le, source_cluster, destination_cluster) (rate(istio_request_duration_milliseconds_bucket{{{sel}}}[{RI}])))', "{{source_cluster}} → {{destination_cluster}}")], unit="ms")
b.panel("timeseries", "Request + response bytes/s by cluster pair", "Rate of istio_request_bytes_sum + istio_response_bytes_sum per cluster pair.",
        [(f'sum by (source_cluster, destination_cluster) (rate(istio_{d}_bytes_sum{{{sel}}}[{RI}]))', "{{source_cluster}} → {{destination_cluster}} " + d) for d in ("request", "response")], unit="Bps")
b.panel("table", "Workload pairs across clusters", "Requests/s per source and destination workload with their clusters.",
        [(f'sum by (source_workload, source_workload_namespace, source_cluster, destination_workload, destination_workload_namespace, destination_cluster) (rate(istio_requests_total{{{sel}}}[{RI}]))', "requests/s")], w=24, h=8)
b.panel("timeseries", "Requests/s from unknown sources", TESTBED_EMPTY + "every peer there is known; this is what stays empty when both sides' labels arrive. Requests whose source_workload is unknown.",
        [(f'sum by (destination_workload, destination_cluster) (rate(istio_requests_total{{{sel}, source_workload="unknown"}}[{RI}]))', "→ {{destination_workload}} ({{destination_cluster}})")], unit="reqps")
b.panel("timeseries", "ztunnel TCP bytes/s by cluster pair", "istio_tcp_sent_bytes_total (app=\"ztunnel\") per source_cluster → destination_cluster.",
        [(f'sum by (source_cluster, destination_cluster) (rate(istio_tcp_sent_bytes_total{{app="ztunnel", destination_cluster=~"$cluster"}}[{RI}]))', "{{source_cluster}} → {{destination_cluster}}")], unit="Bps")
cross = b

for name, board in [("mesh-overview", mesh), ("service", service), ("workload", workload), ("cross-cluster", cross)]:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"waypoint-{name}.json"), "w") as f:
        json.dump(board.json(), f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(name, len([p for p in board.panels if p["type"] != "row"]), "panels")
