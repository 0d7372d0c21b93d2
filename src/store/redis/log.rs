//! `RedisStore`: the poll log per resource, the global log, held-back events and publish dedupe.

use super::*;
use crate::store::{EventLog, RegistryStore};

#[async_trait]
impl EventLog for RedisStore {
    async fn log_position(
        &self,
        resource: &str,
        event_id: &str,
    ) -> Result<Option<LogPosition>, StoreError> {
        // A position is in its minute's hash (an event the node committed as it came) or in a
        // key of its own (held back, or published from outside); on a cluster the event's
        // partition is not known from its id: each partition is asked.
        let mut pipe = redis::pipe();
        let mut asked = Vec::new();
        for n in self.read_partitions() {
            let key = self.event_key(n, resource, event_id);
            if let Some((bucket, _)) = self.position_bucket(n, resource, event_id) {
                pipe.hget(bucket, &key);
                asked.push(n);
            }
            pipe.get(key);
            asked.push(n);
        }
        let found: Vec<Option<String>> = self.query_spread(pipe).await?;
        Ok(found.iter().zip(asked).find_map(|(sid, n)| {
            let sid = sid.as_deref()?;
            if self.cluster {
                spread_position(sid, n)
            } else {
                position_of(sid)
            }
        }))
    }

    async fn read_log(
        &self,
        resource: &str,
        after: LogPosition,
        limit: usize,
        filter: EventFilter<'_>,
    ) -> Result<Vec<LogEntry>, StoreError> {
        if self.cluster {
            return self.read_spread_log(resource, after, limit, filter).await;
        }
        let key = self.part_key(0, &format!("log:{resource}"));
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
        // All in the partition of the event's lanes (one slot on a cluster).
        let n = crate::domain::event_partition(&event, self.partition_count);
        let first = self.part_key(n, &format!("ext:{marker}"));
        inv.key(&first)
            .key(self.part_key(n, &format!("log:{resource}")))
            .key(self.event_key(n, &resource, &event.id))
            .key(self.feed_key(n))
            .arg(json)
            .arg(self.retention_ms());
        let added: i64 = self.invoke_replicated(&inv, &first).await?;
        Ok(added == 1)
    }

    async fn release_due(&self, _now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut released = 0;
        for n in self.read_partitions() {
            let mut inv = self.release.prepare_invoke();
            inv.key(self.part_key(n, "held"))
                .arg(self.feed_key(n))
                .arg(self.retention_ms());
            let moved: i64 = self
                .with(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            released += moved as usize;
        }
        Ok(released)
    }

    async fn prune_log(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut keys = if self.cluster {
            // SCAN would visit one master only: the logs are those of the registered resources.
            let policy = self.policy().await?;
            let mut keys = Vec::new();
            for r in policy.resources() {
                for n in self.read_partitions() {
                    keys.push(self.part_key(n, &format!("log:{}", r.id)));
                }
            }
            keys
        } else {
            self.scan_keys(self.key("log:*")).await?
        };
        keys.extend((0..self.partition_count).map(|n| self.feed_key(n)));
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

    async fn read_feed(
        &self,
        _partitions: u16,
        from: &[(u16, LogPosition)],
        limit: usize,
    ) -> Result<Vec<FeedPage>, StoreError> {
        if from.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for every partition asked for.
        let mut pipe = redis::pipe();
        for &(n, after) in from {
            let start = if after == 0 {
                "-".to_owned()
            } else {
                format!("({}", stream_id_of(after))
            };
            pipe.cmd("XRANGE")
                .arg(self.feed_key(n))
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(limit);
        }
        type Entries = Vec<(String, Vec<(String, String)>)>;
        let read: Vec<Entries> = self.query_spread(pipe).await?;
        let mut pages = Vec::with_capacity(from.len());
        for (&(partition, after), entries) in from.iter().zip(read) {
            let more = entries.len() == limit;
            let mut page = FeedPage {
                partition,
                entries: Vec::with_capacity(entries.len()),
                through: after,
                more,
            };
            for (sid, fields) in entries {
                let position = position_of(&sid).unwrap_or(0);
                page.through = page.through.max(position);
                let Some(json) = fields.iter().find(|(f, _)| f == "e").map(|(_, v)| v) else {
                    continue;
                };
                let event: CloudEvent = serde_json::from_str(json).map_err(unavailable)?;
                page.entries.push(LogEntry {
                    position,
                    event: Arc::new(event),
                });
            }
            pages.push(page);
        }
        Ok(pages)
    }

    async fn feed_heads(
        &self,
        _partitions: u16,
        which: &[u16],
    ) -> Result<Vec<LogPosition>, StoreError> {
        if which.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for &n in which {
            pipe.cmd("XREVRANGE")
                .arg(self.feed_key(n))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        type Entries = Vec<(String, Vec<(String, String)>)>;
        let last: Vec<Entries> = self.query_spread(pipe).await?;
        Ok(last
            .iter()
            .map(|e| e.first().and_then(|(sid, _)| position_of(sid)).unwrap_or(0))
            .collect())
    }
}

/// A stream's entries as XRANGE answers them.
type Entries = Vec<(String, Vec<(String, String)>)>;

impl RedisStore {
    /// `read_log` on a cluster: the resource's log is one stream per partition. Each partition is
    /// read with its master's clock; only entries older than the earliest of those clocks are
    /// final (a later append to any partition gets a stream id at or after its master's clock),
    /// so those are merged in position order and the rest wait for the next read. A reader's
    /// positions therefore only grow, and nothing appended later can land behind one.
    async fn read_spread_log(
        &self,
        resource: &str,
        mut after: LogPosition,
        limit: usize,
        filter: EventFilter<'_>,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let per_partition = limit.clamp(16, 1000);
        let mut out = Vec::new();
        loop {
            let (from_id, from_n) = spread_parts(after);
            let reads = self.read_partitions().map(|n| {
                let start = if after == 0 {
                    "-".to_owned()
                } else if n > from_n {
                    from_id.clone()
                } else {
                    format!("({from_id}")
                };
                let key = self.part_key(n, &format!("log:{resource}"));
                self.with(move |mut c| async move {
                    redis::pipe()
                        .cmd("TIME")
                        .cmd("XRANGE")
                        .arg(&key)
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(per_partition)
                        .query_async::<((u64, u64), Entries)>(&mut c)
                        .await
                })
            });
            let pages = futures::future::try_join_all(reads).await?;
            // Positions below `bound` are all known: below every master's clock, and within the
            // entries each full page returned.
            let mut bound = LogPosition::MAX;
            let mut full = false;
            let mut entries = Vec::new();
            for (n, ((secs, micros), page)) in pages.into_iter().enumerate() {
                bound = bound.min(spread_floor(secs * 1000 + micros / 1000));
                if page.len() == per_partition {
                    full = true;
                    if let Some(last) = page
                        .last()
                        .and_then(|(sid, _)| spread_position(sid, n as u16))
                    {
                        bound = bound.min(last + 1);
                    }
                }
                for (sid, fields) in page {
                    let Some(position) = spread_position(&sid, n as u16) else {
                        continue;
                    };
                    if let Some((_, json)) = fields.into_iter().find(|(f, _)| f == "e") {
                        entries.push((position, json));
                    }
                }
            }
            entries.retain(|(p, _)| *p > after && *p < bound);
            entries.sort_unstable_by_key(|(p, _)| *p);
            for (position, json) in entries {
                let event: CloudEvent = serde_json::from_str(&json).map_err(unavailable)?;
                if filter(&event) {
                    out.push(LogEntry {
                        position,
                        event: Arc::new(event),
                    });
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            if !full || bound <= after + 1 {
                return Ok(out);
            }
            after = bound - 1;
        }
    }
}
