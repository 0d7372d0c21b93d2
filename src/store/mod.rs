//! The `Store` seam: dialogs, each dialog's own event log, the global event log (poll API), held-back
//! events and the resource registry. `embedded` (a redb file under `data_dir`) is the durable
//! default of a single node, `memory` keeps everything in memory, `redis` is shared by a cluster.

pub mod embedded;
pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{
    Change, CloudEvent, DeadLetter, DelegationEntry, DeliveryRecord, Dialog, NodeInfo, Party,
    PendingDelivery, Policy, ResourceEntry, ResourceUrn, Subscription, SubscriptionChange,
};

pub use self::redis::RedisStore;
pub use embedded::{EmbeddedStore, StoreTimings};
pub use memory::MemoryStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The dialog's sequence moved since it was read: another writer committed first. Reload and retry.
    #[error("concurrent change")]
    Conflict,
    /// A create named an id that exists (or existed and was purged).
    #[error("dialog already exists")]
    AlreadyExists,
    /// The backend cannot be reached; nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The registry or the delegations changed since the change was authorized (`Commit::policy_version`);
    /// nothing was written. Authorize again against the current policy.
    #[error("the registry changed since the change was authorized")]
    PolicyMoved,
}

/// One atomic dialog change: the sequence check, the new state and the numbered events.
#[derive(Debug, Clone)]
pub struct Commit {
    pub dialog_id: Uuid,
    /// The sequence the change was computed from; 0 with `create` for a new dialog.
    pub expected_sequence: u64,
    pub create: bool,
    /// The state after the change; `None` purges the dialog (its id stays taken).
    pub state: Option<Arc<Dialog>>,
    /// How many activities and transmissions the state the change was computed from holds
    /// ((0, 0) for a create). Both lists are append-only, so a store may write only what follows.
    pub children_before: (usize, usize),
    /// Events numbered `expected_sequence + 1 ..`, appended to the dialog's own log.
    pub events: Vec<Arc<CloudEvent>>,
    /// Whether the events also go to the global log (false for silent updates).
    pub publish: bool,
    /// Hold the published events back until this time (the dialog's `visibleFrom`).
    pub hold_until: Option<DateTime<Utc>>,
    /// A message for the other nodes (channel, message), published by the store in the same atomic
    /// step as the commit; only given to a store that `announces`.
    pub announce: Option<(String, Vec<u8>)>,
    /// The registry version the change was authorized under (`Policy::version`): a store that
    /// keeps one commits only while it is still current, and answers `PolicyMoved` otherwise.
    pub policy_version: Option<u64>,
}

/// Which dialogs a list call may return, before per-dialog authorization.
#[derive(Debug, Clone, Default)]
pub struct DialogQuery {
    /// Only these resources (None = any).
    pub resources: Option<Vec<ResourceUrn>>,
    /// Only these parties (None = any).
    pub parties: Option<Vec<Party>>,
    pub include_deleted: bool,
    /// Ids strictly greater than this (continuation).
    pub after: Option<Uuid>,
    pub limit: usize,
}

impl DialogQuery {
    /// Whether `dialog` belongs in the answer (before the `after` bound and the limit).
    pub fn admits(&self, dialog: &Dialog) -> bool {
        (self.include_deleted || !dialog.is_deleted())
            && self
                .resources
                .as_ref()
                .is_none_or(|r| r.contains(&dialog.service_resource))
            && self
                .parties
                .as_ref()
                .is_none_or(|p| p.contains(&dialog.party))
    }
}

/// Where an event sits in the global log; increases with every appended event.
pub type LogPosition = u64;

/// A global log entry.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub position: LogPosition,
    pub event: Arc<CloudEvent>,
}

/// The read position a version without partitions saved for its one webhook feed.
pub const UNPARTITIONED_CURSOR: &str = "webhook-dispatcher";

/// What `EventLog::read_feed` read of one partition.
#[derive(Debug, Clone)]
pub struct FeedPage {
    pub partition: u16,
    pub entries: Vec<LogEntry>,
    /// Read through this position: the partition holds nothing else up to it.
    pub through: LogPosition,
    /// The read stopped before the end of the feed.
    pub more: bool,
}

/// The feed of a store whose webhook feed is its one global log, held by one node (embedded,
/// memory): `read(after, limit)` reads that log from the lowest position of `from`; the entries
/// are split among the partitions asked for.
fn split_global_log(
    partitions: u16,
    from: &[(u16, LogPosition)],
    limit: usize,
    read: impl FnOnce(LogPosition, usize) -> Result<Vec<LogEntry>, StoreError>,
) -> Result<Vec<FeedPage>, StoreError> {
    let Some(start) = from.iter().map(|(_, after)| *after).min() else {
        return Ok(Vec::new());
    };
    let entries = read(start, limit)?;
    let more = entries.len() == limit;
    let through = entries.last().map_or(start, |e| e.position);
    let mut pages: Vec<FeedPage> = from
        .iter()
        .map(|&(partition, after)| FeedPage {
            partition,
            entries: Vec::new(),
            through: through.max(after),
            more,
        })
        .collect();
    let at: std::collections::HashMap<u16, (usize, LogPosition)> = from
        .iter()
        .enumerate()
        .map(|(i, &(p, after))| (p, (i, after)))
        .collect();
    for entry in entries {
        let p = crate::domain::event_partition(&entry.event, partitions);
        if let Some(&(i, after)) = at.get(&p)
            && entry.position > after
        {
            pages[i].entries.push(entry);
        }
    }
    Ok(pages)
}

/// Filter over the global log of one resource.
pub type EventFilter<'a> = &'a (dyn Fn(&CloudEvent) -> bool + Send + Sync);

/// Dialogs and their own logs: what the dialog actors read and commit.
#[async_trait]
pub trait DialogStore: Send + Sync + 'static {
    async fn load_dialog(&self, id: Uuid) -> Result<Option<Dialog>, StoreError>;

    /// Applies `commit` atomically or not at all.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;

    /// Whether `commit` publishes `Commit::announce` itself (Redis: the commit and the pub/sub
    /// message go in one script, one round trip); otherwise the bus publishes after the commit.
    fn announces(&self) -> bool {
        false
    }

    /// Dialogs matching `query`, ordered by id.
    async fn list_dialogs(&self, query: &DialogQuery) -> Result<Vec<Dialog>, StoreError>;

    /// Events of one dialog's own log with sequence > `after`, in order, at most `limit`.
    async fn dialog_events(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<CloudEvent>>, StoreError>;

    /// Changes of one dialog's own log whose last sequence is > `after`, oldest first, at most the
    /// newest `limit` of them.
    async fn dialog_changes(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Change>>, StoreError>;
}

/// The published events: each resource's poll log, the global log the webhook dispatcher follows, events held back until `visibleFrom`, and publish dedupe.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Position of the event `event_id` in `resource`'s log, if retained there. Another resource's
    /// event with the same id is not a position in this log, so no tenant can move another's cursor.
    async fn log_position(
        &self,
        resource: &str,
        event_id: &str,
    ) -> Result<Option<LogPosition>, StoreError>;

    /// Up to `limit` events of `resource` after `after` for which `filter` holds, oldest first.
    async fn read_log(
        &self,
        resource: &str,
        after: LogPosition,
        limit: usize,
        filter: EventFilter<'_>,
    ) -> Result<Vec<LogEntry>, StoreError>;

    /// Appends a published (non-dialog) event; false when its `(resource, source, id)` was seen
    /// before. Events of different resources never deduplicate against each other.
    async fn append_external(&self, event: CloudEvent) -> Result<bool, StoreError>;

    /// Moves held-back events whose time has come into the global log; returns how many.
    async fn release_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError>;

    /// Drops global log entries older than `before`; returns how many.
    async fn prune_log(&self, before: DateTime<Utc>) -> Result<usize, StoreError>;

    /// The webhook feed: for each `(partition, after)` of `from`, up to `limit` published events of
    /// that partition after `after`, oldest first. An event belongs to the partition of its lanes
    /// (`domain::event_partition` among `partitions`); positions are comparable within a partition.
    async fn read_feed(
        &self,
        partitions: u16,
        from: &[(u16, LogPosition)],
        limit: usize,
    ) -> Result<Vec<FeedPage>, StoreError>;

    /// The newest position of each partition's feed in `which`, in that order (0 when empty).
    async fn feed_heads(
        &self,
        partitions: u16,
        which: &[u16],
    ) -> Result<Vec<LogPosition>, StoreError>;
}

/// The resource registry and delegations, which the authorization policy is built from.
#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// The current resource registry and delegations.
    async fn policy(&self) -> Result<Arc<Policy>, StoreError>;

    /// The registry and delegations to authorize a dialog change with. The store may answer from
    /// memory without checking that they are current when its commit checks the policy's
    /// version (`Commit::policy_version`) instead: one round trip fewer per write.
    async fn policy_for_change(&self) -> Result<Arc<Policy>, StoreError> {
        self.policy().await
    }

    async fn put_resource(&self, entry: ResourceEntry) -> Result<(), StoreError>;

    /// False when the resource was not registered.
    async fn delete_resource(&self, id: &ResourceUrn) -> Result<bool, StoreError>;

    async fn add_delegation(&self, entry: DelegationEntry) -> Result<(), StoreError>;

    /// False when no such delegation existed.
    async fn remove_delegation(&self, entry: &DelegationEntry) -> Result<bool, StoreError>;
}

/// Webhook subscriptions and the state of their deliveries.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn put_subscription(&self, subscription: &Subscription) -> Result<(), StoreError>;

    async fn get_subscription(&self, id: Uuid) -> Result<Option<Subscription>, StoreError>;

    /// Applies `change` to the stored subscription atomically and returns the result; `None`
    /// when there is no such subscription (a deleted one is never written back).
    async fn update_subscription(
        &self,
        id: Uuid,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>, StoreError>;

    /// False when there was no such subscription.
    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StoreError>;

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError>;

    /// Keeps the newest delivery attempts of a subscription.
    async fn record_delivery(
        &self,
        subscription: Uuid,
        record: DeliveryRecord,
    ) -> Result<(), StoreError>;

    /// Recent attempts, newest first.
    async fn deliveries(&self, subscription: Uuid) -> Result<Vec<DeliveryRecord>, StoreError>;

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError>;

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;

    /// Removes and returns the dead letters with these ids.
    async fn take_dead_letters(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError>;

    /// Records (or updates) unfinished webhook deliveries of one partition.
    async fn put_pending(
        &self,
        partition: u16,
        deliveries: &[PendingDelivery],
    ) -> Result<(), StoreError>;

    /// Forgets a finished delivery of `partition` (by `PendingDelivery::key`).
    async fn remove_pending(&self, partition: u16, key: &str) -> Result<(), StoreError>;

    /// Every unfinished delivery of `partition`, for the node taking it over.
    async fn pending(&self, partition: u16) -> Result<Vec<PendingDelivery>, StoreError>;

    /// Files what a version without partitions left under the partitions: its unfinished
    /// deliveries, and (Redis) the events of its one feed it had not read. Returns the position
    /// every partition's feed is to be read after, when such a version saved one. Idempotent.
    async fn adopt_unpartitioned(&self, partitions: u16)
    -> Result<Option<LogPosition>, StoreError>;
}

/// What the nodes of a cluster share to coordinate: health, leases, saved read positions and the node list.
#[async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), StoreError>;

    /// One round of the webhook partitions' leases for `holder`: gives up `release` (when still
    /// held), renews the partitions it holds, and while `taking` takes free ones up to its share
    /// (partitions / live holders, rounded up). A lease not renewed within `ttl` lapses, and so
    /// does a holder's membership. A store of one node (embedded, memory) gives it every partition.
    async fn claim_partitions(
        &self,
        holder: &str,
        partitions: u16,
        ttl: std::time::Duration,
        taking: bool,
        release: &[u16],
    ) -> Result<Claim, StoreError>;

    /// A saved read position (e.g. the webhook dispatcher's place in the global log).
    async fn cursor(&self, name: &str) -> Result<Option<LogPosition>, StoreError>;

    async fn set_cursor(&self, name: &str, position: LogPosition) -> Result<(), StoreError>;

    /// Saves several cursors; on success all are saved. A store that can write them together
    /// does so in one write: the webhook dispatcher moves every partition's position after a
    /// poll, and on a store with one global log every partition's position moves on each commit.
    async fn set_cursors(&self, cursors: &[(String, LogPosition)]) -> Result<(), StoreError> {
        let saves = cursors.iter().map(|(name, p)| self.set_cursor(name, *p));
        futures::future::try_join_all(saves).await.map(|_| ())
    }

    /// Saves `position` as cursor `name` unless one is saved already; returns the saved cursor.
    async fn init_cursor(
        &self,
        name: &str,
        position: LogPosition,
    ) -> Result<LogPosition, StoreError>;

    /// Announces `node` as alive for `ttl`.
    async fn heartbeat(&self, node: &NodeInfo, ttl: std::time::Duration) -> Result<(), StoreError>;

    /// Nodes whose last heartbeat has not expired.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;
}

/// What a round of `ClusterStore::claim_partitions` left a node with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// The partitions it holds now, ascending.
    pub owned: Vec<u16>,
    /// How many it holds beyond its share while another live holder is short of its own: it
    /// should hand that many over.
    pub excess: usize,
}

impl Claim {
    /// A store of one node: it holds every partition, except those it gives up while leaving
    /// (there is no one else to take them).
    pub fn single_node(partitions: u16, taking: bool, release: &[u16]) -> Claim {
        Claim {
            owned: (0..partitions)
                .filter(|p| taking || !release.contains(p))
                .collect(),
            excess: 0,
        }
    }
}

/// Everything a node keeps: one backend implements every concern (`embedded`, `memory`, `redis`).
pub trait Store: DialogStore + EventLog + RegistryStore + WebhookStore + ClusterStore {}

impl<T: DialogStore + EventLog + RegistryStore + WebhookStore + ClusterStore> Store for T {}

/// The store traits, for code that calls a store's methods.
pub mod prelude {
    pub use super::{ClusterStore, DialogStore, EventLog, RegistryStore, Store, WebhookStore};
}
