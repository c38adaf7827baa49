//! Per-shard counters. Each shard owns its own (plain `Cell`s: no atomics, no sharing);
//! endpoints collect [`ShardSnapshot`]s from every shard over the mesh and merge them.

use std::cell::Cell;

use serde::Serialize;

/// Counters of one shard, touched only by that shard's thread.
#[derive(Default, Debug)]
pub struct ShardCounters {
    /// Signaling sessions (WebSocket connections) currently served by this shard.
    pub connections: Cell<u64>,
    pub relocated_in: Cell<u64>,
    pub relocated_out: Cell<u64>,
    /// UDP datagrams that belonged to no transport, counted and dropped.
    pub datagrams_dropped: Cell<u64>,
}

impl ShardCounters {
    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get() + n);
    }

    pub fn sub(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().saturating_sub(n));
    }
}

/// Receive-to-send time of forwarded packets, in microseconds. Recording never allocates:
/// the histogram's buckets are sized up front (1 us to 10 s, 3 significant digits).
pub struct ForwardLatency(hdrhistogram::Histogram<u64>);

impl Default for ForwardLatency {
    fn default() -> Self {
        ForwardLatency(
            hdrhistogram::Histogram::new_with_bounds(1, 10_000_000, 3)
                .expect("static bounds are valid"),
        )
    }
}

impl ForwardLatency {
    pub fn record(&mut self, micros: u64, count: u64) {
        let _ = self.0.record_n(micros.clamp(1, 10_000_000), count);
    }

    pub fn histogram(&self) -> &hdrhistogram::Histogram<u64> {
        &self.0
    }
}

/// A shard's figures at one moment, as `/health` shows them.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardSnapshot {
    pub id: usize,
    pub core: usize,
    pub udp_port: u16,
    pub rooms: u64,
    pub connections: u64,
    pub relocated_in: u64,
    pub relocated_out: u64,
    pub datagrams_dropped: u64,
    pub transports: u64,
    pub producers: u64,
    pub consumers: u64,
    /// RTP packets received from publishers.
    pub packets_in: u64,
    /// RTP packets forwarded to subscribers.
    pub packets_out: u64,
}
