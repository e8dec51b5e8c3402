//! Reading the Grafana dashboards in `dashboards/`: their panels, variables and the PromQL of
//! their targets with Grafana's variables replaced, shared by `tests/it/artefacts.rs` (static
//! checks) and `tests/e2e_prometheus.rs` (queries against a running Prometheus).
#![allow(dead_code)]

use serde_json::Value as Json;

/// Every panel of a dashboard, rows included, with the panels inside rows.
pub fn panels(dashboard: &Json) -> Vec<&Json> {
    fn walk<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for panel in list.as_array().map_or(&[][..], Vec::as_slice) {
            out.push(panel);
            if let Some(children) = panel.get("panels") {
                walk(children, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(list) = dashboard.get("panels") {
        walk(list, &mut out);
    }
    out
}

/// The dashboard's template variables.
pub fn variables(dashboard: &Json) -> &[Json] {
    dashboard
        .pointer("/templating/list")
        .and_then(Json::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Replaces every `$name`, `${name}` and `${name:format}` in `expr` with `value(name)`.
pub fn substitute(expr: &str, value: &dyn Fn(&str) -> String) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' && chars.get(i + 1) == Some(&'{') {
            let end = chars[i..]
                .iter()
                .position(|&c| c == '}')
                .map(|p| i + p)
                .unwrap_or_else(|| panic!("unclosed ${{ in {expr}"));
            let inner: String = chars[i + 2..end].iter().collect();
            out.push_str(&value(inner.split(':').next().unwrap_or_default()));
            i = end + 1;
        } else if chars[i] == '$' {
            let start = i + 1;
            let mut end = start;
            while end < chars.len() && (chars[end].is_ascii_alphanumeric() || chars[end] == '_') {
                end += 1;
            }
            let name: String = chars[start..end].iter().collect();
            assert!(!name.is_empty(), "a lone $ in {expr}");
            out.push_str(&value(&name));
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}
