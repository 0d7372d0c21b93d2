//! `EmbeddedStore`: health, leases, saved read positions and the node list.

use super::*;
use crate::store::{Claim, ClusterStore};

#[async_trait]
impl ClusterStore for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read_settled(Settle::Unlogged, |_| Ok(())).await
    }

    async fn claim_partitions(
        &self,
        _holder: &str,
        partitions: u16,
        _ttl: Duration,
        taking: bool,
        release: &[u16],
    ) -> Result<Claim, StoreError> {
        // One node per data_dir (locked): it holds every partition.
        Ok(Claim::single_node(partitions, taking, release))
    }

    async fn cursor(&self, name: &str) -> Result<Option<LogPosition>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(CURSORS).map_err(unavailable)?;
            Ok(t.get(name).map_err(unavailable)?.map(|v| v.value()))
        })
        .await
    }

    async fn set_cursor(&self, name: &str, position: LogPosition) -> Result<(), StoreError> {
        self.write_logged(super::wal::Logged::Cursor {
            name: name.to_owned(),
            position,
        })
        .await
    }

    async fn set_cursors(&self, cursors: &[(String, LogPosition)]) -> Result<(), StoreError> {
        // One job, one record in the commit log and one answer, however many partitions moved.
        let logged = cursors
            .iter()
            .map(|(name, position)| super::wal::Logged::Cursor {
                name: name.clone(),
                position: *position,
            })
            .collect();
        self.write_logged_all(logged).await
    }

    async fn init_cursor(
        &self,
        name: &str,
        position: LogPosition,
    ) -> Result<LogPosition, StoreError> {
        let name = name.to_owned();
        self.write(move |txn| {
            let mut t = txn.open_table(CURSORS).map_err(unavailable)?;
            let saved = t
                .get(name.as_str())
                .map_err(unavailable)?
                .map(|v| v.value());
            match saved {
                Some(p) => Ok(p),
                None => {
                    t.insert(name.as_str(), position).map_err(unavailable)?;
                    Ok(position)
                }
            }
        })
        .await
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        *self.node.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((node.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let node = self.node.lock().unwrap_or_else(|e| e.into_inner());
        Ok(node
            .iter()
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(n, _)| n.clone())
            .collect())
    }
}
