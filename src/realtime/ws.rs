//! GraphQL over WebSocket: `graphql-transport-ws` and the legacy `graphql-ws`
//! (subscriptions-transport-ws) on one connection loop, with their close codes, keep-alive, init
//! timeout, frame limit and the slow-consumer close (4008). The handshake is answered here on the
//! connection actix-http hands over. Each connection is then one task reading its own socket
//! (`super::socket`), and its frames are written by its worker's hub (`super::hub`) through the
//! part the two share (`Outlet`).

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::header::{self, HeaderMap};
use actix_http::{Method, Request, h1};
use juniper::http::GraphQLRequest;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

use super::RealtimeState;
use super::hub::{Outlet as HubOutlet, Seat};
use super::operation::{self, OpEvent};
use super::schema::FastSubscription;
use super::socket::{Incoming, ReadError, Reader, Wire};
use crate::dialogs::ConnectionBudget;

/// Capacity of the channel from a connection's operations (while they resolve) to the connection.
const WRITER_CHANNEL: usize = 16;

/// How long a closing connection waits for its last frames to be written, and then for the
/// client to close its side.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// `graphql-transport-ws` (the graphql-ws library).
    TransportWs,
    /// `graphql-ws` (Apollo's legacy subscriptions-transport-ws).
    Legacy,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::Legacy => "graphql-ws",
        }
    }
}

/// The first subprotocol the client offers that is served here.
fn chosen_protocol(headers: &HeaderMap) -> Option<Protocol> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| match p.trim() {
            "graphql-transport-ws" => Some(Protocol::TransportWs),
            "graphql-ws" => Some(Protocol::Legacy),
            _ => None,
        })
}

/// A WebSocket upgrade request, handed over by the HTTP/1 dispatcher with its connection
/// (`HttpService::build().upgrade`): the handshake is checked and answered here, and then this
/// future serves the connection to its end, on the socket itself.
pub async fn accept(
    (req, framed): (Request, Framed<TcpStream, h1::Codec>),
    state: Arc<RealtimeState>,
) -> Result<(), Infallible> {
    // Only the socket outlives the handshake: the request, the HTTP codec and the dispatcher's
    // buffers (8 KiB each) are gone before the connection is served.
    // Boxed: the handshake's state is large and short-lived; inline it would size this future
    // (which lives as long as the connection) for good.
    let Some(((wire, reader), protocol, header_token)) =
        Box::pin(handshake(req, framed, &state)).await
    else {
        return Ok(());
    };
    // The connection becomes a task of its own, and the HTTP dispatcher's task (sized for
    // ordinary requests) ends here.
    let open = state.sockets.enter();
    actix_web::rt::spawn(async move {
        match protocol {
            Some(p) => run(Connection::new(p, wire, reader, state, header_token)).await,
            None => {
                wire.close(
                    Some((4406, "Subprotocol not acceptable".into())),
                    CLOSE_LINGER,
                )
                .await
            }
        }
        drop(open);
    });
    Ok(())
}

/// Checks and answers the upgrade request: the socket, the subprotocol chosen (if the client
/// offered one served here) and the bearer token of the request; `None` when it was refused.
async fn handshake(
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    state: &RealtimeState,
) -> Option<((Wire, Reader), Option<Protocol>, Option<String>)> {
    let parts = framed.into_parts();
    let (mut io, early) = (parts.io, parts.read_buf);
    drop(parts.write_buf);
    let head = req.head();
    let refusal = if head.uri.path() != "/graphql" {
        Some((
            404,
            "Not Found",
            "WebSockets are served at /graphql only".to_owned(),
        ))
    } else if head.method != Method::GET {
        Some((
            405,
            "Method Not Allowed",
            "a WebSocket upgrade is a GET".to_owned(),
        ))
    } else if !state.origins.allows_upgrade(
        head.headers.get(header::ORIGIN),
        head.headers.get(header::HOST),
    ) {
        Some((
            403,
            "Forbidden",
            "this Origin may not open a WebSocket here (http.cors_origins)".to_owned(),
        ))
    } else if let Err(e) = actix_http::ws::verify_handshake(head) {
        Some((
            400,
            "Bad Request",
            format!("not a WebSocket handshake: {e}"),
        ))
    } else {
        None
    };
    if let Some((status, title, detail)) = refusal {
        let code = actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
        let body = crate::http::problem::problem_body(code, title, &detail, None);
        super::socket::refuse(io, status, title, &body, CLOSE_LINGER).await;
        return None;
    }
    let protocol = chosen_protocol(&head.headers);
    let key = head
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| actix_http::ws::hash_key(k.as_bytes()))
        .unwrap_or_default();
    let mut response = String::with_capacity(160);
    response.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-accept: ",
    );
    response.push_str(std::str::from_utf8(&key).unwrap_or_default());
    if let Some(p) = protocol {
        response.push_str("\r\nsec-websocket-protocol: ");
        response.push_str(p.label());
    }
    response.push_str("\r\n\r\n");
    {
        use tokio::io::AsyncWriteExt;
        if io.write_all(response.as_bytes()).await.is_err() {
            return None;
        }
    }
    let header_token = super::bearer_in(&head.headers).map(str::to_owned);
    let sides = super::socket::split(io, early, state.settings.max_frame_bytes);
    Some((sides, protocol, header_token))
}

/// One operation of a connection.
enum Op {
    Running(actix_web::rt::task::JoinHandle<()>),
    /// Detaches from its dialog when dropped.
    Fast(FastSubscription),
}

impl Op {
    fn stop(self) {
        if let Op::Running(task) = self {
            task.abort();
        }
    }
}

/// What handling one client message asks of the connection.
enum Step {
    Continue,
    Close(u16, String),
}

struct Connection {
    protocol: Protocol,
    reader: Reader,
    /// Shared with the worker's hub, which pumps it when a dialog actor rings its doorbell.
    outlet: Rc<Outlet>,
    /// The connection's seat in its worker's hub; leaving it (on drop) stops the rings.
    seat: Seat,
    state: std::sync::Arc<RealtimeState>,
    token: Option<String>,
    acked: bool,
    /// The channel from operations in a task to the connection; only while any runs.
    resolving: Option<Resolving>,
    /// The party's connection slot, taken when `connection_init` is accepted; freed on drop.
    slot: Option<super::limits::PartySlot>,
}

/// What a connection's task and its worker's hub share (both on the worker's thread): the
/// socket's write side and the operations whose frames are written to it.
struct Outlet {
    wire: Wire,
    /// Operations by client id: resolving (or streaming through juniper) in a task that reports
    /// through `resolving` and is aborted on `complete`/`stop` or when the connection ends; or
    /// attached subscriptions drained into `wire`. Borrowed only within a call.
    ops: RefCell<Ops>,
    budget: std::sync::Arc<ConnectionBudget>,
    /// The message type of a payload: `next` or (legacy) `data`.
    next: &'static str,
    latency: prometheus::Histogram,
    /// Frames the socket has not taken yet, beyond which the subscriptions' queues are left to
    /// fill (and then coalesce) instead of being written.
    backlog_limit: usize,
    /// Wakes the connection's task after a pump left frames the socket did not take (the task
    /// then waits for the socket to take them) or found the connection gone.
    kick: Notify,
    /// A write failed: the peer is gone.
    gone: Cell<bool>,
}

impl Connection {
    fn new(
        protocol: Protocol,
        wire: Wire,
        reader: Reader,
        state: std::sync::Arc<RealtimeState>,
        token: Option<String>,
    ) -> Self {
        let seat = Seat::take(&state.metrics.hub_wakeups);
        let budget = ConnectionBudget::seated(
            state.settings.client_queue_bytes,
            Some(state.metrics.buffered_bytes.clone()),
            seat.doorbell(),
        );
        let outlet = Rc::new(Outlet {
            wire,
            ops: RefCell::default(),
            budget,
            next: match protocol {
                Protocol::TransportWs => "next",
                Protocol::Legacy => "data",
            },
            latency: state.metrics.fanout_latency.clone(),
            backlog_limit: state.settings.client_queue_bytes,
            kick: Notify::new(),
            gone: Cell::new(false),
        });
        let shared: Rc<dyn HubOutlet> = outlet.clone();
        seat.sit(Rc::downgrade(&shared));
        Connection {
            protocol,
            reader,
            outlet,
            seat,
            state,
            token,
            acked: false,
            resolving: None,
            slot: None,
        }
    }
}

impl HubOutlet for Outlet {
    /// Writes what the connection's subscriptions hold, unless the socket is too far behind.
    fn pump(&self) {
        self.budget.answered();
        if self.gone.get() {
            return;
        }
        if self.wire.backlog() > self.backlog_limit {
            // The client reads slower than changes come: its queues fill and coalesce
            // meanwhile; once one had to, the client is too slow.
            if self.budget.take_overflowed() {
                self.budget.flag_too_slow();
            }
            return;
        }
        if self.drain().is_err() {
            self.gone.set(true);
            self.kick.notify_one();
        } else if self.wire.backlog() > 0 {
            self.kick.notify_one();
        }
    }
}

impl Outlet {
    /// Writes what the attached subscriptions hold now, back to back, in as few writes as the
    /// socket allows. Each frame is built once, straight into the write buffer: the operation's
    /// framing around the payload.
    fn drain(&self) -> Result<(), Gone> {
        self.budget.take_overflowed();
        let mut ended: Vec<String> = Vec::new();
        let mut ops = self.ops.borrow_mut();
        for (id, op) in &ops.0 {
            let Op::Fast(fast) = op else { continue };
            let done = operation::drain(fast, Some(&self.latency), |payload| {
                let kind = if payload.is_some() {
                    self.next
                } else {
                    "complete"
                };
                frame(&self.wire, id, kind, payload);
            });
            if done {
                ended.push(id.clone());
            }
        }
        // An ended subscription's id is free again once its `complete` is queued.
        for id in ended {
            ops.remove(&id);
        }
        drop(ops);
        self.wire.try_flush().map_err(|_| Gone)
    }
}

/// The operations of a connection by client id. A list: a connection holds a few, and a map's
/// table would cost more than the search.
#[derive(Default)]
struct Ops(Vec<(String, Op)>);

impl Ops {
    fn position(&self, id: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == id)
    }

    fn contains_key(&self, id: &str) -> bool {
        self.position(id).is_some()
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Op> {
        let i = self.position(id)?;
        Some(&mut self.0[i].1)
    }

    fn remove(&mut self, id: &str) -> Option<Op> {
        let i = self.position(id)?;
        let op = self.0.swap_remove(i).1;
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(op)
    }

    fn insert(&mut self, id: String, op: Op) {
        // Room for exactly one more: a first push would otherwise make room for four.
        self.0.reserve_exact(1);
        self.0.push((id, op));
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn any_running(&self) -> bool {
        self.0.iter().any(|(_, op)| matches!(op, Op::Running(_)))
    }
}

/// Results of the operations that run in tasks, to the connection.
struct Resolving {
    out: operation::OpSender,
    results: mpsc::Receiver<operation::OpResult>,
}

/// The next result of an operation task; pending for ever while none runs.
async fn next_result(resolving: &mut Option<Resolving>) -> Option<operation::OpResult> {
    match resolving {
        Some(r) => r.results.recv().await,
        None => std::future::pending().await,
    }
}

/// Queues one protocol message for operation `id`. The payload is JSON text already: it is
/// spliced in, not parsed again, and the message is framed straight into the socket's write
/// buffer. An id that needs no escaping (the usual case) is written as it is, with no string made
/// per frame.
fn frame(wire: &Wire, id: &str, kind: &str, payload: Option<&str>) {
    let (comma, payload) = match payload {
        Some(p) => (r#","payload":"#, p),
        None => ("", ""),
    };
    let escaped;
    let (quote, id) = if plain_in_json(id) {
        ("\"", id)
    } else {
        escaped = Value::String(id.to_owned()).to_string();
        ("", escaped.as_str())
    };
    wire.text_parts(&[
        r#"{"id":"#,
        quote,
        id,
        quote,
        r#","type":""#,
        kind,
        "\"",
        comma,
        payload,
        "}",
    ]);
}

/// Whether `s` is written in a JSON string as it is: no quote, backslash or control character.
fn plain_in_json(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// The connection is gone: nothing can be written to it any more.
struct Gone;

/// Serves one connection to its end, then stops its operations and closes the socket.
async fn run(mut conn: Connection) {
    let gauge = conn
        .state
        .metrics
        .connections
        .with_label_values(&[conn.protocol.label()]);
    gauge.inc();
    let reason = conn.serve().await;
    gauge.dec();
    let Connection { outlet, seat, .. } = conn;
    // No more rings: the hub holds the outlet only while it pumps it, so it is this task's alone.
    drop(seat);
    let ops = outlet.ops.take();
    if reason.is_none() {
        // The peer is gone: nothing to send, so the teardown waits behind the frames.
        super::reaper::bury(move || {
            for (_, op) in ops.0 {
                op.stop();
            }
            drop(outlet);
        });
        return;
    }
    for (_, op) in ops.0 {
        op.stop();
    }
    if let Ok(outlet) = Rc::try_unwrap(outlet) {
        outlet.wire.close(reason, CLOSE_LINGER).await;
    }
}

impl Connection {
    /// Serves until the connection ends; returns the close to send, if any.
    async fn serve(&mut self) -> Option<(u16, String)> {
        // One timer: the `connection_init` deadline, then the keep-alive.
        let ping_interval = self.state.settings.ping_interval;
        let timer = tokio::time::sleep(self.state.settings.init_timeout);
        tokio::pin!(timer);
        let mut shutdown = self.state.shutdown.clone();
        loop {
            // Frames are written by the worker's hub; this task wakes for what the client sends,
            // its timer, a resolving operation, or the hub's kick.
            let outlet = self.outlet.clone();
            tokio::select! {
                _ = shutdown.changed() => return Some((1012, "Service restart".into())),
                _ = outlet.budget.slow.notified(), if !outlet.budget.is_too_slow() => {}
                _ = outlet.kick.notified() => {
                    if outlet.gone.get() {
                        return None;
                    }
                }
                _ = &mut timer => {
                    if !self.acked {
                        return Some((4408, "Connection initialisation timeout".into()));
                    }
                    let keep_alive = match self.protocol {
                        Protocol::TransportWs => r#"{"type":"ping"}"#,
                        Protocol::Legacy => r#"{"type":"ka"}"#,
                    };
                    outlet.wire.ping(b"");
                    outlet.wire.text(keep_alive);
                    if let Step::Close(..) = self.flush() {
                        return None;
                    }
                    timer.as_mut().reset(tokio::time::Instant::now() + ping_interval);
                }
                msg = self.reader.next(&outlet.wire) => {
                    let acked = self.acked;
                    let step = match msg {
                        None => return None,
                        Some(Err(ReadError::TooBig)) => Step::Close(1009, "Message too big".into()),
                        Some(Err(ReadError::Invalid(e))) => {
                            Step::Close(4400, format!("Invalid message received: {e}"))
                        }
                        // Boxed: handling a message is rare, and inline its future would size the
                        // connection's task for as long as the connection lives.
                        Some(Ok(Incoming::Text(text))) => Box::pin(self.on_text(&text)).await,
                        Some(Ok(Incoming::Binary)) => Step::Close(4400, "Invalid message received".into()),
                        Some(Ok(Incoming::Ping(bytes))) => {
                            outlet.wire.pong(&bytes);
                            self.flush()
                        }
                        Some(Ok(Incoming::Pong)) => Step::Continue,
                        // The socket took everything it was behind with: catch up with the queues.
                        Some(Ok(Incoming::Written)) => match outlet.drain() {
                            Ok(()) => Step::Continue,
                            Err(Gone) => return None,
                        },
                        Some(Ok(Incoming::Close)) => return Some((1000, "Normal closure".into())),
                    };
                    if let Step::Close(code, text) = step {
                        return Some((code, text));
                    }
                    if self.acked && !acked {
                        timer.as_mut().reset(tokio::time::Instant::now() + ping_interval);
                    }
                }
                Some(result) = next_result(&mut self.resolving) => {
                    let (id, event) = *result;
                    if self.write_result(id, event).is_err() {
                        return None;
                    }
                    if !self.outlet.ops.borrow().any_running() {
                        self.resolving = None;
                    }
                }
            }
            if outlet.gone.get() {
                return None;
            }
            if outlet.budget.is_too_slow() {
                self.state.metrics.slow_consumer_closes.inc();
                return Some((4008, "Client too slow".into()));
            }
        }
    }

    /// Writes what the socket takes now; the rest goes out as it becomes writable.
    fn flush(&mut self) -> Step {
        match self.outlet.wire.try_flush() {
            Ok(()) => Step::Continue,
            Err(_) => Step::Close(1000, "Normal closure".into()),
        }
    }

    fn send(&mut self, v: Value) -> Result<(), Gone> {
        self.outlet.wire.text(v.to_string());
        self.outlet.wire.try_flush().map_err(|_| Gone)
    }

    fn write_result(&mut self, id: String, event: OpEvent) -> Result<(), Gone> {
        if let OpEvent::Fast(fast) = event {
            // Attached: the hub drains it from now on (a client `complete` that came first
            // leaves no entry, and dropping `fast` detaches it).
            let attached = match self.outlet.ops.borrow_mut().get_mut(&id) {
                Some(op) => {
                    *op = Op::Fast(fast);
                    true
                }
                None => false,
            };
            if attached {
                // Whatever was queued before the hand-over (its rings found no subscription).
                HubOutlet::pump(&*self.outlet);
                if self.outlet.gone.get() {
                    return Err(Gone);
                }
            }
            return Ok(());
        }
        let (kind, payload, done) = match (&event, self.protocol) {
            (OpEvent::Next(p), Protocol::TransportWs) => ("next", Some(p.as_str()), false),
            (OpEvent::Next(p), Protocol::Legacy) => ("data", Some(p.as_str()), false),
            (OpEvent::Error(p), _) => ("error", Some(p.as_str()), true),
            (OpEvent::Complete, _) => ("complete", None, true),
            (OpEvent::Fast(_), _) => return Ok(()),
        };
        if done && self.outlet.ops.borrow_mut().remove(&id).is_none() {
            // Completed by the client already: nothing more may be sent for this id.
            return Ok(());
        }
        if !done && !self.outlet.ops.borrow().contains_key(&id) {
            return Ok(());
        }
        frame(&self.outlet.wire, &id, kind, payload);
        self.outlet.wire.try_flush().map_err(|_| Gone)
    }

    async fn on_text(&mut self, text: &str) -> Step {
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text) else {
            return Step::Close(4400, "Invalid message received".into());
        };
        let Some(kind) = msg.get("type").and_then(Value::as_str) else {
            return Step::Close(4400, "Invalid message received".into());
        };
        match (self.protocol, kind) {
            (_, "connection_init") => self.on_init(msg.get("payload")).await,
            (Protocol::TransportWs, "ping") => {
                let mut pong = json!({"type": "pong"});
                if let Some(p) = msg.get("payload") {
                    pong["payload"] = p.clone();
                }
                self.reply(pong)
            }
            (Protocol::TransportWs, "pong") => Step::Continue,
            (Protocol::TransportWs, "subscribe") | (Protocol::Legacy, "start") => {
                self.on_subscribe(msg.get("id"), msg.get("payload")).await
            }
            (Protocol::TransportWs, "complete") => {
                if let Some(op) = msg
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|id| self.outlet.ops.borrow_mut().remove(id))
                {
                    op.stop();
                }
                Step::Continue
            }
            (Protocol::Legacy, "stop") => {
                let Some(id) = msg.get("id").and_then(Value::as_str) else {
                    return Step::Close(4400, "Invalid message received".into());
                };
                let removed = self.outlet.ops.borrow_mut().remove(id);
                if let Some(op) = removed {
                    op.stop();
                    return self.reply(json!({"type": "complete", "id": id}));
                }
                Step::Continue
            }
            (Protocol::Legacy, "connection_terminate") => {
                Step::Close(1000, "Normal closure".into())
            }
            _ => Step::Close(4400, "Invalid message received".into()),
        }
    }

    fn reply(&mut self, v: Value) -> Step {
        match self.send(v) {
            Ok(()) => Step::Continue,
            Err(_) => Step::Close(1000, "Normal closure".into()),
        }
    }

    async fn on_init(&mut self, payload: Option<&Value>) -> Step {
        if self.acked {
            return Step::Close(4429, "Too many initialisation requests".into());
        }
        if let Some(token) = payload.and_then(token_in_payload) {
            self.token = Some(token);
        }
        let claims = self
            .token
            .as_deref()
            .and_then(|t| self.state.dialog_tokens.verify(t));
        let Some(claims) = claims else {
            if self.protocol == Protocol::Legacy {
                let _ = self
                    .send(json!({"type": "connection_error", "payload": {"message": "Forbidden"}}));
            }
            return Step::Close(4403, "Forbidden".into());
        };
        match self.state.parties.acquire(&claims.c).await {
            Some(slot) => self.slot = Some(slot),
            None => {
                return Step::Close(
                    4429,
                    "Too many connections for this party (realtime.max_connections_per_party)"
                        .into(),
                );
            }
        }
        self.acked = true;
        if let Step::Close(c, t) = self.reply(json!({"type": "connection_ack"})) {
            return Step::Close(c, t);
        }
        if self.protocol == Protocol::Legacy {
            return self.reply(json!({"type": "ka"}));
        }
        Step::Continue
    }

    async fn on_subscribe(&mut self, id: Option<&Value>, payload: Option<&Value>) -> Step {
        if !self.acked {
            return Step::Close(4401, "Unauthorized".into());
        }
        let (Some(id), Some(payload)) = (id.and_then(Value::as_str), payload) else {
            return Step::Close(4400, "Invalid message received".into());
        };
        if id.is_empty() {
            return Step::Close(4400, "Invalid message received".into());
        }
        if id.len() > self.state.settings.max_operation_id_bytes {
            return Step::Close(
                4400,
                format!(
                    "Operation id longer than {} bytes",
                    self.state.settings.max_operation_id_bytes
                ),
            );
        }
        if self.outlet.ops.borrow().contains_key(id) {
            return Step::Close(4409, format!("Subscriber for {id} already exists"));
        }
        let max = self.state.settings.max_subscriptions_per_connection;
        if self.outlet.ops.borrow().len() >= max {
            let message = format!(
                "too many subscriptions on this connection (at most {max}, realtime.max_subscriptions_per_connection)"
            );
            let error = json!({"id": id, "type": "error", "payload": [{"message": message}]});
            return self.reply(error);
        }
        let Ok(request) = serde_json::from_value::<GraphQLRequest>(payload.clone()) else {
            return Step::Close(4400, "Invalid message received".into());
        };
        let ctx = self
            .state
            .context(self.token.clone(), Some(self.outlet.budget.clone()));
        let out = self
            .resolving
            .get_or_insert_with(|| {
                let (out, results) = mpsc::channel(WRITER_CHANNEL);
                Resolving { out, results }
            })
            .out
            .clone();
        let task = operation::spawn(self.state.schema.clone(), ctx, request, id.to_owned(), out);
        self.outlet
            .ops
            .borrow_mut()
            .insert(id.to_owned(), Op::Running(task));
        Step::Continue
    }
}

/// The dialog token of a `connection_init` payload: `{"Authorization": "Bearer …"}` (any case), or
/// `token` / `dialogToken`.
fn token_in_payload(payload: &Value) -> Option<String> {
    let obj = payload.as_object()?;
    let raw = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v)
        .or_else(|| obj.get("token"))
        .or_else(|| obj.get("dialogToken"))?
        .as_str()?;
    let token = match raw.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => raw.trim(),
    };
    (!token.is_empty()).then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_written_as_it_is_is_exactly_its_json_and_any_other_is_escaped() {
        for id in ["1", "sub-ÆØÅ", "a b/c", "\u{7f}", "\u{2028}"] {
            assert!(plain_in_json(id), "{id:?}");
            assert_eq!(format!("\"{id}\""), Value::String(id.into()).to_string());
        }
        for id in ["a\"b", "a\\b", "tab\there", "\u{1}"] {
            assert!(!plain_in_json(id), "{id:?}");
        }
    }
}
