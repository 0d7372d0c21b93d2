//! The single-node bus: a published envelope is handed straight back to this node's sink, so the
//! embedded mode runs the same receive path (sequence dedupe) as a cluster.

use async_trait::async_trait;
use uuid::Uuid;

use super::{Bus, BusError, BusEvent, Envelope, EnvelopeSink};

pub struct MemoryBus {
    /// To the dialog registry; closed only when the node shuts down, after which publishing is moot.
    sink: EnvelopeSink,
}

impl MemoryBus {
    pub fn new(sink: EnvelopeSink) -> Self {
        MemoryBus { sink }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        // A closed sink means the node is stopping; the change is committed, so this is not an error.
        let _ = self.sink.send(BusEvent::Envelope(envelope));
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn subscribe(&self, _dialog: Uuid) {}

    fn unsubscribe(&self, _dialog: Uuid) {}
}
