//! The publish/subscribe SDP dialect (`/pubsub`, PROTOCOLS.md section 2): one publish
//! peer connection per client (client offers), one subscribe peer connection per
//! (subscriber, publisher) pair (server offers). This module translates messages; the
//! SDP bridge in the media core does the work.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde_json::{json, Value};

use super::dialect::{CloseCode, Context, Dialect, Step};
use crate::auth::{validate_id, Authenticator, Identity};
use crate::sfu::engine::{Engine, PeerId};
use crate::sfu::{Notice, SfuError};

/// One `/pubsub` connection's state.
#[derive(Debug, Clone)]
pub struct Session {
    pub peer: PeerId,
    /// Set by the `auth` message or the `?token=` of the upgrade.
    pub identity: Option<Identity>,
    /// The room, once a room message joined it.
    pub room: Option<String>,
    /// The publish transport, once published.
    pub publish: Option<String>,
    /// Subscribe transports by publisher.
    pub subscriptions: HashMap<u64, String>,
    /// Publishers this client was told about.
    pub announced: HashSet<u64>,
}

impl Session {
    pub fn new(peer: PeerId, identity: Option<Identity>) -> Self {
        Session {
            peer,
            identity,
            room: None,
            publish: None,
            subscriptions: HashMap::new(),
            announced: HashSet::new(),
        }
    }
}

/// What the glue must do after a message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Reply(Vec<String>),
    /// Send these, then close the connection (failed authentication).
    Close(Vec<String>),
    /// The room lives on another shard: move there and replay the message.
    Relocate {
        room: String,
    },
}

pub fn error(message: &str, request_type: Option<&str>) -> String {
    let mut v = json!({"type": "error", "message": message});
    if let Some(t) = request_type {
        v["requestType"] = json!(t);
    }
    v.to_string()
}

fn field<'a>(msg: &'a Value, name: &str) -> Result<&'a str, String> {
    msg.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{name} (string) is required"))
}

fn publisher_id(msg: &Value) -> Result<u64, String> {
    msg.get("publisherId")
        .and_then(Value::as_u64)
        .ok_or_else(|| "publisherId (number) is required".to_string())
}

/// The room a message names, for routing before anything else happens.
pub fn room_of(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    v.get("roomName")?.as_str().map(str::to_string)
}

pub fn handle_text(
    engine: &mut Engine,
    auth: &Authenticator,
    now: Instant,
    s: &mut Session,
    text: &str,
    owns: impl Fn(&str) -> bool,
) -> Outcome {
    let msg: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Outcome::Reply(vec![error(
                "malformed message: expected a JSON object",
                None,
            )])
        }
    };
    let kind = msg
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind == "auth" {
        if s.identity.is_some() {
            return Outcome::Reply(vec![error("already authenticated", Some("auth"))]);
        }
        return match auth.verify(msg.get("token").and_then(Value::as_str).unwrap_or("")) {
            Ok(id) => {
                let ok = json!({"type": "auth-ok", "userId": id.user_id, "username": id.user_name});
                s.identity = Some(id);
                Outcome::Reply(vec![ok.to_string()])
            }
            Err(e) => Outcome::Close(vec![error(
                &format!("authentication failed: {e}"),
                Some("auth"),
            )]),
        };
    }
    let Some(identity) = s.identity.clone() else {
        return Outcome::Close(vec![error("the first message must be auth", Some(&kind))]);
    };
    let room = match field(&msg, "roomName") {
        Ok(r) => r.to_string(),
        Err(e) => return Outcome::Reply(vec![error(&e, Some(&kind))]),
    };
    let mut out = Vec::new();
    match &s.room {
        Some(joined) if *joined != room => {
            let m = format!("this connection serves room {joined:?}; open another for {room:?}");
            return Outcome::Reply(vec![error(&m, Some(&kind))]);
        }
        Some(_) => {}
        None => {
            if let Err(e) = validate_id("roomName", &room)
                .and_then(|_| identity.check_room(&room).map_err(|e| e.to_string()))
            {
                return Outcome::Reply(vec![error(&e, Some(&kind))]);
            }
            if !owns(&room) {
                return Outcome::Relocate { room };
            }
            if let Err(e) = engine.join(
                now,
                s.peer,
                &room,
                &identity.user_id,
                &identity.user_name,
                None,
            ) {
                return Outcome::Reply(vec![error(&e.to_string(), Some(&kind))]);
            }
            s.room = Some(room.clone());
            for (publisher, name) in engine.room_publishers(s.peer).unwrap_or_default() {
                if publisher != s.peer && s.announced.insert(publisher) {
                    out.push(new_publisher(&room, publisher, &name));
                }
            }
        }
    }
    match dispatch(engine, now, s, &identity, &room, &kind, &msg) {
        Ok(Some(reply)) => out.push(reply),
        Ok(None) => {}
        Err(e) => out.push(error(&e, Some(&kind))),
    }
    Outcome::Reply(out)
}

fn sfu(e: SfuError) -> String {
    e.to_string()
}

fn dispatch(
    engine: &mut Engine,
    now: Instant,
    s: &mut Session,
    identity: &Identity,
    room: &str,
    kind: &str,
    msg: &Value,
) -> Result<Option<String>, String> {
    match kind {
        "join" => Ok(None),
        "publish-offer" => {
            if !identity.can_publish {
                return Err("token does not allow publishing".into());
            }
            if s.publish.is_some() {
                return Err("already publishing on this connection".into());
            }
            let (transport, answer) = engine
                .publish_offer(now, s.peer, field(msg, "offer")?)
                .map_err(sfu)?;
            s.publish = Some(transport);
            Ok(Some(
                json!({"type": "publish-answer", "roomName": room, "answer": answer, "publisherId": s.peer})
                    .to_string(),
            ))
        }
        "publish-ice-candidate" => {
            let t = s
                .publish
                .as_deref()
                .ok_or("publish-ice-candidate before publish-offer")?;
            engine
                .add_ice_candidate(now, s.peer, t, field(msg, "candidate")?)
                .map_err(sfu)?;
            Ok(None)
        }
        "subscribe-request" => {
            if !identity.can_subscribe {
                return Err("token does not allow subscribing".into());
            }
            let publisher = publisher_id(msg)?;
            if s.subscriptions.contains_key(&publisher) {
                return Err(format!("already subscribed to publisher {publisher}"));
            }
            let producers = engine
                .publisher_producers(s.peer, publisher)
                .map_err(|_| format!("unknown publisher {publisher}"))?;
            if producers.is_empty() {
                return Err(format!("publisher {publisher} publishes nothing yet"));
            }
            let (transport, offer) = engine
                .subscribe_create_offer(now, s.peer, &producers)
                .map_err(sfu)?;
            s.subscriptions.insert(publisher, transport);
            Ok(Some(
                json!({"type": "subscribe-offer", "roomName": room, "publisherId": publisher, "offer": offer})
                    .to_string(),
            ))
        }
        "subscribe-answer" => {
            let publisher = publisher_id(msg)?;
            let t = s
                .subscriptions
                .get(&publisher)
                .ok_or_else(|| format!("no subscription to publisher {publisher}"))?;
            let t = t.clone();
            if let Err(e) = engine.subscribe_answer(now, s.peer, &t, field(msg, "answer")?) {
                // A refused answer frees the subscription: the client may ask again.
                if matches!(&e, SfuError::BadRequest(m) if m.contains("accepts none")) {
                    s.subscriptions.remove(&publisher);
                }
                return Err(sfu(e));
            }
            Ok(None)
        }
        "subscribe-ice-candidate" => {
            let publisher = publisher_id(msg)?;
            let t = s
                .subscriptions
                .get(&publisher)
                .ok_or_else(|| format!("no subscription to publisher {publisher}"))?;
            engine
                .add_ice_candidate(now, s.peer, t, field(msg, "candidate")?)
                .map_err(sfu)?;
            Ok(None)
        }
        other => Err(format!("unknown message type {other:?}")),
    }
}

fn new_publisher(room: &str, publisher: u64, name: &str) -> String {
    json!({"type": "new-publisher", "roomName": room, "publisherId": publisher, "username": name})
        .to_string()
}

/// An engine notice as this dialect's event, if it has one.
pub fn event_text(s: &mut Session, notice: &Notice) -> Option<String> {
    let room = s.room.clone()?;
    match notice {
        Notice::NewProducer {
            publisher,
            user_name,
            ..
        } if *publisher != s.peer => s
            .announced
            .insert(*publisher)
            .then(|| new_publisher(&room, *publisher, user_name)),
        // A transport that never connected was released: the publish or the subscription
        // it carried is over, and the client may ask again.
        Notice::TransportClosed {
            transport_id,
            reason,
        } => {
            if s.publish.as_deref() == Some(transport_id.as_str()) {
                s.publish = None;
                return Some(
                    json!({"type": "error", "message": reason, "requestType": "publish-offer",
                        "roomName": room})
                    .to_string(),
                );
            }
            let publisher = s
                .subscriptions
                .iter()
                .find(|(_, t)| **t == *transport_id)
                .map(|(p, _)| *p)?;
            s.subscriptions.remove(&publisher);
            Some(
                json!({"type": "error", "message": reason, "requestType": "subscribe-request",
                    "roomName": room, "publisherId": publisher})
                .to_string(),
            )
        }
        Notice::PeerLeft { peer, .. } => {
            s.subscriptions.remove(peer);
            s.announced.remove(peer).then(|| {
                json!({"type": "publisher-left", "roomName": room, "publisherId": peer}).to_string()
            })
        }
        _ => None,
    }
}

impl Dialect for Session {
    fn name(&self) -> &'static str {
        "pubsub"
    }

    fn authenticated(&self) -> bool {
        self.identity.is_some()
    }

    fn on_text(&mut self, cx: &mut Context<'_>, text: &str) -> Step {
        // The peer is the connection on the shard that serves it.
        self.peer = cx.conn;
        let owns = cx.owns_fn();
        match handle_text(cx.engine, cx.auth, cx.now, self, text, owns) {
            Outcome::Reply(texts) => Step::Reply(texts),
            Outcome::Close(texts) => Step::Close(texts, CloseCode::Policy),
            Outcome::Relocate { room } => Step::Relocate { key: room },
        }
    }

    fn error_text(&self, reason: &str) -> String {
        error(reason, None)
    }

    fn on_close(&mut self, cx: &mut Context<'_>) {
        if self.room.is_some() {
            cx.engine.leave(cx.now, cx.conn);
        }
    }

    fn notice(&mut self, notice: &Notice) -> Option<String> {
        event_text(self, notice)
    }
}
