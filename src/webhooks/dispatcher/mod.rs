//! `Dispatcher`: the actor that owns webhook delivery on its node. It holds some of the webhook
//! partitions (all of them on a node of its own), follows their feeds, matches subscriptions, and
//! delivers each event with per (subscription, dialog) FIFO lanes, retry with backoff, dead
//! letters, per-node and per-endpoint in-flight limits and a circuit breaker. Authorization and
//! the subscription itself are checked again before every attempt.
//!
//! Here: the actor, its messages, and starting an attempt. Beside it: `partitions` (the lease
//! rounds: taking, renewing and handing over partitions), `feed` (reading the partitions' feeds
//! and queueing deliveries), `lanes` (the per-pair FIFO lanes and their deliveries), `outcome`
//! (what the end of an attempt does).

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
use super::endpoint::{Admission, CircuitChange, Endpoint, WaitQueue, endpoint_key};
use super::guard::{self, GuardedResolver};
use super::retry::RetryPolicy;
use crate::config::WebhookSettings;
use crate::domain::{
    CloudEvent, DeadLetter, DeliveryRecord, Party, PendingDelivery, Subscription,
    SubscriptionChange, event_partition,
};
use crate::store::{LogPosition, Store};
use crate::telemetry::Metrics;

mod feed;
mod lanes;
mod outcome;
mod partitions;

use feed::may_receive;
pub use feed::start_position;
use lanes::{Delivery, Lane, LaneKey};
use partitions::Part;
pub use partitions::{Handover, OwnedPartitions};

/// Events read from a partition's feed per poll.
const READ_BATCH: usize = 500;
/// Lease rounds per `webhooks.lease_ttl`: a lease is renewed this many times before it would lapse.
const LEASE_ROUNDS: u32 = 5;
/// The least time between the starts of two polls that commits ask for. At a thousand commits a
/// second a poll per commit cost more than the commit's own fan-out; spaced, one poll reads a few
/// milliseconds of commits, and a webhook waits at most this much longer for its first attempt.
const WAKE_SPACING: Duration = Duration::from_millis(5);
/// The same with Redis, where a poll is several round trips and reads every held partition's
/// feed: feed notices from every node ask for polls, and under load one poll per 20 ms reads
/// them all (a poll per 5 ms cost about a tenth of a node's write throughput).
pub const SHARED_WAKE_SPACING: Duration = Duration::from_millis(20);
/// While no subscription can receive anything, the positions the polls move are saved at most
/// once per this long (one write of the store per commit otherwise, for nothing to deliver).
const IDLE_SAVE: Duration = Duration::from_secs(1);

/// An attempt that ended, for settling.
struct Attempted {
    key: LaneKey,
    /// The lane's generation when the attempt started: a reset lane ignores the result.
    generation: u64,
    /// The taking of the lane's partition the attempt counts in (`Part::epoch`).
    epoch: Option<u64>,
    /// The subscription as the attempt read it (`None` when it was gone).
    sub: Option<Subscription>,
    endpoint: Option<String>,
    outcome: Outcome,
    took: Duration,
    is_validation: bool,
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    node_id: String,
    settings: WebhookSettings,
    base_url: String,
    metrics: Metrics,
    retry: RetryPolicy,
    validation: RetryPolicy,
    /// Created in `started` on the dispatcher's own thread (the client is not `Send`).
    client: Option<awc::Client>,
    /// The partitions this node holds, with their feed positions.
    parts: std::collections::BTreeMap<u16, Part>,
    /// What the heartbeat announces as this node's partitions.
    owned: OwnedPartitions,
    /// A lease round is running; `reclaim`: run another when it ends.
    claiming: bool,
    reclaim: bool,
    /// Counts the takings of partitions (`Part::epoch`).
    epochs: u64,
    /// When the leases were last renewed: a node that cannot renew them stops delivering before
    /// they lapse and another node takes over.
    renewed: Option<Instant>,
    /// Handing every partition over (drain): takes none, and tells `drained` when it holds none.
    leaving: bool,
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
    polling: bool,
    /// Counts the polls' saves of pending deliveries (`Delivery::saving`).
    saves: u64,
    /// The saves still running, each with the removals of its deliveries that wait for it
    /// (lane partition, the event's partition, the pending record's key).
    unsaved: HashMap<u64, Vec<(Option<u16>, u16, String)>>,
    /// A wake-up came while a poll was running: poll again when it ends.
    woken: bool,
    /// When positions moved while no subscription could receive anything were last saved.
    idle_saved: Option<Instant>,
    /// The least time between the starts of two polls that wake-ups ask for (`WAKE_SPACING`).
    wake_spacing: Duration,
    /// When the last poll started; a wake-up sooner than `wake_spacing` after it waits.
    polled_at: Option<Instant>,
    /// Set by a `DispatchWaker` that sent a `Wake` whose poll has not started yet (see there).
    wake_pending: Arc<AtomicBool>,
    /// Subscriptions as of the last poll (endpoint accounting); attempts re-read the store.
    subs: HashMap<Uuid, Subscription>,
    lanes: HashMap<LaneKey, Lane>,
    endpoints: HashMap<String, Endpoint<LaneKey>>,
    /// Attempts in flight on this node (at most `max_in_flight_per_node`), and the lanes waiting
    /// for one to end.
    in_flight: usize,
    node_waiting: WaitQueue<LaneKey>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        settings: WebhookSettings,
        base_url: String,
        metrics: Metrics,
        node_id: String,
        owned: OwnedPartitions,
    ) -> Self {
        let retry = RetryPolicy::new(settings.retry_schedule.clone(), settings.jitter);
        let validation = RetryPolicy::new(settings.validation_schedule.clone(), settings.jitter);
        Dispatcher {
            store,
            node_id,
            settings,
            base_url,
            metrics,
            retry,
            validation,
            client: None,
            parts: Default::default(),
            owned,
            claiming: false,
            reclaim: false,
            epochs: 0,
            renewed: None,
            leaving: false,
            drained: Vec::new(),
            polling: false,
            saves: 0,
            unsaved: HashMap::new(),
            woken: false,
            idle_saved: None,
            wake_spacing: WAKE_SPACING,
            polled_at: None,
            wake_pending: Arc::default(),
            subs: HashMap::new(),
            lanes: HashMap::new(),
            endpoints: HashMap::new(),
            in_flight: 0,
            node_waiting: Default::default(),
        }
    }

    /// Polls that wake-ups ask for start at least `spacing` apart (`WAKE_SPACING` otherwise).
    pub fn spaced(self, spacing: Duration) -> Self {
        Dispatcher {
            wake_spacing: spacing,
            ..self
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

    /// Whether lanes of `partition` may start attempts here: this node holds it and is not
    /// handing it over (lanes of no partition always may).
    fn runs(&self, partition: Option<u16>) -> bool {
        partition.is_none_or(|p| self.parts.get(&p).is_some_and(|part| !part.releasing))
    }

    /// Starts the head of `key` if nothing of the lane is in flight or waiting for a retry.
    fn pump(&mut self, key: LaneKey, ctx: &mut Context<Self>) {
        if key.partition.is_some() {
            self.pause_if_lapsing();
        }
        if !self.runs(key.partition) {
            // Its partition is handed over or lost: the store keeps its deliveries for the owner.
            if self.lanes.get(&key).is_some_and(|l| !l.in_flight) {
                self.lanes.remove(&key);
            }
            return;
        }
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        if lane.busy {
            return;
        }
        if lane.queue.is_empty() {
            self.lanes.remove(&key);
            return;
        }
        // A head attempted before is a retry now due: it goes ahead of first attempts.
        let retry = lane.queue.front().is_some_and(|d| d.attempts > 0);
        if self.in_flight >= self.settings.max_in_flight_per_node {
            if !lane.node_waiting {
                lane.node_waiting = true;
                self.node_waiting.push(key, retry);
            }
            return;
        }
        let Some(head) = lane.queue.front().cloned() else {
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
                        e.wait(key, retry);
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
            lane.in_flight = true;
            lane.generation
        });
        self.in_flight += 1;
        let epoch = key
            .partition
            .and_then(|p| self.parts.get_mut(&p))
            .map(|part| {
                part.in_flight += 1;
                part.epoch
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
                epoch,
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
        let (endpoint, key, epoch) = (done.endpoint.clone(), done.key.clone(), done.epoch);
        self.in_flight -= 1;
        // A lane of a partition lost meanwhile (and perhaps taken again) is not this attempt's.
        let same_taking = match key.partition {
            None => true,
            Some(p) => epoch.is_some_and(|e| self.parts.get(&p).is_some_and(|x| x.epoch == e)),
        };
        if same_taking {
            if let Some(part) = key.partition.and_then(|p| self.parts.get_mut(&p)) {
                part.in_flight -= 1;
            }
            if let Some(lane) = self.lanes.get_mut(&key) {
                lane.in_flight = false;
            }
            if self
                .lanes
                .get(&key)
                .is_some_and(|l| l.generation == done.generation)
            {
                self.settle_outcome(done, ctx);
            }
            if let Some(p) = key.partition
                && !self.runs(Some(p))
            {
                // Handed over: the lane's rest is in the store for the next owner.
                self.lanes.remove(&key);
                self.settled_some(p, ctx);
            }
        }
        self.release_slot(endpoint.as_deref(), ctx);
        while self.in_flight < self.settings.max_in_flight_per_node
            && let Some(next) = self.node_waiting.pop()
        {
            if let Some(lane) = self.lanes.get_mut(&next) {
                lane.node_waiting = false;
                self.pump(next, ctx);
            }
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.client = Some(self.build_client());
        self.claim(ctx);
        ctx.run_interval(self.settings.lease_ttl / LEASE_ROUNDS, |act, ctx| {
            act.claim(ctx)
        });
        ctx.run_interval(self.settings.poll_interval, |act, ctx| act.poll(ctx));
    }
}

/// Wake the dispatcher: new events were published.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// Wakes the dispatcher for new events with at most one `Wake` per poll, however many commits
/// ask: each poll reads everything new, so one wake-up per poll is enough (at thousands of
/// commits a second, a message per commit kept its thread busy handling them).
#[derive(Clone)]
pub struct DispatchWaker {
    to: Recipient<Wake>,
    /// Cleared by the receiver when its next poll starts, before it reads.
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
        let since = self.polled_at.map(|at| at.elapsed());
        if let Some(wait) = since.and_then(|since| self.wake_spacing.checked_sub(since)) {
            // Too soon after the last poll: the pending flag stays set meanwhile, so the commits
            // of the wait send no `Wake` of their own, and one poll reads them all.
            ctx.run_later(wait, |act, ctx| act.woken_up(ctx));
            return;
        }
        self.woken_up(ctx);
    }
}

impl Dispatcher {
    /// Handles the `Wake` of a commit.
    fn woken_up(&mut self, ctx: &mut Context<Self>) {
        self.metrics.webhook_wakeups.inc();
        if self.parts.is_empty() {
            self.wake_pending.store(false, Ordering::SeqCst);
            return;
        }
        if self.polling {
            // The flag stays set until the next poll starts (`poll` clears it): the commits
            // meanwhile are read by that poll and send no `Wake` of their own. A poll can take a
            // while (an idle one waits for the embedded store to apply its log), and a wake-up
            // per commit while it ran kept this thread busy for nothing.
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
            partition: None,
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
            saving: None,
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
        let mut records: HashMap<u16, Vec<PendingDelivery>> = HashMap::new();
        for event in msg.events {
            // A replay shares the lane of its dialog when this node runs the partition, and runs
            // on a lane of its own otherwise; its record waits in the partition's pending set.
            let p = event_partition(&event, self.settings.partitions);
            let key = LaneKey::of(
                msg.subscription,
                &event,
                Some(p).filter(|_| self.runs(Some(p))),
            );
            // Replays and redrives are not tied to a log position.
            let delivery = Delivery::of(msg.subscription, event, 0, None);
            records
                .entry(p)
                .or_default()
                .extend(Self::pending_of(&delivery));
            self.enqueue(key, delivery, ctx);
        }
        let store = self.store.clone();
        actix_web::rt::spawn(async move {
            for (p, records) in records {
                if let Err(e) = store.put_pending(p, &records).await {
                    tracing::warn!(error = %e, "recording redelivered events failed");
                }
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
