//! The seen rule (Dialogporten's): a details fetch by a user emits `seen` only when the user has no
//! seen-log entry at or after the dialog's current `updatedAt`; at most one per (dialog, user, updatedAt).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::dialog::SeenEntry;
use super::party::Party;

/// Namespace of the deterministic seen event ids (UUIDv5 over dialog, user and `updatedAt`).
const SEEN_NAMESPACE: Uuid = Uuid::from_u128(0x6d1a_4c3e_8f0b_4e5a_9c2d_7b31_0f4e_a5c9);

pub fn needs_seen(log: &[SeenEntry], user: &Party, updated_at: DateTime<Utc>) -> bool {
    !log.iter()
        .any(|e| &e.seen_by == user && e.seen_at >= updated_at)
}

/// Records a view; only the latest view per user matters to the rule, so older entries are replaced.
pub fn record(log: &mut Vec<SeenEntry>, user: &Party, at: DateTime<Utc>) {
    log.retain(|e| &e.seen_by != user);
    log.push(SeenEntry {
        seen_by: user.clone(),
        seen_at: at,
    });
}

/// The same (dialog, user, updatedAt) always yields the same event id, so a duplicate seen event
/// could be recognised downstream even if one ever slipped through.
pub fn seen_event_id(dialog: Uuid, user: &Party, updated_at: DateTime<Utc>) -> Uuid {
    let name = format!("{dialog}|{user}|{}", updated_at.timestamp_micros());
    Uuid::new_v5(&SEEN_NAMESPACE, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn user(n: u8) -> Party {
        Party::person(&format!("0889569968{n}")).expect("pid")
    }

    #[test]
    fn no_entry_means_seen_is_needed() {
        assert!(needs_seen(&[], &user(1), Utc::now()));
    }

    #[test]
    fn entry_at_or_after_update_suppresses_seen() {
        let t = Utc::now();
        let mut log = Vec::new();
        record(&mut log, &user(1), t);
        assert!(!needs_seen(&log, &user(1), t));
        assert!(!needs_seen(&log, &user(1), t - Duration::seconds(1)));
        assert!(needs_seen(&log, &user(1), t + Duration::seconds(1)));
    }

    #[test]
    fn other_users_entries_do_not_count() {
        let t = Utc::now();
        let mut log = Vec::new();
        record(&mut log, &user(1), t);
        assert!(needs_seen(&log, &user(2), t));
    }

    #[test]
    fn record_keeps_one_entry_per_user() {
        let t = Utc::now();
        let mut log = Vec::new();
        record(&mut log, &user(1), t);
        record(&mut log, &user(1), t + Duration::seconds(1));
        record(&mut log, &user(2), t);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn seen_event_id_is_deterministic_per_dialog_user_and_update() {
        let d = Uuid::now_v7();
        let t = Utc::now();
        assert_eq!(seen_event_id(d, &user(1), t), seen_event_id(d, &user(1), t));
        assert_ne!(seen_event_id(d, &user(1), t), seen_event_id(d, &user(2), t));
        assert_ne!(
            seen_event_id(d, &user(1), t),
            seen_event_id(d, &user(1), t + Duration::seconds(1))
        );
    }
}
