//! `RedisStore`: health, leases, saved read positions and the node list.

use super::*;
use crate::store::{Claim, ClusterStore};

#[async_trait]
impl ClusterStore for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }

    async fn claim_partitions(
        &self,
        holder: &str,
        partitions: u16,
        ttl: Duration,
        taking: bool,
        release: &[u16],
    ) -> Result<Claim, StoreError> {
        let mut inv = self.partitions.prepare_invoke();
        inv.key(self.tagged("leases", "wmembers"))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .arg(partitions)
            .arg(self.tagged("leases", "lease:wp:"))
            .arg(if taking { "1" } else { "0" });
        for n in release {
            inv.arg(n);
        }
        let (owned, excess): (Vec<u16>, usize) = self
            .with(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(Claim { owned, excess })
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

    /// One pipeline (on a cluster, each cursor on its own master, all at once).
    async fn set_cursors(&self, cursors: &[(String, LogPosition)]) -> Result<(), StoreError> {
        if cursors.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (name, position) in cursors {
            pipe.set(self.key(&format!("cursor:{name}")), *position);
        }
        self.query_spread::<()>(pipe).await
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
        let key = self.tagged("nodes", &format!("node:{}", node.id));
        let json = serde_json::to_string(node).map_err(unavailable)?;
        let ms = ttl.as_millis() as u64;
        if !self.cluster {
            return self
                .with(|mut c| async move { c.pset_ex::<_, _, ()>(&key, json, ms).await })
                .await;
        }
        // SCAN would visit one master only: on a cluster the live nodes are also listed in a
        // sorted set (by when their entry lapses), in the same slot as their entries.
        let (list, id) = (self.tagged("nodes", "nodes"), node.id.clone());
        let until = Utc::now().timestamp_millis() + ms as i64;
        self.with(|mut c| async move {
            redis::pipe()
                .pset_ex(&key, json, ms)
                .ignore()
                .zadd(&list, id, until)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let keys = if self.cluster {
            let list = self.tagged("nodes", "nodes");
            let now = Utc::now().timestamp_millis();
            let ids: Vec<String> = self
                .with(|mut c| async move {
                    let _: i64 = c.zrembyscore(&list, "-inf", now).await?;
                    c.zrange(&list, 0, -1).await
                })
                .await?;
            ids.iter()
                .map(|id| self.tagged("nodes", &format!("node:{id}")))
                .collect()
        } else {
            self.scan_keys(self.key("node:*")).await?
        };
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
