//! `MemoryStore`: dialogs and their own event and change logs.

use super::*;
use crate::store::DialogStore;

#[async_trait]
impl DialogStore for MemoryStore {
    async fn load_dialog(&self, id: Uuid) -> Result<Option<Dialog>, StoreError> {
        Ok(self
            .lock()
            .dialogs
            .get(&id)
            .and_then(|s| s.dialog.as_deref().cloned()))
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut inner = self.lock();
        let current = inner.dialogs.get(&commit.dialog_id).map(|s| s.sequence);
        match (commit.create, current) {
            (true, Some(_)) => return Err(StoreError::AlreadyExists),
            (false, None) => return Err(StoreError::Conflict),
            (false, Some(seq)) if seq != commit.expected_sequence => {
                return Err(StoreError::Conflict);
            }
            (false, Some(_))
                if inner
                    .dialogs
                    .get(&commit.dialog_id)
                    .is_some_and(|s| s.dialog.is_none()) =>
            {
                return Err(StoreError::Conflict);
            }
            _ => {}
        }
        let new_sequence = commit.expected_sequence + commit.events.len() as u64;
        let slot = inner
            .dialogs
            .entry(commit.dialog_id)
            .or_insert_with(|| Slot {
                dialog: None,
                sequence: 0,
                log: Default::default(),
                changes: Default::default(),
            });
        if let Some(change) = Change::of(
            &commit.events,
            commit.state.as_ref().map(|d| d.revision),
            now,
        ) {
            if slot.changes.len() == DIALOG_LOG_KEEP {
                slot.changes.pop_front();
            }
            slot.changes.push_back(Arc::new(change));
        }
        slot.dialog = commit.state;
        slot.sequence = new_sequence;
        for e in &commit.events {
            if slot.log.len() == DIALOG_LOG_KEEP {
                slot.log.pop_front();
            }
            slot.log.push_back(e.clone());
        }
        if commit.publish && !commit.events.is_empty() {
            let pending = inner
                .held_until
                .get(&commit.dialog_id)
                .copied()
                .filter(|t| *t > now);
            let hold = match (commit.hold_until.filter(|t| *t > now), pending) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            match hold {
                Some(release_at) => {
                    inner.held_until.insert(commit.dialog_id, release_at);
                    inner.held.push(Held {
                        release_at,
                        events: commit.events,
                    });
                }
                None => {
                    for e in commit.events {
                        inner.append(e, now);
                    }
                }
            }
        }
        Ok(())
    }

    async fn list_dialogs(&self, query: &DialogQuery) -> Result<Vec<Dialog>, StoreError> {
        let inner = self.lock();
        let start = match query.after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        Ok(inner
            .dialogs
            .range((start, std::ops::Bound::Unbounded))
            .filter_map(|(_, s)| s.dialog.as_deref())
            .filter(|d| query.admits(d))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn dialog_events(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<CloudEvent>>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .dialogs
            .get(&id)
            .map(|s| {
                s.log
                    .iter()
                    .filter(|e| e.dialogsequence.unwrap_or(0) > after)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn dialog_changes(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Change>>, StoreError> {
        let inner = self.lock();
        let Some(slot) = inner.dialogs.get(&id) else {
            return Ok(Vec::new());
        };
        let newer: Vec<Arc<Change>> = slot
            .changes
            .iter()
            .filter(|c| c.last > after)
            .cloned()
            .collect();
        let skip = newer.len().saturating_sub(limit);
        Ok(newer.into_iter().skip(skip).collect())
    }
}
