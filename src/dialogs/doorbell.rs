//! How a dialog actor (on its own thread) tells an HTTP worker that one of the worker's
//! connections has changes queued: it rings the connection's doorbell, which lists the
//! connection's seat in the worker's inbox and wakes the worker's hub for the first ring of a batch.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The doorbells rung since a worker's hub last looked; shared by the hub and the dialog actors.
#[derive(Default)]
pub struct Inbox {
    /// Seats whose doorbell rang, in order; the hub swaps the list out under the lock.
    rung: Mutex<Vec<u32>>,
    /// Wakes the hub: notified when a doorbell rings into an empty list (one wake-up per batch;
    /// a permit is kept while the hub is busy, so no ring is missed).
    ready: Notify,
}

impl Inbox {
    /// Waits for a ring, then moves every seat rung so far into `into` (which must be empty).
    pub async fn rung(&self, into: &mut Vec<u32>) {
        self.ready.notified().await;
        let mut rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *rung, into);
    }
}

/// Rings one connection's seat in its worker's inbox; cheap to clone, sent to dialog actors.
#[derive(Clone)]
pub struct Doorbell {
    inbox: Arc<Inbox>,
    seat: u32,
}

impl Doorbell {
    pub fn new(inbox: Arc<Inbox>, seat: u32) -> Self {
        Doorbell { inbox, seat }
    }

    pub fn ring(&self) {
        let first = {
            let mut rung = self.inbox.rung.lock().unwrap_or_else(|e| e.into_inner());
            rung.push(self.seat);
            rung.len() == 1
        };
        if first {
            self.inbox.ready.notify_one();
        }
    }
}
