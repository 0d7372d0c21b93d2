//! `EmbeddedStore`: the resource registry and delegations.

use super::*;
use crate::store::RegistryStore;

#[async_trait]
impl RegistryStore for EmbeddedStore {
    async fn policy(&self) -> Result<Arc<Policy>, StoreError> {
        Ok(self.current_policy())
    }

    async fn put_resource(&self, entry: ResourceEntry) -> Result<(), StoreError> {
        let current = self.current_policy();
        let mut resources: Vec<ResourceEntry> = current
            .resources()
            .filter(|r| r.id != entry.id)
            .cloned()
            .collect();
        resources.push(entry);
        self.save_policy(Policy::new(resources, current.delegations().to_vec()))
            .await
    }

    async fn delete_resource(&self, id: &ResourceUrn) -> Result<bool, StoreError> {
        let current = self.current_policy();
        let resources: Vec<ResourceEntry> = current
            .resources()
            .filter(|r| &r.id != id)
            .cloned()
            .collect();
        let removed = resources.len() != current.resources().count();
        self.save_policy(Policy::new(resources, current.delegations().to_vec()))
            .await?;
        Ok(removed)
    }

    async fn add_delegation(&self, entry: DelegationEntry) -> Result<(), StoreError> {
        let current = self.current_policy();
        let mut delegations = current.delegations().to_vec();
        if !delegations.contains(&entry) {
            delegations.push(entry);
        }
        self.save_policy(Policy::new(
            current.resources().cloned().collect(),
            delegations,
        ))
        .await
    }

    async fn remove_delegation(&self, entry: &DelegationEntry) -> Result<bool, StoreError> {
        let current = self.current_policy();
        let mut delegations = current.delegations().to_vec();
        let before = delegations.len();
        delegations.retain(|d| d != entry);
        let removed = delegations.len() != before;
        self.save_policy(Policy::new(
            current.resources().cloned().collect(),
            delegations,
        ))
        .await?;
        Ok(removed)
    }
}
