//! The Redis pub/sub bridge: one PUBLISH per committed change on the dialog's channel, and one
//! dedicated subscriber connection per node that subscribes a dialog's channel while the node has
//! local subscribers of it (batched SUBSCRIBE/UNSUBSCRIBE). The subscriber reconnects with
//! backoff, resubscribes, and reports `Reconnected` so dialog actors repair from the store's log.
//!
//! On a Redis Cluster the bridge uses sharded pub/sub: a change is published (SPUBLISH) only on
//! the shard that owns its dialog's slot, and the subscriber (a cluster connection speaking RESP3)
//! subscribes each channel (SSUBSCRIBE) on the shard that owns it. When a shard's connection
//! drops, the connection resubscribes that shard's channels and the node repairs from the log.
//!
//! Every node also subscribes one feed channel. A node that appended events to the global log
//! publishes there which webhook partitions they fell in, at most once per `NOTICE_SPACING`;
//! the node that delivers one of them reads its feed at once instead of at its next poll.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::RedisSettings;
use crate::store::redis::{SharedConnection, dialog_channel};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Bus, BusError, BusEvent, Envelope, EnvelopeSink};
use crate::domain::CloudEvent;

/// Longest a PUBLISH or PING may take before the bus reports itself unavailable.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: first delay and ceiling.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle subscriber connection is checked with PING (a dead one is replaced).
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// A node publishes at most one feed notice per this long; the partitions touched meanwhile go
/// out together in the next. (The dispatchers space the polls they ask for as much.)
const NOTICE_SPACING: Duration = crate::webhooks::dispatcher::SHARED_WAKE_SPACING;

enum Interest {
    Add(Uuid),
    Remove(Uuid),
}

pub struct RedisBus {
    conn: Arc<SharedConnection>,
    prefix: String,
    /// On a cluster, the partition count that places a dialog's channel in a slot.
    cluster: Option<u16>,
    /// To the subscriber task; closed when the bus is dropped, which ends the task.
    interest: mpsc::UnboundedSender<Interest>,
    /// Whether the subscriber connection is up (readiness).
    connected: Arc<AtomicBool>,
    /// The store's webhook partition count (`webhooks.partitions`).
    partitions: u16,
    /// To the feed notice task: partitions of appended events. Closed when the bus is dropped,
    /// which ends the task. `None` on a Redis Cluster, where no notices are sent (see
    /// `Channels::all`).
    touched: Option<mpsc::UnboundedSender<u16>>,
}

impl RedisBus {
    /// Starts the subscriber task on the current actix system; on a cluster, `partitions` (the
    /// store's `webhooks.partitions`) places each dialog's channel in its partition's slot.
    pub fn start(
        settings: &RedisSettings,
        partitions: u16,
        conn: Arc<SharedConnection>,
        sink: EnvelopeSink,
    ) -> anyhow::Result<Self> {
        let (interest, rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let prefix = settings.prefix.clone();
        let cluster = settings.cluster.then_some(partitions);
        let touched = (!settings.cluster).then(|| {
            let (touched, notices) = mpsc::unbounded_channel();
            actix_web::rt::spawn(announce_feed(
                conn.clone(),
                feed_channel(&prefix, false),
                notices,
            ));
            touched
        });
        if settings.cluster {
            actix_web::rt::spawn(cluster_subscriber(
                settings.seeds(),
                Channels {
                    prefix: prefix.clone(),
                    cluster,
                },
                rx,
                sink,
                connected.clone(),
            ));
        } else {
            let url = settings.seeds().into_iter().next().unwrap_or_default();
            let client = redis::Client::open(url)
                .map_err(|e| anyhow::anyhow!("invalid configuration: redis.url: {e}"))?;
            actix_web::rt::spawn(subscriber(
                client,
                Channels {
                    prefix: prefix.clone(),
                    cluster: None,
                },
                rx,
                sink,
                connected.clone(),
            ));
        }
        Ok(RedisBus {
            conn,
            prefix,
            cluster,
            interest,
            connected,
            partitions,
            touched,
        })
    }

    fn channel(&self, dialog: Uuid) -> String {
        dialog_channel(&self.prefix, self.cluster, dialog)
    }
}

/// Names the channels of dialogs.
struct Channels {
    prefix: String,
    cluster: Option<u16>,
}

impl Channels {
    fn of(&self, dialog: Uuid) -> String {
        dialog_channel(&self.prefix, self.cluster, dialog)
    }

    fn feed(&self) -> String {
        feed_channel(&self.prefix, self.cluster.is_some())
    }

    /// Every channel to subscribe on a new connection: the dialogs' of `interest`, and on one
    /// Redis the feed's. On a Redis Cluster the feed channel's shard subscription interfered with
    /// the repair after a master failover (a change went unrepaired), so there the dispatchers
    /// find new events at their periodic polls.
    fn all(&self, interest: &HashSet<Uuid>) -> Vec<String> {
        let mut all: Vec<String> = interest.iter().map(|d| self.of(*d)).collect();
        if self.cluster.is_none() {
            all.push(self.feed());
        }
        all
    }

    /// Applies `first` and every interest change already waiting to `interest`; returns the
    /// channels to subscribe and to unsubscribe.
    fn changed(
        &self,
        interest: &mut HashSet<Uuid>,
        first: Interest,
        waiting: &mut mpsc::UnboundedReceiver<Interest>,
    ) -> (Vec<String>, Vec<String>) {
        let before = interest.clone();
        apply(interest, first);
        while let Ok(more) = waiting.try_recv() {
            apply(interest, more);
        }
        let added = interest.difference(&before).map(|d| self.of(*d)).collect();
        let removed = before.difference(interest).map(|d| self.of(*d)).collect();
        (added, removed)
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let payload =
            serde_json::to_vec(&envelope).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let channel = self.channel(envelope.dialog_id);
        let send = async {
            let mut conn = self.conn.get().await.map_err(BusError::Unavailable)?;
            let outcome = redis::cmd(if self.cluster.is_some() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            })
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut conn)
            .await;
            self.conn.observe(&outcome);
            outcome.map_err(|e| BusError::Unavailable(e.to_string()))
        };
        match tokio::time::timeout(OP_TIMEOUT, send).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => {
                self.conn.timed_out();
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

    fn feed_changed(&self, event: &CloudEvent) {
        if let Some(touched) = &self.touched {
            let _ = touched.send(crate::domain::event_partition(event, self.partitions));
        }
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
    channels: Channels,
    mut interest_rx: mpsc::UnboundedReceiver<Interest>,
    sink: EnvelopeSink,
    connected: Arc<AtomicBool>,
) {
    let mut interest: HashSet<Uuid> = HashSet::new();
    let feed = channels.feed();
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
        if commands.subscribe(channels.all(&interest)).await.is_err() {
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
                    let (added, removed) = channels.changed(&mut interest, i, &mut interest_rx);
                    if !added.is_empty() && commands.subscribe(added).await.is_err() {
                        break;
                    }
                    if !removed.is_empty() && commands.unsubscribe(removed).await.is_err() {
                        break;
                    }
                }
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    let Some(event) = received(&feed, msg.get_channel_name(), msg.get_payload_bytes()) else {
                        continue;
                    };
                    if sink.send(event).is_err() {
                        return;
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

/// The subscriber of a node on a Redis Cluster: one cluster connection (RESP3) whose pushes carry
/// the sharded messages. The connection itself resubscribes a shard's channels after that shard's
/// connection dropped; the node repairs from the log once it has. When a resharding moves a
/// slot, its master drops the slot's channel subscribers (an unasked `sunsubscribe`): those this
/// node still wants are subscribed again at the slot's new master, then the node repairs.
async fn cluster_subscriber(
    seeds: Vec<String>,
    channels: Channels,
    mut interest_rx: mpsc::UnboundedReceiver<Interest>,
    sink: EnvelopeSink,
    connected: Arc<AtomicBool>,
) {
    let mut interest: HashSet<Uuid> = HashSet::new();
    let feed = channels.feed();
    let mut backoff = BACKOFF_START;
    let mut first = true;
    loop {
        let (tx, mut pushes) = mpsc::unbounded_channel::<redis::PushInfo>();
        let client = redis::cluster::ClusterClientBuilder::new(seeds.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(OP_TIMEOUT)
            .response_timeout(OP_TIMEOUT)
            .push_sender(tx)
            .build();
        let connection = match client {
            Ok(client) => tokio::time::timeout(OP_TIMEOUT, client.get_async_connection()).await,
            Err(e) => {
                tracing::error!(error = %e, "the redis cluster bus cannot start");
                return;
            }
        };
        while let Ok(i) = interest_rx.try_recv() {
            apply(&mut interest, i);
        }
        let Ok(Ok(mut conn)) = connection else {
            connected.store(false, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        };
        if sharded(&conn, true, channels.all(&interest)).await.is_err() {
            continue;
        }
        connected.store(true, Ordering::Relaxed);
        backoff = BACKOFF_START;
        if !first {
            tracing::info!("redis cluster bus reconnected; repairing live dialogs from the log");
            if sink.send(BusEvent::Reconnected).is_err() {
                return;
            }
        }
        first = false;
        // A shard's connection dropped: messages may have been lost until it is back.
        let mut lost = false;
        // Channels the server dropped because their slot moved to another master, to subscribe
        // again where the slot lives now.
        let mut moved: Vec<String> = Vec::new();
        // Channels this node unsubscribed itself, whose confirmations are still to come.
        let mut leaving: HashMap<String, usize> = HashMap::new();
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        health.reset();
        loop {
            tokio::select! {
                next = interest_rx.recv() => {
                    let Some(i) = next else { return };
                    let (added, removed) = channels.changed(&mut interest, i, &mut interest_rx);
                    if sharded(&conn, true, added).await.is_err() {
                        lost = true;
                    }
                    for c in &removed {
                        *leaving.entry(c.clone()).or_default() += 1;
                    }
                    if sharded(&conn, false, removed).await.is_err() {
                        lost = true;
                    }
                }
                push = pushes.recv() => {
                    let Some(push) = push else { break };
                    match push.kind {
                        redis::PushKind::SUnsubscribe => {
                            let Some(redis::Value::BulkString(channel)) = push.data.first() else {
                                continue;
                            };
                            let channel = String::from_utf8_lossy(channel).into_owned();
                            if let Some(n) = leaving.get_mut(&channel) {
                                *n -= 1;
                                if *n == 0 {
                                    leaving.remove(&channel);
                                }
                            } else if channel == feed
                                || dialog_of(&channel).is_some_and(|d| interest.contains(&d))
                            {
                                // Not asked for: a resharding moved the channel's slot (Redis
                                // drops a shard channel's subscribers when its slot leaves).
                                moved.push(channel);
                            }
                        }
                        redis::PushKind::SMessage => {
                            let (Some(redis::Value::BulkString(channel)), Some(redis::Value::BulkString(payload))) =
                                (push.data.first(), push.data.get(1))
                            else {
                                continue;
                            };
                            let channel = String::from_utf8_lossy(channel);
                            let Some(event) = received(&feed, &channel, payload) else {
                                continue;
                            };
                            if sink.send(event).is_err() {
                                return;
                            }
                        }
                        redis::PushKind::Disconnection => {
                            tracing::warn!("a redis cluster bus connection dropped; it resubscribes");
                            lost = true;
                        }
                        // A dialog channel subscribed again: repair. (The feed channel's own
                        // slot may come back before the dialogs' do; its notices need no repair.)
                        redis::PushKind::SSubscribe if lost && !about(&push, &feed) => {
                            lost = false;
                            if sink.send(BusEvent::Reconnected).is_err() {
                                return;
                            }
                        }
                        _ => {}
                    }
                    // Once the burst of a slot's drops is read, subscribe its channels again
                    // (the first command meets MOVED and updates the slot map), then repair:
                    // what was published in between reached no one here.
                    if !moved.is_empty() && pushes.is_empty() {
                        if resubscribe_moved(&conn, &mut moved).await {
                            if sink.send(BusEvent::Reconnected).is_err() {
                                return;
                            }
                        } else {
                            lost = true;
                        }
                    }
                }
                _ = health.tick() => {
                    if !moved.is_empty() && !resubscribe_moved(&conn, &mut moved).await {
                        lost = true;
                    }
                    let alive = tokio::time::timeout(OP_TIMEOUT, redis::cmd("PING").query_async::<redis::Value>(&mut conn)).await;
                    let up = matches!(alive, Ok(Ok(_)));
                    connected.store(up, Ordering::Relaxed);
                    if !up {
                        lost = true;
                    } else if lost {
                        // Back, and resubscribed by now (or with nothing to resubscribe).
                        lost = false;
                        if sink.send(BusEvent::Reconnected).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        connected.store(false, Ordering::Relaxed);
        tracing::warn!("redis cluster bus connection lost; reconnecting");
    }
}

/// Subscribes the channels in `moved` again; true when that took (and `moved` is empty), false
/// when they are kept for the next try.
async fn resubscribe_moved(
    conn: &redis::cluster_async::ClusterConnection,
    moved: &mut Vec<String>,
) -> bool {
    let again = std::mem::take(moved);
    tracing::info!(
        channels = again.len(),
        "shard channels left with their slot; subscribing them again"
    );
    match sharded(conn, true, again.clone()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "shard channels could not be subscribed again yet");
            *moved = again;
            false
        }
    }
}

/// Whether `push` (a subscription's confirmation or message) is about `channel`.
fn about(push: &redis::PushInfo, channel: &str) -> bool {
    matches!(push.data.first(), Some(redis::Value::BulkString(c)) if c.as_slice() == channel.as_bytes())
}

/// What a message on `channel` tells the node: a feed notice (on `feed`) or a dialog's envelope;
/// `None` for a malformed message.
fn received(feed: &str, channel: &str, payload: &[u8]) -> Option<BusEvent> {
    if channel == feed {
        let parts = std::str::from_utf8(payload)
            .ok()?
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect();
        return Some(BusEvent::FeedChanged(parts));
    }
    match serde_json::from_slice::<Envelope>(payload) {
        Ok(env) => Some(BusEvent::Envelope(env)),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a malformed bus message");
            None
        }
    }
}

/// The channel of feed notices. On a cluster it is a shard channel of its own slot.
fn feed_channel(prefix: &str, cluster: bool) -> String {
    if cluster {
        format!("{prefix}:{{feed}}:appended")
    } else {
        format!("{prefix}:feed:appended")
    }
}

/// Publishes the feed notices of this node: the partitions of the events appended since the
/// last notice, at most one notice per `NOTICE_SPACING`. A notice that cannot be published is
/// dropped: the dispatchers' periodic polls read those events a little later.
async fn announce_feed(
    conn: Arc<SharedConnection>,
    channel: String,
    mut touched: mpsc::UnboundedReceiver<u16>,
) {
    let mut parts = std::collections::BTreeSet::new();
    while let Some(p) = touched.recv().await {
        parts.insert(p);
        while let Ok(p) = touched.try_recv() {
            parts.insert(p);
        }
        let notice = parts
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        parts.clear();
        let send = async {
            let mut c = conn.get().await.map_err(|e| e.to_string())?;
            let outcome = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(notice)
                .query_async::<i64>(&mut c)
                .await;
            conn.observe(&outcome);
            outcome.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(OP_TIMEOUT, send).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "a feed notice was not published"),
            Err(_) => conn.timed_out(),
        }
        tokio::time::sleep(NOTICE_SPACING).await;
    }
}

/// The dialog a channel (`…:dialog:{id}`) carries.
fn dialog_of(channel: &str) -> Option<Uuid> {
    channel.rsplit_once(":dialog:")?.1.parse().ok()
}

/// SSUBSCRIBE (or SUNSUBSCRIBE) `channels`: one command per slot, since one command may only
/// name channels of one slot; a dialog channel's slot is its partition tag (`{w<n>}`). The
/// slots' commands go out together.
async fn sharded(
    conn: &redis::cluster_async::ClusterConnection,
    subscribe: bool,
    channels: Vec<String>,
) -> redis::RedisResult<()> {
    let mut by_slot: HashMap<String, Vec<String>> = Default::default();
    for c in channels {
        let tag = c.split_once('}').map_or(c.as_str(), |(t, _)| t).to_owned();
        by_slot.entry(tag).or_default().push(c);
    }
    futures::future::try_join_all(by_slot.into_values().map(|group| {
        let mut conn = conn.clone();
        async move {
            if subscribe {
                conn.ssubscribe(group).await
            } else {
                conn.sunsubscribe(group).await
            }
        }
    }))
    .await
    .map(|_| ())
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
