//! What `deploy/` ships, checked against a running node: every query of the Grafana dashboard
//! names metrics the node exports, and the metrics table of the README documents every
//! metric family the node exports (and nothing it does not).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use serde_json::{Value, json};

/// A node that has done one of everything a labelled metric counts: HTTP requests, a committed
/// event, a realtime connection and a webhook delivery.
async fn busy_node() -> (TestNode, Receiver) {
    let node = start(
        "[webhooks]\nallow_http = true\nallow_private_networks = true\npoll_interval = \"20ms\"",
    )
    .await;
    let rx = Receiver::start().await;
    let r = node
        .post(
            "/events/api/v1/subscriptions",
            &node.tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let sub = format!(
        "/events/api/v1/subscriptions/{}",
        r.body["id"].as_str().expect("id")
    );
    eventually(
        Duration::from_secs(20),
        "the subscription validated",
        || async { node.get(&sub, &node.tokens.owner_a).await.body["validated"] == true },
    )
    .await;
    let id = node.create_dialog(&dialog_body()).await;
    eventually(Duration::from_secs(20), "a delivered event", || async {
        rx.requests()
            .iter()
            .any(|r| r.json()["resourceinstance"] == id.as_str())
    })
    .await;
    (node, rx)
}

/// Metric names (`dialog_events_…`) in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("dialog_events_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The sample names of a Prometheus text exposition.
fn samples(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The metric families (`# TYPE name kind`) of a Prometheus text exposition.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[actix_web::test]
async fn every_grafana_query_names_metrics_the_node_exports() {
    let (node, _rx) = busy_node().await;
    let exported = samples(&node.metrics().await);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/dialog-events.json"
        ))
        .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 10, "the dashboard has its queries: {all:?}");
    let mut used = BTreeSet::new();
    for e in &all {
        let names = metric_names(e);
        assert!(!names.is_empty(), "{e} queries a dialog-events metric");
        for n in names {
            assert!(
                exported.contains(&n),
                "{e}: {n} is not in /metrics (exported: {exported:?})"
            );
            used.insert(n);
        }
    }
    // Every metric family is on the dashboard.
    let text = node.metrics().await;
    for family in families(&text) {
        assert!(
            used.iter().any(|n| n.starts_with(&family)),
            "{family} has no panel"
        );
    }
}

#[actix_web::test]
async fn the_metrics_table_documents_exactly_what_the_node_exports() {
    let (node, _rx) = busy_node().await;
    let exported = families(&node.metrics().await);
    assert!(exported.len() >= 10, "{exported:?}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `dialog_events_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("dialog_events_{n}"))
        .collect();
    assert_eq!(documented, exported, "the metrics table and /metrics");
}
