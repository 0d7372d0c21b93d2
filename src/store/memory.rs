//! The embedded, in-memory `Store`: one mutex over plain maps. Every method holds the lock only for
//! map work (no await inside), which keeps commits atomic and short.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Commit, DialogQuery, EventFilter, LogEntry, LogPosition, Store, StoreError};
use crate::domain::{
    Change, CloudEvent, DeadLetter, DelegationEntry, DeliveryRecord, Dialog, NodeInfo,
    PendingDelivery, Policy, ResourceEntry, ResourceUrn, Subscription,
};

/// Delivery attempts kept per subscription for `GET …/deliveries`.
pub const DELIVERIES_KEEP: usize = 100;

/// Events kept per dialog in its own log (for resume and gap repair); older ones are dropped, and a
/// reader asking further back sees the gap and resyncs.
const DIALOG_LOG_KEEP: usize = 1000;

struct Slot {
    /// `None` once purged: the id stays taken and its sequence keeps counting.
    dialog: Option<Dialog>,
    sequence: u64,
    log: std::collections::VecDeque<Arc<CloudEvent>>,
    changes: std::collections::VecDeque<Arc<Change>>,
}

struct Held {
    release_at: DateTime<Utc>,
    events: Vec<Arc<CloudEvent>>,
}

struct StoredEntry {
    event: Arc<CloudEvent>,
    resource: String,
    appended: DateTime<Utc>,
}

#[derive(Default)]
struct Inner {
    dialogs: BTreeMap<Uuid, Slot>,
    log: BTreeMap<LogPosition, StoredEntry>,
    next_position: LogPosition,
    /// (resource, event id) → position in that resource's log.
    by_id: HashMap<(String, String), LogPosition>,
    by_resource: HashMap<String, BTreeSet<LogPosition>>,
    /// Published events seen, as (resource, source, id).
    external_ids: HashSet<(String, String, String)>,
    /// Held-back events in release order per dialog; `held_until` keeps a dialog's later events
    /// behind its earlier held ones.
    held: Vec<Held>,
    held_until: HashMap<Uuid, DateTime<Utc>>,
    policy: Arc<Policy>,
    subscriptions: BTreeMap<Uuid, Subscription>,
    deliveries: HashMap<Uuid, std::collections::VecDeque<DeliveryRecord>>,
    dead: BTreeMap<Uuid, DeadLetter>,
    cursors: HashMap<String, LogPosition>,
    pending: HashMap<String, PendingDelivery>,
    /// The single node of the embedded mode, with its heartbeat expiry.
    node: Option<(NodeInfo, std::time::Instant)>,
}

impl Inner {
    fn append(&mut self, event: Arc<CloudEvent>, now: DateTime<Utc>) {
        self.next_position += 1;
        let position = self.next_position;
        let resource = event.resource.clone().unwrap_or_default();
        // Within one resource an id may repeat across sources; a cursor names the latest, so paging
        // always advances.
        self.by_id
            .insert((resource.clone(), event.id.clone()), position);
        self.by_resource
            .entry(resource.clone())
            .or_default()
            .insert(position);
        self.log.insert(
            position,
            StoredEntry {
                event,
                resource,
                appended: now,
            },
        );
    }
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new(policy: Policy) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner {
                policy: Arc::new(policy),
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would leave maps half-updated only inside one commit's map
        // work, which has no panicking paths; recover the guard rather than poisoning the node.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn load_dialog(&self, id: Uuid) -> Result<Option<Dialog>, StoreError> {
        Ok(self.lock().dialogs.get(&id).and_then(|s| s.dialog.clone()))
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut inner = self.lock();
        let current = inner.dialogs.get(&commit.dialog_id).map(|s| s.sequence);
        match (commit.create, current) {
            (true, Some(_)) => return Err(StoreError::AlreadyExists),
            (false, None) => return Err(StoreError::Conflict),
            (false, Some(seq)) if seq != commit.expected_sequence => {
                return Err(StoreError::Conflict);
            }
            (false, Some(_))
                if inner
                    .dialogs
                    .get(&commit.dialog_id)
                    .is_some_and(|s| s.dialog.is_none()) =>
            {
                return Err(StoreError::Conflict);
            }
            _ => {}
        }
        let new_sequence = commit.expected_sequence + commit.events.len() as u64;
        let slot = inner
            .dialogs
            .entry(commit.dialog_id)
            .or_insert_with(|| Slot {
                dialog: None,
                sequence: 0,
                log: Default::default(),
                changes: Default::default(),
            });
        if let Some(change) = Change::of(
            &commit.events,
            commit.state.as_ref().map(|d| d.revision),
            now,
        ) {
            if slot.changes.len() == DIALOG_LOG_KEEP {
                slot.changes.pop_front();
            }
            slot.changes.push_back(Arc::new(change));
        }
        slot.dialog = commit.state;
        slot.sequence = new_sequence;
        for e in &commit.events {
            if slot.log.len() == DIALOG_LOG_KEEP {
                slot.log.pop_front();
            }
            slot.log.push_back(e.clone());
        }
        if commit.publish && !commit.events.is_empty() {
            let pending = inner
                .held_until
                .get(&commit.dialog_id)
                .copied()
                .filter(|t| *t > now);
            let hold = match (commit.hold_until.filter(|t| *t > now), pending) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            match hold {
                Some(release_at) => {
                    inner.held_until.insert(commit.dialog_id, release_at);
                    inner.held.push(Held {
                        release_at,
                        events: commit.events,
                    });
                }
                None => {
                    for e in commit.events {
                        inner.append(e, now);
                    }
                }
            }
        }
        Ok(())
    }

    async fn list_dialogs(&self, query: &DialogQuery) -> Result<Vec<Dialog>, StoreError> {
        let inner = self.lock();
        let start = match query.after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        Ok(inner
            .dialogs
            .range((start, std::ops::Bound::Unbounded))
            .filter_map(|(_, s)| s.dialog.as_ref())
            .filter(|d| query.include_deleted || !d.is_deleted())
            .filter(|d| {
                query
                    .resources
                    .as_ref()
                    .is_none_or(|r| r.contains(&d.service_resource))
            })
            .filter(|d| query.parties.as_ref().is_none_or(|p| p.contains(&d.party)))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn dialog_events(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<CloudEvent>>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .dialogs
            .get(&id)
            .map(|s| {
                s.log
                    .iter()
                    .filter(|e| e.dialogsequence.unwrap_or(0) > after)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn dialog_changes(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Change>>, StoreError> {
        let inner = self.lock();
        let Some(slot) = inner.dialogs.get(&id) else {
            return Ok(Vec::new());
        };
        let newer: Vec<Arc<Change>> = slot
            .changes
            .iter()
            .filter(|c| c.last > after)
            .cloned()
            .collect();
        let skip = newer.len().saturating_sub(limit);
        Ok(newer.into_iter().skip(skip).collect())
    }

    async fn log_position(
        &self,
        resource: &str,
        event_id: &str,
    ) -> Result<Option<LogPosition>, StoreError> {
        let key = (resource.to_owned(), event_id.to_owned());
        Ok(self.lock().by_id.get(&key).copied())
    }

    async fn read_log(
        &self,
        resource: &str,
        after: LogPosition,
        limit: usize,
        filter: EventFilter<'_>,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let inner = self.lock();
        let Some(positions) = inner.by_resource.get(resource) else {
            return Ok(Vec::new());
        };
        Ok(positions
            .range(after + 1..)
            .filter_map(|p| inner.log.get(p).map(|e| (*p, e)))
            .filter(|(_, e)| filter(&e.event))
            .take(limit)
            .map(|(position, e)| LogEntry {
                position,
                event: e.event.clone(),
            })
            .collect())
    }

    async fn append_external(&self, event: CloudEvent) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let resource = event.resource.clone().unwrap_or_default();
        if !inner
            .external_ids
            .insert((resource, event.source.clone(), event.id.clone()))
        {
            return Ok(false);
        }
        inner.append(Arc::new(event), Utc::now());
        Ok(true)
    }

    async fn release_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        if inner.held.iter().all(|h| h.release_at > now) {
            return Ok(0);
        }
        let held = std::mem::take(&mut inner.held);
        let (due, later): (Vec<Held>, Vec<Held>) =
            held.into_iter().partition(|h| h.release_at <= now);
        inner.held = later;
        inner.held_until.retain(|_, t| *t > now);
        // Stable by release time, so one dialog's batches keep their commit order.
        let mut due = due;
        due.sort_by_key(|h| h.release_at);
        let mut released = 0;
        for h in due {
            for e in h.events {
                inner.append(e, now);
                released += 1;
            }
        }
        Ok(released)
    }

    async fn prune_log(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let old: Vec<LogPosition> = inner
            .log
            .iter()
            .take_while(|(_, e)| e.appended < before)
            .map(|(p, _)| *p)
            .collect();
        for p in &old {
            if let Some(e) = inner.log.remove(p) {
                let key = (e.resource.clone(), e.event.id.clone());
                if inner.by_id.get(&key) == Some(p) {
                    inner.by_id.remove(&key);
                }
                if let Some(set) = inner.by_resource.get_mut(&e.resource) {
                    set.remove(p);
                }
            }
        }
        Ok(old.len())
    }

    async fn policy(&self) -> Result<Arc<Policy>, StoreError> {
        Ok(self.lock().policy.clone())
    }

    async fn put_resource(&self, entry: ResourceEntry) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let mut resources: Vec<ResourceEntry> = inner
            .policy
            .resources()
            .filter(|r| r.id != entry.id)
            .cloned()
            .collect();
        resources.push(entry);
        inner.policy = Arc::new(Policy::new(resources, inner.policy.delegations().to_vec()));
        Ok(())
    }

    async fn delete_resource(&self, id: &ResourceUrn) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let before = inner.policy.resources().count();
        let resources: Vec<ResourceEntry> = inner
            .policy
            .resources()
            .filter(|r| &r.id != id)
            .cloned()
            .collect();
        let removed = resources.len() != before;
        inner.policy = Arc::new(Policy::new(resources, inner.policy.delegations().to_vec()));
        Ok(removed)
    }

    async fn add_delegation(&self, entry: DelegationEntry) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let mut delegations = inner.policy.delegations().to_vec();
        if !delegations.contains(&entry) {
            delegations.push(entry);
        }
        inner.policy = Arc::new(Policy::new(
            inner.policy.resources().cloned().collect(),
            delegations,
        ));
        Ok(())
    }

    async fn remove_delegation(&self, entry: &DelegationEntry) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let mut delegations = inner.policy.delegations().to_vec();
        let before = delegations.len();
        delegations.retain(|d| d != entry);
        let removed = delegations.len() != before;
        inner.policy = Arc::new(Policy::new(
            inner.policy.resources().cloned().collect(),
            delegations,
        ));
        Ok(removed)
    }

    async fn read_global(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .log
            .range(after + 1..)
            .take(limit)
            .map(|(p, e)| LogEntry {
                position: *p,
                event: e.event.clone(),
            })
            .collect())
    }

    async fn global_head(&self) -> Result<LogPosition, StoreError> {
        Ok(self.lock().next_position)
    }

    async fn put_subscription(&self, subscription: &Subscription) -> Result<(), StoreError> {
        self.lock()
            .subscriptions
            .insert(subscription.id, subscription.clone());
        Ok(())
    }

    async fn get_subscription(&self, id: Uuid) -> Result<Option<Subscription>, StoreError> {
        Ok(self.lock().subscriptions.get(&id).cloned())
    }

    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        inner.deliveries.remove(&id);
        Ok(inner.subscriptions.remove(&id).is_some())
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        Ok(self.lock().subscriptions.values().cloned().collect())
    }

    async fn record_delivery(
        &self,
        subscription: Uuid,
        record: DeliveryRecord,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let list = inner.deliveries.entry(subscription).or_default();
        list.push_front(record);
        list.truncate(DELIVERIES_KEEP);
        Ok(())
    }

    async fn deliveries(&self, subscription: Uuid) -> Result<Vec<DeliveryRecord>, StoreError> {
        Ok(self
            .lock()
            .deliveries
            .get(&subscription)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.lock().dead.insert(letter.id, letter.clone());
        Ok(())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.lock().dead.values().cloned().collect())
    }

    async fn take_dead_letters(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
        let mut inner = self.lock();
        Ok(ids.iter().filter_map(|id| inner.dead.remove(id)).collect())
    }

    async fn put_pending(&self, deliveries: &[PendingDelivery]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for d in deliveries {
            inner.pending.insert(
                PendingDelivery::key(d.subscription, d.position, &d.event.id),
                d.clone(),
            );
        }
        Ok(())
    }

    async fn remove_pending(&self, key: &str) -> Result<(), StoreError> {
        self.lock().pending.remove(key);
        Ok(())
    }

    async fn pending(&self) -> Result<Vec<PendingDelivery>, StoreError> {
        Ok(self.lock().pending.values().cloned().collect())
    }

    async fn lease(
        &self,
        _name: &str,
        _holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        // One node: it always holds every lease.
        Ok(true)
    }

    async fn cursor(&self, name: &str) -> Result<Option<LogPosition>, StoreError> {
        Ok(self.lock().cursors.get(name).copied())
    }

    async fn set_cursor(&self, name: &str, position: LogPosition) -> Result<(), StoreError> {
        self.lock().cursors.insert(name.to_owned(), position);
        Ok(())
    }

    async fn init_cursor(
        &self,
        name: &str,
        position: LogPosition,
    ) -> Result<LogPosition, StoreError> {
        Ok(*self
            .lock()
            .cursors
            .entry(name.to_owned())
            .or_insert(position))
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: std::time::Duration) -> Result<(), StoreError> {
        self.lock().node = Some((node.clone(), std::time::Instant::now() + ttl));
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .node
            .iter()
            .filter(|(_, expires)| *expires > std::time::Instant::now())
            .map(|(n, _)| n.clone())
            .collect())
    }
}
