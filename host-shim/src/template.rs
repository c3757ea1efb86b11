//! Fills the `@NAME@` placeholders of the Envoy templates in envoy-configs/.

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
