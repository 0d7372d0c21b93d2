//! Bad input never crashes a node: every malformed body, parameter, header, media type, size and
//! token gets the exact status as `application/problem+json` naming the field (SPEC 3, 4, 5, 9).

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::*;
use dialog_events::auth::{SigningKey, dev_token};
use dialog_events::domain::Party;
use serde_json::{Value, json};

const DIALOGS: &str = "/api/v1/serviceowner/dialogs";
const EVENTS: &str = "/events/api/v1/events";
const CE_JSON: &str = "application/cloudevents+json";

/// The node still answers its liveness probe.
async fn assert_alive(node: &TestNode) {
    let r = node.send("GET", "/health/live", None, &[], None).await;
    assert_eq!(r.status.as_u16(), 200, "the node still lives: {}", r.body);
}

/// `dialog_body()` with `key` set to `value`.
fn body_with(key: &str, value: Value) -> Value {
    let mut body = dialog_body();
    body[key] = value;
    body
}

/// `dialog_body()` without `key`.
fn body_without(key: &str) -> Value {
    let mut body = dialog_body();
    body.as_object_mut().expect("object").remove(key);
    body
}

/// A valid CloudEvent a service owner of RESOURCE may publish.
fn cloud_event() -> Value {
    json!({
        "specversion": "1.0",
        "id": uuid::Uuid::new_v4().to_string(),
        "source": "https://example.org/apps/case-handler",
        "type": "no.example.case.decided",
        "resource": RESOURCE,
        "subject": person_urn(PERSON_1),
    })
}

fn cloud_event_without(key: &str) -> Value {
    let mut e = cloud_event();
    e.as_object_mut().expect("object").remove(key);
    e
}

async fn publish(node: &TestNode, body: &Value) -> Reply {
    node.send(
        "POST",
        EVENTS,
        Some(&node.tokens.owner_a),
        &[("Content-Type", CE_JSON)],
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// One raw request: method, path, token, content type, body.
type RawCase<'a> = (&'a str, &'a str, &'a str, &'a str, &'a [u8]);

/// Sends every case and asserts each is a 400 problem naming `body`; lists every miss at once.
async fn assert_all_name_body(node: &TestNode, cases: Vec<RawCase<'_>>, what: &str) {
    let mut wrong = Vec::new();
    for (method, path, token, content_type, raw) in cases {
        let r = node
            .send(
                method,
                path,
                Some(token),
                &[("Content-Type", content_type)],
                Some(raw.to_vec()),
            )
            .await;
        let detail = r.body["detail"].as_str().unwrap_or("");
        if r.status.as_u16() == 400
            && detail.starts_with("body")
            && r.body["errors"]["body"].is_array()
        {
            r.assert_problem(400, Some("body"));
        } else {
            wrong.push(format!(
                "{method} {path} {:?} -> {} {}",
                String::from_utf8_lossy(raw),
                r.status.as_u16(),
                r.body
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{what} must be 400 naming `body`:\n{}",
        wrong.join("\n")
    );
    assert_alive(node).await;
}

#[actix_web::test]
async fn syntactically_malformed_json_bodies_are_400_naming_body() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let owner = node.tokens.owner_a.clone();
    let admin = node.tokens.admin.clone();
    let dialog = format!("{DIALOGS}/{id}");
    let activities = format!("{dialog}/activities");
    let transmissions = format!("{dialog}/transmissions");
    let json = "application/json";
    let mut cases: Vec<RawCase> = Vec::new();
    for raw in [
        &b"{not json"[..],
        b"",
        b"{\"status\": \"InProgress\",,}",
        b"\xff\xfe\x00garbage",
        b"null",
        b"42",
    ] {
        cases.push(("POST", DIALOGS, &owner, json, raw));
    }
    cases.push(("PUT", &dialog, &owner, json, b"{oops"));
    cases.push(("POST", &activities, &owner, json, b"{oops"));
    cases.push(("POST", &transmissions, &owner, json, b"{oops"));
    cases.push(("POST", EVENTS, &owner, CE_JSON, b"{oops"));
    cases.push(("POST", EVENTS, &owner, CE_JSON, b"[]"));
    cases.push(("POST", "/admin/v1/delegations", &admin, json, b"{oops"));
    assert_all_name_body(&node, cases, "a syntactically malformed body").await;
}

#[actix_web::test]
async fn truncated_json_and_a_non_object_body_are_400_naming_body() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let owner = node.tokens.owner_a.clone();
    let dialog = format!("{DIALOGS}/{id}");
    let json = "application/json";
    let cases: Vec<RawCase> = vec![
        ("POST", DIALOGS, &owner, json, b"{\"status\":"),
        (
            "POST",
            DIALOGS,
            &owner,
            json,
            b"{\"content\": {\"title\": [",
        ),
        ("POST", DIALOGS, &owner, json, b"[1, 2"),
        ("POST", DIALOGS, &owner, json, b"[\"x\"]"),
        ("PUT", &dialog, &owner, json, b"{\"status\":"),
        ("POST", EVENTS, &owner, CE_JSON, b"{\"specversion\": "),
    ];
    assert_all_name_body(&node, cases, "a truncated document or a non-object body").await;
}

#[actix_web::test]
async fn wrong_json_types_are_400_naming_the_field() {
    let node = start("").await;
    let owner = node.tokens.owner_a.clone();
    let cases = [
        (body_with("progress", json!("x")), "progress"),
        (body_with("progress", json!(-1)), "progress"),
        (body_with("progress", json!(12.5)), "progress"),
        (body_with("content", json!(5)), "content"),
        (body_with("status", json!(3)), "status"),
        (body_with("visibleFrom", json!("tomorrow")), "visibleFrom"),
        (body_with("dueAt", json!(17)), "dueAt"),
        (
            body_with("activities", json!({"type": "Information"})),
            "activities",
        ),
        (
            body_with("content", json!({"title": "not a list"})),
            "content.title",
        ),
    ];
    for (body, field) in cases {
        node.post(DIALOGS, &owner, &body)
            .await
            .assert_problem(400, Some(field));
    }
    assert_alive(&node).await;
}

#[actix_web::test]
async fn unknown_enum_values_are_400_naming_the_field() {
    let node = start("").await;
    let owner = node.tokens.owner_a.clone();
    node.post(DIALOGS, &owner, &body_with("status", json!("Bogus")))
        .await
        .assert_problem(400, Some("status"));
    node.post(
        DIALOGS,
        &owner,
        &body_with("activities", json!([{"type": "Nope"}])),
    )
    .await
    .assert_problem(400, Some("activities[0].type"));
    node.post(
        DIALOGS,
        &owner,
        &body_with(
            "activities",
            json!([{"type": "Information"}, {"type": "information"}]),
        ),
    )
    .await
    .assert_problem(400, Some("activities[1].type"));
    node.post(
        DIALOGS,
        &owner,
        &body_with(
            "transmissions",
            json!([{"type": "Information", "sender": {"actorType": "Robot"},
                    "content": {"title": [{"value": "x", "languageCode": "nb"}]}}]),
        ),
    )
    .await
    .assert_problem(400, Some("transmissions[0].sender.actorType"));
    let id = node.create_dialog(&dialog_body()).await;
    node.post(
        &format!("{DIALOGS}/{id}/activities"),
        &owner,
        &json!({"type": "Nope"}),
    )
    .await
    .assert_problem(400, Some("type"));
    assert_alive(&node).await;
}

#[actix_web::test]
async fn bad_uuids_in_path_and_body_are_400_naming_id() {
    let node = start("").await;
    let owner = node.tokens.owner_a.clone();
    let bad = format!("{DIALOGS}/not-a-uuid");
    node.get(&bad, &owner).await.assert_problem(400, Some("id"));
    node.put(&bad, &owner, &dialog_body())
        .await
        .assert_problem(400, Some("id"));
    node.send("DELETE", &bad, Some(&owner), &[], None)
        .await
        .assert_problem(400, Some("id"));
    node.post(
        &format!("{bad}/activities"),
        &owner,
        &json!({"type": "Information"}),
    )
    .await
    .assert_problem(400, Some("id"));
    for action in ["restore", "purge"] {
        node.send(
            "POST",
            &format!("{bad}/actions/{action}"),
            Some(&owner),
            &[],
            None,
        )
        .await
        .assert_problem(400, Some("id"));
    }
    node.get("/api/v1/enduser/dialogs/12345", &node.tokens.person_1)
        .await
        .assert_problem(400, Some("id"));

    node.post(DIALOGS, &owner, &body_with("id", json!("not-a-uuid")))
        .await
        .assert_problem(400, Some("id"));
    node.post(DIALOGS, &owner, &body_with("id", json!(7)))
        .await
        .assert_problem(400, Some("id"));
    let v4 = uuid::Uuid::new_v4().to_string();
    node.post(DIALOGS, &owner, &body_with("id", json!(v4)))
        .await
        .assert_problem(400, Some("id"));
    let r = node.get(&format!("{DIALOGS}/{v4}"), &owner).await;
    r.assert_problem(404, None);
    node.post(
        DIALOGS,
        &owner,
        &body_with("activities", json!([{"id": "nope", "type": "Information"}])),
    )
    .await
    .assert_problem(400, Some("activities[0].id"));
    assert_alive(&node).await;
}

#[actix_web::test]
async fn bad_party_and_resource_urns_are_400_naming_the_field() {
    let node = start("").await;
    let owner = node.tokens.owner_a.clone();
    for party in [
        "urn:altinn:person:identifier-no:123",
        "urn:altinn:person:identifier-no:0889569968X",
        "urn:altinn:organization:identifier-no:99182582",
        "08895699684",
        "",
    ] {
        node.post(DIALOGS, &owner, &body_with("party", json!(party)))
            .await
            .assert_problem(400, Some("party"));
    }
    node.post(DIALOGS, &owner, &body_with("party", json!(42)))
        .await
        .assert_problem(400, Some("party"));
    for resource in [
        "urn:altinn:resource:",
        "urn:altinn:resource:has space",
        "urn:altinn:resource:ø",
        "test-service",
        "urn:altinn:app:test-service",
    ] {
        node.post(
            DIALOGS,
            &owner,
            &body_with("serviceResource", json!(resource)),
        )
        .await
        .assert_problem(400, Some("serviceResource"));
    }
    assert_alive(&node).await;
}

#[actix_web::test]
async fn missing_service_resource_or_party_on_create_is_400_naming_the_field() {
    let node = start("").await;
    let owner = node.tokens.owner_a.clone();
    node.post(DIALOGS, &owner, &body_without("serviceResource"))
        .await
        .assert_problem(400, Some("serviceResource"));
    node.post(DIALOGS, &owner, &body_without("party"))
        .await
        .assert_problem(400, Some("party"));
    node.post(DIALOGS, &owner, &body_with("party", Value::Null))
        .await
        .assert_problem(400, Some("party"));
    assert_alive(&node).await;
}

#[actix_web::test]
async fn missing_required_fields_are_400_naming_the_field() {
    let node = start("").await;
    let owner = node.tokens.owner_a.clone();
    let id = node.create_dialog(&dialog_body()).await;
    let mut transmission = json!({"type": "Information", "sender": {"actorType": "ServiceOwner"},
        "content": {"title": [{"value": "x", "languageCode": "nb"}]}});
    transmission
        .as_object_mut()
        .expect("object")
        .remove("sender");
    let cases = [
        (DIALOGS.to_owned(), body_without("status"), "status"),
        (DIALOGS.to_owned(), body_without("content"), "content"),
        (
            DIALOGS.to_owned(),
            body_with("content", json!({"summary": []})),
            "content.title",
        ),
        (
            format!("{DIALOGS}/{id}/activities"),
            json!({"extendedType": "urn:x"}),
            "type",
        ),
        (
            format!("{DIALOGS}/{id}/transmissions"),
            transmission,
            "sender",
        ),
    ];
    let mut wrong = Vec::new();
    for (path, body, field) in &cases {
        let r = node.post(path, &owner, body).await;
        let detail = r.body["detail"].as_str().unwrap_or("");
        if r.status.as_u16() == 400
            && detail.starts_with(field)
            && r.body["errors"][field].is_array()
        {
            r.assert_problem(400, Some(field));
        } else {
            wrong.push(format!(
                "POST {path} without {field} -> {} {}",
                r.status.as_u16(),
                r.body
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "a missing required field must be 400 naming it:\n{}",
        wrong.join("\n")
    );
    assert_alive(&node).await;
}

#[actix_web::test]
async fn out_of_range_values_are_400_naming_the_field() {
    let node = start("").await;
    let owner = node.tokens.owner_a.clone();
    node.post(DIALOGS, &owner, &body_with("progress", json!(101)))
        .await
        .assert_problem(400, Some("progress"));
    node.post(DIALOGS, &owner, &body_with("progress", json!(256)))
        .await
        .assert_problem(400, Some("progress"));
    node.post(DIALOGS, &owner, &body_with("content", json!({"title": []})))
        .await
        .assert_problem(400, Some("content.title"));
    node.post(
        DIALOGS,
        &owner,
        &body_with(
            "content",
            json!({"title": [{"value": "", "languageCode": "nb"}]}),
        ),
    )
    .await
    .assert_problem(400, Some("content.title[0].value"));
    // Boundaries are accepted.
    for progress in [0, 100] {
        let r = node
            .post(DIALOGS, &owner, &body_with("progress", json!(progress)))
            .await;
        assert_eq!(r.status.as_u16(), 201, "progress {progress}: {}", r.body);
    }
    assert_alive(&node).await;
}

#[actix_web::test]
async fn bad_paging_parameters_on_list_endpoints_are_400_naming_the_parameter() {
    let node = start("").await;
    node.create_dialog(&dialog_body()).await;
    let lists = [
        ("/api/v1/serviceowner/dialogs", node.tokens.owner_a.clone()),
        ("/api/v1/enduser/dialogs", node.tokens.person_1.clone()),
    ];
    for (path, token) in &lists {
        for limit in ["0", "abc", "1001", "-1", "", "1.5"] {
            node.get(&format!("{path}?limit={limit}"), token)
                .await
                .assert_problem(400, Some("limit"));
        }
        for ct in ["bogus", "12345", "%00"] {
            node.get(&format!("{path}?continuationToken={ct}"), token)
                .await
                .assert_problem(400, Some("continuationToken"));
        }
        node.get(&format!("{path}?party=bogus"), token)
            .await
            .assert_problem(400, Some("party"));
        node.get(&format!("{path}?serviceResource=bogus"), token)
            .await
            .assert_problem(400, Some("serviceResource"));
        // The limits themselves are accepted.
        for limit in ["1", "1000"] {
            let r = node.get(&format!("{path}?limit={limit}"), token).await;
            assert_eq!(r.status.as_u16(), 200, "{path} limit={limit}: {}", r.body);
        }
    }
    assert_alive(&node).await;
}

#[actix_web::test]
async fn bad_end_user_id_silent_flag_and_if_match_are_400_naming_them() {
    let node = start("").await;
    let owner = node.tokens.owner_a.clone();
    let id = node.create_dialog(&dialog_body()).await;
    let path = format!("{DIALOGS}/{id}");
    node.get(&format!("{path}?endUserId=bogus"), &owner)
        .await
        .assert_problem(400, Some("endUserId"));
    node.get(
        &format!("{path}?endUserId=urn:altinn:person:identifier-no:1"),
        &owner,
    )
    .await
    .assert_problem(400, Some("endUserId"));

    let silent = "isSilentUpdate=maybe";
    node.put(&format!("{path}?{silent}"), &owner, &dialog_body())
        .await
        .assert_problem(400, Some("isSilentUpdate"));
    node.post(
        &format!("{path}/activities?{silent}"),
        &owner,
        &json!({"type": "Information"}),
    )
    .await
    .assert_problem(400, Some("isSilentUpdate"));
    node.send(
        "DELETE",
        &format!("{path}?{silent}"),
        Some(&owner),
        &[],
        None,
    )
    .await
    .assert_problem(400, Some("isSilentUpdate"));
    node.send(
        "POST",
        &format!("{path}/actions/restore?{silent}"),
        Some(&owner),
        &[],
        None,
    )
    .await
    .assert_problem(400, Some("isSilentUpdate"));

    let body = dialog_body().to_string().into_bytes();
    for bad in ["garbage", "\"not-a-revision\"", "W/\"123\""] {
        node.send(
            "PUT",
            &path,
            Some(&owner),
            &[("Content-Type", "application/json"), ("If-Match", bad)],
            Some(body.clone()),
        )
        .await
        .assert_problem(400, Some("If-Match"));
    }
    node.send(
        "POST",
        &format!("{path}/activities"),
        Some(&owner),
        &[
            ("Content-Type", "application/json"),
            ("If-Match", "garbage"),
        ],
        Some(br#"{"type":"Information"}"#.to_vec()),
    )
    .await
    .assert_problem(400, Some("If-Match"));

    // None of the rejected writes happened.
    assert_eq!(
        types(&node.dialog_events(&id).await),
        ["dialogporten.dialog.created.v1"]
    );
    let read = node.get(&path, &owner).await;
    assert_eq!(read.status.as_u16(), 200);
    assert!(read.body.get("deletedAt").is_none());
    assert_alive(&node).await;
}

#[actix_web::test]
async fn poll_rejects_missing_and_malformed_parameters_naming_them() {
    let node = start("").await;
    node.create_dialog(&dialog_body()).await;
    let owner = node.tokens.owner_a.clone();
    let cases = [
        (EVENTS.to_owned(), "resource"),
        (format!("{EVENTS}?after=0"), "resource"),
        (format!("{EVENTS}?resource={RESOURCE}"), "after"),
        (format!("{EVENTS}?resource=bogus&after=0"), "resource"),
        (
            format!("{EVENTS}?resource=urn:altinn:resource:&after=0"),
            "resource",
        ),
        (
            format!("{EVENTS}?resource={RESOURCE}&after=0&size=0"),
            "size",
        ),
        (
            format!("{EVENTS}?resource={RESOURCE}&after=0&size=1001"),
            "size",
        ),
        (
            format!("{EVENTS}?resource={RESOURCE}&after=0&size=x"),
            "size",
        ),
        (
            format!("{EVENTS}?resource={RESOURCE}&after=0&size=-5"),
            "size",
        ),
        (
            format!(
                "{EVENTS}?resource={RESOURCE}&after={}",
                uuid::Uuid::new_v4()
            ),
            "after",
        ),
        (
            format!("{EVENTS}?resource={RESOURCE}&after=no-such-event"),
            "after",
        ),
    ];
    for (path, field) in cases {
        node.get(&path, &owner)
            .await
            .assert_problem(400, Some(field));
    }
    for size in ["1", "1000"] {
        let r = node
            .get(
                &format!("{EVENTS}?resource={RESOURCE}&after=0&size={size}"),
                &owner,
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "size={size}: {}", r.body);
    }
    assert_alive(&node).await;
}

#[actix_web::test]
async fn publish_rejects_missing_and_malformed_attributes_naming_them() {
    let node = start("").await;
    for field in ["specversion", "id", "source", "type", "resource"] {
        publish(&node, &cloud_event_without(field))
            .await
            .assert_problem(400, Some(field));
        let mut empty = cloud_event();
        empty[field] = json!("");
        publish(&node, &empty)
            .await
            .assert_problem(400, Some(field));
        let mut number = cloud_event();
        number[field] = json!(5);
        publish(&node, &number)
            .await
            .assert_problem(400, Some(field));
    }
    let mut e = cloud_event();
    e["specversion"] = json!("0.3");
    publish(&node, &e)
        .await
        .assert_problem(400, Some("specversion"));
    for time in [
        json!("yesterday"),
        json!("2024-13-01T00:00:00Z"),
        json!(1700000000),
    ] {
        let mut e = cloud_event();
        e["time"] = time;
        publish(&node, &e).await.assert_problem(400, Some("time"));
    }
    for (field, value) in [
        ("subject", json!(5)),
        ("subject", json!({"party": "x"})),
        ("resourceinstance", json!(true)),
        ("datacontenttype", json!(["application/json"])),
        ("resource", json!("not-a-resource")),
    ] {
        let mut e = cloud_event();
        e[field] = value;
        publish(&node, &e).await.assert_problem(400, Some(field));
    }
    // The valid event is accepted, so the rejections above were about the named field alone.
    let valid = cloud_event();
    let r = publish(&node, &valid).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_alive(&node).await;
}

#[actix_web::test]
async fn publish_with_another_content_type_is_415() {
    let node = start("").await;
    let body = cloud_event().to_string().into_bytes();
    for ct in [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
    ] {
        let r = node
            .send(
                "POST",
                EVENTS,
                Some(&node.tokens.owner_a),
                &[("Content-Type", ct)],
                Some(body.clone()),
            )
            .await;
        r.assert_problem(415, None);
    }
    let r = node
        .send(
            "POST",
            EVENTS,
            Some(&node.tokens.owner_a),
            &[],
            Some(body.clone()),
        )
        .await;
    r.assert_problem(415, None);
    // Parameters on the right media type are fine.
    let r = node
        .send(
            "POST",
            EVENTS,
            Some(&node.tokens.owner_a),
            &[(
                "Content-Type",
                "application/cloudevents+json; charset=utf-8",
            )],
            Some(body),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_alive(&node).await;
}

#[actix_web::test]
async fn dialog_writes_with_another_content_type_or_none_are_415() {
    let node = start("").await;
    let owner = node.tokens.owner_a.clone();
    let body = dialog_body().to_string().into_bytes();
    for headers in [
        &[("Content-Type", "text/plain")][..],
        &[("Content-Type", "application/xml")][..],
        &[("Content-Type", CE_JSON)][..],
        &[][..],
    ] {
        node.send("POST", DIALOGS, Some(&owner), headers, Some(body.clone()))
            .await
            .assert_problem(415, None);
    }
    let id = node.create_dialog(&dialog_body()).await;
    node.send(
        "PUT",
        &format!("{DIALOGS}/{id}"),
        Some(&owner),
        &[("Content-Type", "text/plain")],
        Some(body.clone()),
    )
    .await
    .assert_problem(415, None);
    node.send(
        "POST",
        &format!("{DIALOGS}/{id}/activities"),
        Some(&owner),
        &[],
        Some(br#"{"type":"Information"}"#.to_vec()),
    )
    .await
    .assert_problem(415, None);
    let r = node
        .send(
            "POST",
            DIALOGS,
            Some(&owner),
            &[("Content-Type", "application/json; charset=utf-8")],
            Some(body),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_alive(&node).await;
}

/// A create body of at least `size` bytes (a long `externalReference` pads it).
fn padded_body(size: usize) -> Vec<u8> {
    let body = body_with("externalReference", json!("x".repeat(size)));
    let bytes = body.to_string().into_bytes();
    assert!(bytes.len() >= size);
    bytes
}

#[actix_web::test]
async fn bodies_over_max_body_are_413() {
    let node = start("[http]\nmax_body = 1024").await;
    let owner = node.tokens.owner_a.clone();
    let big = padded_body(2048);
    node.send(
        "POST",
        DIALOGS,
        Some(&owner),
        &[("Content-Type", "application/json")],
        Some(big.clone()),
    )
    .await
    .assert_problem(413, None);
    let id = node.create_dialog(&dialog_body()).await;
    node.send(
        "PUT",
        &format!("{DIALOGS}/{id}"),
        Some(&owner),
        &[("Content-Type", "application/json")],
        Some(big),
    )
    .await
    .assert_problem(413, None);
    let mut event = cloud_event();
    event["data"] = json!({"blob": "y".repeat(2048)});
    node.send(
        "POST",
        EVENTS,
        Some(&owner),
        &[("Content-Type", CE_JSON)],
        Some(event.to_string().into_bytes()),
    )
    .await
    .assert_problem(413, None);
    // A body just under the limit is still served.
    let r = node.post(DIALOGS, &owner, &dialog_body()).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(
        types(&node.dialog_events(&id).await),
        ["dialogporten.dialog.created.v1"],
        "the oversized PUT changed nothing"
    );
    assert_alive(&node).await;
}

#[actix_web::test]
async fn streamed_body_without_content_length_over_max_body_is_413() {
    let node = start("[http]\nmax_body = 1024").await;
    let big = padded_body(2048);
    let chunks: Vec<Result<actix_web::web::Bytes, std::io::Error>> = big
        .chunks(256)
        .map(|c| Ok(actix_web::web::Bytes::copy_from_slice(c)))
        .collect();
    let mut resp = node
        .client
        .post(node.url(DIALOGS))
        .insert_header(("Authorization", format!("Bearer {}", node.tokens.owner_a)))
        .insert_header(("Content-Type", "application/json"))
        .send_stream(futures::stream::iter(chunks))
        .await
        .expect("the node answers a streamed body");
    let raw = resp.body().await.expect("body").to_vec();
    let reply = Reply {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw,
    };
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.body
    );
    reply.assert_problem(413, None);
    // The same body as a small stream is accepted, so the limit (not streaming) refused it.
    let small = dialog_body().to_string().into_bytes();
    let chunks: Vec<Result<actix_web::web::Bytes, std::io::Error>> = small
        .chunks(64)
        .map(|c| Ok(actix_web::web::Bytes::copy_from_slice(c)))
        .collect();
    let resp = node
        .client
        .post(node.url(DIALOGS))
        .insert_header(("Authorization", format!("Bearer {}", node.tokens.owner_a)))
        .insert_header(("Content-Type", "application/json"))
        .send_stream(futures::stream::iter(chunks))
        .await
        .expect("the node answers a streamed body");
    assert_eq!(resp.status().as_u16(), 201);
    assert_alive(&node).await;
}

#[actix_web::test]
async fn unknown_paths_are_404_and_wrong_methods_are_405_as_problem_json() {
    let node = start("").await;
    let owner = node.tokens.owner_a.clone();
    for path in ["/nope", "/api/v2/serviceowner/dialogs", "/api/v1/enduser"] {
        node.get(path, &owner).await.assert_problem(404, None);
        node.send("GET", path, None, &[], None)
            .await
            .assert_problem(404, None);
    }
    let id = node.create_dialog(&dialog_body()).await;
    for (method, path) in [
        ("PATCH", DIALOGS.to_owned()),
        ("DELETE", DIALOGS.to_owned()),
        ("PATCH", format!("{DIALOGS}/{id}")),
        ("POST", format!("{DIALOGS}/{id}")),
        ("GET", format!("{DIALOGS}/{id}/activities")),
        ("POST", "/api/v1/enduser/dialogs".to_owned()),
        ("PUT", EVENTS.to_owned()),
    ] {
        node.send(method, &path, Some(&owner), &[], None)
            .await
            .assert_problem(405, None);
    }
    assert_alive(&node).await;
}

/// Asserts a 401 problem with a `WWW-Authenticate: Bearer` challenge.
fn assert_unauthorized(r: &Reply) {
    r.assert_problem(401, None);
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(challenge.starts_with("Bearer"), "{challenge}");
}

/// A body with its content type.
type TypedBody = Option<(&'static str, Vec<u8>)>;

/// Every kind of authenticated endpoint, with a body where it takes one.
fn protected_requests() -> Vec<(&'static str, String, TypedBody)> {
    let id = uuid::Uuid::now_v7();
    let json_body = Some(("application/json", dialog_body().to_string().into_bytes()));
    vec![
        ("POST", DIALOGS.to_owned(), json_body.clone()),
        ("GET", DIALOGS.to_owned(), None),
        ("GET", format!("{DIALOGS}/{id}"), None),
        ("PUT", format!("{DIALOGS}/{id}"), json_body),
        ("DELETE", format!("{DIALOGS}/{id}"), None),
        ("GET", "/api/v1/enduser/dialogs".to_owned(), None),
        ("GET", format!("/api/v1/enduser/dialogs/{id}"), None),
        ("GET", format!("{EVENTS}?resource={RESOURCE}&after=0"), None),
        (
            "POST",
            EVENTS.to_owned(),
            Some((CE_JSON, cloud_event().to_string().into_bytes())),
        ),
        ("GET", "/admin/v1/resources".to_owned(), None),
        ("GET", "/admin/v1/delegations".to_owned(), None),
    ]
}

async fn send_with_auth(
    node: &TestNode,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &TypedBody,
) -> Reply {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = authorization {
        headers.push(("Authorization", a));
    }
    if let Some((ct, _)) = body {
        headers.push(("Content-Type", ct));
    }
    node.send(
        method,
        path,
        None,
        &headers,
        body.as_ref().map(|(_, b)| b.clone()),
    )
    .await
}

#[actix_web::test]
async fn missing_or_garbage_tokens_are_401_with_a_bearer_challenge() {
    let node = start("").await;
    let valid = node.tokens.owner_a.clone();
    let (header_b64, rest) = valid.split_once('.').expect("jws");
    let payload_b64 = rest.split_once('.').expect("jws").0;
    let none_alg = format!(
        "{}.{payload_b64}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#)
    );
    let hs256 = format!(
        "{}.{payload_b64}.c2lnbmF0dXJl",
        base64_url(br#"{"alg":"HS256","typ":"JWT"}"#)
    );
    let truncated = format!("{header_b64}.{payload_b64}");
    let authorizations: Vec<Option<String>> = vec![
        None,
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Bearer garbage".to_owned()),
        Some("Bearer a.b.c".to_owned()),
        Some(format!("Basic {valid}")),
        Some(format!("Bearer {none_alg}")),
        Some(format!("Bearer {hs256}")),
        Some(format!("Bearer {truncated}")),
    ];
    for (method, path, body) in protected_requests() {
        for auth in &authorizations {
            let r = send_with_auth(&node, method, &path, auth.as_deref(), &body).await;
            assert_eq!(
                r.status.as_u16(),
                401,
                "{method} {path} with {auth:?}: {}",
                r.body
            );
            assert_unauthorized(&r);
        }
    }
    assert_alive(&node).await;
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[actix_web::test]
async fn tokens_signed_by_another_key_are_401() {
    let node = start("").await;
    let foreign = SigningKey::generate();
    let scope = format!("{SO} {SUB} {PUB}");
    let org_a = Party::organization(ORG_A).expect("org");
    let other_key = dev_token(&foreign, &scope, Some(&org_a), Duration::from_secs(3600));
    // The node's own header and claims with a signature made by another key.
    let (signed, _) = node.tokens.owner_a.rsplit_once('.').expect("jws");
    let (_, foreign_sig) = foreign
        .sign_jwt(&json!({"x": 1}))
        .rsplit_once('.')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .expect("jws");
    let forged = format!("{signed}.{foreign_sig}");
    // The node's own token with its claims changed after signing.
    let mut parts = node.tokens.person_1.split('.');
    let (h, _, s) = (
        parts.next().expect("h"),
        parts.next().expect("p"),
        parts.next().expect("s"),
    );
    let tampered_claims = json!({
        "iss": dialog_events::auth::DEV_ISSUER,
        "exp": chrono::Utc::now().timestamp() + 3600,
        "scope": scope,
        "consumer": {"authority": "iso6523-actorid-upis", "ID": format!("0192:{ORG_A}")},
    });
    let tampered = format!(
        "{h}.{}.{s}",
        base64_url(tampered_claims.to_string().as_bytes())
    );
    for token in [&other_key, &forged, &tampered] {
        for (method, path, body) in protected_requests() {
            let auth = format!("Bearer {token}");
            let r = send_with_auth(&node, method, &path, Some(&auth), &body).await;
            assert_eq!(r.status.as_u16(), 401, "{method} {path}: {}", r.body);
            assert_unauthorized(&r);
        }
    }
    // Nothing was created with them.
    let r = node.get(DIALOGS, &node.tokens.owner_a).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.body["items"], json!([]));
    assert_alive(&node).await;
}

#[actix_web::test]
async fn tokens_of_an_untrusted_issuer_are_401() {
    let node = start("").await;
    let key = SigningKey::generate();
    let now = chrono::Utc::now().timestamp();
    for iss in [
        "https://evil.example/",
        "",
        "urn:dialog-events:dev-issuer-2",
    ] {
        let token = key.sign_jwt(&json!({
            "iss": iss,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "scope": format!("{SO} {SUB} {PUB} {ADMIN}"),
            "consumer": {"authority": "iso6523-actorid-upis", "ID": format!("0192:{ORG_A}")},
        }));
        for (method, path, body) in protected_requests() {
            let auth = format!("Bearer {token}");
            let r = send_with_auth(&node, method, &path, Some(&auth), &body).await;
            assert_eq!(r.status.as_u16(), 401, "{iss} {method} {path}: {}", r.body);
            assert_unauthorized(&r);
        }
    }
    // A token with no issuer at all.
    let token = key.sign_jwt(&json!({"exp": now + 3600, "scope": SO}));
    let r = node.get(DIALOGS, &token).await;
    assert_unauthorized(&r);
    assert_alive(&node).await;
}

#[actix_web::test]
async fn expired_tokens_are_401() {
    let node = start("[auth]\nclock_leeway = \"0s\"").await;
    let scope = format!("{SO} {SUB} {PUB}");
    let org_a = || Some(Party::organization(ORG_A).expect("org"));
    let expired = node.mint(&scope, org_a(), Duration::ZERO);
    // exp is whole seconds: after 1.1 s the current second is past it, with no leeway.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (method, path, body) in protected_requests() {
        let auth = format!("Bearer {expired}");
        let r = send_with_auth(&node, method, &path, Some(&auth), &body).await;
        assert_eq!(r.status.as_u16(), 401, "{method} {path}: {}", r.body);
        assert_unauthorized(&r);
    }
    // A fresh token of the same issuer is accepted, so expiry (not the key) refused the other.
    let fresh = node.mint(&scope, org_a(), Duration::from_secs(60));
    let r = node.get(DIALOGS, &fresh).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_alive(&node).await;
}

#[actix_web::test]
async fn a_node_keeps_serving_after_a_burst_of_bad_requests() {
    let node = start("[http]\nmax_body = 1024").await;
    let owner = node.tokens.owner_a.clone();
    let bad_bodies: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        vec![0xff; 512],
        b"{\"status\":\"Bogus\"}".to_vec(),
        padded_body(4096),
        "[".repeat(1000).into_bytes(),
        format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200)).into_bytes(),
    ];
    let mut requests = Vec::new();
    for body in &bad_bodies {
        for headers in [
            &[("Content-Type", "application/json")],
            &[("Content-Type", "text/plain")],
        ] {
            requests.push(node.send("POST", DIALOGS, Some(&owner), headers, Some(body.clone())));
        }
    }
    let replies = futures::future::join_all(requests).await;
    for r in &replies {
        let status = r.status.as_u16();
        assert!(
            [400, 413, 415].contains(&status),
            "bad input is refused as such, got {status}: {}",
            r.body
        );
        r.assert_problem(status, None);
    }
    let r = node.send("GET", "/health/ready", None, &[], None).await;
    assert_eq!(r.status.as_u16(), 200);
    let id = node.create_dialog(&dialog_body()).await;
    assert_eq!(
        types(&node.dialog_events(&id).await),
        ["dialogporten.dialog.created.v1"]
    );
    assert_alive(&node).await;
}
