//! WHIP (RFC 9725) and WHEP: one HTTP request publishes or views, the resource URL ends it.
//! Served on the shard that owns the room (the front door relocates the request); a
//! request is translated here with the shard's state lent in a [`Context`], whose `conn`
//! is the peer id a new session gets.
//!
//! - `POST /whip/{room}`: SDP offer in, `201 Created`, `Location: /whip/{room}/{id}`, answer.
//! - `POST /whep/{room}` (everything published in the room, up to the offer's media
//!   sections) or `/whep/{room}/{publisherId}` (one publisher's tracks).
//! - `DELETE` the resource ends the session; `PATCH` with a trickle-ice-sdpfrag adds
//!   candidates (204); `OPTIONS` answers CORS.

use super::dialect::Context;
use crate::auth::{validate_id, Identity};
use crate::http::{Head, Response};
use crate::sfu::SfuError;

const SDP: &str = "application/sdp";
const TRICKLE: &str = "application/trickle-ice-sdpfrag";

/// Which endpoint, room and (for resources and WHEP publishers) the last segment.
struct Target<'a> {
    whip: bool,
    room: &'a str,
    rest: Option<&'a str>,
}

fn target(path: &str) -> Option<Target<'_>> {
    let (whip, tail) = if let Some(t) = path.strip_prefix("/whip/") {
        (true, t)
    } else {
        (false, path.strip_prefix("/whep/")?)
    };
    let mut parts = tail.splitn(2, '/');
    let room = parts.next().filter(|r| !r.is_empty())?;
    let rest = parts.next().filter(|r| !r.is_empty());
    Some(Target { whip, room, rest })
}

/// The room a WHIP/WHEP path names, so the front door can route it to its shard.
pub fn room_of(path: &str) -> Option<&str> {
    target(path).map(|t| t.room)
}

fn cors(resp: Response) -> Response {
    resp.header("Access-Control-Allow-Origin", "*")
        .header("Access-Control-Expose-Headers", "Location, Link")
}

fn content_type_is(head: &Head, want: &str) -> bool {
    head.header("content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

fn identity(cx: &Context<'_>, head: &Head, room: &str) -> Result<Identity, Response> {
    let token = head.token().ok_or_else(|| {
        Response::error(
            401,
            "unauthorized",
            "missing token: send Authorization: Bearer JWT",
        )
    })?;
    let id = cx
        .auth
        .verify(token)
        .map_err(|e| Response::auth_error(&e))?;
    id.check_room(room).map_err(|e| Response::auth_error(&e))?;
    Ok(id)
}

/// The token check of a WHIP/WHEP request from its head alone, before its body is read:
/// `Some(response)` (401/403 or 404) when the request is to be refused without reading it.
pub fn refuse_before_body(auth: &crate::auth::Authenticator, head: &Head) -> Option<Response> {
    let Some(t) = target(&head.path) else {
        return Some(cors(Response::error(
            404,
            "not_found",
            "no such WHIP/WHEP path",
        )));
    };
    let served = match head.method.as_str() {
        "POST" => !t.whip || t.rest.is_none(),
        "DELETE" | "PATCH" => t.rest.is_some(),
        _ => false,
    };
    if !served {
        return None;
    }
    let check = || -> Result<(), Response> {
        let token = head.token().ok_or_else(|| {
            Response::error(
                401,
                "unauthorized",
                "missing token: send Authorization: Bearer JWT",
            )
        })?;
        let id = auth.verify(token).map_err(|e| Response::auth_error(&e))?;
        id.check_room(t.room).map_err(|e| Response::auth_error(&e))
    };
    check().err().map(cors)
}

fn sfu_error(e: SfuError) -> Response {
    match e {
        SfuError::UnknownId(_) => Response::error(404, e.code(), &e.to_string()),
        SfuError::Internal(_) => Response::error(500, e.code(), &e.to_string()),
        // A full room or shard, or a user's count: later may do.
        SfuError::Limit { .. } if e.is_capacity() => {
            Response::error(429, e.code(), &e.to_string()).header("Retry-After", "5")
        }
        _ => Response::error(400, e.code(), &e.to_string()),
    }
}

/// Answers one WHIP/WHEP request.
pub fn handle(cx: &mut Context<'_>, head: &Head, body: &[u8]) -> Response {
    let Some(t) = target(&head.path) else {
        return cors(Response::error(404, "not_found", "no such WHIP/WHEP path"));
    };
    let resp = match head.method.as_str() {
        "OPTIONS" => Response::new(204)
            .header(
                "Access-Control-Allow-Methods",
                "POST, PATCH, DELETE, OPTIONS",
            )
            .header(
                "Access-Control-Allow-Headers",
                "Authorization, Content-Type, If-Match",
            )
            .header("Access-Control-Max-Age", "86400")
            .header("Accept-Post", SDP),
        "POST" if t.whip && t.rest.is_none() => publish(cx, head, body, t.room),
        "POST" if !t.whip => view(cx, head, body, t.room, t.rest),
        "DELETE" | "PATCH" if t.rest.is_some() => resource(cx, head, body, &t),
        _ => Response::error(405, "method_not_allowed", "see the Allow header").header(
            "Allow",
            if t.rest.is_some() {
                "DELETE, PATCH, OPTIONS"
            } else {
                "POST, OPTIONS"
            },
        ),
    };
    cors(resp)
}

fn sdp_offer<'a>(head: &Head, body: &'a [u8]) -> Result<&'a str, Response> {
    if !content_type_is(head, SDP) {
        return Err(Response::error(
            415,
            "unsupported_media_type",
            "Content-Type must be application/sdp",
        ));
    }
    std::str::from_utf8(body)
        .ok()
        .filter(|s| s.starts_with("v=0"))
        .ok_or_else(|| Response::error(400, "bad_request", "the body is not an SDP offer"))
}

fn created(kind: &str, room: &str, transport: &str, answer: String) -> Response {
    Response::new(201)
        .header("Content-Type", SDP)
        .header("Location", &format!("/{kind}/{room}/{transport}"))
        .body(answer.into_bytes())
}

fn publish(cx: &mut Context<'_>, head: &Head, body: &[u8], room: &str) -> Response {
    let id = match identity(cx, head, room) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let offer = match sdp_offer(head, body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !id.can_publish {
        return Response::error(403, "forbidden", "token does not allow publishing");
    }
    if let Err(m) = validate_id("roomId", room) {
        return Response::error(400, "bad_request", &m);
    }
    let (now, peer, shard) = (cx.now, cx.conn, cx.shard);
    let engine = &mut *cx.engine;
    if let Err(e) = engine.join_resource(now, peer, room, &id.user_id, &id.user_name) {
        return sfu_error(e);
    }
    // No session holds the peer: it ends with its transport (a DELETE, failed media, or
    // no connection within limits.connect_timeout_ms).
    engine.set_one_shot(peer);
    match engine.publish_offer(now, peer, offer) {
        Ok((transport, answer)) => {
            tracing::info!(shard, room, user = %id.user_id, "WHIP session created");
            created("whip", room, &transport, answer)
        }
        Err(e) => {
            engine.leave(now, peer);
            sfu_error(e)
        }
    }
}

fn view(
    cx: &mut Context<'_>,
    head: &Head,
    body: &[u8],
    room: &str,
    publisher: Option<&str>,
) -> Response {
    let id = match identity(cx, head, room) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let offer = match sdp_offer(head, body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !id.can_subscribe {
        return Response::error(403, "forbidden", "token does not allow subscribing");
    }
    let (now, peer, shard) = (cx.now, cx.conn, cx.shard);
    let engine = &mut *cx.engine;
    if !engine.has_room(room) {
        return Response::error(404, "not_found", &format!("no room {room:?}"));
    }
    if let Err(e) = engine.join_resource(now, peer, room, &id.user_id, &id.user_name) {
        return sfu_error(e);
    }
    engine.set_one_shot(peer);
    let producers = match publisher {
        None => engine
            .room_producers(peer)
            .map(|ps| ps.into_iter().map(|(p, _)| p).collect::<Vec<_>>()),
        Some(p) => match p.parse::<u64>() {
            Ok(publisher) => engine.publisher_producers(peer, publisher),
            Err(_) => Err(SfuError::UnknownId(p.to_string())),
        },
    };
    let result = producers.and_then(|ps| {
        if ps.is_empty() {
            Err(SfuError::UnknownId("nothing is published there yet".into()))
        } else {
            engine.subscribe_offer(now, peer, offer, &ps)
        }
    });
    match result {
        Ok((transport, answer)) => {
            tracing::info!(shard, room, user = %id.user_id, "WHEP session created");
            created("whep", room, &transport, answer)
        }
        Err(e) => {
            engine.leave(now, peer);
            sfu_error(e)
        }
    }
}

fn resource(cx: &mut Context<'_>, head: &Head, body: &[u8], t: &Target) -> Response {
    let id = match identity(cx, head, t.room) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let transport = t.rest.unwrap_or("");
    let now = cx.now;
    let engine = &mut *cx.engine;
    let Some((peer, user)) = engine.transport_owner(transport) else {
        return Response::error(404, "not_found", "no such session");
    };
    if user != id.user_id {
        return Response::error(403, "forbidden", "the session belongs to another user");
    }
    if head.method == "DELETE" {
        engine.leave(now, peer);
        return Response::new(200);
    }
    if !content_type_is(head, TRICKLE) {
        return Response::error(
            415,
            "unsupported_media_type",
            "Content-Type must be application/trickle-ice-sdpfrag",
        );
    }
    let frag = String::from_utf8_lossy(body);
    for line in frag.lines().filter(|l| l.starts_with("a=candidate:")) {
        if let Err(e) = engine.add_ice_candidate(now, peer, transport, line) {
            return sfu_error(e);
        }
    }
    Response::new(204)
}
