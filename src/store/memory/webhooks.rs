//! `MemoryStore`: webhook subscriptions, delivery records, dead letters and pending deliveries.

use super::*;
use crate::store::WebhookStore;

#[async_trait]
impl WebhookStore for MemoryStore {
    async fn put_subscription(&self, subscription: &Subscription) -> Result<(), StoreError> {
        self.lock()
            .subscriptions
            .insert(subscription.id, subscription.clone());
        Ok(())
    }

    async fn get_subscription(&self, id: Uuid) -> Result<Option<Subscription>, StoreError> {
        Ok(self.lock().subscriptions.get(&id).cloned())
    }

    async fn update_subscription(
        &self,
        id: Uuid,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>, StoreError> {
        Ok(self.lock().subscriptions.get_mut(&id).map(|s| {
            s.apply(&change);
            s.clone()
        }))
    }

    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        inner.deliveries.remove(&id);
        Ok(inner.subscriptions.remove(&id).is_some())
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        Ok(self.lock().subscriptions.values().cloned().collect())
    }

    async fn record_delivery(
        &self,
        subscription: Uuid,
        record: DeliveryRecord,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let list = inner.deliveries.entry(subscription).or_default();
        list.push_front(record);
        list.truncate(DELIVERIES_KEEP);
        Ok(())
    }

    async fn deliveries(&self, subscription: Uuid) -> Result<Vec<DeliveryRecord>, StoreError> {
        Ok(self
            .lock()
            .deliveries
            .get(&subscription)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.lock().dead.insert(letter.id, letter.clone());
        Ok(())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.lock().dead.values().cloned().collect())
    }

    async fn take_dead_letters(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
        let mut inner = self.lock();
        Ok(ids.iter().filter_map(|id| inner.dead.remove(id)).collect())
    }

    async fn put_pending(
        &self,
        partition: u16,
        deliveries: &[PendingDelivery],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let set = inner.pending.entry(partition).or_default();
        for d in deliveries {
            set.insert(
                PendingDelivery::key(d.subscription, d.position, &d.event.id),
                d.clone(),
            );
        }
        Ok(())
    }

    async fn remove_pending(&self, partition: u16, key: &str) -> Result<(), StoreError> {
        if let Some(set) = self.lock().pending.get_mut(&partition) {
            set.remove(key);
        }
        Ok(())
    }

    async fn pending(&self, partition: u16) -> Result<Vec<PendingDelivery>, StoreError> {
        Ok(self
            .lock()
            .pending
            .get(&partition)
            .map(|set| set.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn adopt_unpartitioned(
        &self,
        _partitions: u16,
    ) -> Result<Option<LogPosition>, StoreError> {
        // Nothing outlives the process: there is nothing older to adopt.
        Ok(None)
    }
}
