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

/// A shard's figures at one moment, as `/health` shows them.
#[derive(Clone, Debug, Serialize)]
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
}
