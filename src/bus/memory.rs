//! The single-node bus: nothing to spread. A node's own envelopes are never routed back to its
//! dialog actors (they produced them), so the bus only tells the node's webhook dispatcher that
//! events were appended to the feed, from the appending thread, without a hop through another
//! thread.

use std::sync::OnceLock;

use async_trait::async_trait;
use uuid::Uuid;

use super::{Bus, BusError, Envelope};
use crate::domain::CloudEvent;

/// Called for each event appended to the feed.
type FeedHook = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
pub struct MemoryBus {
    feed_changed: OnceLock<FeedHook>,
}

impl MemoryBus {
    pub fn new() -> Self {
        MemoryBus::default()
    }

    /// Calls `f` for each event appended to the feed from now on (set once; later calls are
    /// ignored).
    pub fn on_feed_changed(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.feed_changed.set(Box::new(f));
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, _envelope: Envelope) -> Result<(), BusError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn feed_changed(&self, _event: &CloudEvent) {
        if let Some(hook) = self.feed_changed.get() {
            hook();
        }
    }

    fn subscribe(&self, _dialog: Uuid) {}

    fn unsubscribe(&self, _dialog: Uuid) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn event() -> CloudEvent {
        serde_json::from_value(serde_json::json!({
            "specversion": "1.0", "id": "1", "type": "app.t", "time": "2026-01-01T00:00:00Z",
            "source": "https://s/1", "resource": "urn:altinn:resource:r"
        }))
        .expect("event")
    }

    #[actix_web::test]
    async fn each_appended_event_calls_the_hook_once_it_is_set() {
        let bus = MemoryBus::new();
        bus.feed_changed(&event());
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        bus.on_feed_changed(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        // A second hook is ignored: the first stays.
        bus.on_feed_changed(|| panic!("a second hook"));
        for _ in 0..3 {
            bus.feed_changed(&event());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
