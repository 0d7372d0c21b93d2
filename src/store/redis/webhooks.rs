//! `RedisStore`: webhook subscriptions, delivery records, dead letters and pending deliveries.

use super::*;
use crate::store::{UNPARTITIONED_CURSOR, WebhookStore};

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

    async fn put_pending(
        &self,
        partition: u16,
        deliveries: &[PendingDelivery],
    ) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let key = self.pending_key(partition);
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

    async fn remove_pending(&self, partition: u16, field: &str) -> Result<(), StoreError> {
        let key = self.pending_key(partition);
        let field = field.to_owned();
        self.with(|mut c| async move { c.hdel::<_, _, ()>(&key, field).await })
            .await
    }

    async fn pending(&self, partition: u16) -> Result<Vec<PendingDelivery>, StoreError> {
        let key = self.pending_key(partition);
        let all: Vec<String> = self
            .with(|mut c| async move { c.hvals(&key).await })
            .await?;
        Ok(all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    async fn adopt_unpartitioned(
        &self,
        partitions: u16,
    ) -> Result<Option<LogPosition>, StoreError> {
        if self.cluster {
            // Partitions came before cluster mode: a cluster never held an unpartitioned feed.
            return Ok(None);
        }
        // One node adopts; a node starting beside it waits for it to finish.
        let marker = self.key("adopting");
        let me = Uuid::now_v7().to_string();
        loop {
            let (m, v) = (marker.clone(), me.clone());
            let won: bool = self
                .with(|mut c| async move {
                    redis::cmd("SET")
                        .arg(&m)
                        .arg(&v)
                        .arg("NX")
                        .arg("PX")
                        .arg(60_000)
                        .query_async::<Option<String>>(&mut c)
                        .await
                        .map(|r| r.is_some())
                })
                .await?;
            if won {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let adopted = self.adopt(partitions).await;
        let m = marker.clone();
        self.with(|mut c| async move { c.del::<_, ()>(&m).await })
            .await?;
        adopted
    }
}

impl RedisStore {
    /// The hash of partition `n`'s unfinished deliveries.
    fn pending_key(&self, n: u16) -> String {
        self.part_key(n, &format!("pending:{n}"))
    }

    /// `adopt_unpartitioned` under its marker: the old `pending` hash is filed by partition, and
    /// the events of the old feed (`glog`) after its saved position are appended to their
    /// partitions' feeds, in order, before the old feed and position are removed.
    async fn adopt(&self, partitions: u16) -> Result<Option<LogPosition>, StoreError> {
        let old_pending = self.key("pending");
        let all: Vec<(String, String)> = {
            let k = old_pending.clone();
            self.with(|mut c| async move { c.hgetall(&k).await })
                .await?
        };
        for (field, json) in all {
            let Ok(d) = serde_json::from_str::<PendingDelivery>(&json) else {
                continue;
            };
            let key = self.pending_key(crate::domain::event_partition(&d.event, partitions));
            let k = old_pending.clone();
            self.with(|mut c| async move {
                redis::pipe()
                    .hset(&key, &field, &json)
                    .hdel(&k, &field)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
        }
        let cursor_key = self.key(&format!("cursor:{UNPARTITIONED_CURSOR}"));
        let saved: Option<LogPosition> = {
            let k = cursor_key.clone();
            self.with(|mut c| async move { c.get(&k).await }).await?
        };
        let Some(mut after) = saved else {
            return Ok(None);
        };
        let glog = self.key("glog");
        loop {
            let (k, from) = (glog.clone(), format!("({}", stream_id_of(after)));
            let entries: Vec<(String, Vec<(String, String)>)> = self
                .with(|mut c| async move {
                    redis::cmd("XRANGE")
                        .arg(&k)
                        .arg(&from)
                        .arg("+")
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            after = position_of(last).unwrap_or(u64::MAX);
            let mut pipe = redis::pipe();
            for (sid, fields) in &entries {
                let Some(json) = fields.iter().find(|(f, _)| f == "e").map(|(_, v)| v) else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<CloudEvent>(json) else {
                    continue;
                };
                let feed = self.feed_key(crate::domain::event_partition(&event, partitions));
                pipe.cmd("XADD").arg(feed).arg("*").arg("e").arg(json);
                // Saved as it goes, so a node dying part-way appends nothing twice.
                pipe.set(&cursor_key, position_of(sid).unwrap_or(after));
            }
            self.with(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                .await?;
        }
        let (k, c2) = (glog.clone(), cursor_key.clone());
        self.with(|mut c| async move { c.del::<_, ()>(&[k, c2]).await })
            .await?;
        // The partitions' feeds hold only what was adopted: each is read from its start.
        Ok(Some(0))
    }
}
