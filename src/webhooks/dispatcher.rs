//! `Dispatcher`: the actor that owns webhook delivery on its node. It follows the global event log,
//! matches subscriptions, and delivers each event with per (subscription, dialog) FIFO lanes, retry
//! with backoff, dead letters, a per-endpoint in-flight limit and a circuit breaker. Authorization
//! and the subscription itself are checked again before every attempt.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::client::{self, Outcome};
use super::endpoint::{Admission, CircuitChange, Endpoint, endpoint_key};
use super::guard::{self, GuardedResolver};
use super::retry::RetryPolicy;
use crate::config::WebhookSettings;
use crate::domain::{
    CloudEvent, DeadLetter, DeliveryRecord, Party, PendingDelivery, ResourceUrn, Subscription,
    SubscriptionChange,
};
use crate::store::{LogPosition, Store};
use crate::telemetry::Metrics;

/// Events read from the global log per poll.
const READ_BATCH: usize = 500;

/// Where a delivery belongs: one lane per (subscription, dialog) keeps that pair in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LaneKey {
    subscription: Uuid,
    /// Dialog id, the event id for events of no dialog, or "validation".
    stream: String,
}

impl LaneKey {
    /// The lane of `event` for `subscription`: its dialog, or the event itself when it has none.
    fn of(subscription: Uuid, event: &CloudEvent) -> Self {
        LaneKey {
            subscription,
            stream: event
                .resourceinstance
                .clone()
                .unwrap_or_else(|| event.id.clone()),
        }
    }
}

#[derive(Clone)]
struct Delivery {
    subscription: Uuid,
    /// `webhook-id`: the event id, the same on every attempt.
    id: String,
    /// The encoded body, shared by every subscription that receives the event.
    body: Rc<Vec<u8>>,
    /// The event (absent for the validation handshake).
    event: Option<Arc<CloudEvent>>,
    /// The event's global log position (0 for replays and redrives; `None` for validations): with
    /// the event it identifies the delivery in the store's pending set.
    position: Option<LogPosition>,
    attempts: u32,
    last_status: Option<u16>,
    last_error: Option<String>,
}

impl Delivery {
    /// A first attempt at `event` for `subscription`; `body` when it is already encoded.
    fn of(
        subscription: Uuid,
        event: Arc<CloudEvent>,
        position: LogPosition,
        body: Option<Rc<Vec<u8>>>,
    ) -> Self {
        let body =
            body.unwrap_or_else(|| Rc::new(serde_json::to_vec(event.as_ref()).unwrap_or_default()));
        Delivery {
            subscription,
            id: event.id.clone(),
            body,
            event: Some(event),
            position: Some(position),
            attempts: 0,
            last_status: None,
            last_error: None,
        }
    }
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Delivery>,
    /// An attempt is in flight or a retry is scheduled: the head must finish first.
    busy: bool,
    /// The lane is in its endpoint's `waiting` queue (kept so that queue needs no search).
    waiting: bool,
    /// Bumped when the lane is reset (a re-sent validation): results and retry timers of an
    /// earlier generation are ignored.
    generation: u64,
}

/// The lease that makes one node of a cluster the dispatcher, and how long it lasts unrenewed.
const LEASE: &str = "webhook-dispatcher";
const LEASE_TTL: Duration = Duration::from_secs(5);

pub struct Dispatcher {
    store: Arc<dyn Store>,
    node_id: String,
    /// Whether this node holds the dispatcher lease (and so has loaded the saved cursor).
    leader: bool,
    settings: WebhookSettings,
    base_url: String,
    metrics: Metrics,
    retry: RetryPolicy,
    validation: RetryPolicy,
    /// Created in `started` on the dispatcher's own thread (the client is not `Send`).
    client: Option<awc::Client>,
    cursor: LogPosition,
    polling: bool,
    /// A wake-up came while a poll was running: poll again when it ends.
    woken: bool,
    /// Set by a `DispatchWaker` that sent a `Wake` not handled yet (see there).
    wake_pending: Arc<AtomicBool>,
    /// Deliveries a previous dispatcher left unfinished (subscription, position), loaded when this
    /// node took over: log events already among them are not queued twice.
    inherited: std::collections::HashSet<(Uuid, LogPosition)>,
    /// Subscriptions as of the last poll (endpoint accounting); attempts re-read the store.
    subs: HashMap<Uuid, Subscription>,
    lanes: HashMap<LaneKey, Lane>,
    endpoints: HashMap<String, Endpoint<LaneKey>>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        settings: WebhookSettings,
        base_url: String,
        metrics: Metrics,
        node_id: String,
    ) -> Self {
        let retry = RetryPolicy::new(settings.retry_schedule.clone(), settings.jitter);
        let validation = RetryPolicy::new(settings.validation_schedule.clone(), settings.jitter);
        Dispatcher {
            store,
            node_id,
            leader: false,
            settings,
            base_url,
            metrics,
            retry,
            validation,
            client: None,
            cursor: 0,
            polling: false,
            woken: false,
            wake_pending: Arc::default(),
            subs: HashMap::new(),
            inherited: Default::default(),
            lanes: HashMap::new(),
            endpoints: HashMap::new(),
        }
    }

    fn build_client(&self) -> awc::Client {
        let tcp = actix_tls::connect::Connector::new(actix_tls::connect::Resolver::custom(
            GuardedResolver {
                allow_private: self.settings.allow_private_networks,
            },
        ))
        .service();
        awc::Client::builder()
            .connector(
                awc::Connector::new()
                    .connector(tcp)
                    .timeout(self.settings.timeout),
            )
            .timeout(self.settings.timeout)
            .disable_redirects()
            .finish()
    }

    /// Queues a resumed delivery whose next attempt is due only after `wait` (its backoff goes on
    /// across a failover). Only a lane's head can be waiting, so later items simply queue.
    fn enqueue_after(
        &mut self,
        key: LaneKey,
        delivery: Delivery,
        wait: Option<Duration>,
        ctx: &mut Context<Self>,
    ) {
        let lane = self.lanes.entry(key.clone()).or_default();
        let Some(wait) = wait.filter(|_| lane.queue.is_empty() && !lane.busy) else {
            return self.enqueue(key, delivery, ctx);
        };
        lane.queue.push_back(delivery);
        lane.busy = true;
        let generation = lane.generation;
        self.metrics.webhook_retry_backlog.inc();
        ctx.run_later(wait, move |act, ctx| {
            act.metrics.webhook_retry_backlog.dec();
            match act.lanes.get_mut(&key) {
                Some(lane) if lane.generation == generation => lane.busy = false,
                _ => return,
            }
            act.pump(key, ctx);
        });
    }

    fn enqueue(&mut self, key: LaneKey, delivery: Delivery, ctx: &mut Context<Self>) {
        self.lanes
            .entry(key.clone())
            .or_default()
            .queue
            .push_back(delivery);
        self.pump(key, ctx);
    }

    /// Starts the head of `key` if nothing of the lane is in flight or waiting for a retry.
    fn pump(&mut self, key: LaneKey, ctx: &mut Context<Self>) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        if lane.busy {
            return;
        }
        let Some(head) = lane.queue.front().cloned() else {
            self.lanes.remove(&key);
            return;
        };
        // A subscription this node has not seen yet is re-read by the attempt; its endpoint is
        // accounted from the next poll on.
        let endpoint = self
            .subs
            .get(&head.subscription)
            .map(|s| endpoint_key(&s.end_point));
        let mut circuit_open = false;
        if let Some(k) = &endpoint {
            let limit = self.settings.max_in_flight_per_endpoint;
            let e = self.endpoints.entry(k.clone()).or_default();
            match e.admit(limit, Instant::now()) {
                Admission::Start { circuit_open: open } => circuit_open = open,
                Admission::Wait => {
                    if let Some(lane) = self.lanes.get_mut(&key)
                        && !lane.waiting
                    {
                        lane.waiting = true;
                        e.wait(key);
                    }
                    return;
                }
            }
        }
        self.attempt(key, head, endpoint, circuit_open, ctx);
    }

    fn attempt(
        &mut self,
        key: LaneKey,
        delivery: Delivery,
        endpoint: Option<String>,
        circuit_open: bool,
        ctx: &mut Context<Self>,
    ) {
        let generation = self.lanes.get_mut(&key).map_or(0, |lane| {
            lane.busy = true;
            lane.generation
        });
        let store = self.store.clone();
        let client = self.client.clone().unwrap_or_else(|| self.build_client());
        let allow_private = self.settings.allow_private_networks;
        let is_validation = delivery.event.is_none();
        let d = delivery.clone();
        let started = Instant::now();
        let fut = async move {
            let sub = match store.get_subscription(d.subscription).await {
                Ok(Some(s)) if !s.disabled => s,
                Ok(_) => return (None, Outcome::Dropped("subscription deleted or disabled")),
                Err(e) => {
                    return (None, Outcome::refused(e.to_string()));
                }
            };
            if let Some(event) = &d.event {
                if !sub.validated {
                    return (Some(sub), Outcome::Dropped("subscription not validated"));
                }
                match store.policy().await {
                    Ok(policy) => {
                        if !may_receive(&policy, &sub, event) {
                            return (Some(sub), Outcome::Dropped("no longer authorized"));
                        }
                    }
                    Err(e) => {
                        return (Some(sub), Outcome::refused(e.to_string()));
                    }
                }
            }
            if circuit_open {
                let refused = Outcome::refused("circuit open: the endpoint keeps failing");
                return (Some(sub), refused);
            }
            if guard::forbidden_literal(&sub.end_point, allow_private) {
                let refused = Outcome::refused("endpoint address is not public");
                return (Some(sub), refused);
            }
            let outcome = client::send(&client, &sub, &d.id, &d.body).await;
            (Some(sub), outcome)
        };
        ctx.spawn(fut.into_actor(self).map(move |(sub, outcome), act, ctx| {
            act.finished(
                key,
                generation,
                sub,
                endpoint,
                outcome,
                started.elapsed(),
                is_validation,
                ctx,
            );
        }));
    }

    /// An attempt ended: settle its outcome, then give its endpoint slot back, whatever happened
    /// to the lane meanwhile.
    #[allow(clippy::too_many_arguments)]
    fn finished(
        &mut self,
        key: LaneKey,
        generation: u64,
        sub: Option<Subscription>,
        endpoint: Option<String>,
        outcome: Outcome,
        took: Duration,
        is_validation: bool,
        ctx: &mut Context<Self>,
    ) {
        self.metrics
            .webhook_attempt_latency
            .observe(took.as_secs_f64());
        if self
            .lanes
            .get(&key)
            .is_some_and(|l| l.generation == generation)
        {
            self.settle_outcome(
                key,
                sub,
                endpoint.as_deref(),
                outcome,
                took,
                is_validation,
                ctx,
            );
        }
        self.release_slot(endpoint.as_deref(), ctx);
    }

    #[allow(clippy::too_many_arguments)]
    fn settle_outcome(
        &mut self,
        key: LaneKey,
        sub: Option<Subscription>,
        endpoint: Option<&str>,
        outcome: Outcome,
        took: Duration,
        is_validation: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some(mut delivery) = self
            .lanes
            .get_mut(&key)
            .and_then(|l| l.queue.front().cloned())
        else {
            return;
        };
        delivery.attempts += 1;
        let policy = if is_validation {
            self.validation.clone()
        } else {
            self.retry.clone()
        };
        let record =
            |status: Option<u16>, error: Option<String>, next: Option<Duration>| DeliveryRecord {
                event_id: delivery.id.clone(),
                attempt: delivery.attempts,
                status_code: status,
                error,
                duration_ms: took.as_millis() as u64,
                at: Utc::now(),
                next_attempt: next
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .map(|d| Utc::now() + d),
            };
        match outcome {
            Outcome::Delivered(status) => {
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["delivered"])
                    .inc();
                self.endpoint_result(endpoint, true);
                self.log(delivery.subscription, record(Some(status), None, None));
                if is_validation && let Some(s) = sub {
                    let store = self.store.clone();
                    actix_web::rt::spawn(async move {
                        if let Err(e) = store
                            .update_subscription(s.id, SubscriptionChange::Validated)
                            .await
                        {
                            tracing::warn!(subscription = %s.id, error = %e, "recording validation failed");
                        }
                    });
                }
                self.advance(&key, ctx);
            }
            Outcome::Gone => {
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["gone"])
                    .inc();
                self.endpoint_result(endpoint, true);
                self.log(
                    delivery.subscription,
                    record(
                        Some(410),
                        Some("410 Gone: subscription disabled".into()),
                        None,
                    ),
                );
                if let Some(s) = sub {
                    let reason = format!(
                        "the endpoint answered 410 Gone at {}",
                        Utc::now().to_rfc3339()
                    );
                    let store = self.store.clone();
                    actix_web::rt::spawn(async move {
                        let change = SubscriptionChange::Disabled { reason };
                        if let Err(e) = store.update_subscription(s.id, change).await {
                            tracing::warn!(subscription = %s.id, error = %e, "disabling failed");
                        }
                    });
                }
                let dropped = delivery.subscription;
                let gone: Vec<LaneKey> = self
                    .lanes
                    .keys()
                    .filter(|k| k.subscription == dropped)
                    .cloned()
                    .collect();
                for k in gone {
                    if let Some(lane) = self.lanes.remove(&k) {
                        for d in lane.queue {
                            self.settle(&d);
                        }
                    }
                }
            }
            Outcome::Dropped(why) => {
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["dropped"])
                    .inc();
                tracing::debug!(subscription = %delivery.subscription, event = %delivery.id, why, "delivery dropped");
                self.advance(&key, ctx);
            }
            Outcome::Failed {
                status,
                error,
                retry_after,
                endpoint_wide,
            } => {
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["failed"])
                    .inc();
                if endpoint_wide {
                    self.endpoint_result(endpoint, false);
                }
                match policy.next_delay(delivery.attempts, retry_after) {
                    Some(delay) => {
                        self.log(
                            delivery.subscription,
                            record(status, Some(error.clone()), Some(delay)),
                        );
                        if let Some(lane) = self.lanes.get_mut(&key)
                            && let Some(head) = lane.queue.front_mut()
                        {
                            head.attempts = delivery.attempts;
                            head.last_status = status;
                            head.last_error = Some(error);
                            // The attempt count and due time survive a failover of the dispatcher.
                            if let Some(mut record) = Self::pending_of(head) {
                                record.due_at = chrono::Duration::from_std(delay)
                                    .ok()
                                    .map(|d| Utc::now() + d);
                                let store = self.store.clone();
                                actix_web::rt::spawn(async move {
                                    let _ = store.put_pending(&[record]).await;
                                });
                            }
                        }
                        self.metrics.webhook_retry_backlog.inc();
                        let retry_key = key.clone();
                        let generation = self.lanes.get(&key).map_or(0, |l| l.generation);
                        ctx.run_later(delay, move |act, ctx| {
                            act.metrics.webhook_retry_backlog.dec();
                            match act.lanes.get_mut(&retry_key) {
                                Some(lane) if lane.generation == generation => lane.busy = false,
                                // The lane was reset meanwhile: this timer is stale.
                                _ => return,
                            }
                            act.pump(retry_key, ctx);
                        });
                    }
                    None => {
                        self.log(
                            delivery.subscription,
                            record(status, Some(error.clone()), None),
                        );
                        if let Some(event) = &delivery.event {
                            self.metrics.webhook_dead_letters.inc();
                            let letter = DeadLetter {
                                id: Uuid::now_v7(),
                                subscription_id: delivery.subscription,
                                event: (**event).clone(),
                                attempts: delivery.attempts,
                                last_status: status,
                                last_error: Some(error),
                                dead_at: Utc::now(),
                            };
                            let store = self.store.clone();
                            actix_web::rt::spawn(async move {
                                if let Err(e) = store.put_dead_letter(&letter).await {
                                    tracing::error!(error = %e, "storing a dead letter failed");
                                }
                            });
                        }
                        self.advance(&key, ctx);
                    }
                }
            }
        }
    }

    /// The head is done (delivered, dropped or dead): the lane moves on.
    fn advance(&mut self, key: &LaneKey, ctx: &mut Context<Self>) {
        let done = self.lanes.get_mut(key).and_then(|lane| {
            lane.busy = false;
            lane.queue.pop_front()
        });
        if let Some(done) = done {
            self.settle(&done);
        }
        self.pump(key.clone(), ctx);
    }

    /// A delivery is finished (delivered, dropped or dead-lettered): the store forgets it.
    fn settle(&self, d: &Delivery) {
        let (Some(position), Some(event)) = (d.position, &d.event) else {
            return;
        };
        let key = PendingDelivery::key(d.subscription, position, &event.id);
        let store = self.store.clone();
        actix_web::rt::spawn(async move {
            if let Err(e) = store.remove_pending(&key).await {
                tracing::warn!(error = %e, "forgetting a finished delivery failed");
            }
        });
    }

    /// What the store keeps of an unfinished delivery.
    fn pending_of(d: &Delivery) -> Option<PendingDelivery> {
        Some(PendingDelivery {
            subscription: d.subscription,
            event: d.event.as_deref()?.clone(),
            position: d.position?,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            due_at: None,
        })
    }

    fn endpoint_result(&mut self, endpoint: Option<&str>, ok: bool) {
        let Some(e) = endpoint.and_then(|k| self.endpoints.get_mut(k)) else {
            return;
        };
        let (failures, cooldown) = (
            self.settings.circuit_failures,
            self.settings.circuit_cooldown,
        );
        match e.record(ok, failures, cooldown, Instant::now()) {
            CircuitChange::Opened => self.metrics.webhook_open_circuits.inc(),
            CircuitChange::Closed => self.metrics.webhook_open_circuits.dec(),
            CircuitChange::Unchanged => {}
        }
    }

    fn release_slot(&mut self, endpoint: Option<&str>, ctx: &mut Context<Self>) {
        let Some(k) = endpoint else { return };
        let Some(e) = self.endpoints.get_mut(k) else {
            return;
        };
        e.release();
        // Hand the slot to the first waiting lane that still has work (lanes of a disabled or
        // deleted subscription may have gone meanwhile).
        while let Some(lane) = self.endpoints.get_mut(k).and_then(|e| e.next_waiting()) {
            let Some(l) = self.lanes.get_mut(&lane) else {
                continue;
            };
            l.waiting = false;
            if !l.busy && !l.queue.is_empty() {
                self.pump(lane, ctx);
                return;
            }
        }
    }

    fn log(&self, subscription: Uuid, record: DeliveryRecord) {
        let store = self.store.clone();
        actix_web::rt::spawn(async move {
            let _ = store.record_delivery(subscription, record).await;
        });
    }

    /// Reads new events and queues them for every matching, validated subscription. The queued
    /// deliveries are stored as pending before the read position is saved, so a node taking over
    /// resumes them (sending again only what was in flight) and reads on from there.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.polling {
            return;
        }
        self.polling = true;
        let store = self.store.clone();
        let (node, was_leader, cursor) = (self.node_id.clone(), self.leader, self.cursor);
        let fut = async move {
            // One node of a cluster dispatches; the others stand by and take over when its lease
            // lapses, from what it saved.
            if !store.lease(LEASE, &node, LEASE_TTL).await? {
                return Ok(Polled {
                    leader: false,
                    cursor,
                    ..Polled::default()
                });
            }
            let (cursor, inherited) = if was_leader {
                (cursor, Vec::new())
            } else {
                // Saved before the node served (`start_position`), so nothing committed since
                // then is skipped.
                let saved = store.init_cursor(LEASE, 0).await?;
                (saved, store.pending().await?)
            };
            let active = |subs: &[Subscription]| subs.iter().any(|s| s.validated && !s.disabled);
            let mut read_subs = None;
            if inherited.is_empty() {
                let mut subs = store.subscriptions().await?;
                if !active(&subs) {
                    // Nothing can receive anything: the events need not be read, the position
                    // moves to the head. The subscriptions are read again after the head, so one
                    // validated before that read is seen, and one validated later lies beyond it.
                    let head = store.global_head().await?;
                    subs = store.subscriptions().await?;
                    if !active(&subs) {
                        return Ok(Polled {
                            leader: true,
                            cursor: cursor.max(head),
                            skipped: head > cursor,
                            ..Polled::default()
                        });
                    }
                }
                read_subs = Some(subs);
            }
            let events = store.read_global(cursor, READ_BATCH).await?;
            let (subs, policy) = if events.is_empty() && inherited.is_empty() {
                (Vec::new(), None)
            } else {
                let subs = match read_subs {
                    Some(subs) => subs,
                    None => store.subscriptions().await?,
                };
                (subs, Some(store.policy().await?))
            };
            Ok::<_, crate::store::StoreError>(Polled {
                leader: true,
                cursor,
                events,
                inherited,
                subs,
                policy,
                skipped: false,
            })
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            let polled = match result {
                Ok(r) => r,
                Err(e) => {
                    act.polling = false;
                    tracing::warn!(error = %e, "reading events for webhooks failed");
                    return;
                }
            };
            act.leader = polled.leader;
            act.cursor = polled.cursor;
            let Some(policy) = polled.policy else {
                if polled.skipped {
                    // Nothing to deliver up to the head: only the position is saved.
                    act.save_and_go_on(Vec::new(), false, ctx);
                    return;
                }
                act.polling = false;
                if std::mem::take(&mut act.woken) {
                    act.poll(ctx);
                }
                return;
            };
            act.subs = polled.subs.iter().map(|s| (s.id, s.clone())).collect();
            // Resume what the previous dispatcher left, oldest first, with its attempt counts.
            let mut inherited = polled.inherited;
            inherited.sort_by_key(|p| p.position);
            for p in inherited {
                act.inherited.insert((p.subscription, p.position));
                let event = Arc::new(p.event);
                let key = LaneKey::of(p.subscription, &event);
                let delivery = Delivery {
                    attempts: p.attempts,
                    last_status: p.last_status,
                    last_error: p.last_error,
                    ..Delivery::of(p.subscription, event, p.position, None)
                };
                let wait = p.due_at.and_then(|due| (due - Utc::now()).to_std().ok());
                act.enqueue_after(key, delivery, wait, ctx);
            }
            let more = polled.events.len() == READ_BATCH;
            let mut fresh = Vec::new();
            for entry in polled.events {
                act.cursor = act.cursor.max(entry.position);
                let event = entry.event;
                let mut body: Option<Rc<Vec<u8>>> = None;
                for sub in polled
                    .subs
                    .iter()
                    .filter(|s| s.validated && !s.disabled && s.matches(&event))
                {
                    if !may_receive(&policy, sub, &event)
                        || act.inherited.contains(&(sub.id, entry.position))
                    {
                        continue;
                    }
                    // Encoded once, shared by every subscription that gets the event.
                    let body = body
                        .get_or_insert_with(|| {
                            Rc::new(serde_json::to_vec(event.as_ref()).unwrap_or_default())
                        })
                        .clone();
                    let key = LaneKey::of(sub.id, &event);
                    let delivery = Delivery::of(sub.id, event.clone(), entry.position, Some(body));
                    fresh.extend(Self::pending_of(&delivery));
                    act.enqueue(key, delivery, ctx);
                }
            }
            act.save_and_go_on(fresh, more, ctx);
        }));
    }

    /// Saves the queued deliveries as pending, then the read position; polls again when the
    /// read was cut at `READ_BATCH` (`more`) or a commit woke the dispatcher meanwhile.
    fn save_and_go_on(&mut self, fresh: Vec<PendingDelivery>, more: bool, ctx: &mut Context<Self>) {
        let (store, position) = (self.store.clone(), self.cursor);
        let persist = async move {
            store.put_pending(&fresh).await?;
            store.set_cursor(LEASE, position).await
        };
        ctx.spawn(persist.into_actor(self).map(move |saved, act, ctx| {
            act.polling = false;
            if let Err(e) = saved {
                tracing::warn!(error = %e, "saving the dispatcher's pending deliveries failed");
            }
            if more || std::mem::take(&mut act.woken) {
                act.poll(ctx);
            }
        }));
    }
}

/// Saves where the dispatcher of a new store starts reading (the log's head: events from before
/// are not delivered), unless a position is saved already. Called before the node serves, so every
/// event committed after a subscription was created lies beyond it.
pub async fn start_position(store: &dyn Store) -> Result<LogPosition, crate::store::StoreError> {
    let head = store.global_head().await?;
    store.init_cursor(LEASE, head).await
}

/// What one poll of the store brought.
#[derive(Default)]
struct Polled {
    leader: bool,
    cursor: LogPosition,
    events: Vec<crate::store::LogEntry>,
    inherited: Vec<PendingDelivery>,
    subs: Vec<Subscription>,
    policy: Option<Arc<crate::auth::Policy>>,
    /// No subscription could receive anything: `cursor` moved to the log's head unread.
    skipped: bool,
}

/// The subscription's consumer may receive `event` under the current registry and delegations.
fn may_receive(policy: &crate::auth::Policy, sub: &Subscription, event: &CloudEvent) -> bool {
    let Ok(party) = Party::parse(&sub.consumer) else {
        return false;
    };
    let Some(resource) = event
        .resource
        .as_deref()
        .and_then(|r| ResourceUrn::parse(r).ok())
    else {
        return false;
    };
    policy.may_receive(&party, &resource, event.subject.as_deref())
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.client = Some(self.build_client());
        ctx.run_interval(self.settings.poll_interval, |act, ctx| act.poll(ctx));
    }
}

/// Wake the dispatcher: new events were published.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// Wakes the dispatcher for new events with at most one `Wake` waiting, however many commits
/// ask: each poll reads everything new, so one wake-up per poll is enough (at thousands of
/// commits a second, a message per commit kept its thread busy handling them).
#[derive(Clone)]
pub struct DispatchWaker {
    to: Recipient<Wake>,
    /// Cleared by the receiver when it handles the `Wake`, before it reads.
    pending: Arc<AtomicBool>,
}

impl DispatchWaker {
    /// Starts `make()`'s dispatcher on `arbiter`, with its waker.
    pub fn start(
        arbiter: &actix::ArbiterHandle,
        make: impl FnOnce() -> Dispatcher + Send + 'static,
    ) -> (Addr<Dispatcher>, DispatchWaker) {
        let pending = Arc::new(AtomicBool::new(false));
        let flag = pending.clone();
        let addr = Dispatcher::start_in_arbiter(arbiter, move |_| Dispatcher {
            wake_pending: flag,
            ..make()
        });
        let to = addr.clone().recipient();
        (addr, DispatchWaker { to, pending })
    }

    /// Call after a commit is visible in the store.
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            self.to.do_send(Wake);
        }
    }
}

impl Handler<Wake> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        // Cleared before the poll reads: a commit that finds it still set is read by that poll.
        self.wake_pending.store(false, Ordering::SeqCst);
        // A node standing by learns of its turn from its periodic poll; waking it would only
        // ask for the lease again and again.
        if !self.leader {
            return;
        }
        if self.polling {
            self.woken = true;
        } else {
            self.poll(ctx);
        }
    }
}

/// Start the validation handshake of a subscription.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Validate(pub Subscription);

impl Handler<Validate> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Validate, ctx: &mut Self::Context) {
        let sub = msg.0;
        self.subs.insert(sub.id, sub.clone());
        let id = Uuid::now_v7().to_string();
        let body = json!({
            "specversion": "1.0",
            "id": id,
            "source": format!("{}/events/api/v1/subscriptions/{}", self.base_url, sub.id),
            "type": "platform.events.validatesubscription",
        });
        let key = LaneKey {
            subscription: sub.id,
            stream: "validation".into(),
        };
        // A re-sent validation replaces one still pending, and goes out now: the lane starts a new
        // generation, so the old attempt's result and retry timer no longer count.
        if let Some(lane) = self.lanes.get_mut(&key) {
            lane.queue.clear();
            lane.busy = false;
            lane.generation += 1;
        }
        let delivery = Delivery {
            subscription: sub.id,
            id,
            body: Rc::new(body.to_string().into_bytes()),
            event: None,
            position: None,
            attempts: 0,
            last_status: None,
            last_error: None,
        };
        self.enqueue(key, delivery, ctx);
    }
}

/// Deliver these events again to one subscription (replay and dead-letter redrive).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Redeliver {
    pub subscription: Uuid,
    pub events: Vec<Arc<CloudEvent>>,
}

impl Handler<Redeliver> for Dispatcher {
    type Result = usize;

    fn handle(&mut self, msg: Redeliver, ctx: &mut Self::Context) -> usize {
        let n = msg.events.len();
        let mut records = Vec::with_capacity(n);
        for event in msg.events {
            let key = LaneKey::of(msg.subscription, &event);
            // Replays and redrives are not tied to a log position.
            let delivery = Delivery::of(msg.subscription, event, 0, None);
            records.extend(Self::pending_of(&delivery));
            self.enqueue(key, delivery, ctx);
        }
        let store = self.store.clone();
        actix_web::rt::spawn(async move {
            if let Err(e) = store.put_pending(&records).await {
                tracing::warn!(error = %e, "recording redelivered events failed");
            }
        });
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts wake-ups and clears the flag as the dispatcher does.
    struct Counter {
        pending: Arc<AtomicBool>,
        woken: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Actor for Counter {
        type Context = Context<Self>;
    }

    impl Handler<Wake> for Counter {
        type Result = ();

        fn handle(&mut self, _: Wake, _: &mut Self::Context) {
            self.pending.store(false, Ordering::SeqCst);
            self.woken.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[actix_web::test]
    async fn many_commits_before_a_poll_send_one_wake_and_a_later_one_sends_another() {
        let pending = Arc::new(AtomicBool::new(false));
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Counter {
            pending: pending.clone(),
            woken: woken.clone(),
        }
        .start();
        let waker = DispatchWaker {
            to: counter.recipient(),
            pending,
        };
        // Nothing runs the actor between these calls: one message waits for all of them.
        for _ in 0..1000 {
            waker.wake();
        }
        let settle = || actix_web::rt::time::sleep(Duration::from_millis(50));
        settle().await;
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        // Handled: the next commit wakes it again.
        waker.wake();
        settle().await;
        assert_eq!(woken.load(Ordering::SeqCst), 2);
    }
}
