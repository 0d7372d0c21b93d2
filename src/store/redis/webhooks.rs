//! `RedisStore`: webhook subscriptions, delivery records, dead letters and pending deliveries.

use super::*;
use crate::store::WebhookStore;

/// How often a subscription change is retried when another change won the race.
const UPDATE_TRIES: usize = 16;

#[async_trait]
impl WebhookStore for RedisStore {
    async fn put_subscription(&self, subscription: &Subscription) -> Result<(), StoreError> {
        let key = self.key("subs");
        let json = serde_json::to_string(subscription).map_err(unavailable)?;
        let id = subscription.id.to_string();
        self.with(|mut c| async move { c.hset::<_, _, _, ()>(&key, id, json).await })
            .await
    }

    async fn get_subscription(&self, id: Uuid) -> Result<Option<Subscription>, StoreError> {
        let key = self.key("subs");
        let json: Option<String> = self
            .with(|mut c| async move { c.hget(&key, id.to_string()).await })
            .await?;
        json.map(|j| serde_json::from_str(&j).map_err(unavailable))
            .transpose()
    }

    async fn update_subscription(
        &self,
        id: Uuid,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>, StoreError> {
        // Optimistic: write the changed copy only if the stored one is still what was read.
        let (key, field) = (self.key("subs"), id.to_string());
        for _ in 0..UPDATE_TRIES {
            let (k, f) = (key.clone(), field.clone());
            let read: Option<String> = self
                .with(|mut c| async move { c.hget(&k, &f).await })
                .await?;
            let Some(read) = read else {
                return Ok(None);
            };
            let mut s: Subscription = serde_json::from_str(&read).map_err(unavailable)?;
            s.apply(&change);
            let json = serde_json::to_string(&s).map_err(unavailable)?;
            let (k, f, script) = (key.clone(), field.clone(), self.swap.clone());
            let swapped: i64 = self
                .with(|mut c| async move {
                    script
                        .key(&k)
                        .arg(&f)
                        .arg(&read)
                        .arg(&json)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            match swapped {
                1 => return Ok(Some(s)),
                -1 => return Ok(None),
                _ => continue,
            }
        }
        Err(unavailable("the subscription kept changing; try again"))
    }

    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StoreError> {
        let (key, dlv) = (self.key("subs"), self.key(&format!("dlv:{id}")));
        let n: i64 = self
            .with(|mut c| async move {
                let _: () = c.del(&dlv).await?;
                c.hdel(&key, id.to_string()).await
            })
            .await?;
        Ok(n > 0)
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let key = self.key("subs");
        let all: Vec<String> = self
            .with(|mut c| async move { c.hvals(&key).await })
            .await?;
        Ok(all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    async fn record_delivery(
        &self,
        subscription: Uuid,
        record: DeliveryRecord,
    ) -> Result<(), StoreError> {
        let key = self.key(&format!("dlv:{subscription}"));
        let json = serde_json::to_string(&record).map_err(unavailable)?;
        let keep = crate::store::memory::DELIVERIES_KEEP as isize;
        self.with(|mut c| async move {
            redis::pipe()
                .lpush(&key, json)
                .ltrim(&key, 0, keep - 1)
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn deliveries(&self, subscription: Uuid) -> Result<Vec<DeliveryRecord>, StoreError> {
        let key = self.key(&format!("dlv:{subscription}"));
        let all: Vec<String> = self
            .with(|mut c| async move { c.lrange(&key, 0, -1).await })
            .await?;
        Ok(all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let key = self.key("dead");
        let json = serde_json::to_string(letter).map_err(unavailable)?;
        let id = letter.id.to_string();
        self.with(|mut c| async move { c.hset::<_, _, _, ()>(&key, id, json).await })
            .await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let key = self.key("dead");
        let all: Vec<String> = self
            .with(|mut c| async move { c.hvals(&key).await })
            .await?;
        let mut letters: Vec<DeadLetter> = all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        letters.sort_by_key(|l| l.dead_at);
        Ok(letters)
    }

    async fn take_dead_letters(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            let key = self.key("dead");
            let field = id.to_string();
            let json: Option<String> = self
                .with(|mut c| async move {
                    let v: Option<String> = c.hget(&key, &field).await?;
                    let _: i64 = c.hdel(&key, &field).await?;
                    Ok(v)
                })
                .await?;
            if let Some(j) = json {
                out.push(serde_json::from_str(&j).map_err(unavailable)?);
            }
        }
        Ok(out)
    }

    async fn put_pending(&self, deliveries: &[PendingDelivery]) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let key = self.key("pending");
        let mut fields = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let json = serde_json::to_string(d).map_err(unavailable)?;
            fields.push((
                PendingDelivery::key(d.subscription, d.position, &d.event.id),
                json,
            ));
        }
        self.with(|mut c| async move { c.hset_multiple::<_, _, _, ()>(&key, &fields).await })
            .await
    }

    async fn remove_pending(&self, field: &str) -> Result<(), StoreError> {
        let key = self.key("pending");
        let field = field.to_owned();
        self.with(|mut c| async move { c.hdel::<_, _, ()>(&key, field).await })
            .await
    }

    async fn pending(&self) -> Result<Vec<PendingDelivery>, StoreError> {
        let key = self.key("pending");
        let all: Vec<String> = self
            .with(|mut c| async move { c.hvals(&key).await })
            .await?;
        Ok(all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }
}
