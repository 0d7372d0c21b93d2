//! The Redis `Store`, shared by every node of a cluster. A dialog commit is one Lua script
//! (sequence check, state, dialog log, change log, indexes, global log or hold-back queue), so
//! concurrent writers on different nodes produce one gap-free order.
//!
//! Key layout under `{p}` = `redis.prefix`:
//! - `{p}:d:{id}` hash `state` (dialog JSON; empty after purge) and `seq`
//! - `{p}:dlog:{id}` list of event JSON, `{p}:dch:{id}` list of change JSON (newest 1000 each)
//! - `{p}:idx`, `{p}:idx:r:{resource}`, `{p}:idx:p:{party}` sorted sets of dialog ids (lexical)
//! - `{p}:log:{resource}` stream of published events (field `e`); `{p}:ev:{T(resource, event id)}`
//!   an event's stream id in its resource's log
//! - `{p}:ext:{T(resource, source, id)}` dedupe marker of published custom events
//!   (`T` writes each part as `{byte length}:{part}`, so no id or source can make two tuples meet)
//! - `{p}:held` sorted set of held-back events by release time (member: counter, then the log and
//!   event-position keys and the event JSON, length-prefixed), `{p}:heldc` its counter,
//!   `{p}:hu:{id}` a dialog's current hold-until time
//! - `{p}:res` hash of resources, `{p}:dlg` set of delegations, `{p}:keys` the generated keys
//! - `{p}:glog` stream of every published event (the webhook dispatcher's feed)
//! - `{p}:subs` hash of webhook subscriptions, `{p}:dlv:{sub}` recent attempts, `{p}:dead` dead letters
//! - `{p}:pending` hash of unfinished webhook deliveries (`{sub}|{position}|{event id}` → JSON)
//! - `{p}:lease:{name}` a lease (the webhook dispatcher's), `{p}:cursor:{name}` a saved log position
//! - `{p}:node:{id}` a live node (expires unless refreshed)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_redis::{Pool, Runtime};
use redis::AsyncCommands;
use uuid::Uuid;

use super::{Commit, DialogQuery, EventFilter, LogEntry, LogPosition, Store, StoreError};
use crate::domain::{
    Change, CloudEvent, DeadLetter, DelegationEntry, DeliveryRecord, Dialog, NodeInfo,
    PendingDelivery, Policy, ResourceEntry, ResourceUrn, Subscription,
};

/// Events and changes kept per dialog in its own logs.
const DIALOG_LOG_KEEP: usize = 1000;
/// Longest a single store operation may take before the node answers 503 instead of waiting.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// First window of a tail read of a dialog's change log.
const TAIL_WINDOW: usize = 16;
/// Dialog ids fetched per round trip when listing.
const LIST_BATCH: usize = 200;

const COMMIT_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'seq')
if ARGV[2] == '1' then
  if cur then return 'EXISTS' end
else
  if (not cur) or cur ~= ARGV[1] then return 'CONFLICT' end
  if redis.call('HGET', KEYS[1], 'state') == '' then return 'CONFLICT' end
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'seq', ARGV[4])
local n = tonumber(ARGV[14])
local keep = tonumber(ARGV[8])
for i = 1, n do redis.call('RPUSH', KEYS[2], ARGV[14 + 2 * i - 1]) end
if n > 0 then redis.call('LTRIM', KEYS[2], -keep, -1) end
if ARGV[7] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[7])
  redis.call('LTRIM', KEYS[3], -keep, -1)
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
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local hold = tonumber(ARGV[6])
  local pending = tonumber(redis.call('GET', KEYS[10]) or '0')
  if pending > now and pending > hold then hold = pending end
  if hold > now then
    redis.call('SET', KEYS[10], hold, 'PX', hold - now + 60000)
    for i = 1, n do
      local c = redis.call('INCR', KEYS[9])
      local ev = ARGV[14 + 2 * i]
      redis.call('ZADD', KEYS[8], hold, string.format('%020d', c) .. '|' .. #KEYS[7] .. '|' .. KEYS[7] .. #ev .. '|' .. ev .. ARGV[14 + 2 * i - 1])
    end
  else
    for i = 1, n do
      local sid = redis.call('XADD', KEYS[7], '*', 'e', ARGV[14 + 2 * i - 1])
      redis.call('SET', ARGV[14 + 2 * i], sid, 'PX', ARGV[9])
      redis.call('XADD', ARGV[13] .. ':glog', '*', 'e', ARGV[14 + 2 * i - 1])
    end
  end
end
return 'OK'
"#;

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
  local json = string.sub(m, rest)
  local sid = redis.call('XADD', log, '*', 'e', json)
  redis.call('SET', ev, sid, 'PX', ARGV[2])
  redis.call('XADD', ARGV[1] .. ':glog', '*', 'e', json)
  redis.call('ZREM', KEYS[1], m)
end
return #due
"#;

const LEASE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

const PUBLISH_LUA: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then return 0 end
local sid = redis.call('XADD', KEYS[2], '*', 'e', ARGV[1])
redis.call('SET', KEYS[3], sid, 'PX', ARGV[2])
redis.call('XADD', KEYS[4], '*', 'e', ARGV[1])
return 1
"#;

pub struct RedisStore {
    pool: Pool,
    prefix: String,
    retention: Duration,
    commit: redis::Script,
    release: redis::Script,
    publish: redis::Script,
    lease: redis::Script,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Stream id `ms-seq` ↔ log position `ms << 20 | seq` (fewer than 2^20 entries per millisecond).
fn position_of(stream_id: &str) -> Option<LogPosition> {
    let (ms, seq) = stream_id.split_once('-')?;
    Some((ms.parse::<u64>().ok()? << 20) | seq.parse::<u64>().ok()?)
}

/// A key part made of several strings that no choice of strings can make ambiguous: each part is
/// written as `{byte length}:{part}`.
fn tuple(parts: &[&str]) -> String {
    let mut out = String::new();
    for p in parts {
        out.push_str(&p.len().to_string());
        out.push(':');
        out.push_str(p);
    }
    out
}

fn stream_id_of(position: LogPosition) -> String {
    format!("{}-{}", position >> 20, position & 0xF_FFFF)
}

impl RedisStore {
    pub fn new(url: &str, prefix: &str, retention: Duration) -> anyhow::Result<Self> {
        let mut cfg = deadpool_redis::Config::from_url(url);
        let mut pool_cfg = deadpool_redis::PoolConfig::new(64);
        pool_cfg.timeouts.wait = Some(OP_TIMEOUT);
        pool_cfg.timeouts.create = Some(OP_TIMEOUT);
        pool_cfg.timeouts.recycle = Some(OP_TIMEOUT);
        cfg.pool = Some(pool_cfg);
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| anyhow::anyhow!("invalid configuration: redis.url: {e}"))?;
        Ok(RedisStore {
            pool,
            prefix: prefix.to_owned(),
            retention,
            commit: redis::Script::new(COMMIT_LUA),
            release: redis::Script::new(RELEASE_LUA),
            publish: redis::Script::new(PUBLISH_LUA),
            lease: redis::Script::new(LEASE_LUA),
        })
    }

    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// Where an event's position in its resource's log is kept.
    fn event_key(&self, resource: &str, event_id: &str) -> String {
        self.key(&format!("ev:{}", tuple(&[resource, event_id])))
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Runs `f` with a pooled connection under the operation timeout.
    async fn with<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let run = async {
            let conn = self.conn().await?;
            f(conn).await.map_err(unavailable)
        };
        tokio::time::timeout(OP_TIMEOUT, run)
            .await
            .map_err(|_| unavailable("timed out"))?
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

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }

    async fn load_dialog(&self, id: Uuid) -> Result<Option<Dialog>, StoreError> {
        let key = self.key(&format!("d:{id}"));
        let state: Option<String> = self
            .with(|mut c| async move { c.hget(&key, "state").await })
            .await?;
        match state.filter(|s| !s.is_empty()) {
            Some(s) => serde_json::from_str(&s).map(Some).map_err(unavailable),
            None => Ok(None),
        }
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let id = commit.dialog_id;
        let described = commit.state.as_ref();
        let (resource, party) = match (described, commit.events.first()) {
            (Some(d), _) => (d.service_resource.to_string(), d.party.urn()),
            (None, Some(e)) => (
                e.resource.clone().unwrap_or_default(),
                e.subject.clone().unwrap_or_default(),
            ),
            (None, None) => (String::new(), String::new()),
        };
        let state = match &commit.state {
            Some(d) => serde_json::to_string(d).map_err(unavailable)?,
            None => String::new(),
        };
        let new_seq = commit.expected_sequence + commit.events.len() as u64;
        let change = Change::of(
            &commit.events,
            commit.state.as_ref().map(|d| d.revision),
            Utc::now(),
        )
        .map(|c| serde_json::to_string(&c))
        .transpose()
        .map_err(unavailable)?
        .unwrap_or_default();
        let mut inv = self.commit.prepare_invoke();
        for k in [
            format!("d:{id}"),
            format!("dlog:{id}"),
            format!("dch:{id}"),
            "idx".to_owned(),
            format!("idx:r:{resource}"),
            format!("idx:p:{party}"),
            format!("log:{resource}"),
            "held".to_owned(),
            "heldc".to_owned(),
            format!("hu:{id}"),
        ] {
            inv.key(self.key(&k));
        }
        let hold_ms = commit.hold_until.map_or(0, |t| t.timestamp_millis().max(0));
        inv.arg(commit.expected_sequence)
            .arg(if commit.create { "1" } else { "0" })
            .arg(state)
            .arg(new_seq)
            .arg(if commit.publish { "1" } else { "0" })
            .arg(hold_ms)
            .arg(change)
            .arg(DIALOG_LOG_KEEP)
            .arg(self.retention_ms())
            .arg(id.to_string())
            .arg(&resource)
            .arg(&party)
            .arg(&self.prefix)
            .arg(commit.events.len());
        for e in &commit.events {
            inv.arg(serde_json::to_string(e.as_ref()).map_err(unavailable)?)
                .arg(self.event_key(&resource, &e.id));
        }
        let result: String = self
            .with(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        match result.as_str() {
            "OK" => Ok(()),
            "EXISTS" => Err(StoreError::AlreadyExists),
            _ => Err(StoreError::Conflict),
        }
    }

    async fn list_dialogs(&self, query: &DialogQuery) -> Result<Vec<Dialog>, StoreError> {
        let index = match (&query.resources, &query.parties) {
            (_, Some(p)) if p.len() == 1 => self.key(&format!("idx:p:{}", p[0])),
            (Some(r), _) if r.len() == 1 => self.key(&format!("idx:r:{}", r[0])),
            _ => self.key("idx"),
        };
        let mut out = Vec::new();
        let mut cursor = query
            .after
            .map(|a| format!("({a}"))
            .unwrap_or_else(|| "-".to_owned());
        loop {
            let (idx, from) = (index.clone(), cursor.clone());
            let ids: Vec<String> = self
                .with(|mut c| async move {
                    redis::cmd("ZRANGEBYLEX")
                        .arg(&idx)
                        .arg(&from)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(LIST_BATCH)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if ids.is_empty() {
                return Ok(out);
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hget(self.key(&format!("d:{id}")), "state");
            }
            let states: Vec<Option<String>> = self
                .with(|mut c| async move { pipe.query_async(&mut c).await })
                .await?;
            for state in states.into_iter().flatten().filter(|s| !s.is_empty()) {
                let d: Dialog = serde_json::from_str(&state).map_err(unavailable)?;
                let keep = (query.include_deleted || !d.is_deleted())
                    && query
                        .resources
                        .as_ref()
                        .is_none_or(|r| r.contains(&d.service_resource))
                    && query.parties.as_ref().is_none_or(|p| p.contains(&d.party));
                if keep {
                    out.push(d);
                    if out.len() == query.limit {
                        return Ok(out);
                    }
                }
            }
            if ids.len() < LIST_BATCH {
                return Ok(out);
            }
            cursor = format!("({}", ids.last().map(String::as_str).unwrap_or(""));
        }
    }

    async fn dialog_events(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<CloudEvent>>, StoreError> {
        let key = self.key(&format!("dlog:{id}"));
        let raw: Vec<String> = self
            .with(|mut c| async move { c.lrange(&key, 0, -1).await })
            .await?;
        let mut out = Vec::new();
        for r in raw {
            let e: CloudEvent = serde_json::from_str(&r).map_err(unavailable)?;
            if e.dialogsequence.unwrap_or(0) > after {
                out.push(Arc::new(e));
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn dialog_changes(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Change>>, StoreError> {
        let key = self.key(&format!("dch:{id}"));
        // Readers want the tail (a gap of a few changes, a short resume): read backwards in growing
        // windows instead of the whole list.
        let mut window = TAIL_WINDOW;
        loop {
            let k = key.clone();
            let start = -(window as isize);
            let raw: Vec<String> = self
                .with(|mut c| async move { c.lrange(&k, start, -1).await })
                .await?;
            let mut changes = Vec::with_capacity(raw.len());
            for r in &raw {
                changes.push(serde_json::from_str::<Change>(r).map_err(unavailable)?);
            }
            let reaches_back = changes.first().is_none_or(|c| c.last <= after);
            if reaches_back || raw.len() < window || window >= DIALOG_LOG_KEEP {
                let newer: Vec<Arc<Change>> = changes
                    .into_iter()
                    .filter(|c| c.last > after)
                    .map(Arc::new)
                    .collect();
                let skip = newer.len().saturating_sub(limit);
                return Ok(newer.into_iter().skip(skip).collect());
            }
            window = (window * 4).min(DIALOG_LOG_KEEP);
        }
    }

    async fn log_position(
        &self,
        resource: &str,
        event_id: &str,
    ) -> Result<Option<LogPosition>, StoreError> {
        let key = self.event_key(resource, event_id);
        let sid: Option<String> = self.with(|mut c| async move { c.get(&key).await }).await?;
        Ok(sid.as_deref().and_then(position_of))
    }

    async fn read_log(
        &self,
        resource: &str,
        after: LogPosition,
        limit: usize,
        filter: EventFilter<'_>,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let key = self.key(&format!("log:{resource}"));
        let batch = (limit * 2).clamp(100, 2000);
        let mut from = if after == 0 {
            "-".to_owned()
        } else {
            format!("({}", stream_id_of(after))
        };
        let mut out = Vec::new();
        loop {
            let (k, f) = (key.clone(), from.clone());
            let entries: Vec<(String, Vec<(String, String)>)> = self
                .with(|mut c| async move {
                    redis::cmd("XRANGE")
                        .arg(&k)
                        .arg(&f)
                        .arg("+")
                        .arg("COUNT")
                        .arg(batch)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let count = entries.len();
            for (sid, fields) in &entries {
                let Some(json) = fields.iter().find(|(f, _)| f == "e").map(|(_, v)| v) else {
                    continue;
                };
                let event: CloudEvent = serde_json::from_str(json).map_err(unavailable)?;
                if filter(&event) {
                    out.push(LogEntry {
                        position: position_of(sid).unwrap_or(0),
                        event: Arc::new(event),
                    });
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            match entries.last() {
                Some((sid, _)) if count == batch => from = format!("({sid}"),
                _ => return Ok(out),
            }
        }
    }

    async fn append_external(&self, event: CloudEvent) -> Result<bool, StoreError> {
        let resource = event.resource.clone().unwrap_or_default();
        let json = serde_json::to_string(&event).map_err(unavailable)?;
        let mut inv = self.publish.prepare_invoke();
        let marker = tuple(&[&resource, &event.source, &event.id]);
        inv.key(self.key(&format!("ext:{marker}")))
            .key(self.key(&format!("log:{resource}")))
            .key(self.event_key(&resource, &event.id))
            .key(self.key("glog"))
            .arg(json)
            .arg(self.retention_ms());
        let added: i64 = self
            .with(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(added == 1)
    }

    async fn release_due(&self, _now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut inv = self.release.prepare_invoke();
        inv.key(self.key("held"))
            .arg(&self.prefix)
            .arg(self.retention_ms());
        let n: i64 = self
            .with(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(n as usize)
    }

    async fn prune_log(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let keys = self.scan_keys(self.key("log:*")).await?;
        let min_id = format!("{}-0", before.timestamp_millis().max(0));
        let mut pruned = 0usize;
        for key in keys {
            let id = min_id.clone();
            let n: usize = self
                .with(|mut c| async move {
                    redis::cmd("XTRIM")
                        .arg(&key)
                        .arg("MINID")
                        .arg(&id)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            pruned += n;
        }
        Ok(pruned)
    }

    async fn policy(&self) -> Result<Arc<Policy>, StoreError> {
        let (res, dlg) = (self.key("res"), self.key("dlg"));
        let (resources, delegations): (Vec<String>, Vec<String>) = self
            .with(|mut c| async move {
                redis::pipe()
                    .hvals(&res)
                    .smembers(&dlg)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let resources = resources
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        let delegations = delegations
            .iter()
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect();
        Ok(Arc::new(Policy::new(resources, delegations)))
    }

    async fn put_resource(&self, entry: ResourceEntry) -> Result<(), StoreError> {
        let key = self.key("res");
        let json = serde_json::to_string(&entry).map_err(unavailable)?;
        let id = entry.id.to_string();
        self.with(|mut c| async move { c.hset::<_, _, _, ()>(&key, id, json).await })
            .await
    }

    async fn delete_resource(&self, id: &ResourceUrn) -> Result<bool, StoreError> {
        let key = self.key("res");
        let id = id.to_string();
        let n: i64 = self
            .with(|mut c| async move { c.hdel(&key, id).await })
            .await?;
        Ok(n > 0)
    }

    async fn add_delegation(&self, entry: DelegationEntry) -> Result<(), StoreError> {
        let key = self.key("dlg");
        let json = serde_json::to_string(&entry).map_err(unavailable)?;
        self.with(|mut c| async move { c.sadd::<_, _, ()>(&key, json).await })
            .await
    }

    async fn remove_delegation(&self, entry: &DelegationEntry) -> Result<bool, StoreError> {
        let key = self.key("dlg");
        let json = serde_json::to_string(entry).map_err(unavailable)?;
        let n: i64 = self
            .with(|mut c| async move { c.srem(&key, json).await })
            .await?;
        Ok(n > 0)
    }

    async fn read_global(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let key = self.key("glog");
        let from = if after == 0 {
            "-".to_owned()
        } else {
            format!("({}", stream_id_of(after))
        };
        let entries: Vec<(String, Vec<(String, String)>)> = self
            .with(|mut c| async move {
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(entries.len());
        for (sid, fields) in entries {
            let Some(json) = fields.iter().find(|(f, _)| f == "e").map(|(_, v)| v) else {
                continue;
            };
            let event: CloudEvent = serde_json::from_str(json).map_err(unavailable)?;
            out.push(LogEntry {
                position: position_of(&sid).unwrap_or(0),
                event: Arc::new(event),
            });
        }
        Ok(out)
    }

    async fn global_head(&self) -> Result<LogPosition, StoreError> {
        let key = self.key("glog");
        let last: Vec<(String, Vec<(String, String)>)> = self
            .with(|mut c| async move {
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(last
            .first()
            .and_then(|(sid, _)| position_of(sid))
            .unwrap_or(0))
    }

    async fn put_subscription(&self, subscription: &Subscription) -> Result<(), StoreError> {
        let key = self.key("subs");
        let json = serde_json::to_string(subscription).map_err(unavailable)?;
        let id = subscription.id.to_string();
        self.with(|mut c| async move { c.hset::<_, _, _, ()>(&key, id, json).await })
            .await
    }

    async fn get_subscription(&self, id: Uuid) -> Result<Option<Subscription>, StoreError> {
        let key = self.key("subs");
        let json: Option<String> = self
            .with(|mut c| async move { c.hget(&key, id.to_string()).await })
            .await?;
        json.map(|j| serde_json::from_str(&j).map_err(unavailable))
            .transpose()
    }

    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StoreError> {
        let (key, dlv) = (self.key("subs"), self.key(&format!("dlv:{id}")));
        let n: i64 = self
            .with(|mut c| async move {
                let _: () = c.del(&dlv).await?;
                c.hdel(&key, id.to_string()).await
            })
            .await?;
        Ok(n > 0)
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let key = self.key("subs");
        let all: Vec<String> = self
            .with(|mut c| async move { c.hvals(&key).await })
            .await?;
        Ok(all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    async fn record_delivery(
        &self,
        subscription: Uuid,
        record: DeliveryRecord,
    ) -> Result<(), StoreError> {
        let key = self.key(&format!("dlv:{subscription}"));
        let json = serde_json::to_string(&record).map_err(unavailable)?;
        let keep = super::memory::DELIVERIES_KEEP as isize;
        self.with(|mut c| async move {
            redis::pipe()
                .lpush(&key, json)
                .ltrim(&key, 0, keep - 1)
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn deliveries(&self, subscription: Uuid) -> Result<Vec<DeliveryRecord>, StoreError> {
        let key = self.key(&format!("dlv:{subscription}"));
        let all: Vec<String> = self
            .with(|mut c| async move { c.lrange(&key, 0, -1).await })
            .await?;
        Ok(all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let key = self.key("dead");
        let json = serde_json::to_string(letter).map_err(unavailable)?;
        let id = letter.id.to_string();
        self.with(|mut c| async move { c.hset::<_, _, _, ()>(&key, id, json).await })
            .await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let key = self.key("dead");
        let all: Vec<String> = self
            .with(|mut c| async move { c.hvals(&key).await })
            .await?;
        let mut letters: Vec<DeadLetter> = all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        letters.sort_by_key(|l| l.dead_at);
        Ok(letters)
    }

    async fn take_dead_letters(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            let key = self.key("dead");
            let field = id.to_string();
            let json: Option<String> = self
                .with(|mut c| async move {
                    let v: Option<String> = c.hget(&key, &field).await?;
                    let _: i64 = c.hdel(&key, &field).await?;
                    Ok(v)
                })
                .await?;
            if let Some(j) = json {
                out.push(serde_json::from_str(&j).map_err(unavailable)?);
            }
        }
        Ok(out)
    }

    async fn put_pending(&self, deliveries: &[PendingDelivery]) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let key = self.key("pending");
        let mut fields = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let json = serde_json::to_string(d).map_err(unavailable)?;
            fields.push((
                PendingDelivery::key(d.subscription, d.position, &d.event.id),
                json,
            ));
        }
        self.with(|mut c| async move { c.hset_multiple::<_, _, _, ()>(&key, &fields).await })
            .await
    }

    async fn remove_pending(&self, field: &str) -> Result<(), StoreError> {
        let key = self.key("pending");
        let field = field.to_owned();
        self.with(|mut c| async move { c.hdel::<_, _, ()>(&key, field).await })
            .await
    }

    async fn pending(&self) -> Result<Vec<PendingDelivery>, StoreError> {
        let key = self.key("pending");
        let all: Vec<String> = self
            .with(|mut c| async move { c.hvals(&key).await })
            .await?;
        Ok(all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut inv = self.lease.prepare_invoke();
        inv.key(self.key(&format!("lease:{name}")))
            .arg(holder)
            .arg(ttl.as_millis() as u64);
        let held: i64 = self
            .with(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(held == 1)
    }

    async fn cursor(&self, name: &str) -> Result<Option<LogPosition>, StoreError> {
        let key = self.key(&format!("cursor:{name}"));
        self.with(|mut c| async move { c.get(&key).await }).await
    }

    async fn set_cursor(&self, name: &str, position: LogPosition) -> Result<(), StoreError> {
        let key = self.key(&format!("cursor:{name}"));
        self.with(|mut c| async move { c.set::<_, _, ()>(&key, position).await })
            .await
    }

    async fn init_cursor(
        &self,
        name: &str,
        position: LogPosition,
    ) -> Result<LogPosition, StoreError> {
        let key = self.key(&format!("cursor:{name}"));
        self.with(|mut c| async move {
            let _: bool = c.set_nx(&key, position).await?;
            c.get(&key).await
        })
        .await
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let key = self.key(&format!("node:{}", node.id));
        let json = serde_json::to_string(node).map_err(unavailable)?;
        let ms = ttl.as_millis() as u64;
        self.with(|mut c| async move { c.pset_ex::<_, _, ()>(&key, json, ms).await })
            .await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let keys = self.scan_keys(self.key("node:*")).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = self
            .with(|mut c| async move { c.mget(&keys).await })
            .await?;
        let mut nodes: Vec<NodeInfo> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
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
    fn tuple_keys_are_unambiguous_whatever_the_parts_contain() {
        assert_ne!(tuple(&["a|b", "c"]), tuple(&["a", "b|c"]));
        assert_ne!(tuple(&["a:1", "b"]), tuple(&["a", "1:b"]));
        assert_eq!(tuple(&["urn:x", "id"]), "5:urn:x2:id");
    }
}
