//! Per-client rate limits (WebSocket and SockJS sessions): token buckets of messages and
//! bytes a client may send
//! (`limits.messages_per_s`, `limits.message_burst`, `limits.bytes_per_s`), and the bound on
//! the work one session does per executor turn.

use std::time::Instant;

use crate::config::Config;

/// Messages one session handles in a row before it yields to the other tasks of its shard,
/// so that one client's burst (many messages in one TCP read) cannot starve the readers it
/// delivers to.
pub const MESSAGES_PER_TURN: usize = 32;
/// Bytes of messages one session handles in a row before it yields.
pub const BYTES_PER_TURN: usize = 256 * 1024;

/// A token bucket: `rate` tokens a second, at most `capacity` saved up.
pub(super) struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(rate: f64, capacity: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    pub(super) fn take(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Gives back `n` tokens taken (up to the capacity).
    pub(super) fn refund(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(self.capacity);
    }

    /// How long until one token is there, after a refused [`take`](Self::take).
    pub(super) fn wait_for_one(&self) -> std::time::Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        std::time::Duration::from_secs_f64(missing / self.rate.max(f64::MIN_POSITIVE))
    }

    /// Whether the bucket would be full by `now`: it is then the same as a fresh one, and
    /// a table may forget it.
    pub(super) fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.capacity
    }
}

/// What one client may send: messages and bytes.
pub struct SenderLimit {
    messages: Bucket,
    bytes: Bucket,
    messages_per_s: u32,
    bytes_per_s: usize,
}

impl SenderLimit {
    pub fn new(config: &Config, now: Instant) -> SenderLimit {
        let l = &config.limits;
        let byte_burst = l.bytes_per_s.max(config.max_message_bytes);
        SenderLimit {
            messages: Bucket::new(l.messages_per_s as f64, l.message_burst as f64, now),
            bytes: Bucket::new(l.bytes_per_s as f64, byte_burst as f64, now),
            messages_per_s: l.messages_per_s,
            bytes_per_s: l.bytes_per_s,
        }
    }

    /// Counts one message of `len` bytes; `Err` with the reason when it is over a limit.
    pub fn admit(&mut self, len: usize, now: Instant) -> Result<(), String> {
        if !self.messages.take(1.0, now) {
            return Err(format!(
                "rate limit: over {} messages/s (limits.messages_per_s)",
                self.messages_per_s
            ));
        }
        if !self.bytes.take(len as f64, now) {
            return Err(format!(
                "rate limit: over {} bytes/s (limits.bytes_per_s)",
                self.bytes_per_s
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 5.0, t0);
        assert!((0..5).all(|_| b.take(1.0, t0)));
        assert!(!b.take(1.0, t0));
        let t1 = t0 + Duration::from_millis(300);
        assert!(b.take(1.0, t1) && b.take(1.0, t1) && b.take(1.0, t1));
        assert!(!b.take(1.0, t1));
        let later = t1 + Duration::from_secs(60);
        assert!((0..5).all(|_| b.take(1.0, later)));
        assert!(!b.take(1.0, later), "never more than the capacity saved up");
    }
}
