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

/// The sum of metric `name` per value of `label` (e.g. requests per `destination_workload`).
pub fn sum_by(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for sample in samples(text, name) {
        *sums.entry(sample.label(label).to_owned()).or_insert(0.0) += sample.value;
    }
    sums
}

/// The sum of every sample of metric `name`.
pub fn total(text: &str, name: &str) -> f64 {
    samples(text, name).iter().fold(0.0, |sum, s| sum + s.value)
}

/// The label names of one exposition line, in the order they are written.
pub fn label_names(line: &str) -> Option<Vec<String>> {
    let (series, _) = line.rsplit_once(' ')?;
    let body = series.split_once('{').map_or(Some(""), |(_, rest)| rest.strip_suffix('}'))?;
    Some(parse_labels(body)?.into_iter().map(|(name, _)| name).collect())
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample { name: series.to_owned(), labels: BTreeMap::new(), value });
    };
    let labels = parse_labels(rest.strip_suffix('}')?)?.into_iter().collect();
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `a="1",b="x\"y"` as ordered pairs.
fn parse_labels(body: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
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
        labels.push((key.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(labels)
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
        assert_eq!(label_names(raw_lines(text, "x")[0]), Some(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(label_names("x 2"), Some(vec![]));
        assert_eq!(sum_by(text, "x", "a").get("1"), Some(&3.0));
        assert_eq!(sum_by(text, "x", "a").get(""), Some(&2.0));
        assert_eq!(total(text, "x"), 5.0);
    }
}
