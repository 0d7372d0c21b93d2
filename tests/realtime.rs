//! GraphQL realtime (SPEC §6): `dialogEvents` over graphql-transport-ws, legacy graphql-ws and SSE —
//! one payload per change of every kind, authorization, protocol errors and close codes, resume,
//! fan-out, slow consumers, shutdown, metrics — and the `dialogById` query.

mod common;

use std::time::{Duration, Instant};

use awc::ws;
use base64::Engine;
use common::realtime::*;
use common::*;
use futures::future::join_all;
use serde_json::{Value, json};

const TWS: &str = "graphql-transport-ws";
const LEGACY: &str = "graphql-ws";
const CONNECTIONS: &str = "dialog_events_realtime_connections";
const BUFFERED: &str = "dialog_events_realtime_buffered_bytes";
const SLOW_CLOSES: &str = "dialog_events_realtime_slow_consumer_closes_total";
const FANOUT_COUNT: &str = "dialog_events_realtime_fanout_latency_seconds_count";
const HUB_WAKEUPS: &str = "dialog_events_realtime_hub_wakeups_total";

fn dialog_path(id: &str) -> String {
    format!("/api/v1/serviceowner/dialogs/{id}")
}

/// Adds an `Information` activity: one change of two events (`updated`, `activity.information`).
async fn post_activity(node: &TestNode, id: &str) {
    let r = node
        .post(
            &format!("{}/activities", dialog_path(id)),
            &node.tokens.owner_a,
            &json!({"type": "Information"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "activity: {}", r.body);
}

/// The dialog as its service owner reads it (records no view).
async fn owner_read(node: &TestNode, id: &str) -> Reply {
    node.get(&dialog_path(id), &node.tokens.owner_a).await
}

/// The dialog's current `sequence` and `revision`.
async fn sequence_and_revision(node: &TestNode, id: &str) -> (u64, Value) {
    let r = owner_read(node, id).await;
    assert_eq!(r.status.as_u16(), 200, "read: {}", r.body);
    (
        r.body["sequence"].as_u64().expect("sequence"),
        r.body["revision"].clone(),
    )
}

fn seq(payload: &Value) -> u64 {
    payload["sequence"]
        .as_u64()
        .unwrap_or_else(|| panic!("payload without sequence: {payload}"))
}

/// `connection_init` on a legacy `graphql-ws` connection: `connection_ack`, then a `ka` right away.
async fn legacy_init(ws: &mut WsClient, token: &str) {
    ws.send(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    match ws.next_frame(false).await {
        Incoming::Json(v) => assert_eq!(v["type"], "connection_ack", "{v}"),
        other => panic!("expected connection_ack, got {other:?}"),
    }
    match ws.next_frame(false).await {
        Incoming::Json(v) => assert_eq!(v["type"], "ka", "ka follows the ack: {v}"),
        other => panic!("expected ka, got {other:?}"),
    }
}

/// The transports a GUI can follow a dialog with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    GraphqlTransportWs,
    GraphqlWs,
    Sse,
}

/// One open `dialogEvents` subscription, whatever its transport.
enum Subscriber {
    Ws(WsClient),
    Sse(SseClient),
}

impl Subscriber {
    /// Opens a subscription to `dialog` with the dialog token `token` in the way a GUI would:
    /// token in `connection_init` (WebSocket) or in the `Authorization` header (SSE).
    async fn open(
        node: &TestNode,
        transport: Transport,
        dialog: &str,
        token: &str,
        after: Option<u64>,
    ) -> Subscriber {
        match transport {
            Transport::GraphqlTransportWs => {
                let mut ws = WsClient::connect(node, TWS, None).await;
                ws.init(Some(token)).await;
                ws.subscribe("1", dialog, after).await;
                Subscriber::Ws(ws)
            }
            Transport::GraphqlWs => {
                let mut ws = WsClient::connect(node, LEGACY, None).await;
                legacy_init(&mut ws, token).await;
                ws.subscribe("1", dialog, after).await;
                Subscriber::Ws(ws)
            }
            Transport::Sse => {
                let (status, sse) = SseClient::open(
                    node,
                    Some(token),
                    SUBSCRIPTION,
                    json!({"id": dialog, "after": after}),
                )
                .await;
                assert_eq!(status, 200, "SSE subscription accepted");
                Subscriber::Sse(sse)
            }
        }
    }

    /// The next `dialogEvents` payload.
    async fn event(&mut self) -> Value {
        match self {
            Subscriber::Ws(ws) => ws.event().await,
            Subscriber::Sse(sse) => sse.event().await,
        }
    }
}

/// Every kind of dialog change a subscriber must hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Update,
    Activity,
    Transmission,
    SilentUpdate,
    Seen,
    Delete,
    Restore,
    Purge,
}

impl ChangeKind {
    const ALL: [ChangeKind; 8] = [
        ChangeKind::Update,
        ChangeKind::Activity,
        ChangeKind::Transmission,
        ChangeKind::SilentUpdate,
        ChangeKind::Seen,
        ChangeKind::Delete,
        ChangeKind::Restore,
        ChangeKind::Purge,
    ];

    /// Events the change commits, and the payload type it must produce.
    fn expected(self) -> (u64, &'static str) {
        match self {
            ChangeKind::Update | ChangeKind::SilentUpdate | ChangeKind::Restore => {
                (1, "DIALOG_UPDATED")
            }
            // `updated` + `activity.*` / `transmission.created` / (`seen` + `updated`).
            ChangeKind::Activity | ChangeKind::Transmission | ChangeKind::Seen => {
                (2, "DIALOG_UPDATED")
            }
            ChangeKind::Delete | ChangeKind::Purge => (1, "DIALOG_DELETED"),
        }
    }

    async fn apply(self, node: &TestNode, id: &str) {
        let owner = node.tokens.owner_a.as_str();
        let path = dialog_path(id);
        let status = match self {
            ChangeKind::Update => {
                let mut body = dialog_body();
                body["status"] = json!("Awaiting");
                node.put(&path, owner, &body).await.status
            }
            ChangeKind::Activity => {
                post_activity(node, id).await;
                return;
            }
            ChangeKind::Transmission => {
                let t = json!({"type": "Information", "sender": {"actorType": "ServiceOwner"},
                    "content": {"title": [{"value": "Vedtak", "languageCode": "nb"}]}});
                let r = node.post(&format!("{path}/transmissions"), owner, &t).await;
                assert_eq!(r.status.as_u16(), 201, "transmission: {}", r.body);
                return;
            }
            ChangeKind::SilentUpdate => {
                let mut body = dialog_body();
                body["status"] = json!("RequiresAttention");
                node.put(&format!("{path}?isSilentUpdate=true"), owner, &body)
                    .await
                    .status
            }
            ChangeKind::Seen => {
                let r = node
                    .get(
                        &format!("/api/v1/enduser/dialogs/{id}"),
                        &node.tokens.person_1,
                    )
                    .await;
                assert_eq!(r.status.as_u16(), 200, "end-user read: {}", r.body);
                return;
            }
            ChangeKind::Delete => {
                node.send("DELETE", &path, Some(owner), &[], None)
                    .await
                    .status
            }
            ChangeKind::Restore => {
                node.send(
                    "POST",
                    &format!("{path}/actions/restore"),
                    Some(owner),
                    &[],
                    None,
                )
                .await
                .status
            }
            ChangeKind::Purge => {
                node.send(
                    "POST",
                    &format!("{path}/actions/purge"),
                    Some(owner),
                    &[],
                    None,
                )
                .await
                .status
            }
        };
        assert_eq!(status.as_u16(), 204, "{self:?}");
    }
}

/// The body of requirements 1 and 2: one subscriber on `transport`, every kind of change, one
/// payload per change with the right type, sequence, id, revision and `resync: false`.
async fn every_change_kind_reaches_a_subscriber(transport: Transport) {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut sub = Subscriber::open(&node, transport, &id, &token, None).await;
    wait_subscriptions(&node, 1).await;

    let (mut last, mut revision) = sequence_and_revision(&node, &id).await;
    assert_eq!(last, 1, "a fresh dialog holds only `created`");
    let mut payloads: Vec<Value> = Vec::new();
    for change in ChangeKind::ALL {
        let (events, kind) = change.expected();
        change.apply(&node, &id).await;
        let payload = sub.event().await;

        // What the dialog looks like after the change (the service owner read records no view).
        let read = owner_read(&node, &id).await;
        let (expected_seq, expected_revision) = if change == ChangeKind::Purge {
            assert_eq!(read.status.as_u16(), 404, "purged: {}", read.body);
            (last + events, Value::Null)
        } else {
            assert_eq!(read.status.as_u16(), 200, "{change:?}: {}", read.body);
            let etag = read.header("etag").expect("ETag on a dialog read");
            assert_eq!(
                json!(etag.trim_matches('"')),
                read.body["revision"],
                "ETag is the revision"
            );
            let s = read.body["sequence"].as_u64().expect("sequence");
            assert_eq!(s, last + events, "{change:?} commits {events} event(s)");
            (s, read.body["revision"].clone())
        };
        if change == ChangeKind::Seen {
            assert_eq!(
                expected_revision, revision,
                "the seen-log change keeps the revision"
            );
        } else if change != ChangeKind::Purge {
            assert_ne!(expected_revision, revision, "{change:?} is a write");
        }

        let ctx = format!("{transport:?} {change:?}: {payload}");
        assert_eq!(payload["type"], kind, "{ctx}");
        assert_eq!(seq(&payload), expected_seq, "{ctx}");
        let event_id = payload["id"].as_str().expect("id string");
        assert!(uuid::Uuid::parse_str(event_id).is_ok(), "{ctx}");
        assert_eq!(payload["revision"], expected_revision, "{ctx}");
        assert_eq!(payload["resync"], false, "{ctx}");

        last = expected_seq;
        revision = expected_revision;
        payloads.push(payload);
    }
    let seqs: Vec<u64> = payloads.iter().map(seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {seqs:?}"
    );
    assert_eq!(seqs, [2, 4, 6, 7, 9, 10, 11, 12]);

    // `id` is the id of the change's last event: compare with the published log (the silent
    // update's event is never published, so it has no counterpart there).
    let published = node.dialog_events(&id).await;
    let mut matched = 0;
    for p in &payloads {
        if let Some(e) = published
            .iter()
            .find(|e| e["dialogsequence"].as_u64() == Some(seq(p)))
        {
            assert_eq!(p["id"], e["id"], "payload id = last event id: {p} vs {e}");
            matched += 1;
        }
    }
    assert_eq!(matched, 7, "every non-silent change is in the log");
}

#[actix_web::test]
async fn graphql_transport_ws_gets_one_payload_per_change_of_every_kind() {
    every_change_kind_reaches_a_subscriber(Transport::GraphqlTransportWs).await;
}

#[actix_web::test]
async fn legacy_graphql_ws_gets_one_payload_per_change_of_every_kind() {
    every_change_kind_reaches_a_subscriber(Transport::GraphqlWs).await;
}

#[actix_web::test]
async fn sse_gets_one_payload_per_change_of_every_kind() {
    every_change_kind_reaches_a_subscriber(Transport::Sse).await;
}

#[actix_web::test]
async fn dialog_id_may_be_a_literal_or_a_variable() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token)).await;
    let literal = format!(
        r#"subscription {{ dialogEvents(dialogId: "{id}") {{ id type sequence revision resync }} }}"#
    );
    ws.send(json!({"id": "literal", "type": "subscribe", "payload": {"query": literal}}))
        .await;
    ws.send(json!({"id": "variable", "type": "subscribe",
        "payload": {"query": SUBSCRIPTION, "variables": {"id": id}}}))
        .await;
    wait_subscriptions(&node, 2).await;
    post_activity(&node, &id).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let msg = ws.next_json().await;
        assert_eq!(msg["type"], "next", "{msg}");
        let p = &msg["payload"]["data"]["dialogEvents"];
        assert_eq!(p["sequence"], 3, "{msg}");
        assert_eq!(p["type"], "DIALOG_UPDATED", "{msg}");
        got.push(msg["id"].as_str().expect("op id").to_owned());
    }
    got.sort();
    assert_eq!(got, ["literal", "variable"]);
}

// ---- authorization and protocol errors (graphql-transport-ws unless named) ----

#[actix_web::test]
async fn a_connection_without_any_token_is_closed_with_4403() {
    let node = start("").await;
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.send(json!({"type": "connection_init", "payload": {}}))
        .await;
    assert_eq!(ws.close_code().await, Some(4403));
    // Without any payload at all, too.
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.send(json!({"type": "connection_init"})).await;
    assert_eq!(ws.close_code().await, Some(4403));
}

#[actix_web::test]
async fn a_garbage_token_in_connection_init_is_closed_with_4403() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let real = dialog_token(&node, &id).await;
    // A token signed by someone else (the dev issuer's person token is a JWT, but no dialog token).
    for bad in ["garbage", "a.b.c", node.tokens.person_1.as_str()] {
        let mut ws = WsClient::connect(&node, TWS, None).await;
        ws.send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {bad}")}}))
            .await;
        assert_eq!(ws.close_code().await, Some(4403), "token {bad:?}");
    }
    // A real dialog token with a tampered signature.
    let tampered = format!("{}x", &real[..real.len() - 1]);
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {tampered}")}}))
        .await;
    assert_eq!(ws.close_code().await, Some(4403), "tampered token");
}

#[actix_web::test]
async fn a_token_for_another_dialog_gets_an_unauthorized_error_and_the_socket_stays_open() {
    let node = start("").await;
    let a = node.create_dialog(&dialog_body()).await;
    let b = node.create_dialog(&dialog_body()).await;
    let token_a = dialog_token(&node, &a).await;
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token_a)).await;

    ws.subscribe("for-b", &b, None).await;
    let err = ws.next_json().await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["id"], "for-b", "{err}");
    assert_eq!(
        err["payload"][0]["extensions"]["code"], "UNAUTHORIZED",
        "{err}"
    );
    assert_eq!(subscriptions(&node).await, 0, "nothing attached for B");

    // Same connection, the dialog the token is for: works.
    ws.subscribe("for-a", &a, None).await;
    wait_subscriptions(&node, 1).await;
    post_activity(&node, &b).await; // must not reach this connection
    post_activity(&node, &a).await;
    let msg = ws.next_json().await;
    assert_eq!(msg["type"], "next", "{msg}");
    assert_eq!(msg["id"], "for-a", "{msg}");
    assert_eq!(msg["payload"]["data"]["dialogEvents"]["sequence"], 3);
}

#[actix_web::test]
async fn a_token_in_the_upgrade_header_with_an_empty_init_payload_is_accepted() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = WsClient::connect(&node, TWS, Some(&token)).await;
    ws.init(None).await; // payload {}
    ws.subscribe("1", &id, None).await;
    wait_subscriptions(&node, 1).await;
    post_activity(&node, &id).await;
    let ev = ws.event().await;
    assert_eq!(ev["sequence"], 3, "{ev}");
    assert_eq!(ev["type"], "DIALOG_UPDATED", "{ev}");
}

#[actix_web::test]
async fn subscribe_before_connection_init_is_closed_with_4401() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    // Even with a valid token in the header: the protocol requires connection_init first.
    let mut ws = WsClient::connect(&node, TWS, Some(&token)).await;
    ws.subscribe("1", &id, None).await;
    assert_eq!(ws.close_code().await, Some(4401));
}

#[actix_web::test]
async fn no_connection_init_within_init_timeout_is_closed_with_4408() {
    let node = start("[realtime]\ninit_timeout = \"300ms\"").await;
    let t0 = Instant::now();
    let mut ws = WsClient::connect(&node, TWS, None).await;
    assert_eq!(ws.close_code().await, Some(4408));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(2900),
        "closed after {waited:?}, configured 300ms (default would be 3s)"
    );
}

#[actix_web::test]
async fn a_duplicate_operation_id_is_closed_with_4409() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token)).await;
    ws.subscribe("dup", &id, None).await;
    wait_subscriptions(&node, 1).await;
    ws.subscribe("dup", &id, None).await;
    assert_eq!(ws.close_code().await, Some(4409));
    wait_subscriptions(&node, 0).await;
}

#[actix_web::test]
async fn a_second_connection_init_is_closed_with_4429() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token)).await;
    ws.send(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    assert_eq!(ws.close_code().await, Some(4429));
}

#[actix_web::test]
async fn an_unknown_subprotocol_is_closed_with_4406() {
    let node = start("").await;
    // The server completes the upgrade without echoing a subprotocol (actix-ws answers 101 when
    // none of the offered protocols matches) and then closes with 4406, as the graphql-ws
    // library's server does. awc does not check the echoed protocol, so the close is observable.
    let mut ws = WsClient::connect(&node, "foo", None).await;
    assert_eq!(ws.close_code().await, Some(4406));
}

#[actix_web::test]
async fn invalid_messages_are_closed_with_4400() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let cases: [(&str, ws::Message); 4] = [
        ("garbage text", ws::Message::Text("this is not json".into())),
        (
            "unknown type",
            ws::Message::Text(r#"{"type":"bogus","id":"1"}"#.into()),
        ),
        ("no type", ws::Message::Text(r#"{"id":"1"}"#.into())),
        (
            "binary frame",
            ws::Message::Binary(r#"{"type":"ping"}"#.as_bytes().to_vec().into()),
        ),
    ];
    for (what, msg) in cases {
        let mut ws = WsClient::connect(&node, TWS, None).await;
        ws.init(Some(&token)).await;
        ws.send_raw(msg).await;
        assert_eq!(ws.close_code().await, Some(4400), "{what}");
    }
    // Before connection_init as well.
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.send_raw(ws::Message::Text("{{{".into())).await;
    assert_eq!(ws.close_code().await, Some(4400), "garbage before init");
}

/// The first text frame of a raw client, skipping control frames; fails on a close.
async fn first_text(raw: &mut RawWs) -> String {
    for _ in 0..10 {
        match raw.next_frame(WAIT).await {
            RawFrame::Text(t) => return t,
            RawFrame::Other(..) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
    panic!("no text frame among the first ten")
}

#[actix_web::test]
async fn frames_sent_in_the_same_packet_as_the_upgrade_request_are_served() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    // connection_init and subscribe travel with the handshake, before its answer is read.
    let mut early = client_frame(
        0x1,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}})
            .to_string()
            .as_bytes(),
    );
    early.extend(client_frame(
        0x1,
        json!({"id": "1", "type": "subscribe",
            "payload": {"query": SUBSCRIPTION, "variables": {"id": id}}})
        .to_string()
        .as_bytes(),
    ));
    let mut raw = RawWs::connect_with(&node, TWS, None, &early).await;
    assert!(first_text(&mut raw).await.contains("connection_ack"));
    wait_subscriptions(&node, 1).await;
    post_activity(&node, &id).await;
    let next: Value = serde_json::from_str(&first_text(&mut raw).await).expect("json");
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(next["id"], "1", "{next}");
    assert!(seq(&next["payload"]["data"]["dialogEvents"]) > 1, "{next}");
}

#[actix_web::test]
async fn a_fragmented_message_is_gathered_with_a_ping_between_its_fragments() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let init =
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}})
            .to_string();
    let (a, rest) = init.as_bytes().split_at(10);
    let (b, c) = rest.split_at(20);
    let mut frames = client_fragment(false, 0x1, a);
    frames.extend(client_fragment(false, 0x0, b));
    frames.extend(client_frame(0x9, b"between"));
    frames.extend(client_fragment(true, 0x0, c));
    let mut raw = RawWs::connect_with(&node, TWS, None, &frames).await;
    let mut pong = None;
    let mut ack = false;
    for _ in 0..5 {
        match raw.next_frame(WAIT).await {
            RawFrame::Other(0xA, payload) => pong = Some(payload),
            RawFrame::Text(t) if t.contains("connection_ack") => {
                ack = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        pong.as_deref(),
        Some(&b"between"[..]),
        "the ping is answered"
    );
    assert!(ack, "the gathered connection_init is acknowledged");

    // Text that is not UTF-8 is an invalid message.
    raw.send_frame(0x1, &[0xff, 0xfe, 0x7b]).await;
    let mut close = None;
    for _ in 0..5 {
        if let RawFrame::Close(code) = raw.next_frame(WAIT).await {
            close = code;
            break;
        }
    }
    assert_eq!(close, Some(4400));
}

#[actix_web::test]
async fn an_upgrade_that_is_not_a_graphql_websocket_handshake_is_refused_with_problem_json() {
    let node = start("").await;
    let host = node.base.trim_start_matches("http://").to_owned();
    let handshake = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws";
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let cases = [
        (
            "another path",
            format!(
                "GET /api/v1/enduser/dialogs HTTP/1.1\r\nHost: {host}\r\n{handshake}\r\n{key}\r\n\r\n"
            ),
            404,
        ),
        (
            "not a GET",
            format!("POST /graphql HTTP/1.1\r\nHost: {host}\r\n{handshake}\r\n{key}\r\n\r\n"),
            405,
        ),
        (
            "no key",
            format!("GET /graphql HTTP/1.1\r\nHost: {host}\r\n{handshake}\r\n\r\n"),
            400,
        ),
    ];
    for (what, request, status) in cases {
        let answer = raw_http(&node, &request).await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{what}: {head}"
        );
        let problem: Value = serde_json::from_str(body).expect("problem json");
        assert_eq!(problem["status"], status, "{what}: {problem}");
    }
    // The node still upgrades a proper handshake.
    let mut raw = RawWs::connect(&node, TWS, None).await;
    raw.send_frame(0x8, &1000u16.to_be_bytes()).await;
}

#[actix_web::test]
async fn a_frame_over_max_frame_bytes_is_closed_with_1009() {
    let node = start("[realtime]\nmax_frame_bytes = 1024").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    // Just under the limit is served.
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token)).await;
    let small = json!({"type": "ping", "payload": {"pad": "x".repeat(900)}});
    assert!(small.to_string().len() < 1024);
    ws.send(small).await;
    match ws.next_frame(false).await {
        Incoming::Json(v) => assert_eq!(v["type"], "pong", "{v}"),
        other => panic!("expected pong, got {other:?}"),
    }
    // 2048 bytes: closed with 1009.
    let big = json!({"type": "ping", "payload": {"pad": "x".repeat(2048)}});
    ws.send(big).await;
    assert_eq!(ws.close_code().await, Some(1009));
}

#[actix_web::test]
async fn legacy_graphql_ws_with_an_invalid_token_gets_connection_error_then_4403() {
    let node = start("").await;
    let mut ws = WsClient::connect(&node, LEGACY, None).await;
    ws.send(json!({"type": "connection_init", "payload": {"Authorization": "Bearer garbage"}}))
        .await;
    match ws.next_frame(false).await {
        Incoming::Json(v) => assert_eq!(v["type"], "connection_error", "{v}"),
        other => panic!("expected connection_error, got {other:?}"),
    }
    assert_eq!(ws.close_code().await, Some(4403));
}

#[actix_web::test]
async fn sse_with_a_token_for_another_dialog_gets_an_unauthorized_next_then_complete() {
    let node = start("").await;
    let a = node.create_dialog(&dialog_body()).await;
    let b = node.create_dialog(&dialog_body()).await;
    let token_a = dialog_token(&node, &a).await;
    let (status, mut sse) =
        SseClient::open(&node, Some(&token_a), SUBSCRIPTION, json!({"id": b})).await;
    assert_eq!(status, 200);
    let ev = sse.next().await.expect("an error event");
    assert_eq!(ev.event, "next", "{ev:?}");
    let data: Value = serde_json::from_str(&ev.data).expect("json data");
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "UNAUTHORIZED",
        "{data}"
    );
    let end = sse.next().await.expect("complete");
    assert_eq!(end.event, "complete", "{end:?}");
    assert!(sse.next().await.is_none(), "the stream ends after complete");
    assert_eq!(subscriptions(&node).await, 0);

    // No token at all: the same, UNAUTHORIZED.
    let (status, mut sse) = SseClient::open(&node, None, SUBSCRIPTION, json!({"id": a})).await;
    assert_eq!(status, 200);
    let data: Value =
        serde_json::from_str(&sse.next().await.expect("an error event").data).expect("json");
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "UNAUTHORIZED",
        "{data}"
    );
}

#[actix_web::test]
async fn sse_without_accept_event_stream_is_refused_with_406() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let body = json!({"query": SUBSCRIPTION, "variables": {"id": id}}).to_string();
    let r = node
        .send(
            "POST",
            "/graphql/stream",
            Some(&token),
            &[("Content-Type", "application/json")],
            Some(body.clone().into_bytes()),
        )
        .await;
    assert_eq!(r.status.as_u16(), 406, "{}", r.body);
    let r = node
        .send(
            "POST",
            "/graphql/stream",
            Some(&token),
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
            ],
            Some(body.into_bytes()),
        )
        .await;
    assert_eq!(r.status.as_u16(), 406, "{}", r.body);
    assert_eq!(subscriptions(&node).await, 0);
}

// ---- token lifetime ----

#[actix_web::test]
async fn a_running_stream_outlives_its_token_but_a_new_connection_with_it_is_refused() {
    // Token times have whole-second resolution: 3 s leaves at least 2 s to subscribe.
    let node = start("[auth]\ndialog_token_ttl = \"3s\"").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("jws payload"))
            .expect("base64url"),
    )
    .expect("claims");
    assert_eq!(
        claims["exp"].as_i64(),
        claims["iat"].as_i64().map(|t| t + 3)
    );

    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token)).await;
    ws.subscribe("1", &id, None).await;
    wait_subscriptions(&node, 1).await;

    // Time itself is the subject here: let the token expire.
    let exp = claims["exp"].as_i64().expect("exp");
    while chrono::Utc::now().timestamp() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = chrono::Utc::now().timestamp();
    assert!(
        claims["exp"].as_i64().expect("exp") < now,
        "the token has expired"
    );

    post_activity(&node, &id).await;
    let ev = ws.event().await;
    assert_eq!(ev["sequence"], 3, "still delivered: {ev}");

    let mut late = WsClient::connect(&node, TWS, None).await;
    late.send(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    assert_eq!(late.close_code().await, Some(4403), "expired token refused");

    // The running stream is still attached and live.
    assert_eq!(subscriptions(&node).await, 1);
    post_activity(&node, &id).await;
    assert_eq!(ws.event().await["sequence"], 5);
}

// ---- resume ----

async fn open_tws(node: &TestNode, id: &str, token: &str, after: Option<u64>) -> WsClient {
    let mut ws = WsClient::connect(node, TWS, None).await;
    ws.init(Some(token)).await;
    ws.subscribe("1", id, after).await;
    ws
}

#[actix_web::test]
async fn resume_after_sequence_replays_missed_changes_then_goes_live() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = open_tws(&node, &id, &token, None).await;
    wait_subscriptions(&node, 1).await;
    post_activity(&node, &id).await;
    let last_seen = seq(&ws.event().await);
    assert_eq!(last_seen, 3);
    drop(ws);
    wait_subscriptions(&node, 0).await;

    let mut missed = Vec::new();
    for _ in 0..5 {
        post_activity(&node, &id).await;
        missed.push(sequence_and_revision(&node, &id).await);
    }
    assert_eq!(
        missed.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [5, 7, 9, 11, 13]
    );

    let mut ws = open_tws(&node, &id, &token, Some(last_seen)).await;
    for (sequence, revision) in &missed {
        let p = ws.event().await;
        assert_eq!(seq(&p), *sequence, "{p}");
        assert_eq!(&p["revision"], revision, "{p}");
        assert_eq!(p["resync"], false, "{p}");
        assert_eq!(p["type"], "DIALOG_UPDATED", "{p}");
    }
    wait_subscriptions(&node, 1).await;
    post_activity(&node, &id).await;
    let live = ws.event().await;
    assert_eq!(
        seq(&live),
        15,
        "the live change comes next, no duplicate: {live}"
    );
    assert_eq!(live["resync"], false);
}

#[actix_web::test]
async fn resume_while_changes_are_being_made_misses_none_and_doubles_none() {
    const POSTS: u64 = 20;
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = open_tws(&node, &id, &token, None).await;
    wait_subscriptions(&node, 1).await;
    post_activity(&node, &id).await;
    let mut last_seen = seq(&ws.event().await);

    for round in 0..3 {
        drop(ws);
        wait_subscriptions(&node, 0).await;
        let from = last_seen;
        let target = from + 2 * POSTS;
        let poster = async {
            for _ in 0..POSTS {
                post_activity(&node, &id).await;
            }
        };
        // The resuming client connects while the poster is writing.
        let resumer = async {
            let mut ws = open_tws(&node, &id, &token, Some(from)).await;
            let mut seqs: Vec<u64> = Vec::new();
            for _ in 0..POSTS {
                let p = ws.event().await;
                assert_eq!(p["resync"], false, "round {round}: {p}");
                seqs.push(seq(&p));
                if seq(&p) >= target {
                    break;
                }
            }
            (ws, seqs)
        };
        let ((), (resumed, seqs)) = futures::join!(poster, resumer);
        ws = resumed;
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "round {round}: strictly increasing: {seqs:?}"
        );
        // Every change of this round, from the published log: an activity post's last event is
        // its `activity.*` event.
        let expected: Vec<u64> = node
            .dialog_events(&id)
            .await
            .iter()
            .filter(|e| {
                e["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("dialogporten.dialog.activity."))
            })
            .filter_map(|e| e["dialogsequence"].as_u64())
            .filter(|s| *s > from)
            .collect();
        assert_eq!(expected.len() as u64, POSTS);
        assert_eq!(seqs, expected, "round {round}: no gap, no duplicate");
        last_seen = target;
    }
    // Nothing more queued: the next payload is the next live change.
    post_activity(&node, &id).await;
    assert_eq!(seq(&ws.event().await), last_seen + 2);
}

#[actix_web::test]
async fn resume_beyond_retained_history_starts_with_one_resync_payload() {
    let node = start("[realtime]\nhistory_size = 3").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    for _ in 0..10 {
        post_activity(&node, &id).await;
    }
    let (latest, revision) = sequence_and_revision(&node, &id).await;
    assert_eq!(latest, 21);

    let mut ws = open_tws(&node, &id, &token, Some(1)).await;
    let first = ws.event().await;
    assert_eq!(
        first["resync"], true,
        "history no longer reaches 1: {first}"
    );
    assert_eq!(
        seq(&first),
        latest,
        "the resync is the latest change: {first}"
    );
    assert_eq!(first["revision"], revision, "{first}");
    assert_eq!(first["type"], "DIALOG_UPDATED", "{first}");

    wait_subscriptions(&node, 1).await;
    for n in 1..=2 {
        post_activity(&node, &id).await;
        let live = ws.event().await;
        assert_eq!(seq(&live), latest + 2 * n, "{live}");
        assert_eq!(live["resync"], false, "{live}");
    }
}

#[actix_web::test]
async fn resume_at_the_current_sequence_replays_nothing() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    post_activity(&node, &id).await;
    post_activity(&node, &id).await;
    let (current, _) = sequence_and_revision(&node, &id).await;
    assert_eq!(current, 5);
    let mut ws = open_tws(&node, &id, &token, Some(current)).await;
    wait_subscriptions(&node, 1).await;
    post_activity(&node, &id).await;
    let p = ws.event().await;
    assert_eq!(
        seq(&p),
        current + 2,
        "first payload is the next live change: {p}"
    );
    assert_eq!(p["resync"], false, "{p}");
}

// ---- fan-out ----

#[actix_web::test]
async fn a_thousand_subscribers_each_receive_a_hundred_changes_in_order() {
    const SUBSCRIBERS: usize = 1000;
    const BATCH: usize = 50;
    const CHANGES: u64 = 100;
    // Opening 50 connections at once on a loaded 2-core machine can delay a `connection_init`
    // past the default 3 s; init timing is not the subject here (see the 4408 test).
    // One token for all: the per-party connection cap must not be the limit here.
    let node = start("[realtime]\ninit_timeout = \"60s\"\nmax_connections_per_party = 2000").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;

    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS / BATCH {
        let batch = join_all((0..BATCH).map(|_| open_tws(&node, &id, &token, None))).await;
        clients.extend(batch);
    }
    // Like a real client, subscribe again when the node answered that its store was briefly
    // unavailable (Redis calls time out when this suite loads both cores); anything else fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscriptions(&node).await != SUBSCRIBERS as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for c in clients.iter_mut() {
            if let Ok(Incoming::Json(m)) =
                tokio::time::timeout(Duration::from_millis(1), c.next()).await
            {
                if m["type"] == "ping" {
                    continue; // a keep-alive
                }
                assert_eq!(m["type"], "error", "{m}");
                assert_eq!(m["payload"][0]["extensions"]["code"], "UNAVAILABLE", "{m}");
                c.subscribe("1", &id, None).await;
            }
        }
    }
    wait_subscriptions(&node, SUBSCRIBERS as i64).await;
    let connected = t0.elapsed();

    let t1 = Instant::now();
    let base = sequence_and_revision(&node, &id).await.0;
    let poster = async {
        for _ in 0..CHANGES {
            post_activity(&node, &id).await;
        }
    };
    let readers = join_all(clients.iter_mut().map(|ws| async move {
        let mut seqs = Vec::with_capacity(CHANGES as usize);
        for _ in 0..CHANGES {
            seqs.push(seq(&ws.event().await));
        }
        seqs
    }));
    let ((), received) = futures::join!(poster, readers);
    let delivered = t1.elapsed();
    let expected: Vec<u64> = (1..=CHANGES).map(|k| base + 2 * k).collect();
    for (i, seqs) in received.iter().enumerate() {
        assert_eq!(seqs, &expected, "subscriber {i}");
    }
    eprintln!(
        "fan-out: {SUBSCRIBERS} subscribers connected in {connected:?}, \
         {CHANGES} changes delivered to all in {delivered:?}"
    );
}

// ---- slow consumer ----

#[actix_web::test]
async fn a_client_that_never_reads_is_bounded_in_memory_and_closed_with_4008() {
    const QUEUE_BYTES: i64 = 1024;
    // The queue budget lives above the store and bus seams, and the kernel's socket buffers (which
    // must fill before the budget is reached) grow with how slowly frames trickle in: this runs on
    // the in-memory store in every suite pass, whose commits are fast enough to outrun the kernel
    // (a debug build's fsynced commits are not), so its cost stays bounded.
    let node = start_on(
        &format!("[realtime]\nclient_queue_bytes = {QUEUE_BYTES}\n[store]\nkind = \"memory\""),
        None,
    )
    .await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;

    // A client with a tiny receive buffer that stops reading right after subscribing.
    let mut raw = RawWs::connect(&node, TWS, Some(2048)).await;
    raw.send_json(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    let mut acked = false;
    for _ in 0..10 {
        if let RawFrame::Text(t) = raw.next_frame(WAIT).await
            && t.contains("connection_ack")
        {
            acked = true;
            break;
        }
    }
    assert!(acked, "connection_ack");
    raw.send_json(json!({"id": "1", "type": "subscribe",
        "payload": {"query": SUBSCRIPTION, "variables": {"id": id}}}))
        .await;
    wait_subscriptions(&node, 1).await;

    let t0 = Instant::now();
    let mut posted = 0;
    let mut max_buffered = 0;
    let mut samples = 0;
    for _ in 0..60 {
        // Sample the gauge while the batch is being produced, and once after it.
        let producing = std::cell::Cell::new(true);
        let batch = async {
            join_all((0..50).map(|_| post_activity(&node, &id))).await;
            producing.set(false);
        };
        let sampler = async {
            let mut seen = vec![];
            while producing.get() {
                seen.push(metric(&node, BUFFERED).await);
            }
            seen.push(metric(&node, BUFFERED).await);
            seen
        };
        let ((), seen) = futures::join!(batch, sampler);
        posted += 50;
        samples += seen.len();
        for buffered in seen {
            max_buffered = max_buffered.max(buffered);
            assert!(
                buffered <= QUEUE_BYTES,
                "buffered {buffered} bytes > client_queue_bytes {QUEUE_BYTES} while producing ({posted} changes)"
            );
        }
        if metric(&node, SLOW_CLOSES).await >= 1 {
            break;
        }
    }
    let closes = metric(&node, SLOW_CLOSES).await;
    eprintln!(
        "slow consumer: {posted} changes in {:?}, {samples} gauge samples, max buffered \
         {max_buffered} bytes, {closes} slow closes",
        t0.elapsed()
    );
    assert!(
        closes >= 1,
        "a client that never reads was not closed as too slow after {posted} changes \
         (max buffered {max_buffered} bytes, client_queue_bytes {QUEUE_BYTES})"
    );

    // Drain what the kernel holds: the last frame is the 4008 close.
    let mut close = None;
    for _ in 0..(posted + 100) {
        match raw.next_frame(WAIT).await {
            RawFrame::Close(code) => {
                close = code;
                break;
            }
            RawFrame::Eof => break,
            _ => {}
        }
    }
    assert_eq!(close, Some(4008), "closed with 4008");
    wait_subscriptions(&node, 0).await;
    eventually(WAIT, "buffered bytes released", || async {
        metric(&node, BUFFERED).await == 0
    })
    .await;

    // The node still serves a normal client on the same dialog.
    let mut ws = open_tws(&node, &id, &token, None).await;
    wait_subscriptions(&node, 1).await;
    let before = sequence_and_revision(&node, &id).await.0;
    post_activity(&node, &id).await;
    assert_eq!(seq(&ws.event().await), before + 2);
}

// ---- shutdown ----

#[actix_web::test]
async fn node_shutdown_closes_websockets_with_1012_and_completes_sse() {
    let node = start("[shutdown]\ntimeout = \"5s\"").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut modern = open_tws(&node, &id, &token, None).await;
    let mut legacy = WsClient::connect(&node, LEGACY, None).await;
    legacy_init(&mut legacy, &token).await;
    legacy.subscribe("1", &id, None).await;
    let (status, mut sse) =
        SseClient::open(&node, Some(&token), SUBSCRIPTION, json!({"id": id})).await;
    assert_eq!(status, 200);
    wait_subscriptions(&node, 3).await;

    let sse_end = async {
        let mut names = Vec::new();
        for _ in 0..10 {
            match sse.next().await {
                Some(ev) => names.push(ev.event),
                None => break,
            }
        }
        names
    };
    let (modern_code, legacy_code, sse_events, ()) = futures::join!(
        modern.close_code(),
        legacy.close_code(),
        sse_end,
        node.stop()
    );
    assert_eq!(modern_code, Some(1012), "graphql-transport-ws");
    assert_eq!(legacy_code, Some(1012), "graphql-ws");
    assert_eq!(
        sse_events.last().map(String::as_str),
        Some("complete"),
        "SSE ends with complete: {sse_events:?}"
    );
}

// ---- metrics ----

#[actix_web::test]
async fn metrics_count_connections_subscriptions_and_fanout() {
    // A short keep-alive: a dropped SSE client is noticed at the next write (keep-alive comment).
    let node = start("[realtime]\nping_interval = \"100ms\"").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let tws = r#"transport="graphql-transport-ws""#;
    assert_eq!(labeled_metric(&node, CONNECTIONS, tws).await, 0);
    assert_eq!(subscriptions(&node).await, 0);
    let fanout_before = metric(&node, FANOUT_COUNT).await;

    let mut ws = open_tws(&node, &id, &token, None).await;
    wait_subscriptions(&node, 1).await;
    assert_eq!(labeled_metric(&node, CONNECTIONS, tws).await, 1);

    // An SSE stream counts under its own label, not under graphql-transport-ws.
    let (status, mut sse) =
        SseClient::open(&node, Some(&token), SUBSCRIPTION, json!({"id": id})).await;
    assert_eq!(status, 200);
    wait_subscriptions(&node, 2).await;
    assert_eq!(
        labeled_metric(&node, CONNECTIONS, r#"transport="sse""#).await,
        1
    );
    assert_eq!(labeled_metric(&node, CONNECTIONS, tws).await, 1);

    for n in 1..=3u64 {
        post_activity(&node, &id).await;
        assert_eq!(seq(&ws.event().await), 1 + 2 * n);
        assert_eq!(seq(&sse.event().await), 1 + 2 * n);
    }
    eventually(WAIT, "six payloads in the fan-out histogram", || async {
        metric(&node, FANOUT_COUNT).await == fanout_before + 6
    })
    .await;

    // Dropping the SSE response closes its TCP connection; the keep-alive write detects it.
    drop(sse);
    wait_subscriptions(&node, 1).await;
    ws.send_raw(ws::Message::Close(Some(ws::CloseCode::Normal.into())))
        .await;
    assert_eq!(ws.close_code().await, Some(1000));
    wait_subscriptions(&node, 0).await;
    eventually(WAIT, "connection gauges back to 0", || async {
        labeled_metric(&node, CONNECTIONS, tws).await == 0
            && labeled_metric(&node, CONNECTIONS, r#"transport="sse""#).await == 0
    })
    .await;
}

// ---- POST /graphql queries, GraphiQL ----

fn dialog_by_id(id: &str) -> Vec<u8> {
    json!({"query": format!(
        r#"{{ dialogById(dialogId: "{id}") {{ id revision sequence dialogToken seenSinceLastUpdate }} }}"#
    )})
    .to_string()
    .into_bytes()
}

async fn graphql(node: &TestNode, token: Option<&str>, body: Vec<u8>) -> Reply {
    node.send(
        "POST",
        "/graphql",
        token,
        &[("Content-Type", "application/json")],
        Some(body),
    )
    .await
}

#[actix_web::test]
async fn dialog_by_id_returns_the_dialog_and_a_token_and_records_one_view() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let person = node.tokens.person_1.clone();

    let r = graphql(&node, Some(&person), dialog_by_id(&id)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert!(r.body.get("errors").is_none(), "{}", r.body);
    let d = &r.body["data"]["dialogById"];
    assert_eq!(d["id"], id.as_str(), "{d}");
    let (sequence, revision) = sequence_and_revision(&node, &id).await;
    assert_eq!(sequence, 3, "the first view committed seen + updated");
    assert_eq!(d["sequence"], sequence, "{d}");
    assert_eq!(d["revision"], revision, "{d}");
    assert_eq!(
        d["seenSinceLastUpdate"],
        json!([person_urn(PERSON_1)]),
        "{d}"
    );
    let dialog_token = d["dialogToken"].as_str().expect("dialogToken").to_owned();
    assert_eq!(dialog_token.split('.').count(), 3, "compact JWS");

    let r = graphql(&node, Some(&person), dialog_by_id(&id)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["data"]["dialogById"]["sequence"], 3, "{}", r.body);
    let seen = types(&node.dialog_events(&id).await)
        .iter()
        .filter(|t| *t == "dialogporten.dialog.seen.v1")
        .count();
    assert_eq!(seen, 1, "exactly one seen event after two reads");

    // The issued dialog token authorizes a subscription to this dialog.
    let mut ws = open_tws(&node, &id, &dialog_token, None).await;
    wait_subscriptions(&node, 1).await;
    post_activity(&node, &id).await;
    assert_eq!(seq(&ws.event().await), 5);
}

#[actix_web::test]
async fn dialog_by_id_without_a_token_is_unauthorized_and_malformed_graphql_is_an_error() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;

    let r = graphql(&node, None, dialog_by_id(&id)).await;
    assert_eq!(
        r.body["errors"][0]["extensions"]["code"], "UNAUTHORIZED",
        "{}",
        r.body
    );
    assert!(r.body["data"]["dialogById"].is_null(), "{}", r.body);
    assert_eq!(
        sequence_and_revision(&node, &id).await.0,
        1,
        "no view recorded"
    );

    for (what, body) in [
        ("syntax error", json!({"query": "{ dialogById(dialogId: "})),
        ("unknown field", json!({"query": "{ nope }"})),
        (
            "bad uuid",
            json!({"query": r#"{ dialogById(dialogId: "not-a-uuid") { id } }"#}),
        ),
    ] {
        let r = graphql(
            &node,
            Some(&node.tokens.person_1),
            body.to_string().into_bytes(),
        )
        .await;
        assert!(
            r.status.as_u16() == 200 || r.status.as_u16() == 400,
            "{what}: {}",
            r.status
        );
        let errors = r.body["errors"].as_array();
        assert!(
            errors.is_some_and(|e| !e.is_empty() && e[0]["message"].is_string()),
            "{what}: errors response expected, got {} {}",
            r.status,
            String::from_utf8_lossy(&r.raw)
        );
    }
    // Not JSON at all.
    let r = graphql(&node, None, b"{not json".to_vec()).await;
    assert!(r.status.is_client_error(), "not json: {}", r.status);

    let live = node.send("GET", "/health/live", None, &[], None).await;
    assert_eq!(live.status.as_u16(), 200, "the node still serves");
}

#[actix_web::test]
async fn graphiql_is_served_as_html() {
    let node = start("").await;
    let r = node.send("GET", "/graphiql", None, &[], None).await;
    assert_eq!(r.status.as_u16(), 200);
    let ct = r.header("content-type").expect("content-type");
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(
        String::from_utf8_lossy(&r.raw).contains("/graphql"),
        "GraphiQL points at the endpoint"
    );
}

#[actix_web::test]
async fn aliases_fragments_typename_and_skipped_fields_shape_the_payload() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token)).await;
    let query = "subscription ($id: UUID!, $no: Boolean!) { ev: dialogEvents(dialogId: $id) { \
                 seq: sequence ...F __typename kind: type revision @include(if: $no) resync @skip(if: $no) } } \
                 fragment F on DialogEventPayload { id }";
    ws.send(json!({"id": "1", "type": "subscribe",
        "payload": {"query": query, "variables": {"id": id, "no": false}}}))
        .await;
    wait_subscriptions(&node, 1).await;
    post_activity(&node, &id).await;
    let msg = ws.next_json().await;
    assert_eq!(msg["type"], "next", "{msg}");
    let ev = &msg["payload"]["data"]["ev"];
    let events = node.dialog_events(&id).await;
    let last = events.last().expect("events");
    assert_eq!(
        ev,
        &json!({
            "seq": 3,
            "id": last["id"],
            "__typename": "DialogEventPayload",
            "kind": "DIALOG_UPDATED",
            "resync": false,
        })
    );
    assert!(msg["payload"]["data"].get("dialogEvents").is_none());
}

#[actix_web::test]
async fn an_invalid_operation_gets_the_graphql_errors_array_once_over_websocket_and_sse() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let invalid = "subscription { noSuchField }";
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token)).await;
    ws.send(json!({"id": "bad", "type": "subscribe", "payload": {"query": invalid}}))
        .await;
    let err = ws.next_json().await;
    assert_eq!(err["type"], "error", "{err}");
    let errors = err["payload"].as_array().expect("payload is an array");
    assert!(!errors.is_empty(), "{err}");
    assert!(
        errors.iter().all(|e| e["message"].is_string()),
        "each element is one GraphQL error, not a nested array: {err}"
    );

    let (status, mut sse) = SseClient::open(&node, Some(&token), invalid, json!({})).await;
    assert_eq!(status, 200);
    let first = sse.next().await.expect("an event");
    assert_eq!(first.event, "next");
    let data: Value = serde_json::from_str(&first.data).expect("json");
    let errors = data["errors"].as_array().expect("errors array");
    assert!(!errors.is_empty(), "{data}");
    assert!(errors.iter().all(|e| e["message"].is_string()), "{data}");
}

#[actix_web::test]
async fn a_fragmented_message_over_max_frame_bytes_is_closed_with_1009_too() {
    let node = start("[realtime]\nmax_frame_bytes = 1024").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token)).await;
    // Three fragments of 600 bytes: each under the limit, together over it.
    let text = json!({"type": "ping", "payload": {"pad": "x".repeat(1700)}}).to_string();
    let bytes = text.as_bytes();
    let (a, rest) = bytes.split_at(600);
    let (b, c) = rest.split_at(600);
    use actix_ws::{Item, Message};
    ws.send_raw(Message::Continuation(Item::FirstText(a.to_vec().into())))
        .await;
    ws.send_raw(Message::Continuation(Item::Continue(b.to_vec().into())))
        .await;
    ws.send_raw(Message::Continuation(Item::Last(c.to_vec().into())))
        .await;
    assert_eq!(ws.close_code().await, Some(1009));
}

// ---- disconnects ----

#[actix_web::test]
async fn a_client_close_frame_is_answered_within_100_ms() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = RawWs::connect(&node, TWS, None).await;
    ws.send_json(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    match ws.next_frame(WAIT).await {
        RawFrame::Text(t) => assert!(t.contains("connection_ack"), "{t}"),
        other => panic!("expected the ack, got {other:?}"),
    }
    ws.send_json(json!({"id": "1", "type": "subscribe",
        "payload": {"query": SUBSCRIPTION, "variables": {"id": id}}}))
        .await;
    wait_subscriptions(&node, 1).await;
    let sent = Instant::now();
    ws.send_frame(0x8, &1000u16.to_be_bytes()).await;
    loop {
        match ws.next_frame(WAIT).await {
            RawFrame::Close(code) => {
                assert_eq!(code, Some(1000));
                break;
            }
            RawFrame::Eof => panic!("the connection ended without a close frame"),
            _ => continue, // a keep-alive sent before the close
        }
    }
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "close answered after {took:?}"
    );
    wait_subscriptions(&node, 0).await;
}

#[actix_web::test]
async fn an_sse_client_that_goes_away_is_detached_at_once() {
    // Keep-alives far apart: only noticing the disconnect itself can detach in time.
    let node = start("[realtime]\nping_interval = \"60s\"").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    // A plain socket, so that going away is exactly one close of the TCP connection.
    let sse = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = node.base.strip_prefix("http://").expect("http base url");
        let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
        let body = json!({"query": SUBSCRIPTION, "variables": {"id": id}}).to_string();
        let request = format!(
            "POST /graphql/stream HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
             Content-Type: application/json\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut head = [0u8; 12];
        tokio::time::timeout(WAIT, stream.read_exact(&mut head))
            .await
            .expect("answer in time")
            .expect("read");
        assert_eq!(&head, b"HTTP/1.1 200");
        stream
    };
    wait_subscriptions(&node, 1).await;
    assert_eq!(
        labeled_metric(
            &node,
            "dialog_events_realtime_connections",
            "transport=\"sse\""
        )
        .await,
        1
    );
    let gone = Instant::now();
    drop(sse);
    // No write happens on the dialog: the stream ends because its client left (the keep-alive,
    // a minute away, is not what ends it).
    loop {
        let conns = labeled_metric(
            &node,
            "dialog_events_realtime_connections",
            "transport=\"sse\"",
        )
        .await;
        if conns == 0 {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(1),
            "the stream still runs after {:?}",
            gone.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its subscription is detached from the dialog's actor right after.
    wait_subscriptions(&node, 0).await;
}

#[actix_web::test]
async fn websocket_clients_that_vanish_together_are_all_detached_and_the_one_left_keeps_receiving()
{
    let node = start("[realtime]\nping_interval = \"60s\"").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut stays = WsClient::subscribed(&node, &token, "s", &id, None, 1).await;
    // More than the node tears down in one turn: every turn must follow.
    let mut leaving = Vec::new();
    for n in 0..50 {
        leaving.push(WsClient::subscribed(&node, &token, "l", &id, None, n + 2).await);
    }
    let connections = || async {
        labeled_metric(
            &node,
            "dialog_events_realtime_connections",
            "transport=\"graphql-transport-ws\"",
        )
        .await
    };
    assert_eq!(connections().await, 51);
    let gone = Instant::now();
    // Dropped without a close frame: each socket's TCP connection just ends.
    drop(leaving);
    while connections().await != 1 {
        assert!(
            gone.elapsed() < Duration::from_secs(2),
            "{} connections still counted after {:?}",
            connections().await,
            gone.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Their subscriptions are detached from the dialog's actor too.
    wait_subscriptions(&node, 1).await;
    post_activity(&node, &id).await;
    let event = stays.event().await;
    assert_eq!(event["type"], "DIALOG_UPDATED", "{event}");
}

#[actix_web::test]
async fn a_change_wakes_each_workers_hub_once_not_each_connection_and_every_frame_arrives_in_order()
{
    // Two HTTP workers (the test default) serve the connections; each change's frames to them
    // must cost each worker a wake-up or so, not one per connection.
    let node = start("[realtime]\nping_interval = \"60s\"").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    const CLIENTS: usize = 60;
    const CHANGES: u64 = 10;
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        clients.push(WsClient::subscribed(&node, &token, "h", &id, None, n as i64 + 1).await);
    }
    let (base, _) = sequence_and_revision(&node, &id).await;
    let wakeups_before = metric(&node, HUB_WAKEUPS).await;
    for change in 1..=CHANGES {
        post_activity(&node, &id).await;
        // Every client gets the change (an activity commits two events) before the next one.
        for client in clients.iter_mut() {
            assert_eq!(seq(&client.event().await), base + 2 * change);
        }
    }
    let wakeups = metric(&node, HUB_WAKEUPS).await - wakeups_before;
    let frames = CLIENTS as i64 * CHANGES as i64;
    assert!(wakeups > 0, "the frames were written by the workers' hubs");
    // One per change and worker when the actor rings faster than the hub answers; a few more
    // when a hub starts on the first rings of a change while the rest are still being rung.
    // One wake-up per connection would be 600.
    assert!(
        wakeups <= frames / 6,
        "{wakeups} hub wake-ups for {frames} frames of {CHANGES} changes"
    );
}

#[actix_web::test]
async fn a_purge_sends_dialog_deleted_then_ends_every_stream_of_the_dialog() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut tws = WsClient::subscribed(&node, &token, "a", &id, None, 1).await;
    let (status, mut sse) =
        SseClient::open(&node, Some(&token), SUBSCRIPTION, json!({"id": id})).await;
    assert_eq!(status, 200);
    wait_subscriptions(&node, 2).await;
    let r = node
        .send(
            "POST",
            &format!("/api/v1/serviceowner/dialogs/{id}/actions/purge"),
            Some(&node.tokens.owner_a),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    let ev = tws.event().await;
    assert_eq!(ev["type"], "DIALOG_DELETED", "{ev}");
    assert_eq!(sse.event().await["type"], "DIALOG_DELETED");
    tws.ended_unauthorized("a").await;
    sse.ended_unauthorized().await;
    wait_subscriptions(&node, 0).await;
}
