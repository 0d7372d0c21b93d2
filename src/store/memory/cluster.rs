//! `MemoryStore`: health, leases, saved read positions and the node list.

use super::*;
use crate::store::{Claim, ClusterStore};

#[async_trait]
impl ClusterStore for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn claim_partitions(
        &self,
        _holder: &str,
        partitions: u16,
        _ttl: std::time::Duration,
        taking: bool,
        release: &[u16],
    ) -> Result<Claim, StoreError> {
        // One node: it holds every partition.
        Ok(Claim::single_node(partitions, taking, release))
    }

    async fn cursor(&self, name: &str) -> Result<Option<LogPosition>, StoreError> {
        Ok(self.lock().cursors.get(name).copied())
    }

    async fn set_cursor(&self, name: &str, position: LogPosition) -> Result<(), StoreError> {
        self.lock().cursors.insert(name.to_owned(), position);
        Ok(())
    }

    async fn init_cursor(
        &self,
        name: &str,
        position: LogPosition,
    ) -> Result<LogPosition, StoreError> {
        Ok(*self
            .lock()
            .cursors
            .entry(name.to_owned())
            .or_insert(position))
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: std::time::Duration) -> Result<(), StoreError> {
        self.lock().node = Some((node.clone(), std::time::Instant::now() + ttl));
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .node
            .iter()
            .filter(|(_, expires)| *expires > std::time::Instant::now())
            .map(|(n, _)| n.clone())
            .collect())
    }
}
