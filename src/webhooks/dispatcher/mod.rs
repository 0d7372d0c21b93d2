//! `Dispatcher`: the actor that owns webhook delivery on its node. It follows the global event log,
//! matches subscriptions, and delivers each event with per (subscription, dialog) FIFO lanes, retry
//! with backoff, dead letters, a per-endpoint in-flight limit and a circuit breaker. Authorization
//! and the subscription itself are checked again before every attempt.
//!
//! Here: the actor, its messages, and starting an attempt. Beside it: `lanes` (the per-pair FIFO
//! lanes and their deliveries), `feed` (reading the log and queueing deliveries), `outcome` (what
//! the end of an attempt does).

use std::collections::HashMap;
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
    CloudEvent, DeadLetter, DeliveryRecord, Party, PendingDelivery, Subscription,
    SubscriptionChange,
};
use crate::store::{LogPosition, Store};
use crate::telemetry::Metrics;

mod feed;
mod lanes;
mod outcome;

use feed::may_receive;
pub use feed::start_position;
use lanes::{Delivery, Lane, LaneKey};

/// Events read from the global log per poll.
const READ_BATCH: usize = 500;

/// An attempt that ended, for settling.
struct Attempted {
    key: LaneKey,
    /// The lane's generation when the attempt started: a reset lane ignores the result.
    generation: u64,
    /// The subscription as the attempt read it (`None` when it was gone).
    sub: Option<Subscription>,
    endpoint: Option<String>,
    outcome: Outcome,
    took: Duration,
    is_validation: bool,
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
        self.pump_after(key, wait, ctx);
    }

    /// Pumps the (busy) lane again after `wait`, unless it was reset meanwhile.
    fn pump_after(&mut self, key: LaneKey, wait: Duration, ctx: &mut Context<Self>) {
        let generation = self.lanes.get(&key).map_or(0, |l| l.generation);
        self.metrics.webhook_retry_backlog.inc();
        ctx.run_later(wait, move |act, ctx| {
            act.metrics.webhook_retry_backlog.dec();
            match act.lanes.get_mut(&key) {
                Some(lane) if lane.generation == generation => lane.busy = false,
                // The lane was reset meanwhile: this timer is stale.
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
            let done = Attempted {
                key,
                generation,
                sub,
                endpoint,
                outcome,
                took: started.elapsed(),
                is_validation,
            };
            act.finished(done, ctx);
        }));
    }

    /// An attempt ended: settle its outcome, then give its endpoint slot back, whatever happened
    /// to the lane meanwhile.
    fn finished(&mut self, done: Attempted, ctx: &mut Context<Self>) {
        self.metrics
            .webhook_attempt_latency
            .observe(done.took.as_secs_f64());
        let endpoint = done.endpoint.clone();
        if self
            .lanes
            .get(&done.key)
            .is_some_and(|l| l.generation == done.generation)
        {
            self.settle_outcome(done, ctx);
        }
        self.release_slot(endpoint.as_deref(), ctx);
    }
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
