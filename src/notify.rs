//! systemd service notifications (`sd_notify`): `READY=1` once every shard serves,
//! `WATCHDOG=1` while every shard still runs its timers, `STOPPING=1` when shutdown begins.
//!
//! Everything here is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd, or a
//! unit without `Type=notify`), so the server calls it unconditionally. A failed send is
//! logged and otherwise ignored: a notification must never take the server down.
//!
//! The liveness signal is cheap on purpose: each shard bumps its own [`Heartbeats`] slot
//! from a timer task. A shard whose executor is stuck (a task that never yields, a
//! deadlock) stops bumping, the main thread stops pinging, and systemd restarts the
//! service after `WatchdogSec`. This module knows nothing of glommio; the shard side of
//! the heartbeat lives in `shard/state.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// One counter per shard, bumped by that shard's heartbeat task.
pub type Heartbeats = [AtomicU64];

/// Tells systemd the service is up; `status` shows in `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is going down on purpose (not a crash).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}

fn send(states: &[NotifyState]) {
    // `false`: keep NOTIFY_SOCKET in the environment, we notify more than once (and
    // changing the environment of a multi-threaded process is unsound anyway).
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// The watchdog timeout systemd asked for, if any.
///
/// `sd_notify::watchdog_enabled` requires `WATCHDOG_PID` to name this process. libsystemd
/// treats `WATCHDOG_PID` as optional (absent = meant for us), and so do we: a wrapper
/// that cannot know our pid in advance may set `WATCHDOG_USEC` alone.
pub fn watchdog_timeout_from_env() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) {
        return (usec > 0).then(|| Duration::from_micros(usec));
    }
    watchdog_timeout(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// libsystemd's rule for `sd_watchdog_enabled`, on values already read.
pub fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid {
        Some(p) if p.trim().parse::<u32>().ok() != Some(me) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// How often shards bump their heartbeat for a given watchdog timeout: often enough that
/// a ping every half timeout always sees fresh beats (a quarter), at most once a second
/// (more buys nothing), at least every 10 ms (a tiny test timeout must not spin).
pub fn heartbeat_period(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(Duration::from_secs(1), |w| {
        (w / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    })
}

/// Decides when to ping the watchdog. Pure: the caller passes the time and the current
/// heartbeat values, so the rule is testable without systemd or shards.
#[derive(Debug)]
pub struct Watchdog {
    /// Half the timeout, as sd_watchdog_enabled(3) recommends.
    every: Duration,
    next: Instant,
    /// Heartbeats at the last ping; every one must move before the next ping.
    seen: Vec<u64>,
}

impl Watchdog {
    pub fn new(timeout: Duration, now: Instant, beats: Vec<u64>) -> Watchdog {
        Watchdog {
            every: timeout / 2,
            next: now,
            seen: beats,
        }
    }

    /// True when a ping is due now and every shard has beaten since the last one. A
    /// stalled shard keeps this false until it beats again (or systemd gives up on us).
    pub fn should_ping(&mut self, now: Instant, beats: &[u64]) -> bool {
        if now < self.next {
            return false;
        }
        let all_moved = beats.len() == self.seen.len()
            && beats.iter().zip(&self.seen).all(|(now, then)| now != then);
        if all_moved {
            self.seen = beats.to_vec();
            self.next = now + self.every;
        }
        all_moved
    }

    /// Reads the shards' heartbeats and pings systemd when [`Self::should_ping`] says so.
    pub fn tick(&mut self, now: Instant, heartbeats: &Heartbeats) {
        let beats = read(heartbeats);
        if self.should_ping(now, &beats) {
            watchdog_ping();
        }
    }
}

/// A snapshot of every shard's heartbeat counter.
pub fn read(heartbeats: &Heartbeats) -> Vec<u64> {
    heartbeats
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env_follows_libsystemd() {
        let us = Some("30000000");
        assert_eq!(
            watchdog_timeout(us, None, 7),
            Some(Duration::from_secs(30)),
            "no WATCHDOG_PID: meant for us"
        );
        assert_eq!(
            watchdog_timeout(us, Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_timeout(us, Some("8"), 7),
            None,
            "another process's"
        );
        assert_eq!(watchdog_timeout(None, None, 7), None);
        assert_eq!(watchdog_timeout(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout(Some("soon"), None, 7), None);
    }

    #[test]
    fn heartbeat_is_a_quarter_of_the_timeout_within_bounds() {
        assert_eq!(heartbeat_period(None), Duration::from_secs(1));
        assert_eq!(
            heartbeat_period(Some(Duration::from_secs(30))),
            Duration::from_secs(1)
        );
        assert_eq!(
            heartbeat_period(Some(Duration::from_secs(1))),
            Duration::from_millis(250)
        );
        assert_eq!(
            heartbeat_period(Some(Duration::from_millis(4))),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn pings_every_half_timeout_while_all_shards_beat() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Watchdog::new(Duration::from_secs(1), t0, vec![0, 0]);
        assert!(!w.should_ping(t0, &[0, 0]), "no beat yet");
        assert!(w.should_ping(t0 + ms(10), &[1, 1]));
        assert!(!w.should_ping(t0 + ms(200), &[2, 2]), "not due yet");
        assert!(
            w.should_ping(t0 + ms(510), &[3, 3]),
            "due after half the timeout"
        );
    }

    #[test]
    fn a_stalled_shard_stops_the_pings_until_it_beats_again() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Watchdog::new(Duration::from_secs(1), t0, vec![5, 5]);
        assert!(w.should_ping(t0, &[6, 6]));
        assert!(!w.should_ping(t0 + ms(600), &[7, 6]), "shard 1 stalled");
        assert!(!w.should_ping(t0 + ms(900), &[9, 6]), "still stalled");
        assert!(w.should_ping(t0 + ms(950), &[9, 7]), "it recovered");
    }

    #[test]
    fn notifications_without_a_socket_are_no_ops() {
        // NOTIFY_SOCKET is not set under `cargo test`; these must neither fail nor panic.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            ready("test");
            stopping();
            watchdog_ping();
        }
    }
}
