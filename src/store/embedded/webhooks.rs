//! `EmbeddedStore`: webhook subscriptions, delivery records, dead letters and pending deliveries.

use super::*;
use crate::store::{UNPARTITIONED_CURSOR, WebhookStore};

#[async_trait]
impl WebhookStore for EmbeddedStore {
    async fn put_subscription(&self, subscription: &Subscription) -> Result<(), StoreError> {
        let (key, json) = (subscription.id.as_u128(), to_json(subscription)?);
        self.write(move |txn| {
            txn.open_table(SUBS)
                .map_err(unavailable)?
                .insert(key, json.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_subscription(&self, id: Uuid) -> Result<Option<Subscription>, StoreError> {
        self.read_settled(Settle::Unlogged, |txn| {
            let t = txn.open_table(SUBS).map_err(unavailable)?;
            t.get(id.as_u128())
                .map_err(unavailable)?
                .map(|v| from_json(v.value()))
                .transpose()
        })
        .await
    }

    async fn update_subscription(
        &self,
        id: Uuid,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>, StoreError> {
        let key = id.as_u128();
        self.write(move |txn| {
            let mut t = txn.open_table(SUBS).map_err(unavailable)?;
            let stored = t.get(key).map_err(unavailable)?;
            let Some(mut s) = stored
                .map(|v| from_json::<Subscription>(v.value()))
                .transpose()?
            else {
                return Ok(None);
            };
            s.apply(&change);
            t.insert(key, to_json(&s)?.as_slice())
                .map_err(unavailable)?;
            Ok(Some(s))
        })
        .await
    }

    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StoreError> {
        self.write(move |txn| {
            let (lo, hi) = (id_key(id, 0), id_key(id, u64::MAX));
            txn.open_table(DELIVERIES)
                .map_err(unavailable)?
                .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
                .map_err(unavailable)?;
            txn.open_table(META)
                .map_err(unavailable)?
                .remove(delivery_count_key(id).as_str())
                .map_err(unavailable)?;
            let removed = txn
                .open_table(SUBS)
                .map_err(unavailable)?
                .remove(id.as_u128())
                .map_err(unavailable)?
                .is_some();
            Ok(removed)
        })
        .await
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.read_settled(Settle::Unlogged, |txn| {
            let t = txn.open_table(SUBS).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(unavailable)? {
                let (_, v) = row.map_err(unavailable)?;
                out.push(from_json(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn record_delivery(
        &self,
        subscription: Uuid,
        record: DeliveryRecord,
    ) -> Result<(), StoreError> {
        let json = to_json(&record)?;
        self.write(move |txn| {
            let mut meta = txn.open_table(META).map_err(unavailable)?;
            let n = meta
                .get("delivery_counter")
                .map_err(unavailable)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert("delivery_counter", n).map_err(unavailable)?;
            let mut t = txn.open_table(DELIVERIES).map_err(unavailable)?;
            t.insert(id_key(subscription, n).as_slice(), json.as_slice())
                .map_err(unavailable)?;
            // Keep the newest DELIVERIES_KEEP of this subscription: a count per subscription
            // says when the oldest goes, so a record costs a lookup, not a walk over the kept.
            let (lo, hi) = (id_key(subscription, 0), id_key(subscription, u64::MAX));
            let keep = crate::store::memory::DELIVERIES_KEEP as u64;
            let count_key = delivery_count_key(subscription);
            let mut count = match meta.get(count_key.as_str()).map_err(unavailable)? {
                Some(c) => c.value() + 1,
                // Kept before counts were: counted once.
                None => t
                    .range(lo.as_slice()..=hi.as_slice())
                    .map_err(unavailable)?
                    .count() as u64,
            };
            while count > keep {
                let oldest = t
                    .range(lo.as_slice()..=hi.as_slice())
                    .map_err(unavailable)?
                    .next()
                    .transpose()
                    .map_err(unavailable)?
                    .map(|(k, _)| k.value().to_vec());
                let Some(oldest) = oldest else { break };
                t.remove(oldest.as_slice()).map_err(unavailable)?;
                count -= 1;
            }
            meta.insert(count_key.as_str(), count)
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn deliveries(&self, subscription: Uuid) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.read_settled(Settle::Unlogged, |txn| {
            let t = txn.open_table(DELIVERIES).map_err(unavailable)?;
            let (lo, hi) = (id_key(subscription, 0), id_key(subscription, u64::MAX));
            let mut out = Vec::new();
            for row in t
                .range(lo.as_slice()..=hi.as_slice())
                .map_err(unavailable)?
                .rev()
            {
                let (_, v) = row.map_err(unavailable)?;
                out.push(from_json(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let (key, json) = (letter.id.as_u128(), to_json(letter)?);
        self.write(move |txn| {
            txn.open_table(DEAD)
                .map_err(unavailable)?
                .insert(key, json.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.read_settled(Settle::Unlogged, |txn| {
            let t = txn.open_table(DEAD).map_err(unavailable)?;
            let mut out: Vec<DeadLetter> = Vec::new();
            for row in t.iter().map_err(unavailable)? {
                let (_, v) = row.map_err(unavailable)?;
                out.push(from_json(v.value())?);
            }
            out.sort_by_key(|l| l.dead_at);
            Ok(out)
        })
        .await
    }

    async fn take_dead_letters(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
        let ids = ids.to_vec();
        self.write(move |txn| {
            let mut t = txn.open_table(DEAD).map_err(unavailable)?;
            let mut out = Vec::new();
            for id in ids {
                if let Some(v) = t.remove(id.as_u128()).map_err(unavailable)? {
                    out.push(from_json(v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_pending(
        &self,
        partition: u16,
        deliveries: &[PendingDelivery],
    ) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let key = PendingDelivery::key(d.subscription, d.position, &d.event.id);
            rows.push((pending_key(partition, &key), to_json(d)?));
        }
        self.write(move |txn| {
            let mut t = txn.open_table(PENDING).map_err(unavailable)?;
            for (k, v) in &rows {
                t.insert(k.as_str(), v.as_slice()).map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }

    async fn remove_pending(&self, partition: u16, key: &str) -> Result<(), StoreError> {
        let key = pending_key(partition, key);
        self.write(move |txn| {
            txn.open_table(PENDING)
                .map_err(unavailable)?
                .remove(key.as_str())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn pending(&self, partition: u16) -> Result<Vec<PendingDelivery>, StoreError> {
        let (from, to) = (format!("{partition:05}|"), format!("{partition:05}}}"));
        self.read_settled(Settle::Unlogged, |txn| {
            let t = txn.open_table(PENDING).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.range(from.as_str()..to.as_str()).map_err(unavailable)? {
                let (_, v) = row.map_err(unavailable)?;
                out.push(from_json(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn adopt_unpartitioned(
        &self,
        partitions: u16,
    ) -> Result<Option<LogPosition>, StoreError> {
        self.write(move |txn| {
            let mut t = txn.open_table(PENDING).map_err(unavailable)?;
            // Keys of a version without partitions start with the subscription id, whose sixth
            // character is never the '|' after a partition number.
            let mut old = Vec::new();
            for row in t.iter().map_err(unavailable)? {
                let (k, v) = row.map_err(unavailable)?;
                if k.value().as_bytes().get(5) != Some(&b'|') {
                    old.push((k.value().to_owned(), v.value().to_vec()));
                }
            }
            for (key, value) in &old {
                let d: PendingDelivery = from_json(value)?;
                let partition = crate::domain::event_partition(&d.event, partitions);
                t.remove(key.as_str()).map_err(unavailable)?;
                t.insert(pending_key(partition, key).as_str(), value.as_slice())
                    .map_err(unavailable)?;
            }
            // The feed is the global log, as it was: the old read position holds for every
            // partition.
            let cursors = txn.open_table(CURSORS).map_err(unavailable)?;
            let saved = cursors
                .get(UNPARTITIONED_CURSOR)
                .map_err(unavailable)?
                .map(|v| v.value());
            Ok(saved)
        })
        .await
    }
}

/// A pending delivery's key in `pending`: its partition (five digits, so a partition's rows are
/// one range), then `PendingDelivery::key`.
fn pending_key(partition: u16, key: &str) -> String {
    format!("{partition:05}|{key}")
}

/// The `meta` key counting the delivery records kept for `subscription`.
fn delivery_count_key(subscription: Uuid) -> String {
    format!("delivery_count:{subscription}")
}
