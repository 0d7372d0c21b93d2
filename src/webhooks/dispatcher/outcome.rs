//! What the end of an attempt does: the delivery is recorded, retried with backoff, dead-lettered
//! or dropped; its lane moves on; its endpoint's health and in-flight slot are updated.

use super::*;

impl Dispatcher {
    /// Settles the outcome of the attempt at a lane's head (of the lane's current generation):
    /// delivered, retried later, dead-lettered or dropped.
    pub(super) fn settle_outcome(&mut self, done: Attempted, ctx: &mut Context<Self>) {
        let Attempted {
            key,
            sub,
            endpoint,
            outcome,
            took,
            is_validation,
            ..
        } = done;
        let endpoint = endpoint.as_deref();
        let Some(mut delivery) = self
            .lanes
            .get_mut(&key)
            .and_then(|l| l.queue.front().cloned())
        else {
            return;
        };
        delivery.attempts += 1;
        let policy = if is_validation {
            self.validation.clone()
        } else {
            self.retry.clone()
        };
        let record =
            |status: Option<u16>, error: Option<String>, next: Option<Duration>| DeliveryRecord {
                event_id: delivery.id.clone(),
                attempt: delivery.attempts,
                status_code: status,
                error,
                duration_ms: took.as_millis() as u64,
                at: Utc::now(),
                next_attempt: next
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .map(|d| Utc::now() + d),
            };
        match outcome {
            Outcome::Delivered(status) => {
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["delivered"])
                    .inc();
                self.endpoint_result(endpoint, &key, true);
                self.log(delivery.subscription, record(Some(status), None, None));
                if is_validation && let Some(s) = sub {
                    let store = self.store.clone();
                    actix_web::rt::spawn(async move {
                        if let Err(e) = store
                            .update_subscription(s.id, SubscriptionChange::Validated)
                            .await
                        {
                            tracing::warn!(subscription = %s.id, error = %e, "recording validation failed");
                        }
                    });
                }
                self.advance(&key, ctx);
            }
            Outcome::Gone => {
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["gone"])
                    .inc();
                self.endpoint_result(endpoint, &key, true);
                self.log(
                    delivery.subscription,
                    record(
                        Some(410),
                        Some("410 Gone: subscription disabled".into()),
                        None,
                    ),
                );
                if let Some(s) = sub {
                    let reason = format!(
                        "the endpoint answered 410 Gone at {}",
                        Utc::now().to_rfc3339()
                    );
                    let store = self.store.clone();
                    actix_web::rt::spawn(async move {
                        let change = SubscriptionChange::Disabled { reason };
                        if let Err(e) = store.update_subscription(s.id, change).await {
                            tracing::warn!(subscription = %s.id, error = %e, "disabling failed");
                        }
                    });
                }
                let dropped = delivery.subscription;
                let gone: Vec<LaneKey> = self
                    .lanes
                    .keys()
                    .filter(|k| k.subscription == dropped)
                    .cloned()
                    .collect();
                for k in gone {
                    if let Some(lane) = self.lanes.remove(&k) {
                        for d in lane.queue {
                            self.settle(k.partition, &d, ctx);
                        }
                    }
                }
            }
            Outcome::Dropped(why) => {
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["dropped"])
                    .inc();
                tracing::debug!(subscription = %delivery.subscription, event = %delivery.id, why, "delivery dropped");
                self.advance(&key, ctx);
            }
            Outcome::Failed {
                status,
                error,
                retry_after,
                endpoint_wide,
            } => {
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["failed"])
                    .inc();
                if endpoint_wide {
                    self.endpoint_result(endpoint, &key, false);
                }
                match policy.next_delay(delivery.attempts, retry_after) {
                    Some(delay) => {
                        self.log(
                            delivery.subscription,
                            record(status, Some(error.clone()), Some(delay)),
                        );
                        if let Some(lane) = self.lanes.get_mut(&key)
                            && let Some(head) = lane.queue.front_mut()
                        {
                            head.attempts = delivery.attempts;
                            head.last_status = status;
                            head.last_error = Some(error);
                            // The attempt count and due time survive a failover of the dispatcher.
                            if let Some(mut record) = Self::pending_of(head) {
                                record.due_at = chrono::Duration::from_std(delay)
                                    .ok()
                                    .map(|d| Utc::now() + d);
                                let partition =
                                    event_partition(&record.event, self.settings.partitions);
                                let store = self.store.clone();
                                let write =
                                    async move { store.put_pending(partition, &[record]).await };
                                self.write_for(key.partition, "recording a retry", write, ctx);
                            }
                        }
                        self.pump_after(key, delay, ctx);
                    }
                    None => {
                        self.log(
                            delivery.subscription,
                            record(status, Some(error.clone()), None),
                        );
                        if let Some(event) = &delivery.event {
                            self.metrics.webhook_dead_letters.inc();
                            let letter = DeadLetter {
                                id: Uuid::now_v7(),
                                subscription_id: delivery.subscription,
                                event: (**event).clone(),
                                attempts: delivery.attempts,
                                last_status: status,
                                last_error: Some(error),
                                dead_at: Utc::now(),
                            };
                            let store = self.store.clone();
                            actix_web::rt::spawn(async move {
                                if let Err(e) = store.put_dead_letter(&letter).await {
                                    tracing::error!(error = %e, "storing a dead letter failed");
                                }
                            });
                        }
                        self.advance(&key, ctx);
                    }
                }
            }
        }
    }

    /// The head is done (delivered, dropped or dead): the lane moves on.
    pub(super) fn advance(&mut self, key: &LaneKey, ctx: &mut Context<Self>) {
        let done = self.lanes.get_mut(key).and_then(|lane| {
            lane.busy = false;
            lane.queue.pop_front()
        });
        if let Some(done) = done {
            self.settle(key.partition, &done, ctx);
        }
        self.pump(key.clone(), ctx);
    }

    /// A delivery of a lane of `lane_partition` is finished (delivered, dropped or
    /// dead-lettered): the store forgets it.
    pub(super) fn settle(
        &mut self,
        lane_partition: Option<u16>,
        d: &Delivery,
        ctx: &mut Context<Self>,
    ) {
        let (Some(position), Some(event)) = (d.position, &d.event) else {
            return;
        };
        let key = PendingDelivery::key(d.subscription, position, &event.id);
        let partition = event_partition(event, self.settings.partitions);
        if let Some(waiting) = d.saving.and_then(|b| self.unsaved.get_mut(&b)) {
            // Its record is still being stored: removed once that save ends.
            waiting.push((lane_partition, partition, key));
            return;
        }
        self.forget_pending(lane_partition, partition, key, ctx);
    }

    /// Removes the pending record `key` of `partition` from the store (a write of the lane's
    /// partition: it is not handed over before the removal is made).
    pub(super) fn forget_pending(
        &mut self,
        lane_partition: Option<u16>,
        partition: u16,
        key: String,
        ctx: &mut Context<Self>,
    ) {
        let store = self.store.clone();
        let write = async move { store.remove_pending(partition, &key).await };
        self.write_for(lane_partition, "forgetting a finished delivery", write, ctx);
    }

    /// What the store keeps of an unfinished delivery.
    pub(super) fn pending_of(d: &Delivery) -> Option<PendingDelivery> {
        Some(PendingDelivery {
            subscription: d.subscription,
            event: d.event.as_deref()?.clone(),
            position: d.position?,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            due_at: None,
        })
    }

    pub(super) fn endpoint_result(&mut self, endpoint: Option<&str>, lane: &LaneKey, ok: bool) {
        let Some(e) = endpoint.and_then(|k| self.endpoints.get_mut(k)) else {
            return;
        };
        let (failures, cooldown) = (
            self.settings.circuit_failures,
            self.settings.circuit_cooldown,
        );
        match e.record(ok, lane, failures, cooldown, Instant::now()) {
            CircuitChange::Opened => self.metrics.webhook_open_circuits.inc(),
            CircuitChange::Closed => self.metrics.webhook_open_circuits.dec(),
            CircuitChange::Unchanged => {}
        }
    }

    pub(super) fn release_slot(&mut self, endpoint: Option<&str>, ctx: &mut Context<Self>) {
        let Some(k) = endpoint else { return };
        let Some(e) = self.endpoints.get_mut(k) else {
            return;
        };
        e.release();
        // Hand the slot to the first waiting lane that still has work (lanes of a disabled or
        // deleted subscription may have gone meanwhile).
        while let Some(lane) = self.endpoints.get_mut(k).and_then(|e| e.next_waiting()) {
            let Some(l) = self.lanes.get_mut(&lane) else {
                continue;
            };
            l.waiting = false;
            if !l.busy && !l.queue.is_empty() {
                self.pump(lane, ctx);
                return;
            }
        }
    }

    pub(super) fn log(&self, subscription: Uuid, record: DeliveryRecord) {
        let store = self.store.clone();
        actix_web::rt::spawn(async move {
            let _ = store.record_delivery(subscription, record).await;
        });
    }
}
