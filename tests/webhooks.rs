//! Webhooks (SPEC 7): the subscription API, validation, signed delivery, filters, retry with
//! backoff and `Retry-After`, 410 Gone, dead letters and redrive, per (subscription, dialog)
//! ordering, authorization re-checked at delivery, the address guard, replay, metrics and the
//! per-endpoint in-flight limit. Every endpoint is a real HTTP receiver on loopback.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::receiver::*;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use uuid::Uuid;

const SUBS: &str = "/events/api/v1/subscriptions";
const VALIDATION_TYPE: &str = "platform.events.validatesubscription";
/// The dispatcher's poll interval in these tests.
const POLL: Duration = Duration::from_millis(20);
/// How long a negative check ("nothing arrives") waits: many poll intervals, still bounded.
const QUIET: Duration = Duration::from_millis(300);
/// Deadline for things that should happen within a few poll intervals.
const SOON: Duration = Duration::from_secs(20);

/// `[webhooks]` for loopback receivers, with `extra` keys of that table.
fn hooks(extra: &str) -> String {
    format!(
        "[webhooks]\nallow_http = true\nallow_private_networks = true\npoll_interval = \"{}ms\"\n{extra}",
        POLL.as_millis()
    )
}

fn sub_path(id: &str) -> String {
    format!("{SUBS}/{id}")
}

/// Creates a subscription, asserts 201 and waits until `GET` shows it validated; returns the
/// create response body (with the secret).
async fn subscribe_validated(node: &TestNode, token: &str, body: &Value) -> Value {
    let r = node.post(SUBS, token, body).await;
    assert_eq!(r.status.as_u16(), 201, "create subscription: {}", r.body);
    let id = r.body["id"].as_str().expect("subscription id").to_owned();
    eventually(SOON, "the subscription to be validated", || async {
        node.get(&sub_path(&id), token).await.body["validated"] == true
    })
    .await;
    r.body
}

/// A receiver with a validated subscription of ORG_A to every event of RESOURCE.
async fn subscribed_receiver(node: &TestNode) -> Receiver {
    let rx = Receiver::start().await;
    subscribe_validated(
        node,
        &node.tokens.owner_a,
        &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
    )
    .await;
    rx
}

/// One node on the suite's single-node store (whatever the suite's backend), its dispatcher
/// polling every `interval` unless woken, with `extra` configuration, and a receiver subscribed
/// as by `subscribed_receiver`.
async fn one_node_polling_every(interval: &str, extra: &str) -> (TestNode, Receiver) {
    let config = format!(
        "[webhooks]\nallow_http = true\nallow_private_networks = true\npoll_interval = {interval:?}\n{extra}"
    );
    let node = start_on(&config, None).await;
    let rx = subscribed_receiver(&node).await;
    (node, rx)
}

/// The id of a subscription create response.
fn id_of(sub: &Value) -> String {
    sub["id"].as_str().expect("subscription id").to_owned()
}

/// Every event of `resource` the caller may see (the poll API), following `next` pages.
async fn poll(node: &TestNode, token: &str, resource: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = format!("/events/api/v1/events?resource={resource}&after=0&size=1000{query}");
    for _ in 0..100 {
        let r = node.get(&path, token).await;
        assert_eq!(r.status.as_u16(), 200, "poll failed: {}", r.body);
        let page = r.body.as_array().expect("array").clone();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
        path = path_of(&r.header("next").expect("next header"));
    }
    panic!("the poll API did not reach its end in 100 pages");
}

fn id(event: &Value) -> String {
    event["id"].as_str().expect("event id").to_owned()
}

fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(id).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Event requests of one dialog, in arrival order.
fn of_dialog(rx: &Receiver, dialog: &str) -> Vec<Received> {
    rx.events()
        .into_iter()
        .filter(|r| r.json()["resourceinstance"] == dialog)
        .collect()
}

/// Requests carrying the event (or validation) `webhook_id`, in arrival order.
fn with_id(rx: &Receiver, webhook_id: &str) -> Vec<Received> {
    rx.requests()
        .into_iter()
        .filter(|r| r.header("webhook-id") == webhook_id)
        .collect()
}

fn received_ids(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| id(&r.json())).collect()
}

/// Whether the receiver has seen every one of `wanted` at least once.
fn has_all(received: &[Received], wanted: &[String]) -> bool {
    let seen: HashSet<String> = received
        .iter()
        .filter_map(|r| r.json()["id"].as_str().map(str::to_owned))
        .collect();
    wanted.iter().all(|w| seen.contains(w))
}

/// A create body for a dialog with a client-chosen id.
fn dialog_with_id(id: &str) -> Value {
    let mut body = dialog_body();
    body["id"] = json!(id);
    body
}

async fn add_activity(node: &TestNode, dialog: &str, kind: &str) {
    let r = node
        .post(
            &format!("/api/v1/serviceowner/dialogs/{dialog}/activities"),
            &node.tokens.owner_a,
            &json!({ "type": kind }),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "add activity: {}", r.body);
}

/// Delivery records of one event from `GET …/deliveries`, by attempt.
async fn deliveries_of(node: &TestNode, token: &str, sub: &str, event: &str) -> Vec<Value> {
    let r = node
        .get(&format!("{}/deliveries", sub_path(sub)), token)
        .await;
    assert_eq!(r.status.as_u16(), 200, "deliveries: {}", r.body);
    assert_eq!(
        r.body["count"].as_u64(),
        r.body["deliveries"].as_array().map(|a| a.len() as u64),
        "{}",
        r.body
    );
    let mut list: Vec<Value> = r.body["deliveries"]
        .as_array()
        .expect("deliveries array")
        .iter()
        .filter(|d| d["eventId"] == event)
        .cloned()
        .collect();
    list.sort_by_key(|d| d["attempt"].as_u64());
    list
}

/// The sum of a Prometheus sample `name` over the lines whose labels contain `label`.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Dead letters (admin view) of one subscription.
async fn dead_letters_of(node: &TestNode, sub: &str) -> Vec<Value> {
    let r = node.get("/admin/v1/dead-letters", &node.tokens.admin).await;
    assert_eq!(r.status.as_u16(), 200, "dead letters: {}", r.body);
    r.body["deadLetters"]
        .as_array()
        .expect("deadLetters array")
        .iter()
        .filter(|l| l["subscriptionId"] == sub)
        .cloned()
        .collect()
}

/// Standard Webhooks signature computed here, independently of the server's code.
fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("secret is base64 after whsec_");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn gap(a: &Received, b: &Received) -> Duration {
    b.at.duration_since(a.at)
}

fn assert_between(what: &str, d: Duration, low_ms: u64, high_ms: u64) {
    assert!(
        d >= Duration::from_millis(low_ms) && d <= Duration::from_millis(high_ms),
        "{what}: {d:?} is not within [{low_ms}ms, {high_ms}ms]"
    );
}

// 1. Validation.

#[actix_web::test]
async fn validation_is_retried_on_its_schedule_and_no_event_is_delivered_until_the_endpoint_accepts_it()
 {
    let node = start(&hooks("validation_schedule = [\"150ms\", \"1s\"]")).await;
    let rx = Receiver::start().await;
    rx.answer(500);
    let r = node
        .post(
            SUBS,
            &node.tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let sub = id_of(&r.body);

    rx.wait_for("two validation attempts", SOON, |r| r.len() >= 2)
        .await;
    let v = rx.validations();
    assert_eq!(v.len(), 2, "only validations so far");
    let first = v[0].json();
    let vid = first["id"].as_str().expect("validation id").to_owned();
    assert!(Uuid::parse_str(&vid).is_ok(), "validation id {vid:?}");
    assert_eq!(
        first,
        json!({
            "specversion": "1.0",
            "id": vid,
            "source": format!("{}/events/api/v1/subscriptions/{sub}", node.base),
            "type": VALIDATION_TYPE,
        }),
        "the validation handshake body"
    );
    assert_eq!(v[1].json()["type"], VALIDATION_TYPE);
    // validation_schedule[0] = 150ms ±10%.
    assert_between("validation gap 1", gap(&v[0], &v[1]), 135, 165 + 250);

    // Unvalidated: an event of the resource is not delivered.
    node.create_dialog(&dialog_body()).await;
    tokio::time::sleep(QUIET).await;
    assert!(
        rx.events().is_empty(),
        "an unvalidated subscription got events"
    );
    let got = node.get(&sub_path(&sub), &node.tokens.owner_a).await;
    assert_eq!(got.body["validated"], false, "{}", got.body);

    // The third attempt (validation_schedule[1] = 1s ±10%) is accepted.
    rx.answer(200);
    rx.wait_for("the third validation attempt", SOON, |r| r.len() >= 3)
        .await;
    let v = rx.validations();
    assert_eq!(v.len(), 3);
    assert_between("validation gap 2", gap(&v[1], &v[2]), 900, 1100 + 250);
    eventually(SOON, "validated = true", || async {
        node.get(&sub_path(&sub), &node.tokens.owner_a).await.body["validated"] == true
    })
    .await;

    // Validated: events now flow.
    let d = node.create_dialog(&dialog_body()).await;
    let expected = ids(&node.dialog_events(&d).await);
    rx.wait_for("the event after validation", SOON, |r| {
        has_all(r, &expected)
    })
    .await;
}

#[actix_web::test]
async fn re_posting_an_identical_subscription_returns_the_existing_one_and_sends_the_validation_again()
 {
    let node = start(&hooks("validation_schedule = [\"100ms\"]")).await;
    let rx = Receiver::start().await;
    rx.answer(500);
    let body = json!({"endPoint": rx.url, "resourceFilter": RESOURCE, "typeFilter": "dialogporten.dialog.created.v1"});
    let r = node.post(SUBS, &node.tokens.owner_a, &body).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let sub = id_of(&r.body);
    rx.wait_for("both validation attempts", SOON, |r| r.len() >= 2)
        .await;
    // The schedule has one retry: no third attempt comes by itself.
    tokio::time::sleep(QUIET).await;
    assert_eq!(rx.validations().len(), 2, "validation attempts");
    let got = node.get(&sub_path(&sub), &node.tokens.owner_a).await;
    assert_eq!(got.body["validated"], false);

    rx.answer(200);
    let again = node.post(SUBS, &node.tokens.owner_a, &body).await;
    assert_eq!(again.status.as_u16(), 200, "re-POST: {}", again.body);
    assert_eq!(
        again.body["id"],
        sub.as_str(),
        "re-POST returns the existing one"
    );
    rx.wait_for("the re-sent validation", SOON, |r| r.len() >= 3)
        .await;
    assert_eq!(rx.validations().len(), 3);
    eventually(SOON, "validated = true", || async {
        node.get(&sub_path(&sub), &node.tokens.owner_a).await.body["validated"] == true
    })
    .await;
    let list = node.get(SUBS, &node.tokens.owner_a).await;
    assert_eq!(
        list.body["count"], 1,
        "no second subscription: {}",
        list.body
    );

    let d = node.create_dialog(&dialog_body()).await;
    let expected = ids(&node.dialog_events(&d).await);
    rx.wait_for("the event", SOON, |r| has_all(r, &expected))
        .await;
}

// 2. The subscription API.

#[actix_web::test]
async fn create_returns_every_field_and_the_secret_which_get_and_list_never_show() {
    let node = start(&hooks("")).await;
    let rx = Receiver::start().await;
    let owner = &node.tokens.owner_a;
    let source = format!("{}/api/v1/enduser/dialogs/{}", node.base, Uuid::now_v7());
    let body = json!({
        "endPoint": rx.url,
        "resourceFilter": RESOURCE,
        "subjectFilter": person_urn(PERSON_1),
        "typeFilter": "dialogporten.dialog.activity.*",
        "sourceFilter": source,
    });
    let before = chrono::Utc::now();
    let r = node.post(SUBS, owner, &body).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let c = &r.body;
    let a1 = id_of(c);
    assert!(Uuid::parse_str(&a1).is_ok(), "id {a1:?}");
    assert_eq!(c["endPoint"], rx.url.as_str());
    assert_eq!(c["resourceFilter"], RESOURCE);
    assert_eq!(c["subjectFilter"], person_urn(PERSON_1).as_str());
    assert_eq!(c["typeFilter"], "dialogporten.dialog.activity.*");
    assert_eq!(c["sourceFilter"], source.as_str());
    assert_eq!(c["consumer"], org_urn(ORG_A).as_str());
    assert_eq!(c["createdBy"], org_urn(ORG_A).as_str());
    let created = chrono::DateTime::parse_from_rfc3339(c["created"].as_str().expect("created"))
        .expect("created is RFC 3339");
    let skew = chrono::Duration::seconds(5);
    assert!(
        created >= before - skew && created <= chrono::Utc::now() + skew,
        "created {created}"
    );
    assert_eq!(c["validated"], false);
    let secret = c["secret"].as_str().expect("secret").to_owned();
    let key = STANDARD
        .decode(
            secret
                .strip_prefix("whsec_")
                .expect("secret starts with whsec_"),
        )
        .expect("secret is whsec_ + base64");
    assert!(key.len() >= 16, "a secret of {} bytes", key.len());

    let got = node.get(&sub_path(&a1), owner).await;
    assert_eq!(got.status.as_u16(), 200);
    for field in [
        "id",
        "endPoint",
        "resourceFilter",
        "subjectFilter",
        "typeFilter",
        "sourceFilter",
        "consumer",
        "createdBy",
        "created",
    ] {
        assert_eq!(got.body[field], c[field], "GET {field}");
    }
    assert!(got.body.get("secret").is_none(), "GET shows the secret");
    assert!(
        !String::from_utf8_lossy(&got.raw).contains(&secret),
        "GET leaks the secret"
    );

    let a2 = id_of(
        &node
            .post(
                SUBS,
                owner,
                &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
            )
            .await
            .body,
    );
    let c1 = node
        .post(
            SUBS,
            &node.tokens.org_c,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await;
    assert_eq!(c1.status.as_u16(), 201, "{}", c1.body);
    let c1 = id_of(&c1.body);

    let list = node.get(SUBS, owner).await;
    assert_eq!(list.status.as_u16(), 200);
    assert_eq!(list.body["count"], 2, "{}", list.body);
    let listed: HashSet<String> = list.body["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(listed, HashSet::from([a1.clone(), a2.clone()]));
    assert!(
        !String::from_utf8_lossy(&list.raw).contains("whsec_"),
        "the list shows secrets"
    );
    let others = node.get(SUBS, &node.tokens.org_c).await;
    assert_eq!(others.body["count"], 1, "{}", others.body);
    assert_eq!(others.body["subscriptions"][0]["id"], c1.as_str());

    // Another party's subscription does not exist for the caller.
    let org_c = &node.tokens.org_c;
    node.get(&sub_path(&a1), org_c)
        .await
        .assert_problem(404, None);
    node.send("DELETE", &sub_path(&a1), Some(org_c), &[], None)
        .await
        .assert_problem(404, None);
    node.get(&format!("{}/deliveries", sub_path(&a1)), org_c)
        .await
        .assert_problem(404, None);
    node.post(
        &format!("{}/replay", sub_path(&a1)),
        org_c,
        &json!({"from": "2020-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}),
    )
    .await
    .assert_problem(404, None);
    assert_eq!(node.get(&sub_path(&a1), owner).await.status.as_u16(), 200);

    let del = node
        .send("DELETE", &sub_path(&a1), Some(owner), &[], None)
        .await;
    assert!(del.status.is_success(), "DELETE: {}", del.status);
    node.get(&sub_path(&a1), owner)
        .await
        .assert_problem(404, None);
    let list = node.get(SUBS, owner).await;
    assert_eq!(list.body["count"], 1, "{}", list.body);
    assert_eq!(list.body["subscriptions"][0]["id"], a2.as_str());
}

// 3. Bad input.

#[actix_web::test]
async fn bad_subscriptions_are_refused_with_400_naming_the_field_or_403_when_not_allowed() {
    let node = start(&hooks("")).await;
    let rx = Receiver::start().await;
    let owner = &node.tokens.owner_a;
    let valid = json!({"endPoint": rx.url, "resourceFilter": RESOURCE});
    for field in [
        "resourceFilter",
        "subjectFilter",
        "typeFilter",
        "sourceFilter",
    ] {
        let mut body = valid.clone();
        body[field] = json!("");
        node.post(SUBS, owner, &body)
            .await
            .assert_problem(400, Some(field));
    }
    for urn in [
        "not-a-urn",
        "urn:altinn:resource:",
        "urn:altinn:organization:x",
    ] {
        let mut body = valid.clone();
        body["resourceFilter"] = json!(urn);
        node.post(SUBS, owner, &body)
            .await
            .assert_problem(400, Some("resourceFilter"));
    }
    let mut body = valid.clone();
    body["typeFilter"] = json!("dialogporten.*.created.v1");
    node.post(SUBS, owner, &body)
        .await
        .assert_problem(400, Some("typeFilter"));
    for url in ["not a url", "ftp://127.0.0.1/hook", "/relative/hook"] {
        let mut body = valid.clone();
        body["endPoint"] = json!(url);
        node.post(SUBS, owner, &body)
            .await
            .assert_problem(400, Some("endPoint"));
    }

    // Authorization: a stranger may not receive RESOURCE's events, except about itself.
    let stranger = &node.tokens.stranger;
    node.post(SUBS, stranger, &valid)
        .await
        .assert_problem(403, None);
    let mut about_p1 = valid.clone();
    about_p1["subjectFilter"] = json!(person_urn(PERSON_1));
    node.post(SUBS, stranger, &about_p1)
        .await
        .assert_problem(403, None);
    node.post(SUBS, &node.tokens.owner_b, &valid)
        .await
        .assert_problem(403, None);
    // Missing scope: end-user only, service-owner only.
    let no_sub_scope = node.mint(
        EU,
        Some(dialog_events::domain::Party::person(PERSON_1).expect("pid")),
        Duration::from_secs(600),
    );
    node.post(SUBS, &no_sub_scope, &valid)
        .await
        .assert_problem(403, None);
    let so_only = node.mint(
        SO,
        Some(dialog_events::domain::Party::organization(ORG_A).expect("org")),
        Duration::from_secs(600),
    );
    node.post(SUBS, &so_only, &valid)
        .await
        .assert_problem(403, None);
    node.send(
        "POST",
        SUBS,
        None,
        &[("Content-Type", "application/json")],
        Some(valid.to_string().into_bytes()),
    )
    .await
    .assert_problem(401, None);
    for token in [owner, stranger, &node.tokens.owner_b] {
        assert_eq!(node.get(SUBS, token).await.body["count"], 0);
    }
    // A stranger may subscribe to events about itself (the 403s above were about authorization).
    let mut about_self = valid.clone();
    about_self["subjectFilter"] = json!(person_urn(STRANGER));
    let ok = node.post(SUBS, stranger, &about_self).await;
    assert_eq!(ok.status.as_u16(), 201, "{}", ok.body);

    // https only unless allow_http; public addresses only unless allow_private_networks.
    let strict = start(&format!(
        "[webhooks]\npoll_interval = \"{}ms\"",
        POLL.as_millis()
    ))
    .await;
    let plain = json!({"endPoint": "http://example.org/hook", "resourceFilter": RESOURCE});
    strict
        .post(SUBS, &strict.tokens.owner_a, &plain)
        .await
        .assert_problem(400, Some("endPoint"));
    let tls_loopback = json!({
        "endPoint": format!("https://127.0.0.1:{}/hook", rx.port),
        "resourceFilter": RESOURCE,
    });
    strict
        .post(SUBS, &strict.tokens.owner_a, &tls_loopback)
        .await
        .assert_problem(400, Some("endPoint"));

    let http_ok = start(&format!(
        "[webhooks]\nallow_http = true\nallow_private_networks = false\npoll_interval = \"{}ms\"",
        POLL.as_millis()
    ))
    .await;
    for url in [
        format!("http://127.0.0.1:{}/hook", rx.port),
        format!("http://[::1]:{}/hook", rx.port),
        "http://10.1.2.3/hook".to_owned(),
        "http://192.168.0.10/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://0.0.0.0/hook".to_owned(),
    ] {
        http_ok
            .post(
                SUBS,
                &http_ok.tokens.owner_a,
                &json!({"endPoint": url, "resourceFilter": RESOURCE}),
            )
            .await
            .assert_problem(400, Some("endPoint"));
    }
    for n in [&strict, &http_ok] {
        assert_eq!(n.get(SUBS, &n.tokens.owner_a).await.body["count"], 0);
    }
    // Only the stranger's own valid subscription ever talked to the receiver.
    tokio::time::sleep(QUIET).await;
    assert!(rx.events().is_empty());
    assert_eq!(rx.validations().len(), 1, "validations");
}

// 4. Filters.

#[actix_web::test]
async fn each_subscription_gets_exactly_the_events_its_filters_match() {
    let node = start(&hooks("")).await;
    let d1 = Uuid::now_v7().to_string();
    let d1_source = format!("{}/api/v1/enduser/dialogs/{d1}", node.base);
    let cases: Vec<(&str, &str, Value)> = vec![
        ("none", "owner_a", json!({"resourceFilter": RESOURCE})),
        (
            "subject",
            "owner_a",
            json!({"resourceFilter": RESOURCE, "subjectFilter": person_urn(PERSON_1)}),
        ),
        (
            "type exact",
            "owner_a",
            json!({"resourceFilter": RESOURCE, "typeFilter": "dialogporten.dialog.created.v1"}),
        ),
        (
            "type prefix",
            "owner_a",
            json!({"resourceFilter": RESOURCE, "typeFilter": "dialogporten.dialog.activity.*"}),
        ),
        (
            "source",
            "owner_a",
            json!({"resourceFilter": RESOURCE, "sourceFilter": d1_source}),
        ),
        (
            "other resource",
            "owner_b",
            json!({"resourceFilter": OTHER_RESOURCE}),
        ),
    ];
    let mut receivers = Vec::new();
    for (name, who, filters) in &cases {
        let rx = Receiver::start().await;
        let token = if *who == "owner_a" {
            &node.tokens.owner_a
        } else {
            &node.tokens.owner_b
        };
        let mut body = filters.clone();
        body["endPoint"] = json!(rx.url);
        subscribe_validated(&node, token, &body).await;
        receivers.push((*name, rx));
    }

    // d1 (PERSON_1): created, activity.created, activity.information, transmission.created.
    let mut b1 = dialog_with_id(&d1);
    b1["activities"] = json!([{"type": "DialogCreated"}, {"type": "Information"}]);
    b1["transmissions"] = json!([{"type": "Information", "sender": {"actorType": "ServiceOwner"},
        "content": {"title": [{"value": "Vedtak", "languageCode": "nb"}]}}]);
    node.create_dialog(&b1).await;
    // d2 (PERSON_2): created, then updated + activity.payment-made.
    let mut b2 = dialog_body();
    b2["party"] = json!(person_urn(PERSON_2));
    let d2 = node.create_dialog(&b2).await;
    add_activity(&node, &d2, "PaymentMade").await;
    // d3: OTHER_RESOURCE, owned by ORG_B.
    let mut b3 = dialog_body();
    b3["serviceResource"] = json!(OTHER_RESOURCE);
    let r = node
        .post("/api/v1/serviceowner/dialogs", &node.tokens.owner_b, &b3)
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);

    let all = poll(&node, &node.tokens.owner_a, RESOURCE, "").await;
    assert_eq!(all.len(), 7, "{:?}", types(&all));
    let subject = poll(
        &node,
        &node.tokens.owner_a,
        RESOURCE,
        &format!("&subject={}", person_urn(PERSON_1)),
    )
    .await;
    let created = poll(
        &node,
        &node.tokens.owner_a,
        RESOURCE,
        "&type=dialogporten.dialog.created.v1",
    )
    .await;
    let prefix: Vec<Value> = all
        .iter()
        .filter(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("dialogporten.dialog.activity."))
        })
        .cloned()
        .collect();
    let by_source: Vec<Value> = all
        .iter()
        .filter(|e| e["source"] == d1_source.as_str())
        .cloned()
        .collect();
    let other = poll(&node, &node.tokens.owner_b, OTHER_RESOURCE, "").await;
    let expected: Vec<(&str, Vec<String>, usize)> = vec![
        ("none", ids(&all), 7),
        ("subject", ids(&subject), 4),
        ("type exact", ids(&created), 2),
        ("type prefix", ids(&prefix), 3),
        ("source", ids(&by_source), 1),
        ("other resource", ids(&other), 1),
    ];
    for (name, want, n) in &expected {
        assert_eq!(want.len(), *n, "{name}: the poll API's events");
    }
    for ((name, rx), (_, want, _)) in receivers.iter().zip(&expected) {
        rx.wait_for(name, SOON, |r| has_all(r, want)).await;
    }
    tokio::time::sleep(QUIET).await;
    for ((name, rx), (_, want, _)) in receivers.iter().zip(&expected) {
        assert_eq!(
            sorted(received_ids(&rx.events())),
            sorted(want.clone()),
            "{name}: delivered events"
        );
    }
}

// 5. Signatures.

#[actix_web::test]
async fn deliveries_carry_the_event_as_cloudevents_json_signed_with_the_subscription_secret() {
    let node = start(&hooks("")).await;
    let rx = Receiver::start().await;
    let sub = subscribe_validated(
        &node,
        &node.tokens.owner_a,
        &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
    )
    .await;
    let secret = sub["secret"].as_str().expect("secret");
    let d = node.create_dialog(&dialog_body()).await;
    let polled = node.dialog_events(&d).await;
    assert_eq!(polled.len(), 1);
    rx.wait_for("the event", SOON, |r| has_all(r, &ids(&polled)))
        .await;
    let got = of_dialog(&rx, &d);
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(
        req.header("content-type"),
        "application/cloudevents+json; charset=utf-8"
    );
    assert_eq!(req.json(), polled[0], "the body is the CloudEvent");
    assert_eq!(req.header("webhook-id"), id(&polled[0]));
    let ts = req.header("webhook-timestamp");
    let ts_num: i64 = ts.parse().expect("webhook-timestamp is integer seconds");
    assert!(
        (chrono::Utc::now().timestamp() - ts_num).abs() < 60,
        "webhook-timestamp {ts}"
    );
    let want = expected_signature(secret, req.header("webhook-id"), ts, &req.body);
    let signatures: Vec<&str> = req.header("webhook-signature").split(' ').collect();
    assert!(
        signatures.contains(&want.as_str()),
        "webhook-signature {signatures:?}, expected {want}"
    );
    // The check above would notice a different body or secret.
    let mut tampered = req.body.clone();
    tampered.push(b' ');
    assert!(
        !signatures.contains(
            &expected_signature(secret, req.header("webhook-id"), ts, &tampered).as_str()
        )
    );
}

// 6. Retry.

#[actix_web::test]
async fn a_failing_delivery_is_retried_on_the_schedule_with_the_same_webhook_id() {
    let node = start(&hooks(
        "retry_schedule = [\"300ms\", \"600ms\"]\njitter = 0.1",
    ))
    .await;
    let rx = Receiver::start().await;
    let sub = id_of(
        &subscribe_validated(
            &node,
            &node.tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await,
    );
    rx.then(vec![Answer::status(500), Answer::status(500)]);
    let d = node.create_dialog(&dialog_body()).await;
    let polled = node.dialog_events(&d).await;
    assert_eq!(polled.len(), 1);
    let ev = id(&polled[0]);
    rx.wait_for("three attempts", SOON, |_| with_id(&rx, &ev).len() >= 3)
        .await;
    tokio::time::sleep(QUIET).await;
    let attempts = with_id(&rx, &ev);
    assert_eq!(attempts.len(), 3, "attempts after 2 failures and a success");
    assert_eq!(rx.events().len(), 3);
    for a in &attempts {
        assert_eq!(a.header("webhook-id"), ev);
        assert_eq!(a.json(), polled[0]);
    }
    assert_between("gap 1", gap(&attempts[0], &attempts[1]), 270, 330 + 250);
    assert_between("gap 2", gap(&attempts[1], &attempts[2]), 540, 660 + 250);

    let mut log = Vec::new();
    for _ in 0..100 {
        log = deliveries_of(&node, &node.tokens.owner_a, &sub, &ev).await;
        if log.len() >= 3 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let attempt_numbers: Vec<u64> = log.iter().filter_map(|d| d["attempt"].as_u64()).collect();
    assert_eq!(attempt_numbers, [1, 2, 3], "deliveries: {log:?}");
    let statuses: Vec<Option<u64>> = log.iter().map(|d| d["statusCode"].as_u64()).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)], "{log:?}");
    for failed in &log[..2] {
        assert!(failed["error"].is_string(), "failed attempt: {failed}");
        assert!(
            failed["nextAttempt"].is_string(),
            "failed attempt: {failed}"
        );
        assert!(failed["durationMs"].is_u64(), "failed attempt: {failed}");
    }
    assert!(log[2]["error"].is_null(), "{}", log[2]);
    assert!(log[2]["nextAttempt"].is_null(), "{}", log[2]);
}

// 7. Retry-After.

#[actix_web::test]
async fn retry_after_is_honoured_but_clamped_between_the_delay_and_twice_the_delay() {
    let node = start(&hooks(
        "retry_schedule = [\"200ms\", \"200ms\"]\njitter = 0.1",
    ))
    .await;
    let rx = subscribed_receiver(&node).await;
    rx.then(vec![
        // Wish 1s: clamped down to 2 × 200ms.
        Answer::status(503).with_header("Retry-After", "1"),
        // Wish 0s: clamped up to the 200ms delay (unjittered).
        Answer::status(429).with_header("Retry-After", "0"),
    ]);
    let d = node.create_dialog(&dialog_body()).await;
    let ev = id(&node.dialog_events(&d).await[0]);
    rx.wait_for("three attempts", SOON, |_| with_id(&rx, &ev).len() >= 3)
        .await;
    let attempts = with_id(&rx, &ev);
    assert_between(
        "after Retry-After: 1 with a 200ms delay",
        gap(&attempts[0], &attempts[1]),
        400,
        400 + 250,
    );
    assert_between(
        "after Retry-After: 0 with a 200ms delay",
        gap(&attempts[1], &attempts[2]),
        200,
        200 + 250,
    );
}

// 8. 410 Gone.

#[actix_web::test]
async fn an_endpoint_answering_410_gone_disables_its_subscription() {
    let node = start(&hooks("retry_schedule = [\"100ms\"]")).await;
    let rx = Receiver::start().await;
    let control = Receiver::start().await;
    let sub = id_of(
        &subscribe_validated(
            &node,
            &node.tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await,
    );
    subscribe_validated(
        &node,
        &node.tokens.owner_a,
        &json!({"endPoint": control.url, "resourceFilter": RESOURCE}),
    )
    .await;
    rx.then(vec![Answer::status(410)]);
    let d1 = node.create_dialog(&dialog_body()).await;
    let ev1 = id(&node.dialog_events(&d1).await[0]);
    rx.wait_for("the 410", SOON, |r| has_all(r, std::slice::from_ref(&ev1)))
        .await;
    eventually(SOON, "disabled = true", || async {
        node.get(&sub_path(&sub), &node.tokens.owner_a).await.body["disabled"] == true
    })
    .await;
    let got = node.get(&sub_path(&sub), &node.tokens.owner_a).await;
    let reason = got.body["disabledReason"].as_str().unwrap_or("");
    assert!(!reason.is_empty(), "no reason shown: {}", got.body);
    let log = deliveries_of(&node, &node.tokens.owner_a, &sub, &ev1).await;
    assert_eq!(log.len(), 1, "a 410 is not retried: {log:?}");
    assert_eq!(log[0]["statusCode"], 410);

    let d2 = node.create_dialog(&dialog_body()).await;
    let ev2 = id(&node.dialog_events(&d2).await[0]);
    control
        .wait_for("the later event at the other subscription", SOON, |r| {
            has_all(r, std::slice::from_ref(&ev2))
        })
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        received_ids(&rx.events()),
        [ev1],
        "a disabled subscription got events"
    );
}

// 9. Dead letters.

#[actix_web::test]
async fn exhausted_deliveries_become_dead_letters_that_an_admin_can_list_and_redrive() {
    let node = start(&hooks(
        "retry_schedule = [\"100ms\", \"100ms\"]\ncircuit_failures = 100",
    ))
    .await;
    let rx = Receiver::start().await;
    let sub = id_of(
        &subscribe_validated(
            &node,
            &node.tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await,
    );
    rx.answer(500);
    let d1 = node.create_dialog(&dialog_body()).await;
    let d2 = node.create_dialog(&dialog_body()).await;
    let e1 = node.dialog_events(&d1).await.remove(0);
    let e2 = node.dialog_events(&d2).await.remove(0);
    let (ev1, ev2) = (id(&e1), id(&e2));

    let mut letters = Vec::new();
    for _ in 0..250 {
        letters = dead_letters_of(&node, &sub).await;
        if letters.len() >= 2 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(letters.len(), 2, "dead letters: {letters:?}");
    assert_eq!(with_id(&rx, &ev1).len(), 3, "attempts of the first event");
    assert_eq!(with_id(&rx, &ev2).len(), 3, "attempts of the second event");
    let letter1 = letters
        .iter()
        .find(|l| l["event"]["id"] == ev1.as_str())
        .expect("a dead letter for the first event")
        .clone();
    assert!(Uuid::parse_str(letter1["id"].as_str().expect("letter id")).is_ok());
    assert_eq!(letter1["subscriptionId"], sub.as_str());
    assert_eq!(letter1["event"], e1, "the dead letter holds the CloudEvent");
    assert_eq!(letter1["attempts"], 3);
    assert_eq!(letter1["lastStatus"], 500);
    assert!(
        letter1["lastError"].as_str().is_some_and(|e| !e.is_empty()),
        "{letter1}"
    );
    chrono::DateTime::parse_from_rfc3339(letter1["deadAt"].as_str().expect("deadAt"))
        .expect("deadAt is RFC 3339");

    // Admin only.
    node.get("/admin/v1/dead-letters", &node.tokens.owner_a)
        .await
        .assert_problem(403, None);
    node.post(
        "/admin/v1/dead-letters/redrive",
        &node.tokens.owner_a,
        &json!({}),
    )
    .await
    .assert_problem(403, None);
    assert_eq!(dead_letters_of(&node, &sub).await.len(), 2);

    // Redrive one by id.
    rx.answer(200);
    let r = node
        .post(
            "/admin/v1/dead-letters/redrive",
            &node.tokens.admin,
            &json!({"ids": [letter1["id"]]}),
        )
        .await;
    assert!(r.status.is_success(), "redrive: {} {}", r.status, r.body);
    rx.wait_for("the redriven first event", SOON, |_| {
        with_id(&rx, &ev1).len() >= 4
    })
    .await;
    let left = dead_letters_of(&node, &sub).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["event"]["id"], ev2.as_str());
    assert_eq!(with_id(&rx, &ev2).len(), 3, "the other letter stays put");
    assert_eq!(with_id(&rx, &ev1)[3].json(), e1);

    // Redrive the rest of the subscription.
    let r = node
        .post(
            "/admin/v1/dead-letters/redrive",
            &node.tokens.admin,
            &json!({"subscriptionId": sub}),
        )
        .await;
    assert!(r.status.is_success(), "redrive: {} {}", r.status, r.body);
    rx.wait_for("the redriven second event", SOON, |_| {
        with_id(&rx, &ev2).len() >= 4
    })
    .await;
    assert!(dead_letters_of(&node, &sub).await.is_empty());
    tokio::time::sleep(QUIET).await;
    assert_eq!(with_id(&rx, &ev1).len(), 4, "redriven once");
    assert_eq!(with_id(&rx, &ev2).len(), 4, "redriven once");
}

// 10. Ordering.

#[actix_web::test]
async fn a_failing_dialog_blocks_only_its_own_later_events_which_then_arrive_in_order() {
    let schedule = vec!["\"100ms\""; 40].join(", ");
    let node = start(&hooks(&format!(
        "retry_schedule = [{schedule}]\ncircuit_failures = 1000"
    )))
    .await;
    let rx = subscribed_receiver(&node).await;
    let x = Uuid::now_v7().to_string();
    rx.answer_for_dialog(&x, Some(500));
    node.create_dialog(&dialog_with_id(&x)).await;
    let y = node.create_dialog(&dialog_body()).await;
    for kind in ["Information", "FormSaved", "FormSubmitted"] {
        add_activity(&node, &x, kind).await;
        add_activity(&node, &y, kind).await;
    }
    let x_ids = ids(&node.dialog_events(&x).await);
    let y_ids = ids(&node.dialog_events(&y).await);
    assert_eq!((x_ids.len(), y_ids.len()), (7, 7));

    // Y flows while X's first event keeps failing.
    rx.wait_for("all of Y's events and X retrying", SOON, |_| {
        has_all(&of_dialog(&rx, &y), &y_ids) && of_dialog(&rx, &x).len() >= 2
    })
    .await;
    let x_so_far = of_dialog(&rx, &x);
    assert!(
        x_so_far.iter().all(|r| r.header("webhook-id") == x_ids[0]),
        "a later event of X was sent before its first was delivered: {:?}",
        received_ids(&x_so_far)
    );
    assert_eq!(
        received_ids(&of_dialog(&rx, &y)),
        y_ids,
        "Y in dialogsequence order, each once"
    );

    rx.answer_for_dialog(&x, None);
    rx.wait_for("all of X's events", SOON, |_| {
        has_all(&of_dialog(&rx, &x), &x_ids)
    })
    .await;
    let x_all = of_dialog(&rx, &x);
    let seqs: Vec<u64> = x_all
        .iter()
        .map(|r| r.json()["dialogsequence"].as_u64().expect("dialogsequence"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] <= w[1]),
        "X's events out of order: {seqs:?}"
    );
    let mut distinct = received_ids(&x_all);
    distinct.dedup();
    assert_eq!(distinct, x_ids, "X in dialogsequence order");
}

// 11. Authorization re-checked at delivery.

/// The node's count of endpoints whose circuit is open.
async fn open_circuits(node: &TestNode) -> f64 {
    metric(
        &node.metrics().await,
        "dialog_events_webhook_open_circuits",
        "",
    )
}

#[actix_web::test]
async fn a_failing_endpoint_opens_its_circuit_and_a_trial_after_the_cooldown_closes_it() {
    let schedule = vec!["\"300ms\""; 20].join(", ");
    let node = start(&hooks(&format!(
        "retry_schedule = [{schedule}]\ncircuit_failures = 3\ncircuit_cooldown = \"1500ms\""
    )))
    .await;
    let rx = subscribed_receiver(&node).await;
    rx.answer(500);
    let mut wanted = Vec::new();
    for _ in 0..3 {
        let d = node.create_dialog(&dialog_body()).await;
        wanted.extend(ids(&node.dialog_events(&d).await));
    }
    assert_eq!(wanted.len(), 3);
    eventually(SOON, "the circuit to open", || async {
        open_circuits(&node).await == 1.0
    })
    .await;
    // While it is open, retries fail fast without reaching the endpoint.
    let before = rx.events().len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        rx.events().len(),
        before,
        "requests while the circuit was open"
    );
    // The endpoint recovers: the first attempt after the cooldown is a trial, it succeeds, the
    // circuit closes and every lane delivers.
    rx.answer(200);
    rx.wait_for("every event after the circuit closed", SOON, |r| {
        has_all(r, &wanted)
    })
    .await;
    // The receiver records a request before it answers: the dispatcher sees the answer after.
    eventually(SOON, "the circuit to close", || async {
        open_circuits(&node).await == 0.0
    })
    .await;
}

#[actix_web::test]
async fn a_lane_that_keeps_failing_does_not_slow_the_other_lanes_of_its_endpoint() {
    // Default circuit settings; the failing lane retries every 100 ms throughout. Each of its
    // attempts takes 400 ms with the retry: 300 attempts outlast the test on a slow machine, so
    // its first event is never dead-lettered (which would let its second go out).
    let schedule = vec!["\"100ms\""; 300].join(", ");
    let node = start(&hooks(&format!("retry_schedule = [{schedule}]"))).await;
    let rx = subscribed_receiver(&node).await;
    let bad = Uuid::now_v7().to_string();
    // Slow failures: each holds one of the endpoint's in-flight slots for a while.
    rx.answer_for_dialog_with(
        &bad,
        Answer::status(500).delayed(Duration::from_millis(300)),
    );
    node.create_dialog(&dialog_with_id(&bad)).await;
    add_activity(&node, &bad, "Information").await;
    let bad_first = ids(&node.dialog_events(&bad).await)[0].clone();
    let mut good = Vec::new();
    for _ in 0..99 {
        good.push(node.create_dialog(&dialog_body()).await);
    }
    rx.wait_for("the failing lane to be retried", SOON, |r| {
        r.iter()
            .filter(|x| x.header("webhook-id") == bad_first)
            .count()
            >= 2
    })
    .await;
    for round in 0..3 {
        // Between rounds the bad lane fails alone, more times in a row than the circuit's
        // threshold (5 failures of 400 ms): that speaks for the lane, not for the endpoint.
        tokio::time::sleep(Duration::from_millis(2200)).await;
        for d in &good {
            add_activity(&node, d, "Information").await;
        }
        let mut wanted = Vec::new();
        for d in &good {
            wanted.extend(ids(&node.dialog_events(d).await));
        }
        assert!(!wanted.is_empty());
        // Every other lane delivers its new events within a second, while the bad lane fails.
        rx.wait_for(
            &format!("round {round} of the 99 healthy lanes"),
            Duration::from_secs(1),
            |r| has_all(r, &wanted),
        )
        .await;
    }
    let attempts = with_id(&rx, &bad_first).len();
    assert!(
        attempts >= 4,
        "the failing lane was retried {attempts} times"
    );
    assert!(
        of_dialog(&rx, &bad)
            .iter()
            .all(|r| r.header("webhook-id") == bad_first),
        "a later event of the failing lane went out before its first"
    );
    assert_eq!(
        open_circuits(&node).await,
        0.0,
        "one failing lane among healthy ones opened the endpoint's circuit"
    );
}

#[actix_web::test]
async fn a_4xx_for_one_dialog_does_not_open_the_endpoints_circuit() {
    let node = start(&hooks(
        "retry_schedule = [\"300ms\", \"300ms\", \"300ms\", \"300ms\"]\ncircuit_failures = 1\ncircuit_cooldown = \"30s\"",
    ))
    .await;
    let rx = subscribed_receiver(&node).await;
    let bad = Uuid::now_v7().to_string();
    rx.answer_for_dialog(&bad, Some(404));
    node.create_dialog(&dialog_with_id(&bad)).await;
    rx.wait_for("two refused attempts", SOON, |_| {
        of_dialog(&rx, &bad).len() >= 2
    })
    .await;
    // Another dialog on the same endpoint is delivered at once: no 30 s cooldown in the way.
    let started = Instant::now();
    let good = node.create_dialog(&dialog_body()).await;
    let events = ids(&node.dialog_events(&good).await);
    rx.wait_for("the other dialog's event", Duration::from_secs(5), |r| {
        has_all(r, &events)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(open_circuits(&node).await, 0.0);
}

#[actix_web::test]
async fn revoking_a_delegation_stops_deliveries_to_the_delegate() {
    let node = start(&hooks(
        "retry_schedule = [\"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\"]\ncircuit_failures = 1000",
    ))
    .await;
    let owner_rx = Receiver::start().await;
    let rx = Receiver::start().await;
    subscribe_validated(
        &node,
        &node.tokens.owner_a,
        &json!({"endPoint": owner_rx.url, "resourceFilter": RESOURCE}),
    )
    .await;
    subscribe_validated(
        &node,
        &node.tokens.person_2,
        &json!({"endPoint": rx.url, "resourceFilter": RESOURCE,
                "subjectFilter": person_urn(PERSON_1)}),
    )
    .await;

    let d1 = node.create_dialog(&dialog_body()).await;
    let d1_ids = ids(&node.dialog_events(&d1).await);
    rx.wait_for("the delegate gets d1", SOON, |r| has_all(r, &d1_ids))
        .await;

    // d3's first event keeps failing at the delegate, so its events wait in the lane.
    let d3 = Uuid::now_v7().to_string();
    rx.answer_for_dialog(&d3, Some(500));
    node.create_dialog(&dialog_with_id(&d3)).await;
    add_activity(&node, &d3, "Information").await;
    rx.wait_for("the delegate failing d3", SOON, |_| {
        !of_dialog(&rx, &d3).is_empty()
    })
    .await;

    let delegation = json!({
        "from": person_urn(PERSON_1),
        "to": person_urn(PERSON_2),
        "resources": [RESOURCE],
    });
    node.json(
        "DELETE",
        "/admin/v1/delegations",
        &node.tokens.owner_a,
        &delegation,
    )
    .await
    .assert_problem(403, None);
    let r = node
        .json(
            "DELETE",
            "/admin/v1/delegations",
            &node.tokens.admin,
            &delegation,
        )
        .await;
    assert!(r.status.is_success(), "revoke: {} {}", r.status, r.body);
    // An attempt checked just before the revocation may still be on the wire.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let revoked_at = Instant::now();
    rx.answer_for_dialog(&d3, None);

    let d2 = node.create_dialog(&dialog_body()).await;
    let d2_ids = ids(&node.dialog_events(&d2).await);
    let d3_ids = ids(&node.dialog_events(&d3).await);
    assert_eq!(d3_ids.len(), 3);
    owner_rx
        .wait_for("the owner gets d2 and d3", SOON, |r| {
            has_all(r, &d2_ids) && has_all(r, &d3_ids)
        })
        .await;
    // Long enough for d3's next scheduled attempt (300ms ±10%) and many polls.
    tokio::time::sleep(QUIET + Duration::from_millis(400)).await;
    assert!(
        of_dialog(&rx, &d2).is_empty(),
        "the delegate got an event created after the revocation"
    );
    let late: Vec<Received> = of_dialog(&rx, &d3)
        .into_iter()
        .filter(|r| r.at >= revoked_at)
        .collect();
    assert!(
        late.is_empty(),
        "the delegate got queued events after the revocation: {:?}",
        received_ids(&late)
    );
    assert!(
        of_dialog(&rx, &d3)
            .iter()
            .all(|r| r.header("webhook-id") == d3_ids[0]),
        "only d3's first event was ever attempted"
    );
}

// 12. Address guard.

#[actix_web::test]
async fn private_addresses_are_refused_at_creation_and_blocked_at_connect_time() {
    let node = start(&format!(
        "[webhooks]\nallow_http = true\nallow_private_networks = false\npoll_interval = \"{}ms\"\nvalidation_schedule = [\"100ms\", \"100ms\"]",
        POLL.as_millis()
    ))
    .await;
    let rx = Receiver::start().await;
    let owner = &node.tokens.owner_a;
    node.post(
        SUBS,
        owner,
        &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
    )
    .await
    .assert_problem(400, Some("endPoint"));

    // A name is not resolved at creation; it resolves to 127.0.0.1 when connecting.
    let by_name = format!("http://localhost:{}/hook", rx.port);
    let r = node
        .post(
            SUBS,
            owner,
            &json!({"endPoint": by_name, "resourceFilter": RESOURCE}),
        )
        .await;
    assert_eq!(
        r.status.as_u16(),
        201,
        "creation accepts a host name: {}",
        r.body
    );
    let sub = id_of(&r.body);
    let mut log: Vec<Value> = Vec::new();
    for _ in 0..250 {
        let d = node
            .get(&format!("{}/deliveries", sub_path(&sub)), owner)
            .await;
        log = d.body["deliveries"].as_array().cloned().unwrap_or_default();
        if log.len() >= 3 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(log.len(), 3, "the validation attempts: {log:?}");
    for attempt in &log {
        assert!(attempt["statusCode"].is_null(), "{attempt}");
        assert!(
            attempt["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{attempt}"
        );
    }
    node.create_dialog(&dialog_body()).await;
    tokio::time::sleep(QUIET).await;
    assert!(
        rx.requests().is_empty(),
        "a request reached a loopback receiver"
    );
    assert_eq!(
        node.get(&sub_path(&sub), owner).await.body["validated"],
        false
    );

    // Control: with private networks allowed the same URL reaches the receiver.
    let open = start(&hooks("")).await;
    let r = open
        .post(
            SUBS,
            &open.tokens.owner_a,
            &json!({"endPoint": by_name, "resourceFilter": RESOURCE}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    rx.wait_for("the control validation", SOON, |r| !r.is_empty())
        .await;
}

// 13. Replay.

#[actix_web::test]
async fn replay_redelivers_the_retained_events_of_a_time_range_with_their_original_ids() {
    let node = start(&hooks("")).await;
    let rx = Receiver::start().await;
    let sub = id_of(
        &subscribe_validated(
            &node,
            &node.tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await,
    );
    let a = node.create_dialog(&dialog_body()).await;
    let a_ids = ids(&node.dialog_events(&a).await);
    rx.wait_for("a", SOON, |r| has_all(r, &a_ids)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let from = chrono::Utc::now();
    let b = node.create_dialog(&dialog_body()).await;
    add_activity(&node, &b, "Information").await;
    let b_ids = ids(&node.dialog_events(&b).await);
    rx.wait_for("b", SOON, |r| has_all(r, &b_ids)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let to = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let c = node.create_dialog(&dialog_body()).await;
    let c_ids = ids(&node.dialog_events(&c).await);
    rx.wait_for("c", SOON, |r| has_all(r, &c_ids)).await;
    let originals: Vec<Received> = rx.events();
    assert_eq!(originals.len(), 5);

    let r = node
        .post(
            &format!("{}/replay", sub_path(&sub)),
            &node.tokens.owner_a,
            &json!({"from": from.to_rfc3339(), "to": to.to_rfc3339()}),
        )
        .await;
    assert!(r.status.is_success(), "replay: {} {}", r.status, r.body);
    rx.wait_for("the replayed events", SOON, |r| {
        r.len() >= 1 + originals.len() + b_ids.len()
    })
    .await;
    tokio::time::sleep(QUIET).await;
    let events = rx.events();
    let replayed = &events[originals.len()..];
    assert_eq!(
        received_ids(replayed),
        b_ids,
        "exactly b's events again, in order"
    );
    for again in replayed {
        let first = originals
            .iter()
            .find(|o| o.header("webhook-id") == again.header("webhook-id"))
            .expect("an original delivery");
        assert_eq!(again.body, first.body, "the same CloudEvent");
    }
}

// 14. Metrics.

#[actix_web::test]
async fn attempt_and_dead_letter_metrics_count_deliveries() {
    let node = start(&hooks("retry_schedule = [\"100ms\"]")).await;
    let rx = subscribed_receiver(&node).await;
    let attempts = "dialog_events_webhook_attempts_total";
    let dead = "dialog_events_webhook_dead_letters_total";
    let text = node.metrics().await;
    let delivered_before = metric(&text, attempts, "outcome=\"delivered\"");
    assert!(delivered_before >= 1.0, "the validation was delivered");
    assert_eq!(metric(&text, dead, ""), 0.0);

    let d = node.create_dialog(&dialog_body()).await;
    add_activity(&node, &d, "Information").await;
    let d_ids = ids(&node.dialog_events(&d).await);
    rx.wait_for("the events", SOON, |r| has_all(r, &d_ids))
        .await;
    eventually(SOON, "delivered attempts to grow by 3", || async {
        metric(&node.metrics().await, attempts, "outcome=\"delivered\"") >= delivered_before + 3.0
    })
    .await;

    rx.answer(500);
    let failed_before = metric(&node.metrics().await, attempts, "outcome=\"failed\"");
    let e = node.create_dialog(&dialog_body()).await;
    let e_id = id(&node.dialog_events(&e).await[0]);
    rx.wait_for("both attempts", SOON, |_| with_id(&rx, &e_id).len() >= 2)
        .await;
    eventually(SOON, "a dead letter counted", || async {
        metric(&node.metrics().await, dead, "") == 1.0
    })
    .await;
    let text = node.metrics().await;
    assert_eq!(
        metric(&text, attempts, "outcome=\"failed\""),
        failed_before + 2.0
    );
}

// 15. Per-endpoint in-flight limit.

/// Six dialogs' events to one endpoint answering after 300 ms, on a node with `[webhooks]` keys
/// `extra`: every event arrives once, and the most requests the receiver answered at once.
async fn most_in_flight_for_six_slow_dialogs(extra: &str) -> usize {
    let node = start(&hooks(extra)).await;
    let rx = subscribed_receiver(&node).await;
    rx.answer_with(Answer::status(200).delayed(Duration::from_millis(300)));
    rx.reset_max_in_flight();
    let mut all = Vec::new();
    for _ in 0..6 {
        let d = node.create_dialog(&dialog_body()).await;
        all.extend(ids(&node.dialog_events(&d).await));
    }
    assert_eq!(all.len(), 6);
    rx.wait_for("six events of six dialogs", SOON, |r| has_all(r, &all))
        .await;
    // Let the last answers finish.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rx.events().len(), 6);
    rx.max_in_flight()
}

#[actix_web::test]
async fn an_endpoint_never_has_more_attempts_in_flight_than_its_limit() {
    let most = most_in_flight_for_six_slow_dialogs("max_in_flight_per_endpoint = 2").await;
    assert_eq!(most, 2, "requests in flight at once at the receiver");
}

#[actix_web::test]
async fn a_node_never_has_more_attempts_in_flight_than_its_node_limit() {
    // The endpoint's own limit (64) would let all six lanes go at once.
    let most = most_in_flight_for_six_slow_dialogs(
        "max_in_flight_per_endpoint = 64\nmax_in_flight_per_node = 2",
    )
    .await;
    assert_eq!(most, 2, "requests in flight at once at the receiver");
}

#[actix_web::test]
async fn a_due_retry_goes_ahead_of_a_backlog_of_first_attempts_and_keeps_its_schedule() {
    // One attempt at a time and 100 ms per answer: 20 new dialogs make a 2 s backlog.
    let node = start(&hooks(
        "max_in_flight_per_endpoint = 1\nretry_schedule = [\"300ms\", \"300ms\"]\njitter = 0",
    ))
    .await;
    let rx = subscribed_receiver(&node).await;
    rx.answer_with(Answer::status(200).delayed(Duration::from_millis(100)));
    // One dialog's first attempt fails at once; its retry is due 300 ms later, by when the
    // backlog below waits for the endpoint's one slot.
    let bad = Uuid::now_v7().to_string();
    rx.answer_for_dialog(&bad, Some(500));
    node.create_dialog(&dialog_with_id(&bad)).await;
    let failing = id(&node.dialog_events(&bad).await[0]);
    rx.wait_for("the failed first attempt", SOON, |_| {
        !with_id(&rx, &failing).is_empty()
    })
    .await;
    rx.answer_for_dialog(&bad, None);
    let mut backlog = Vec::new();
    for _ in 0..20 {
        let d = node.create_dialog(&dialog_body()).await;
        backlog.extend(ids(&node.dialog_events(&d).await));
    }
    assert_eq!(backlog.len(), 20);
    rx.wait_for("every event, and the retry", SOON, |r| {
        has_all(r, &backlog) && with_id(&rx, &failing).len() >= 2
    })
    .await;
    let tries = with_id(&rx, &failing);
    let late = tries[1].at.duration_since(tries[0].at);
    // Due 300 ms after the failure; at most one 100 ms attempt ahead of it, plus slack.
    assert!(
        late >= Duration::from_millis(270) && late <= Duration::from_millis(700),
        "the retry came {late:?} after the failed attempt (schedule: 300 ms)"
    );
    let after_retry = rx
        .events()
        .iter()
        .filter(|r| r.at > tries[1].at && backlog.contains(&id(&r.json())))
        .count();
    assert!(
        after_retry >= 10,
        "the retry went ahead of the backlog: {after_retry} first attempts came after it"
    );
}

// More: the subscription re-checked before every attempt, and the endpoint accounting.

#[actix_web::test]
async fn deleting_a_subscription_stops_its_pending_retries() {
    let node = start(&hooks(
        "retry_schedule = [\"200ms\", \"200ms\", \"200ms\", \"200ms\"]",
    ))
    .await;
    let rx = Receiver::start().await;
    let sub = id_of(
        &subscribe_validated(
            &node,
            &node.tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await,
    );
    rx.answer(500);
    let d = node.create_dialog(&dialog_body()).await;
    let ev = id(&node.dialog_events(&d).await[0]);
    rx.wait_for("a failed attempt", SOON, |_| !with_id(&rx, &ev).is_empty())
        .await;
    let del = node
        .send(
            "DELETE",
            &sub_path(&sub),
            Some(&node.tokens.owner_a),
            &[],
            None,
        )
        .await;
    assert!(del.status.is_success(), "DELETE: {}", del.status);
    // An attempt checked just before the DELETE may still be on the wire.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after_delete = with_id(&rx, &ev).len();
    rx.answer(200);
    // Several retry delays (200ms ±10%) and many polls.
    tokio::time::sleep(QUIET + Duration::from_millis(400)).await;
    assert_eq!(
        with_id(&rx, &ev).len(),
        after_delete,
        "a deleted subscription's delivery was retried"
    );
}

#[actix_web::test]
async fn a_subscription_disabled_by_410_gives_back_the_endpoint_slots_of_its_other_attempts() {
    let node = start(&hooks("max_in_flight_per_endpoint = 2")).await;
    let rx = Receiver::start().await;
    let first = id_of(
        &subscribe_validated(
            &node,
            &node.tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await,
    );
    // Two attempts of the first subscription in flight at once: one answered 410 while the
    // other is still being answered.
    let (slow, gone) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    rx.answer_for_dialog_with(
        &slow,
        Answer::status(200).delayed(Duration::from_millis(500)),
    );
    rx.answer_for_dialog_with(
        &gone,
        Answer::status(410).delayed(Duration::from_millis(100)),
    );
    node.create_dialog(&dialog_with_id(&slow)).await;
    node.create_dialog(&dialog_with_id(&gone)).await;
    rx.wait_for("both attempts", SOON, |_| {
        !of_dialog(&rx, &slow).is_empty() && !of_dialog(&rx, &gone).is_empty()
    })
    .await;
    eventually(SOON, "the first subscription disabled", || async {
        node.get(&sub_path(&first), &node.tokens.owner_a).await.body["disabled"] == true
    })
    .await;
    // The slow answer finishes.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Another subscription on the same endpoint (scheme, host, port) still gets 2 at once.
    let second = format!("http://127.0.0.1:{}/second", rx.port);
    subscribe_validated(
        &node,
        &node.tokens.owner_a,
        &json!({"endPoint": second, "resourceFilter": RESOURCE}),
    )
    .await;
    rx.answer_with(Answer::status(200).delayed(Duration::from_millis(300)));
    rx.reset_max_in_flight();
    let mut later = Vec::new();
    for _ in 0..4 {
        let d = node.create_dialog(&dialog_body()).await;
        later.extend(ids(&node.dialog_events(&d).await));
    }
    rx.wait_for("the later events", SOON, |r| has_all(r, &later))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        rx.max_in_flight(),
        2,
        "requests in flight at once to the endpoint after the 410 (limit 2)"
    );
}

#[actix_web::test]
async fn re_posting_during_a_validation_retry_wait_sends_the_validation_promptly() {
    let node = start(&hooks("validation_schedule = [\"100ms\", \"5s\"]")).await;
    let rx = Receiver::start().await;
    rx.answer(500);
    let body = json!({"endPoint": rx.url, "resourceFilter": RESOURCE});
    let r = node.post(SUBS, &node.tokens.owner_a, &body).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    rx.wait_for("two validation attempts", SOON, |r| r.len() >= 2)
        .await;
    // Now waiting 5s for the third attempt; the endpoint is fixed and the subscription re-posted.
    rx.answer(200);
    let again = node.post(SUBS, &node.tokens.owner_a, &body).await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.body);
    let reposted = Instant::now();
    // Waits past the pending 5s retry, so a failure shows how late the validation came.
    rx.wait_for("the re-sent validation", Duration::from_secs(8), |r| {
        r.len() >= 3
    })
    .await;
    let took = rx.validations()[2].at.duration_since(reposted);
    assert!(
        took < Duration::from_secs(1),
        "the re-sent validation came {took:?} after the re-POST"
    );
}

#[actix_web::test]
async fn replay_redelivers_the_newest_matching_events_of_its_window_up_to_replay_max() {
    let node = start(&hooks("replay_max = 3")).await;
    let rx = Receiver::start().await;
    let sub = id_of(
        &subscribe_validated(
            &node,
            &node.tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await,
    );
    let from = chrono::Utc::now() - chrono::Duration::seconds(1);
    let mut all = Vec::new();
    for _ in 0..6 {
        let d = node.create_dialog(&dialog_body()).await;
        all.extend(ids(&node.dialog_events(&d).await));
    }
    assert_eq!(all.len(), 6);
    rx.wait_for("the originals", SOON, |r| has_all(r, &all))
        .await;
    let originals = rx.events().len();
    let to = chrono::Utc::now() + chrono::Duration::seconds(1);
    let r = node
        .post(
            &format!("{}/replay", sub_path(&sub)),
            &node.tokens.owner_a,
            &json!({"from": from.to_rfc3339(), "to": to.to_rfc3339()}),
        )
        .await;
    assert!(r.status.is_success(), "replay: {} {}", r.status, r.body);
    assert_eq!(r.body["replayed"], 3);
    rx.wait_for("the replayed events", SOON, |r| {
        r.len() >= 1 + originals + 3
    })
    .await;
    tokio::time::sleep(QUIET).await;
    let events = rx.events();
    // Each dialog is its own lane, so arrival order across dialogs is free.
    let replayed = sorted(received_ids(&events[originals..]));
    assert_eq!(replayed, sorted(all[3..].to_vec()), "the newest three");
}

#[actix_web::test]
async fn a_re_post_never_returns_the_secret_and_a_rotated_secret_signs_beside_the_old_one() {
    let node = start(&hooks("")).await;
    let rx = Receiver::start().await;
    let body = json!({"endPoint": rx.url, "resourceFilter": RESOURCE});
    let created = subscribe_validated(&node, &node.tokens.owner_a, &body).await;
    let old = created["secret"]
        .as_str()
        .expect("secret at creation")
        .to_owned();
    let sub = id_of(&created);
    let again = node.post(SUBS, &node.tokens.owner_a, &body).await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.body);
    assert_eq!(again.body["id"], sub.as_str());
    assert!(again.body.get("secret").is_none(), "{}", again.body);
    assert!(!String::from_utf8_lossy(&again.raw).contains("whsec_"));

    // Only the owner may rotate.
    let rotate = format!("{}/secret/rotate", sub_path(&sub));
    node.post(&rotate, &node.tokens.org_c, &json!({}))
        .await
        .assert_problem(404, None);
    let r = node.post(&rotate, &node.tokens.owner_a, &json!({})).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let new = r.body["secret"].as_str().expect("new secret").to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    let got = node.get(&sub_path(&sub), &node.tokens.owner_a).await;
    assert!(!String::from_utf8_lossy(&got.raw).contains("whsec_"));

    let d = node.create_dialog(&dialog_body()).await;
    let polled = node.dialog_events(&d).await;
    assert_eq!(polled.len(), 1);
    rx.wait_for("the event", SOON, |r| has_all(r, &ids(&polled)))
        .await;
    let got = of_dialog(&rx, &d);
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.header("webhook-signature").split(' ').count(), 2);
    assert_signed_by(req, &[&new, &old]);
}

/// A subscription of ORG_A whose validation request has arrived and is answered (200) only a
/// second later; with the create response.
async fn slowly_validated(node: &TestNode) -> (Receiver, Value) {
    let rx = Receiver::start().await;
    rx.then(vec![Answer::status(200).delayed(Duration::from_secs(1))]);
    let body = json!({"endPoint": rx.url, "resourceFilter": RESOURCE});
    let created = node.post(SUBS, &node.tokens.owner_a, &body).await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.body);
    rx.wait_for("the validation", SOON, |r| r.len() == 1).await;
    (rx, created.body)
}

/// Asserts that `req` carries a valid `webhook-signature` by each of `secrets`.
fn assert_signed_by(req: &Received, secrets: &[&str]) {
    let signatures: Vec<&str> = req.header("webhook-signature").split(' ').collect();
    let ts = req.header("webhook-timestamp");
    for secret in secrets {
        let want = expected_signature(secret, req.header("webhook-id"), ts, &req.body);
        assert!(signatures.contains(&want.as_str()), "{signatures:?}");
    }
}

#[actix_web::test]
async fn a_validation_that_completes_after_a_rotation_keeps_both_secrets() {
    let node = start(&hooks("")).await;
    // The validation is answered only after the secret has been rotated.
    let (rx, created) = slowly_validated(&node).await;
    let sub = id_of(&created);
    let old = created["secret"].as_str().expect("secret").to_owned();
    let r = node
        .post(
            &format!("{}/secret/rotate", sub_path(&sub)),
            &node.tokens.owner_a,
            &json!({}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let new = r.body["secret"].as_str().expect("new secret").to_owned();
    eventually(SOON, "the subscription to be validated", || async {
        node.get(&sub_path(&sub), &node.tokens.owner_a).await.body["validated"] == true
    })
    .await;

    let d = node.create_dialog(&dialog_body()).await;
    let polled = node.dialog_events(&d).await;
    assert_eq!(polled.len(), 1);
    rx.wait_for("the event", SOON, |r| has_all(r, &ids(&polled)))
        .await;
    let got = of_dialog(&rx, &d);
    let req = &got[0];
    assert_signed_by(req, &[&new, &old]);
}

#[actix_web::test]
async fn a_subscription_deleted_during_its_validation_stays_deleted() {
    let node = start(&hooks("")).await;
    let (_rx, created) = slowly_validated(&node).await;
    let sub = id_of(&created);
    let owner = node.tokens.owner_a.as_str();
    let r = node
        .send("DELETE", &sub_path(&sub), Some(owner), &[], None)
        .await;
    assert!(r.status.is_success(), "DELETE: {}", r.status);
    // The validation is answered (and recorded as done) after the delete.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.get(&sub_path(&sub), &node.tokens.owner_a)
        .await
        .assert_problem(404, None);
    let list = node.get(SUBS, &node.tokens.owner_a).await;
    assert!(!list.body.to_string().contains(&sub), "{}", list.body);
}

#[actix_web::test]
async fn events_committed_right_after_start_reach_a_subscription_made_before_them() {
    // A long poll interval: the dispatcher's first look comes after the writes.
    let node = start(
        "[webhooks]\nallow_http = true\nallow_private_networks = true\npoll_interval = \"2s\"",
    )
    .await;
    let rx = subscribed_receiver(&node).await;
    let d = node.create_dialog(&dialog_body()).await;
    add_activity(&node, &d, "Information").await;
    let expected = ids(&node.dialog_events(&d).await);
    assert_eq!(expected.len(), 3);
    rx.wait_for("every event", SOON, |r| has_all(r, &expected))
        .await;
    assert_eq!(received_ids(&of_dialog(&rx, &d)), expected, "in order");
}

#[actix_web::test]
async fn commits_in_quick_succession_share_the_dispatchers_polls_and_all_are_delivered() {
    // One node on the memory store, whatever the suite's backend: its commits wake the dispatcher
    // at once, and it reads its feed quickly enough that, unspaced, nearly every commit would get
    // a poll of its own. A long poll interval: nearly every poll here is one a commit asked for.
    let (node, rx) = one_node_polling_every("2s", "[store]\nkind = \"memory\"").await;
    let mut dialogs = Vec::new();
    for _ in 0..4 {
        dialogs.push(node.create_dialog(&dialog_body()).await);
    }
    let polls = |text: &str| metric(text, "dialog_events_webhook_polls_total", "");
    let before = polls(&node.metrics().await);
    // Four writers commit back to back for a while: far more than one commit per 5 ms.
    let started = Instant::now();
    let writers = dialogs.iter().map(|d| {
        let node = &node;
        async move {
            let mut n = 0;
            while started.elapsed() < Duration::from_millis(400) {
                add_activity(node, d, "Information").await;
                n += 1;
            }
            n
        }
    });
    let commits: usize = futures::future::join_all(writers).await.into_iter().sum();
    let elapsed = started.elapsed();
    let polled = polls(&node.metrics().await) - before;
    // One poll per 5 ms at most, the one the last commits asked for (it may start after
    // `elapsed`), and the periodic ones, one more of them while the metrics are read.
    let bound = (elapsed.as_millis() / 5) as f64 + 2.0 + (elapsed.as_secs_f64() / 2.0).ceil() + 1.0;
    assert!(
        polled >= 1.0 && polled <= bound,
        "{commits} commits in {elapsed:?} made {polled} polls (at most {bound})"
    );
    // Unspaced, about every second commit here had a poll of its own.
    assert!(
        commits as f64 >= 1.5 * bound,
        "only {commits} commits: too few to tell"
    );
    // Every event of every dialog still reaches the subscriber.
    let mut expected = Vec::new();
    for d in &dialogs {
        expected.extend(ids(&node.dialog_events(d).await));
    }
    assert!(expected.len() >= commits + dialogs.len(), "{expected:?}");
    rx.wait_for("every event", SOON, |r| has_all(r, &expected))
        .await;
}

#[actix_web::test]
async fn an_event_published_on_one_node_is_delivered_at_once_not_at_the_next_poll() {
    // One node on the suite's single-node store (embedded or memory) with a poll interval far
    // longer than the wait below: only the publish itself can start the delivery in time.
    let (node, rx) = one_node_polling_every("60s", "").await;
    let event = json!({
        "specversion": "1.0",
        "id": "published-at-once",
        "source": "https://example.org/app/instances/1",
        "type": "app.instance.process.completed",
        "resource": RESOURCE,
        "subject": person_urn(PERSON_1),
    });
    let published = Instant::now();
    let r = node
        .send(
            "POST",
            "/events/api/v1/events",
            Some(&node.tokens.owner_a),
            &[("Content-Type", "application/cloudevents+json")],
            Some(event.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "publish: {}", r.body);
    let wanted = vec!["published-at-once".to_owned()];
    rx.wait_for("the published event", Duration::from_secs(10), |r| {
        has_all(r, &wanted)
    })
    .await;
    assert!(published.elapsed() < Duration::from_secs(10));
    assert_eq!(with_id(&rx, "published-at-once").len(), 1);
}

#[actix_web::test]
async fn events_committed_while_no_subscription_could_receive_them_never_reach_a_later_one() {
    let node = start(&hooks("")).await;
    let earlier = node.create_dialog(&dialog_body()).await;
    add_activity(&node, &earlier, "Information").await;
    // The dispatcher reads past them: polls that find no subscription.
    let polls = |text: &str| metric(text, "dialog_events_webhook_polls_total", "");
    let seen = polls(&node.metrics().await);
    eventually(SOON, "two more polls", || async {
        polls(&node.metrics().await) >= seen + 2.0
    })
    .await;
    let rx = subscribed_receiver(&node).await;
    let later = node.create_dialog(&dialog_body()).await;
    let expected = ids(&node.dialog_events(&later).await);
    assert_eq!(expected.len(), 1);
    rx.wait_for("the later dialog's event", SOON, |r| has_all(r, &expected))
        .await;
    // Some polls later still nothing of the earlier dialog.
    let seen = polls(&node.metrics().await);
    eventually(SOON, "two more polls", || async {
        polls(&node.metrics().await) >= seen + 2.0
    })
    .await;
    assert_eq!(
        received_ids(&of_dialog(&rx, &earlier)),
        Vec::<String>::new(),
        "events from before the subscription"
    );
}

/// A node on the embedded store, whatever the suite's backend.
async fn start_embedded() -> TestNode {
    start_on(
        &format!("{}\n[store]\nkind = \"embedded\"", hooks("")),
        None,
    )
    .await
}

#[actix_web::test]
async fn commits_while_a_poll_runs_wake_the_dispatcher_once_not_each() {
    // On the embedded store a poll that finds no subscription waits for the commit log to be
    // applied, so commits keep arriving while it runs.
    let node = start_embedded().await;
    let wakeups = |text: &str| metric(text, "dialog_events_webhook_wakeups_total", "");
    let polls = |text: &str| metric(text, "dialog_events_webhook_polls_total", "");
    let dialog = node.create_dialog(&dialog_body()).await;
    let before = node.metrics().await;
    let commits = 60;
    for _ in 0..commits {
        add_activity(&node, &dialog, "Information").await;
    }
    tokio::time::sleep(POLL * 2).await;
    let after = node.metrics().await;
    let woke = wakeups(&after) - wakeups(&before);
    let polled = polls(&after) - polls(&before);
    assert!(woke >= 1.0, "the commits woke the dispatcher: {woke}");
    // A wake-up needs a poll to have started since the one before it.
    assert!(
        woke <= polled + 1.0,
        "{woke} wake-ups for {polled} polls and {commits} commits"
    );
}

#[actix_web::test]
async fn with_no_subscription_a_commit_is_one_record_of_the_commit_log_not_two() {
    // The embedded store's commit log counts its records.
    let node = start_embedded().await;
    let synced = |text: &str| metric(text, "dialog_events_store_log_sync_seconds_count", "");
    let polls = |text: &str| metric(text, "dialog_events_webhook_polls_total", "");
    let dialog = node.create_dialog(&dialog_body()).await;
    let before = node.metrics().await;
    let started = Instant::now();
    let commits = 10;
    for _ in 0..commits {
        add_activity(&node, &dialog, "Information").await;
        // Time for the poll this commit asks for, and for any write it makes, before the next.
        tokio::time::sleep(POLL * 2).await;
    }
    let after = node.metrics().await;
    let records = synced(&after) - synced(&before);
    let polled = polls(&after) - polls(&before);
    // Each commit is a record; the positions those polls moved are saved once a second.
    let saves = started.elapsed().as_secs_f64().ceil() + 1.0;
    assert!(
        polled >= f64::from(commits),
        "{polled} polls for {commits} commits"
    );
    assert!(
        records >= f64::from(commits) && records <= f64::from(commits) + saves,
        "{records} records of the commit log for {commits} commits and {polled} polls"
    );
}
