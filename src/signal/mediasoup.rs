//! The request/response dialect that mediasoup-client apps speak (PROTOCOLS.md section 1):
//! `{type, data, requestId}` requests, `response` answers with `data` or `error`, and
//! events. This module translates; the media core does the work.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Value};

use super::dialect::{Context, Dialect, Step};
use crate::auth::{validate_id, Identity};
use crate::sfu::engine::{Engine, PeerId};
use crate::sfu::ortc::{self, DtlsParameters, Kind, RtpCapabilities, RtpParameters};
use crate::sfu::transport::Direction;
use crate::sfu::{Notice, SfuError};

#[derive(Deserialize)]
struct Request {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
    #[serde(rename = "requestId")]
    request_id: Value,
}

/// One signaling connection's state.
#[derive(Debug, Clone)]
pub struct Session {
    pub peer: PeerId,
    pub identity: Identity,
    /// The room once `join-room` succeeded.
    pub room: Option<String>,
}

/// What the glue must do after a message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Send this text to the client; `error` is the error code when it is an error.
    Reply {
        text: String,
        error: Option<&'static str>,
    },
    /// The room lives on another shard: move the connection there and replay the
    /// message.
    Relocate { room: String },
}

fn response(request_id: &Value, data: Value) -> String {
    json!({"type": "response", "requestId": request_id, "data": data}).to_string()
}

fn error(request_id: &Value, code: &str, message: &str) -> String {
    json!({"type": "response", "requestId": request_id, "error": {"code": code, "message": message}})
        .to_string()
}

/// `data.rtpCapabilities`, when the client sent them.
fn capabilities(data: &Value) -> Result<Option<RtpCapabilities>, SfuError> {
    match data.get("rtpCapabilities") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| SfuError::BadRequest(format!("data.rtpCapabilities: {e}"))),
    }
}

fn str_field<'a>(data: &'a Value, name: &str) -> Result<&'a str, SfuError> {
    data.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| SfuError::BadRequest(format!("data.{name} (string) is required")))
}

/// The direction a `create-transport` asks for, in any of the shapes clients send:
/// `{direction: "send"|"recv"}` (PROTOCOLS.md), `{type: "send"|"recv"}`, or
/// mediasoup-demo's `{producing: bool, consuming: bool}` (producing => send, consuming =>
/// recv). The first of these fields present decides, in that order.
fn transport_direction(data: &Value) -> Result<Direction, SfuError> {
    let bad = |m: String| Err(SfuError::BadRequest(m));
    for field in ["direction", "type"] {
        match data.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::String(v)) if v == "send" => return Ok(Direction::Send),
            Some(Value::String(v)) if v == "recv" => return Ok(Direction::Recv),
            Some(other) => {
                return bad(format!(
                    "data.{field} must be \"send\" or \"recv\", not {other}"
                ))
            }
        }
    }
    let flag = |field: &str| match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(SfuError::BadRequest(format!(
            "data.{field} must be true or false, not {other}"
        ))),
    };
    match (flag("producing")?, flag("consuming")?) {
        (Some(true), Some(true)) => bad(
            "data.producing and data.consuming are both true: a transport either sends or \
             receives; create one of each"
                .into(),
        ),
        (Some(true), _) => Ok(Direction::Send),
        (_, Some(true)) => Ok(Direction::Recv),
        (None, None) => bad(
            "create-transport needs data.direction (\"send\" or \"recv\"), data.type, or \
             data.producing / data.consuming"
                .into(),
        ),
        _ => {
            bad("neither data.producing nor data.consuming is true: set one of them to true".into())
        }
    }
}

/// The room a `join-room` asks for, checked against the token. `Err` is the text to send.
pub fn room_of_join(identity: &Identity, text: &str) -> Option<Result<String, String>> {
    let req: Request = serde_json::from_str(text).ok()?;
    if req.kind != "join-room" {
        return None;
    }
    Some(
        choose_room(identity, &req.data)
            .map_err(|e| error(&req.request_id, e.code(), &e.to_string())),
    )
}

fn choose_room(identity: &Identity, data: &Value) -> Result<String, SfuError> {
    let asked = data.get("roomId").and_then(Value::as_str);
    let room = match (&identity.room, asked) {
        (Some(t), Some(a)) if t != a => {
            return Err(SfuError::BadRequest(format!(
                "token is for room {t:?}, not {a:?}"
            )))
        }
        (Some(t), _) => t.clone(),
        (None, Some(a)) => a.to_string(),
        (None, None) => return Err(SfuError::BadRequest("data.roomId is required".into())),
    };
    validate_id("roomId", &room).map_err(SfuError::BadRequest)?;
    Ok(room)
}

/// Handles one text message. `owns` tells whether this shard owns a room.
pub fn handle_text(
    engine: &mut Engine,
    now: Instant,
    session: &mut Session,
    text: &str,
    owns: impl Fn(&str) -> bool,
) -> Outcome {
    let req: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Reply {
                text: error(
                    &Value::Null,
                    "bad_request",
                    &format!("expected {{type, data, requestId}}: {e}"),
                ),
                error: Some("bad_request"),
            }
        }
    };
    if req.kind == "join-room" && session.room.is_none() {
        match choose_room(&session.identity, &req.data) {
            Ok(room) if !owns(&room) => return Outcome::Relocate { room },
            _ => {}
        }
    }
    let result = dispatch(engine, now, session, &req);
    match result {
        Ok(data) => Outcome::Reply {
            text: response(&req.request_id, data),
            error: None,
        },
        Err(e) => Outcome::Reply {
            text: error(&req.request_id, e.code(), &e.to_string()),
            error: Some(e.code()),
        },
    }
}

fn dispatch(
    engine: &mut Engine,
    now: Instant,
    s: &mut Session,
    req: &Request,
) -> Result<Value, SfuError> {
    let d = &req.data;
    let peer = s.peer;
    if req.kind != "join-room" && s.room.is_none() {
        return Err(SfuError::NotJoined);
    }
    match req.kind.as_str() {
        "join-room" => {
            if s.room.is_some() {
                return Err(SfuError::BadRequest(
                    "already joined; send leave-room first".into(),
                ));
            }
            let room = choose_room(&s.identity, d)?;
            let caps = capabilities(d)?;
            let info = engine.join(
                now,
                peer,
                &room,
                &s.identity.user_id,
                &s.identity.user_name,
                caps,
            )?;
            s.room = Some(room.clone());
            Ok(json!({
                "roomId": room,
                "routerRtpCapabilities": ortc::router_capabilities(),
                "producers": info.producers.iter().map(|p| json!({
                    "producerId": p.producer_id, "userId": p.user_id,
                    "userName": p.user_name, "kind": p.kind.as_str(),
                })).collect::<Vec<_>>(),
                "peers": info.peers.iter().map(|(id, name)| json!({"userId": id, "userName": name}))
                    .collect::<Vec<_>>(),
            }))
        }
        "create-transport" => {
            let direction = transport_direction(d)?;
            match direction {
                Direction::Send if !s.identity.can_publish => {
                    return Err(SfuError::BadRequest(
                        "token does not allow publishing".into(),
                    ))
                }
                Direction::Recv if !s.identity.can_subscribe => {
                    return Err(SfuError::BadRequest(
                        "token does not allow subscribing".into(),
                    ))
                }
                _ => {}
            }
            let t = engine.create_transport(now, peer, direction)?;
            Ok(json!({
                "id": t.id, "iceParameters": t.ice_parameters,
                "iceCandidates": t.ice_candidates, "dtlsParameters": t.dtls_parameters,
            }))
        }
        "connect-transport" => {
            let dtls: DtlsParameters = match d.get("dtlsParameters") {
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|e| SfuError::BadRequest(format!("data.dtlsParameters: {e}")))?,
                None => {
                    return Err(SfuError::BadRequest(
                        "data.dtlsParameters is required".into(),
                    ))
                }
            };
            engine.connect_transport(now, peer, str_field(d, "transportId")?, &dtls)?;
            Ok(json!({}))
        }
        "produce" => {
            let kind = match str_field(d, "kind")? {
                "audio" => Kind::Audio,
                "video" => Kind::Video,
                other => {
                    return Err(SfuError::BadRequest(format!(
                        "kind must be audio or video, not {other:?}"
                    )))
                }
            };
            let params: RtpParameters =
                serde_json::from_value(d.get("rtpParameters").cloned().unwrap_or(Value::Null))
                    .map_err(|e| SfuError::BadRequest(format!("data.rtpParameters: {e}")))?;
            let id = engine.produce(now, peer, str_field(d, "transportId")?, kind, &params)?;
            Ok(json!({"id": id}))
        }
        "consume" => {
            let caps = capabilities(d)?;
            if let Some(caps) = &caps {
                engine.set_rtp_capabilities(peer, caps.clone())?;
            }
            let c = engine.consume(
                now,
                peer,
                str_field(d, "transportId")?,
                str_field(d, "producerId")?,
                caps.as_ref(),
            )?;
            Ok(json!({
                "id": c.id, "producerId": c.producer_id, "kind": c.kind.as_str(),
                "rtpParameters": c.rtp_parameters, "type": "simple",
                "producerPaused": c.producer_paused,
            }))
        }
        "resume-consumer" | "pause-consumer" => {
            let paused = req.kind == "pause-consumer";
            engine.set_consumer_paused(now, peer, str_field(d, "consumerId")?, paused)?;
            Ok(json!({}))
        }
        "pause-producer" | "resume-producer" => {
            let paused = req.kind == "pause-producer";
            engine.set_producer_paused(now, peer, str_field(d, "producerId")?, paused)?;
            Ok(json!({}))
        }
        "close-producer" => {
            engine.close_producer(now, peer, str_field(d, "producerId")?)?;
            Ok(json!({}))
        }
        "restart-ice" => {
            let ice = engine.restart_ice(now, peer, str_field(d, "transportId")?)?;
            Ok(json!({"iceParameters": ice}))
        }
        "leave-room" => {
            engine.leave(now, peer);
            s.room = None;
            Ok(json!({}))
        }
        other => Err(SfuError::BadRequest(format!(
            "unknown request type {other:?}"
        ))),
    }
}

/// What a session replaced by a newer session of its user is told before it is closed.
pub fn replaced_text(reason: &str) -> String {
    json!({"type": "error", "data": {"code": "replaced", "message": reason}}).to_string()
}

/// An engine notice as the event this dialect sends, if it words it: `peer-left` only
/// when the user left (no session of it stays in the room; the room's peers are users).
pub fn event_text(notice: &Notice) -> Option<String> {
    let (kind, data) = match notice {
        Notice::PeerJoined { user_id, user_name } => (
            "peer-joined",
            json!({"userId": user_id, "userName": user_name}),
        ),
        Notice::PeerLeft {
            user_id,
            user_left: true,
            ..
        } => ("peer-left", json!({"userId": user_id})),
        Notice::PeerLeft { .. } => return None,
        Notice::Replaced { reason } => return Some(replaced_text(reason)),
        Notice::NewProducer {
            producer_id,
            user_id,
            user_name,
            kind,
            ..
        } => (
            "new-producer",
            json!({"producerId": producer_id, "userId": user_id, "userName": user_name, "kind": kind.as_str()}),
        ),
        Notice::ProducerClosed { producer_id } => {
            ("producer-closed", json!({"producerId": producer_id}))
        }
        Notice::ConsumerClosed { consumer_id } => {
            ("consumer-closed", json!({"consumerId": consumer_id}))
        }
        Notice::MediaFailed { reason } => ("media-failed", json!({"reason": reason})),
        Notice::TransportClosed {
            transport_id,
            reason,
        } => (
            "transport-closed",
            json!({"transportId": transport_id, "reason": reason}),
        ),
    };
    Some(json!({"type": kind, "data": data}).to_string())
}

/// A `/ws` (or `/?token=`) connection as a [`Dialect`].
pub struct MediasoupDialect {
    session: Session,
}

impl MediasoupDialect {
    /// A connection authenticated before the upgrade.
    pub fn new(identity: Identity) -> Self {
        MediasoupDialect {
            session: Session {
                peer: 0,
                identity,
                room: None,
            },
        }
    }
}

impl Dialect for MediasoupDialect {
    fn name(&self) -> &'static str {
        "mediasoup"
    }

    fn on_text(&mut self, cx: &mut Context<'_>, text: &str) -> Step {
        // The peer is the connection on the shard that serves it (it changes when the
        // session relocates before joining).
        self.session.peer = cx.conn;
        let owns = cx.owns_fn();
        match handle_text(cx.engine, cx.now, &mut self.session, text, owns) {
            Outcome::Reply { text, error } => {
                cx.errors.extend(error);
                Step::Reply(vec![text])
            }
            Outcome::Relocate { room } => Step::Relocate { key: room },
        }
    }

    fn error_text(&self, reason: &str) -> String {
        json!({"type": "error", "data": {"code": "bad_request", "message": reason}}).to_string()
    }

    fn on_close(&mut self, cx: &mut Context<'_>) {
        if self.session.room.is_some() {
            cx.engine.leave(cx.now, cx.conn);
        }
    }

    fn notice(&mut self, notice: &Notice) -> Option<String> {
        event_text(notice)
    }

    fn replaced_text(&self, reason: &str) -> String {
        replaced_text(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direction(data: Value) -> Result<Direction, String> {
        transport_direction(&data).map_err(|e| e.to_string())
    }

    #[test]
    fn create_transport_accepts_every_direction_shape() {
        for (data, want) in [
            (json!({"direction": "send"}), Direction::Send),
            (json!({"direction": "recv"}), Direction::Recv),
            (json!({"type": "send"}), Direction::Send),
            (json!({"type": "recv"}), Direction::Recv),
            (
                json!({"producing": true, "consuming": false}),
                Direction::Send,
            ),
            (
                json!({"producing": false, "consuming": true}),
                Direction::Recv,
            ),
            (json!({"producing": true}), Direction::Send),
            (
                json!({"consuming": true, "sctpCapabilities": {}}),
                Direction::Recv,
            ),
            // The first field present decides.
            (
                json!({"direction": "recv", "producing": true}),
                Direction::Recv,
            ),
            (json!({"direction": null, "type": "send"}), Direction::Send),
        ] {
            assert_eq!(direction(data.clone()), Ok(want), "{data}");
        }
    }

    #[test]
    fn create_transport_refuses_unclear_directions_clearly() {
        for (data, says) in [
            (json!({"producing": true, "consuming": true}), "both true"),
            (json!({"producing": false, "consuming": false}), "neither"),
            (json!({"consuming": false}), "neither"),
            (json!({}), "needs data.direction"),
            (Value::Null, "needs data.direction"),
            (json!({"direction": "both"}), "data.direction must be"),
            (json!({"type": 1}), "data.type must be"),
            (
                json!({"producing": "yes"}),
                "data.producing must be true or false",
            ),
        ] {
            let err = direction(data.clone()).unwrap_err();
            assert!(err.contains(says), "{data}: {err}");
        }
    }
}
