//! Just enough of the Prometheus text format to read counters and gauges back from `/metrics`.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of an exposition (comments and malformed lines are skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], parse_labels(&line[open + 1..close])?, &line[close + 1..])
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], BTreeMap::new(), &line[space..])
        }
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_string(), value);
    }
}

/// The sum of every sample of `name` whose labels include all of `filter`.
pub fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
        .map(|s| s.value)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// The largest value of `name` among samples matching `filter` (None when there is none).
pub fn max(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
        .map(|s| s.value)
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP provider_requests_total Provider attempts
# TYPE provider_requests_total counter
provider_requests_total{provider="simulated",operation="chat",outcome="success"} 7
provider_requests_total{provider="simulated",operation="chat",outcome="simulated_fault"} 5
provider_requests_total{operation="chat",outcome="success",provider="openai"} 4
provider_circuit_state{provider="simulated",operation="chat"} 2
weird{label="a \"quoted\", comma",other="x"} 1.5 1700000000000
process_open_fds 23
bucket{le="+Inf"} +Inf
broken{label="unterminated} 3
"#;

    #[test]
    fn reads_labels_values_and_sums() {
        let s = parse(TEXT);
        assert_eq!(sum(&s, "provider_requests_total", &[]), 16.0);
        assert_eq!(sum(&s, "provider_requests_total", &[("provider", "simulated")]), 12.0);
        assert_eq!(sum(&s, "provider_requests_total", &[("provider", "simulated"), ("outcome", "success")]), 7.0);
        assert_eq!(max(&s, "provider_circuit_state", &[("operation", "chat")]), Some(2.0));
        assert_eq!(max(&s, "provider_circuit_state", &[("operation", "tts")]), None);
        assert_eq!(sum(&s, "process_open_fds", &[]), 23.0);
        assert_eq!(format!("{}", sum(&s, "absent", &[])), "0");
        let w = s.iter().find(|x| x.name == "weird").unwrap();
        assert_eq!(w.labels["label"], "a \"quoted\", comma");
        assert_eq!(w.labels["other"], "x");
        assert_eq!(w.value, 1.5);
        assert!(s.iter().all(|x| x.name != "broken"), "a malformed line is skipped");
        assert_eq!(sum(&s, "provider_requests_total", &[("operation", "chat"), ("provider", "openai")]), 4.0);
    }
}
