//! Ends connections whose peer is gone, a few at a time, after the work that is waiting.
//!
//! When thousands of clients vanish at once, each connection's task wakes on its socket's
//! hang-up. Closing the socket and detaching its subscriptions right there would queue thousands
//! of teardowns on the HTTP worker ahead of the frames the dialog actors hand it meanwhile (those
//! are woken from other threads, and a worker takes such a wake-up only once per many local
//! tasks). Instead the connection's task hands its remains to this worker's reaper and ends; the
//! reaper tears down `BATCH` of them per turn and waits for the next timer tick between turns.
//!
//! Waiting, not only yielding: a teardown costs about 10 µs (the socket's `close`, its removal from
//! the poller, the dialog actors' detach), so thousands in a row would keep the worker's thread
//! busy for tens of milliseconds. Yielding between batches keeps the frames first on this thread,
//! but the operating system then shares the cores between a busy worker and everything else that
//! wakes meanwhile (the other worker, the dialog actors, the clients' own processes), and every
//! frame waits a little. Paced at `BATCH` per tick, a mass disconnect costs a worker about a sixth
//! of a core until it is done (5,000 leaving connections over two workers: about 160 ms), and a
//! vanished peer's resources are released within a second even then.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

/// Teardowns per turn of the reaper.
const BATCH: usize = 16;

/// The wait between turns (the runtime's timer rounds it up to its next millisecond tick).
const PACE: std::time::Duration = std::time::Duration::from_millis(1);

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
            if GRAVE.with(|g| !g.borrow().is_empty()) {
                tokio::time::sleep(PACE).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    #[actix_web::test]
    async fn every_buried_teardown_runs_a_batch_per_tick_and_the_reaper_ends() {
        let done = Rc::new(Cell::new(0usize));
        let started = Instant::now();
        for _ in 0..(BATCH * 3 + 1) {
            let done = done.clone();
            bury(move || done.set(done.get() + 1));
        }
        assert_eq!(done.get(), 0, "nothing runs in the caller's turn");
        tokio::task::yield_now().await;
        assert_eq!(done.get(), BATCH, "one turn runs one batch");
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        if started.elapsed() < PACE {
            assert_eq!(done.get(), BATCH, "the next batch waits for the timer");
        }
        let deadline = started + Duration::from_secs(5);
        while done.get() < BATCH * 3 + 1 {
            assert!(Instant::now() < deadline, "{} teardowns ran", done.get());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            started.elapsed() >= PACE * 3,
            "four batches took {:?}",
            started.elapsed()
        );
        tokio::task::yield_now().await;
        assert!(!REAPING.with(|r| r.get()), "the reaper ended");
        // A later burial starts it again, and a turn that empties the grave does not wait.
        let d = done.clone();
        bury(move || d.set(d.get() + 1));
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(done.get(), BATCH * 3 + 2);
        assert!(!REAPING.with(|r| r.get()), "the reaper ended again");
    }
}
