//! Cheap abuse is bounded: batched GraphQL and introspection, slow or stalled request bodies,
//! realtime operations per connection, operation-id length and connections per party (SPEC 2, 6, 9).

mod common;

use std::time::{Duration, Instant};

use common::realtime::*;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TWS: &str = "graphql-transport-ws";
const INTROSPECTION: &str = "{ __schema { queryType { name } types { name } } }";

async fn graphql(node: &TestNode, body: &Value) -> Reply {
    node.send(
        "POST",
        "/graphql",
        None,
        &[("Content-Type", "application/json")],
        Some(body.to_string().into_bytes()),
    )
    .await
}

fn batch(n: usize) -> Value {
    Value::Array((0..n).map(|_| json!({"query": INTROSPECTION})).collect())
}

#[actix_web::test]
async fn a_batch_over_max_batch_is_400_and_one_within_it_is_answered_in_full() {
    let node = start("[graphql]\nmax_batch = 10").await;
    let over = graphql(&node, &batch(11)).await;
    assert_eq!(over.status.as_u16(), 400, "{}", over.body);
    let message = over.body["errors"][0]["message"].as_str().expect("message");
    assert!(message.contains("at most 10"), "{message}");
    assert!(over.raw.len() < 1024, "no operation of the batch ran");
    let within = graphql(&node, &batch(10)).await;
    assert_eq!(within.status.as_u16(), 200, "{}", within.body);
    let answers = within.body.as_array().expect("array");
    assert_eq!(answers.len(), 10);
    assert!(
        answers
            .iter()
            .all(|a| a["data"]["__schema"]["queryType"]["name"] == "Query")
    );
    // The default is 10 too.
    let node = start("").await;
    assert_eq!(graphql(&node, &batch(11)).await.status.as_u16(), 400);
}

#[actix_web::test]
async fn introspection_follows_the_dev_issuer_unless_configured() {
    let refused = |r: &Reply| {
        r.body["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty() && e[0]["message"].is_string())
            && r.body["data"].is_null()
    };
    // Dev issuer on (the test default): introspection on.
    let dev = start("").await;
    let r = graphql(&dev, &json!({"query": INTROSPECTION})).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["data"]["__schema"]["queryType"]["name"], "Query");
    // Configured off on a dev node.
    let off = start("[graphql]\nintrospection = false").await;
    let r = graphql(&off, &json!({"query": INTROSPECTION})).await;
    assert!(refused(&r), "{}", r.body);
    // Dev issuer off and nothing configured: off.
    let prod = start("[auth.dev_issuer]\nenabled = false").await;
    let r = graphql(&prod, &json!({"query": INTROSPECTION})).await;
    assert!(refused(&r), "{}", r.body);
    // Explicitly on beside a disabled dev issuer.
    let on = start("[auth.dev_issuer]\nenabled = false\n[graphql]\nintrospection = true").await;
    let r = graphql(&on, &json!({"query": INTROSPECTION})).await;
    assert_eq!(r.body["data"]["__schema"]["queryType"]["name"], "Query");
}

/// Sends a request head announcing `length` body bytes and `first` of them, then `trickle` one
/// byte a second (or nothing); returns the status line and when the connection was closed.
async fn slow_body(
    node: &TestNode,
    path: &str,
    content_type: &str,
    first: &[u8],
    trickle: bool,
) -> (String, Duration) {
    let addr = node.base.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
         Authorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n",
        node.tokens.owner_a
    );
    sock.write_all(head.as_bytes()).await.expect("head");
    sock.write_all(first).await.expect("first bytes");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the connection was still open after 20 s: {:?}",
            String::from_utf8_lossy(&got)
        );
        match tokio::time::timeout(Duration::from_secs(1), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) if trickle => {
                if sock.write_all(b" ").await.is_err() {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.lines().next().unwrap_or("").to_owned();
    (status, started.elapsed())
}

#[actix_web::test]
async fn a_stalled_or_trickling_request_body_is_cut_with_408_at_body_timeout() {
    let node = start("[http]\nbody_timeout = \"1s\"").await;
    for (path, content_type) in [
        ("/api/v1/serviceowner/dialogs", "application/json"),
        ("/events/api/v1/events", "application/cloudevents+json"),
        ("/events/api/v1/subscriptions", "application/json"),
        ("/graphql", "application/json"),
        ("/graphql/stream", "application/json"),
    ] {
        for trickle in [false, true] {
            let (status, closed) = slow_body(&node, path, content_type, b"{\"a", trickle).await;
            assert_eq!(
                status, "HTTP/1.1 408 Request Timeout",
                "{path} trickle={trickle}"
            );
            assert!(
                closed < Duration::from_secs(10),
                "{path}: closed after {closed:?}"
            );
        }
    }
    // A whole body in time is served as before.
    node.create_dialog(&dialog_body()).await;
}

#[actix_web::test]
async fn subscriptions_over_the_per_connection_cap_get_an_error_and_the_socket_stays() {
    let node = start("[realtime]\nmax_subscriptions_per_connection = 3").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token)).await;
    for op in ["a", "b", "c"] {
        ws.subscribe(op, &id, None).await;
    }
    wait_subscriptions(&node, 3).await;
    ws.subscribe("d", &id, None).await;
    let err = ws.next_json().await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["id"], "d", "{err}");
    let message = err["payload"][0]["message"].as_str().expect("message");
    assert!(message.contains("at most 3"), "{message}");
    assert_eq!(subscriptions(&node).await, 3, "nothing attached for d");
    // The socket and its three operations go on.
    post_activity(&node, &id).await;
    let mut ops = Vec::new();
    for _ in 0..3 {
        let msg = ws.next_json().await;
        assert_eq!(msg["type"], "next", "{msg}");
        ops.push(msg["id"].as_str().expect("id").to_owned());
    }
    ops.sort();
    assert_eq!(ops, ["a", "b", "c"]);
    // Completing one frees a place.
    ws.send(json!({"id": "a", "type": "complete"})).await;
    wait_subscriptions(&node, 2).await;
    ws.subscribe("e", &id, None).await;
    wait_subscriptions(&node, 3).await;
}

#[actix_web::test]
async fn an_operation_id_over_max_operation_id_bytes_closes_with_4400() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = WsClient::connect(&node, TWS, None).await;
    ws.init(Some(&token)).await;
    ws.subscribe(&"x".repeat(128), &id, None).await;
    wait_subscriptions(&node, 1).await;
    ws.subscribe(&"y".repeat(129), &id, None).await;
    assert_eq!(ws.close_code().await, Some(4400));
}

#[actix_web::test]
async fn connections_over_the_per_party_cap_are_refused_with_4429_and_429() {
    let node = start("[realtime]\nmax_connections_per_party = 2").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut first = WsClient::connect(&node, TWS, None).await;
    first.init(Some(&token)).await;
    let mut second = WsClient::connect(&node, TWS, Some(&token)).await;
    second.init(None).await;
    let mut third = WsClient::connect(&node, TWS, None).await;
    third
        .send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}))
        .await;
    assert_eq!(third.close_code().await, Some(4429));
    let (status, _) = SseClient::open(
        &node,
        Some(&token),
        SUBSCRIPTION,
        json!({"id": id, "after": null}),
    )
    .await;
    assert_eq!(status, 429, "an SSE stream counts too");
    // Another party is not affected: a token minted for another caller (the dialog's party).
    let r = node
        .get(
            &format!("/api/v1/enduser/dialogs/{id}"),
            &node.tokens.person_1,
        )
        .await;
    let other = r.body["dialogToken"].as_str().expect("token").to_owned();
    let mut theirs = WsClient::connect(&node, TWS, None).await;
    theirs.init(Some(&other)).await;
    // A closed connection gives its slot back.
    first
        .send_raw(awc::ws::Message::Close(Some(
            awc::ws::CloseCode::Normal.into(),
        )))
        .await;
    assert_eq!(first.close_code().await, Some(1000));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = WsClient::connect(&node, TWS, None).await;
        again
            .send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}))
            .await;
        match again.next().await {
            Incoming::Json(ack) if ack["type"] == "connection_ack" => break,
            other => assert!(
                Instant::now() < deadline,
                "the slot was not given back: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
}
