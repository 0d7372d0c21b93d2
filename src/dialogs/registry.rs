//! `DialogRegistry`: finds or starts the actor of a dialog. Lookups go through sharded maps (no
//! single hot actor); actors are spread over one arbiter per core by a hash of the dialog id.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use uuid::Uuid;

use super::actor::{Attach, CheckAccess, Detach, DialogActor, DialogDeps, Incoming, Repair};
use super::command::{Access, Command, CommandError, DialogCommand, Outcome};
use super::subscribers::SubscriberQueue;
use crate::bus::{BusEvent, Envelope};
use crate::domain::{Policy, ReadGrant};

/// Number of map shards; a power of two well above the core count keeps lock contention negligible.
const SHARDS: usize = 64;

/// How often a command is re-sent after it reached an actor that was stopping (idle) at that moment.
const MAX_SEND_ATTEMPTS: usize = 4;

pub struct DialogRegistry {
    /// Live actors by dialog id. An entry is removed by its actor when it stops for idleness
    /// (`forget`); a stale `Addr` found here is replaced on the next lookup.
    shards: Vec<Mutex<HashMap<Uuid, Addr<DialogActor>>>>,
    arbiters: Vec<ArbiterHandle>,
    deps: Arc<DialogDeps>,
    /// The policy as last read, and when: realtime subscriptions check their grant against it
    /// at attach (at most one store read per `POLICY_FRESH`, however many clients connect).
    policy: Mutex<Option<(std::time::Instant, Arc<Policy>)>>,
    /// Realtime subscriber ids, unique on this node. The caller picks the id before it asks the
    /// actor to attach, so that its guard exists even while the answer is on its way.
    next_subscriber: AtomicU64,
}

/// How long a read policy serves attaches. A delegation revoked within it may still let a stream
/// attach; the access watcher (which compares policies every second) ends that stream then.
const POLICY_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

impl DialogRegistry {
    pub fn new(deps: Arc<DialogDeps>, arbiters: Vec<ArbiterHandle>) -> Arc<Self> {
        Arc::new(DialogRegistry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            arbiters,
            policy: Mutex::new(None),
            next_subscriber: AtomicU64::new(0),
            deps,
        })
    }

    fn slot(&self, id: &Uuid) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        h.finish() as usize
    }

    fn shard(&self, id: &Uuid) -> std::sync::MutexGuard<'_, HashMap<Uuid, Addr<DialogActor>>> {
        self.shards[self.slot(id) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The actor of `id`, started on demand.
    pub fn actor(self: &Arc<Self>, id: Uuid) -> Addr<DialogActor> {
        let mut shard = self.shard(&id);
        if let Some(addr) = shard.get(&id).filter(|a| a.connected()) {
            return addr.clone();
        }
        let deps = self.deps.clone();
        let weak = Arc::downgrade(self);
        let actor = DialogActor::new(id, deps, weak);
        let addr = match self
            .arbiters
            .get((self.slot(&id) >> 8) % self.arbiters.len().max(1))
        {
            Some(arbiter) => DialogActor::start_in_arbiter(arbiter, move |_| actor),
            None => actor.start(),
        };
        shard.insert(id, addr.clone());
        addr
    }

    /// Runs `command` on the dialog's actor.
    pub async fn send(
        self: &Arc<Self>,
        id: Uuid,
        access: Access,
        command: Command,
    ) -> Result<Outcome, CommandError> {
        let msg = DialogCommand { access, command };
        for _ in 0..MAX_SEND_ATTEMPTS {
            let addr = self.actor(id);
            match addr.send(msg.clone()).await {
                Ok(result) => return result,
                // The actor stopped between lookup and delivery; the command never ran.
                Err(MailboxError::Closed) => self.forget(id, &addr),
                Err(MailboxError::Timeout) => break,
            }
        }
        Err(CommandError::Unavailable("dialog actor unavailable".into()))
    }

    /// Attaches a realtime subscriber to the dialog's actor. The returned guard detaches it on drop.
    pub async fn attach(
        self: &Arc<Self>,
        id: Uuid,
        after: Option<u64>,
        queue: Arc<SubscriberQueue>,
        grant: Option<ReadGrant>,
    ) -> Result<SubscriptionGuard, CommandError> {
        for _ in 0..MAX_SEND_ATTEMPTS {
            let addr = self.actor(id);
            // The guard comes first: a caller that goes away while the actor attaches (its
            // connection closed) drops it, and the detach queues behind the attach.
            let guard = SubscriptionGuard {
                addr: addr.clone(),
                sub: self.next_subscriber.fetch_add(1, Ordering::Relaxed) + 1,
            };
            match addr
                .send(Attach {
                    sub: guard.sub,
                    after,
                    queue: queue.clone(),
                    grant: grant.clone(),
                })
                .await
            {
                Ok(result) => return result.map(|()| guard),
                Err(MailboxError::Closed) => self.forget(id, &addr),
                Err(MailboxError::Timeout) => break,
            }
        }
        Err(CommandError::Unavailable("dialog actor unavailable".into()))
    }

    /// The registry's policy, read from the store at most once per `POLICY_FRESH`.
    pub async fn policy(&self) -> Result<Arc<Policy>, crate::store::StoreError> {
        let now = std::time::Instant::now();
        if let Some((at, p)) = self.policy.lock().ok().and_then(|c| c.clone())
            && now.duration_since(at) < POLICY_FRESH
        {
            return Ok(p);
        }
        let p = self.deps.store.policy().await?;
        if let Ok(mut c) = self.policy.lock() {
            *c = Some((now, p.clone()));
        }
        Ok(p)
    }

    /// Removes `addr` as the actor of `id` (only if it still is).
    pub fn forget(&self, id: Uuid, addr: &Addr<DialogActor>) {
        let mut shard = self.shard(&id);
        if shard.get(&id) == Some(addr) {
            shard.remove(&id);
        }
    }

    /// Hands a bus event to the live actors it concerns.
    pub fn on_bus(&self, event: BusEvent) {
        match event {
            BusEvent::Envelope(envelope) => self.route(envelope),
            BusEvent::Reconnected => self.each(|addr| addr.do_send(Repair)),
            // For the webhook dispatcher, not the dialogs.
            BusEvent::FeedChanged(_) => {}
        }
    }

    /// The policy changed: every live actor ends the subscribers it no longer grants.
    pub fn check_access(&self, policy: Arc<Policy>) {
        if let Ok(mut c) = self.policy.lock() {
            *c = Some((std::time::Instant::now(), policy.clone()));
        }
        self.each(|addr| addr.do_send(CheckAccess(policy.clone())));
    }

    fn each(&self, f: impl Fn(&Addr<DialogActor>)) {
        for shard in &self.shards {
            let actors: Vec<Addr<DialogActor>> = shard
                .lock()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            for addr in &actors {
                f(addr);
            }
        }
    }

    /// Hands an envelope from the bus to the dialog's actor, if one is live on this node.
    pub fn route(&self, envelope: Envelope) {
        if envelope.origin == self.deps.node_id {
            return;
        }
        let addr = self
            .shard(&envelope.dialog_id)
            .get(&envelope.dialog_id)
            .cloned();
        if let Some(addr) = addr {
            addr.do_send(Incoming(envelope));
        }
    }

    /// Number of live dialog actors.
    pub fn live(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// Keeps a realtime subscriber attached; dropping it detaches (the actor holding it never idles out
/// while subscribers remain, so the address stays valid).
pub struct SubscriptionGuard {
    addr: Addr<DialogActor>,
    sub: u64,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.addr.do_send(Detach(self.sub));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::dialogs::subscribers::ConnectionBudget;
    use crate::store::memory::MemoryStore;
    use crate::telemetry::Metrics;

    async fn wait_gauge(metrics: &Metrics, n: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metrics.subscriptions.get() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "expected {n} subscriptions, have {}",
                metrics.subscriptions.get()
            );
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_web::test]
    async fn a_caller_gone_while_the_actor_attaches_leaves_no_subscriber_behind() {
        let metrics = Metrics::new("test");
        let deps = Arc::new(DialogDeps {
            store: Arc::new(MemoryStore::new(Policy::new(vec![], vec![]))),
            bus: Arc::new(MemoryBus::new()),
            metrics: metrics.clone(),
            base_url: "http://127.0.0.1".into(),
            node_id: "test".into(),
            idle_timeout: Duration::from_secs(60),
            history_size: 10,
            history_ttl: Duration::from_secs(60),
        });
        let arbiter = Arbiter::new();
        let registry = DialogRegistry::new(deps, vec![arbiter.handle()]);
        let queue = SubscriberQueue::new(ConnectionBudget::new(1 << 20, None));
        // One poll sends the attach; its answer is never read, as when the client's connection
        // closes while the actor is attaching it.
        let mut attach = Box::pin(registry.attach(Uuid::new_v4(), None, queue, None));
        match (&mut attach).now_or_never() {
            None => {
                wait_gauge(&metrics, 1).await;
                drop(attach);
            }
            // On a busy machine the actor can answer within that one poll: the guard it gave
            // is dropped here, which must detach as well.
            Some(answer) => drop(answer),
        }
        wait_gauge(&metrics, 0).await;
        arbiter.stop();
    }
}
