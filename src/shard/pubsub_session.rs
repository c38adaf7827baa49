//! The publish/subscribe dialect on a shard.

use std::time::Instant;

use tungstenite::protocol::frame::coding::CloseCode;

use super::mesh::Resumable;
use super::state::Shard;
use super::ws_session::{Dialect, Step};
use crate::signal::p2p::ConnId;
use crate::signal::pubsub::{self, Outcome, Session};

pub struct PubSubDialect {
    session: Session,
}

impl PubSubDialect {
    /// `session.peer` is replaced by the connection id on the shard that serves it.
    pub fn new(session: Session) -> Self {
        PubSubDialect { session }
    }
}

impl Dialect for PubSubDialect {
    fn name(&self) -> &'static str {
        "pubsub"
    }

    fn on_text(&mut self, shard: &Shard, conn: ConnId, text: &str) -> Step {
        self.session.peer = conn;
        let started = Instant::now();
        let outcome = {
            let mut engine = shard.engine.borrow_mut();
            pubsub::handle_text(
                &mut engine,
                &shard.auth,
                started,
                &mut self.session,
                text,
                |room| shard.owner_of(room) == shard.id,
            )
        };
        shard.after_engine_call();
        shard
            .latencies
            .borrow_mut()
            .record_request(started.elapsed().as_micros() as u64);
        match outcome {
            Outcome::Reply(texts) => Step::Reply(texts),
            Outcome::Close(texts) => Step::Close(texts, CloseCode::Policy),
            Outcome::Relocate { room } => Step::Relocate(shard.owner_of(&room)),
        }
    }

    fn error_text(&self, reason: &str) -> String {
        pubsub::error(reason, None)
    }

    fn on_close(&mut self, shard: &Shard, conn: ConnId) {
        if self.session.room.is_some() {
            shard.engine.borrow_mut().leave(Instant::now(), conn);
            shard.after_engine_call();
        }
    }

    fn into_resumable(self) -> Resumable {
        Resumable::PubSub(Box::new(self.session))
    }

    fn notice(&mut self, notice: &crate::sfu::Notice) -> Option<String> {
        pubsub::event_text(&mut self.session, notice)
    }
}
