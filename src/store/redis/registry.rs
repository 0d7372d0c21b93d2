//! `RedisStore`: the resource registry and delegations.

use super::*;
use crate::store::RegistryStore;

#[async_trait]
impl RegistryStore for RedisStore {
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
}
