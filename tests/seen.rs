//! The seen rule: at most one `seen` per (dialog, user, updatedAt), never from lists, the first view
//! also emitting `updated` without bumping `updatedAt` or `revision`.

mod common;

use common::*;
use serde_json::{Value, json};

fn seen_and_updated(events: &[Value]) -> (usize, usize) {
    let t = types(events);
    (
        t.iter()
            .filter(|t| *t == "dialogporten.dialog.seen.v1")
            .count(),
        t.iter()
            .filter(|t| *t == "dialogporten.dialog.updated.v1")
            .count(),
    )
}

#[actix_web::test]
async fn listing_never_emits_seen() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let list = node
        .get("/api/v1/enduser/dialogs", &node.tokens.person_1)
        .await;
    assert_eq!(list.status.as_u16(), 200);
    assert!(
        list.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|d| d["id"] == id.as_str())
    );
    let owner_list = node
        .get("/api/v1/serviceowner/dialogs", &node.tokens.owner_a)
        .await;
    assert_eq!(owner_list.status.as_u16(), 200);
    assert_eq!(
        types(&node.dialog_events(&id).await),
        ["dialogporten.dialog.created.v1"]
    );
}

#[actix_web::test]
async fn first_detail_view_emits_seen_and_updated_without_touching_revision_or_updated_at() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let path = format!("/api/v1/serviceowner/dialogs/{id}");
    let before = node.get(&path, &node.tokens.owner_a).await.body;
    let view = node
        .get(
            &format!("/api/v1/enduser/dialogs/{id}"),
            &node.tokens.person_1,
        )
        .await;
    assert_eq!(view.status.as_u16(), 200);
    let seen = view.body["seenSinceLastUpdate"]
        .as_array()
        .expect("seen list");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["seenBy"]["actorId"], person_urn(PERSON_1));
    assert_eq!(seen[0]["isCurrentEndUser"], true);
    let events = node.dialog_events(&id).await;
    assert_eq!(
        types(&events),
        [
            "dialogporten.dialog.created.v1",
            "dialogporten.dialog.seen.v1",
            "dialogporten.dialog.updated.v1"
        ]
    );
    assert_eq!(events[1]["subject"], person_urn(PERSON_1));
    let after = node.get(&path, &node.tokens.owner_a).await.body;
    assert_eq!(after["revision"], before["revision"]);
    assert_eq!(after["updatedAt"], before["updatedAt"]);
}

#[actix_web::test]
async fn second_view_of_same_revision_emits_no_seen_event() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    for _ in 0..3 {
        let r = node
            .get(
                &format!("/api/v1/enduser/dialogs/{id}"),
                &node.tokens.person_1,
            )
            .await;
        assert_eq!(r.status.as_u16(), 200);
    }
    assert_eq!(seen_and_updated(&node.dialog_events(&id).await), (1, 1));
}

#[actix_web::test]
async fn a_view_after_an_update_emits_seen_again() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let user_path = format!("/api/v1/enduser/dialogs/{id}");
    node.get(&user_path, &node.tokens.person_1).await;
    let mut body = dialog_body();
    body["status"] = json!("Completed");
    let r = node
        .put(
            &format!("/api/v1/serviceowner/dialogs/{id}"),
            &node.tokens.owner_a,
            &body,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    let view = node.get(&user_path, &node.tokens.person_1).await;
    assert_eq!(
        view.body["seenSinceLastUpdate"]
            .as_array()
            .expect("seen")
            .len(),
        1
    );
    node.get(&user_path, &node.tokens.person_1).await;
    // created, seen, updated(seen), updated(put), seen, updated(seen)
    assert_eq!(seen_and_updated(&node.dialog_events(&id).await), (2, 3));
}

#[actix_web::test]
async fn a_silent_update_does_not_make_the_next_view_emit_seen() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let user_path = format!("/api/v1/enduser/dialogs/{id}");
    node.get(&user_path, &node.tokens.person_1).await;
    let r = node
        .put(
            &format!("/api/v1/serviceowner/dialogs/{id}?isSilentUpdate=true"),
            &node.tokens.owner_a,
            &dialog_body(),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    node.get(&user_path, &node.tokens.person_1).await;
    assert_eq!(seen_and_updated(&node.dialog_events(&id).await), (1, 1));
}

#[actix_web::test]
async fn two_users_each_emit_one_seen() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let user_path = format!("/api/v1/enduser/dialogs/{id}");
    for _ in 0..2 {
        assert_eq!(
            node.get(&user_path, &node.tokens.person_1)
                .await
                .status
                .as_u16(),
            200
        );
        assert_eq!(
            node.get(&user_path, &node.tokens.person_2)
                .await
                .status
                .as_u16(),
            200
        );
    }
    let events = node.dialog_events(&id).await;
    assert_eq!(seen_and_updated(&events), (2, 2));
    let seen_ids: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "dialogporten.dialog.seen.v1")
        .map(|e| &e["id"])
        .collect();
    assert_ne!(seen_ids[0], seen_ids[1]);
    let view = node.get(&user_path, &node.tokens.person_2).await.body;
    let seen = view["seenSinceLastUpdate"].as_array().expect("seen");
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen.iter()
            .filter(|s| s["isCurrentEndUser"] == true)
            .count(),
        1
    );
}

#[actix_web::test]
async fn twenty_concurrent_detail_reads_by_one_user_emit_exactly_one_seen() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let user_path = format!("/api/v1/enduser/dialogs/{id}");
    let reads = (0..20).map(|_| node.get(&user_path, &node.tokens.person_1));
    for r in futures::future::join_all(reads).await {
        assert_eq!(r.status.as_u16(), 200);
    }
    assert_eq!(seen_and_updated(&node.dialog_events(&id).await), (1, 1));
}

#[actix_web::test]
async fn a_service_owner_read_with_end_user_id_counts_as_that_users_view() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let path = format!("/api/v1/serviceowner/dialogs/{id}");
    node.get(&path, &node.tokens.owner_a).await;
    assert_eq!(
        seen_and_updated(&node.dialog_events(&id).await),
        (0, 0),
        "a plain owner read is no view"
    );
    let r = node
        .get(
            &format!("{path}?endUserId={}", person_urn(PERSON_1)),
            &node.tokens.owner_a,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200);
    node.get(
        &format!("/api/v1/enduser/dialogs/{id}"),
        &node.tokens.person_1,
    )
    .await;
    let events = node.dialog_events(&id).await;
    assert_eq!(seen_and_updated(&events), (1, 1));
    let seen = events
        .iter()
        .find(|e| e["type"] == "dialogporten.dialog.seen.v1")
        .expect("seen");
    assert_eq!(seen["subject"], person_urn(PERSON_1));
}
