//! The embedded, durable `Store`: one redb database file under `data_dir`, the default of a single
//! node. It keeps everything the Redis store keeps. Reads run on the caller's thread (MVCC
//! snapshots); every write goes to one writer thread, which applies whatever is waiting in one
//! transaction and answers all of them after one commit (group commit), fsynced before the answer
//! with `store.sync = "always"`.
//!
//! Tables (composite keys are big-endian bytes, strings length-prefixed, so keys sort as wanted):
//! `dialogs` id → {sequence, state}; `dlog` (id, seq) → event; `dch` (id, last) → change;
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

use super::{Commit, DialogQuery, EventFilter, LogEntry, LogPosition, StoreError};
use crate::config::SyncMode;
use crate::domain::{
    Change, CloudEvent, DeadLetter, DelegationEntry, DeliveryRecord, Dialog, NodeInfo,
    PendingDelivery, Policy, ResourceEntry, ResourceUrn, Subscription, SubscriptionChange,
};

/// Version of the on-disk format, kept in `meta`. A binary opens its own version and refuses a
/// newer one; an older one would be migrated here.
pub const FORMAT_VERSION: u64 = 1;
/// File name of the database inside `data_dir`.
pub const FILE_NAME: &str = "store.redb";
/// Events and changes kept per dialog in its own logs (as the other stores).
const DIALOG_LOG_KEEP: u64 = 1000;
/// Most writes applied in one transaction: bounds one commit's latency under a flood.
const MAX_BATCH: usize = 2048;

type Bytes = &'static [u8];
const DIALOGS: TableDefinition<u128, Bytes> = TableDefinition::new("dialogs");
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

/// A `dialogs` value: the sequence (8 bytes, big-endian), then the dialog's JSON (nothing once
/// purged: the id stays taken and its sequence keeps counting). The sequence check of a commit
/// reads 8 bytes, not the dialog.
fn dialog_value(sequence: u64, state: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + state.len());
    v.extend_from_slice(&sequence.to_be_bytes());
    v.extend_from_slice(state);
    v
}

fn dialog_sequence(value: &[u8]) -> u64 {
    let mut n = [0u8; 8];
    let len = value.len().min(8);
    n[..len].copy_from_slice(&value[..len]);
    u64::from_be_bytes(n)
}

fn dialog_state(value: &[u8]) -> Result<Option<Dialog>, StoreError> {
    let state = value.get(8..).unwrap_or_default();
    if state.is_empty() {
        return Ok(None);
    }
    from_json(state).map(Some)
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
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `data_dir`, checks its format version, and adds the
    /// configured registry entries to the stored ones.
    pub fn open(
        data_dir: &Path,
        sync: SyncMode,
        sync_interval: Duration,
        resources: &[ResourceEntry],
        delegations: &[DelegationEntry],
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
        txn.commit()?;
        let wal_path = data_dir.join(WAL_FILE_NAME);
        let (mut wal, batches) = wal::Wal::open(&wal_path, instance)
            .with_context(|| format!("failed to open the commit log {}", wal_path.display()))?;
        let replayed = recover(&db, batches, &mut wal)?;
        if replayed > 0 {
            tracing::info!(
                commits = replayed,
                "applied the commit log's tail after a crash"
            );
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(writer_db, rx, sync, sync_interval, wal))
            .context("failed to start the store's writer thread")?;
        Ok(EmbeddedStore {
            db,
            jobs: Mutex::new(tx),
            policy: Mutex::new(Arc::new(policy)),
            node: Mutex::new(None),
        })
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
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
        let (answer, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Logged {
            logged: Box::new(logged),
            answer,
        })?;
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

    #[test]
    fn composite_keys_sort_by_their_parts_and_never_collide() {
        let id = Uuid::now_v7();
        assert!(id_key(id, 2) < id_key(id, 10));
        assert!(str_num_key("a", 9) < str_num_key("a", 10));
        assert!(str_num_key("a", u64::MAX) < str_num_key("b", 0));
        assert_ne!(str_key(&["a|b", "c"]), str_key(&["a", "b|c"]));
        assert!(held_key(1_000, 5) < held_key(2_000, 1));
    }
}
