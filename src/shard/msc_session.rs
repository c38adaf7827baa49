//! The mediasoup-client dialect on a shard: requests go to the shard's media engine.

use std::time::Instant;

use serde_json::json;

use super::mesh::Resumable;
use super::state::Shard;
use super::ws_session::{Dialect, Step};
use crate::auth::Identity;
use crate::signal::mediasoup::{self, Outcome, Session};
use crate::signal::p2p::ConnId;

pub struct MscDialect {
    session: Option<Session>,
    identity: Identity,
}

impl MscDialect {
    pub fn new(identity: Identity) -> Self {
        MscDialect {
            session: None,
            identity,
        }
    }
}

impl Dialect for MscDialect {
    fn name(&self) -> &'static str {
        "mediasoup"
    }

    fn on_text(&mut self, shard: &Shard, conn: ConnId, text: &str) -> Step {
        let session = self.session.get_or_insert_with(|| Session {
            peer: conn,
            identity: self.identity.clone(),
            room: None,
        });
        let started = Instant::now();
        let outcome = {
            let mut engine = shard.engine.borrow_mut();
            mediasoup::handle_text(&mut engine, started, session, text, |room| {
                shard.owner_of(room) == shard.id
            })
        };
        shard.after_engine_call();
        shard
            .latencies
            .borrow_mut()
            .record_request(started.elapsed().as_micros() as u64);
        match outcome {
            Outcome::Reply { text, error } => {
                if let Some(code) = error {
                    shard.counters.count_error(code);
                }
                Step::Reply(vec![text])
            }
            Outcome::Relocate { room } => Step::Relocate(shard.owner_of(&room)),
        }
    }

    fn error_text(&self, reason: &str) -> String {
        json!({"type": "error", "data": {"code": "bad_request", "message": reason}}).to_string()
    }

    fn on_close(&mut self, shard: &Shard, conn: ConnId) {
        if self.session.as_ref().is_some_and(|s| s.room.is_some()) {
            shard.engine.borrow_mut().leave(Instant::now(), conn);
            shard.after_engine_call();
        }
    }

    fn into_resumable(self) -> Resumable {
        Resumable::Msc(self.identity)
    }

    fn notice(&mut self, notice: &crate::sfu::Notice) -> Option<String> {
        Some(mediasoup::event_text(notice))
    }
}
