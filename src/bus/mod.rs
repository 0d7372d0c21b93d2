//! The `Bus` seam: spreads committed dialog changes to every node. Delivery is at-most-once; each
//! envelope carries the dialog's sequence so a receiver detects a gap and repairs it from the store's
//! dialog log. `memory` is the single-node default; a Redis pub/sub bridge plugs in here.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::CloudEvent;

pub use self::redis::RedisBus;
pub use memory::MemoryBus;

/// One committed dialog change as it travels between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Node that committed the change (a node ignores its own envelopes: it delivered locally).
    pub origin: String,
    pub dialog_id: Uuid,
    /// `dialogsequence` of the change's last event.
    pub sequence: u64,
    /// The change's events, in order (sequence - len + 1 ..= sequence).
    pub events: Vec<Arc<CloudEvent>>,
    /// The dialog's revision after the change (`None` after a purge).
    pub revision: Option<Uuid>,
}

/// What a bus hands to its node.
#[derive(Debug)]
pub enum BusEvent {
    /// A change committed by some node (possibly this one).
    Envelope(Envelope),
    /// The bus reconnected after an outage: envelopes may have been lost, repair from the log.
    Reconnected,
    /// Some node appended events to these webhook partitions' feeds: the node that delivers
    /// them reads them now rather than at its dispatcher's next poll.
    FeedChanged(Vec<u16>),
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached; the change is committed and receivers repair from the log.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Where a bus hands incoming envelopes; the dialog registry drains it.
pub type EnvelopeSink = tokio::sync::mpsc::UnboundedSender<BusEvent>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError>;

    async fn ping(&self) -> Result<(), BusError>;

    /// `envelope` as the (channel, message) this bus would publish, for a store that publishes it
    /// with the commit (`DialogStore::announces`); `None` when this bus does not use the store.
    fn announcement(&self, _envelope: &Envelope) -> Option<(String, Vec<u8>)> {
        None
    }

    /// `event` was appended to the store's global log (a published event, or the first event of
    /// a commit: a change's events share their dialog's partition), so webhooks may be due: the
    /// dispatcher that delivers its partition, on whichever node, is told to read it now.
    fn feed_changed(&self, event: &CloudEvent);

    /// This node now has local interest in `dialog` (first local subscriber).
    fn subscribe(&self, dialog: Uuid);

    /// This node lost its last local subscriber of `dialog`.
    fn unsubscribe(&self, dialog: Uuid);
}
