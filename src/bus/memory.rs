//! The single-node bus: nothing to spread. A node's own envelopes are never routed back to its
//! dialog actors (they produced them), so publishing only tells the node's webhook dispatcher that
//! a committed change may hold events for it, from the publishing thread, without a hop through
//! another thread.

use std::sync::OnceLock;

use async_trait::async_trait;
use uuid::Uuid;

use super::{Bus, BusError, Envelope};

/// Called after each publish.
type Published = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
pub struct MemoryBus {
    published: OnceLock<Published>,
}

impl MemoryBus {
    pub fn new() -> Self {
        MemoryBus::default()
    }

    /// Calls `f` after each publish from now on (set once; later calls are ignored).
    pub fn on_publish(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.published.set(Box::new(f));
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, _envelope: Envelope) -> Result<(), BusError> {
        if let Some(published) = self.published.get() {
            published();
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn subscribe(&self, _dialog: Uuid) {}

    fn unsubscribe(&self, _dialog: Uuid) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            origin: "node-a".into(),
            dialog_id: Uuid::now_v7(),
            sequence: 1,
            events: Vec::new(),
            revision: None,
        }
    }

    #[actix_web::test]
    async fn each_publish_calls_the_hook_once_it_is_set() {
        let bus = MemoryBus::new();
        bus.publish(envelope()).await.expect("published");
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        bus.on_publish(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        // A second hook is ignored: the first stays.
        bus.on_publish(|| panic!("a second hook"));
        for _ in 0..3 {
            bus.publish(envelope()).await.expect("published");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
