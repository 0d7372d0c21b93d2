//! The feed: reading the global event log from the saved position, matching subscriptions, and
//! storing the queued deliveries as pending before the position moves on.

use super::*;

impl Dispatcher {
    /// Reads new events and queues them for every matching, validated subscription. The queued
    /// deliveries are stored as pending before the read position is saved, so a node taking over
    /// resumes them (sending again only what was in flight) and reads on from there.
    pub(super) fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.polling {
            return;
        }
        self.polling = true;
        let store = self.store.clone();
        let (node, was_leader, cursor) = (self.node_id.clone(), self.leader, self.cursor);
        let fut = async move {
            // One node of a cluster dispatches; the others stand by and take over when its lease
            // lapses, from what it saved.
            if !store.lease(LEASE, &node, LEASE_TTL).await? {
                return Ok(Polled {
                    leader: false,
                    cursor,
                    ..Polled::default()
                });
            }
            let (cursor, inherited) = if was_leader {
                (cursor, Vec::new())
            } else {
                // Saved before the node served (`start_position`), so nothing committed since
                // then is skipped.
                let saved = store.init_cursor(LEASE, 0).await?;
                (saved, store.pending().await?)
            };
            let active = |subs: &[Subscription]| subs.iter().any(|s| s.validated && !s.disabled);
            let mut read_subs = None;
            if inherited.is_empty() {
                let mut subs = store.subscriptions().await?;
                if !active(&subs) {
                    // Nothing can receive anything: the events need not be read, the position
                    // moves to the head. The subscriptions are read again after the head, so one
                    // validated before that read is seen, and one validated later lies beyond it.
                    let head = store.global_head().await?;
                    subs = store.subscriptions().await?;
                    if !active(&subs) {
                        return Ok(Polled {
                            leader: true,
                            cursor: cursor.max(head),
                            skipped: head > cursor,
                            ..Polled::default()
                        });
                    }
                }
                read_subs = Some(subs);
            }
            let events = store.read_global(cursor, READ_BATCH).await?;
            let (subs, policy) = if events.is_empty() && inherited.is_empty() {
                (Vec::new(), None)
            } else {
                let subs = match read_subs {
                    Some(subs) => subs,
                    None => store.subscriptions().await?,
                };
                (subs, Some(store.policy().await?))
            };
            Ok::<_, crate::store::StoreError>(Polled {
                leader: true,
                cursor,
                events,
                inherited,
                subs,
                policy,
                skipped: false,
            })
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            let polled = match result {
                Ok(r) => r,
                Err(e) => {
                    act.polling = false;
                    tracing::warn!(error = %e, "reading events for webhooks failed");
                    return;
                }
            };
            act.leader = polled.leader;
            act.cursor = polled.cursor;
            let Some(policy) = polled.policy else {
                if polled.skipped {
                    // Nothing to deliver up to the head: only the position is saved.
                    act.save_and_go_on(Vec::new(), false, ctx);
                    return;
                }
                act.polling = false;
                if std::mem::take(&mut act.woken) {
                    act.poll(ctx);
                }
                return;
            };
            act.subs = polled.subs.iter().map(|s| (s.id, s.clone())).collect();
            // Resume what the previous dispatcher left, oldest first, with its attempt counts.
            let mut inherited = polled.inherited;
            inherited.sort_by_key(|p| p.position);
            for p in inherited {
                act.inherited.insert((p.subscription, p.position));
                let event = Arc::new(p.event);
                let key = LaneKey::of(p.subscription, &event);
                let delivery = Delivery {
                    attempts: p.attempts,
                    last_status: p.last_status,
                    last_error: p.last_error,
                    ..Delivery::of(p.subscription, event, p.position, None)
                };
                let wait = p.due_at.and_then(|due| (due - Utc::now()).to_std().ok());
                act.enqueue_after(key, delivery, wait, ctx);
            }
            let more = polled.events.len() == READ_BATCH;
            let mut fresh = Vec::new();
            for entry in polled.events {
                act.cursor = act.cursor.max(entry.position);
                let event = entry.event;
                let mut body: Option<Rc<Vec<u8>>> = None;
                for sub in polled
                    .subs
                    .iter()
                    .filter(|s| s.validated && !s.disabled && s.matches(&event))
                {
                    if !may_receive(&policy, sub, &event)
                        || act.inherited.contains(&(sub.id, entry.position))
                    {
                        continue;
                    }
                    // Encoded once, shared by every subscription that gets the event.
                    let body = body
                        .get_or_insert_with(|| {
                            Rc::new(serde_json::to_vec(event.as_ref()).unwrap_or_default())
                        })
                        .clone();
                    let key = LaneKey::of(sub.id, &event);
                    let delivery = Delivery::of(sub.id, event.clone(), entry.position, Some(body));
                    fresh.extend(Self::pending_of(&delivery));
                    act.enqueue(key, delivery, ctx);
                }
            }
            act.save_and_go_on(fresh, more, ctx);
        }));
    }

    /// Saves the queued deliveries as pending, then the read position; polls again when the
    /// read was cut at `READ_BATCH` (`more`) or a commit woke the dispatcher meanwhile.
    pub(super) fn save_and_go_on(
        &mut self,
        fresh: Vec<PendingDelivery>,
        more: bool,
        ctx: &mut Context<Self>,
    ) {
        let (store, position) = (self.store.clone(), self.cursor);
        let persist = async move {
            store.put_pending(&fresh).await?;
            store.set_cursor(LEASE, position).await
        };
        ctx.spawn(persist.into_actor(self).map(move |saved, act, ctx| {
            act.polling = false;
            if let Err(e) = saved {
                tracing::warn!(error = %e, "saving the dispatcher's pending deliveries failed");
            }
            if more || std::mem::take(&mut act.woken) {
                act.poll(ctx);
            }
        }));
    }
}

/// Saves where the dispatcher of a new store starts reading (the log's head: events from before
/// are not delivered), unless a position is saved already. Called before the node serves, so every
/// event committed after a subscription was created lies beyond it.
pub async fn start_position(store: &dyn Store) -> Result<LogPosition, crate::store::StoreError> {
    let head = store.global_head().await?;
    store.init_cursor(LEASE, head).await
}

/// What one poll of the store brought.
#[derive(Default)]
struct Polled {
    leader: bool,
    cursor: LogPosition,
    events: Vec<crate::store::LogEntry>,
    inherited: Vec<PendingDelivery>,
    subs: Vec<Subscription>,
    policy: Option<Arc<crate::auth::Policy>>,
    /// No subscription could receive anything: `cursor` moved to the log's head unread.
    skipped: bool,
}

/// The subscription's consumer may receive `event` under the current registry and delegations.
pub(super) fn may_receive(
    policy: &crate::auth::Policy,
    sub: &Subscription,
    event: &CloudEvent,
) -> bool {
    Party::parse(&sub.consumer).is_ok_and(|party| policy.may_receive_event(&party, event))
}
