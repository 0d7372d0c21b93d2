//! Dialog changes become the exact Dialogporten events, in a gap-free per-dialog sequence.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn full_body() -> Value {
    let mut body = dialog_body();
    body["process"] = json!("urn:no:process:abc");
    body["precedingProcess"] = json!("urn:no:process:prev");
    body["activities"] = json!([
        {"type": "DialogCreated", "performedBy": {"actorType": "ServiceOwner"}},
        {"type": "Information", "extendedType": "urn:x:info"}
    ]);
    body["transmissions"] = json!([
        {"type": "Information", "sender": {"actorType": "ServiceOwner"},
         "content": {"title": [{"value": "Vedtak", "languageCode": "nb"}]}}
    ]);
    body
}

#[actix_web::test]
async fn create_with_activities_and_transmissions_emits_exact_events_and_envelopes() {
    let node = start("").await;
    let id = node.create_dialog(&full_body()).await;
    let read = node
        .get(
            &format!("/api/v1/serviceowner/dialogs/{id}"),
            &node.tokens.owner_a,
        )
        .await;
    assert_eq!(read.status.as_u16(), 200);
    let activity_ids: Vec<String> = read.body["activities"]
        .as_array()
        .expect("activities")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_owned())
        .collect();
    let transmission_id = read.body["transmissions"][0]["id"]
        .as_str()
        .expect("tid")
        .to_owned();

    let events = node.dialog_events(&id).await;
    assert_eq!(
        types(&events),
        [
            "dialogporten.dialog.created.v1",
            "dialogporten.dialog.activity.created.v1",
            "dialogporten.dialog.activity.information.v1",
            "dialogporten.dialog.transmission.created.v1",
        ]
    );
    let dialog_source = format!("{}/api/v1/enduser/dialogs/{id}", node.base);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["dialogsequence"], (i + 1) as u64);
        assert_eq!(e["subject"], person_urn(PERSON_1));
        assert_eq!(e["resource"], RESOURCE);
        assert_eq!(e["resourceinstance"], id.as_str());
        assert_eq!(e["datacontenttype"], "application/json");
        assert!(uuid::Uuid::parse_str(e["id"].as_str().expect("id")).is_ok());
        let time = e["time"].as_str().expect("time");
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'),
            "{time}"
        );
        assert_eq!(e["data"]["process"], "urn:no:process:abc");
        assert_eq!(e["data"]["precedingProcess"], "urn:no:process:prev");
        for key in e.as_object().expect("object").keys() {
            assert_eq!(key, &key.to_lowercase(), "attribute names are lower-case");
        }
    }
    assert_eq!(events[0]["source"], dialog_source.as_str());
    assert_eq!(events[0]["data"].as_object().expect("data").len(), 2);
    assert_eq!(
        events[1]["source"],
        format!("{dialog_source}/activities/{}", activity_ids[0]).as_str()
    );
    assert_eq!(events[1]["data"]["activityId"], activity_ids[0].as_str());
    assert!(events[1]["data"].get("extendedActivityType").is_none());
    assert_eq!(events[2]["data"]["activityId"], activity_ids[1].as_str());
    assert_eq!(events[2]["data"]["extendedActivityType"], "urn:x:info");
    assert_eq!(
        events[3]["source"],
        format!("{dialog_source}/transmissions/{transmission_id}").as_str()
    );
    assert_eq!(events[3]["data"]["senderType"], "ServiceOwner");
}

#[actix_web::test]
async fn dialog_without_process_has_no_data_and_no_datacontenttype() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let events = node.dialog_events(&id).await;
    assert_eq!(types(&events), ["dialogporten.dialog.created.v1"]);
    assert!(events[0].get("data").is_none());
    assert!(events[0].get("datacontenttype").is_none());
}

#[actix_web::test]
async fn every_activity_type_maps_to_its_event_type() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let pairs = [
        ("DialogCreated", "created"),
        ("DialogClosed", "closed"),
        ("Information", "information"),
        ("TransmissionOpened", "transmission-opened"),
        ("PaymentMade", "payment-made"),
        ("SignatureProvided", "signature-provided"),
        ("DialogOpened", "dialog-opened"),
        ("DialogDeleted", "dialog-deleted"),
        ("DialogRestored", "dialog-restored"),
        ("SentToSigning", "sent-to-signing"),
        ("SentToFormFill", "sent-to-form-fill"),
        ("SentToSendIn", "sent-to-send-in"),
        ("SentToPayment", "sent-to-payment"),
        ("FormSubmitted", "form-submitted"),
        ("FormSaved", "form-saved"),
        ("CorrespondenceOpened", "correspondence-opened"),
        ("CorrespondenceConfirmed", "correspondence-confirmed"),
    ];
    for (api, _) in pairs {
        let r = node
            .post(
                &format!("/api/v1/serviceowner/dialogs/{id}/activities"),
                &node.tokens.owner_a,
                &json!({"type": api}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 201, "{api}: {}", r.body);
        assert!(uuid::Uuid::parse_str(r.body.as_str().expect("id")).is_ok());
    }
    let events = node.dialog_events(&id).await;
    let activity_events: Vec<String> = types(&events)
        .into_iter()
        .filter(|t| t.starts_with("dialogporten.dialog.activity."))
        .collect();
    let expected: Vec<String> = pairs
        .iter()
        .map(|(_, e)| format!("dialogporten.dialog.activity.{e}.v1"))
        .collect();
    assert_eq!(activity_events, expected);
    // Each activity post is one change: `updated` then the activity event.
    assert_eq!(events.len(), 1 + 2 * pairs.len());
    for pair in events[1..].chunks(2) {
        assert_eq!(pair[0]["type"], "dialogporten.dialog.updated.v1");
    }
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["dialogsequence"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
}

#[actix_web::test]
async fn update_transmission_delete_restore_and_purge_emit_their_events() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let path = format!("/api/v1/serviceowner/dialogs/{id}");
    let owner = node.tokens.owner_a.clone();

    let mut body = dialog_body();
    body["status"] = json!("Awaiting");
    body["activities"] = json!([{"type": "FormSaved"}]);
    let r = node.put(&path, &owner, &body).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    let t = json!({"type": "Alert", "sender": {"actorType": "PartyRepresentative"},
        "content": {"title": [{"value": "Svar", "languageCode": "nb"}]}});
    let r = node
        .post(&format!("{path}/transmissions"), &owner, &t)
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(
        node.send("DELETE", &path, Some(&owner), &[], None)
            .await
            .status
            .as_u16(),
        204
    );
    let r = node.get(&path, &owner).await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(
        r.body["deletedAt"].is_string(),
        "service owners see deleted dialogs with deletedAt"
    );
    assert_eq!(
        node.send(
            "POST",
            &format!("{path}/actions/restore"),
            Some(&owner),
            &[],
            None
        )
        .await
        .status
        .as_u16(),
        204
    );
    assert!(
        node.get(&path, &owner)
            .await
            .body
            .get("deletedAt")
            .is_none()
    );
    assert_eq!(
        node.send(
            "POST",
            &format!("{path}/actions/purge"),
            Some(&owner),
            &[],
            None
        )
        .await
        .status
        .as_u16(),
        204
    );
    assert_eq!(node.get(&path, &owner).await.status.as_u16(), 404);

    let events = node.dialog_events(&id).await;
    assert_eq!(
        types(&events),
        [
            "dialogporten.dialog.created.v1",
            "dialogporten.dialog.updated.v1",
            "dialogporten.dialog.activity.form-saved.v1",
            "dialogporten.dialog.updated.v1",
            "dialogporten.dialog.transmission.created.v1",
            "dialogporten.dialog.deleted.v1",
            "dialogporten.dialog.restored.v1",
            "dialogporten.dialog.deleted.v1",
        ]
    );
    assert_eq!(events[4]["data"]["senderType"], "PartyRepresentative");
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["dialogsequence"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
}

#[actix_web::test]
async fn put_accepts_a_body_read_with_get_and_only_new_children_emit() {
    let node = start("").await;
    let mut body = dialog_body();
    body["activities"] = json!([{"type": "Information"}]);
    let id = node.create_dialog(&body).await;
    let path = format!("/api/v1/serviceowner/dialogs/{id}");
    let mut read = node.get(&path, &node.tokens.owner_a).await.body;
    read["progress"] = json!(50);
    read["activities"]
        .as_array_mut()
        .expect("activities")
        .push(json!({"type": "PaymentMade"}));
    let r = node.put(&path, &node.tokens.owner_a, &read).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    let after = node.get(&path, &node.tokens.owner_a).await.body;
    assert_eq!(after["progress"], 50);
    assert_eq!(after["activities"].as_array().expect("a").len(), 2);
    assert_eq!(
        types(&node.dialog_events(&id).await),
        [
            "dialogporten.dialog.created.v1",
            "dialogporten.dialog.activity.information.v1",
            "dialogporten.dialog.updated.v1",
            "dialogporten.dialog.activity.payment-made.v1",
        ]
    );
}

#[actix_web::test]
async fn put_changing_an_existing_activity_or_the_party_is_rejected() {
    let node = start("").await;
    let mut body = dialog_body();
    body["activities"] = json!([{"type": "Information"}]);
    let id = node.create_dialog(&body).await;
    let path = format!("/api/v1/serviceowner/dialogs/{id}");
    let mut read = node.get(&path, &node.tokens.owner_a).await.body;
    read["activities"][0]["type"] = json!("PaymentMade");
    node.put(&path, &node.tokens.owner_a, &read)
        .await
        .assert_problem(400, Some("activities[0]"));
    let mut other = dialog_body();
    other["party"] = json!(person_urn(PERSON_2));
    node.put(&path, &node.tokens.owner_a, &other)
        .await
        .assert_problem(400, Some("party"));
}

#[actix_web::test]
async fn silent_update_changes_revision_but_emits_no_poll_events_and_keeps_updated_at() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let path = format!("/api/v1/serviceowner/dialogs/{id}");
    let before = node.get(&path, &node.tokens.owner_a).await.body;
    let mut body = dialog_body();
    body["status"] = json!("Completed");
    let r = node
        .put(
            &format!("{path}?isSilentUpdate=true"),
            &node.tokens.owner_a,
            &body,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    let r = node
        .post(
            &format!("{path}/activities?isSilentUpdate=true"),
            &node.tokens.owner_a,
            &json!({"type": "FormSaved"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201);
    let after = node.get(&path, &node.tokens.owner_a).await.body;
    assert_eq!(after["status"], "Completed");
    assert_ne!(after["revision"], before["revision"]);
    assert_eq!(after["updatedAt"], before["updatedAt"]);
    // The dialog's own log numbered the silent events (sequence 2..4), the poll API never sees them.
    assert_eq!(after["sequence"], 4);
    assert_eq!(
        types(&node.dialog_events(&id).await),
        ["dialogporten.dialog.created.v1"]
    );
    // A later loud change shows the gap the silent events left in the numbering.
    let r = node
        .post(
            &format!("{path}/activities"),
            &node.tokens.owner_a,
            &json!({"type": "FormSubmitted"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201);
    let seqs: Vec<u64> = node
        .dialog_events(&id)
        .await
        .iter()
        .map(|e| e["dialogsequence"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [1, 5, 6]);
}

#[actix_web::test]
async fn if_match_with_a_stale_revision_gets_412_and_changes_nothing() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let path = format!("/api/v1/serviceowner/dialogs/{id}");
    let read = node.get(&path, &node.tokens.owner_a).await;
    let revision = read.header("etag").expect("etag");
    assert_eq!(read.body["revision"], revision.as_str());
    let body = dialog_body().to_string().into_bytes();
    let stale = uuid::Uuid::new_v4().to_string();
    let r = node
        .send(
            "PUT",
            &path,
            Some(&node.tokens.owner_a),
            &[("Content-Type", "application/json"), ("If-Match", &stale)],
            Some(body.clone()),
        )
        .await;
    r.assert_problem(412, None);
    let r = node
        .send(
            "POST",
            &format!("{path}/activities"),
            Some(&node.tokens.owner_a),
            &[("Content-Type", "application/json"), ("If-Match", &stale)],
            Some(br#"{"type":"Information"}"#.to_vec()),
        )
        .await;
    r.assert_problem(412, None);
    assert_eq!(
        types(&node.dialog_events(&id).await),
        ["dialogporten.dialog.created.v1"]
    );
    let quoted = format!("\"{revision}\"");
    let r = node
        .send(
            "PUT",
            &path,
            Some(&node.tokens.owner_a),
            &[("Content-Type", "application/json"), ("If-Match", &quoted)],
            Some(body),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    assert_ne!(r.header("etag").expect("new etag"), revision);
}

#[actix_web::test]
async fn events_of_a_dialog_not_yet_visible_are_held_back_until_visible_from() {
    let node = start("").await;
    let visible_from = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let mut body = dialog_body();
    body["visibleFrom"] = json!(visible_from.to_rfc3339());
    let id = node.create_dialog(&body).await;
    let r = node
        .post(
            &format!("/api/v1/serviceowner/dialogs/{id}/activities"),
            &node.tokens.owner_a,
            &json!({"type": "Information"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201);
    assert!(
        node.dialog_events(&id).await.is_empty(),
        "events are held back before visibleFrom"
    );
    let r = node
        .get(
            &format!("/api/v1/enduser/dialogs/{id}"),
            &node.tokens.person_1,
        )
        .await;
    r.assert_problem(404, None);
    let list = node
        .get("/api/v1/enduser/dialogs", &node.tokens.person_1)
        .await;
    assert!(
        list.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|d| d["id"] != id.as_str())
    );

    eventually(Duration::from_secs(10), "held events released", || async {
        node.dialog_events(&id).await.len() == 3
    })
    .await;
    assert!(chrono::Utc::now() >= visible_from);
    assert_eq!(
        types(&node.dialog_events(&id).await),
        [
            "dialogporten.dialog.created.v1",
            "dialogporten.dialog.updated.v1",
            "dialogporten.dialog.activity.information.v1"
        ]
    );
    assert_eq!(
        node.get(
            &format!("/api/v1/enduser/dialogs/{id}"),
            &node.tokens.person_1
        )
        .await
        .status
        .as_u16(),
        200
    );
}

#[actix_web::test]
async fn a_change_made_while_earlier_events_are_held_back_waits_behind_them() {
    let node = start("").await;
    let visible_from = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let mut body = dialog_body();
    body["visibleFrom"] = json!(visible_from.to_rfc3339());
    let id = node.create_dialog(&body).await;
    // The update makes the dialog visible at once, but its event must not pass the creation's,
    // which is still held back.
    let r = node
        .send(
            "PUT",
            &format!("/api/v1/serviceowner/dialogs/{id}"),
            Some(&node.tokens.owner_a),
            &[("Content-Type", "application/json")],
            Some(dialog_body().to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    assert!(
        node.dialog_events(&id).await.is_empty(),
        "the update's event is held back behind the creation's"
    );
    eventually(Duration::from_secs(10), "held events released", || async {
        node.dialog_events(&id).await.len() == 2
    })
    .await;
    assert!(chrono::Utc::now() >= visible_from);
    assert_eq!(
        types(&node.dialog_events(&id).await),
        [
            "dialogporten.dialog.created.v1",
            "dialogporten.dialog.updated.v1"
        ]
    );
    // Once released, nothing is held any more: the next change's event is published at once.
    let r = node
        .post(
            &format!("/api/v1/serviceowner/dialogs/{id}/activities"),
            &node.tokens.owner_a,
            &json!({"type": "Information"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201);
    assert_eq!(node.dialog_events(&id).await.len(), 4);
}

#[actix_web::test]
async fn end_users_get_410_for_deleted_dialogs() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let r = node
        .send(
            "DELETE",
            &format!("/api/v1/serviceowner/dialogs/{id}"),
            Some(&node.tokens.owner_a),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    node.get(
        &format!("/api/v1/enduser/dialogs/{id}"),
        &node.tokens.person_1,
    )
    .await
    .assert_problem(410, None);
    let r = node
        .post(
            &format!("/api/v1/serviceowner/dialogs/{id}/activities"),
            &node.tokens.owner_a,
            &json!({"type": "Information"}),
        )
        .await;
    r.assert_problem(410, None);
}

#[actix_web::test]
async fn create_returns_location_etag_and_a_supplied_v7_id() {
    let node = start("").await;
    let id = uuid::Uuid::now_v7();
    let mut body = dialog_body();
    body["id"] = json!(id.to_string());
    let r = node
        .post("/api/v1/serviceowner/dialogs", &node.tokens.owner_a, &body)
        .await;
    assert_eq!(r.status.as_u16(), 201);
    assert_eq!(r.body, json!(id.to_string()));
    assert_eq!(
        r.header("location").as_deref(),
        Some(format!("/api/v1/serviceowner/dialogs/{id}").as_str())
    );
    assert!(uuid::Uuid::parse_str(&r.header("etag").expect("etag")).is_ok());
    let again = node
        .post("/api/v1/serviceowner/dialogs", &node.tokens.owner_a, &body)
        .await;
    again.assert_problem(409, None);
}
