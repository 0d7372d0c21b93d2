//! The embedded, durable `Store`: one redb database file under `data_dir`, the default of a single
//! node. It keeps everything the Redis store keeps. Reads run on the caller's thread (MVCC
//! snapshots); every write goes to one writer thread, which applies whatever is waiting in one
//! transaction and answers all of them after one commit (group commit), fsynced before the answer
//! with `store.sync = "always"`. There, dialog commits are durable once logged (`wal`) and reach
//! the database later, many in one transaction; a read waits for that (see `writer`).
//!
//! Tables (composite keys are big-endian bytes, strings length-prefixed, so keys sort as wanted):
//! `dialogs` id → {sequence, child counts, state without children}; `children` (id, kind, n) →
//! activity or transmission; `dlog` (id, seq) → event; `dch` (id, last) → change;
//! `glog` position → {resource, appended, event}; `by_resource` (resource, position);
//! `ev_index` (resource, event id) → position; `ext` (resource, source, id) → appended;
//! `held` (release ms, n) → events; `held_until` id → ms; `meta`, `cursors`; `registry`;
//! `subs`, `deliveries` (sub, n), `dead`, `pending`.

mod backup;
mod cluster;
mod commit;
mod dialogs;
mod log;
mod registry;
mod wal;
mod webhooks;
mod writer;

pub use backup::backup_file;
use commit::*;
pub use wal::WAL_FILE_NAME;
use writer::*;

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::Serialize;
use uuid::Uuid;

use super::{Commit, DialogQuery, EventFilter, FeedPage, LogEntry, LogPosition, StoreError};
use crate::config::SyncMode;
use crate::domain::{
    Change, CloudEvent, DeadLetter, DelegationEntry, DeliveryRecord, Dialog, NodeInfo,
    PendingDelivery, Policy, ResourceEntry, ResourceUrn, Subscription, SubscriptionChange,
};

/// Version of the on-disk format, kept in `meta`. A binary opens its own version, migrates an
/// older one at open (`migrate`), and refuses a newer one.
/// 1: a dialog stored whole. 2: its activities and transmissions in rows of their own, so a
/// change writes only what it adds.
pub const FORMAT_VERSION: u64 = 2;
/// File name of the database inside `data_dir`.
pub const FILE_NAME: &str = "store.redb";
/// Events and changes kept per dialog in its own logs (as the other stores).
const DIALOG_LOG_KEEP: u64 = 1000;
/// Most writes applied in one transaction: bounds one commit's latency under a flood.
const MAX_BATCH: usize = 2048;

type Bytes = &'static [u8];
const DIALOGS: TableDefinition<u128, Bytes> = TableDefinition::new("dialogs");
const CHILDREN: TableDefinition<Bytes, Bytes> = TableDefinition::new("children");
const DLOG: TableDefinition<Bytes, Bytes> = TableDefinition::new("dlog");
const DCH: TableDefinition<Bytes, Bytes> = TableDefinition::new("dch");
const GLOG: TableDefinition<u64, Bytes> = TableDefinition::new("glog");
const BY_RESOURCE: TableDefinition<Bytes, ()> = TableDefinition::new("by_resource");
const EV_INDEX: TableDefinition<Bytes, u64> = TableDefinition::new("ev_index");
const EXT: TableDefinition<Bytes, i64> = TableDefinition::new("ext");
const HELD: TableDefinition<Bytes, Bytes> = TableDefinition::new("held");
const HELD_UNTIL: TableDefinition<u128, i64> = TableDefinition::new("held_until");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
const REGISTRY: TableDefinition<&str, Bytes> = TableDefinition::new("registry");
const SUBS: TableDefinition<u128, Bytes> = TableDefinition::new("subs");
const DELIVERIES: TableDefinition<Bytes, Bytes> = TableDefinition::new("deliveries");
const DEAD: TableDefinition<u128, Bytes> = TableDefinition::new("dead");
const PENDING: TableDefinition<&str, Bytes> = TableDefinition::new("pending");

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(unavailable)
}

fn from_json<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(unavailable)
}

/// (id, n) as 24 sortable bytes.
fn id_key(id: Uuid, n: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(id.as_bytes());
    k[16..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Strings, each as a 4-byte length and its bytes: no choice of strings makes two keys meet.
fn str_key(parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum::<usize>() + 8);
    for p in parts {
        k.extend_from_slice(&(p.len() as u32).to_be_bytes());
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// A string part followed by a number, sorting by the number within the string.
fn str_num_key(s: &str, n: u64) -> Vec<u8> {
    let mut k = str_key(&[s]);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn held_key(release_ms: i64, n: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    // Release times are after 1970: the sign bit is clear, so big-endian bytes sort by time.
    k[..8].copy_from_slice(&(release_ms.max(0) as u64).to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

/// A `dialogs` value: the sequence (8 bytes, big-endian), then (while the dialog lives) how many
/// activities and transmissions it has (4 bytes each) and its JSON without them; nothing more once
/// purged: the id stays taken and its sequence keeps counting. The sequence check of a commit reads
/// 8 bytes, not the dialog.
fn dialog_value(sequence: u64, live: Option<(u32, u32, &[u8])>) -> Vec<u8> {
    let Some((activities, transmissions, header)) = live else {
        return sequence.to_be_bytes().to_vec();
    };
    let mut v = Vec::with_capacity(16 + header.len());
    v.extend_from_slice(&sequence.to_be_bytes());
    v.extend_from_slice(&activities.to_be_bytes());
    v.extend_from_slice(&transmissions.to_be_bytes());
    v.extend_from_slice(header);
    v
}

fn dialog_sequence(value: &[u8]) -> u64 {
    let mut n = [0u8; 8];
    let len = value.len().min(8);
    n[..len].copy_from_slice(&value[..len]);
    u64::from_be_bytes(n)
}

/// A live dialog's (activities, transmissions) counts; `None` once purged.
fn dialog_counts(value: &[u8]) -> Option<(u32, u32)> {
    let counts = value.get(8..16)?;
    let (a, t) = counts.split_at(4);
    Some((
        u32::from_be_bytes(a.try_into().ok()?),
        u32::from_be_bytes(t.try_into().ok()?),
    ))
}

/// Which list a `children` row belongs to.
const ACTIVITY: u8 = 0;
const TRANSMISSION: u8 = 1;

/// (dialog, kind, n) as 21 sortable bytes: a dialog's activities, then its transmissions, in order.
fn child_key(id: Uuid, kind: u8, n: u32) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[..16].copy_from_slice(id.as_bytes());
    k[16] = kind;
    k[17..].copy_from_slice(&n.to_be_bytes());
    k
}

/// The key range of all of a dialog's children.
fn children_of(id: Uuid) -> ([u8; 21], [u8; 21]) {
    (child_key(id, 0, 0), child_key(id, u8::MAX, u32::MAX))
}

/// The dialog stored under `value`, with its children read from `children`.
fn dialog_state(
    id: Uuid,
    value: &[u8],
    children: &impl ReadableTable<Bytes, Bytes>,
) -> Result<Option<Dialog>, StoreError> {
    let Some(mut dialog) = dialog_header(value)? else {
        return Ok(None);
    };
    add_children(&mut dialog, id, children)?;
    Ok(Some(dialog))
}

/// The dialog stored under `value` without its activities and transmissions; `None` once purged.
fn dialog_header(value: &[u8]) -> Result<Option<Dialog>, StoreError> {
    match value.get(16..) {
        Some(header) if !header.is_empty() => from_json(header).map(Some),
        _ => Ok(None),
    }
}

/// Reads dialog `id`'s activities and transmissions from `children` into `dialog`.
fn add_children(
    dialog: &mut Dialog,
    id: Uuid,
    children: &impl ReadableTable<Bytes, Bytes>,
) -> Result<(), StoreError> {
    let (lo, hi) = children_of(id);
    for row in children
        .range(lo.as_slice()..=hi.as_slice())
        .map_err(unavailable)?
    {
        let (k, v) = row.map_err(unavailable)?;
        match k.value().get(16) {
            Some(&ACTIVITY) => dialog.activities.push(from_json(v.value())?),
            Some(&TRANSMISSION) => dialog.transmissions.push(from_json(v.value())?),
            _ => return Err(unavailable("a dialog child of unknown kind")),
        }
    }
    Ok(())
}

/// Format 1 → 2: every live dialog's activities and transmissions move to rows of their own.
fn migrate_whole_dialogs(txn: &WriteTransaction) -> anyhow::Result<u64> {
    let mut dialogs = txn.open_table(DIALOGS)?;
    let mut children = txn.open_table(CHILDREN)?;
    let mut whole = Vec::new();
    for row in dialogs.iter()? {
        let (k, v) = row?;
        let v = v.value();
        if v.len() > 8 {
            whole.push((k.value(), dialog_sequence(v), v[8..].to_vec()));
        }
    }
    for (key, sequence, json) in &whole {
        let split = PreparedState::whole(json)?;
        let id = Uuid::from_u128(*key);
        split.write_children(id, &mut children)?;
        dialogs.insert(
            *key,
            dialog_value(*sequence, Some(split.stored())).as_slice(),
        )?;
    }
    Ok(whole.len() as u64)
}

/// A `glog` entry: when it was appended (ms, 8 bytes), its resource (length-prefixed), then the
/// event's JSON.
struct StoredEntry {
    appended_ms: i64,
    resource: String,
    event_json_at: usize,
}

fn entry_value(appended_ms: i64, resource: &str, event_json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + resource.len() + event_json.len());
    v.extend_from_slice(&appended_ms.to_be_bytes());
    v.extend_from_slice(&str_key(&[resource]));
    v.extend_from_slice(event_json);
    v
}

fn entry_of(value: &[u8]) -> Result<StoredEntry, StoreError> {
    let corrupt = || unavailable("a log entry of the store is malformed");
    let ms: [u8; 8] = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    let len: [u8; 4] = value
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    let len = u32::from_be_bytes(len) as usize;
    let resource = value.get(12..12 + len).ok_or_else(corrupt)?;
    Ok(StoredEntry {
        appended_ms: i64::from_be_bytes(ms),
        resource: String::from_utf8_lossy(resource).into_owned(),
        event_json_at: 12 + len,
    })
}

fn event_of(value: &[u8]) -> Result<(StoredEntry, CloudEvent), StoreError> {
    let entry = entry_of(value)?;
    let event = from_json(&value[entry.event_json_at..])?;
    Ok((entry, event))
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    /// To the writer thread; dropping the store closes it, and the thread then ends (after a
    /// last fsync in `interval` mode).
    jobs: Mutex<mpsc::Sender<Job>>,
    /// The registry and delegations, as last committed (every change goes through this store).
    policy: Mutex<Arc<Policy>>,
    /// The single node of the embedded mode, with its heartbeat expiry.
    node: Mutex<Option<(NodeInfo, Instant)>>,
    /// Holds reads back while answered writes wait to be applied to the database.
    gate: Arc<Gate>,
    timings: StoreTimings,
}

/// How long the store's syncs to disk take: its checkpoints (durable commits of the database
/// file) and the commit log's fsyncs, which share the disk. A node registers them with its
/// metrics.
#[derive(Clone)]
pub struct StoreTimings {
    pub checkpoint: prometheus::Histogram,
    pub log_sync: prometheus::Histogram,
}

impl Default for StoreTimings {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreTimings {
    pub fn new() -> Self {
        let histogram = |name: &str, help: &str| {
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(name, help).buckets(
                vec![
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    5.0,
                ],
            ))
            .expect("static metric definition is valid")
        };
        StoreTimings {
            checkpoint: histogram(
                "store_checkpoint_seconds",
                "Durable commits of the embedded database file (checkpoints)",
            ),
            log_sync: histogram(
                "store_log_sync_seconds",
                "Writes and fsyncs of the embedded commit log's records",
            ),
        }
    }
}

/// How a read's snapshot comes to hold every write acknowledged before it, while logged writes
/// wait to be applied (see `writer::Deferred`).
#[derive(Clone, Copy)]
enum Settle {
    /// The read asks the writer to apply them now, and waits for that.
    Ask,
    /// The read waits for them to be applied as they would be anyway (within
    /// `writer::DEFER_FOR`): for a caller in no hurry, so the writes keep sharing transactions.
    Wait,
    /// The read takes no wait: it reads only tables no logged write touches (subscriptions,
    /// deliveries, dead letters, pending deliveries), whose writes are applied before they are
    /// answered.
    Unlogged,
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `data_dir`, checks its format version, and adds the
    /// configured registry entries to the stored ones. `interval` is the longest time between
    /// checkpoints with `SyncMode::Always`, between fsyncs with `SyncMode::Interval`.
    pub fn open(
        data_dir: &Path,
        sync: SyncMode,
        interval: Duration,
        resources: &[ResourceEntry],
        delegations: &[DelegationEntry],
    ) -> anyhow::Result<Self> {
        Self::open_with(
            data_dir,
            sync,
            interval,
            resources,
            delegations,
            None,
            DEFER_FOR,
        )
    }

    /// `open`; while `hold` is true, checkpoints wait to start, and logged writes wait up to
    /// `defer_for` to be applied to the database (tests).
    fn open_with(
        data_dir: &Path,
        sync: SyncMode,
        interval: Duration,
        resources: &[ResourceEntry],
        delegations: &[DelegationEntry],
        hold: Option<Arc<std::sync::atomic::AtomicBool>>,
        defer_for: Duration,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("failed to create data_dir {}", data_dir.display()))?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path)
            .with_context(|| format!("failed to open the store {}", path.display()))?;
        let db = Arc::new(db);
        let txn = db.begin_write()?;
        let (version, policy, instance) = {
            let mut meta = txn.open_table(META)?;
            let saved = meta.get("version")?.map(|v| v.value());
            let version = match saved {
                Some(v) => v,
                None => {
                    meta.insert("version", FORMAT_VERSION)?;
                    FORMAT_VERSION
                }
            };
            if meta.get("instance")?.is_none() {
                meta.insert("instance", rand::random::<u64>())?;
            }
            for t in ["next_position", "held_counter", "delivery_counter"] {
                let missing = meta.get(t)?.is_none();
                if missing {
                    meta.insert(t, 0)?;
                }
            }
            // Create every table, so readers never meet a missing one.
            txn.open_table(DIALOGS)?;
            txn.open_table(CHILDREN)?;
            txn.open_table(DLOG)?;
            txn.open_table(DCH)?;
            txn.open_table(GLOG)?;
            txn.open_table(BY_RESOURCE)?;
            txn.open_table(EV_INDEX)?;
            txn.open_table(EXT)?;
            txn.open_table(HELD)?;
            txn.open_table(HELD_UNTIL)?;
            txn.open_table(CURSORS)?;
            txn.open_table(SUBS)?;
            txn.open_table(DELIVERIES)?;
            txn.open_table(DEAD)?;
            txn.open_table(PENDING)?;
            let mut registry = txn.open_table(REGISTRY)?;
            let mut stored_resources: Vec<ResourceEntry> = match registry.get("resources")? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => Vec::new(),
            };
            let mut stored_delegations: Vec<DelegationEntry> = match registry.get("delegations")? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => Vec::new(),
            };
            for r in resources {
                stored_resources.retain(|s| s.id != r.id);
                stored_resources.push(r.clone());
            }
            for d in delegations {
                if !stored_delegations.contains(d) {
                    stored_delegations.push(d.clone());
                }
            }
            registry.insert(
                "resources",
                serde_json::to_vec(&stored_resources)?.as_slice(),
            )?;
            registry.insert(
                "delegations",
                serde_json::to_vec(&stored_delegations)?.as_slice(),
            )?;
            let instance = meta.get("instance")?.map(|v| v.value()).unwrap_or(0);
            (
                version,
                Policy::new(stored_resources, stored_delegations),
                instance,
            )
        };
        if version > FORMAT_VERSION {
            anyhow::bail!(
                "the store {} has format version {version}, newer than this binary's {FORMAT_VERSION}: \
                 run a newer dialog-events, or restore a backup made by this version",
                path.display()
            );
        }
        // Before the commit log's tail is applied: its records (of either format) write the
        // current layout.
        if version < 2 {
            let dialogs = migrate_whole_dialogs(&txn)
                .with_context(|| format!("failed to migrate the store {}", path.display()))?;
            txn.open_table(META)?.insert("version", FORMAT_VERSION)?;
            tracing::info!(
                dialogs,
                from = version,
                to = FORMAT_VERSION,
                "migrated the store's format"
            );
        }
        txn.commit()?;
        let wal_path = data_dir.join(WAL_FILE_NAME);
        let (mut wal, batches) = wal::Wal::open(&wal_path, instance)
            .with_context(|| format!("failed to open the commit log {}", wal_path.display()))?;
        let replayed = recover(&db, batches, &mut wal)?;
        let timings = StoreTimings::new();
        wal.time_syncs(timings.log_sync.clone());
        let checkpoint_time = timings.checkpoint.clone();
        if replayed > 0 {
            tracing::info!(
                commits = replayed,
                "applied the commit log's tail after a crash"
            );
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_db = db.clone();
        let gate = Arc::new(Gate::new());
        let writer_gate = gate.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer(
                    writer_db,
                    rx,
                    sync,
                    interval,
                    wal,
                    writer_gate,
                    writer::Options {
                        took: checkpoint_time,
                        hold,
                        defer_for,
                    },
                )
            })
            .context("failed to start the store's writer thread")?;
        Ok(EmbeddedStore {
            db,
            jobs: Mutex::new(tx),
            policy: Mutex::new(Arc::new(policy)),
            node: Mutex::new(None),
            gate,
            timings,
        })
    }

    /// The store's disk timings, for the node's metrics.
    pub fn timings(&self) -> &StoreTimings {
        &self.timings
    }

    /// Returns once reads see every write acknowledged before the call: asks the writer to
    /// apply the writes it has deferred, if the database lacks any.
    pub async fn settled(&self) -> Result<(), StoreError> {
        let Some(batch) = self.gate.behind()? else {
            return Ok(());
        };
        self.send(Job::Apply)?;
        self.gate.reached(batch).await
    }

    /// Runs `f` on a snapshot that holds every write acknowledged before the call.
    async fn read<R>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.read_settled(Settle::Ask, f).await
    }

    /// `read`, with `settle` saying how the snapshot comes to hold every write acknowledged
    /// before the call.
    async fn read_settled<R>(
        &self,
        settle: Settle,
        f: impl FnOnce(&ReadTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match settle {
            Settle::Ask => self.settled().await?,
            Settle::Wait => {
                if let Some(batch) = self.gate.behind()? {
                    self.gate.reached(batch).await?;
                }
            }
            Settle::Unlogged => self.gate.check()?,
        }
        let txn = self.db.begin_read().map_err(unavailable)?;
        f(&txn)
    }

    /// Runs `f` in the writer thread's next transaction; answers after it is committed.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Other(Box::new(move |txn| {
            let out = f(txn);
            Applied {
                fatal: matches!(out, Err(StoreError::Unavailable(_))),
                answer: Box::new(move |committed| {
                    let _ = tx.send(committed.and(out));
                }),
            }
        }));
        self.send(job)?;
        rx.await
            .map_err(|_| unavailable("the store's writer has stopped"))?
    }

    /// A write the commit log can carry, for the writer thread; answers after it is durable.
    async fn write_logged(&self, logged: wal::Logged) -> Result<(), StoreError> {
        self.write_logged_all(vec![logged]).await
    }

    /// Writes the commit log can carry, as one job: applied and logged in the same batch, all or
    /// none, with one answer after they are durable.
    async fn write_logged_all(&self, logged: Vec<wal::Logged>) -> Result<(), StoreError> {
        if logged.is_empty() {
            return Ok(());
        }
        let (answer, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Logged { logged, answer })?;
        rx.await
            .map_err(|_| unavailable("the store's writer has stopped"))?
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| unavailable("the store's writer has stopped"))
    }

    fn set_policy(&self, policy: Policy) {
        *self.policy.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    fn current_policy(&self) -> Arc<Policy> {
        self.policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stores a new registry, then makes it current.
    async fn save_policy(&self, policy: Policy) -> Result<(), StoreError> {
        let resources = to_json(&policy.resources().cloned().collect::<Vec<_>>())?;
        let delegations = to_json(&policy.delegations().to_vec())?;
        self.write(move |txn| {
            let mut t = txn.open_table(REGISTRY).map_err(unavailable)?;
            t.insert("resources", resources.as_slice())
                .map_err(unavailable)?;
            t.insert("delegations", delegations.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await?;
        self.set_policy(policy);
        Ok(())
    }
}

/// The values under `(id, n)` keys with `n > after`, parsed, oldest first: at most `limit` of
/// them, the oldest or (with `newest`) the newest.
fn id_range<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    def: TableDefinition<Bytes, Bytes>,
    id: Uuid,
    after: u64,
    limit: usize,
    newest: bool,
) -> Result<Vec<Arc<T>>, StoreError> {
    let t = txn.open_table(def).map_err(unavailable)?;
    let (lo, hi) = (id_key(id, after.saturating_add(1)), id_key(id, u64::MAX));
    let rows = t
        .range(lo.as_slice()..=hi.as_slice())
        .map_err(unavailable)?;
    let rows: Box<dyn Iterator<Item = _>> = if newest {
        Box::new(rows.rev())
    } else {
        Box::new(rows)
    };
    let mut out = Vec::new();
    for row in rows.take(limit) {
        let (_, v) = row.map_err(unavailable)?;
        out.push(Arc::new(from_json(v.value())?));
    }
    if newest {
        out.reverse();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ActivityInput, DialogInput};
    use crate::store::DialogStore;

    fn dialog() -> Dialog {
        let input: DialogInput = serde_json::from_value(serde_json::json!({
            "serviceResource": "urn:altinn:resource:test",
            "party": "urn:altinn:person:identifier-no:08895699684",
            "status": "InProgress",
            "content": {"title": [{"value": "Hei", "languageCode": "nb"}]},
            "activities": [{"type": "Information"}, {"type": "FormSubmitted"}],
            "transmissions": [{"type": "Information", "sender": {"actorType": "ServiceOwner"},
                "content": {"title": [{"value": "T", "languageCode": "nb"}]}}]
        }))
        .expect("valid input");
        Dialog::create(input, Utc::now()).expect("create").0
    }

    fn with_activity(d: &Dialog) -> Dialog {
        let input: ActivityInput =
            serde_json::from_value(serde_json::json!({"type": "Information"})).expect("input");
        d.add_activity(input, Utc::now(), false).expect("add").0
    }

    fn commit(state: Option<Dialog>, before: Option<&Dialog>) -> Commit {
        let id = state.as_ref().or(before).expect("a dialog").id;
        Commit {
            dialog_id: id,
            expected_sequence: before.map_or(0, |d| d.sequence),
            create: before.is_none(),
            children_before: before.map_or((0, 0), |d| (d.activities.len(), d.transmissions.len())),
            state: state.map(Arc::new),
            events: Vec::new(),
            publish: false,
            hold_until: None,
            announce: None,
            policy_version: None,
        }
    }

    fn open(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(dir, SyncMode::Always, Duration::from_secs(1), &[], &[])
            .expect("open the store")
    }

    /// The database file itself, once the dropped store's writer thread has let it go.
    fn raw(dir: &Path) -> Database {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Database::create(dir.join(FILE_NAME)) {
                Ok(db) => return db,
                Err(e) => {
                    assert!(Instant::now() < deadline, "the store stays open: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn child_rows(db: &Database, id: Uuid) -> usize {
        let txn = db.begin_read().expect("read");
        let t = txn.open_table(CHILDREN).expect("children");
        let (lo, hi) = children_of(id);
        t.range(lo.as_slice()..=hi.as_slice())
            .expect("range")
            .count()
    }

    #[test]
    fn a_change_prepares_only_the_children_it_adds() {
        let d0 = dialog();
        let d1 = with_activity(&d0);
        let Ok(PreparedCommit {
            state: StateWrite::Split(s),
            ..
        }) = PreparedCommit::of(commit(Some(d1.clone()), Some(&d0)), Utc::now())
        else {
            panic!("a split state");
        };
        assert_eq!(
            (s.base, s.activities.len(), s.transmissions.len()),
            ((2, 1), 1, 0)
        );
        assert!(!s.replace);
        assert_eq!(s.stored().0, 3);
        let header: serde_json::Value = serde_json::from_slice(&s.header).expect("json");
        assert_eq!(header["activities"], serde_json::json!([]));
        assert_eq!(header["id"], serde_json::json!(d1.id));

        // A list that shrank was not appended to: it is written whole.
        let mut fewer = d1.clone();
        fewer.activities.truncate(1);
        let s = PreparedState::of(&fewer, (3, 1)).expect("prepare");
        assert!(s.replace);
        assert_eq!(
            (s.base, s.activities.len(), s.transmissions.len()),
            ((0, 0), 1, 1)
        );
    }

    #[tokio::test]
    async fn cursors_saved_together_are_one_record_of_the_log_and_read_back_after_a_restart() {
        use crate::store::ClusterStore;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        let cursors: Vec<(String, u64)> = (0..64u64)
            .map(|p| (format!("feed:{p:05}"), 1_000 + p))
            .collect();
        let records = store.timings().log_sync.get_sample_count();
        store.set_cursors(&cursors).await.expect("saved");
        assert_eq!(
            store.timings().log_sync.get_sample_count() - records,
            1,
            "one record (and one fsync) for all 64"
        );
        store.set_cursors(&[]).await.expect("nothing to save");
        drop(store);
        // Once the writer thread has let the file go.
        drop(raw(dir.path()));
        let store = open(dir.path());
        assert!(!cursors.is_empty());
        for (name, position) in &cursors {
            assert_eq!(store.cursor(name).await.expect("read"), Some(*position));
        }
    }

    #[tokio::test]
    async fn a_dialog_reads_back_whole_after_changes_a_purge_and_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d0 = dialog();
        let (d1, d2) = {
            let d1 = with_activity(&d0);
            (d1.clone(), with_activity(&d1))
        };
        let other = dialog();
        let store = open(dir.path());
        store
            .commit(commit(Some(d0.clone()), None))
            .await
            .expect("create");
        store
            .commit(commit(Some(other.clone()), None))
            .await
            .expect("create");
        store
            .commit(commit(Some(d1.clone()), Some(&d0)))
            .await
            .expect("add");
        store
            .commit(commit(Some(d2.clone()), Some(&d1)))
            .await
            .expect("add");
        assert_eq!(
            store.load_dialog(d0.id).await.expect("load"),
            Some(d2.clone())
        );
        // Children counted from another state than the stored one are refused.
        assert!(matches!(
            store.commit(commit(Some(d2.clone()), Some(&d0))).await,
            Err(StoreError::Conflict)
        ));
        let listed = store
            .list_dialogs(&DialogQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(listed.len(), 2);
        assert!(listed.contains(&d2) && listed.contains(&other));
        store
            .commit(commit(None, Some(&other)))
            .await
            .expect("purge");
        assert_eq!(store.load_dialog(other.id).await.expect("load"), None);
        drop(store);

        let db = raw(dir.path());
        assert_eq!(child_rows(&db, d0.id), 5, "4 activities and 1 transmission");
        assert_eq!(child_rows(&db, other.id), 0, "a purge removes the children");
        drop(db);
        let store = open(dir.path());
        assert_eq!(store.load_dialog(d0.id).await.expect("load"), Some(d2));
    }

    /// `d0` was created and changed since: a commit based on it, and creating it again, are
    /// refused.
    async fn refuses_stale_commits_of(store: &EmbeddedStore, d0: &Dialog) {
        assert!(matches!(
            store
                .commit(commit(Some(with_activity(d0)), Some(d0)))
                .await,
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            store.commit(commit(Some(d0.clone()), None)).await,
            Err(StoreError::AlreadyExists)
        ));
    }

    /// A checkpoint does not hold writes back: while one runs, dialog commits are checked against
    /// the ones before them, logged and answered; reads wait until they are applied; and a crash
    /// meanwhile loses none of them.
    #[tokio::test]
    async fn writes_are_answered_while_a_checkpoint_runs_and_reads_wait_for_them() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().expect("temp dir");
        let hold = Arc::new(AtomicBool::new(true));
        let interval = Duration::from_millis(20);
        let store = EmbeddedStore::open_with(
            dir.path(),
            SyncMode::Always,
            interval,
            &[],
            &[],
            Some(hold.clone()),
            DEFER_FOR,
        )
        .expect("open the store");
        let d0 = dialog();
        store
            .commit(commit(Some(d0.clone()), None))
            .await
            .expect("create");
        // The checkpoint is due after the interval and waits on the hold from then on.
        tokio::time::sleep(interval * 5).await;
        let mut d = d0.clone();
        for _ in 0..5 {
            let next = with_activity(&d);
            tokio::time::timeout(
                Duration::from_secs(10),
                store.commit(commit(Some(next.clone()), Some(&d))),
            )
            .await
            .expect("answered while the checkpoint runs")
            .expect("add");
            d = next;
        }
        // Checked against the writes before them as ever.
        refuses_stale_commits_of(&store, &d0).await;

        // A crash now: the files as they are, the checkpoint not durable.
        let copy = tempfile::tempdir().expect("temp dir");
        for f in std::fs::read_dir(dir.path()).expect("list") {
            let f = f.expect("entry").path();
            std::fs::copy(&f, copy.path().join(f.file_name().expect("name"))).expect("copy");
        }
        let crashed = open(copy.path());
        assert_eq!(
            crashed.load_dialog(d0.id).await.expect("load"),
            Some(d.clone()),
            "every acknowledged write comes back from the log"
        );
        drop(crashed);

        {
            let read = store.load_dialog(d0.id);
            tokio::pin!(read);
            assert!(
                tokio::time::timeout(Duration::from_millis(200), &mut read)
                    .await
                    .is_err(),
                "a read waits while acknowledged writes are not applied"
            );
            hold.store(false, Ordering::Release);
            let loaded = tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("the read ends with the checkpoint")
                .expect("load");
            assert_eq!(loaded, Some(d.clone()));
        }
        // Writes go on after it, and a restart reads them all back.
        let next = with_activity(&d);
        store
            .commit(commit(Some(next.clone()), Some(&d)))
            .await
            .expect("add");
        drop(store);
        // Once the writer thread has let the file go.
        drop(raw(dir.path()));
        let store = open(dir.path());
        assert_eq!(store.load_dialog(d0.id).await.expect("load"), Some(next));
    }

    /// The sequence of dialog `id` in the database itself (not a read through the store, which
    /// waits for deferred writes), if it holds the dialog.
    fn in_database(store: &EmbeddedStore, id: Uuid) -> Option<u64> {
        let txn = store.db.begin_read().expect("read");
        let dialogs = txn.open_table(DIALOGS).expect("dialogs");
        let value = dialogs.get(id.as_u128()).expect("get");
        value.map(|v| dialog_sequence(v.value()))
    }

    /// Answered commits are durable in the commit log; the database gets them later, many in one
    /// transaction: when a read asks for them (at once), or once they have waited `defer_for`.
    #[tokio::test]
    async fn answered_writes_reach_the_database_when_a_read_asks_or_after_a_while() {
        let dir = tempfile::tempdir().expect("temp dir");
        let long = Duration::from_secs(600);
        let store =
            EmbeddedStore::open_with(dir.path(), SyncMode::Always, long, &[], &[], None, long)
                .expect("open the store");
        let d0 = dialog();
        let d1 = with_activity(&d0);
        let other = dialog();
        store
            .commit(commit(Some(d0.clone()), None))
            .await
            .expect("create");
        store
            .commit(commit(Some(d1.clone()), Some(&d0)))
            .await
            .expect("add");
        assert_eq!(
            in_database(&store, d0.id),
            None,
            "answered, not applied yet"
        );
        // Checked against the deferred writes before them.
        refuses_stale_commits_of(&store, &d0).await;
        let loaded = tokio::time::timeout(Duration::from_secs(10), store.load_dialog(d0.id))
            .await
            .expect("a read does not wait for the deferral to run out")
            .expect("load");
        assert_eq!(loaded, Some(d1.clone()));
        assert_eq!(in_database(&store, d0.id), Some(d1.sequence));

        // Another write than a dialog commit applies them first, in order.
        store
            .commit(commit(Some(other.clone()), None))
            .await
            .expect("create");
        assert_eq!(in_database(&store, other.id), None);
        let record = crate::domain::DeliveryRecord {
            event_id: "e1".into(),
            attempt: 1,
            status_code: Some(200),
            error: None,
            duration_ms: 1,
            at: Utc::now(),
            next_attempt: None,
        };
        crate::store::WebhookStore::record_delivery(&store, Uuid::now_v7(), record)
            .await
            .expect("stored");
        assert_eq!(in_database(&store, other.id), Some(other.sequence));
        drop(store);

        // With a short deferral, they are applied without a read asking.
        let short = Duration::from_millis(20);
        drop(raw(dir.path()));
        let store =
            EmbeddedStore::open_with(dir.path(), SyncMode::Always, long, &[], &[], None, short)
                .expect("open the store");
        assert_eq!(
            store.load_dialog(d0.id).await.expect("load"),
            Some(d1.clone()),
            "kept across a restart"
        );
        let d2 = with_activity(&d1);
        store
            .commit(commit(Some(d2.clone()), Some(&d1)))
            .await
            .expect("add");
        let deadline = Instant::now() + Duration::from_secs(10);
        while in_database(&store, d0.id) != Some(d2.sequence) {
            assert!(Instant::now() < deadline, "applied once they have waited");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A webhook dispatcher no subscription can receive anything from reads the subscriptions
    /// and the feed's heads after each commit. Neither read has the deferred commits applied
    /// early: the subscriptions come at once, the heads once the commits are applied anyway, and
    /// then they count them.
    #[tokio::test]
    async fn an_idle_dispatchers_reads_leave_answered_writes_deferred() {
        use crate::store::{EventLog, WebhookStore};
        let dir = tempfile::tempdir().expect("temp dir");
        let long = Duration::from_secs(600);
        let store =
            EmbeddedStore::open_with(dir.path(), SyncMode::Always, long, &[], &[], None, long)
                .expect("open the store");
        let head = store.feed_heads(1, &[0]).await.expect("heads");
        let d0 = dialog();
        let mut created = commit(Some(d0.clone()), None);
        created.publish = true;
        created.events = vec![
            serde_json::from_value(serde_json::json!({
                "specversion": "1.0", "id": "e1", "type": "dialogporten.dialog.created.v1",
                "time": "2026-01-01T00:00:00Z", "source": "https://s/1",
                "resource": "urn:altinn:resource:r", "dialogsequence": 1
            }))
            .expect("event"),
        ];
        store.commit(created).await.expect("create");

        let quick = Duration::from_secs(10);
        let subs = tokio::time::timeout(quick, store.subscriptions()).await;
        assert!(subs.expect("at once").expect("read").is_empty());
        let pending = tokio::time::timeout(quick, store.pending(0)).await;
        assert!(pending.expect("at once").expect("read").is_empty());
        assert_eq!(in_database(&store, d0.id), None, "still deferred");

        let heads = store.feed_heads(1, &[0]);
        tokio::pin!(heads);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut heads)
                .await
                .is_err(),
            "the heads wait for the commit to be applied, without asking for it"
        );
        assert_eq!(in_database(&store, d0.id), None, "still deferred");
        // A read that must see the commit has it applied; the heads then count it.
        store.load_dialog(d0.id).await.expect("load");
        let after = tokio::time::timeout(quick, heads)
            .await
            .expect("once applied")
            .expect("heads");
        assert_eq!(after, vec![head[0] + 1]);
    }

    #[tokio::test]
    async fn a_format_1_store_is_migrated_at_open_and_its_commit_log_tail_applied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d0 = dialog();
        let d1 = with_activity(&d0);
        let store = open(dir.path());
        store
            .commit(commit(Some(d0.clone()), None))
            .await
            .expect("create");
        drop(store);

        // Rewrite it as format 1 wrote it: each dialog whole in its value, no children rows.
        let db = raw(dir.path());
        let (instance, wal_batch) = {
            let txn = db.begin_write().expect("write");
            {
                let mut meta = txn.open_table(META).expect("meta");
                meta.insert("version", 1).expect("version");
                let mut dialogs = txn.open_table(DIALOGS).expect("dialogs");
                let mut v1 = d0.sequence.to_be_bytes().to_vec();
                v1.extend_from_slice(&serde_json::to_vec(&d0).expect("json"));
                dialogs
                    .insert(d0.id.as_u128(), v1.as_slice())
                    .expect("insert");
                let mut children = txn.open_table(CHILDREN).expect("children");
                let (lo, hi) = children_of(d0.id);
                children
                    .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
                    .expect("clear");
            }
            let meta = txn.open_table(META).expect("meta");
            let get = |k| meta.get(k).expect("get").map_or(0, |v| v.value());
            let saved = (get("instance"), get("wal_batch"));
            drop(meta);
            txn.commit().expect("commit");
            saved
        };
        drop(db);
        // And a crash left a format 1 record (the whole next state) in the commit log.
        let (mut wal, _) = wal::Wal::open(&dir.path().join(WAL_FILE_NAME), instance).expect("log");
        wal.reset();
        let record = wal::Logged::Commit {
            commit: PreparedCommit {
                id: d0.id,
                create: false,
                expected_sequence: d0.sequence,
                state: StateWrite::Whole(serde_json::to_vec(&d1).expect("json")),
                events: Vec::new(),
                change: None,
                publish: false,
                hold_until_ms: None,
            },
            now_ms: Utc::now().timestamp_millis(),
        };
        wal.append(wal_batch + 1, &[&record]).expect("append");
        drop(wal);

        let store = open(dir.path());
        assert_eq!(
            store.load_dialog(d0.id).await.expect("load"),
            Some(d1.clone())
        );
        drop(store);
        let db = raw(dir.path());
        assert_eq!(child_rows(&db, d0.id), 4);
        let txn = db.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        assert_eq!(
            meta.get("version").expect("get").map(|v| v.value()),
            Some(FORMAT_VERSION)
        );
    }

    #[test]
    fn composite_keys_sort_by_their_parts_and_never_collide() {
        let id = Uuid::now_v7();
        assert!(id_key(id, 2) < id_key(id, 10));
        assert!(str_num_key("a", 9) < str_num_key("a", 10));
        assert!(str_num_key("a", u64::MAX) < str_num_key("b", 0));
        assert_ne!(str_key(&["a|b", "c"]), str_key(&["a", "b|c"]));
        assert!(held_key(1_000, 5) < held_key(2_000, 1));
    }

    #[tokio::test]
    async fn a_subscription_keeps_its_newest_delivery_records_and_a_deleted_one_starts_over() {
        use crate::domain::DeliveryRecord;
        use crate::store::WebhookStore;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        let record = |n: usize| DeliveryRecord {
            event_id: format!("e{n}"),
            attempt: 1,
            status_code: Some(200),
            error: None,
            duration_ms: 1,
            at: chrono::Utc::now(),
            next_attempt: None,
        };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let keep = crate::store::memory::DELIVERIES_KEEP;
        for n in 0..keep + 30 {
            store.record_delivery(a, record(n)).await.expect("record");
            if n % 20 == 0 {
                store.record_delivery(b, record(n)).await.expect("record");
            }
        }
        let kept: Vec<String> = store
            .deliveries(a)
            .await
            .expect("read")
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        let newest: Vec<String> = (30..keep + 30).rev().map(|n| format!("e{n}")).collect();
        assert_eq!(kept, newest, "the newest {keep}, newest first");
        assert_eq!(store.deliveries(b).await.expect("read").len(), 7);

        // Deleted: its records and their count go; a subscription of that id starts at zero.
        store.delete_subscription(a).await.expect("delete");
        assert!(store.deliveries(a).await.expect("read").is_empty());
        for n in 0..3 {
            store.record_delivery(a, record(n)).await.expect("record");
        }
        assert_eq!(store.deliveries(a).await.expect("read").len(), 3);
        for n in 3..keep + 1 {
            store.record_delivery(a, record(n)).await.expect("record");
        }
        assert_eq!(store.deliveries(a).await.expect("read").len(), keep);
    }
}
