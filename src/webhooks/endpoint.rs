//! The health of one webhook endpoint (scheme, host and port): how many attempts are in flight
//! (at most `webhooks.max_in_flight_per_endpoint`, the others wait in order), and its circuit
//! breaker, which opens after `webhooks.circuit_failures` endpoint-wide failures in a row and lets
//! one trial through once `webhooks.circuit_cooldown` has passed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The key endpoints are accounted under: `scheme://host:port` (default ports filled in), so
/// subscriptions with different paths on one server share its limit and its circuit.
pub fn endpoint_key(url: &str) -> String {
    match url.parse::<awc::http::Uri>() {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme_str().unwrap_or(""),
            u.host().unwrap_or(""),
            u.port_u16().unwrap_or(if u.scheme_str() == Some("https") {
                443
            } else {
                80
            })
        ),
        Err(_) => url.to_owned(),
    }
}

/// What the circuit did on a result, for the open-circuits gauge.
#[derive(Debug, PartialEq, Eq)]
pub enum CircuitChange {
    Opened,
    Closed,
    Unchanged,
}

/// Lanes waiting for a slot (an endpoint's, or the node's), first come first served, except that
/// lanes whose retry is due go before lanes waiting for a first attempt: a backlog of new
/// deliveries does not push retries past their schedule.
pub struct WaitQueue<L> {
    retries: VecDeque<L>,
    first: VecDeque<L>,
}

impl<L> Default for WaitQueue<L> {
    fn default() -> Self {
        WaitQueue {
            retries: VecDeque::new(),
            first: VecDeque::new(),
        }
    }
}

impl<L> WaitQueue<L> {
    /// Queues `lane`; `retry` when its head is a retry now due.
    pub fn push(&mut self, lane: L, retry: bool) {
        if retry {
            self.retries.push_back(lane);
        } else {
            self.first.push_back(lane);
        }
    }

    /// The next lane to offer a slot to: due retries first.
    pub fn pop(&mut self) -> Option<L> {
        self.retries.pop_front().or_else(|| self.first.pop_front())
    }
}

/// One endpoint's in-flight attempts, waiting lanes (`L`) and circuit.
pub struct Endpoint<L> {
    in_flight: usize,
    /// Endpoint-wide failures since the last success, the first lane they came from, and whether
    /// another lane failed too: one lane failing again and again speaks for that lane (one
    /// dialog the receiver chokes on), not for the endpoint.
    failures: u32,
    failing: Option<L>,
    several_failing: bool,
    /// Open until then; a later attempt is the trial.
    open_until: Option<Instant>,
    /// Lanes waiting for an in-flight slot.
    waiting: WaitQueue<L>,
}

impl<L> Default for Endpoint<L> {
    fn default() -> Self {
        Endpoint {
            in_flight: 0,
            failures: 0,
            failing: None,
            several_failing: false,
            open_until: None,
            waiting: WaitQueue::default(),
        }
    }
}

/// Whether an attempt may start now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// It holds a slot now (give it back with `release`). With `circuit_open` it must fail at
    /// once without a request.
    Start { circuit_open: bool },
    /// Every slot is taken: the lane waits for `release` to hand it one.
    Wait,
}

impl<L: PartialEq + Clone> Endpoint<L> {
    /// Takes a slot if fewer than `limit` are in flight.
    pub fn admit(&mut self, limit: usize, now: Instant) -> Admission {
        if self.in_flight >= limit {
            return Admission::Wait;
        }
        self.in_flight += 1;
        Admission::Start {
            circuit_open: self.open_until.is_some_and(|t| t > now),
        }
    }

    /// Queues a lane that was told to `Wait` (once: the caller keeps track) for the next slot;
    /// a lane whose head is a due `retry` goes ahead of those waiting for a first attempt.
    pub fn wait(&mut self, lane: L, retry: bool) {
        self.waiting.push(lane, retry);
    }

    /// Gives back a slot; the caller offers it to the waiting lanes in order (`next_waiting`:
    /// the first that still has work takes it; lanes gone meanwhile are skipped).
    pub fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// The next waiting lane, if any: due retries first.
    pub fn next_waiting(&mut self) -> Option<L> {
        self.waiting.pop()
    }

    /// Records the result of an attempt of `lane`. Only endpoint-wide failures count (see
    /// `Outcome`); a success closes the circuit. `failures_to_open` in a row, from more than one
    /// lane (unless one failure is enough), open it for `cooldown`; a failed trial after the
    /// cooldown opens it again.
    pub fn record(
        &mut self,
        ok: bool,
        lane: &L,
        failures_to_open: u32,
        cooldown: Duration,
        now: Instant,
    ) -> CircuitChange {
        if ok {
            self.failures = 0;
            self.failing = None;
            self.several_failing = false;
            return match self.open_until.take() {
                Some(_) => CircuitChange::Closed,
                None => CircuitChange::Unchanged,
            };
        }
        self.failures += 1;
        match &self.failing {
            None => self.failing = Some(lane.clone()),
            Some(first) if first != lane => self.several_failing = true,
            Some(_) => {}
        }
        let enough_lanes = self.several_failing || failures_to_open <= 1;
        if self.failures < failures_to_open || !enough_lanes {
            return CircuitChange::Unchanged;
        }
        let was_open = self.open_until.replace(now + cooldown).is_some();
        if was_open {
            CircuitChange::Unchanged
        } else {
            CircuitChange::Opened
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    #[test]
    fn at_most_limit_attempts_start_and_the_others_wait_in_order() {
        let mut e: Endpoint<&str> = Endpoint::default();
        let now = Instant::now();
        let go = Admission::Start {
            circuit_open: false,
        };
        assert_eq!(e.admit(2, now), go);
        assert_eq!(e.admit(2, now), go);
        assert_eq!(e.admit(2, now), Admission::Wait);
        e.wait("c", false);
        assert_eq!(e.admit(2, now), Admission::Wait);
        e.wait("d", false);
        assert_eq!(e.in_flight(), 2);
        e.release();
        assert_eq!(e.next_waiting(), Some("c"));
        assert_eq!(e.admit(2, now), go);
        assert_eq!(e.next_waiting(), Some("d"));
        assert_eq!(e.next_waiting(), None);
    }

    #[test]
    fn a_lane_whose_retry_is_due_takes_the_next_slot_before_first_attempts() {
        let mut e: Endpoint<&str> = Endpoint::default();
        let now = Instant::now();
        assert!(matches!(e.admit(1, now), Admission::Start { .. }));
        e.wait("new-1", false);
        e.wait("new-2", false);
        e.wait("retry-1", true);
        e.wait("retry-2", true);
        let order: Vec<_> = std::iter::from_fn(|| e.next_waiting()).collect();
        assert_eq!(order, ["retry-1", "retry-2", "new-1", "new-2"]);
    }

    #[test]
    fn the_circuit_opens_after_enough_failures_in_a_row_and_a_success_closes_it() {
        let mut e: Endpoint<u8> = Endpoint::default();
        let now = Instant::now();
        assert_eq!(
            e.record(false, &1, 3, COOLDOWN, now),
            CircuitChange::Unchanged
        );
        assert_eq!(
            e.record(false, &2, 3, COOLDOWN, now),
            CircuitChange::Unchanged
        );
        // A success in between starts the count again.
        assert_eq!(
            e.record(true, &3, 3, COOLDOWN, now),
            CircuitChange::Unchanged
        );
        for lane in 0..2 {
            assert_eq!(
                e.record(false, &lane, 3, COOLDOWN, now),
                CircuitChange::Unchanged
            );
        }
        assert_eq!(e.record(false, &2, 3, COOLDOWN, now), CircuitChange::Opened);
        assert_eq!(e.admit(10, now), Admission::Start { circuit_open: true });
        e.release();
        assert_eq!(e.record(true, &2, 3, COOLDOWN, now), CircuitChange::Closed);
        assert_eq!(
            e.admit(10, now),
            Admission::Start {
                circuit_open: false
            }
        );
    }

    #[test]
    fn one_lane_failing_again_and_again_does_not_open_the_circuit_a_second_lane_does() {
        let mut e: Endpoint<&str> = Endpoint::default();
        let now = Instant::now();
        for _ in 0..50 {
            assert_eq!(
                e.record(false, &"bad", 5, COOLDOWN, now),
                CircuitChange::Unchanged
            );
        }
        assert_eq!(
            e.record(false, &"other", 5, COOLDOWN, now),
            CircuitChange::Opened
        );
        // A success forgets which lanes failed.
        assert_eq!(
            e.record(true, &"other", 5, COOLDOWN, now),
            CircuitChange::Closed
        );
        for _ in 0..50 {
            assert_eq!(
                e.record(false, &"other", 5, COOLDOWN, now),
                CircuitChange::Unchanged
            );
        }
    }

    #[test]
    fn after_the_cooldown_one_trial_goes_out_and_its_failure_opens_the_circuit_again() {
        let mut e: Endpoint<u8> = Endpoint::default();
        let now = Instant::now();
        assert_eq!(e.record(false, &7, 1, COOLDOWN, now), CircuitChange::Opened);
        let later = now + COOLDOWN + Duration::from_millis(1);
        assert_eq!(
            e.admit(10, later),
            Admission::Start {
                circuit_open: false
            },
            "the trial reaches the endpoint"
        );
        e.release();
        assert_eq!(
            e.record(false, &7, 1, COOLDOWN, later),
            CircuitChange::Unchanged
        );
        assert_eq!(
            e.admit(10, later),
            Admission::Start { circuit_open: true },
            "open again for another cooldown"
        );
    }

    #[test]
    fn endpoints_are_keyed_by_scheme_host_and_port() {
        assert_eq!(endpoint_key("https://a.example/x"), "https://a.example:443");
        assert_eq!(endpoint_key("http://a.example/y"), "http://a.example:80");
        assert_eq!(
            endpoint_key("http://127.0.0.1:9000/h"),
            "http://127.0.0.1:9000"
        );
    }
}
