//! `MemoryStore`: the resource registry and delegations.

use super::*;
use crate::store::RegistryStore;

#[async_trait]
impl RegistryStore for MemoryStore {
    async fn policy(&self) -> Result<Arc<Policy>, StoreError> {
        Ok(self.lock().policy.clone())
    }

    async fn put_resource(&self, entry: ResourceEntry) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let mut resources: Vec<ResourceEntry> = inner
            .policy
            .resources()
            .filter(|r| r.id != entry.id)
            .cloned()
            .collect();
        resources.push(entry);
        inner.policy = Arc::new(Policy::new(resources, inner.policy.delegations().to_vec()));
        Ok(())
    }

    async fn delete_resource(&self, id: &ResourceUrn) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let before = inner.policy.resources().count();
        let resources: Vec<ResourceEntry> = inner
            .policy
            .resources()
            .filter(|r| &r.id != id)
            .cloned()
            .collect();
        let removed = resources.len() != before;
        inner.policy = Arc::new(Policy::new(resources, inner.policy.delegations().to_vec()));
        Ok(removed)
    }

    async fn add_delegation(&self, entry: DelegationEntry) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let mut delegations = inner.policy.delegations().to_vec();
        if !delegations.contains(&entry) {
            delegations.push(entry);
        }
        inner.policy = Arc::new(Policy::new(
            inner.policy.resources().cloned().collect(),
            delegations,
        ));
        Ok(())
    }

    async fn remove_delegation(&self, entry: &DelegationEntry) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let mut delegations = inner.policy.delegations().to_vec();
        let before = delegations.len();
        delegations.retain(|d| d != entry);
        let removed = delegations.len() != before;
        inner.policy = Arc::new(Policy::new(
            inner.policy.resources().cloned().collect(),
            delegations,
        ));
        Ok(removed)
    }
}
