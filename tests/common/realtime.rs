//! Realtime test clients: a WebSocket client speaking either GraphQL protocol and an SSE reader.
#![allow(dead_code)]

use std::time::Duration;

use awc::ws;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

use super::TestNode;

/// How long a client waits for one message before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

pub const SUBSCRIPTION: &str = "subscription ($id: UUID!, $after: Int) { dialogEvents(dialogId: $id, afterSequence: $after) { id type sequence revision resync } }";

pub struct WsClient {
    framed: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
    pub protocol: String,
}

/// What the server sent next.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Closed(Option<u16>, String),
}

impl WsClient {
    /// Opens `GET /graphql` offering `protocol`, optionally with a bearer header.
    pub async fn connect(node: &TestNode, protocol: &str, header_token: Option<&str>) -> WsClient {
        let mut req = awc::Client::builder()
            .max_http_version(awc::http::Version::HTTP_11)
            .finish()
            .ws(node.url("/graphql"))
            .protocols([protocol]);
        if let Some(t) = header_token {
            req = req.bearer_auth(t);
        }
        let (_resp, framed) = req.connect().await.expect("websocket upgrade");
        WsClient {
            framed,
            protocol: protocol.to_owned(),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.framed
            .send(ws::Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, msg: ws::Message) {
        self.framed.send(msg).await.expect("send");
    }

    /// The next JSON message, skipping keep-alives (`ping`/`pong`/`ka`, WebSocket pings).
    pub async fn next(&mut self) -> Incoming {
        loop {
            let frame = tokio::time::timeout(WAIT, self.framed.next())
                .await
                .expect("a message in time");
            match frame {
                None => return Incoming::Closed(None, "eof".into()),
                Some(Err(e)) => return Incoming::Closed(None, e.to_string()),
                Some(Ok(ws::Frame::Text(t))) => {
                    let v: Value = serde_json::from_slice(&t).expect("json message");
                    if matches!(v["type"].as_str(), Some("ping")) {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    if matches!(v["type"].as_str(), Some("pong" | "ka")) {
                        continue;
                    }
                    return Incoming::Json(v);
                }
                Some(Ok(ws::Frame::Ping(p))) => {
                    let _ = self.framed.send(ws::Message::Pong(p)).await;
                }
                Some(Ok(ws::Frame::Close(reason))) => {
                    let code = reason.as_ref().map(|r| u16::from(r.code));
                    let text = reason.and_then(|r| r.description).unwrap_or_default();
                    return Incoming::Closed(code, text);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            Incoming::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Incoming::Closed(code, _) => return code,
                Incoming::Json(_) => continue,
            }
        }
    }

    /// `connection_init` (payload token optional) and the ack.
    pub async fn init(&mut self, token: Option<&str>) {
        let payload = match token {
            Some(t) => json!({"Authorization": format!("Bearer {t}")}),
            None => json!({}),
        };
        self.send(json!({"type": "connection_init", "payload": payload}))
            .await;
        let ack = self.next_json().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
    }

    /// Starts `dialogEvents` for `dialog` with operation `id`.
    pub async fn subscribe(&mut self, id: &str, dialog: &str, after: Option<u64>) {
        let kind = if self.protocol == "graphql-ws" {
            "start"
        } else {
            "subscribe"
        };
        self.send(json!({
            "id": id,
            "type": kind,
            "payload": {"query": SUBSCRIPTION, "variables": {"id": dialog, "after": after}}
        }))
        .await;
    }

    /// The next `dialogEvents` payload (`next` / legacy `data`).
    pub async fn event(&mut self) -> Value {
        let msg = self.next_json().await;
        let expected = if self.protocol == "graphql-ws" {
            "data"
        } else {
            "next"
        };
        assert_eq!(msg["type"], expected, "{msg}");
        msg["payload"]["data"]["dialogEvents"].clone()
    }
}

/// Reads `event:`/`data:` pairs from an SSE response.
type Body = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>>,
>;

pub struct SseClient {
    resp: awc::ClientResponse<Body>,
    buf: String,
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl SseClient {
    pub async fn open(
        node: &TestNode,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (u16, SseClient) {
        let mut req = node
            .client
            .post(node.url("/graphql/stream"))
            .insert_header(("Accept", "text/event-stream"))
            .insert_header(("Content-Type", "application/json"))
            .timeout(Duration::from_secs(600));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send_body(json!({"query": query, "variables": variables}).to_string())
            .await
            .expect("sse request");
        let status = resp.status().as_u16();
        (
            status,
            SseClient {
                resp,
                buf: String::new(),
            },
        )
    }

    /// The next event (comments skipped); None when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.trim_start());
                        any = true;
                    }
                }
                if any {
                    return Some(ev);
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.next())
                .await
                .expect("sse data in time");
            match chunk {
                Some(Ok(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next `next` event's `dialogEvents` payload.
    pub async fn event(&mut self) -> Value {
        let ev = self.next().await.expect("an event");
        assert_eq!(ev.event, "next", "{ev:?}");
        let v: Value = serde_json::from_str(&ev.data).expect("json data");
        v["data"]["dialogEvents"].clone()
    }
}

/// A dialog token for `id`, from a service-owner read (which records no view).
pub async fn dialog_token(node: &TestNode, id: &str) -> String {
    let r = node
        .get(
            &format!("/api/v1/serviceowner/dialogs/{id}"),
            &node.tokens.owner_a,
        )
        .await;
    r.body["dialogToken"]
        .as_str()
        .expect("dialogToken")
        .to_owned()
}

/// The node's `realtime_subscriptions` gauge.
pub async fn subscriptions(node: &TestNode) -> i64 {
    metric(node, "dialog_events_realtime_subscriptions").await
}

/// A metric's value (first sample line whose name matches exactly, labels ignored).
pub async fn metric(node: &TestNode, name: &str) -> i64 {
    let text = node.metrics().await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(['{', ' ']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or(0)
}

/// Waits until the node has exactly `n` active subscriptions.
pub async fn wait_subscriptions(node: &TestNode, n: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = subscriptions(node).await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} subscriptions, have {now}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
