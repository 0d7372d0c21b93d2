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
        WsClient::connect_to(&node.base, protocol, header_token).await
    }

    /// Opens `GET {base}/graphql` (a node, or a load balancer in front of nodes).
    pub async fn connect_to(base: &str, protocol: &str, header_token: Option<&str>) -> WsClient {
        let mut req = awc::Client::builder()
            .max_http_version(awc::http::Version::HTTP_11)
            .finish()
            .ws(format!("{base}/graphql"))
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
        self.next_frame(true).await
    }

    /// The next JSON message; with `skip_keep_alive` false, protocol keep-alives (`ping`, `pong`,
    /// `ka`) are returned too (WebSocket pings are always answered and skipped).
    pub async fn next_frame(&mut self, skip_keep_alive: bool) -> Incoming {
        loop {
            let frame = tokio::time::timeout(WAIT, self.framed.next())
                .await
                .expect("a message in time");
            match frame {
                None => return Incoming::Closed(None, "eof".into()),
                Some(Err(e)) => return Incoming::Closed(None, e.to_string()),
                Some(Ok(ws::Frame::Text(t))) => {
                    let v: Value = serde_json::from_slice(&t).expect("json message");
                    if !skip_keep_alive {
                        return Incoming::Json(v);
                    }
                    if matches!(v["type"].as_str(), Some("ping")) {
                        // After our close frame the server may already have closed the socket:
                        // a keep-alive still in flight is answered only if it can be.
                        let pong = json!({"type": "pong"}).to_string();
                        let _ = self.framed.send(ws::Message::Text(pong.into())).await;
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

    /// A graphql-transport-ws client on `node`, initialized with `token`, subscribed to `dialog`
    /// as operation `op`; returns once the node has attached `subscriptions` subscriptions in all.
    pub async fn subscribed(
        node: &TestNode,
        token: &str,
        op: &str,
        dialog: &str,
        after: Option<u64>,
        subscriptions: i64,
    ) -> WsClient {
        let mut client = WsClient::connect(node, "graphql-transport-ws", None).await;
        client.init(Some(token)).await;
        client.subscribe(op, dialog, after).await;
        wait_subscriptions(node, subscriptions).await;
        client
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
    /// Reads the events of a stream request made elsewhere.
    pub fn from_response(resp: awc::ClientResponse<Body>) -> SseClient {
        SseClient {
            resp,
            buf: String::new(),
        }
    }

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

/// The dialog token an end user's details read of `id` hands out (`token` is the user's bearer).
pub async fn end_user_dialog_token(node: &TestNode, token: &str, id: &str) -> String {
    let r = node
        .get(&format!("/api/v1/enduser/dialogs/{id}"), token)
        .await;
    assert_eq!(r.status.as_u16(), 200, "end-user read: {}", r.body);
    r.body["dialogToken"]
        .as_str()
        .expect("dialogToken")
        .to_owned()
}

/// Asserts that a `next` (or legacy `data`) payload is an `UNAUTHORIZED` GraphQL error.
pub fn assert_unauthorized(payload: &Value) {
    let errors = payload["errors"].as_array().expect("errors");
    assert!(!errors.is_empty(), "{payload}");
    assert_eq!(errors[0]["extensions"]["code"], "UNAUTHORIZED", "{payload}");
}

impl WsClient {
    /// Waits for operation `op` to end the way a lost access ends it: one error payload with
    /// code `UNAUTHORIZED`, then `complete`. Keep-alives and payloads before it are skipped.
    pub async fn ended_unauthorized(&mut self, op: &str) {
        let data = if self.protocol == "graphql-ws" {
            "data"
        } else {
            "next"
        };
        loop {
            let msg = self.next_json().await;
            if msg["id"] != op || msg["type"] != data {
                continue;
            }
            if msg["payload"]["errors"].is_null() {
                continue; // a change committed before the access ended
            }
            assert_unauthorized(&msg["payload"]);
            break;
        }
        let msg = self.next_json().await;
        assert_eq!(msg["type"], "complete", "{msg}");
        assert_eq!(msg["id"], op, "{msg}");
    }
}

impl SseClient {
    /// Waits for the stream to end with an `UNAUTHORIZED` error and `complete`.
    pub async fn ended_unauthorized(&mut self) {
        loop {
            let ev = self
                .next()
                .await
                .expect("the stream ends with an error first");
            assert_eq!(ev.event, "next", "{ev:?}");
            let v: Value = serde_json::from_str(&ev.data).expect("json data");
            if v["errors"].is_null() {
                continue;
            }
            assert_unauthorized(&v);
            break;
        }
        let ev = self.next().await.expect("complete");
        assert_eq!(ev.event, "complete", "{ev:?}");
    }
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

/// A metric's value on the first sample line named `name` whose labels contain `label`
/// (e.g. `transport="sse"`); 0 when there is none.
pub async fn labeled_metric(node: &TestNode, name: &str, label: &str) -> i64 {
    let text = node.metrics().await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or(0)
}

/// A frame read by `RawWs`.
#[derive(Debug)]
pub enum RawFrame {
    Text(String),
    /// Close code (if the frame carried one).
    Close(Option<u16>),
    /// Any other opcode, with its payload.
    Other(u8, Vec<u8>),
    /// The peer closed the TCP connection.
    Eof,
}

/// A minimal WebSocket client on a plain TCP socket with a chosen receive buffer: the handshake
/// and framing by hand, nothing buffered in user space beyond the frame being parsed. Used where
/// kernel and library buffers must stay small (slow-consumer tests).
pub struct RawWs {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Opens `GET /graphql` offering `protocol`; `recv_buffer` sets `SO_RCVBUF` before connecting.
    pub async fn connect(node: &TestNode, protocol: &str, recv_buffer: Option<u32>) -> RawWs {
        Self::connect_with(node, protocol, recv_buffer, &[]).await
    }

    /// As `connect`, with `early` (client frames) sent in the same write as the handshake request,
    /// before any answer to it.
    pub async fn connect_with(
        node: &TestNode,
        protocol: &str,
        recv_buffer: Option<u32>,
        early: &[u8],
    ) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = node.base.strip_prefix("http://").expect("http base url");
        let addr: std::net::SocketAddr = host.parse().expect("base url is ip:port");
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        if let Some(n) = recv_buffer {
            socket.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let mut stream = socket.connect(addr).await.expect("tcp connect");
        let request = format!(
            "GET /graphql HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
        );
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(early);
        stream.write_all(&bytes).await.expect("send handshake");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("handshake response in time")
                .expect("read handshake");
            assert!(n > 0, "connection closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "websocket upgrade refused: {head}"
        );
        buf.drain(..end);
        RawWs { stream, buf }
    }

    /// Sends one masked frame with `opcode` (0x1 text, 0x2 binary, 0x8 close).
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let frame = client_frame(opcode, payload);
        self.stream.write_all(&frame).await.expect("send frame");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_frame(0x1, v.to_string().as_bytes()).await;
    }

    /// Reads one whole frame (server frames are unmasked); fails after `wait`.
    pub async fn next_frame(&mut self, wait: Duration) -> RawFrame {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((opcode, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return match opcode {
                    0x1 => RawFrame::Text(String::from_utf8(payload).expect("utf8 text")),
                    0x8 => RawFrame::Close(
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                    ),
                    op => RawFrame::Other(op, payload),
                };
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(wait, self.stream.read(&mut chunk))
                .await
                .expect("a frame in time")
            {
                Ok(n) => n,
                Err(_) => return RawFrame::Eof,
            };
            if n == 0 {
                return RawFrame::Eof;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One whole client frame (masked, as a client must send it) with `opcode`.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_fragment(true, opcode, payload)
}

/// One client frame that ends its message (`fin`) or not; a continuation's `opcode` is 0x0.
pub fn client_fragment(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Sends `request` (a whole HTTP/1.1 request) on a new connection and returns everything the node
/// answers until it closes the connection.
pub async fn raw_http(node: &TestNode, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = node.base.strip_prefix("http://").expect("http base url");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("tcp connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the node closes the connection in time")
        .expect("read answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// One unmasked frame at the start of `buf`: (opcode, payload, bytes used).
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if buf[1] & 0x80 != 0 {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let data = buf.get(at..at + len)?;
    let payload = match mask {
        Some(m) => data.iter().enumerate().map(|(i, b)| b ^ m[i % 4]).collect(),
        None => data.to_vec(),
    };
    Some((opcode, payload, at + len))
}
