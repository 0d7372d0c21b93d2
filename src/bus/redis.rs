//! The Redis pub/sub bridge: one PUBLISH per committed change on channel `{prefix}:dialog:{id}`,
//! and one dedicated subscriber connection per node that subscribes a dialog's channel while the
//! node has local subscribers of it (batched SUBSCRIBE/UNSUBSCRIBE). The subscriber reconnects with
//! backoff, resubscribes, and reports `Reconnected` so dialog actors repair from the store's log.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::store::redis::SharedConnection;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Bus, BusError, BusEvent, Envelope, EnvelopeSink};

/// Longest a PUBLISH or PING may take before the bus reports itself unavailable.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: first delay and ceiling.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle subscriber connection is checked with PING (a dead one is replaced).
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

enum Interest {
    Add(Uuid),
    Remove(Uuid),
}

pub struct RedisBus {
    conn: Arc<SharedConnection>,
    prefix: String,
    /// To the subscriber task; closed when the bus is dropped, which ends the task.
    interest: mpsc::UnboundedSender<Interest>,
    /// Whether the subscriber connection is up (readiness).
    connected: Arc<AtomicBool>,
}

impl RedisBus {
    /// Starts the subscriber task on the current actix system.
    pub fn start(
        url: &str,
        prefix: &str,
        conn: Arc<SharedConnection>,
        sink: EnvelopeSink,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("invalid configuration: redis.url: {e}"))?;
        let (interest, rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        actix_web::rt::spawn(subscriber(
            client,
            prefix.to_owned(),
            rx,
            sink,
            connected.clone(),
        ));
        Ok(RedisBus {
            conn,
            prefix: prefix.to_owned(),
            interest,
            connected,
        })
    }

    fn channel(&self, dialog: Uuid) -> String {
        channel(&self.prefix, dialog)
    }
}

fn channel(prefix: &str, dialog: Uuid) -> String {
    format!("{prefix}:dialog:{dialog}")
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let payload =
            serde_json::to_vec(&envelope).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let channel = self.channel(envelope.dialog_id);
        let send = async {
            let mut conn = self.conn.get().await.map_err(BusError::Unavailable)?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                        self.conn.forget();
                    }
                    BusError::Unavailable(e.to_string())
                })
        };
        match tokio::time::timeout(OP_TIMEOUT, send).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => {
                self.conn.forget();
                Err(BusError::Unavailable("publish timed out".into()))
            }
        }
    }

    fn announcement(&self, envelope: &Envelope) -> Option<(String, Vec<u8>)> {
        let message = serde_json::to_vec(envelope).ok()?;
        Some((self.channel(envelope.dialog_id), message))
    }

    async fn ping(&self) -> Result<(), BusError> {
        if !self.connected.load(Ordering::Relaxed) {
            return Err(BusError::Unavailable(
                "subscriber connection is down".into(),
            ));
        }
        Ok(())
    }

    fn subscribe(&self, dialog: Uuid) {
        let _ = self.interest.send(Interest::Add(dialog));
    }

    fn unsubscribe(&self, dialog: Uuid) {
        let _ = self.interest.send(Interest::Remove(dialog));
    }
}

/// Owns the node's subscriber connection for its whole life.
async fn subscriber(
    client: redis::Client,
    prefix: String,
    mut interest_rx: mpsc::UnboundedReceiver<Interest>,
    sink: EnvelopeSink,
    connected: Arc<AtomicBool>,
) {
    let mut interest: HashSet<Uuid> = HashSet::new();
    let mut backoff = BACKOFF_START;
    let mut first = true;
    loop {
        let connection = tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub()).await;
        // Interest that changed while disconnected still counts.
        while let Ok(i) = interest_rx.try_recv() {
            apply(&mut interest, i);
        }
        let Ok(Ok(pubsub)) = connection else {
            connected.store(false, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        };
        let (mut commands, mut messages) = pubsub.split();
        let all: Vec<String> = interest.iter().map(|d| channel(&prefix, *d)).collect();
        if !all.is_empty() && commands.subscribe(all).await.is_err() {
            continue;
        }
        connected.store(true, Ordering::Relaxed);
        backoff = BACKOFF_START;
        if !first {
            tracing::info!("redis bus reconnected; repairing live dialogs from the log");
            if sink.send(BusEvent::Reconnected).is_err() {
                return;
            }
        }
        first = false;
        // A subscribed connection answers PING with an array (RESP2), so any reply counts.
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        health.reset();
        loop {
            tokio::select! {
                next = interest_rx.recv() => {
                    let Some(i) = next else { return };
                    let mut changes = vec![i];
                    while let Ok(more) = interest_rx.try_recv() {
                        changes.push(more);
                    }
                    let before = interest.clone();
                    for c in changes {
                        apply(&mut interest, c);
                    }
                    let added: Vec<String> = interest.difference(&before).map(|d| channel(&prefix, *d)).collect();
                    let removed: Vec<String> = before.difference(&interest).map(|d| channel(&prefix, *d)).collect();
                    if !added.is_empty() && commands.subscribe(added).await.is_err() {
                        break;
                    }
                    if !removed.is_empty() && commands.unsubscribe(removed).await.is_err() {
                        break;
                    }
                }
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    match serde_json::from_slice::<Envelope>(msg.get_payload_bytes()) {
                        Ok(env) => {
                            if sink.send(BusEvent::Envelope(env)).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed bus message"),
                    }
                }
                _ = health.tick() => {
                    let alive = tokio::time::timeout(OP_TIMEOUT, commands.ping::<redis::Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        connected.store(false, Ordering::Relaxed);
        tracing::warn!("redis bus connection lost; reconnecting");
    }
}

fn apply(interest: &mut HashSet<Uuid>, change: Interest) {
    match change {
        Interest::Add(d) => {
            interest.insert(d);
        }
        Interest::Remove(d) => {
            interest.remove(&d);
        }
    }
}
