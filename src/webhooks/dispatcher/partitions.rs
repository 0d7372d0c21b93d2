//! The partitions a node delivers for. Every `lease_ttl / LEASE_ROUNDS` the dispatcher runs a lease
//! round in the store (`ClusterStore::claim_partitions`): it renews what it holds, takes free
//! partitions up to its share, and learns whether it holds more than its share while another node
//! is short. Taking a partition loads its saved feed position and pending deliveries; handing one
//! over (excess, or a drain) starts nothing new of it, lets its attempts in flight end and their
//! records reach the store, and only then gives the lease up, so the next owner resumes exactly
//! the deliveries that are not finished.

use super::*;

/// The partitions a node holds, as its heartbeat announces them.
pub type OwnedPartitions = Arc<std::sync::Mutex<Vec<u16>>>;

/// One partition this node holds.
#[derive(Default)]
pub(super) struct Part {
    /// Which taking of the partition this is: counts of an earlier one (lost, then taken again)
    /// are not this one's.
    pub(super) epoch: u64,
    /// The feed is read after this position.
    pub(super) cursor: LogPosition,
    /// The position saved in the store: behind `cursor` while no subscription could receive
    /// anything (`Dispatcher::skip_to_heads`).
    pub(super) saved: LogPosition,
    /// Its saved position and pending deliveries are loaded: its feed may be read.
    pub(super) ready: bool,
    /// Being handed over: nothing of it starts; the lease goes once nothing of it is in flight.
    pub(super) releasing: bool,
    /// Attempts of its lanes in flight.
    pub(super) in_flight: usize,
    /// Writes of its deliveries' records to the store not finished yet.
    pub(super) writes: usize,
    /// A save of its queued deliveries or of its position failed: the next save stores every
    /// delivery queued on its lanes again before its position is saved, and it is not handed
    /// over before that succeeds (its queued deliveries may be nowhere but here).
    pub(super) unstored: bool,
    /// Deliveries the previous owner left unfinished (subscription, position), loaded when this
    /// node took the partition: feed events already among them are not queued twice.
    pub(super) inherited: std::collections::HashSet<(Uuid, LogPosition)>,
}

impl Part {
    /// Handed over and settled: its lease may go.
    fn idle(&self) -> bool {
        self.releasing && self.in_flight == 0 && self.writes == 0 && !self.unstored
    }
}

/// The saved feed position of partition `n`.
pub(super) fn cursor_name(n: u16) -> String {
    format!("wf:{n}")
}

/// Hand every partition over and stop taking any (a draining node); answered once the node holds
/// none.
#[derive(Message)]
#[rtype(result = "tokio::sync::oneshot::Receiver<()>")]
pub struct Handover;

impl Handler<Handover> for Dispatcher {
    type Result = MessageResult<Handover>;

    fn handle(&mut self, _: Handover, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.leaving = true;
        self.drained.push(tx);
        let all: Vec<u16> = self.parts.keys().copied().collect();
        for p in all {
            self.begin_release(p, ctx);
        }
        self.claim(ctx);
        MessageResult(rx)
    }
}

impl Dispatcher {
    /// Runs a lease round (or another one after the running one).
    pub(super) fn claim(&mut self, ctx: &mut Context<Self>) {
        // Checked before anything else: a round that hangs must not keep the leases counted.
        self.pause_if_lapsing();
        if self.claiming {
            self.reclaim = true;
            return;
        }
        let ttl = self.settings.lease_ttl;
        self.claiming = true;
        let release: Vec<u16> = self
            .parts
            .iter()
            .filter(|(_, part)| part.idle())
            .map(|(p, _)| *p)
            .collect();
        let store = self.store.clone();
        let (node, count, taking) = (
            self.node_id.clone(),
            self.settings.partitions,
            !self.leaving,
        );
        let asked = Instant::now();
        let round = async move {
            store
                .claim_partitions(&node, count, ttl, taking, &release)
                .await
                .map(|claim| (claim, release))
        };
        ctx.spawn(round.into_actor(self).map(move |result, act, ctx| {
            act.claiming = false;
            match result {
                Ok((claim, released)) => {
                    act.renewed = Some(asked);
                    act.claimed(claim, &released, ctx);
                }
                Err(e) => tracing::warn!(error = %e, "webhook partition lease round failed"),
            }
            if std::mem::take(&mut act.reclaim) {
                act.claim(ctx);
            }
        }));
    }

    /// Leases this node could not renew for most of their life are about to pass to others: it
    /// drops every partition at once, so no attempt starts after the lease may have lapsed (a
    /// round that still finds them held takes them again, from what the store keeps). Checked at
    /// each lease round and before each attempt, not only at rounds, which a busy thread or a
    /// hanging round delays.
    pub(super) fn pause_if_lapsing(&mut self) {
        let Some(at) = self.renewed else {
            return;
        };
        if at.elapsed() <= self.settings.lease_ttl * 4 / 5 {
            return;
        }
        tracing::warn!(
            renewed_ago = ?at.elapsed(),
            "webhook partition leases could not be renewed: delivery paused"
        );
        let all: Vec<u16> = self.parts.keys().copied().collect();
        for p in all {
            self.lose(p);
        }
        self.renewed = None;
        self.announce();
    }

    /// Applies a lease round's result.
    fn claimed(&mut self, claim: crate::store::Claim, released: &[u16], ctx: &mut Context<Self>) {
        for p in released {
            if self.parts.get(p).is_some_and(Part::idle) {
                self.parts.remove(p);
                tracing::info!(partition = p, "webhook partition handed over");
            }
        }
        let held: Vec<u16> = self.parts.keys().copied().collect();
        for p in held {
            if claim.owned.binary_search(&p).is_err() && !released.contains(&p) {
                // Its lease lapsed and another node may hold it now.
                tracing::warn!(partition = p, "webhook partition lost");
                self.lose(p);
            }
        }
        for &p in &claim.owned {
            if !self.parts.contains_key(&p) {
                self.epochs += 1;
                let epoch = self.epochs;
                self.parts.insert(
                    p,
                    Part {
                        epoch,
                        ..Part::default()
                    },
                );
                self.load(p, ctx);
            }
        }
        if claim.excess > 0 && !self.leaving {
            // The highest partitions go, so two rounds agree on which.
            let give: Vec<u16> = self
                .parts
                .iter()
                .rev()
                .filter(|(_, part)| !part.releasing)
                .take(claim.excess)
                .map(|(p, _)| *p)
                .collect();
            for p in give {
                self.begin_release(p, ctx);
            }
        }
        self.announce();
        if self.leaving && self.parts.is_empty() {
            for tx in self.drained.drain(..) {
                let _ = tx.send(());
            }
        }
        // Partitions that became idle during the round go in the next one.
        if self.parts.values().any(Part::idle) {
            self.claim(ctx);
        }
    }

    /// Publishes the partitions held, for the heartbeat.
    fn announce(&self) {
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        *owned = self.parts.keys().copied().collect();
    }

    /// Drops a partition whose lease is gone: its lanes stop here at once (the store keeps their
    /// deliveries; results of attempts still in flight are not recorded, so the next owner sends
    /// those again).
    fn lose(&mut self, p: u16) {
        self.parts.remove(&p);
        self.lanes.retain(|k, _| k.partition != Some(p));
    }

    /// Starts handing partition `p` over: its lanes that have nothing in flight stop now; the
    /// others stop when their attempt ends.
    fn begin_release(&mut self, p: u16, ctx: &mut Context<Self>) {
        let Some(part) = self.parts.get_mut(&p) else {
            return;
        };
        if part.releasing {
            return;
        }
        part.releasing = true;
        tracing::info!(partition = p, "handing webhook partition over");
        let (unstored, behind) = (part.unstored, part.saved < part.cursor);
        if behind {
            // The next owner reads on from where this node did, not from an older saved position.
            let (store, name, position) = (self.store.clone(), cursor_name(p), part.cursor);
            let save = async move { store.set_cursor(&name, position).await };
            self.write_for(Some(p), "saving a partition's position", save, ctx);
        }
        if !unstored {
            self.drop_waiting_lanes(p);
        }
    }

    /// Stops the lanes of partition `p` (being handed over) that have nothing in flight: the
    /// store keeps their deliveries for the next owner.
    pub(super) fn drop_waiting_lanes(&mut self, p: u16) {
        self.lanes
            .retain(|k, lane| k.partition != Some(p) || lane.in_flight);
    }

    /// Something of partition `p` finished: when it is handed over and settled, its lease goes.
    pub(super) fn settled_some(&mut self, p: u16, ctx: &mut Context<Self>) {
        if self.parts.get(&p).is_some_and(Part::idle) {
            self.claim(ctx);
        }
    }

    /// Loads a partition just taken: its saved position, then the deliveries its last owner left
    /// unfinished, which are queued (with their attempt counts and due times) before its feed is
    /// read on.
    fn load(&mut self, p: u16, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let fut = async move {
            // Saved before any node served (`start_position`).
            let cursor = store.init_cursor(&cursor_name(p), 0).await?;
            let pending = store.pending(p).await?;
            Ok::<_, crate::store::StoreError>((cursor, pending))
        };
        ctx.spawn(fut.into_actor(self).map(move |loaded, act, ctx| {
            let (cursor, mut pending) = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    // Given up in the next round and taken again, or by another node.
                    tracing::warn!(partition = p, error = %e, "loading a webhook partition failed");
                    act.lose(p);
                    return;
                }
            };
            let Some(part) = act.parts.get_mut(&p) else {
                return;
            };
            part.cursor = cursor;
            part.saved = cursor;
            part.ready = true;
            part.inherited = pending
                .iter()
                .map(|d| (d.subscription, d.position))
                .collect();
            tracing::info!(
                partition = p,
                resumed = pending.len(),
                "webhook partition taken"
            );
            // Resume what the previous owner left, oldest first, with its attempt counts.
            pending.sort_by_key(|d| d.position);
            for d in pending {
                let event = Arc::new(d.event);
                let key = LaneKey::of(d.subscription, &event, Some(p));
                let delivery = Delivery {
                    attempts: d.attempts,
                    last_status: d.last_status,
                    last_error: d.last_error,
                    ..Delivery::of(d.subscription, event, d.position, None)
                };
                let wait = d.due_at.and_then(|due| (due - Utc::now()).to_std().ok());
                act.enqueue_after(key, delivery, wait, ctx);
            }
            act.poll(ctx);
        }));
    }

    /// Runs a store write about partition `p`'s deliveries; the partition is not handed over
    /// before it has finished.
    pub(super) fn write_for<F>(
        &mut self,
        p: Option<u16>,
        what: &'static str,
        write: F,
        ctx: &mut Context<Self>,
    ) where
        F: std::future::Future<Output = Result<(), crate::store::StoreError>> + 'static,
    {
        let counted = p.and_then(|p| {
            let part = self.parts.get_mut(&p)?;
            part.writes += 1;
            Some((p, part.epoch))
        });
        ctx.spawn(write.into_actor(self).map(move |done, act, ctx| {
            if let Err(e) = done {
                tracing::warn!(error = %e, "{what} failed");
            }
            if let Some((p, epoch)) = counted {
                if let Some(part) = act.part_of(p, epoch) {
                    part.writes -= 1;
                }
                act.settled_some(p, ctx);
            }
        }));
    }

    /// Partition `p` if this node still holds the same taking of it.
    pub(super) fn part_of(&mut self, p: u16, epoch: u64) -> Option<&mut Part> {
        self.parts.get_mut(&p).filter(|part| part.epoch == epoch)
    }
}
