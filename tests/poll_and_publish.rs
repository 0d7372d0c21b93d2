//! The poll API over the global log (`after`, `size`, `next`, filters) and publishing custom events.

mod common;

use common::*;
use serde_json::json;

#[actix_web::test]
async fn poll_pages_follow_the_next_header_oldest_first_without_gaps_or_repeats() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    for _ in 0..11 {
        let r = node
            .post(
                &format!("/api/v1/serviceowner/dialogs/{id}/activities"),
                &node.tokens.owner_a,
                &json!({"type": "Information"}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 201);
    }
    // 1 + 11 * 2 = 23 events, read 5 at a time.
    let mut path = format!("/events/api/v1/events?resource={RESOURCE}&after=0&size=5");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = node.get(&path, &node.tokens.owner_a).await;
        assert_eq!(r.status.as_u16(), 200);
        let page = r.body.as_array().expect("array").clone();
        assert!(page.len() <= 5);
        let next = r.header("next").expect("next header on every page");
        assert!(
            next.starts_with(&format!("{}/events/api/v1/events?", node.base)),
            "{next}"
        );
        assert!(next.contains("size=5"));
        if page.is_empty() {
            break;
        }
        pages += 1;
        assert!(next.contains(&format!(
            "after={}",
            page.last().expect("last")["id"].as_str().expect("id")
        )));
        seen.extend(page);
        path = next.strip_prefix(&node.base).expect("same node").to_owned();
    }
    assert_eq!(pages, 5);
    let seqs: Vec<u64> = seen
        .iter()
        .map(|e| e["dialogsequence"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=23).collect::<Vec<_>>());
}

#[actix_web::test]
async fn default_page_size_is_50() {
    let node = start("").await;
    for _ in 0..55 {
        node.create_dialog(&dialog_body()).await;
    }
    let r = node
        .get(
            &format!("/events/api/v1/events?resource={RESOURCE}&after=0"),
            &node.tokens.owner_a,
        )
        .await;
    assert_eq!(r.body.as_array().expect("array").len(), 50);
}

#[actix_web::test]
async fn subject_and_type_filters_match_exactly() {
    let node = start("").await;
    let a = node.create_dialog(&dialog_body()).await;
    let mut other = dialog_body();
    other["party"] = json!(person_urn(PERSON_2));
    let b = node.create_dialog(&other).await;
    node.post(
        &format!("/api/v1/serviceowner/dialogs/{a}/activities"),
        &node.tokens.owner_a,
        &json!({"type": "PaymentMade"}),
    )
    .await;
    let by_subject = node
        .poll_all(
            &node.tokens.owner_a,
            &format!("&subject={}", person_urn(PERSON_2)),
        )
        .await;
    assert_eq!(by_subject.len(), 1);
    assert_eq!(by_subject[0]["resourceinstance"], b.as_str());
    let by_type = node
        .poll_all(
            &node.tokens.owner_a,
            "&type=dialogporten.dialog.activity.payment-made.v1",
        )
        .await;
    assert_eq!(
        types(&by_type),
        ["dialogporten.dialog.activity.payment-made.v1"]
    );
    let prefix_is_not_a_wildcard = node
        .poll_all(&node.tokens.owner_a, "&type=dialogporten.dialog.activity")
        .await;
    assert!(prefix_is_not_a_wildcard.is_empty());
}

#[actix_web::test]
async fn poll_sees_only_the_requested_resource() {
    let node = start("").await;
    node.create_dialog(&dialog_body()).await;
    let mut other = dialog_body();
    other["serviceResource"] = json!(OTHER_RESOURCE);
    let r = node
        .post("/api/v1/serviceowner/dialogs", &node.tokens.owner_b, &other)
        .await;
    assert_eq!(r.status.as_u16(), 201);
    let events = node.poll_all(&node.tokens.owner_a, "").await;
    assert_eq!(events.len(), 1);
    assert!(events.iter().all(|e| e["resource"] == RESOURCE));
}

fn custom_event(id: &str) -> serde_json::Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "https://example.org/app/instances/1",
        "type": "app.instance.process.completed",
        "resource": RESOURCE,
        "subject": person_urn(PERSON_1),
        "data": {"step": 3},
        "alternativesubject": "/person/1"
    })
}

async fn publish(node: &TestNode, token: &str, body: &serde_json::Value) -> Reply {
    node.send(
        "POST",
        "/events/api/v1/events",
        Some(token),
        &[("Content-Type", "application/cloudevents+json")],
        Some(body.to_string().into_bytes()),
    )
    .await
}

#[actix_web::test]
async fn published_events_reach_the_poll_api_once_per_id_and_source() {
    let node = start("").await;
    let r = publish(&node, &node.tokens.owner_a, &custom_event("e-1")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let dup = publish(&node, &node.tokens.owner_a, &custom_event("e-1")).await;
    assert_eq!(dup.status.as_u16(), 200, "duplicates are accepted");
    let mut other_source = custom_event("e-1");
    other_source["source"] = json!("https://example.org/app/instances/2");
    assert_eq!(
        publish(&node, &node.tokens.owner_a, &other_source)
            .await
            .status
            .as_u16(),
        200
    );
    let events = node.poll_all(&node.tokens.owner_a, "").await;
    assert_eq!(events.len(), 2, "(id, source) dedupe: {events:?}");
    assert_eq!(events[0]["type"], "app.instance.process.completed");
    assert_eq!(events[0]["data"], json!({"step": 3}));
    assert_eq!(
        events[0]["alternativesubject"], "/person/1",
        "extension attributes are kept"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(events[0]["time"].as_str().expect("time")).is_ok()
    );
    // The subject's own party may read it.
    let mine = node.poll_all(&node.tokens.person_1, "").await;
    assert_eq!(mine.len(), 2);
}

#[actix_web::test]
async fn after_a_cursor_only_newer_events_come() {
    let node = start("").await;
    let first = node.create_dialog(&dialog_body()).await;
    let events = node.dialog_events(&first).await;
    let cursor = events[0]["id"].as_str().expect("id").to_owned();
    let second = node.create_dialog(&dialog_body()).await;
    let r = node
        .get(
            &format!("/events/api/v1/events?resource={RESOURCE}&after={cursor}"),
            &node.tokens.owner_a,
        )
        .await;
    let page = r.body.as_array().expect("array");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["resourceinstance"], second.as_str());
}

/// A CloudEvent for OTHER_RESOURCE (owned by ORG_B) with a chosen id and source.
fn foreign_event(id: &str, source: &str) -> serde_json::Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": "other.thing.happened",
        "resource": OTHER_RESOURCE,
    })
}

#[actix_web::test]
async fn another_owner_publishing_an_event_id_of_ours_does_not_move_our_poll_cursor() {
    let node = start("").await;
    let first = node.create_dialog(&dialog_body()).await;
    let cursor = node.dialog_events(&first).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for _ in 0..8 {
        node.create_dialog(&dialog_body()).await;
    }
    // ORG_B publishes, in its own resource, an event whose id is ORG_A's cursor.
    let r = publish(
        &node,
        &node.tokens.owner_b,
        &foreign_event(&cursor, "https://b.example/x"),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let page = node
        .get(
            &format!("/events/api/v1/events?resource={RESOURCE}&after={cursor}"),
            &node.tokens.owner_a,
        )
        .await;
    assert_eq!(page.status.as_u16(), 200, "{}", page.body);
    let events = page.body.as_array().expect("array");
    assert_eq!(events.len(), 8, "every waiting event after the cursor");
    assert!(events.iter().all(|e| e["resource"] == RESOURCE));
    let last = events.last().expect("last")["id"].as_str().expect("id");
    assert!(
        page.header("next")
            .expect("next")
            .contains(&format!("after={last}"))
    );
    // And an id that exists only in another resource's log is no position in this one.
    let r = publish(
        &node,
        &node.tokens.owner_b,
        &foreign_event("only-in-b", "https://b.example/x"),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    node.get(
        &format!("/events/api/v1/events?resource={RESOURCE}&after=only-in-b"),
        &node.tokens.owner_a,
    )
    .await
    .assert_problem(400, Some("after"));
}

#[actix_web::test]
async fn another_owner_cannot_suppress_our_published_event_by_publishing_its_id_and_source_first() {
    let node = start("").await;
    let ours = custom_event("invoice-1001");
    // ORG_B publishes the same id and source first, into its own resource.
    let squat = foreign_event("invoice-1001", ours["source"].as_str().expect("source"));
    let r = publish(&node, &node.tokens.owner_b, &squat).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = publish(&node, &node.tokens.owner_a, &ours).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let events = node.poll_all(&node.tokens.owner_a, "").await;
    assert_eq!(events.len(), 1, "ORG_A's event is stored: {events:?}");
    assert_eq!(events[0]["id"], "invoice-1001");
    assert_eq!(events[0]["resource"], RESOURCE);
}

#[actix_web::test]
async fn dedupe_keys_cannot_collide_through_separators_in_id_or_source() {
    let node = start("").await;
    // With a naive "{id}|{source}" key these two would be the same.
    let mut a = custom_event("x|https://a.example");
    a["source"] = json!("https://a.example/y");
    let mut b = custom_event("x");
    b["source"] = json!("https://a.example|https://a.example/y");
    for e in [&a, &b] {
        let r = publish(&node, &node.tokens.owner_a, e).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    }
    let events = node.poll_all(&node.tokens.owner_a, "").await;
    assert_eq!(events.len(), 2, "{events:?}");
}
