//! Operations (SPEC 8): health endpoints, Prometheus metrics with exact values, idle dialog actors
//! stopping and restarting on demand, and independent dialogs progressing concurrently.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use futures::future::join_all;
use serde_json::{Value, json};

const DIALOGS: &str = "/api/v1/serviceowner/dialogs";
const CREATED: &str = "dialogporten.dialog.created.v1";
const UPDATED: &str = "dialogporten.dialog.updated.v1";
const INFORMATION: &str = "dialogporten.dialog.activity.information.v1";
const ACTORS: &str = "dialog_events_dialog_actors";
const REQUESTS: &str = "dialog_events_http_requests_total";
const EVENTS: &str = "dialog_events_events_total";

/// One sample line of the Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{k="v",...} value` lines (escapes `\\`, `\"`, `\n` in label values), skipping
/// comments; panics on a line that is not a well-formed sample.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("sample line without value: {line:?}"));
        let name = line[..name_end].to_owned();
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after_brace) = rest.strip_prefix('{') {
            rest = after_brace;
            loop {
                rest = rest.trim_start_matches(',');
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = rest
                    .find('=')
                    .unwrap_or_else(|| panic!("label without '=': {line:?}"));
                let key = rest[..eq].to_owned();
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| panic!("unquoted label value: {line:?}"));
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => panic!("dangling escape: {line:?}"),
                        },
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value: {line:?}"),
                    }
                };
                labels.insert(key, value);
                rest = &rest[end + 1..];
            }
        }
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("sample without a numeric value: {line:?}"));
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The value of the one sample named `name` carrying all of `labels` (None when there is none).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?} matches several samples: {found:?}"
    );
    found.first().map(|s| s.value)
}

async fn actors(node: &TestNode) -> Option<f64> {
    value(&parse_exposition(&node.metrics().await), ACTORS, &[])
}

#[actix_web::test]
async fn liveness_and_readiness_answer_200_without_a_token() {
    let node = start("").await;
    let live = node.send("GET", "/health/live", None, &[], None).await;
    assert_eq!(live.status.as_u16(), 200, "live: {}", live.body);
    let ready = node.send("GET", "/health/ready", None, &[], None).await;
    assert_eq!(ready.status.as_u16(), 200, "ready: {}", ready.body);
    assert_eq!(ready.body["status"], "ready", "ready: {}", ready.body);
    assert!(
        ready
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "readiness is JSON"
    );
}

#[actix_web::test]
async fn metrics_count_requests_by_route_pattern_events_by_type_and_live_dialog_actors() {
    let node = start("").await;

    let first = node.send("GET", "/metrics", None, &[], None).await;
    assert_eq!(first.status.as_u16(), 200);
    let content_type = first.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text exposition, got content-type {content_type:?}"
    );
    let before = parse_exposition(&String::from_utf8(first.raw).expect("utf8"));
    assert_eq!(value(&before, ACTORS, &[]), Some(0.0), "no actors yet");
    assert_eq!(value(&before, EVENTS, &[("type", CREATED)]), None);

    let ids = [
        node.create_dialog(&dialog_body()).await,
        node.create_dialog(&dialog_body()).await,
        node.create_dialog(&dialog_body()).await,
    ];
    let anonymous = node
        .send(
            "POST",
            DIALOGS,
            None,
            &[("Content-Type", "application/json")],
            Some(dialog_body().to_string().into_bytes()),
        )
        .await;
    assert_eq!(anonymous.status.as_u16(), 401);
    let activity = node
        .post(
            &format!("{DIALOGS}/{}/activities", ids[0]),
            &node.tokens.owner_a,
            &json!({"type": "Information"}),
        )
        .await;
    assert_eq!(activity.status.as_u16(), 201, "{}", activity.body);
    for _ in 0..2 {
        let read = node
            .get(&format!("{DIALOGS}/{}", ids[1]), &node.tokens.owner_a)
            .await;
        assert_eq!(read.status.as_u16(), 200);
    }
    let unknown_path = "/no/such/path-4f1c2a";
    let missing = node.send("GET", unknown_path, None, &[], None).await;
    assert_eq!(missing.status.as_u16(), 404);
    let live = node.send("GET", "/health/live", None, &[], None).await;
    assert_eq!(live.status.as_u16(), 200);

    let text = node.metrics().await;
    let samples = parse_exposition(&text);
    let requests = |method: &str, route: &str, status: &str| {
        value(
            &samples,
            REQUESTS,
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("POST", DIALOGS, "201"), Some(3.0), "{text}");
    assert_eq!(requests("POST", DIALOGS, "401"), Some(1.0), "{text}");
    assert_eq!(
        requests("GET", "/api/v1/serviceowner/dialogs/{id}", "200"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        requests(
            "POST",
            "/api/v1/serviceowner/dialogs/{id}/activities",
            "201"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(requests("GET", "/health/live", "200"), Some(1.0), "{text}");
    assert_eq!(value(&samples, EVENTS, &[("type", CREATED)]), Some(3.0));
    assert_eq!(value(&samples, EVENTS, &[("type", UPDATED)]), Some(1.0));
    assert_eq!(value(&samples, EVENTS, &[("type", INFORMATION)]), Some(1.0));
    assert_eq!(value(&samples, ACTORS, &[]), Some(3.0), "{text}");
    assert!(
        text.contains(&format!("# TYPE {REQUESTS} counter")),
        "{text}"
    );
    assert!(text.contains(&format!("# TYPE {EVENTS} counter")), "{text}");
    assert!(text.contains(&format!("# TYPE {ACTORS} gauge")), "{text}");

    // Every sample names this node, and label values are route patterns, never raw paths.
    for s in &samples {
        assert_eq!(
            s.labels.get("node").map(String::as_str),
            Some(node.node_id.as_str()),
            "sample without this node's label: {s:?}"
        );
    }
    for raw in ids.iter().map(String::as_str).chain([unknown_path]) {
        assert!(
            !text.contains(raw),
            "raw path segment {raw:?} leaked into a label"
        );
    }
}

#[actix_web::test]
async fn idle_dialog_actors_stop_and_restart_on_demand_from_the_store() {
    let node = start("[dialogs]\nidle_timeout = \"200ms\"").await;
    let body = dialog_body();
    let creates = (0..5).map(|_| node.post(DIALOGS, &node.tokens.owner_a, &body));
    let mut ids = Vec::new();
    for r in join_all(creates).await {
        assert_eq!(r.status.as_u16(), 201, "{}", r.body);
        ids.push(r.body.as_str().expect("id").to_owned());
    }
    assert_eq!(actors(&node).await, Some(5.0), "one actor per fresh dialog");

    eventually(Duration::from_secs(5), "idle actors to stop", || async {
        actors(&node).await == Some(0.0)
    })
    .await;

    let read = node
        .get(&format!("{DIALOGS}/{}", ids[2]), &node.tokens.owner_a)
        .await;
    assert_eq!(read.status.as_u16(), 200, "{}", read.body);
    assert_eq!(read.body["id"], ids[2].as_str());
    assert_eq!(read.body["status"], "InProgress");
    assert_eq!(read.body["sequence"], 1);
    assert_eq!(
        actors(&node).await,
        Some(1.0),
        "reading restarts exactly that dialog's actor"
    );

    // A restarted actor continues the dialog's sequence from the store.
    let activity = node
        .post(
            &format!("{DIALOGS}/{}/activities", ids[2]),
            &node.tokens.owner_a,
            &json!({"type": "Information"}),
        )
        .await;
    assert_eq!(activity.status.as_u16(), 201, "{}", activity.body);
    let events = node.dialog_events(&ids[2]).await;
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| e["dialogsequence"].as_u64().expect("dialogsequence"))
        .collect();
    assert_eq!(sequences, [1, 2, 3]);
    assert_eq!(types(&events), [CREATED, UPDATED, INFORMATION]);
}

#[actix_web::test]
async fn concurrent_writes_to_many_dialogs_leave_one_busy_dialog_gap_free_and_in_order() {
    let node = start("").await;
    let busy = node.create_dialog(&dialog_body()).await;
    let activities = format!("{DIALOGS}/{busy}/activities");
    let body = dialog_body();
    let bodies: Vec<Value> = (0..30)
        .map(|i| json!({"type": "Information", "extendedType": format!("urn:x:step-{i}")}))
        .collect();
    let creates = join_all((0..50).map(|_| node.post(DIALOGS, &node.tokens.owner_a, &body)));
    let posts = join_all(
        bodies
            .iter()
            .map(|b| node.post(&activities, &node.tokens.owner_a, b)),
    );
    let (created, posted) = futures::join!(creates, posts);

    let mut others = BTreeSet::new();
    for r in &created {
        assert_eq!(r.status.as_u16(), 201, "create: {}", r.body);
        others.insert(r.body.as_str().expect("id").to_owned());
    }
    assert_eq!(others.len(), 50, "50 distinct dialogs");
    let mut activity_ids = BTreeSet::new();
    for r in &posted {
        assert_eq!(r.status.as_u16(), 201, "activity: {}", r.body);
        activity_ids.insert(r.body.as_str().expect("activity id").to_owned());
    }
    assert_eq!(activity_ids.len(), 30, "30 distinct activities");

    let all = node.poll_all(&node.tokens.owner_a, "").await;
    let mut by_dialog: HashMap<String, Vec<Value>> = HashMap::new();
    for e in all {
        let id = e["resourceinstance"].as_str().expect("instance").to_owned();
        by_dialog.entry(id).or_default().push(e);
    }
    assert_eq!(by_dialog.len(), 51, "the busy dialog and the 50 others");

    let events = by_dialog.remove(&busy).expect("busy dialog's events");
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| e["dialogsequence"].as_u64().expect("dialogsequence"))
        .collect();
    assert_eq!(sequences, (1..=61).collect::<Vec<u64>>());
    assert_eq!(events[0]["type"], CREATED);
    let mut seen_activities = BTreeSet::new();
    for pair in events[1..].chunks(2) {
        assert_eq!(
            pair[0]["type"], UPDATED,
            "each post is updated, then activity"
        );
        assert_eq!(pair[1]["type"], INFORMATION);
        seen_activities.insert(
            pair[1]["data"]["activityId"]
                .as_str()
                .expect("activityId")
                .to_owned(),
        );
    }
    assert_eq!(
        seen_activities, activity_ids,
        "every accepted activity has its event"
    );

    for (id, events) in &by_dialog {
        assert!(others.contains(id), "unexpected dialog {id}");
        assert_eq!(types(events), [CREATED], "dialog {id}");
        assert_eq!(events[0]["dialogsequence"], 1, "dialog {id}");
    }
}

#[actix_web::test]
async fn the_embedded_store_reports_its_checkpoints_and_commit_log_syncs() {
    let node = start_on(
        "[store]\nkind = \"embedded\"\nsync = \"always\"\ncheckpoint_interval = \"50ms\"",
        None,
    )
    .await;
    const LOG_SYNC: &str = "dialog_events_store_log_sync_seconds";
    const CHECKPOINT: &str = "dialog_events_store_checkpoint_seconds";
    let text = node.metrics().await;
    assert!(
        text.contains(&format!("# TYPE {LOG_SYNC} histogram")),
        "{text}"
    );
    assert!(
        text.contains(&format!("# TYPE {CHECKPOINT} histogram")),
        "{text}"
    );
    let before = parse_exposition(&text);
    let synced_before = value(&before, &format!("{LOG_SYNC}_count"), &[]).expect("count");

    // Three commits one after another: each is its own fsynced record of the log.
    for _ in 0..3 {
        node.create_dialog(&dialog_body()).await;
    }
    let samples = parse_exposition(&node.metrics().await);
    let synced = value(&samples, &format!("{LOG_SYNC}_count"), &[]).expect("count");
    assert!(synced >= synced_before + 3.0, "{synced_before} -> {synced}");
    assert!(value(&samples, &format!("{LOG_SYNC}_sum"), &[]).expect("sum") > 0.0);

    // A checkpoint follows within the interval and is timed.
    eventually(Duration::from_secs(5), "a timed checkpoint", || async {
        let samples = parse_exposition(&node.metrics().await);
        value(&samples, &format!("{CHECKPOINT}_count"), &[]).is_some_and(|n| n >= 1.0)
            && value(&samples, &format!("{CHECKPOINT}_sum"), &[]).is_some_and(|s| s > 0.0)
    })
    .await;
}
