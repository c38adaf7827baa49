//! The one-shot SDP dialect (`GET /connect`): one text message in (a complete SDP offer),
//! one out (the answer), then the socket may close while the peer connection lives on.
//! The conversation is the user's current one (`POST /join`), else the token's room, else
//! `?conversation=`; the request is served on the conversation's shard.

use std::time::Instant;

use tungstenite::protocol::frame::coding::CloseCode;

use super::join::identify_request;
use super::mesh::Resumable;
use super::state::Shard;
use super::ws_session::{Dialect, Step};
use crate::auth::validate_id;
use crate::http::{Head, Response};
use crate::signal::identity::Caller;
use crate::signal::p2p::ConnId;

/// Who connects to which conversation.
#[derive(Debug, Clone)]
pub struct Target {
    pub user_id: String,
    pub user_name: String,
    pub conversation: String,
}

/// Identity and conversation of a `/connect` request, or the response refusing it.
pub fn target(shard: &Shard, head: &Head) -> Result<Target, Response> {
    let caller = identify_request(shard, head)?;
    let conversation = shard
        .control
        .current_conversation(caller.user_id())
        .or_else(|| match &caller {
            Caller::Token(id) => id.room.clone(),
            Caller::Claim(_) => None,
        })
        .or_else(|| head.query("conversation").map(str::to_string))
        .ok_or_else(|| {
            Response::error(
                400,
                "bad_request",
                "no conversation: POST /join/{conversationId} first, use a token with roomId, or add ?conversation=",
            )
        })?;
    validate_id("conversation", &conversation)
        .map_err(|m| Response::error(400, "bad_request", &m))?;
    caller
        .check_room(&conversation)
        .map_err(|e| Response::error(403, "forbidden", &e.to_string()))?;
    let user_name = match &caller {
        Caller::Token(id) => id.user_name.clone(),
        Caller::Claim(c) => c.user_id.clone(),
    };
    Ok(Target {
        user_id: caller.user_id().to_string(),
        user_name,
        conversation,
    })
}

pub struct ConnectDialect {
    target: Target,
    answered: bool,
}

impl ConnectDialect {
    pub fn new(target: Target) -> Self {
        ConnectDialect {
            target,
            answered: false,
        }
    }
}

fn error_json(message: &str) -> String {
    serde_json::json!({"type": "error", "message": message}).to_string()
}

impl Dialect for ConnectDialect {
    fn name(&self) -> &'static str {
        "connect"
    }

    fn on_text(&mut self, shard: &Shard, conn: ConnId, text: &str) -> Step {
        if self.answered {
            return Step::Close(
                vec![error_json("one offer per connection")],
                CloseCode::Policy,
            );
        }
        let now = Instant::now();
        let t = &self.target;
        let result = {
            let mut engine = shard.engine.borrow_mut();
            engine
                .join(now, conn, &t.conversation, &t.user_id, &t.user_name, None)
                .and_then(|_| engine.connect_offer(now, conn, text))
                .inspect_err(|_| engine.leave(now, conn))
        };
        shard.after_engine_call();
        match result {
            Ok((_, answer)) => {
                self.answered = true;
                tracing::info!(shard = shard.id, conversation = %t.conversation, user = %t.user_id, "one-shot peer connected");
                // The peer connection lives on after the socket closes.
                Step::Close(vec![answer], CloseCode::Normal)
            }
            Err(e) => Step::Close(vec![error_json(&e.to_string())], CloseCode::Policy),
        }
    }

    fn error_text(&self, reason: &str) -> String {
        error_json(reason)
    }

    /// Nothing to release: the media session outlives the signaling socket and ends with
    /// ICE consent (or a later `/connect` of the same peer connection's owner).
    fn on_close(&mut self, _shard: &Shard, _conn: ConnId) {}

    fn into_resumable(self) -> Resumable {
        // Never relocated mid-session: the request was served on the conversation's shard.
        Resumable::Http
    }
}
