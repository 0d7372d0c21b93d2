//! Per-party realtime connection counts on this node (`realtime.max_connections_per_party`): a
//! connection takes a slot when its dialog token is accepted and gives it back when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Open realtime connections by authenticated party (the dialog token's `c`).
pub struct PartyConnections {
    limit: usize,
    /// Party → open connections; an entry is removed when its count drops to zero, so the map
    /// holds only parties that are connected now.
    counts: Mutex<HashMap<String, usize>>,
}

/// One connection's slot; dropping it frees the slot.
pub struct PartySlot {
    owner: Arc<PartyConnections>,
    party: String,
}

impl PartyConnections {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(PartyConnections {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `party`, or None when it already holds `limit` connections.
    pub fn acquire(self: &Arc<Self>, party: &str) -> Option<PartySlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(party.to_owned()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(PartySlot {
            owner: self.clone(),
            party: party.to_owned(),
        })
    }

    /// Connections `party` holds now.
    pub fn count(&self, party: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(party).copied().unwrap_or(0)
    }
}

impl Drop for PartySlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.party) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.party);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_party_gets_at_most_limit_slots_and_freed_slots_come_back() {
        let conns = PartyConnections::new(2);
        let a = conns.acquire("p").expect("first");
        let _b = conns.acquire("p").expect("second");
        assert!(conns.acquire("p").is_none(), "third is refused");
        assert!(
            conns.acquire("q").is_some(),
            "other parties are not affected"
        );
        drop(a);
        assert_eq!(conns.count("p"), 1);
        assert!(conns.acquire("p").is_some(), "a freed slot is reusable");
    }
}
