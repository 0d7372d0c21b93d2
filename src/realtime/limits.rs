//! Realtime connections per party (`realtime.max_connections_per_party`): a connection takes a
//! slot when its dialog token is accepted and gives it back when it ends. In Redis mode the limit
//! holds across the cluster: each node keeps its counts in Redis, refreshed every
//! `SHARED_REFRESH`, so the connections of a node that died stop counting within `SHARED_TTL`.
//! A node takes slots from Redis in small blocks (`block`), so a burst of connections of one
//! party costs one Redis call per block, not per connection; up to a block per node may be held
//! unused, so the cluster can refuse a party slightly before it truly holds `limit`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::RedisStore;

/// How long a node's count of a party holds in Redis unless refreshed.
pub const SHARED_TTL: Duration = Duration::from_secs(30);
/// How often a node refreshes (and corrects) its counts in Redis.
pub const SHARED_REFRESH: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Count {
    /// Slots held on this node: never more than the limit.
    open: usize,
    /// Of those, the ones counted in Redis (the rest were taken while Redis was unreachable).
    shared: usize,
    /// Slots this node holds in Redis: `shared` plus a spare block at most.
    reserved: usize,
    /// The block being taken from Redis for this party, if one is: the party's other new
    /// connections wait for it instead of each taking a block of their own.
    fetching: Option<Arc<Fetch>>,
}

/// A block request to Redis in flight, and how it ended.
#[derive(Default)]
struct Fetch {
    done: Arc<tokio::sync::Notify>,
    /// Redis could not be reached: those waiting count on this node only, as the fetcher does.
    failed: std::sync::atomic::AtomicBool,
}

/// Open realtime connections by authenticated party (the dialog token's `c`).
pub struct PartyConnections {
    limit: usize,
    /// Party → its connections on this node; an entry is removed when it drops to zero, so the
    /// map holds only parties that are connected now.
    counts: Mutex<HashMap<String, Count>>,
    /// The cluster-wide counts (Redis mode) and this node's id in them.
    shared: Option<(Arc<RedisStore>, String)>,
    /// Slots taken from Redis at once: a sixteenth of the limit, 1 to 8.
    block: usize,
}

/// One connection's slot; dropping it frees the slot.
pub struct PartySlot {
    owner: Arc<PartyConnections>,
    party: String,
    shared: bool,
}

impl PartyConnections {
    /// Counts on this node only (one node: the embedded and memory stores).
    pub fn new(limit: usize) -> Arc<Self> {
        Self::build(limit, None)
    }

    /// Counts across the cluster in `store`, as node `node`.
    pub fn shared(limit: usize, store: Arc<RedisStore>, node: String) -> Arc<Self> {
        Self::build(limit, Some((store, node)))
    }

    fn build(limit: usize, shared: Option<(Arc<RedisStore>, String)>) -> Arc<Self> {
        Arc::new(PartyConnections {
            limit,
            counts: Mutex::new(HashMap::new()),
            shared,
            block: (limit / 16).clamp(1, 8),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Count>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `party`, or None when it already holds `limit` connections (on this node, or
    /// across the cluster in Redis mode). Should Redis be unreachable, only this node's count
    /// applies: a connection is not refused for an outage.
    pub async fn acquire(self: &Arc<Self>, party: &str) -> Option<PartySlot> {
        {
            let mut counts = self.lock();
            let n = counts.entry(party.to_owned()).or_default();
            if n.open >= self.limit {
                return None;
            }
            n.open += 1;
        }
        // Counted from here on: dropping the slot gives the count back.
        let mut slot = PartySlot {
            owner: self.clone(),
            party: party.to_owned(),
            shared: false,
        };
        let Some((store, node)) = &self.shared else {
            return Some(slot);
        };
        loop {
            let fetch = {
                let mut counts = self.lock();
                let Some(n) = counts.get_mut(party) else {
                    return Some(slot);
                };
                if n.shared < n.reserved {
                    // A slot of a block already held in Redis.
                    n.shared += 1;
                    slot.shared = true;
                    return Some(slot);
                }
                match &n.fetching {
                    // Another connection of the party is taking a block: wait for it, then
                    // look again. A wait created before the lock is let go receives the
                    // fetcher's `notify_waiters` even before it is first polled.
                    Some(other) => Err((other.clone(), other.done.clone().notified_owned())),
                    None => {
                        let fetch = Arc::new(Fetch::default());
                        n.fetching = Some(fetch.clone());
                        Ok(fetch)
                    }
                }
            };
            let fetch = match fetch {
                Ok(fetch) => fetch,
                Err((other, woken)) => {
                    woken.await;
                    if other.failed.load(std::sync::atomic::Ordering::Acquire) {
                        return Some(slot);
                    }
                    continue;
                }
            };
            // Boxed: the Redis call's future is large, and inline it would size every
            // connection's task (held for the connection's life) for it.
            let taken = Box::pin(
                store.acquire_connections(party, node, self.limit, self.block, SHARED_TTL),
            )
            .await;
            let mut counts = self.lock();
            let n = counts.get_mut(party);
            if let Some(n) = n {
                n.fetching = None;
                if let Ok(taken) = taken {
                    n.reserved += taken;
                }
            }
            if taken.is_err() {
                fetch
                    .failed
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            fetch.done.notify_waiters();
            match taken {
                // At the limit across the cluster: dropping the slot gives back the local count.
                Ok(0) => return None,
                Ok(_) => {
                    if let Some(n) = counts.get_mut(party) {
                        n.shared += 1;
                        slot.shared = true;
                    }
                    return Some(slot);
                }
                Err(e) => {
                    drop(counts);
                    tracing::warn!(error = %e, "cluster-wide connection count unavailable; counting on this node only");
                    return Some(slot);
                }
            }
        }
    }

    /// Connections `party` holds on this node now.
    pub fn count(&self, party: &str) -> usize {
        self.lock().get(party).map_or(0, |n| n.open)
    }

    /// Writes this node's counts to Redis again (absolute, so any drift is corrected) and extends
    /// them for another `SHARED_TTL`. Nothing to do on one node.
    pub async fn refresh(&self) {
        let Some((store, node)) = &self.shared else {
            return;
        };
        let counts: Vec<(String, usize)> = self
            .lock()
            .iter()
            .filter(|(_, n)| n.reserved > 0)
            .map(|(p, n)| (p.clone(), n.reserved))
            .collect();
        if counts.is_empty() {
            return;
        }
        if let Err(e) = store.refresh_connections(node, &counts, SHARED_TTL).await {
            tracing::warn!(error = %e, "refreshing the cluster-wide connection counts failed");
        }
    }
}

impl Drop for PartySlot {
    fn drop(&mut self) {
        // Slots to give back to Redis: all once the party has no connection here, else what
        // exceeds one spare block.
        let mut give_back = 0;
        {
            let mut counts = self.owner.lock();
            if let Some(n) = counts.get_mut(&self.party) {
                n.open -= 1;
                if self.shared {
                    n.shared -= 1;
                }
                if n.open == 0 {
                    give_back = n.reserved;
                    counts.remove(&self.party);
                } else if n.reserved > n.shared + self.owner.block {
                    give_back = n.reserved - n.shared - self.owner.block;
                    n.reserved -= give_back;
                }
            }
        }
        if give_back == 0 {
            return;
        }
        let Some((store, node)) = self.owner.shared.clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the node is going away; its counts lapse with SHARED_TTL
        };
        let party = std::mem::take(&mut self.party);
        runtime.spawn(async move {
            if let Err(e) = store.release_connections(&party, &node, give_back).await {
                tracing::debug!(error = %e, "giving back a cluster-wide connection count failed");
            }
        });
    }
}

/// Refreshes the node's cluster-wide counts for as long as the node runs.
pub async fn refresh_loop(parties: Arc<PartyConnections>) {
    if parties.shared.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(SHARED_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        parties.refresh().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_party_gets_at_most_limit_slots_and_freed_slots_come_back() {
        let conns = PartyConnections::new(2);
        let a = conns.acquire("p").await.expect("first");
        let _b = conns.acquire("p").await.expect("second");
        assert!(conns.acquire("p").await.is_none(), "third is refused");
        assert!(
            conns.acquire("q").await.is_some(),
            "other parties are not affected"
        );
        drop(a);
        assert_eq!(conns.count("p"), 1);
        assert!(
            conns.acquire("p").await.is_some(),
            "a freed slot is reusable"
        );
    }
}
