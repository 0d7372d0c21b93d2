//! The feed: reading the feeds of the partitions a node runs from their saved positions, matching
//! subscriptions, and storing the queued deliveries as pending before a position moves on.

use super::partitions::cursor_name;
use super::*;

impl Dispatcher {
    /// Reads the new events of every partition this node runs and queues them for every
    /// matching, validated subscription. The queued deliveries are stored as pending before a
    /// partition's read position is saved, so a node taking the partition over resumes them
    /// (sending again only what was in flight) and reads on from there.
    pub(super) fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.polling {
            return;
        }
        let from: Vec<(u16, LogPosition)> = self
            .parts
            .iter()
            .filter(|(_, part)| part.ready && !part.releasing)
            .map(|(p, part)| (*p, part.cursor))
            .collect();
        if from.is_empty() {
            // Every partition is being handed over: one whose save failed is stored again.
            if self.parts.values().any(|part| part.unstored) {
                self.polling = true;
                self.save_and_go_on(Vec::new(), false, None, ctx);
            }
            return;
        }
        self.polling = true;
        self.polled_at = Some(Instant::now());
        self.metrics.webhook_polls.inc();
        // Cleared before the poll reads: a commit that finds it still set is read by this poll.
        self.wake_pending.store(false, Ordering::SeqCst);
        let store = self.store.clone();
        let count = self.settings.partitions;
        let fut = async move {
            let active = |subs: &[Subscription]| subs.iter().any(|s| s.validated && !s.disabled);
            let mut subs = store.subscriptions().await?;
            if !active(&subs) {
                // Nothing can receive anything: the events need not be read, the positions move
                // to the heads. The subscriptions are read again after the heads, so one
                // validated before that read is seen, and one validated later lies beyond them.
                let which: Vec<u16> = from.iter().map(|(p, _)| *p).collect();
                let heads = store.feed_heads(count, &which).await?;
                subs = store.subscriptions().await?;
                if !active(&subs) {
                    let skipped = from
                        .iter()
                        .zip(heads)
                        .filter(|((_, after), head)| head > after)
                        .map(|((p, after), head)| (*p, *after, head))
                        .collect();
                    return Ok(Polled {
                        idle: true,
                        skipped,
                        ..Polled::default()
                    });
                }
            }
            let pages = store.read_feed(count, &from, READ_BATCH).await?;
            let policy = if pages.iter().all(|p| p.entries.is_empty()) {
                None
            } else {
                Some(store.policy().await?)
            };
            Ok::<_, crate::store::StoreError>(Polled {
                pages,
                subs,
                policy,
                ..Polled::default()
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
            if polled.idle {
                act.skip_to_heads(polled.skipped, ctx);
                return;
            }
            act.subs = polled.subs.iter().map(|s| (s.id, s.clone())).collect();
            // The deliveries queued now are stored by this save (`queue_entry` marks them).
            act.saves += 1;
            let batch = act.saves;
            act.unsaved.insert(batch, Vec::new());
            let mut more = false;
            let mut saves = Vec::new();
            for page in polled.pages {
                let p = page.partition;
                // Handed over or lost while the read ran: the next owner reads it again.
                let Some(part) = act.parts.get(&p).filter(|x| x.ready && !x.releasing) else {
                    continue;
                };
                let after = part.cursor;
                if page.through <= after {
                    continue;
                }
                more |= page.more;
                let mut fresh = Vec::new();
                if let Some(policy) = &polled.policy {
                    for entry in page.entries {
                        act.queue_entry(p, entry, &polled.subs, policy, &mut fresh, ctx);
                    }
                }
                if let Some(part) = act.parts.get_mut(&p) {
                    part.cursor = page.through;
                }
                saves.push((p, after, page.through, fresh));
            }
            // Positions moved while nothing could receive anything are saved now, before any
            // later one: a restart reads on from them, not from before a subscription existed.
            for lag in act.behind() {
                if !saves.iter().any(|save| save.0 == lag.0) {
                    saves.push(lag);
                }
            }
            act.save_and_go_on(saves, more, Some(batch), ctx);
        }));
    }

    /// No subscription could receive anything: each partition's position moves to its feed's
    /// head (`skipped`: partition, position, head), in memory, and the positions are saved at
    /// most once per `IDLE_SAVE`, so a node no one subscribes to writes no position for each
    /// commit. The first poll that finds a subscription saves them before anything else, and a
    /// partition handed over saves its position first.
    fn skip_to_heads(
        &mut self,
        skipped: Vec<(u16, LogPosition, LogPosition)>,
        ctx: &mut Context<Self>,
    ) {
        for (p, after, head) in skipped {
            let part = self.parts.get_mut(&p);
            if let Some(part) = part.filter(|x| x.ready && !x.releasing && x.cursor == after) {
                part.cursor = head;
            }
        }
        let due = self.idle_saved.is_none_or(|at| at.elapsed() >= IDLE_SAVE);
        let saves = if due { self.behind() } else { Vec::new() };
        if !saves.is_empty() {
            self.idle_saved = Some(Instant::now());
        }
        self.save_and_go_on(saves, false, None, ctx);
    }

    /// Saves of no deliveries for the partitions whose saved position is behind their position
    /// in memory.
    fn behind(&self) -> Vec<(u16, LogPosition, LogPosition, Vec<PendingDelivery>)> {
        self.parts
            .iter()
            .filter(|(_, part)| part.ready && !part.releasing && part.saved < part.cursor)
            .map(|(p, part)| (*p, part.saved, part.cursor, Vec::new()))
            .collect()
    }

    /// Queues one feed event of partition `p` for every subscription that may receive it; its
    /// deliveries belong to the save the running poll makes next (`saves`).
    fn queue_entry(
        &mut self,
        p: u16,
        entry: crate::store::LogEntry,
        subs: &[Subscription],
        policy: &crate::auth::Policy,
        fresh: &mut Vec<PendingDelivery>,
        ctx: &mut Context<Self>,
    ) {
        let event = entry.event;
        let mut body: Option<Rc<Vec<u8>>> = None;
        for sub in subs
            .iter()
            .filter(|s| s.validated && !s.disabled && s.matches(&event))
        {
            let inherited = self
                .parts
                .get(&p)
                .is_some_and(|part| part.inherited.contains(&(sub.id, entry.position)));
            if !may_receive(policy, sub, &event) || inherited {
                continue;
            }
            // Encoded once, shared by every subscription that gets the event.
            let body = body
                .get_or_insert_with(|| {
                    Rc::new(serde_json::to_vec(event.as_ref()).unwrap_or_default())
                })
                .clone();
            let key = LaneKey::of(sub.id, &event, Some(p));
            let delivery = Delivery {
                saving: Some(self.saves),
                ..Delivery::of(sub.id, event.clone(), entry.position, Some(body))
            };
            fresh.extend(Self::pending_of(&delivery));
            self.enqueue(key, delivery, ctx);
        }
    }

    /// Saves, for each `(partition, before, position, queued)`, the queued deliveries as pending,
    /// then the read position; polls again when a read was cut at `READ_BATCH` (`more`) or a
    /// commit woke the dispatcher meanwhile. A partition's saves count as its writes, so it is
    /// not handed over before they are made. Removals of deliveries of save `batch` that
    /// finished meanwhile are made once it ends.
    ///
    /// A partition whose last save failed (`Part::unstored`) has its position in memory beyond
    /// deliveries the store may not hold: this save stores every delivery queued on its lanes
    /// again, and saves its position only after them. Without that, the next save would move its
    /// saved position past them, and a crash would lose them.
    pub(super) fn save_and_go_on(
        &mut self,
        mut saves: Vec<(u16, LogPosition, LogPosition, Vec<PendingDelivery>)>,
        more: bool,
        mut batch: Option<u64>,
        ctx: &mut Context<Self>,
    ) {
        let restoring: Vec<(u16, LogPosition)> = self
            .parts
            .iter()
            .filter(|(_, part)| part.unstored)
            .map(|(p, part)| (*p, part.cursor))
            .collect();
        for (p, cursor) in restoring {
            let batch = *batch.get_or_insert_with(|| {
                self.saves += 1;
                self.unsaved.insert(self.saves, Vec::new());
                self.saves
            });
            let queued = self.queued_records(p, batch);
            // The queued deliveries include those this poll just queued.
            match saves.iter_mut().find(|save| save.0 == p) {
                Some(save) => save.3 = queued,
                None => saves.push((p, cursor, cursor, queued)),
            }
        }
        let mut moved = Vec::with_capacity(saves.len());
        let mut pending = Vec::new();
        for (p, _, position, fresh) in saves {
            let store = self.store.clone();
            let epoch = self.parts.get_mut(&p).map(|part| {
                part.writes += 1;
                part.epoch
            });
            moved.push((p, epoch, position));
            if !fresh.is_empty() {
                pending.push(async move { (p, store.put_pending(p, &fresh).await) });
            }
        }
        let store = self.store.clone();
        // The pending deliveries first, then the positions of the partitions whose deliveries
        // were stored, in one write: a poll moves many partitions at once (on a store with one
        // global log, every partition's position moves with each commit).
        let persist = async move {
            let stored = futures::future::join_all(pending).await;
            let mut failed: HashMap<u16, crate::store::StoreError> = stored
                .into_iter()
                .filter_map(|(p, r)| r.err().map(|e| (p, e)))
                .collect();
            let (parts, cursors): (Vec<u16>, Vec<(String, LogPosition)>) = moved
                .iter()
                .filter(|(p, _, _)| !failed.contains_key(p))
                .map(|(p, _, position)| (*p, (cursor_name(*p), *position)))
                .unzip();
            if store.set_cursors(&cursors).await.is_err() {
                // One by one then, so that a failure holds back only the partitions it hit.
                let single = parts.iter().zip(&cursors).map(|(p, (name, position))| {
                    let store = store.clone();
                    async move { (*p, store.set_cursor(name, *position).await) }
                });
                for (p, result) in futures::future::join_all(single).await {
                    if let Err(e) = result {
                        failed.insert(p, e);
                    }
                }
            }
            moved
                .into_iter()
                .map(|(p, epoch, position)| (p, epoch, position, failed.remove(&p)))
                .collect::<Vec<_>>()
        };
        ctx.spawn(persist.into_actor(self).map(move |saved, act, ctx| {
            act.polling = false;
            // First the removals that waited, so a partition being handed over counts them
            // among its writes before the save's own are done.
            let waited = batch.and_then(|b| act.unsaved.remove(&b)).unwrap_or_default();
            for (lane_partition, p, key) in waited {
                act.forget_pending(lane_partition, p, key, ctx);
            }
            for (p, epoch, position, failed) in saved {
                if let Some(e) = &failed {
                    tracing::warn!(partition = p, error = %e, "saving the dispatcher's pending deliveries failed");
                }
                let Some(part) = epoch.and_then(|e| act.part_of(p, e)) else {
                    continue;
                };
                part.writes -= 1;
                if failed.is_none() {
                    part.saved = part.saved.max(position);
                }
                let restored = part.unstored && failed.is_none();
                part.unstored = failed.is_some();
                if restored && part.releasing {
                    // Stored at last: the lanes that wait go, as when the handover began.
                    act.drop_waiting_lanes(p);
                }
                act.settled_some(p, ctx);
            }
            if more || std::mem::take(&mut act.woken) {
                act.poll(ctx);
            }
        }));
    }

    /// The pending records of every delivery queued on partition `p`'s lanes (in flight or
    /// waiting), to be stored by save `batch`: their removals wait for it.
    fn queued_records(&mut self, p: u16, batch: u64) -> Vec<PendingDelivery> {
        let mut records = Vec::new();
        for (_, lane) in self
            .lanes
            .iter_mut()
            .filter(|(k, _)| k.partition == Some(p))
        {
            for d in &mut lane.queue {
                if let Some(record) = Self::pending_of(d) {
                    d.saving = Some(batch);
                    records.push(record);
                }
            }
        }
        records
    }
}

/// Prepares the webhook partitions of a store before the node serves: checks that the store was
/// set up with `partitions` (the lane hash depends on it), adopts what a version without
/// partitions left, and saves where each partition's feed is read from (its head for a new store:
/// events from before are not delivered), unless a position is saved already. So every event
/// committed after a subscription was created lies beyond its partition's position.
pub async fn start_position(
    store: &dyn Store,
    partitions: u16,
) -> Result<(), crate::store::StoreError> {
    let set_up = store
        .init_cursor(PARTITION_COUNT, u64::from(partitions))
        .await?;
    if set_up != u64::from(partitions) {
        return Err(crate::store::StoreError::Unavailable(format!(
            "webhooks.partitions is {partitions}, but this store's webhook feeds were set up with \
             {set_up}; set webhooks.partitions = {set_up}"
        )));
    }
    let adopted = store.adopt_unpartitioned(partitions).await?;
    let all: Vec<u16> = (0..partitions).collect();
    let heads = store.feed_heads(partitions, &all).await?;
    for (p, head) in all.into_iter().zip(heads) {
        store
            .init_cursor(&cursor_name(p), adopted.unwrap_or(head))
            .await?;
    }
    Ok(())
}

/// Where the partition count a store was set up with is kept (among the saved positions).
const PARTITION_COUNT: &str = "webhook-partitions";

/// What one poll of the store brought.
#[derive(Default)]
struct Polled {
    /// No subscription could receive anything (`skipped` says how far the feeds reach).
    idle: bool,
    pages: Vec<crate::store::FeedPage>,
    subs: Vec<Subscription>,
    policy: Option<Arc<crate::auth::Policy>>,
    /// No subscription could receive anything: (partition, position, head) of the partitions
    /// whose position moves to their feed's head unread.
    skipped: Vec<(u16, LogPosition, LogPosition)>,
}

/// The subscription's consumer may receive `event` under the current registry and delegations.
pub(super) fn may_receive(
    policy: &crate::auth::Policy,
    sub: &Subscription,
    event: &CloudEvent,
) -> bool {
    Party::parse(&sub.consumer).is_ok_and(|party| policy.may_receive_event(&party, event))
}
