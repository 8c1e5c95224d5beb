//! Reading a `/metrics` answer in tests: every sample line must parse as
//! `name{label="value",...} number`, and a test asks for one sample's value.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format; panics on a line that is neither a comment nor a sample, or
    /// when the OpenMetrics end marker is missing.
    pub fn parse(text: &str) -> Self {
        assert!(
            text.trim_end().ends_with("# EOF"),
            "no `# EOF` at the end:\n{text}"
        );
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).unwrap_or_else(|| panic!("not a sample line: {l:?}")))
            .collect();
        Metrics { samples }
    }

    /// The sample named `name` whose labels include `labels`, if exactly one matches.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{name}{labels:?} is ambiguous: {matching:?}"
        );
        matching.first().map(|s| s.value)
    }

    /// Like [`Metrics::find`], but the sample must be there.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", self.samples))
    }

    /// Whether any sample of the family `name` (or its `_bucket`, `_count`…) is there.
    pub fn has_family(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name.starts_with(name))
    }
}

/// `GET url` as Prometheus asks (OpenMetrics, so the end marker is checked too) and parse it;
/// the answer must be a 200.
pub async fn scrape(url: &str) -> Metrics {
    let response = reqwest::Client::new()
        .get(url)
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), reqwest::StatusCode::OK, "{url}");
    Metrics::parse(&response.text().await.expect("metrics body"))
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            rest = rest.strip_prefix(',').unwrap_or(rest);
            let eq = rest.find("=\"")?;
            let key = &rest[..eq];
            rest = &rest[eq + 2..];
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            rest = &rest[end + 1..];
        }
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels_parse() {
        let m = Metrics::parse("# TYPE a counter\na_total{x=\"1\",y=\"q\\\"z\"} 3\nb 0.5\n# EOF\n");
        assert_eq!(m.value("a_total", &[("x", "1")]), 3.0);
        assert_eq!(m.value("a_total", &[("y", "q\"z")]), 3.0);
        assert_eq!(m.value("b", &[]), 0.5);
        assert_eq!(m.find("c", &[]), None);
    }

    #[test]
    #[should_panic(expected = "not a sample line")]
    fn a_broken_line_is_refused() {
        Metrics::parse("a_total{x=\"1\" 3\n# EOF\n");
    }
}
