//! The authorization matrix (SPEC 3): who may write, read, poll, publish and administer what, with
//! every denial an exact status as `application/problem+json`.

mod common;

use std::time::Duration;

use common::*;
use dialog_events::domain::Party;
use serde_json::{Value, json};

const DIALOGS: &str = "/api/v1/serviceowner/dialogs";
const END_USER: &str = "/api/v1/enduser/dialogs";
const EVENTS: &str = "/events/api/v1/events";
const CE_JSON: &str = "application/cloudevents+json";
const NEW_RESOURCE: &str = "urn:altinn:resource:brand-new-service";
const UNREGISTERED: &str = "urn:altinn:resource:not-in-the-registry";
const HOUR: Duration = Duration::from_secs(3600);

fn org(n: &str) -> Option<Party> {
    Some(Party::organization(n).expect("org"))
}

fn person(n: &str) -> Option<Party> {
    Some(Party::person(n).expect("pid"))
}

fn body_for(resource: &str, party: &str) -> Value {
    let mut body = dialog_body();
    body["serviceResource"] = json!(resource);
    body["party"] = json!(party);
    body
}

/// One request of the service-owner API, by name, with its body.
struct OwnerCall {
    name: &'static str,
    method: &'static str,
    path: String,
    body: Option<Value>,
}

/// Every service-owner read and write of dialog `id`, in an order that works for its owner.
fn owner_calls(id: &str) -> Vec<OwnerCall> {
    let path = format!("{DIALOGS}/{id}");
    let call = |name, method, path: String, body: Option<Value>| OwnerCall {
        name,
        method,
        path,
        body,
    };
    let mut updated = dialog_body();
    updated["status"] = json!("Awaiting");
    vec![
        call("get", "GET", path.clone(), None),
        call(
            "get as end user",
            "GET",
            format!("{path}?endUserId={}", person_urn(PERSON_1)),
            None,
        ),
        call("put", "PUT", path.clone(), Some(updated)),
        call(
            "add activity",
            "POST",
            format!("{path}/activities"),
            Some(json!({"type": "Information"})),
        ),
        call(
            "add transmission",
            "POST",
            format!("{path}/transmissions"),
            Some(
                json!({"type": "Information", "sender": {"actorType": "ServiceOwner"},
                "content": {"title": [{"value": "Vedtak", "languageCode": "nb"}]}}),
            ),
        ),
        call("delete", "DELETE", path.clone(), None),
        call("restore", "POST", format!("{path}/actions/restore"), None),
        call("purge", "POST", format!("{path}/actions/purge"), None),
    ]
}

async fn send_call(node: &TestNode, call: &OwnerCall, token: &str) -> Reply {
    match &call.body {
        Some(body) => node.json(call.method, &call.path, token, body).await,
        None => {
            node.send(call.method, &call.path, Some(token), &[], None)
                .await
        }
    }
}

/// Asserts `token` gets 403 problem+json on every service-owner call of dialog `id`, and that the
/// dialog is untouched afterwards.
async fn assert_owner_api_denied(node: &TestNode, id: &str, who: &str, token: &str) {
    for call in owner_calls(id) {
        let r = send_call(node, &call, token).await;
        assert_eq!(
            r.status.as_u16(),
            403,
            "{who}: {} {} {}: {}",
            call.name,
            call.method,
            call.path,
            r.body
        );
        r.assert_problem(403, None);
    }
    let read = node
        .get(&format!("{DIALOGS}/{id}"), &node.tokens.owner_a)
        .await;
    assert_eq!(read.status.as_u16(), 200, "{who}: the dialog still exists");
    assert_eq!(read.body["status"], "InProgress", "{who}: unchanged");
    assert!(read.body.get("deletedAt").is_none(), "{who}: not deleted");
    assert_eq!(
        read.body["activities"],
        json!([]),
        "{who}: no activity added"
    );
    assert_eq!(
        read.body["transmissions"],
        json!([]),
        "{who}: no transmission added"
    );
    assert_eq!(
        read.body["seenSinceLastUpdate"],
        json!([]),
        "{who}: no seen entry"
    );
    assert_eq!(
        types(&node.dialog_events(id).await),
        ["dialogporten.dialog.created.v1"],
        "{who}: no event"
    );
}

#[actix_web::test]
async fn owner_of_the_resource_may_read_and_write_its_dialog() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let expected = [200, 200, 204, 201, 201, 204, 204, 204];
    for (call, status) in owner_calls(&id).iter().zip(expected) {
        let r = send_call(&node, call, &node.tokens.owner_a).await;
        assert_eq!(r.status.as_u16(), status, "{}: {}", call.name, r.body);
    }
    node.get(&format!("{DIALOGS}/{id}"), &node.tokens.owner_a)
        .await
        .assert_problem(404, None);
}

#[actix_web::test]
async fn other_service_owner_cannot_read_or_write_the_dialog() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    assert_owner_api_denied(&node, &id, "owner_b", &node.tokens.owner_b).await;
    // A listed subscriber of the resource receives its events but is not its owner.
    assert_owner_api_denied(&node, &id, "org_c", &node.tokens.org_c).await;
}

#[actix_web::test]
async fn other_service_owner_cannot_list_the_dialogs_of_a_resource_it_does_not_own() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let r = node
        .get(
            &format!("{DIALOGS}?serviceResource={RESOURCE}"),
            &node.tokens.owner_b,
        )
        .await;
    r.assert_problem(403, None);
    let r = node.get(DIALOGS, &node.tokens.owner_b).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["items"], json!([]));
    let r = node.get(DIALOGS, &node.tokens.owner_a).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["items"][0]["id"], id.as_str());
}

#[actix_web::test]
async fn end_user_and_other_tokens_without_the_service_owner_scope_cannot_use_the_service_owner_api()
 {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let no_so_scope = node.mint(&format!("{SUB} {PUB}"), org(ORG_A), HOUR);
    let so_without_party = node.mint(SO, None, HOUR);
    let tokens = [
        ("person_1 (the party)", node.tokens.person_1.clone()),
        ("person_2 (delegate)", node.tokens.person_2.clone()),
        ("stranger", node.tokens.stranger.clone()),
        ("admin", node.tokens.admin.clone()),
        ("ORG_A without the serviceprovider scope", no_so_scope),
        ("serviceprovider scope without a party", so_without_party),
    ];
    for (who, token) in &tokens {
        assert_owner_api_denied(&node, &id, who, token).await;
        node.post(DIALOGS, token, &dialog_body())
            .await
            .assert_problem(403, None);
        node.get(DIALOGS, token).await.assert_problem(403, None);
    }
    let r = node.get(DIALOGS, &node.tokens.owner_a).await;
    assert_eq!(
        r.body["items"].as_array().expect("items").len(),
        1,
        "no denied create made a dialog"
    );
}

#[actix_web::test]
async fn service_owner_cannot_create_dialogs_for_resources_it_does_not_own_or_that_are_not_registered()
 {
    let node = start("").await;
    let owner_a = node.tokens.owner_a.clone();
    node.post(
        DIALOGS,
        &owner_a,
        &body_for(OTHER_RESOURCE, &person_urn(PERSON_1)),
    )
    .await
    .assert_problem(403, None);
    node.post(
        DIALOGS,
        &owner_a,
        &body_for(UNREGISTERED, &person_urn(PERSON_1)),
    )
    .await
    .assert_problem(403, None);
    node.post(DIALOGS, &node.tokens.owner_b, &dialog_body())
        .await
        .assert_problem(403, None);
    node.post(DIALOGS, &node.tokens.org_c, &dialog_body())
        .await
        .assert_problem(403, None);
    // Nothing was created: neither owner lists a dialog, no event was logged.
    for token in [&owner_a, &node.tokens.owner_b] {
        let r = node.get(DIALOGS, token).await;
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.body["items"], json!([]));
    }
    assert!(node.poll_all(&owner_a, "").await.is_empty());
    // The owners may create for their own resources.
    let r = node
        .post(
            DIALOGS,
            &node.tokens.owner_b,
            &body_for(OTHER_RESOURCE, &person_urn(PERSON_1)),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let r = node.post(DIALOGS, &owner_a, &dialog_body()).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
}

#[actix_web::test]
async fn end_user_reads_the_details_of_own_and_delegated_dialogs_only() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let path = format!("{END_USER}/{id}");
    for (who, token) in [
        ("person_1", &node.tokens.person_1),
        ("person_2", &node.tokens.person_2),
    ] {
        let r = node.get(&path, token).await;
        assert_eq!(r.status.as_u16(), 200, "{who}: {}", r.body);
        assert_eq!(r.body["id"], id.as_str());
        assert!(r.body["dialogToken"].is_string(), "{who}: dialog token");
    }
    let no_eu_scope = node.mint(SUB, person(PERSON_1), HOUR);
    let eu_without_party = node.mint(EU, None, HOUR);
    for (who, token) in [
        ("stranger", node.tokens.stranger.clone()),
        ("owner_a (no end-user scope)", node.tokens.owner_a.clone()),
        ("org_c", node.tokens.org_c.clone()),
        ("admin", node.tokens.admin.clone()),
        ("person_1 without the end-user scope", no_eu_scope),
        ("end-user scope without a party", eu_without_party),
    ] {
        let r = node.get(&path, &token).await;
        assert_eq!(r.status.as_u16(), 403, "{who}: {}", r.body);
        r.assert_problem(403, None);
    }
    // Denied reads leave no trace in the seen log: only the two allowed readers are there.
    let read = node
        .get(&format!("{DIALOGS}/{id}"), &node.tokens.owner_a)
        .await;
    let seen: Vec<&str> = read.body["seenSinceLastUpdate"]
        .as_array()
        .expect("seen")
        .iter()
        .map(|s| s["seenBy"]["actorId"].as_str().expect("actorId"))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(!seen.contains(&person_urn(STRANGER).as_str()));
}

#[actix_web::test]
async fn end_users_cannot_see_deleted_dialogs_of_others_either() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let r = node
        .send(
            "DELETE",
            &format!("{DIALOGS}/{id}"),
            Some(&node.tokens.owner_a),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    let path = format!("{END_USER}/{id}");
    node.get(&path, &node.tokens.person_1)
        .await
        .assert_problem(410, None);
    node.get(&path, &node.tokens.stranger)
        .await
        .assert_problem(403, None);
}

#[actix_web::test]
async fn delegation_covers_only_the_delegated_resource() {
    let node = start("").await;
    let r = node
        .post(
            DIALOGS,
            &node.tokens.owner_b,
            &body_for(OTHER_RESOURCE, &person_urn(PERSON_1)),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let other = r.body.as_str().expect("id").to_owned();
    let path = format!("{END_USER}/{other}");
    let r = node.get(&path, &node.tokens.person_1).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    node.get(&path, &node.tokens.person_2)
        .await
        .assert_problem(403, None);
    let list = node.get(END_USER, &node.tokens.person_2).await;
    assert_eq!(list.status.as_u16(), 200);
    assert_eq!(list.body["items"], json!([]));
}

fn item_ids(r: &Reply) -> Vec<String> {
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}

#[actix_web::test]
async fn end_user_list_shows_own_and_delegated_dialogs_only() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    // A dialog of another party that nobody here may read as an end user.
    let other = node
        .create_dialog(&body_for(RESOURCE, &person_urn("22222222222")))
        .await;
    for (who, token) in [
        ("person_1", &node.tokens.person_1),
        ("person_2", &node.tokens.person_2),
    ] {
        let ids = item_ids(&node.get(END_USER, token).await);
        assert_eq!(ids, std::slice::from_ref(&id), "{who}");
    }
    assert!(item_ids(&node.get(END_USER, &node.tokens.stranger).await).is_empty());
    let as_p1 = format!("{END_USER}?party={}", person_urn(PERSON_1));
    assert_eq!(
        item_ids(&node.get(&as_p1, &node.tokens.person_2).await),
        std::slice::from_ref(&id)
    );
    assert!(!item_ids(&node.get(&as_p1, &node.tokens.person_1).await).contains(&other));

    node.get(&as_p1, &node.tokens.stranger)
        .await
        .assert_problem(403, None);
    node.get(
        &format!("{END_USER}?party={}", person_urn(PERSON_2)),
        &node.tokens.person_1,
    )
    .await
    .assert_problem(403, None);
    node.get(
        &format!("{END_USER}?party={}", person_urn("22222222222")),
        &node.tokens.person_2,
    )
    .await
    .assert_problem(403, None);
    node.get(END_USER, &node.tokens.owner_a)
        .await
        .assert_problem(403, None);
}

#[actix_web::test]
async fn poll_returns_events_only_to_those_who_may_receive_them() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let r = node
        .post(
            &format!("{DIALOGS}/{id}/activities"),
            &node.tokens.owner_a,
            &json!({"type": "Information"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201);
    let all = node.poll_all(&node.tokens.owner_a, "").await;
    assert_eq!(
        types(&all),
        [
            "dialogporten.dialog.created.v1",
            "dialogporten.dialog.updated.v1",
            "dialogporten.dialog.activity.information.v1",
        ]
    );
    for (who, token) in [
        ("org_c (listed subscriber)", &node.tokens.org_c),
        ("person_1 (subject)", &node.tokens.person_1),
        ("person_2 (delegate)", &node.tokens.person_2),
    ] {
        assert_eq!(node.poll_all(token, "").await, all, "{who}");
    }
    let query = format!("{EVENTS}?resource={RESOURCE}&after=0");
    for (who, token) in [
        ("stranger", &node.tokens.stranger),
        ("owner_b", &node.tokens.owner_b),
    ] {
        let r = node.get(&query, token).await;
        assert_eq!(r.status.as_u16(), 200, "{who}: {}", r.body);
        assert_eq!(r.body, json!([]), "{who} sees no event");
    }
    let no_subscribe = node.mint(EU, person(PERSON_1), HOUR);
    let so_only = node.mint(SO, org(ORG_A), HOUR);
    let subscribe_without_party = node.mint(SUB, None, HOUR);
    for (who, token) in [
        ("end-user scope only", &no_subscribe),
        ("serviceprovider scope only", &so_only),
        ("subscribe scope without a party", &subscribe_without_party),
        ("admin", &node.tokens.admin),
    ] {
        let r = node.get(&query, token).await;
        assert_eq!(r.status.as_u16(), 403, "{who}: {}", r.body);
        r.assert_problem(403, None);
    }
}

#[actix_web::test]
async fn poll_of_another_resource_shows_nothing_of_it_to_a_non_receiver() {
    let node = start("").await;
    let r = node
        .post(
            DIALOGS,
            &node.tokens.owner_b,
            &body_for(OTHER_RESOURCE, &person_urn(STRANGER)),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let query = format!("{EVENTS}?resource={OTHER_RESOURCE}&after=0");
    let r = node.get(&query, &node.tokens.owner_b).await;
    assert_eq!(r.body.as_array().expect("events").len(), 1);
    // STRANGER is the subject here, so sees it; ORG_A and ORG_C (subscriber of RESOURCE only) do not.
    let r = node.get(&query, &node.tokens.stranger).await;
    assert_eq!(r.body.as_array().expect("events").len(), 1);
    for token in [
        &node.tokens.owner_a,
        &node.tokens.org_c,
        &node.tokens.person_1,
    ] {
        let r = node.get(&query, token).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        assert_eq!(r.body, json!([]));
    }
}

fn cloud_event(resource: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": uuid::Uuid::new_v4().to_string(),
        "source": "https://example.org/apps/case-handler",
        "type": "no.example.case.decided",
        "resource": resource,
        "subject": person_urn(PERSON_1),
    })
}

async fn publish(node: &TestNode, token: &str, event: &Value) -> Reply {
    node.send(
        "POST",
        EVENTS,
        Some(token),
        &[("Content-Type", CE_JSON)],
        Some(event.to_string().into_bytes()),
    )
    .await
}

#[actix_web::test]
async fn only_the_resource_owner_with_the_publish_scope_may_publish_its_events() {
    let node = start("").await;
    let event = cloud_event(RESOURCE);
    let r = publish(&node, &node.tokens.owner_a, &event).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let no_publish = node.mint(&format!("{SO} {SUB}"), org(ORG_A), HOUR);
    let denied = [
        (
            "owner_b",
            node.tokens.owner_b.clone(),
            cloud_event(RESOURCE),
        ),
        (
            "org_c (subscriber)",
            node.tokens.org_c.clone(),
            cloud_event(RESOURCE),
        ),
        (
            "person_1",
            node.tokens.person_1.clone(),
            cloud_event(RESOURCE),
        ),
        (
            "ORG_A without publish scope",
            no_publish,
            cloud_event(RESOURCE),
        ),
        (
            "owner_a for OTHER_RESOURCE",
            node.tokens.owner_a.clone(),
            cloud_event(OTHER_RESOURCE),
        ),
        (
            "owner_a for an unregistered resource",
            node.tokens.owner_a.clone(),
            cloud_event(UNREGISTERED),
        ),
    ];
    for (who, token, event) in &denied {
        let r = publish(&node, token, event).await;
        assert_eq!(r.status.as_u16(), 403, "{who}: {}", r.body);
        r.assert_problem(403, None);
    }
    // Only the allowed event reached the log.
    let events = node.poll_all(&node.tokens.owner_a, "").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], event["id"]);
    let other = node
        .get(
            &format!("{EVENTS}?resource={OTHER_RESOURCE}&after=0"),
            &node.tokens.owner_b,
        )
        .await;
    assert_eq!(other.body, json!([]));
}

/// Every admin call with a body that is valid, in an order that works for an admin.
fn admin_calls() -> Vec<(&'static str, String, Option<Value>, u16)> {
    let delegation = json!({
        "from": person_urn(PERSON_1),
        "to": person_urn(STRANGER),
        "resources": [RESOURCE],
    });
    vec![
        (
            "PUT",
            format!("/admin/v1/resources/{NEW_RESOURCE}"),
            Some(json!({"owner": org_urn(ORG_B), "subscribers": []})),
            200,
        ),
        ("GET", "/admin/v1/resources".to_owned(), None, 200),
        (
            "DELETE",
            format!("/admin/v1/resources/{NEW_RESOURCE}"),
            None,
            204,
        ),
        ("GET", "/admin/v1/delegations".to_owned(), None, 200),
        (
            "POST",
            "/admin/v1/delegations".to_owned(),
            Some(delegation.clone()),
            201,
        ),
        (
            "DELETE",
            "/admin/v1/delegations".to_owned(),
            Some(delegation),
            204,
        ),
    ]
}

async fn send_admin(
    node: &TestNode,
    method: &str,
    path: &str,
    body: &Option<Value>,
    token: &str,
) -> Reply {
    match body {
        Some(b) => node.json(method, path, token, b).await,
        None => node.send(method, path, Some(token), &[], None).await,
    }
}

#[actix_web::test]
async fn admin_api_requires_the_admin_scope() {
    let node = start("").await;
    let everything = node.mint(&format!("{SO} {EU} {SUB} {PUB}"), org(ORG_A), HOUR);
    let tokens = [
        ("owner_a", node.tokens.owner_a.clone()),
        ("owner_b", node.tokens.owner_b.clone()),
        ("org_c", node.tokens.org_c.clone()),
        ("person_1", node.tokens.person_1.clone()),
        ("stranger", node.tokens.stranger.clone()),
        ("every scope but admin", everything),
    ];
    for (who, token) in &tokens {
        for (method, path, body, _) in admin_calls() {
            let r = send_admin(&node, method, &path, &body, token).await;
            assert_eq!(r.status.as_u16(), 403, "{who}: {method} {path}: {}", r.body);
            r.assert_problem(403, None);
        }
    }
    // The denied writes changed nothing.
    let r = node.get("/admin/v1/resources", &node.tokens.admin).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let ids: Vec<&str> = r.body["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [OTHER_RESOURCE, RESOURCE]);
    let r = node.get("/admin/v1/delegations", &node.tokens.admin).await;
    assert_eq!(
        r.body["delegations"].as_array().expect("delegations").len(),
        1
    );

    for (method, path, body, status) in admin_calls() {
        let r = send_admin(&node, method, &path, &body, &node.tokens.admin).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "admin: {method} {path}: {}",
            r.body
        );
    }
}

#[actix_web::test]
async fn revoking_a_delegation_stops_the_delegates_access_immediately() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let path = format!("{END_USER}/{id}");
    let r = node.get(&path, &node.tokens.person_2).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert!(!node.poll_all(&node.tokens.person_2, "").await.is_empty());

    let delegation = json!({
        "from": person_urn(PERSON_1),
        "to": person_urn(PERSON_2),
        "resources": [RESOURCE],
    });
    let r = node
        .json(
            "DELETE",
            "/admin/v1/delegations",
            &node.tokens.admin,
            &delegation,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    let r = node.get("/admin/v1/delegations", &node.tokens.admin).await;
    assert_eq!(r.body["delegations"], json!([]));

    node.get(&path, &node.tokens.person_2)
        .await
        .assert_problem(403, None);
    assert!(item_ids(&node.get(END_USER, &node.tokens.person_2).await).is_empty());
    node.get(
        &format!("{END_USER}?party={}", person_urn(PERSON_1)),
        &node.tokens.person_2,
    )
    .await
    .assert_problem(403, None);
    assert!(
        node.poll_all(&node.tokens.person_2, "").await.is_empty(),
        "a revoked delegate polls no events"
    );
    // The party itself is unaffected.
    let r = node.get(&path, &node.tokens.person_1).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    // Revoking it again: there is nothing to revoke.
    node.json(
        "DELETE",
        "/admin/v1/delegations",
        &node.tokens.admin,
        &delegation,
    )
    .await
    .assert_problem(404, None);
}

#[actix_web::test]
async fn granting_a_delegation_lets_the_delegate_read_immediately() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let path = format!("{END_USER}/{id}");
    node.get(&path, &node.tokens.stranger)
        .await
        .assert_problem(403, None);
    let delegation = json!({
        "from": person_urn(PERSON_1),
        "to": person_urn(STRANGER),
        "resources": [RESOURCE],
    });
    let r = node
        .post("/admin/v1/delegations", &node.tokens.admin, &delegation)
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let r = node.get(&path, &node.tokens.stranger).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(
        item_ids(&node.get(END_USER, &node.tokens.stranger).await),
        [id]
    );
    assert!(!node.poll_all(&node.tokens.stranger, "").await.is_empty());
}

#[actix_web::test]
async fn registering_a_resource_lets_its_owner_create_dialogs_for_it() {
    let node = start("").await;
    let body = body_for(NEW_RESOURCE, &person_urn(PERSON_1));
    node.post(DIALOGS, &node.tokens.owner_b, &body)
        .await
        .assert_problem(403, None);

    let r = node
        .put(
            &format!("/admin/v1/resources/{NEW_RESOURCE}"),
            &node.tokens.admin,
            &json!({"owner": org_urn(ORG_B), "subscribers": []}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = node.get("/admin/v1/resources", &node.tokens.admin).await;
    assert!(
        r.body["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|e| e["id"] == NEW_RESOURCE && e["owner"] == org_urn(ORG_B).as_str()),
        "{}",
        r.body
    );

    let r = node.post(DIALOGS, &node.tokens.owner_b, &body).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let id = r.body.as_str().expect("id").to_owned();
    let r = node
        .get(&format!("{DIALOGS}/{id}"), &node.tokens.owner_b)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    node.get(&format!("{DIALOGS}/{id}"), &node.tokens.owner_a)
        .await
        .assert_problem(403, None);
    node.post(DIALOGS, &node.tokens.owner_a, &body)
        .await
        .assert_problem(403, None);

    let r = node
        .send(
            "DELETE",
            &format!("/admin/v1/resources/{NEW_RESOURCE}"),
            Some(&node.tokens.admin),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    node.post(DIALOGS, &node.tokens.owner_b, &body)
        .await
        .assert_problem(403, None);
}

#[actix_web::test]
async fn transferring_a_resource_moves_the_owner_rights_immediately() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let path = format!("{DIALOGS}/{id}");
    let r = node
        .put(
            &format!("/admin/v1/resources/{RESOURCE}"),
            &node.tokens.admin,
            &json!({"owner": org_urn(ORG_B), "subscribers": [org_urn(ORG_C)]}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    node.get(&path, &node.tokens.owner_a)
        .await
        .assert_problem(403, None);
    let r = node.get(&path, &node.tokens.owner_b).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = node
        .post(
            &format!("{path}/activities"),
            &node.tokens.owner_b,
            &json!({"type": "Information"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let query = format!("{EVENTS}?resource={RESOURCE}&after=0");
    let r = node.get(&query, &node.tokens.owner_a).await;
    assert_eq!(r.body, json!([]), "the former owner receives nothing");
    assert_eq!(node.poll_all(&node.tokens.owner_b, "").await.len(), 3);
}
