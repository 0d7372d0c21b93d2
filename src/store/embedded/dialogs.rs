//! `EmbeddedStore`: dialogs and their own event and change logs.

use super::*;
use crate::store::DialogStore;

#[async_trait]
impl DialogStore for EmbeddedStore {
    async fn load_dialog(&self, id: Uuid) -> Result<Option<Dialog>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(DIALOGS).map_err(unavailable)?;
            let children = txn.open_table(CHILDREN).map_err(unavailable)?;
            match t.get(id.as_u128()).map_err(unavailable)? {
                Some(v) => dialog_state(id, v.value(), &children),
                None => Ok(None),
            }
        })
        .await
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let now = Utc::now();
        let prepared = PreparedCommit::of(commit, now)?;
        self.write_logged(super::wal::Logged::Commit {
            commit: prepared,
            now_ms: now.timestamp_millis(),
        })
        .await
    }

    async fn list_dialogs(&self, query: &DialogQuery) -> Result<Vec<Dialog>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(DIALOGS).map_err(unavailable)?;
            let children = txn.open_table(CHILDREN).map_err(unavailable)?;
            let start = match query.after {
                Some(after) => std::ops::Bound::Excluded(after.as_u128()),
                None => std::ops::Bound::Unbounded,
            };
            let mut out = Vec::new();
            for row in t
                .range::<u128>((start, std::ops::Bound::Unbounded))
                .map_err(unavailable)?
            {
                let (k, v) = row.map_err(unavailable)?;
                // The filter reads only the dialog's own fields: children only for what it admits.
                let Some(mut d) = dialog_header(v.value())? else {
                    continue;
                };
                if query.admits(&d) {
                    add_children(&mut d, Uuid::from_u128(k.value()), &children)?;
                    out.push(d);
                    if out.len() == query.limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn dialog_events(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<CloudEvent>>, StoreError> {
        self.read(|txn| id_range(txn, DLOG, id, after, limit, false))
            .await
    }

    async fn dialog_changes(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Change>>, StoreError> {
        self.read(|txn| id_range(txn, DCH, id, after, limit, true))
            .await
    }
}
