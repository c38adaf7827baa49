//! Loudest-speaker selection for audio slots (`/connect`): a client with fewer receiving
//! audio sections than there are speakers hears the loudest ones. Levels are RFC 6464
//! audio levels in dBov (0 loudest, -127 silence), smoothed per speaker.
//!
//! Hysteresis keeps slots stable: a speaker holds its slot while it is active; a newcomer
//! takes an occupied slot only when it is louder than the quietest holder by
//! [`SWITCH_MARGIN_DB`] and that holder has held the slot for [`MIN_HOLD`].

use std::time::{Duration, Instant};

/// How much louder (dB) a speaker must be to take an occupied slot.
pub const SWITCH_MARGIN_DB: f32 = 6.0;
/// How long a speaker keeps a slot before it can be displaced.
pub const MIN_HOLD: Duration = Duration::from_millis(1000);
/// A speaker whose packets stopped this long ago is gone.
pub const INACTIVE: Duration = Duration::from_millis(1000);
/// Smoothing of the level: the weight of each new packet's level.
const SMOOTHING: f32 = 0.1;

/// One speaker's smoothed level.
#[derive(Debug, Clone, Copy)]
pub struct Level {
    /// The smoothed level in dBov: 0 loudest, -127 silence.
    pub db: f32,
    /// When the speaker's last packet arrived.
    pub last_packet: Instant,
}

impl Level {
    /// Silence, with `now` as the last sign of life.
    pub fn new(now: Instant) -> Self {
        Level {
            db: -127.0,
            last_packet: now,
        }
    }

    /// Feeds one packet's audio level (`None`: the packet had none; it still shows life).
    pub fn update(&mut self, now: Instant, level: Option<i8>) {
        if let Some(l) = level {
            let l = -(l.unsigned_abs() as f32).min(127.0);
            self.db += SMOOTHING * (l - self.db);
        }
        self.last_packet = now;
    }

    /// Whether the speaker sent within [`INACTIVE`].
    pub fn active(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_packet) < INACTIVE
    }
}

/// A slot's current holder and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The speaker's producer id.
    pub speaker: u64,
    /// When it took the slot.
    pub since: Instant,
}

/// New slot assignment from the current one and the speakers' levels.
pub fn choose(
    now: Instant,
    slots: &[Option<Held>],
    speakers: &[(u64, Level)],
) -> Vec<Option<Held>> {
    let level_of = |s: u64| speakers.iter().find(|(id, _)| *id == s).map(|(_, l)| *l);
    // Holders that went quiet for good free their slot.
    let mut out: Vec<Option<Held>> = slots
        .iter()
        .map(|h| h.filter(|h| level_of(h.speaker).is_some_and(|l| l.active(now))))
        .collect();
    let mut waiting: Vec<(u64, Level)> = speakers
        .iter()
        .filter(|(id, l)| l.active(now) && !out.iter().flatten().any(|h| h.speaker == *id))
        .copied()
        .collect();
    waiting.sort_by(|a, b| b.1.db.total_cmp(&a.1.db));
    for (speaker, level) in waiting {
        if let Some(free) = out.iter_mut().find(|s| s.is_none()) {
            *free = Some(Held {
                speaker,
                since: now,
            });
            continue;
        }
        // Displace the quietest holder that has held long enough, if clearly louder.
        let quietest = out
            .iter_mut()
            .flatten()
            .filter(|h| now.saturating_duration_since(h.since) >= MIN_HOLD)
            .min_by(|a, b| {
                let la = level_of(a.speaker).map_or(-127.0, |l| l.db);
                let lb = level_of(b.speaker).map_or(-127.0, |l| l.db);
                la.total_cmp(&lb)
            });
        if let Some(h) = quietest {
            let held_level = level_of(h.speaker).map_or(-127.0, |l| l.db);
            if level.db > held_level + SWITCH_MARGIN_DB {
                *h = Held {
                    speaker,
                    since: now,
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvl(now: Instant, db: f32) -> Level {
        Level {
            db,
            last_packet: now,
        }
    }

    #[test]
    fn free_slots_take_the_loudest_first() {
        let now = Instant::now();
        let speakers = [
            (1, lvl(now, -60.0)),
            (2, lvl(now, -20.0)),
            (3, lvl(now, -40.0)),
        ];
        let out = choose(now, &[None, None], &speakers);
        let ids: Vec<u64> = out.iter().flatten().map(|h| h.speaker).collect();
        assert_eq!(ids, vec![2, 3]);
    }

    #[test]
    fn a_holder_stays_unless_clearly_quieter_and_held_long_enough() {
        let t0 = Instant::now();
        let held = [Some(Held {
            speaker: 1,
            since: t0,
        })];
        // Slightly louder newcomer: no switch.
        let at = t0 + MIN_HOLD;
        let s = [(1, lvl(at, -30.0)), (2, lvl(at, -27.0))];
        assert_eq!(choose(at, &held, &s)[0].unwrap().speaker, 1);
        // Much louder, but the holder only just got the slot: no switch.
        let s = [(1, lvl(t0, -30.0)), (2, lvl(t0, -10.0))];
        assert_eq!(
            choose(t0 + Duration::from_millis(100), &held, &s)[0]
                .unwrap()
                .speaker,
            1
        );
        // Much louder after the hold time: switch.
        let later = t0 + MIN_HOLD;
        let s = [(1, lvl(later, -30.0)), (2, lvl(later, -10.0))];
        assert_eq!(choose(later, &held, &s)[0].unwrap().speaker, 2);
    }

    #[test]
    fn a_silent_holder_frees_its_slot() {
        let t0 = Instant::now();
        let held = [Some(Held {
            speaker: 1,
            since: t0,
        })];
        let later = t0 + INACTIVE + Duration::from_millis(10);
        let s = [(1, lvl(t0, -10.0)), (2, lvl(later, -90.0))];
        assert_eq!(choose(later, &held, &s)[0].unwrap().speaker, 2);
    }

    #[test]
    fn levels_smooth_towards_the_packets() {
        let now = Instant::now();
        let mut l = Level::new(now);
        for _ in 0..100 {
            l.update(now, Some(-20));
        }
        assert!((l.db + 20.0).abs() < 1.0, "{}", l.db);
    }
}
