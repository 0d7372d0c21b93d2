//! When to try a delivery again: the configured schedule with jitter, and `Retry-After` clamped to
//! [delay, 2 × delay].

use std::time::Duration;

use rand::Rng;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Delays before attempts 2..N.
    schedule: Vec<Duration>,
    /// ± fraction applied to every delay.
    jitter: f64,
}

impl RetryPolicy {
    pub fn new(schedule: Vec<Duration>, jitter: f64) -> Self {
        RetryPolicy { schedule, jitter }
    }

    /// Attempts in all (the first plus one per scheduled delay).
    pub fn max_attempts(&self) -> u32 {
        self.schedule.len() as u32 + 1
    }

    /// The delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed, or `None`
    /// when that was the last one. `retry_after` is the endpoint's wish.
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let base = *self.schedule.get(attempt.checked_sub(1)? as usize)?;
        let spread = if self.jitter > 0.0 {
            rand::thread_rng().gen_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        let jittered = base.mul_f64(1.0 + spread);
        Some(match retry_after {
            Some(wish) => wish.clamp(base, base * 2),
            None => jittered,
        })
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(vec![Duration::from_secs(10), Duration::from_secs(30)], 0.1)
    }

    #[test]
    fn delays_follow_the_schedule_within_jitter() {
        let p = policy();
        assert_eq!(p.max_attempts(), 3);
        for _ in 0..100 {
            let d = p.next_delay(1, None).expect("second attempt");
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
            let d = p.next_delay(2, None).expect("third attempt");
            assert!(
                d >= Duration::from_secs(27) && d <= Duration::from_secs(33),
                "{d:?}"
            );
        }
        assert_eq!(p.next_delay(3, None), None);
    }

    #[test]
    fn retry_after_is_clamped_between_the_delay_and_twice_it() {
        let p = policy();
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(15))),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(500))),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert!(parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT").is_some());
        assert_eq!(parse_retry_after("soon"), None);
    }
}
