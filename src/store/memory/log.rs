//! `MemoryStore`: the poll log per resource, the global log, held-back events and publish dedupe.

use super::*;
use crate::store::EventLog;

#[async_trait]
impl EventLog for MemoryStore {
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

    async fn read_feed(
        &self,
        partitions: u16,
        from: &[(u16, LogPosition)],
        limit: usize,
    ) -> Result<Vec<FeedPage>, StoreError> {
        let inner = self.lock();
        super::super::split_global_log(partitions, from, limit, |after, limit| {
            Ok(inner
                .log
                .range(after + 1..)
                .take(limit)
                .map(|(p, e)| LogEntry {
                    position: *p,
                    event: e.event.clone(),
                })
                .collect())
        })
    }

    async fn feed_heads(
        &self,
        _partitions: u16,
        which: &[u16],
    ) -> Result<Vec<LogPosition>, StoreError> {
        let head = self.lock().next_position;
        Ok(vec![head; which.len()])
    }
}
