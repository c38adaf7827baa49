//! The relay dialect on a shard: room membership and delivery to the members' queues.

use super::mesh::Resumable;
use super::state::{Outbound, Shard};
use super::ws_session::{Dialect, Step};
use crate::signal::p2p::{self, ConnId, Delivery, Request};

pub struct P2pDialect(pub p2p::Session);

impl Dialect for P2pDialect {
    fn name(&self) -> &'static str {
        "p2p"
    }

    fn on_text(&mut self, shard: &Shard, conn: ConnId, text: &str) -> Step {
        let session = &mut self.0;
        let request = match session.handle_text(text) {
            Ok(r) => r,
            Err(reason) => return Step::Reply(vec![self.error_text(&reason)]),
        };
        match request {
            Request::Connect { user_id, room } => {
                let owner = shard.owner_of(&room.shard_key());
                if owner != shard.id {
                    return Step::Relocate(owner);
                }
                let out = shard.p2p_rooms.borrow_mut().connect(&room, conn, &user_id);
                tracing::info!(shard = shard.id, conn, room = %room.room, ns = %room.namespace, user = %user_id, "joined relay room");
                session.joined = Some((user_id, room));
                deliver(shard, out);
            }
            Request::Broadcast => {
                let (_, room) = session.joined.as_ref().expect("validated: joined");
                let out = shard.p2p_rooms.borrow().broadcast(room, conn, text);
                deliver(shard, out);
            }
            Request::Ping => {
                let (user, room) = session.joined.as_ref().expect("validated: joined");
                return Step::Reply(vec![shard.p2p_rooms.borrow().ping(room, user)]);
            }
            Request::Disconnect => self.on_close(shard, conn),
        }
        Step::Reply(Vec::new())
    }

    fn error_text(&self, reason: &str) -> String {
        let s = &self.0;
        let (user, room) = match &s.joined {
            Some((u, r)) => (u.as_str(), r.room.as_str()),
            None => (s.token_user.as_deref().unwrap_or(""), ""),
        };
        p2p::packet("error", user, room, reason)
    }

    fn on_close(&mut self, shard: &Shard, conn: ConnId) {
        if let Some((_, room)) = self.0.joined.take() {
            let out = shard.p2p_rooms.borrow_mut().disconnect(&room, conn);
            deliver(shard, out);
        }
    }

    fn into_resumable(self) -> Resumable {
        Resumable::P2p(self.0)
    }
}

/// Queues texts to their sessions. A session whose queue is full is cut loose (its
/// queue dropped) rather than letting one slow client hold up the room.
fn deliver(shard: &Shard, deliveries: Vec<Delivery>) {
    for d in deliveries {
        shard.send_to_conn(d.to, Outbound::Text(d.text));
    }
}
