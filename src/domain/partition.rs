//! Webhook partitions: every delivery lane (subscription, stream) belongs to one partition, by a
//! stable hash of its stream, so all lanes of a dialog share one. The hash is part of the stored
//! data (feeds and pending deliveries are kept per partition): it must never change.

use super::CloudEvent;

/// The stream an event's delivery lanes are keyed by: its dialog (`resourceinstance`), or the
/// event itself when it belongs to none.
pub fn lane_stream(event: &CloudEvent) -> &str {
    event.resourceinstance.as_deref().unwrap_or(&event.id)
}

/// The partition of `stream` among `partitions` (FNV-1a, 64 bit).
pub fn partition_of(stream: &str, partitions: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stream.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u16
}

/// The partition `event`'s lanes belong to.
pub fn event_partition(event: &CloudEvent, partitions: u16) -> u16 {
    partition_of(lane_stream(event), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_keeps_its_partition_and_streams_spread_over_all() {
        // Stored feeds depend on these values: a changed hash would strand them.
        assert_eq!(partition_of("", 64), (0xcbf2_9ce4_8422_2325u64 % 64) as u16);
        assert_eq!(
            partition_of("0190a5c4-0000-7000-8000-000000000001", 64),
            partition_of("0190a5c4-0000-7000-8000-000000000001", 64)
        );
        assert_eq!(partition_of("stuck", 1), 0);
        let mut seen = [0usize; 64];
        for n in 0..6400 {
            seen[partition_of(&uuid::Uuid::from_u128(n * 7919).to_string(), 64) as usize] += 1;
        }
        assert!(
            seen.iter().all(|&c| (50..=150).contains(&c)),
            "uneven spread: {seen:?}"
        );
    }
}
