//! The embedded, in-memory `Store`: one mutex over plain maps. Every method holds the lock only for
//! map work (no await inside), which keeps commits atomic and short.

mod cluster;
mod dialogs;
mod log;
mod registry;
mod webhooks;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Commit, DialogQuery, EventFilter, FeedPage, LogEntry, LogPosition, StoreError};
use crate::domain::{
    Change, CloudEvent, DeadLetter, DelegationEntry, DeliveryRecord, Dialog, NodeInfo,
    PendingDelivery, Policy, ResourceEntry, ResourceUrn, Subscription, SubscriptionChange,
};

/// Delivery attempts kept per subscription for `GET …/deliveries`.
pub const DELIVERIES_KEEP: usize = 100;

/// Events kept per dialog in its own log (for resume and gap repair); older ones are dropped, and a
/// reader asking further back sees the gap and resyncs.
const DIALOG_LOG_KEEP: usize = 1000;

struct Slot {
    /// `None` once purged: the id stays taken and its sequence keeps counting.
    dialog: Option<Arc<Dialog>>,
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
    /// Unfinished webhook deliveries by partition, then by `PendingDelivery::key`.
    pending: HashMap<u16, HashMap<String, PendingDelivery>>,
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
