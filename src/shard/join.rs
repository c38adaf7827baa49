//! `POST /join/{conversationId}` of the one-shot SDP dialect (PROTOCOLS.md section 4):
//! who is asking, may they, and then record the user's current conversation, which a
//! later `GET /connect` (on any shard) joins; and whom a `/connect` request connects to
//! which conversation.

use std::time::Duration;

use super::state::Shard;
use super::timeout::within;
use crate::auth::validate_id;
use crate::control::PermissionDenied;
use crate::http::request::percent_decode;
use crate::http::{Head, Response};
use crate::signal::connect::Target;
use crate::signal::identity::{self, Caller, USER_CLAIM_HEADER};

/// The path prefix this handler serves.
pub(super) const PREFIX: &str = "/join/";

/// How much longer than `permissions.timeout_ms` a join waits for the control plane
/// before giving up on its own (the control plane enforces the timeout itself; this only
/// guards against a control thread that fell behind).
const CONTROL_GRACE: Duration = Duration::from_secs(1);

/// The caller of a one-shot request (`/join`, `/connect`): a Bearer token (header or
/// `?token=`), else, when `auth.trust_user_claim_header` is on, the `X-User-Claim`
/// header. The error is the answer to send: 400 for a missing or malformed identity, 401
/// for a bad token.
pub(crate) fn identify_request(shard: &Shard, head: &Head) -> Result<Caller, Response> {
    identity::identify(
        head.token(),
        head.header(USER_CLAIM_HEADER),
        shard.config.trust_user_claim_header,
        &shard.auth,
    )
    .map_err(|e| Response::error(e.status(), e.code(), &e.to_string()))
}

/// Answers `POST /join/{conversationId}`: 200 with an empty body once the user's
/// current conversation is recorded.
pub(super) async fn handle(shard: &Shard, head: &Head) -> Response {
    if head.method != "POST" {
        return Response::method_not_allowed("POST");
    }
    let raw = head.path.strip_prefix(PREFIX).unwrap_or("");
    // Clients may percent-encode the segment (encodeURIComponent turns ':' into %3A).
    let conversation = percent_decode(raw);
    if let Err(m) = validate_id("conversationId", &conversation) {
        return Response::error(400, "bad_request", &m);
    }
    let caller = match identify_request(shard, head) {
        Ok(caller) => caller,
        Err(resp) => return resp,
    };
    if let Err(e) = caller.check_room(&conversation) {
        return Response::auth_error(&e);
    }
    let user = caller.user_id();

    let control = &shard.control;
    if control.permissions_configured() {
        let limit = control.permission_timeout() + CONTROL_GRACE;
        let verdict = within(limit, control.check_permission(user, &conversation))
            .await
            .unwrap_or(Err(PermissionDenied::Timeout(limit)));
        if let Err(denied) = verdict {
            return Response::error(
                401,
                "unauthorized",
                &format!("not allowed to join {conversation}: {denied}"),
            );
        }
    }

    let previous = control.set_conversation(user, &conversation);
    match previous.as_deref() {
        Some(p) if p == conversation => {
            tracing::debug!(shard = shard.id, user, conversation, "join: already there")
        }
        Some(p) => tracing::info!(
            shard = shard.id,
            user,
            from = p,
            to = conversation.as_str(),
            "join: user moved to another conversation"
        ),
        None => tracing::info!(
            shard = shard.id,
            user,
            to = conversation.as_str(),
            "join: user entered a conversation"
        ),
    }
    Response::new(200)
}

/// Identity and conversation of a `/connect` request, or the response refusing it.
pub(super) fn connect_target(shard: &Shard, head: &Head) -> Result<Target, Response> {
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
        .map_err(|e| Response::auth_error(&e))?;
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
