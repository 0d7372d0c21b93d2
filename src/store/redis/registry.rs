//! `RedisStore`: the resource registry and delegations.

use super::*;
use crate::store::RegistryStore;

#[async_trait]
impl RegistryStore for RedisStore {
    async fn policy(&self) -> Result<Arc<Policy>, StoreError> {
        // Every change of the registry or the delegations counts `policy:ver` up after it is
        // written, so the policy read with a version is at least as new as that version.
        let ver = self.tagged("policy", "policy:ver");
        let now: Option<u64> = {
            let ver = ver.clone();
            self.with(|mut c| async move { c.get(&ver).await }).await?
        };
        // An absent version reads as 0, as the policy records it.
        if let Some((at, policy)) = self.policy_cache().as_ref()
            && policy.version() == Some(now.unwrap_or(0))
            && at.elapsed() < POLICY_MAX_AGE
        {
            return Ok(policy.clone());
        }
        let (res, dlg) = (self.tagged("policy", "res"), self.tagged("policy", "dlg"));
        let (version, resources, delegations): (Option<u64>, Vec<String>, Vec<String>) = self
            .with(|mut c| async move {
                redis::pipe()
                    .get(&ver)
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
        let policy = Arc::new(Policy::new(resources, delegations).at_version(version.unwrap_or(0)));
        *self.policy_cache() = Some((std::time::Instant::now(), policy.clone()));
        Ok(policy)
    }

    /// On one Redis, the policy as last read: the commit script checks its version instead.
    async fn policy_for_change(&self) -> Result<Arc<Policy>, StoreError> {
        if !self.cluster
            && let Some((at, policy)) = self.policy_cache().as_ref()
            && at.elapsed() < POLICY_MAX_AGE
        {
            return Ok(policy.clone());
        }
        self.policy().await
    }

    async fn put_resource(&self, entry: ResourceEntry) -> Result<(), StoreError> {
        let json = serde_json::to_string(&entry).map_err(unavailable)?;
        let mut change = redis::cmd("HSET");
        change
            .arg(self.tagged("policy", "res"))
            .arg(entry.id.to_string())
            .arg(json);
        self.change_policy(change).await.map(|_| ())
    }

    async fn delete_resource(&self, id: &ResourceUrn) -> Result<bool, StoreError> {
        let mut change = redis::cmd("HDEL");
        change.arg(self.tagged("policy", "res")).arg(id.to_string());
        Ok(self.change_policy(change).await? > 0)
    }

    async fn add_delegation(&self, entry: DelegationEntry) -> Result<(), StoreError> {
        let json = serde_json::to_string(&entry).map_err(unavailable)?;
        let mut change = redis::cmd("SADD");
        change.arg(self.tagged("policy", "dlg")).arg(json);
        self.change_policy(change).await.map(|_| ())
    }

    async fn remove_delegation(&self, entry: &DelegationEntry) -> Result<bool, StoreError> {
        let json = serde_json::to_string(entry).map_err(unavailable)?;
        let mut change = redis::cmd("SREM");
        change.arg(self.tagged("policy", "dlg")).arg(json);
        Ok(self.change_policy(change).await? > 0)
    }
}

impl RedisStore {
    /// Runs `change` (a write to the registry or the delegations) and counts `policy:ver` up in
    /// the same MULTI, after it; returns what `change` answered (the number it added or removed).
    async fn change_policy(&self, change: redis::Cmd) -> Result<i64, StoreError> {
        let ver = self.tagged("policy", "policy:ver");
        let (n,): (i64,) = self
            .with(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .add_command(change)
                    .incr(&ver, 1)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(n)
    }
}
