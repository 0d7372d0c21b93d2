//! A committed change of one dialog, as realtime subscribers are told about it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::CloudEvent;

/// One committed change in a dialog's own log: what realtime subscribers are told about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `dialogsequence` of the change's first and last event.
    pub first: u64,
    pub last: u64,
    /// Id of the change's last event.
    pub event_id: String,
    /// The change deleted (soft or hard) the dialog.
    pub deleted: bool,
    /// The dialog's revision after the change (`None` after a purge).
    pub revision: Option<Uuid>,
    /// Commit time, for the history TTL and fan-out latency.
    pub at: DateTime<Utc>,
}

impl Change {
    /// Describes a commit's events (`events` non-empty, in order).
    pub fn of(
        events: &[Arc<CloudEvent>],
        revision: Option<Uuid>,
        at: DateTime<Utc>,
    ) -> Option<Change> {
        let first = events.first()?.dialogsequence?;
        let last_event = events.last()?;
        Some(Change {
            first,
            last: last_event.dialogsequence?,
            event_id: last_event.id.clone(),
            deleted: last_event.kind == "dialogporten.dialog.deleted.v1",
            revision,
            at,
        })
    }

    /// A change of the one event `n`, committed now: for the queue and encoding tests.
    #[cfg(test)]
    pub fn numbered(n: u64) -> Arc<Change> {
        Arc::new(Change {
            first: n,
            last: n,
            event_id: format!("e{n}"),
            deleted: false,
            revision: None,
            at: Utc::now(),
        })
    }
}
