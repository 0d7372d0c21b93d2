//! `DialogActor`: the single owner of one dialog's in-node state (cached dialog, last delivered
//! sequence). Commands run one at a time (`AtomicResponse`): load, authorize, compute, commit, publish.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use uuid::Uuid;

use super::command::{Access, Command, CommandError, DialogCommand, Outcome};
use super::registry::DialogRegistry;
use super::subscribers::SubscriberQueue;
use crate::bus::{Bus, Envelope};
use crate::domain::{Change, Policy, ReadGrant};
use crate::domain::{Dialog, Drafts};
use crate::store::{Commit, Store, StoreError};
use crate::telemetry::Metrics;

/// How often one command retries after losing a commit race to another writer (other nodes).
/// The race is not fair: a node that just won writes its next change from the state it holds,
/// while the loser reads the dialog again first, so under a steady stream from several nodes one
/// node can lose many races in a row. The budget is generous, and the random pause after a loss
/// (up to `MAX_CONFLICT_PAUSE_US`) is short, so the loser is back before the winner's next write.
const MAX_COMMIT_ATTEMPTS: usize = 256;
/// Longest pause after a lost commit race (µs).
const MAX_CONFLICT_PAUSE_US: u64 = 500;

/// What every dialog actor of a node shares.
pub struct DialogDeps {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub metrics: Metrics,
    pub base_url: String,
    pub node_id: String,
    pub idle_timeout: Duration,
    /// Changes kept for resume (`afterSequence`): at most this many, none older than `history_ttl`.
    pub history_size: usize,
    pub history_ttl: Duration,
}

pub struct DialogActor {
    id: Uuid,
    deps: Arc<DialogDeps>,
    /// To remove itself from the registry when idle; weak so a stopping node frees both.
    registry: Weak<DialogRegistry>,
    /// The dialog as last committed or loaded; `None` inside means absent (or purged).
    /// The outer `None` means not loaded (or unknown after a store failure): load before use.
    cached: Option<Option<Arc<Dialog>>>,
    /// Highest `dialogsequence` this node has delivered to local subscribers.
    delivered: u64,
    last_used: Instant,
    /// Local realtime subscribers by id; each queue is drained by one subscription stream, which
    /// sends `Detach` when dropped.
    subscribers: std::collections::HashMap<u64, Subscriber>,
}

/// A local realtime subscriber: its queue and what its dialog token grants.
struct Subscriber {
    queue: Arc<SubscriberQueue>,
    /// Checked again when the policy changes; `None` for a grant the policy cannot revoke.
    grant: Option<ReadGrant>,
}

impl DialogActor {
    pub fn new(id: Uuid, deps: Arc<DialogDeps>, registry: Weak<DialogRegistry>) -> Self {
        DialogActor {
            id,
            deps,
            registry,
            cached: None,
            delivered: 0,
            last_used: Instant::now(),
            subscribers: Default::default(),
        }
    }

    fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.last_used.elapsed() >= self.deps.idle_timeout
    }

    /// Takes a committed change (local commit or bus): delivers it when it is the next one,
    /// repairs from the log when changes before it are missing, ignores it when already delivered.
    fn offer(&mut self, change: Arc<Change>, ctx: &mut Context<Self>) {
        if change.last <= self.delivered {
            return;
        }
        if self.subscribers.is_empty() {
            self.delivered = change.last;
        } else if change.first == self.delivered + 1 {
            self.deliver(change);
        } else {
            self.repair(ctx);
        }
    }

    /// Hands a committed change to every local subscriber, once and in sequence order.
    fn deliver(&mut self, change: Arc<Change>) {
        if change.last <= self.delivered {
            return;
        }
        self.delivered = change.last;
        for s in self.subscribers.values() {
            s.queue.push(change.clone());
        }
        if change.deleted && change.revision.is_none() {
            // Purged: the dialog is gone, and with it every reader's access.
            self.end_where(|_| true, "the dialog was purged");
        }
    }

    /// Ends (and detaches) the subscribers `which` selects; their streams end with `reason`.
    fn end_where(&mut self, which: impl Fn(&Subscriber) -> bool, reason: &'static str) {
        let before = self.subscribers.len();
        self.subscribers.retain(|_, s| {
            let end = which(s);
            if end {
                s.queue.end(reason);
            }
            !end
        });
        let ended = before - self.subscribers.len();
        if ended > 0 {
            self.deps.metrics.subscriptions.sub(ended as i64);
            self.last_used = Instant::now();
            if self.subscribers.is_empty() {
                self.deps.bus.unsubscribe(self.id);
            }
        }
    }
}

impl Actor for DialogActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.deps.metrics.dialog_actors.inc();
        let check = (self.deps.idle_timeout / 2).max(Duration::from_millis(10));
        ctx.run_interval(check, |act, ctx| {
            if act.is_idle() {
                if let Some(registry) = act.registry.upgrade() {
                    registry.forget(act.id, &ctx.address());
                }
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.deps.metrics.dialog_actors.dec();
    }
}

impl Handler<DialogCommand> for DialogActor {
    type Result = AtomicResponse<Self, Result<Outcome, CommandError>>;

    fn handle(&mut self, msg: DialogCommand, _ctx: &mut Self::Context) -> Self::Result {
        self.last_used = Instant::now();
        let cached = self.cached.take();
        let deps = self.deps.clone();
        let id = self.id;
        AtomicResponse::new(Box::pin(
            async move { execute(&deps, id, cached, msg).await }
                .into_actor(self)
                .map(|(cached, result, committed), act, ctx| {
                    act.cached = cached;
                    act.last_used = Instant::now();
                    if let Some(change) = committed {
                        act.offer(change, ctx);
                    }
                    result
                }),
        ))
    }
}

/// Envelope from another node (or this node's own, which is already delivered).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Incoming(pub Envelope);

impl Handler<Incoming> for DialogActor {
    type Result = ();

    fn handle(&mut self, msg: Incoming, ctx: &mut Self::Context) {
        let env = msg.0;
        if env.sequence <= self.delivered {
            return;
        }
        // Another node changed the dialog: the cache is stale.
        self.cached = None;
        // The commit time travels in the events, so latency and history age hold across nodes.
        let committed = env
            .events
            .last()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e.time).ok())
            .map_or_else(chrono::Utc::now, |t| t.with_timezone(&chrono::Utc));
        if let Some(change) = Change::of(&env.events, env.revision, committed) {
            self.offer(Arc::new(change), ctx);
        }
    }
}

/// Re-reads the dialog's change log after what this node delivered (after a bus reconnect).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Repair;

impl Handler<Repair> for DialogActor {
    type Result = ();

    fn handle(&mut self, _msg: Repair, ctx: &mut Self::Context) {
        self.cached = None;
        if !self.subscribers.is_empty() {
            self.repair(ctx);
        }
    }
}

impl DialogActor {
    /// Delivers every logged change after `delivered`; the actor handles nothing else meanwhile,
    /// so the repaired changes and later envelopes stay in order.
    fn repair(&mut self, ctx: &mut Context<Self>) {
        let store = self.deps.store.clone();
        let (id, after) = (self.id, self.delivered);
        ctx.wait(
            async move { store.dialog_changes(id, after, usize::MAX).await }
                .into_actor(self)
                .map(move |loaded, act, _ctx| match loaded {
                    Ok(changes) => {
                        for c in changes {
                            act.deliver(c);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(dialog = %id, error = %e, "repairing from the log failed")
                    }
                }),
        );
    }
}

/// Attaches a realtime subscriber; with `after`, first queues the retained changes after that
/// sequence (or one resync marker when the history no longer reaches it).
pub struct Attach {
    /// The subscriber's id, chosen by the caller (unique on the node).
    pub sub: u64,
    pub after: Option<u64>,
    pub queue: Arc<SubscriberQueue>,
    pub grant: Option<ReadGrant>,
}

impl Message for Attach {
    type Result = Result<(), CommandError>;
}

impl Handler<Attach> for DialogActor {
    type Result = AtomicResponse<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: Attach, _ctx: &mut Self::Context) -> Self::Result {
        self.last_used = Instant::now();
        let deps = self.deps.clone();
        let id = self.id;
        let after = msg.after;
        let has_subscribers = !self.subscribers.is_empty();
        // Existing subscribers must also get whatever the log holds beyond `delivered` (a remote
        // change whose envelope is still on its way), so read from the lower of the two marks.
        let (from, limit) = match (after, has_subscribers) {
            (Some(n), true) => (n.min(self.delivered), usize::MAX),
            (Some(n), false) => (n, deps.history_size),
            (None, true) => (self.delivered, usize::MAX),
            (None, false) => (0, 1),
        };
        // Commits run atomically too, so nothing is committed on this node between reading the
        // log here and registering the queue below: no change is missed or doubled.
        let load = async move { deps.store.dialog_changes(id, from, limit).await };
        AtomicResponse::new(Box::pin(load.into_actor(self).map(
            move |loaded, act, _ctx| {
                let all = loaded.map_err(unavailable)?;
                if has_subscribers {
                    // `deliver` skips what this node already delivered.
                    for c in &all {
                        act.deliver(c.clone());
                    }
                } else if let Some(latest) = all.last() {
                    act.delivered = act.delivered.max(latest.last);
                }
                if let Some(n) = after {
                    act.replay(&msg.queue, &all, n);
                }
                if act.subscribers.is_empty() {
                    act.deps.bus.subscribe(act.id);
                }
                act.subscribers.insert(
                    msg.sub,
                    Subscriber {
                        queue: msg.queue,
                        grant: msg.grant,
                    },
                );
                act.deps.metrics.subscriptions.inc();
                Ok(())
            },
        )))
    }
}

impl DialogActor {
    /// Queues for a resuming subscriber the retained changes after `n` (the newest `history_size`,
    /// none older than `history_ttl`), or one resync marker when they no longer reach back to `n`.
    fn replay(&self, queue: &SubscriberQueue, logged: &[Arc<Change>], n: u64) {
        let newer: Vec<&Arc<Change>> = logged.iter().filter(|c| c.last > n).collect();
        let Some(latest) = newer.last() else { return };
        let oldest = chrono::Utc::now()
            - chrono::Duration::from_std(self.deps.history_ttl).unwrap_or(chrono::Duration::MAX);
        let skip = newer.len().saturating_sub(self.deps.history_size);
        let retained: Vec<&Arc<Change>> = newer[skip..]
            .iter()
            .copied()
            .filter(|c| c.at >= oldest)
            .collect();
        match retained.first() {
            Some(first) if first.first <= n + 1 => {
                for c in retained {
                    queue.push(c.clone());
                }
            }
            _ => queue.push_resync((*latest).clone()),
        }
    }
}

/// The policy changed: subscribers whose grant no longer holds end.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckAccess(pub Arc<Policy>);

impl Handler<CheckAccess> for DialogActor {
    type Result = ();

    fn handle(&mut self, msg: CheckAccess, _ctx: &mut Self::Context) {
        let policy = msg.0;
        self.end_where(
            |s| s.grant.as_ref().is_some_and(|g| !policy.grants(g)),
            "access to the dialog has ended",
        );
    }
}

/// Removes a realtime subscriber (its stream was dropped).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach(pub u64);

impl Handler<Detach> for DialogActor {
    type Result = ();

    fn handle(&mut self, msg: Detach, _ctx: &mut Self::Context) {
        if self.subscribers.remove(&msg.0).is_some() {
            self.deps.metrics.subscriptions.dec();
            self.last_used = Instant::now();
            if self.subscribers.is_empty() {
                self.deps.bus.unsubscribe(self.id);
            }
        }
    }
}

enum Plan {
    Read(Outcome),
    Write {
        next: Option<Box<Dialog>>,
        drafts: Drafts,
        child_id: Option<Uuid>,
        create: bool,
        silent: bool,
    },
}

type Executed = (
    Option<Option<Arc<Dialog>>>,
    Result<Outcome, CommandError>,
    Option<Arc<Change>>,
);

async fn execute(
    deps: &DialogDeps,
    id: Uuid,
    cached: Option<Option<Arc<Dialog>>>,
    mut msg: DialogCommand,
) -> Executed {
    let mut current = match cached {
        Some(c) => c,
        None => match deps.store.load_dialog(id).await {
            Ok(d) => d.map(Arc::new),
            Err(e) => return (None, Err(unavailable(e)), None),
        },
    };
    for _ in 0..MAX_COMMIT_ATTEMPTS {
        let now = Utc::now();
        let plan = match plan(current.as_ref(), &msg, id, now) {
            Ok(p) => p,
            // A change authorized against a policy answered from memory is refused only by the
            // current one.
            Err(e) => match msg.access.renewed(deps.store.as_ref()).await {
                Ok(true) => continue,
                _ => return (Some(current), Err(e), None),
            },
        };
        let (next, drafts, child_id, create, silent) = match plan {
            // A change with nothing to write answers only once the current policy agrees (a
            // details read was authorized against the current one already).
            Plan::Read(_)
                if !matches!(msg.command, Command::View { .. })
                    && matches!(msg.access.renewed(deps.store.as_ref()).await, Ok(true)) =>
            {
                continue;
            }
            Plan::Read(outcome) => return (Some(current), Ok(outcome), None),
            Plan::Write {
                next,
                drafts,
                child_id,
                create,
                silent,
            } => (next, drafts, child_id, create, silent),
        };
        let base = current.as_ref().map_or(0, |d| d.sequence);
        let mut next = next;
        let last = base + drafts.len() as u64;
        if let Some(n) = next.as_mut() {
            n.sequence = last;
        }
        // Shared from here on by the store's commit, the answer and the cache.
        let next: Option<Arc<Dialog>> = next.map(|d| Arc::new(*d));
        let Some(describe) = next.as_deref().or(current.as_deref()) else {
            return (Some(current), Err(CommandError::NotFound), None);
        };
        let events: Vec<_> = drafts
            .into_iter()
            .enumerate()
            .map(|(i, d)| Arc::new(d.build(describe, base + 1 + i as u64, now, &deps.base_url)))
            .collect();
        let hold_until = describe.visible_from.filter(|t| *t > now);
        let envelope = Envelope {
            origin: deps.node_id.clone(),
            dialog_id: id,
            sequence: last,
            events,
            revision: next.as_ref().map(|d| d.revision),
        };
        // A store that can publishes the envelope in the commit itself (one round trip fewer).
        let announce = deps
            .store
            .announces()
            .then(|| deps.bus.announcement(&envelope))
            .flatten();
        let announced = announce.is_some();
        let commit = Commit {
            dialog_id: id,
            expected_sequence: base,
            create,
            state: next.clone(),
            children_before: current
                .as_ref()
                .map_or((0, 0), |d| (d.activities.len(), d.transmissions.len())),
            events: envelope.events.clone(),
            publish: !silent,
            hold_until,
            announce,
            policy_version: msg.access.policy().version(),
        };
        match deps.store.commit(commit).await {
            Ok(()) => {
                for e in &envelope.events {
                    deps.metrics
                        .events
                        .with_label_values(&[e.kind.as_str()])
                        .inc();
                }
                // Webhooks may be due: their dispatcher reads the feed now. A change's events
                // are all of its dialog, so of one partition: the first speaks for them.
                if !silent && let Some(first) = envelope.events.first() {
                    deps.bus.feed_changed(first);
                }
                let change = Change::of(&envelope.events, next.as_ref().map(|d| d.revision), now)
                    .map(Arc::new);
                // Unless the commit published it already.
                if !announced && let Err(e) = deps.bus.publish(envelope).await {
                    // Committed already; other nodes repair the gap from the dialog log.
                    tracing::warn!(dialog = %id, error = %e, "publishing a committed change failed");
                }
                let outcome = Outcome {
                    dialog: next.clone(),
                    child_id,
                };
                return (Some(next), Ok(outcome), change);
            }
            Err(StoreError::Conflict) => {
                let pause = rand::random::<u64>() % MAX_CONFLICT_PAUSE_US;
                tokio::time::sleep(Duration::from_micros(pause)).await;
                match deps.store.load_dialog(id).await {
                    Ok(d) => current = d.map(Arc::new),
                    Err(e) => return (None, Err(unavailable(e)), None),
                }
            }
            Err(StoreError::AlreadyExists) => {
                return (None, Err(CommandError::AlreadyExists), None);
            }
            Err(e @ StoreError::Unavailable(_)) => return (None, Err(unavailable(e)), None),
            // Nothing was written: authorize again against the current policy.
            Err(StoreError::PolicyMoved) => {
                if let Err(e) = msg.access.renewed(deps.store.as_ref()).await {
                    return (None, Err(unavailable(e)), None);
                }
            }
        }
    }
    (
        None,
        Err(CommandError::Unavailable(
            "too many concurrent writers".into(),
        )),
        None,
    )
}

fn unavailable(e: StoreError) -> CommandError {
    CommandError::Unavailable(e.to_string())
}

fn check_revision(d: &Dialog, if_match: Option<Uuid>) -> Result<(), CommandError> {
    match if_match {
        Some(r) if r != d.revision => Err(CommandError::PreconditionFailed),
        _ => Ok(()),
    }
}

/// Authorizes `msg` against the loaded dialog and computes the change, without side effects.
fn plan(
    current: Option<&Arc<Dialog>>,
    msg: &DialogCommand,
    id: Uuid,
    now: chrono::DateTime<Utc>,
) -> Result<Plan, CommandError> {
    if let Command::Create(input) = &msg.command {
        if current.is_some() {
            return Err(CommandError::AlreadyExists);
        }
        // Checked before the create was sent here, and again should the policy have moved
        // before its commit.
        if let (Access::ServiceOwner { party, policy }, Some(resource)) =
            (&msg.access, &input.service_resource)
            && !policy.owns(party, resource)
        {
            return Err(CommandError::Forbidden(
                "the dialog's service resource is owned by another party",
            ));
        }
        let mut input = (**input).clone();
        input.id = Some(id);
        let (dialog, drafts) = Dialog::create(input, now)?;
        return Ok(Plan::Write {
            next: Some(Box::new(dialog)),
            drafts,
            child_id: None,
            create: true,
            silent: false,
        });
    }
    let d = current.ok_or(CommandError::NotFound)?;
    match &msg.access {
        Access::ServiceOwner { party, policy } => {
            if !policy.owns(party, &d.service_resource) {
                return Err(CommandError::Forbidden(
                    "the dialog's service resource is owned by another party",
                ));
            }
        }
        Access::EndUser { party, policy } => {
            if !policy.may_read_as_end_user(party, &d.party, &d.service_resource) {
                return Err(CommandError::Forbidden(
                    "the dialog belongs to a party you may not act for",
                ));
            }
            if d.is_deleted() {
                return Err(CommandError::Gone);
            }
            if !d.is_visible_at(now) {
                return Err(CommandError::NotFound);
            }
        }
    }
    let write = |next: Dialog, drafts: Drafts, child_id: Option<Uuid>, silent: bool| Plan::Write {
        next: Some(Box::new(next)),
        drafts,
        child_id,
        create: false,
        silent,
    };
    Ok(match &msg.command {
        Command::Create(_) => unreachable!("handled above"),
        Command::View { viewer } => match viewer.as_ref().and_then(|v| d.see(v, now)) {
            Some((next, drafts)) => write(next, drafts, None, false),
            None => Plan::Read(Outcome {
                dialog: Some(d.clone()),
                child_id: None,
            }),
        },
        Command::Replace {
            input,
            if_match,
            silent,
        } => {
            live(d)?;
            check_revision(d, *if_match)?;
            let (next, drafts) = d.replace((**input).clone(), now, *silent)?;
            write(next, drafts, None, *silent)
        }
        Command::AddActivity {
            input,
            if_match,
            silent,
        } => {
            live(d)?;
            check_revision(d, *if_match)?;
            let (next, drafts, child) = d.add_activity((**input).clone(), now, *silent)?;
            write(next, drafts, Some(child), *silent)
        }
        Command::AddTransmission {
            input,
            if_match,
            silent,
        } => {
            live(d)?;
            check_revision(d, *if_match)?;
            let (next, drafts, child) = d.add_transmission((**input).clone(), now, *silent)?;
            write(next, drafts, Some(child), *silent)
        }
        Command::Delete { if_match, silent } => {
            live(d)?;
            check_revision(d, *if_match)?;
            let (next, drafts) = d.soft_delete(now, *silent);
            write(next, drafts, None, *silent)
        }
        Command::Restore { silent } => {
            if !d.is_deleted() {
                Plan::Read(Outcome {
                    dialog: Some(d.clone()),
                    child_id: None,
                })
            } else {
                let (next, drafts) = d.restore(now, *silent);
                write(next, drafts, None, *silent)
            }
        }
        Command::Purge => Plan::Write {
            next: None,
            drafts: vec![crate::domain::EventDraft::dialog(
                crate::domain::EventKind::Deleted,
            )],
            child_id: None,
            create: false,
            silent: false,
        },
    })
}

fn live(d: &Dialog) -> Result<(), CommandError> {
    if d.is_deleted() {
        Err(CommandError::Gone)
    } else {
        Ok(())
    }
}
