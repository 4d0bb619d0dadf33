//! Just enough PromQL and Prometheus text format for a dashboard test: the metric names a query selects, and the
//! series names a `/metrics` scrape exposes.
//!
//! A metric name in a query is an identifier that is not a PromQL keyword, aggregation or function and is not
//! followed by `(`. Label matchers (`{...}`), ranges (`[...]`), strings, numbers, Grafana variables (`$x`, `${x}`)
//! and the label lists of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right` are skipped. Test
//! support only.

use std::collections::BTreeSet;

/// Words that are never metric names: keywords, operators, aggregations and functions of PromQL.
const RESERVED: &[&str] = &[
    // Keywords and operators.
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
    "start",
    "end", // Aggregations.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio", // Functions.
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sort_by_label",
    "sort_by_label_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
    "mad_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "cos",
    "cosh",
    "sin",
    "sinh",
    "tan",
    "tanh",
    "deg",
    "rad",
    "pi",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the bracket that closes the one at `open` (`chars[open]` is `(`, `{` or `[`), skipping
/// strings; the end of the text if it is never closed.
fn skip_group(chars: &[char], open: usize) -> usize {
    let (o, c) = match chars[open] {
        '(' => ('(', ')'),
        '{' => ('{', '}'),
        _ => ('[', ']'),
    };
    let mut depth = 0;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i) - 1,
            x if x == o => depth += 1,
            x if x == c => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// The index just past the string that starts at `at`.
fn skip_string(chars: &[char], at: usize) -> usize {
    let quote = chars[at];
    let mut i = at + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

fn next_non_space(chars: &[char], mut i: usize) -> Option<(usize, char)> {
    while i < chars.len() {
        if !chars[i].is_whitespace() {
            return Some((i, chars[i]));
        }
        i += 1;
    }
    None
}

/// The metric names `query` selects, in order of first appearance.
pub fn metric_names(query: &str) -> Vec<String> {
    let chars: Vec<char> = query.chars().collect();
    let mut out: Vec<String> = vec![];
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' || c == '[' {
            i = skip_group(&chars, i);
        } else if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            // A Grafana variable: $name, ${name} or ${name:format}.
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_group(&chars, i);
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            // A number or a duration (1e-3, 0x1f, 5m30s): letters glued to it belong to it.
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = next_non_space(&chars, i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if let Some((p, '(')) = next {
                    i = skip_group(&chars, p);
                }
            } else if lower == "offset" {
                // `offset 5m`, `offset -1h`: the duration is not a name.
                if let Some((p, _)) = next {
                    i = p;
                    while i < chars.len() && (chars[i] == '-' || is_ident(chars[i])) {
                        i += 1;
                    }
                }
            } else if RESERVED.contains(&lower.as_str()) || matches!(next, Some((_, '('))) {
                // A function, aggregation or keyword.
            } else if !out.contains(&word) {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The metric names in a Grafana query variable: `label_values(SELECTOR, LABEL)` names those in SELECTOR (LABEL is a
/// label), `label_values(LABEL)` none, `query_result(QUERY)` those in QUERY, `metrics(REGEX)` none.
pub fn variable_metric_names(query: &str) -> Vec<String> {
    let q = query.trim();
    if let Some(inner) = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
        return match inner.rfind(',') {
            Some(comma) => metric_names(&inner[..comma]),
            None => vec![],
        };
    }
    if let Some(inner) = q.strip_prefix("query_result(").and_then(|r| r.strip_suffix(')')) {
        return metric_names(inner);
    }
    if q.starts_with("metrics(") || q.starts_with("label_names(") {
        return vec![];
    }
    metric_names(q)
}

/// What a Prometheus or OpenMetrics text scrape exposes: the names of the series it holds samples of, and the names
/// its `# TYPE` lines declare (a counter `c` declares `c_total` and `c_created`; a histogram `h` declares
/// `h_bucket`, `h_sum`, `h_count` and `h_created`; a summary `s` declares `s`, `s_sum`, `s_count`; an info `i`
/// declares `i_info`; a gauge or an untyped `g` declares `g`).
#[derive(Debug, Default)]
pub struct Exposition {
    pub sampled: BTreeSet<String>,
    pub declared: BTreeSet<String>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total", "_created"],
                    "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                    "summary" => &["", "_sum", "_count", "_created"],
                    "info" => &["_info"],
                    _ => &[""],
                };
                // The Prometheus text format names a counter with its `_total` in the TYPE line.
                let base = if kind == "counter" { name.strip_suffix("_total").unwrap_or(name) } else { name };
                e.declared.extend(suffixes.iter().map(|s| format!("{base}{s}")));
            } else if !line.starts_with('#') {
                let end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
                e.sampled.insert(line[..end].to_string());
            }
        }
        e
    }

    /// True when `name` is declared by a TYPE line and has at least one sample.
    pub fn has(&self, name: &str) -> bool {
        self.declared.contains(name) && self.sampled.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_selectors_functions_aggregations_and_binary_expressions() {
        assert_eq!(metric_names("up"), ["up"]);
        assert_eq!(
            metric_names(
                r#"histogram_quantile(0.95, sum by (le, phase) (rate(h_bucket{job=~"$job", phase!="x"}[$__rate_interval])))"#
            ),
            ["h_bucket"]
        );
        assert_eq!(
            metric_names("rate(a_sum[5m]) / ignoring(x) group_left(y) rate(a_count[5m]) > bool 0.5 unless b"),
            ["a_sum", "a_count", "b"]
        );
        assert_eq!(metric_names("sum without (instance) (c_total offset 1h) * 1e3"), ["c_total"]);
        assert_eq!(metric_names(r#"label_replace(g, "dst", "$1", "src", "(.*)") or vector(0)"#), ["g"]);
        assert_eq!(metric_names("max by(instance)(x) and on() y"), ["x", "y"]);
        assert_eq!(metric_names("${DS:raw} + $v + ns:rule:rate5m"), ["ns:rule:rate5m"]);
        assert_eq!(metric_names("rate(x[5m:30s]) # sum(y)\n + z"), ["x", "z"]);
    }

    #[test]
    fn grafana_variables_name_only_their_selector() {
        assert_eq!(variable_metric_names("label_values(m{a=\"b\"}, instance)"), ["m"]);
        assert_eq!(variable_metric_names("label_values(job)"), Vec::<String>::new());
        assert_eq!(variable_metric_names("query_result(topk(3, q))"), ["q"]);
    }

    #[test]
    fn an_exposition_declares_series_by_type_and_lists_sampled_series() {
        let text = "# TYPE c counter\nc_total 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_sum 0\nh_count 0\n\
                    # TYPE g gauge\n# TYPE t_total counter\n# EOF\n";
        let e = Exposition::parse(text);
        assert!(e.has("c_total") && e.has("h_bucket") && e.has("h_sum") && e.has("h_count"));
        assert!(!e.has("c") && !e.has("h") && !e.has("c_bucket"));
        assert!(e.declared.contains("g") && !e.has("g"), "declared but never sampled");
        assert!(e.declared.contains("t_total"));
    }
}
