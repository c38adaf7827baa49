//! Messages between shards. Rare things only: relocated connections and SockJS sessions,
//! stats queries; never media.

use std::collections::VecDeque;

use super::conn::Detached;
use crate::signal::dialect::BoxedDialect;
use crate::stats::{LatencySnapshot, ShardSnapshot};

/// A connection moving to the shard that owns its room.
pub struct Handover {
    pub conn: Detached,
    /// Bytes read from the socket but not yet parsed.
    pub leftover: Vec<u8>,
    /// The message that named the room; the owner handles it first.
    pub pending: String,
    pub peer: Option<std::net::SocketAddr>,
    /// A WebSocket session's dialect state; `None` for an HTTP request for a room of the
    /// owner shard (WHIP/WHEP, `/connect`): `leftover` then holds the request as received
    /// and the owner serves it from the start.
    pub session: Option<BoxedDialect>,
}

pub enum MeshMsg {
    Adopt(Box<Handover>),
    /// A SockJS session of the HTTP transports moving to the shard that owns its room.
    AdoptSockjs(Box<Moving>),
    Query {
        from: usize,
        id: u64,
        query: Query,
    },
    Answer {
        id: u64,
        answer: Answer,
    },
}

/// What endpoints ask every shard.
#[derive(Clone, Copy)]
pub enum Query {
    /// Counters, as `/health` shows them.
    Snapshot,
    /// The latency histograms; `reset` starts a new interval after the copy.
    Latency { reset: bool },
}

pub enum Answer {
    Snapshot(ShardSnapshot),
    Latency(Box<LatencySnapshot>),
}

/// A session on its way to another shard.
pub struct Moving {
    pub(super) id: String,
    pub(super) user: Option<String>,
    pub(super) dialect: BoxedDialect,
    pub(super) inbox: VecDeque<String>,
    pub(super) outbox: VecDeque<String>,
}
