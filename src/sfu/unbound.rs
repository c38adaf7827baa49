//! Packet rates of source addresses that are not bound to a transport: a small token
//! bucket per source, in a table of fixed size, so that one address cannot make the
//! engine parse (and check the integrity of) an unbounded stream of STUN requests, and a
//! spray from many ports cannot grow memory.
//!
//! The table is set-associative: an address hashes to one set of [`WAYS`] slots; a new
//! address takes a free slot of its set or the one seen least recently. An address pushed
//! out starts with a full bucket when it comes back, so eviction never hurts the evicted
//! (a spray from many addresses is not what this limits: each address gets its own small
//! budget, and forged requests are dropped by the integrity check anyway).

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::Instant;

use rustc_hash::FxBuildHasher;

/// Slots per set.
pub const WAYS: usize = 4;
/// Sets in the table (a power of two).
pub const SETS: usize = 1024;

#[derive(Clone, Copy)]
struct Slot {
    addr: SocketAddr,
    tokens: f32,
    seen: Instant,
}

/// Token buckets for unbound sources: see the [module documentation](self).
pub struct UnboundRates {
    /// Tokens added per second (datagrams per second); 0 turns the limit off.
    per_s: f32,
    /// The bucket's size.
    burst: f32,
    /// `SETS * WAYS` slots, allocated on first use.
    slots: Vec<Option<Slot>>,
}

impl UnboundRates {
    /// Buckets of `per_s` datagrams per second, each holding one second's worth (at least
    /// one datagram); `per_s == 0` admits everything.
    pub fn new(per_s: u32) -> UnboundRates {
        UnboundRates {
            per_s: per_s as f32,
            burst: (per_s as f32).max(1.0),
            slots: Vec::new(),
        }
    }

    /// Whether a datagram from `addr` (not bound to a transport) may be looked at now; a
    /// datagram admitted takes one token of its source's bucket.
    pub fn admit(&mut self, now: Instant, addr: SocketAddr) -> bool {
        if self.per_s <= 0.0 {
            return true;
        }
        if self.slots.is_empty() {
            self.slots = vec![None; SETS * WAYS];
        }
        let h = FxBuildHasher.hash_one(addr);
        let set = ((h ^ (h >> 29) ^ (h >> 47)) as usize) & (SETS - 1);
        let ways = &mut self.slots[set * WAYS..(set + 1) * WAYS];
        if let Some(s) = ways.iter_mut().flatten().find(|s| s.addr == addr) {
            let elapsed = now.saturating_duration_since(s.seen).as_secs_f32();
            s.tokens = (s.tokens + elapsed * self.per_s).min(self.burst);
            s.seen = now;
            if s.tokens >= 1.0 {
                s.tokens -= 1.0;
                return true;
            }
            return false;
        }
        // A free slot, else the one seen least recently.
        let victim = match ways.iter().position(Option::is_none) {
            Some(i) => i,
            None => ways
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.map(|s| s.seen))
                .map_or(0, |(i, _)| i),
        };
        ways[victim] = Some(Slot {
            addr,
            tokens: self.burst - 1.0,
            seen: now,
        });
        true
    }

    /// Sources tracked now (at most `SETS * WAYS`).
    pub fn tracked(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn one_source_gets_its_rate_and_no_more() {
        let t0 = Instant::now();
        let mut r = UnboundRates::new(10);
        let admitted = (0..100).filter(|_| r.admit(t0, addr(1))).count();
        assert_eq!(admitted, 10, "the burst: one second's worth");
        // Another source is not held back by the first.
        assert!(r.admit(t0, addr(2)));
        // Half a second later: five more.
        let t1 = t0 + Duration::from_millis(500);
        let admitted = (0..100).filter(|_| r.admit(t1, addr(1))).count();
        assert_eq!(admitted, 5);
        // Idle for long: the bucket is full again, not fuller.
        let t2 = t1 + Duration::from_secs(60);
        let admitted = (0..100).filter(|_| r.admit(t2, addr(1))).count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let t0 = Instant::now();
        let mut r = UnboundRates::new(0);
        assert!((0..10_000).all(|_| r.admit(t0, addr(1))));
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn a_spray_from_many_ports_keeps_the_table_bounded() {
        let t0 = Instant::now();
        let mut r = UnboundRates::new(5);
        for i in 0..200_000u32 {
            let a = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 4000));
            // Each new source gets its own small budget.
            assert!(r.admit(t0 + Duration::from_micros(i as u64), a));
        }
        assert!(r.tracked() <= SETS * WAYS);
        assert_eq!(r.slots.len(), SETS * WAYS);
        // A source that keeps sending stays tracked through the spray (it is seen most
        // recently in its set) and stays limited.
        let mut r = UnboundRates::new(5);
        let mut admitted = 0;
        for i in 0..50_000u32 {
            let now = t0 + Duration::from_micros(i as u64);
            admitted += r.admit(now, addr(9)) as usize;
            r.admit(
                now,
                SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 4000)),
            );
        }
        assert!(admitted <= 6, "{admitted}");
    }
}
