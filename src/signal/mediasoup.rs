//! The request/response dialect that mediasoup-client apps speak (PROTOCOLS.md section 1):
//! `{type, data, requestId}` requests, `response` answers with `data` or `error`, and
//! events. This module translates; the media core does the work.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{validate_id, Identity};
use crate::sfu::engine::{Engine, PeerId};
use crate::sfu::ortc::{self, Kind, RtpParameters};
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

fn str_field<'a>(data: &'a Value, name: &str) -> Result<&'a str, SfuError> {
    data.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| SfuError::BadRequest(format!("data.{name} (string) is required")))
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
            let caps = d.get("rtpCapabilities").cloned();
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
            let direction = match str_field(d, "direction")? {
                "send" if s.identity.can_publish => Direction::Send,
                "send" => {
                    return Err(SfuError::BadRequest(
                        "token does not allow publishing".into(),
                    ))
                }
                "recv" if s.identity.can_subscribe => Direction::Recv,
                "recv" => {
                    return Err(SfuError::BadRequest(
                        "token does not allow subscribing".into(),
                    ))
                }
                other => {
                    return Err(SfuError::BadRequest(format!(
                        "direction must be send or recv, not {other:?}"
                    )))
                }
            };
            let t = engine.create_transport(now, peer, direction)?;
            Ok(json!({
                "id": t.id, "iceParameters": t.ice_parameters,
                "iceCandidates": t.ice_candidates, "dtlsParameters": t.dtls_parameters,
            }))
        }
        "connect-transport" => {
            let dtls = d
                .get("dtlsParameters")
                .ok_or_else(|| SfuError::BadRequest("data.dtlsParameters is required".into()))?;
            engine.connect_transport(now, peer, str_field(d, "transportId")?, dtls)?;
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
            if let Some(caps) = d.get("rtpCapabilities") {
                engine.set_rtp_capabilities(peer, caps.clone());
            }
            let c = engine.consume(
                now,
                peer,
                str_field(d, "transportId")?,
                str_field(d, "producerId")?,
                d.get("rtpCapabilities"),
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

/// An engine notice as the event this dialect sends.
pub fn event_text(notice: &Notice) -> String {
    let (kind, data) = match notice {
        Notice::PeerJoined { user_id, user_name } => (
            "peer-joined",
            json!({"userId": user_id, "userName": user_name}),
        ),
        Notice::PeerLeft { user_id, .. } => ("peer-left", json!({"userId": user_id})),
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
    };
    json!({"type": kind, "data": data}).to_string()
}
