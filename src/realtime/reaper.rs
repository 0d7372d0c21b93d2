//! Ends connections whose peer is gone, a few at a time, after the work that is waiting.
//!
//! When thousands of clients vanish at once, each connection's task wakes on its socket's
//! hang-up. Closing the socket and detaching its subscriptions right there would queue thousands
//! of teardowns on the HTTP worker ahead of the frames the dialog actors hand it meanwhile (those
//! are woken from other threads, and a worker takes such a wake-up only once per many local
//! tasks). Instead the connection's task hands its remains to this worker's reaper and ends; the
//! reaper tears down `BATCH` of them per turn and yields between turns, so frames keep flowing.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

/// Teardowns per turn of the reaper.
const BATCH: usize = 16;

type Remains = Box<dyn FnOnce()>;

thread_local! {
    static GRAVE: RefCell<VecDeque<Remains>> = const { RefCell::new(VecDeque::new()) };
    static REAPING: Cell<bool> = const { Cell::new(false) };
}

/// Queues `teardown` to run on this thread's reaper, started if it is not running.
pub fn bury(teardown: impl FnOnce() + 'static) {
    GRAVE.with(|g| g.borrow_mut().push_back(Box::new(teardown)));
    if REAPING.with(|r| r.replace(true)) {
        return;
    }
    actix_web::rt::spawn(async {
        loop {
            let turn: Vec<Remains> = GRAVE.with(|g| {
                let mut g = g.borrow_mut();
                let n = g.len().min(BATCH);
                g.drain(..n).collect()
            });
            if turn.is_empty() {
                REAPING.with(|r| r.set(false));
                return;
            }
            for teardown in turn {
                teardown();
            }
            tokio::task::yield_now().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[actix_web::test]
    async fn every_buried_teardown_runs_a_batch_per_turn_and_the_reaper_ends() {
        let done = Rc::new(Cell::new(0usize));
        for _ in 0..(BATCH * 3 + 1) {
            let done = done.clone();
            bury(move || done.set(done.get() + 1));
        }
        assert_eq!(done.get(), 0, "nothing runs in the caller's turn");
        tokio::task::yield_now().await;
        let first = done.get();
        assert!(first <= BATCH, "one turn ran {first}");
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(done.get(), BATCH * 3 + 1);
        assert!(!REAPING.with(|r| r.get()), "the reaper ended");
        // A later burial starts it again.
        let d = done.clone();
        bury(move || d.set(d.get() + 1));
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(done.get(), BATCH * 3 + 2);
    }
}
