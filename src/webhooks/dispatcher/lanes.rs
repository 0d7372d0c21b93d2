//! Lanes and deliveries: one FIFO lane per (subscription, dialog), holding the deliveries of that
//! pair in order; only a lane's head is ever attempted.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use uuid::Uuid;

use crate::domain::{CloudEvent, lane_stream};
use crate::store::LogPosition;

/// Where a delivery belongs: one lane per (subscription, dialog) keeps that pair in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct LaneKey {
    pub(super) subscription: Uuid,
    /// Dialog id, the event id for events of no dialog, or "validation".
    pub(super) stream: String,
    /// The partition whose owner runs the lane; `None` for a lane this node runs whoever owns the
    /// partition (a validation, or a replay of a partition held elsewhere).
    pub(super) partition: Option<u16>,
}

impl LaneKey {
    /// The lane of `event` for `subscription` (its dialog, or the event itself when it has none),
    /// run by the owner of `partition`.
    pub(super) fn of(subscription: Uuid, event: &CloudEvent, partition: Option<u16>) -> Self {
        LaneKey {
            subscription,
            stream: lane_stream(event).to_owned(),
            partition,
        }
    }
}

#[derive(Clone)]
pub(super) struct Delivery {
    pub(super) subscription: Uuid,
    /// `webhook-id`: the event id, the same on every attempt.
    pub(super) id: String,
    /// The encoded body, shared by every subscription that receives the event.
    pub(super) body: Rc<Vec<u8>>,
    /// The event (absent for the validation handshake).
    pub(super) event: Option<Arc<CloudEvent>>,
    /// The event's global log position (0 for replays and redrives; `None` for validations): with
    /// the event it identifies the delivery in the store's pending set.
    pub(super) position: Option<LogPosition>,
    pub(super) attempts: u32,
    pub(super) last_status: Option<u16>,
    pub(super) last_error: Option<String>,
    /// The save that stores its pending record (that of the poll that queued it): while that save
    /// runs, the record's removal waits for it, so a removal never reaches the store first and
    /// leaves the record behind for the partition's next owner to send again.
    pub(super) saving: Option<u64>,
}

impl Delivery {
    /// A first attempt at `event` for `subscription`; `body` when it is already encoded.
    pub(super) fn of(
        subscription: Uuid,
        event: Arc<CloudEvent>,
        position: LogPosition,
        body: Option<Rc<Vec<u8>>>,
    ) -> Self {
        let body =
            body.unwrap_or_else(|| Rc::new(serde_json::to_vec(event.as_ref()).unwrap_or_default()));
        Delivery {
            subscription,
            id: event.id.clone(),
            body,
            event: Some(event),
            position: Some(position),
            attempts: 0,
            last_status: None,
            last_error: None,
            saving: None,
        }
    }
}

#[derive(Default)]
pub(super) struct Lane {
    pub(super) queue: VecDeque<Delivery>,
    /// An attempt is in flight or a retry is scheduled: the head must finish first.
    pub(super) busy: bool,
    /// An attempt of the head is in flight.
    pub(super) in_flight: bool,
    /// The lane is in the node's queue for an in-flight slot.
    pub(super) node_waiting: bool,
    /// The lane is in its endpoint's `waiting` queue (kept so that queue needs no search).
    pub(super) waiting: bool,
    /// Bumped when the lane is reset (a re-sent validation): results and retry timers of an
    /// earlier generation are ignored.
    pub(super) generation: u64,
}
