//! `EmbeddedStore`: the poll log per resource, the global log, held-back events and publish dedupe.

use super::*;
use crate::store::EventLog;

#[async_trait]
impl EventLog for EmbeddedStore {
    async fn log_position(
        &self,
        resource: &str,
        event_id: &str,
    ) -> Result<Option<LogPosition>, StoreError> {
        let key = str_key(&[resource, event_id]);
        self.read(|txn| {
            let t = txn.open_table(EV_INDEX).map_err(unavailable)?;
            Ok(t.get(key.as_slice())
                .map_err(unavailable)?
                .map(|v| v.value()))
        })
        .await
    }

    async fn read_log(
        &self,
        resource: &str,
        after: LogPosition,
        limit: usize,
        filter: EventFilter<'_>,
    ) -> Result<Vec<LogEntry>, StoreError> {
        self.read(|txn| {
            let index = txn.open_table(BY_RESOURCE).map_err(unavailable)?;
            let log = txn.open_table(GLOG).map_err(unavailable)?;
            let (lo, hi) = (
                str_num_key(resource, after.saturating_add(1)),
                str_num_key(resource, u64::MAX),
            );
            let mut out = Vec::new();
            for row in index
                .range(lo.as_slice()..=hi.as_slice())
                .map_err(unavailable)?
            {
                let (k, _) = row.map_err(unavailable)?;
                let k = k.value();
                let mut n = [0u8; 8];
                n.copy_from_slice(&k[k.len() - 8..]);
                let position = u64::from_be_bytes(n);
                let Some(v) = log.get(position).map_err(unavailable)? else {
                    continue;
                };
                let (_, event) = event_of(v.value())?;
                if filter(&event) {
                    out.push(LogEntry {
                        position,
                        event: Arc::new(event),
                    });
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn append_external(&self, event: CloudEvent) -> Result<bool, StoreError> {
        let prepared = PreparedEvent::of(&event)?;
        let marker = str_key(&[&prepared.resource, &event.source, &event.id]);
        drop(event);
        self.write(move |txn| {
            let now_ms = Utc::now().timestamp_millis();
            {
                let mut ext = txn.open_table(EXT).map_err(unavailable)?;
                if ext.get(marker.as_slice()).map_err(unavailable)?.is_some() {
                    return Ok(false);
                }
                ext.insert(marker.as_slice(), now_ms).map_err(unavailable)?;
            }
            let mut tables = LogTables::open(txn)?;
            tables.append(&prepared.resource, &prepared.id, &prepared.json, now_ms)?;
            tables.finish()?;
            Ok(true)
        })
        .await
    }

    async fn release_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let now_ms = now.timestamp_millis();
        let due_key = held_key(now_ms, u64::MAX);
        // Most calls find nothing due: look before asking for a write.
        let any = self
            .read(|txn| {
                let t = txn.open_table(HELD).map_err(unavailable)?;
                Ok(t.range(..=due_key.as_slice())
                    .map_err(unavailable)?
                    .next()
                    .is_some())
            })
            .await?;
        if !any {
            return Ok(0);
        }
        self.write(move |txn| {
            let mut due = Vec::new();
            {
                let mut held = txn.open_table(HELD).map_err(unavailable)?;
                for row in held
                    .extract_from_if(..=due_key.as_slice(), |_, _| true)
                    .map_err(unavailable)?
                {
                    let (_, v) = row.map_err(unavailable)?;
                    due.push(from_json::<Vec<serde_json::Value>>(v.value())?);
                }
            }
            txn.open_table(HELD_UNTIL)
                .map_err(unavailable)?
                .retain(|_, t| t > now_ms)
                .map_err(unavailable)?;
            let mut released = 0;
            let mut tables = LogTables::open(txn)?;
            // Keys sort by release time, then commit order: one dialog's batches keep their order.
            for events in due {
                for e in &events {
                    let resource = e["resource"].as_str().unwrap_or_default();
                    let id = e["id"].as_str().unwrap_or_default();
                    tables.append(resource, id, &to_json(e)?, now_ms)?;
                    released += 1;
                }
            }
            tables.finish()?;
            Ok(released)
        })
        .await
    }

    async fn prune_log(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let before_ms = before.timestamp_millis();
        let is_old =
            |v: &[u8]| -> Result<bool, StoreError> { Ok(entry_of(v)?.appended_ms < before_ms) };
        let any = self
            .read(|txn| {
                let t = txn.open_table(GLOG).map_err(unavailable)?;
                match t.first().map_err(unavailable)? {
                    Some((_, v)) => is_old(v.value()),
                    None => Ok(false),
                }
            })
            .await?;
        if !any {
            return Ok(0);
        }
        self.write(move |txn| {
            let mut old = Vec::new();
            {
                let log = txn.open_table(GLOG).map_err(unavailable)?;
                for row in log.iter().map_err(unavailable)? {
                    let (k, v) = row.map_err(unavailable)?;
                    let (entry, event) = event_of(v.value())?;
                    if entry.appended_ms >= before_ms {
                        break;
                    }
                    old.push((k.value(), entry.resource, event.id, event.source));
                }
            }
            let mut log = txn.open_table(GLOG).map_err(unavailable)?;
            let mut index = txn.open_table(BY_RESOURCE).map_err(unavailable)?;
            let mut ids = txn.open_table(EV_INDEX).map_err(unavailable)?;
            let mut ext = txn.open_table(EXT).map_err(unavailable)?;
            for (position, resource, id, source) in &old {
                log.remove(*position).map_err(unavailable)?;
                index
                    .remove(str_num_key(resource, *position).as_slice())
                    .map_err(unavailable)?;
                let id_key = str_key(&[resource, id]);
                if ids
                    .get(id_key.as_slice())
                    .map_err(unavailable)?
                    .map(|v| v.value())
                    == Some(*position)
                {
                    ids.remove(id_key.as_slice()).map_err(unavailable)?;
                }
                ext.remove(str_key(&[resource, source, id]).as_slice())
                    .map_err(unavailable)?;
            }
            Ok(old.len())
        })
        .await
    }

    async fn read_feed(
        &self,
        partitions: u16,
        from: &[(u16, LogPosition)],
        limit: usize,
    ) -> Result<Vec<FeedPage>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(GLOG).map_err(unavailable)?;
            super::super::split_global_log(partitions, from, limit, |after, limit| {
                let mut out = Vec::new();
                for row in t.range(after.saturating_add(1)..).map_err(unavailable)? {
                    let (k, v) = row.map_err(unavailable)?;
                    let (_, event) = event_of(v.value())?;
                    out.push(LogEntry {
                        position: k.value(),
                        event: Arc::new(event),
                    });
                    if out.len() == limit {
                        break;
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    async fn feed_heads(
        &self,
        _partitions: u16,
        which: &[u16],
    ) -> Result<Vec<LogPosition>, StoreError> {
        // Asked for by a dispatcher no subscription can receive anything from, after each
        // commit: it takes the head as it will be once the commits answered before are applied,
        // without having them applied one by one.
        let head = self
            .read_settled(Settle::Wait, |txn| {
                let t = txn.open_table(META).map_err(unavailable)?;
                Ok(t.get("next_position")
                    .map_err(unavailable)?
                    .map(|v| v.value())
                    .unwrap_or(0))
            })
            .await?;
        Ok(vec![head; which.len()])
    }
}
