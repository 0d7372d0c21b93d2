//! `RedisStore`: the poll log per resource, the global log, held-back events and publish dedupe.

use super::*;
use crate::store::EventLog;

#[async_trait]
impl EventLog for RedisStore {
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
            .key(self.feed_of(&event))
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
            .arg(self.feed_key(0))
            .arg(self.retention_ms());
        let n: i64 = self
            .with(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(n as usize)
    }

    async fn prune_log(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut keys = self.scan_keys(self.key("log:*")).await?;
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
        let read: Vec<Entries> = self
            .with(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
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
        let last: Vec<Entries> = self
            .with(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        Ok(last
            .iter()
            .map(|e| e.first().and_then(|(sid, _)| position_of(sid)).unwrap_or(0))
            .collect())
    }
}
