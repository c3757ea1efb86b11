//! Reads Prometheus text exposition: enough for Envoy's and the shims' output.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every sample of metric `name` (exact name, e.g. `istio_requests_total`).
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(parse_line).filter(|s| s.name == name).collect()
}

/// The raw exposition lines of metric `name`.
pub fn raw_lines<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    text.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample { name: series.to_owned(), labels: BTreeMap::new(), value });
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(Sample { name: name.to_owned(), labels, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_with_escapes_and_commas_are_read() {
        let text = "# TYPE x counter\nx{a=\"1\",b=\"q\\\"u,o\",c=\"\"} 3\nx_other 1\nx 2\n";
        let all = samples(text, "x");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].label("b"), "q\"u,o");
        assert_eq!(all[0].label("c"), "");
        assert_eq!(all[0].value, 3.0);
        assert_eq!(raw_lines(text, "x").len(), 2);
    }
}
