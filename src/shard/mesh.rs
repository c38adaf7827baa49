//! Messages between shards. Rare things only: relocated connections and SockJS sessions,
//! stats queries; never media.

use std::rc::Rc;
use std::time::Duration;

use futures::future::{select, Either, FusedFuture, FutureExt};
use glommio::channels::channel_mesh::Receivers;

use super::conn::{Conn, Detached};
use super::front_door;
use super::sockjs_session;
use super::state::Shard;
use super::ws_session::{self, BoxedDialect};
use crate::stats::ShardCounters;
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
    AdoptSockjs(Box<sockjs_session::Moving>),
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

/// Answers a query about this shard.
pub fn answer(shard: &Shard, query: Query) -> Answer {
    match query {
        Query::Snapshot => Answer::Snapshot(shard.snapshot()),
        Query::Latency { reset } => {
            let mut l = shard.latencies.borrow_mut();
            let snap = l.snapshot();
            if reset {
                l.reset();
            }
            Answer::Latency(Box::new(snap))
        }
    }
}

pub(super) fn spawn_receivers(shard: &Rc<Shard>, receivers: Receivers<MeshMsg>) {
    let receivers = Rc::new(receivers);
    for peer in 0..shard.shards {
        if peer == shard.id {
            continue;
        }
        let shard = shard.clone();
        let receivers = receivers.clone();
        glommio::spawn_local(async move {
            while let Ok(Some(msg)) = receivers.recv_from(peer).await {
                handle(&shard, msg).await;
            }
        })
        .detach();
    }
}

async fn handle(shard: &Rc<Shard>, msg: MeshMsg) {
    match msg {
        MeshMsg::Adopt(handover) => {
            let mut handover = *handover;
            let shard = shard.clone();
            match handover.session.take() {
                Some(dialect) => {
                    glommio::spawn_local(ws_session::adopt(shard, handover, dialect)).detach()
                }
                None => {
                    ShardCounters::add(&shard.counters.relocated_in, 1);
                    let conn = Conn::attach(handover.conn);
                    glommio::spawn_local(front_door::serve_http(
                        shard,
                        conn,
                        handover.leftover,
                        handover.peer,
                    ))
                    .detach()
                }
            };
        }
        MeshMsg::AdoptSockjs(moving) => sockjs_session::adopt(shard, *moving),
        MeshMsg::Query { from, id, query } => {
            let answer = answer(shard, query);
            let _ = shard
                .mesh
                .send_to(from, MeshMsg::Answer { id, answer })
                .await;
        }
        MeshMsg::Answer { id, answer } => {
            if let Some(tx) = shard.pending_stats.borrow_mut().remove(&id) {
                let _ = tx.send(answer);
            }
        }
    }
}

/// Every shard's answer, in shard order; `None` for a shard that did not answer in time.
pub async fn collect(shard: &Rc<Shard>, query: Query, deadline: Duration) -> Vec<Option<Answer>> {
    let mut waits = Vec::with_capacity(shard.shards);
    for peer in 0..shard.shards {
        if peer == shard.id {
            waits.push(None);
            continue;
        }
        let id = shard.next_id();
        let (tx, rx) = futures::channel::oneshot::channel();
        shard.pending_stats.borrow_mut().insert(id, tx);
        let sent = shard
            .mesh
            .try_send_to(
                peer,
                MeshMsg::Query {
                    from: shard.id,
                    id,
                    query,
                },
            )
            .is_ok();
        waits.push(sent.then_some((id, rx)));
    }
    let timer = glommio::timer::sleep(deadline).fuse();
    futures::pin_mut!(timer);
    let mut out = Vec::with_capacity(shard.shards);
    for (peer, wait) in waits.into_iter().enumerate() {
        if peer == shard.id {
            out.push(Some(answer(shard, query)));
            continue;
        }
        let Some((id, mut rx)) = wait else {
            out.push(None);
            continue;
        };
        let answer = if timer.is_terminated() {
            rx.try_recv().ok().flatten()
        } else {
            match select(rx, timer.as_mut()).await {
                Either::Left((Ok(stats), _)) => Some(stats),
                _ => None,
            }
        };
        if answer.is_none() {
            shard.pending_stats.borrow_mut().remove(&id);
        }
        out.push(answer);
    }
    out
}
