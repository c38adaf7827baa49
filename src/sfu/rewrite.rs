//! Per-consumer rewriting of sequence numbers and timestamps.
//!
//! While packets flow, the offset stays fixed, so real losses stay visible as gaps and
//! NACKs keep working. Packets the SFU itself drops (paused, waiting for a keyframe, or a
//! new source after a layer switch) leave no gap: the next forwarded packet resumes right
//! after the last one sent, and its timestamp moves on by the wall-clock time elapsed.

use std::time::Instant;

/// One consumer's sequence number and timestamp offsets (see the module documentation).
#[derive(Debug, Default)]
pub struct Rewriter {
    /// Added to the extended input sequence number.
    seq_offset: i64,
    ts_offset: u32,
    last: Option<Sent>,
    /// The next packet starts a new run (no gap, fresh offsets).
    resync: bool,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    ts: u32,
    at: Instant,
}

impl Rewriter {
    /// Call when packets will be dropped on purpose (pause, keyframe wait, switch).
    pub fn mark_discontinuity(&mut self) {
        self.resync = true;
    }

    /// Output (extended sequence number, timestamp) for an input packet.
    pub fn rewrite(&mut self, seq: u64, ts: u32, clock_rate: u32, now: Instant) -> (u64, u32) {
        match self.last {
            None => {
                self.seq_offset = 0;
                self.ts_offset = 0;
                self.resync = false;
            }
            Some(last) if self.resync => {
                self.resync = false;
                self.seq_offset = last.seq as i64 + 1 - seq as i64;
                let elapsed = now.saturating_duration_since(last.at);
                let ticks = ((elapsed.as_micros() as u64 * clock_rate as u64) / 1_000_000).max(1);
                let want = last.ts.wrapping_add(ticks as u32);
                self.ts_offset = want.wrapping_sub(ts);
            }
            Some(_) => {}
        }
        let out_seq = (seq as i64 + self.seq_offset).max(0) as u64;
        let out_ts = ts.wrapping_add(self.ts_offset);
        if self.last.is_none_or(|l| out_seq > l.seq) {
            self.last = Some(Sent {
                seq: out_seq,
                ts: out_ts,
                at: now,
            });
        }
        (out_seq, out_ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keeps_real_gaps_and_closes_deliberate_ones() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        assert_eq!(r.rewrite(100, 1000, 90_000, t0), (100, 1000));
        assert_eq!(r.rewrite(101, 1000, 90_000, t0), (101, 1000));
        // a real loss (102 missing) stays a gap
        assert_eq!(r.rewrite(103, 4000, 90_000, t0).0, 103);
        // paused: 104..=199 dropped by the SFU
        r.mark_discontinuity();
        let (seq, ts) = r.rewrite(200, 90_000, 90_000, t0 + Duration::from_secs(1));
        assert_eq!(seq, 104, "no gap after a deliberate drop");
        assert_eq!(ts, 4000 + 90_000, "timestamp moves on by the elapsed time");
        assert_eq!(r.rewrite(201, 93_000, 90_000, t0).0, 105);
    }

    #[test]
    fn timestamps_wrap() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        r.rewrite(1, u32::MAX - 10, 48_000, t0);
        r.mark_discontinuity();
        let (_, ts) = r.rewrite(50, 5, 48_000, t0 + Duration::from_millis(20));
        assert_eq!(ts, (u32::MAX - 10).wrapping_add(960));
    }
}
