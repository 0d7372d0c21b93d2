//! The fan-out hub of one HTTP worker: dialog actors (on their own threads) ring the doorbell of a
//! connection whose subscriptions have something queued, and the worker's one hub task writes
//! every rung connection's frames, back to back, on the worker's thread. A batch of changes costs
//! the worker one cross-thread wake-up, not one per connection, and a connection's own task is not
//! woken for a frame at all.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use crate::dialogs::{Doorbell, Inbox};

/// Connections pumped per turn of the hub, before it yields to the worker's other tasks (reads,
/// handshakes) and goes on with the rest of the batch.
const TURN: usize = 256;

/// What a connection does when its doorbell was rung: writes what its subscriptions hold.
pub trait Outlet {
    fn pump(&self);
}

/// One worker's hub: its inbox and the connections seated on it.
struct Hub {
    inbox: Arc<Inbox>,
    /// Counts the hub task's wake-ups (`realtime_hub_wakeups_total`).
    wakeups: prometheus::IntCounter,
    /// Seated connections by seat number; a free seat is `None` and listed in `free`. Weak: a
    /// connection's task owns its outlet, and a seat whose connection ended just stays unanswered.
    seats: RefCell<Vec<Option<Weak<dyn Outlet>>>>,
    free: RefCell<Vec<u32>>,
}

thread_local! {
    /// This worker's hub while its task runs (the task holds it).
    static HUB: RefCell<Weak<Hub>> = const { RefCell::new(Weak::new()) };
}

/// A connection's seat in its worker's hub; left on drop. Not `Send`: it stays on the worker.
pub struct Seat {
    hub: Rc<Hub>,
    number: u32,
}

impl Seat {
    /// A free seat in this worker's hub, which is started (counting its wake-ups in `wakeups`)
    /// when the worker has none running.
    pub fn take(wakeups: &prometheus::IntCounter) -> Seat {
        let hub = HUB.with(|h| {
            if let Some(hub) = h.borrow().upgrade() {
                return hub;
            }
            let hub = Rc::new(Hub {
                inbox: Arc::default(),
                wakeups: wakeups.clone(),
                seats: RefCell::default(),
                free: RefCell::default(),
            });
            *h.borrow_mut() = Rc::downgrade(&hub);
            actix_web::rt::spawn(serve(hub.clone()));
            hub
        });
        let number = match hub.free.borrow_mut().pop() {
            Some(n) => n,
            None => {
                let mut seats = hub.seats.borrow_mut();
                seats.push(None);
                (seats.len() - 1) as u32
            }
        };
        Seat { hub, number }
    }

    /// The doorbell that makes the hub pump whatever sits here.
    pub fn doorbell(&self) -> Doorbell {
        Doorbell::new(self.hub.inbox.clone(), self.number)
    }

    /// Seats `outlet`: rings from now on pump it.
    pub fn sit(&self, outlet: Weak<dyn Outlet>) {
        self.hub.seats.borrow_mut()[self.number as usize] = Some(outlet);
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(slot) = self.hub.seats.borrow_mut().get_mut(self.number as usize) {
            *slot = None;
        }
        // A ring still on its way for this seat pumps its next connection once: harmless, its
        // queues are empty then.
        self.hub.free.borrow_mut().push(self.number);
    }
}

/// The hub's task: pumps every rung seat, `TURN` at a time, for as long as the worker runs.
async fn serve(hub: Rc<Hub>) {
    let mut batch: Vec<u32> = Vec::new();
    loop {
        hub.inbox.rung(&mut batch).await;
        hub.wakeups.inc();
        for (i, seat) in batch.drain(..).enumerate() {
            if i > 0 && i % TURN == 0 {
                tokio::task::yield_now().await;
            }
            let outlet = hub
                .seats
                .borrow()
                .get(seat as usize)
                .and_then(|s| s.as_ref())
                .and_then(Weak::upgrade);
            if let Some(outlet) = outlet {
                outlet.pump();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Counter(Cell<usize>);

    impl Outlet for Counter {
        fn pump(&self) {
            self.0.set(self.0.get() + 1);
        }
    }

    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    #[actix_web::test]
    async fn a_ring_from_another_thread_pumps_its_seat_on_this_one_and_a_left_seat_is_not_pumped() {
        let a = Rc::new(Counter(Cell::new(0)));
        let b = Rc::new(Counter(Cell::new(0)));
        let wakeups = prometheus::IntCounter::new("wakeups", "test").expect("a counter");
        let (seat_a, seat_b) = (Seat::take(&wakeups), Seat::take(&wakeups));
        let a_dyn: Rc<dyn Outlet> = a.clone();
        let b_dyn: Rc<dyn Outlet> = b.clone();
        seat_a.sit(Rc::downgrade(&a_dyn));
        seat_b.sit(Rc::downgrade(&b_dyn));
        let (bell_a, bell_b) = (seat_a.doorbell(), seat_b.doorbell());
        std::thread::spawn(move || {
            bell_a.ring();
            bell_b.ring();
            bell_a.ring();
        })
        .join()
        .expect("the ringing thread");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while a.0.get() < 2 || b.0.get() < 1 {
            assert!(std::time::Instant::now() < deadline, "rings not answered");
            actix_web::rt::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!((a.0.get(), b.0.get()), (2, 1));
        assert!(
            (1..=3).contains(&wakeups.get()),
            "{} wake-ups",
            wakeups.get()
        );
        let (bell_b, freed) = (seat_b.doorbell(), seat_b.number);
        drop(seat_b);
        bell_b.ring();
        settle().await;
        assert_eq!(b.0.get(), 1, "a seat that was left is not pumped");
        // Its number is reused by the next connection.
        let seat_c = Seat::take(&wakeups);
        assert_eq!(seat_c.number, freed);
    }
}
