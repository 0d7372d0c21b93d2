//! Local realtime subscribers of a dialog: the bounded queue between a `DialogActor` (producer) and
//! one subscription stream (consumer), and the byte budget all subscriptions of a connection share.
//!
//! Slow consumers: when a push would exceed the connection's budget, the subscription's queue is
//! coalesced into a single "resync" marker holding the latest change (the client must refetch the
//! dialog anyway); a connection that overflows again and again without ever draining is flagged too
//! slow, and its transport closes it (`4008`). Memory per connection stays within the budget.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::doorbell::Doorbell;
use crate::domain::Change;

/// Bytes a queued change is charged: the size of an encoded `next` frame with every field selected
/// and a long operation id, rounded up.
pub const CHANGE_COST: usize = 256;

/// Overflows in a row (without the queue ever draining) after which a connection is too slow.
const MAX_OVERFLOWS: u32 = 3;

/// The byte budget of one client connection, shared by its subscriptions.
pub struct ConnectionBudget {
    limit: usize,
    used: AtomicUsize,
    too_slow: AtomicBool,
    /// Set when a queue of the connection coalesced (its changes outgrew the budget).
    overflowed: AtomicBool,
    /// Woken when the connection is flagged too slow; the transport awaits it and closes.
    pub slow: Notify,
    /// Woken on a push to any queue the connection drains itself (`SubscriberQueue::drained`),
    /// when the connection has no doorbell: one wake-up of the connection's task per change, with
    /// no task per subscription between.
    pub ready: Notify,
    /// Rung instead, for a connection seated in its worker's hub: the hub pumps it on the
    /// worker's thread. At most one ring is outstanding (`rung`) until the hub answers it.
    doorbell: Option<Doorbell>,
    rung: AtomicBool,
    /// Node-wide gauge of buffered bytes, kept in step with `used`.
    gauge: Option<prometheus::IntGauge>,
}

impl ConnectionBudget {
    pub fn new(limit: usize, gauge: Option<prometheus::IntGauge>) -> Arc<Self> {
        Self::build(limit, gauge, None)
    }

    /// A budget whose drained queues ring `doorbell` instead of waking `ready`.
    pub fn seated(
        limit: usize,
        gauge: Option<prometheus::IntGauge>,
        doorbell: Doorbell,
    ) -> Arc<Self> {
        Self::build(limit, gauge, Some(doorbell))
    }

    fn build(
        limit: usize,
        gauge: Option<prometheus::IntGauge>,
        doorbell: Option<Doorbell>,
    ) -> Arc<Self> {
        Arc::new(ConnectionBudget {
            limit: limit.max(CHANGE_COST),
            used: AtomicUsize::new(0),
            too_slow: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            slow: Notify::new(),
            ready: Notify::new(),
            doorbell,
            rung: AtomicBool::new(false),
            gauge,
        })
    }

    /// Something was queued for the connection: rings its doorbell (unless a ring is still
    /// unanswered) or wakes its task.
    fn wake(&self) {
        match &self.doorbell {
            Some(bell) => {
                if !self.rung.swap(true, Ordering::AcqRel) {
                    bell.ring();
                }
            }
            None => self.ready.notify_one(),
        }
    }

    /// The hub is answering the ring: a push from now on rings again. Called before the queues
    /// are drained, so a push that the drain misses always rings anew.
    pub fn answered(&self) {
        self.rung.store(false, Ordering::Release);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn is_too_slow(&self) -> bool {
        self.too_slow.load(Ordering::Relaxed)
    }

    fn charge(&self, bytes: usize) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + bytes <= self.limit).then_some(u + bytes)
            })
            .is_ok();
        if ok && let Some(g) = &self.gauge {
            g.add(bytes as i64);
        }
        ok
    }

    fn refund(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.sub(bytes as i64);
        }
    }

    /// Whether a queue of the connection coalesced since the last call.
    pub fn take_overflowed(&self) -> bool {
        self.overflowed.swap(false, Ordering::AcqRel)
    }

    /// Marks the connection too slow; its transport closes it.
    pub fn flag_too_slow(&self) {
        self.too_slow.store(true, Ordering::Relaxed);
        self.slow.notify_waiters();
        self.slow.notify_one();
    }
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Arc<Change>>,
    /// Set when the queue was coalesced: the latest change, to be delivered with `resync: true`.
    resync: Option<Arc<Change>>,
    overflows: u32,
    /// Set when the subscription has ended (its reader lost access, or the dialog was purged):
    /// what was queued before still goes out, then the stream ends with this reason.
    ended: Option<&'static str>,
}

/// What `try_pop` found.
pub enum Popped {
    /// The next change, and whether it is a resync.
    Change(Arc<Change>, bool),
    /// Nothing queued now.
    Empty,
    /// The subscription has ended and everything queued before was taken.
    Ended,
}

/// One subscription's queue. The dialog actor pushes (never blocks); the stream pops.
pub struct SubscriberQueue {
    state: std::sync::Mutex<QueueState>,
    /// Woken on every push; the consumer awaits it when the queue is empty.
    ready: Notify,
    budget: Arc<ConnectionBudget>,
    /// Drained by its connection's task on `budget.ready` (instead of `pop` on `ready`).
    drained: bool,
}

impl SubscriberQueue {
    /// A queue its consumer awaits with `pop`.
    pub fn new(budget: Arc<ConnectionBudget>) -> Arc<Self> {
        Self::build(budget, false)
    }

    /// A queue the connection drains itself with `try_pop` whenever `budget.ready` wakes it.
    pub fn drained(budget: Arc<ConnectionBudget>) -> Arc<Self> {
        Self::build(budget, true)
    }

    fn build(budget: Arc<ConnectionBudget>, drained: bool) -> Arc<Self> {
        Arc::new(SubscriberQueue {
            state: Default::default(),
            ready: Notify::new(),
            budget,
            drained,
        })
    }

    fn wake(&self) {
        if self.drained {
            self.budget.wake();
        } else {
            self.ready.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `change`, coalescing when the connection's budget is spent.
    pub fn push(&self, change: Arc<Change>) {
        let mut st = self.lock();
        if st.ended.is_some() {
            return;
        }
        if st.resync.is_some() {
            // Already coalesced and not yet taken: the marker just moves to the newer change.
            st.resync = Some(change);
        } else if self.budget.charge(CHANGE_COST) {
            st.items.push_back(change);
        } else {
            let dropped = st.items.len();
            st.items.clear();
            self.budget.refund(dropped * CHANGE_COST);
            st.resync = Some(change);
            self.budget.overflowed.store(true, Ordering::Release);
            st.overflows += 1;
            if st.overflows >= MAX_OVERFLOWS {
                self.budget.flag_too_slow();
            }
        }
        drop(st);
        self.wake();
    }

    /// Queues a change only if nothing newer was delivered (replay hand-over), as `push`.
    pub fn push_resync(&self, change: Arc<Change>) {
        let mut st = self.lock();
        if st.ended.is_some() {
            return;
        }
        let dropped = st.items.len();
        st.items.clear();
        self.budget.refund(dropped * CHANGE_COST);
        st.resync = Some(change);
        drop(st);
        self.wake();
    }

    /// Ends the subscription: nothing more is queued; `pop` returns what is queued, then `None`.
    pub fn end(&self, reason: &'static str) {
        self.lock().ended.get_or_insert(reason);
        self.wake();
    }

    /// Why the subscription ended, once it has.
    pub fn ended(&self) -> Option<&'static str> {
        self.lock().ended
    }

    /// The next change and whether it is a resync, waiting while the queue is empty; `None` once
    /// the subscription has ended and its queue is drained.
    pub async fn pop(&self) -> Option<(Arc<Change>, bool)> {
        loop {
            match self.try_pop() {
                Popped::Change(change, resync) => return Some((change, resync)),
                Popped::Ended => return None,
                Popped::Empty => self.ready.notified().await,
            }
        }
    }

    /// What the queue holds next, without waiting.
    pub fn try_pop(&self) -> Popped {
        let mut st = self.lock();
        if let Some(change) = st.resync.take() {
            return Popped::Change(change, true);
        }
        if let Some(change) = st.items.pop_front() {
            self.budget.refund(CHANGE_COST);
            if st.items.is_empty() {
                st.overflows = 0;
            }
            return Popped::Change(change, false);
        }
        if st.ended.is_some() {
            return Popped::Ended;
        }
        Popped::Empty
    }
}

impl Drop for SubscriberQueue {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let queued = st.items.len();
        self.budget.refund(queued * CHANGE_COST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u64) -> Arc<Change> {
        Change::numbered(n)
    }

    #[tokio::test]
    async fn changes_come_out_in_order() {
        let q = SubscriberQueue::new(ConnectionBudget::new(10 * CHANGE_COST, None));
        for n in 1..=3 {
            q.push(change(n));
        }
        for n in 1..=3 {
            let (c, resync) = q.pop().await.expect("a change");
            assert_eq!((c.last, resync), (n, false));
        }
    }

    #[tokio::test]
    async fn a_full_budget_coalesces_into_one_resync_of_the_latest_change() {
        let budget = ConnectionBudget::new(2 * CHANGE_COST, None);
        let q = SubscriberQueue::new(budget.clone());
        for n in 1..=5 {
            q.push(change(n));
        }
        assert_eq!(budget.used(), 0, "coalescing frees the queued bytes");
        let (c, resync) = q.pop().await.expect("a change");
        assert_eq!((c.last, resync), (5, true));
        q.push(change(6));
        let (c, resync) = q.pop().await.expect("a change");
        assert_eq!((c.last, resync), (6, false));
        assert!(!budget.is_too_slow());
    }

    #[tokio::test]
    async fn repeated_overflows_without_draining_flag_the_connection_too_slow() {
        let budget = ConnectionBudget::new(CHANGE_COST, None);
        let q = SubscriberQueue::new(budget.clone());
        for round in 0..MAX_OVERFLOWS as u64 {
            q.push(change(round * 10));
            q.push(change(round * 10 + 1)); // overflow
            let (c, resync) = q.pop().await.expect("a change"); // takes the resync marker, queue still not drained
            assert!(resync, "{c:?}");
            q.push(change(round * 10 + 2));
        }
        assert!(budget.is_too_slow());
        assert!(budget.used() <= CHANGE_COST);
    }

    #[tokio::test]
    async fn an_ended_queue_hands_out_what_it_held_then_ends() {
        let q = SubscriberQueue::new(ConnectionBudget::new(10 * CHANGE_COST, None));
        q.push(change(1));
        q.end("access ended");
        q.push(change(2));
        let (c, _) = q.pop().await.expect("the change queued before the end");
        assert_eq!(c.last, 1);
        assert!(q.pop().await.is_none());
        assert_eq!(q.ended(), Some("access ended"));
    }

    #[test]
    fn budget_is_shared_by_the_subscriptions_of_a_connection() {
        let budget = ConnectionBudget::new(2 * CHANGE_COST, None);
        let a = SubscriberQueue::new(budget.clone());
        let b = SubscriberQueue::new(budget.clone());
        a.push(change(1));
        b.push(change(1));
        assert_eq!(budget.used(), 2 * CHANGE_COST);
        drop(a);
        assert_eq!(budget.used(), CHANGE_COST);
    }
}
