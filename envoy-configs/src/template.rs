//! Fills the `@NAME@` placeholders of the Envoy templates in envoy-configs/.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the template still holds placeholder {0} after rendering")]
pub struct Leftover(pub String);

/// Replaces every placeholder outside comments (which document them) and
/// checks that none is left.
pub fn fill(template: &str, replacements: &[(&str, String)]) -> Result<String, Leftover> {
    let mut out = String::with_capacity(template.len() * 2);
    for line in template.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut line = line.to_owned();
        for (placeholder, value) in replacements {
            line = line.replace(placeholder, value);
        }
        out.push_str(&line);
    }
    match leftover_placeholder(&out) {
        Some(leftover) => Err(Leftover(leftover)),
        None => Ok(out),
    }
}

/// Removes every block between `# >>> <name>` and `# <<< <name>` comment lines.
pub fn drop_section(template: &str, name: &str) -> String {
    let (open, close) = (format!("# >>> {name}"), format!("# <<< {name}"));
    let mut inside = false;
    let mut out = String::with_capacity(template.len());
    for line in template.split_inclusive('\n') {
        let marker = line.trim();
        if marker == open {
            inside = true;
        } else if marker == close {
            inside = false;
        } else if !inside {
            out.push_str(line);
        }
    }
    out
}

/// Circuit breakers with no limits, as Istio sets them on every cluster. Tunnels
/// are one connection each, so Envoy's default of 1024 connections per cluster
/// refuses clients under ordinary churn.
pub fn unlimited_circuit_breakers() -> serde_json::Value {
    let max = u32::MAX;
    serde_json::json!({ "thresholds": [{
        "max_connections": max, "max_pending_requests": max, "max_requests": max, "max_retries": max,
    }] })
}

/// A JSON string literal, which YAML reads as the same string.
pub fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A `@NAME@` left in the output (upper case, digits and `_`), outside comments.
fn leftover_placeholder(text: &str) -> Option<String> {
    text.lines().filter(|l| !l.trim_start().starts_with('#')).find_map(|line| {
        line.split('@').skip(1).step_by(2).find_map(|candidate| {
            let is_name = !candidate.is_empty()
                && candidate.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            is_name.then(|| format!("@{candidate}@"))
        })
    })
}

/// The waypoint and the east-west gateway face every workload of the mesh, so they are
/// configured as Envoy's edge-proxy guidance says ("Configuring Envoy as an edge
/// proxy"): bounded handshakes, headers and idle time, and a global connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// TLS must be done by then (`transport_socket_connect_timeout`): raw TCP that never
    /// speaks and stalled handshakes hold no credential.
    pub tls_handshake: Duration,
    /// Request headers must have arrived by then (`request_headers_timeout`).
    pub request_headers: Duration,
    /// A connection with no stream is closed after this (`idle_timeout`). ztunnel keeps
    /// idle pooled connections 5 min and simply reconnects, so shorter costs a handshake.
    pub connection_idle: Duration,
    /// A tunnel silent both ways this long is closed (`stream_idle_timeout`). Long, so
    /// idle application connections (database pools) survive as they do through ztunnel.
    pub tunnel_idle: Duration,
    /// Downstream connections of the whole Envoy (overload manager), internal ones included.
    pub max_connections: u64,
}

impl Default for Edge {
    fn default() -> Self {
        Self {
            tls_handshake: Duration::from_secs(10),
            request_headers: Duration::from_secs(10),
            connection_idle: Duration::from_secs(60),
            tunnel_idle: Duration::from_secs(3600),
            // The guidance's example value; tunnels count once on each internal hop.
            max_connections: 50_000,
        }
    }
}

impl Edge {
    /// The placeholders every edge listener template shares.
    pub fn replacements(&self) -> [(&'static str, String); 5] {
        let seconds = |d: Duration| quoted(&format!("{}s", d.as_secs()));
        [
            ("@TLS_HANDSHAKE_TIMEOUT@", seconds(self.tls_handshake)),
            ("@REQUEST_HEADERS_TIMEOUT@", seconds(self.request_headers)),
            ("@CONNECTION_IDLE_TIMEOUT@", seconds(self.connection_idle)),
            ("@TUNNEL_IDLE_TIMEOUT@", seconds(self.tunnel_idle)),
            ("@MAX_CONNECTIONS@", self.max_connections.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_placeholder_is_an_error() {
        assert_eq!(leftover_placeholder("a: @NOPE@\n# @DOC@"), Some("@NOPE@".to_owned()));
        assert_eq!(leftover_placeholder(r#""@type": x"#), None);
        assert_eq!(fill("a: @A@", &[("@A@", quoted("x\"y"))]), Ok(r#"a: "x\"y""#.to_owned()));
        assert_eq!(fill("# @A@ doc\na: @A@\n", &[("@A@", "1".into())]), Ok("# @A@ doc\na: 1\n".to_owned()));
    }

    #[test]
    fn marked_sections_can_be_dropped() {
        let text = "a\n  # >>> x\n  b\n  # <<< x\nc\n";
        assert_eq!(drop_section(text, "x"), "a\nc\n");
        assert_eq!(drop_section(text, "y"), text);
    }
}
