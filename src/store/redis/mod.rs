//! The Redis `Store`, shared by every node of a cluster. A dialog commit is one Lua script
//! (sequence check, state, dialog log, change log, indexes, global log or hold-back queue), so
//! concurrent writers on different nodes produce one gap-free order.
//!
//! Key layout under `{p}` = `redis.prefix`:
//! - `{p}:d:{id}` hash `state` (the dialog's JSON without its activities and transmissions; empty
//!   after purge), `seq`, and `na`/`nt`, how many activities and transmissions its lists hold
//!   (a dialog written whole by an older version has no `na`: its `state` holds everything
//!   until its next change rewrites it)
//! - `{p}:da:{id}`, `{p}:dt:{id}` lists of the dialog's activities and transmissions (JSON, in
//!   order; both are append-only, so a change pushes only what it adds)
//! - `{p}:dlog:{id}` list of event JSON, `{p}:dch:{id}` list of change JSON (newest 1000 each)
//! - `{p}:idx`, `{p}:idx:r:{resource}`, `{p}:idx:p:{party}` sorted sets of dialog ids (lexical)
//! - `{p}:log:{resource}` stream of published events (field `e`); `{p}:evp:{T(resource, minute)}`
//!   hash of the stream ids of the events whose ids (UUIDv7) were made in that minute (field: the
//!   event's `ev:` key; expires a retention after the minute); `{p}:ev:{T(resource, event id)}`
//!   the stream id of an event held back, published from outside or with another kind of id
//! - `{p}:ext:{T(resource, source, id)}` dedupe marker of published custom events
//!   (`T` writes each part as `{byte length}:{part}`, so no id or source can make two tuples meet)
//! - `{p}:held` sorted set of held-back events by release time (member: counter, then the log and
//!   event-position keys and the event JSON, length-prefixed), `{p}:heldc` its counter; a
//!   dialog's current hold-until time is the `hu` field of its `{p}:d:{id}`
//! - `{p}:res` hash of resources, `{p}:dlg` set of delegations, `{p}:policy:ver` counted up after
//!   each change of either (a node reads them again only when it moved), `{p}:keys` the
//!   generated keys
//! - `{p}:wf:{n}` stream of the published events of webhook partition `n` (field `e`): the feed
//!   its owner reads
//! - `{p}:subs` hash of webhook subscriptions, `{p}:dlv:{sub}` recent attempts, `{p}:dead` dead letters
//! - `{p}:pending:{n}` hash of partition `n`'s unfinished webhook deliveries
//!   (`{sub}|{position}|{event id}` → JSON)
//! - `{p}:lease:wp:{n}` the lease of webhook partition `n` (holder: a node id),
//!   `{p}:wmembers` sorted set of the nodes taking part in delivery (score: when their membership
//!   lapses), `{p}:cursor:{name}` a saved feed position (`wf:{n}` for partition `n`)
//! - `{p}:node:{id}` a live node (expires unless refreshed)
//!
//! On a Redis Cluster (`redis.cluster`) the keys one script or transaction touches share a hash
//! tag: a dialog's keys and the partition-wide keys its commit writes (`idx*`, `log:*`, `ev:*`,
//! `evp:*`, `ext:*`, `held`, `heldc`, `wf:{n}`, `pending:{n}`) carry `{w<n>}`, the dialog's (or the
//! published event's) webhook partition, e.g. `{p}:{w7}:d:{id}`; `res`, `dlg` and `policy:ver`
//! carry `{policy}`, `wmembers` and the leases `{leases}`, `conns:*` `{conns}`, and the node
//! entries `{nodes}` with a sorted set `{p}:{nodes}:nodes` listing them (SCAN sees one master
//! only). The index, poll log and held-back keys are then one per partition.

mod cluster;
mod conn;
mod connections;
mod dialogs;
mod log;
mod registry;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use uuid::Uuid;

pub use conn::{Conn, SharedConnection};

use super::prelude::RegistryStore;
use crate::config::RedisSettings;

use super::{Commit, DialogQuery, EventFilter, FeedPage, LogEntry, LogPosition, StoreError};
use crate::domain::{
    Change, CloudEvent, DeadLetter, DelegationEntry, DeliveryRecord, Dialog, NodeInfo,
    PendingDelivery, Policy, ResourceEntry, ResourceUrn, Subscription, SubscriptionChange,
};

/// Events and changes kept per dialog in its own logs.
const DIALOG_LOG_KEEP: usize = 1000;
/// Longest a single store operation may take before the node answers 503 instead of waiting.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// First window of a tail read of a dialog's change log.
const TAIL_WINDOW: usize = 16;
/// Webhook partitions of a store not told otherwise (`webhooks.partitions`' default).
const DEFAULT_PARTITIONS: u16 = 64;
/// How long a write waits for `redis.wait_replicas` replicas (ms).
const WAIT_TIMEOUT_MS: u64 = 1000;
/// Dialog ids fetched per round trip when listing.
const LIST_BATCH: usize = 200;

/// A dialog commit. KEYS: 1 `d:{id}`, 2 `dlog:{id}`, 3 `dch:{id}`, 4 `idx`, 5 `idx:r:{resource}`,
/// 6 `idx:p:{party}`, 7 `log:{resource}`, 8 `held`, 9 `heldc`, 10 `da:{id}`, 11 `dt:{id}`.
/// ARGV: 1 expected sequence, 2 create ('1'/'0'), 3 the state without children
/// ('' purges), 4 new sequence, 5 publish ('1'/'0'), 6 hold until (ms, 0 for none), 7 the change
/// JSON ('' for none), 8 entries kept per dialog log, 9 retention (ms), 10 dialog id,
/// 11 resource, 12 party, 13 the webhook feed of the dialog's partition (`wf:{n}`), 14 number of
/// events n, 15 replace the children ('1': the lists are rewritten whole, else appended to),
/// 16 and 17 the stored activities and transmissions the new ones follow, 18 and 19 how many new
/// activities ka and transmissions kt; then n quadruples (event JSON, its event-position key, the
/// position hash of its minute or '' when its id is not a UUIDv7, when that hash may expire (ms)),
/// then ka activities, then kt transmissions, then the registry version the change was authorized under
/// ('' for none), and last the publish command (`PUBLISH`, or `SPUBLISH` on a cluster), a channel
/// and a message to publish once the commit is made ('' for none). With a 12th key (`policy:ver`,
/// one Redis only) nothing is written unless that version is still current.
/// Returns OK, EXISTS, CONFLICT, POLICY (the version moved), or WHOLE (the stored dialog predates
/// the lists: send it again with replace).
///
/// The dialog's hold-until time (while its events are held back) is the hash's `hu` field, so a
/// write that holds nothing back reads it with the sequence and needs no clock. An event's
/// position goes to its minute's hash (field: its position key), which gets its expiry when the
/// event is its first: one key per resource and minute, not an expiring key per event; an event
/// held back (or whose id says no minute) keeps a key of its own with the retention as expiry.
const COMMIT_LUA: &str = r#"
if KEYS[12] and (redis.call('GET', KEYS[12]) or '0') ~= ARGV[#ARGV - 3] then return 'POLICY' end
local cur = redis.call('HMGET', KEYS[1], 'seq', 'na', 'nt', 'hu')
if ARGV[2] == '1' then
  if cur[1] then return 'EXISTS' end
else
  if (not cur[1]) or cur[1] ~= ARGV[1] then return 'CONFLICT' end
  -- A purged dialog keeps its sequence with an empty state and no counts; a dialog with counts
  -- always has a state, so only one without them needs looking at.
  if (not cur[2]) and redis.call('HSTRLEN', KEYS[1], 'state') == 0 then return 'CONFLICT' end
  if ARGV[3] ~= '' and ARGV[15] ~= '1' then
    if not cur[2] then return 'WHOLE' end
    if cur[2] ~= ARGV[16] or cur[3] ~= ARGV[17] then return 'CONFLICT' end
  end
end
local n = tonumber(ARGV[14])
local keep = tonumber(ARGV[8])
if ARGV[3] == '' then
  redis.call('DEL', KEYS[10], KEYS[11])
  redis.call('HDEL', KEYS[1], 'na', 'nt')
  redis.call('HSET', KEYS[1], 'state', '', 'seq', ARGV[4])
else
  local ba, bt = tonumber(ARGV[16]), tonumber(ARGV[17])
  if ARGV[15] == '1' then
    redis.call('DEL', KEYS[10], KEYS[11])
    ba, bt = 0, 0
  end
  local ka, kt = tonumber(ARGV[18]), tonumber(ARGV[19])
  local c0 = 19 + 4 * n
  if ka > 0 then redis.call('RPUSH', KEYS[10], unpack(ARGV, c0 + 1, c0 + ka)) end
  if kt > 0 then redis.call('RPUSH', KEYS[11], unpack(ARGV, c0 + ka + 1, c0 + ka + kt)) end
  redis.call('HSET', KEYS[1], 'state', ARGV[3], 'seq', ARGV[4], 'na', ba + ka, 'nt', bt + kt)
end
-- The dialog's logs are trimmed only once they pass their cap (RPUSH answers the new length).
if n > 0 then
  local evs = {}
  for i = 1, n do evs[i] = ARGV[19 + 4 * i - 3] end
  if redis.call('RPUSH', KEYS[2], unpack(evs)) > keep then redis.call('LTRIM', KEYS[2], -keep, -1) end
end
if ARGV[7] ~= '' then
  if redis.call('RPUSH', KEYS[3], ARGV[7]) > keep then redis.call('LTRIM', KEYS[3], -keep, -1) end
end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[4], ARGV[10])
  redis.call('ZREM', KEYS[5], ARGV[10])
  redis.call('ZREM', KEYS[6], ARGV[10])
elseif ARGV[2] == '1' then
  redis.call('ZADD', KEYS[4], 0, ARGV[10])
  redis.call('ZADD', KEYS[5], 0, ARGV[10])
  redis.call('ZADD', KEYS[6], 0, ARGV[10])
end
if ARGV[5] == '1' and n > 0 then
  local hold = tonumber(ARGV[6])
  local pending = tonumber(cur[4] or '0')
  -- The clock is read only when something is or was held back for this dialog.
  local now = 0
  if hold > 0 or pending > 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  if pending > now and pending > hold then hold = pending end
  if hold > now then
    redis.call('HSET', KEYS[1], 'hu', hold)
    for i = 1, n do
      local c = redis.call('INCR', KEYS[9])
      local ev = ARGV[19 + 4 * i - 2]
      redis.call('ZADD', KEYS[8], hold, string.format('%020d', c) .. '#' .. #KEYS[7] .. '|' .. KEYS[7] .. #ev .. '|' .. ev .. #ARGV[13] .. '|' .. ARGV[13] .. ARGV[19 + 4 * i - 3])
    end
  else
    if pending > 0 then redis.call('HDEL', KEYS[1], 'hu') end
    for i = 1, n do
      local e = 19 + 4 * i
      local sid = redis.call('XADD', KEYS[7], '*', 'e', ARGV[e - 3])
      if ARGV[e - 1] == '' then
        redis.call('SET', ARGV[e - 2], sid, 'PX', ARGV[9])
      elseif redis.call('HSET', ARGV[e - 1], ARGV[e - 2], sid) == 1 and redis.call('HLEN', ARGV[e - 1]) == 1 then
        redis.call('PEXPIREAT', ARGV[e - 1], ARGV[e])
      end
      redis.call('XADD', ARGV[13], '*', 'e', ARGV[e - 3])
    end
  end
end
if ARGV[#ARGV - 1] ~= '' then redis.call(ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]) end
return 'OK'
"#;

/// Moves due held-back events into their logs. KEYS: 1 `held`. ARGV: 1 the feed for members
/// held by a version without partitions (which did not record one: partition 0's), 2 retention
/// (ms). A member is the counter (20 digits), '#' (or '|' without a feed), then the log key, the
/// event-position key and the feed key, each `{length}|{key}`, then the event JSON.
const RELEASE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function field(m, at)
  local bar = string.find(m, '|', at, true)
  local len = tonumber(string.sub(m, at, bar - 1))
  return string.sub(m, bar + 1, bar + len), bar + len + 1
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(due) do
  local log, at = field(m, 22)
  local ev, rest = field(m, at)
  local feed = ARGV[1]
  if string.sub(m, 21, 21) == '#' then feed, rest = field(m, rest) end
  local json = string.sub(m, rest)
  local sid = redis.call('XADD', log, '*', 'e', json)
  redis.call('SET', ev, sid, 'PX', ARGV[2])
  redis.call('XADD', feed, '*', 'e', json)
  redis.call('ZREM', KEYS[1], m)
end
return #due
"#;

/// One round of the webhook partitions' leases for a node. KEYS: 1 `wmembers`. ARGV: 1 the node,
/// 2 ttl (ms), 3 the partition count, 4 the lease key prefix (`lease:wp:`), 5 taking ('1'; '0'
/// for a node that is leaving: it takes nothing and gives up its membership), 6.. partitions it
/// gives up. The node renews what it holds and takes free partitions up to its share (the count
/// over the live members, rounded up). Returns the partitions it holds and how many it holds
/// beyond its share while another member is short of its own.
const PARTITIONS_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, ttl, n, prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local given = {}
for i = 6, #ARGV do
  local k = prefix .. ARGV[i]
  given[tonumber(ARGV[i])] = true
  if redis.call('GET', k) == me then redis.call('DEL', k) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[1], now + ttl, me)
else
  redis.call('ZREM', KEYS[1], me)
end
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local share = math.ceil(n / math.max(#members, 1))
local keys = {}
for i = 0, n - 1 do keys[#keys + 1] = prefix .. i end
local owners = redis.call('MGET', unpack(keys))
local mine, free, count = {}, {}, {}
for i = 0, n - 1 do
  local o = owners[i + 1]
  if o == me then
    redis.call('PEXPIRE', prefix .. i, ttl)
    mine[#mine + 1] = i
  elseif not o then
    if not given[i] then free[#free + 1] = i end
  else
    count[o] = (count[o] or 0) + 1
  end
end
if ARGV[5] == '1' then
  for _, i in ipairs(free) do
    if #mine >= share then break end
    redis.call('SET', prefix .. i, me, 'PX', ttl)
    mine[#mine + 1] = i
  end
end
table.sort(mine)
local excess = 0
if #mine > share then
  for _, m in ipairs(members) do
    if m ~= me and (count[m] or 0) < share then excess = #mine - share break end
  end
end
return {mine, excess}
"#;

const PUBLISH_LUA: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then return 0 end
local sid = redis.call('XADD', KEYS[2], '*', 'e', ARGV[1])
redis.call('SET', KEYS[3], sid, 'PX', ARGV[2])
redis.call('XADD', KEYS[4], '*', 'e', ARGV[1])
return 1
"#;

/// Sets hash field ARGV[1] of KEYS[1] to ARGV[3] only while it still holds ARGV[2]: 1 when
/// written, 0 when another write came first, -1 when the field is gone.
const SWAP_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return -1 end
if cur ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

/// How long a policy read serves while `policy:ver` stays the same (a safety net for edits made
/// to the registry keys by hand, which do not count the version up).
const POLICY_MAX_AGE: Duration = Duration::from_secs(5);

/// The policy as last read (it carries the `policy:ver` it was read at), and when.
type PolicyCache = Option<(std::time::Instant, Arc<Policy>)>;

pub struct RedisStore {
    shared: Arc<SharedConnection>,
    policy: std::sync::Mutex<PolicyCache>,
    prefix: String,
    retention: Duration,
    commit: redis::Script,
    release: redis::Script,
    publish: redis::Script,
    partitions: redis::Script,
    /// Webhook partitions (`webhooks.partitions`): a published event goes to its partition's feed.
    partition_count: u16,
    swap: redis::Script,
    connections: connections::ConnectionScripts,
    /// Redis Cluster (`redis.cluster`): keys carry hash tags, logs are split by partition.
    cluster: bool,
    /// Replicas a commit waits for (`redis.wait_replicas`).
    wait_replicas: u32,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Stream id `ms-seq` ↔ log position `ms << 20 | seq` (fewer than 2^20 entries per millisecond).
fn position_of(stream_id: &str) -> Option<LogPosition> {
    let (ms, seq) = stream_id.split_once('-')?;
    Some((ms.parse::<u64>().ok()? << 20) | seq.parse::<u64>().ok()?)
}

/// The channel a dialog's changes are published on: `{prefix}:dialog:{id}` on one Redis; on a
/// cluster (`partitions` given) `{prefix}:{w<n>}:dialog:{id}`, in the slot of the dialog's
/// partition, so the commit script can publish it (sharded) on the shard it runs on.
pub fn dialog_channel(prefix: &str, partitions: Option<u16>, dialog: Uuid) -> String {
    match partitions {
        Some(count) => format!(
            "{prefix}:{{w{}}}:dialog:{dialog}",
            crate::domain::partition_of(&dialog.to_string(), count)
        ),
        None => format!("{prefix}:dialog:{dialog}"),
    }
}

/// A key part made of several strings that no choice of strings can make ambiguous: each part is
/// written as `{byte length}:{part}`.
/// Length of the time buckets of event positions (`evp:` hashes).
const POSITION_BUCKET_MS: u64 = 60_000;

/// The minute (since the epoch) a UUIDv7 event id was made in; None for any other id.
fn position_bucket_of(event_id: &str) -> Option<u64> {
    let id = Uuid::parse_str(event_id).ok()?;
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some((secs * 1000 + u64::from(nanos) / 1_000_000) / POSITION_BUCKET_MS)
}

fn tuple(parts: &[&str]) -> String {
    let mut out = String::new();
    for p in parts {
        out.push_str(&p.len().to_string());
        out.push(':');
        out.push_str(p);
    }
    out
}

/// On a cluster a resource's poll log is one stream per partition, and a position names both the
/// entry's stream id and its partition: `(ms - SPREAD_EPOCH_MS) << 23 | seq << 12 | partition`
/// (41 bits of milliseconds from 2025 reach into 2094). One stream takes
/// fewer than 2,048 entries in a millisecond (a shard's own rate is far below 2 million a second)
/// and `webhooks.partitions` is at most 4,096, so positions order as (ms, seq, partition).
fn spread_position(stream_id: &str, partition: u16) -> Option<LogPosition> {
    let (ms, seq) = stream_id.split_once('-')?;
    let ms = ms.parse::<u64>().ok()?.checked_sub(SPREAD_EPOCH_MS)?;
    let seq = seq.parse::<u64>().ok()?.min(0x7FF);
    Some((ms << 23) | (seq << 12) | u64::from(partition & 0xFFF))
}

/// 2025-01-01T00:00:00Z: spread positions count milliseconds from here.
const SPREAD_EPOCH_MS: u64 = 1_735_689_600_000;

/// The first spread position of millisecond `ms` (a Redis clock reading).
fn spread_floor(ms: u64) -> LogPosition {
    ms.saturating_sub(SPREAD_EPOCH_MS) << 23
}

/// A spread position's stream id and partition.
fn spread_parts(position: LogPosition) -> (String, u16) {
    (
        format!(
            "{}-{}",
            (position >> 23) + SPREAD_EPOCH_MS,
            (position >> 12) & 0x7FF
        ),
        (position & 0xFFF) as u16,
    )
}

fn stream_id_of(position: LogPosition) -> String {
    format!("{}-{}", position >> 20, position & 0xF_FFFF)
}

impl RedisStore {
    pub fn new(settings: &RedisSettings, retention: Duration) -> anyhow::Result<Self> {
        Ok(RedisStore {
            shared: Arc::new(SharedConnection::new(settings)?),
            policy: std::sync::Mutex::new(None),
            prefix: settings.prefix.clone(),
            retention,
            commit: redis::Script::new(COMMIT_LUA),
            release: redis::Script::new(RELEASE_LUA),
            publish: redis::Script::new(PUBLISH_LUA),
            partitions: redis::Script::new(PARTITIONS_LUA),
            partition_count: DEFAULT_PARTITIONS,
            swap: redis::Script::new(SWAP_LUA),
            connections: connections::ConnectionScripts::new(),
            cluster: settings.cluster,
            wait_replicas: settings.wait_replicas,
        })
    }

    /// The store of a cluster whose webhook lanes hash to `count` partitions.
    pub fn with_partitions(mut self, count: u16) -> Self {
        self.partition_count = count.max(1);
        self
    }

    /// The feed of webhook partition `n`.
    fn feed_key(&self, n: u16) -> String {
        self.part_key(n, &format!("wf:{n}"))
    }

    fn policy_cache(&self) -> std::sync::MutexGuard<'_, PolicyCache> {
        self.policy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection the store's commands share (the bus publishes on it too).
    pub fn shared(&self) -> Arc<SharedConnection> {
        self.shared.clone()
    }

    /// A key of its own (no script or transaction touches it together with another).
    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// A key of group `tag`: on a cluster every key of one tag lives in one hash slot; on one
    /// Redis the tag is not written (the layout of a single Redis is unchanged).
    fn tagged(&self, tag: &str, rest: &str) -> String {
        if self.cluster {
            format!("{}:{{{tag}}}:{rest}", self.prefix)
        } else {
            self.key(rest)
        }
    }

    /// A key of partition `n` (its log, index, held-back events and feed); on one Redis there is
    /// one of each for all partitions, except the feeds, which are per partition everywhere.
    fn part_key(&self, n: u16, rest: &str) -> String {
        if self.cluster {
            format!("{}:{{w{n}}}:{rest}", self.prefix)
        } else {
            self.key(rest)
        }
    }

    /// The partition a dialog's keys, its events and its channel belong to.
    pub(super) fn dialog_partition(&self, id: Uuid) -> u16 {
        crate::domain::partition_of(&id.to_string(), self.partition_count)
    }

    /// A key of dialog `id` (`kind` `d`, `dlog`, `dch`, `da`, `dt`) in the slot of its
    /// partition `n` (`dialog_partition`, worked out once per operation by the caller).
    fn dialog_key(&self, n: u16, id: Uuid, kind: &str) -> String {
        if self.cluster {
            format!("{}:{{w{n}}}:{kind}:{id}", self.prefix)
        } else {
            format!("{}:{kind}:{id}", self.prefix)
        }
    }

    /// The partitions whose keys a cross-dialog read visits: all on a cluster, else the one set.
    fn read_partitions(&self) -> std::ops::Range<u16> {
        if self.cluster {
            0..self.partition_count
        } else {
            0..1
        }
    }

    /// Where an event's position in its resource's log (of partition `n`) is kept when it has a
    /// key of its own: an event published from outside, one that was held back, or one whose id
    /// is not a UUIDv7 (a `seen` event's id is a UUIDv5, which carries no minute to bucket by).
    /// Every other event's position lives in its resource's hash for the minute of its id.
    fn event_key(&self, n: u16, resource: &str, event_id: &str) -> String {
        self.part_key(n, &format!("ev:{}", tuple(&[resource, event_id])))
    }

    /// The hash that keeps the positions of a resource's events (of partition `n`) whose ids
    /// (UUIDv7) were made in the minute `bucket`: one key, and one expiry, per resource and
    /// minute instead of per event. None for an id that is not a UUIDv7.
    fn position_bucket(&self, n: u16, resource: &str, event_id: &str) -> Option<(String, u64)> {
        let bucket = position_bucket_of(event_id)?;
        let key = self.part_key(
            n,
            &format!("evp:{}", tuple(&[resource, &bucket.to_string()])),
        );
        Some((key, bucket))
    }

    /// When the position hash of minute `bucket` may go: a retention after the minute ends, and
    /// an hour more for the clocks of the node that made the id and of Redis to differ.
    fn bucket_expiry_ms(&self, bucket: u64) -> u64 {
        (bucket + 1) * POSITION_BUCKET_MS + self.retention_ms() + 3_600_000
    }

    /// `PUBLISH` on one Redis; `SPUBLISH` on a cluster, which reaches only the channel's shard.
    pub(super) fn publish_command(&self) -> &'static str {
        if self.cluster { "SPUBLISH" } else { "PUBLISH" }
    }

    /// Runs a write script. With `redis.wait_replicas`, answers only once that many replicas of
    /// the master that ran it (the one holding `key`) acknowledged it (`WAIT`); fewer in time is
    /// an error, as the write might not survive a failover.
    async fn invoke_replicated<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        key: &str,
    ) -> Result<T, StoreError> {
        let out: T = self
            .with(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        if self.wait_replicas == 0 {
            return Ok(out);
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.wait_replicas).arg(WAIT_TIMEOUT_MS);
        let route = redis::cluster_routing::RoutingInfo::SingleNode(
            redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(
                redis::cluster_routing::Route::with_key(
                    key,
                    redis::cluster_routing::SlotAddr::Master,
                ),
            ),
        );
        let acked: i64 = self
            .with(|c| async move {
                match c {
                    Conn::Single(mut c) => wait.query_async(&mut c).await,
                    Conn::Cluster(mut c) => {
                        let v = c.route_command(wait, route).await?;
                        redis::from_redis_value::<i64>(v).map_err(redis::RedisError::from)
                    }
                }
            })
            .await?;
        if acked < i64::from(self.wait_replicas) {
            return Err(unavailable(format!(
                "the write reached {acked} of {} replicas in time",
                self.wait_replicas
            )));
        }
        Ok(out)
    }

    /// Runs every command of `pipe` and parses their answers as one pipeline's: on one Redis as
    /// one pipeline, on a cluster each command on its own, concurrently (a pipeline must keep to
    /// one slot there), which the cluster connection sends to each master back to back.
    async fn query_spread<T: redis::FromRedisValue>(
        &self,
        pipe: redis::Pipeline,
    ) -> Result<T, StoreError> {
        if !self.cluster {
            return self
                .with(|mut c| async move { pipe.query_async(&mut c).await })
                .await;
        }
        let answers = futures::future::try_join_all(pipe.cmd_iter().map(|cmd| {
            let cmd = cmd.clone();
            self.with(|mut c| async move { cmd.query_async::<redis::Value>(&mut c).await })
        }))
        .await?;
        redis::from_redis_value(redis::Value::Array(answers)).map_err(unavailable)
    }

    /// Runs `f` on the shared connection under the operation timeout; a connection error or a
    /// timeout makes the next call connect again.
    async fn with<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let run = async {
            let conn = self.shared.get().await.map_err(unavailable)?;
            let outcome = f(conn).await;
            self.shared.observe(&outcome);
            outcome.map_err(unavailable)
        };
        match tokio::time::timeout(OP_TIMEOUT, run).await {
            Ok(result) => result,
            Err(_) => {
                self.shared.timed_out();
                Err(unavailable("timed out"))
            }
        }
    }

    /// The generated keys shared by every node: stored once (first node wins), then read.
    pub async fn shared_keys(&self, generated: String) -> Result<String, StoreError> {
        let key = self.key("keys");
        self.with(|mut c| async move {
            let _: bool = c.set_nx(&key, generated).await?;
            c.get(&key).await
        })
        .await
    }

    /// Replaces the cluster's keys (a rotation); nodes read them again within seconds.
    pub async fn set_shared_keys(&self, json: String) -> Result<(), StoreError> {
        let key = self.key("keys");
        self.with(|mut c| async move { c.set(&key, json).await })
            .await
    }

    /// Adds the configured registry entries (upsert) so a cluster starts with what config says.
    pub async fn seed_policy(
        &self,
        resources: &[ResourceEntry],
        delegations: &[DelegationEntry],
    ) -> Result<(), StoreError> {
        for r in resources {
            self.put_resource(r.clone()).await?;
        }
        for d in delegations {
            self.add_delegation(d.clone()).await?;
        }
        Ok(())
    }

    /// Every key matching `pattern` (SCAN, so Redis is never blocked).
    async fn scan_keys(&self, pattern: String) -> Result<Vec<String>, StoreError> {
        self.with(|mut c| async move {
            let mut it = c.scan_match::<_, String>(&pattern).await?;
            let mut keys = Vec::new();
            while let Some(k) = futures::StreamExt::next(&mut it).await {
                keys.push(k?);
            }
            Ok(keys)
        })
        .await
    }

    fn retention_ms(&self) -> u64 {
        self.retention.as_millis().min(u64::MAX as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_and_positions_round_trip_in_order() {
        let a = position_of("1700000000000-0").expect("id");
        let b = position_of("1700000000000-7").expect("id");
        let c = position_of("1700000000001-0").expect("id");
        assert!(a < b && b < c);
        assert_eq!(stream_id_of(b), "1700000000000-7");
    }

    #[test]
    fn spread_positions_order_by_time_then_sequence_then_partition_and_round_trip() {
        let a = spread_position("1780000000000-5", 63).expect("id");
        let b = spread_position("1780000000000-6", 0).expect("id");
        let c = spread_position("1780000000000-6", 1).expect("id");
        let d = spread_position("1780000000001-0", 0).expect("id");
        assert!(a < b && b < c && c < d);
        assert_eq!(spread_parts(a), ("1780000000000-5".to_owned(), 63));
        assert_eq!(spread_parts(c), ("1780000000000-6".to_owned(), 1));
        // A date far ahead still fits: 2090-01-01 in ms.
        let late = spread_position("3786825600000-2047", 4095).expect("id");
        assert_eq!(spread_parts(late), ("3786825600000-2047".to_owned(), 4095));
        assert!(spread_floor(1_780_000_000_000) <= a && d < spread_floor(1_780_000_000_002));
    }

    #[test]
    fn a_uuidv7_event_id_gives_the_minute_it_was_made_in_and_other_ids_none() {
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_796_391_015,
            0,
        ));
        assert_eq!(
            position_bucket_of(&id.to_string()),
            Some(1_796_391_015 / 60)
        );
        assert_eq!(position_bucket_of(&Uuid::new_v4().to_string()), None);
        assert_eq!(position_bucket_of("ext-42"), None);
    }

    #[test]
    fn tuple_keys_are_unambiguous_whatever_the_parts_contain() {
        assert_ne!(tuple(&["a|b", "c"]), tuple(&["a", "b|c"]));
        assert_ne!(tuple(&["a:1", "b"]), tuple(&["a", "1:b"]));
        assert_eq!(tuple(&["urn:x", "id"]), "5:urn:x2:id");
    }
}
