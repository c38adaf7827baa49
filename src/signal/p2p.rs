//! The peer-to-peer relay dialect (PROTOCOLS.md section 5): no media through the server,
//! only JSON packets relayed between the members of a room.
//!
//! This module is pure: [`Session::handle_text`] validates a packet against the session's
//! identity and state, [`Rooms`] computes who receives what, and the [`Dialect`] impl
//! ties them to the shard's relay rooms; the runtime delivers the texts.

use std::collections::HashMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::dialect::{Context, Dialect, Step};
use crate::auth::validate_id;
use crate::sfu::caps::over;
use crate::sfu::Caps;

pub use super::dialect::ConnId;

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    #[serde(rename = "Event")]
    pub event: String,
    #[serde(rename = "UserId", default)]
    pub user_id: String,
    #[serde(rename = "RoomId", default)]
    pub room_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Packet {
    #[serde(rename = "Header")]
    pub header: Header,
    #[serde(rename = "Payload", default)]
    pub payload: serde_json::Value,
}

/// Builds a packet text with a string payload.
pub fn packet(event: &str, user_id: &str, room_id: &str, payload: &str) -> String {
    serde_json::json!({
        "Header": {"Event": event, "UserId": user_id, "RoomId": room_id},
        "Payload": payload,
    })
    .to_string()
}

/// A room, scoped by the namespace of the URL it was reached through.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoomKey {
    pub namespace: String,
    pub room: String,
}

impl RoomKey {
    /// The key that decides which shard owns the room.
    pub fn shard_key(&self) -> String {
        format!("p2p:{}/{}", self.namespace, self.room)
    }
}

/// What a validated packet asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Connect {
        user_id: String,
        room: RoomKey,
    },
    /// Relay the original text to every other member.
    Broadcast,
    Ping,
    Disconnect,
}

/// One relay connection's identity and state.
#[derive(Debug, Clone)]
pub struct Session {
    pub namespace: String,
    /// The token's user; `None` when anonymous relay is allowed and no token was given.
    pub token_user: Option<String>,
    /// The token's room scope.
    pub token_room: Option<String>,
    /// Set once `connect` succeeded: (user id, room).
    pub joined: Option<(String, RoomKey)>,
}

impl Session {
    /// Validates one text message. `Err` is the reason for an error packet; the session
    /// lives on either way.
    pub fn handle_text(&self, text: &str) -> Result<Request, String> {
        let packet: Packet =
            serde_json::from_str(text).map_err(|e| format!("malformed packet: {e}"))?;
        let h = &packet.header;
        if let Some(token_user) = &self.token_user {
            if !h.user_id.is_empty() && &h.user_id != token_user {
                return Err(format!(
                    "UserId {:?} does not match the token's user",
                    h.user_id
                ));
            }
        }
        match h.event.as_str() {
            "connect" => {
                let user_id = match &self.token_user {
                    Some(u) => u.clone(),
                    None => h.user_id.clone(),
                };
                validate_id("UserId", &user_id)?;
                validate_id("RoomId", &h.room_id)?;
                if let Some(scope) = &self.token_room {
                    if scope != &h.room_id {
                        return Err(format!("token is not valid for room {:?}", h.room_id));
                    }
                }
                if let Some((_, room)) = &self.joined {
                    return Err(format!(
                        "already connected to room {:?}; send disconnect first",
                        room.room
                    ));
                }
                Ok(Request::Connect {
                    user_id,
                    room: RoomKey {
                        namespace: self.namespace.clone(),
                        room: h.room_id.clone(),
                    },
                })
            }
            "broadcast" | "ping" | "disconnect" => {
                let Some((user, room)) = &self.joined else {
                    return Err(format!("{} before connect", h.event));
                };
                if !h.user_id.is_empty() && &h.user_id != user {
                    return Err(format!(
                        "UserId {:?} is not this connection's user",
                        h.user_id
                    ));
                }
                if !h.room_id.is_empty() && h.room_id != room.room {
                    return Err(format!(
                        "RoomId {:?} is not this connection's room",
                        h.room_id
                    ));
                }
                Ok(match h.event.as_str() {
                    "broadcast" => Request::Broadcast,
                    "ping" => Request::Ping,
                    _ => Request::Disconnect,
                })
            }
            other => Err(format!(
                "unknown Event {other:?} (expected connect, broadcast, ping or disconnect)"
            )),
        }
    }
}

impl Dialect for Session {
    fn name(&self) -> &'static str {
        "p2p"
    }

    fn on_text(&mut self, cx: &mut Context<'_>, text: &str) -> Step {
        let request = match self.handle_text(text) {
            Ok(r) => r,
            Err(reason) => return Step::Reply(vec![self.error_text(&reason)]),
        };
        match request {
            Request::Connect { user_id, room } => {
                if let Some(step) = cx.owner_elsewhere(&room.shard_key()) {
                    return step;
                }
                let joined = match cx.relay.connect(&room, cx.conn, &user_id) {
                    Ok(j) => j,
                    Err(reason) => return Step::Reply(vec![self.error_text(&reason)]),
                };
                tracing::info!(shard = cx.shard, conn = cx.conn, room = %room.room, ns = %room.namespace, user = %user_id, replaced = ?joined.replaced, "joined relay room");
                if let Some(old) = joined.replaced {
                    let reason = format!(
                        "replaced: user {user_id:?} connected to room {:?} again from a newer \
                         session",
                        room.room
                    );
                    cx.replaced.push((old, reason));
                }
                self.joined = Some((user_id, room));
                cx.deliveries.extend(joined.deliveries);
            }
            Request::Broadcast => {
                let (_, room) = self.joined.as_ref().expect("validated: joined");
                let out = cx.relay.broadcast(room, cx.conn, text);
                cx.deliveries.extend(out);
            }
            Request::Ping => {
                let (user, room) = self.joined.as_ref().expect("validated: joined");
                return Step::Reply(vec![cx.relay.ping(room, user)]);
            }
            Request::Disconnect => self.on_close(cx),
        }
        Step::Reply(Vec::new())
    }

    fn error_text(&self, reason: &str) -> String {
        let (user, room) = match &self.joined {
            Some((u, r)) => (u.as_str(), r.room.as_str()),
            None => (self.token_user.as_deref().unwrap_or(""), ""),
        };
        packet("error", user, room, reason)
    }

    fn on_close(&mut self, cx: &mut Context<'_>) {
        if let Some((_, room)) = self.joined.take() {
            let out = cx.relay.disconnect(&room, cx.conn);
            cx.deliveries.extend(out);
        }
    }
}

/// A text for one connection; texts are shared between recipients.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub to: ConnId,
    pub text: Rc<str>,
}

#[derive(Debug)]
struct Member {
    conn: ConnId,
    user_id: String,
}

/// Every relay room of one shard.
#[derive(Debug)]
pub struct Rooms {
    rooms: HashMap<RoomKey, Vec<Member>>,
    /// `limits.members_per_room`.
    members_per_room: usize,
    /// `limits.rooms_per_shard` (relay rooms; media rooms count on their own).
    rooms_per_shard: usize,
}

impl Default for Rooms {
    fn default() -> Rooms {
        Rooms::new(&Caps::default())
    }
}

/// What a connect did: the texts to deliver, and the older session of the same user the
/// new one replaced (to be closed).
#[derive(Debug)]
pub struct Connected {
    /// Texts for the members.
    pub deliveries: Vec<Delivery>,
    /// The replaced member's connection.
    pub replaced: Option<ConnId>,
}

impl Rooms {
    /// No rooms yet; `caps` gives the members per room and rooms per shard.
    pub fn new(caps: &Caps) -> Rooms {
        Rooms {
            rooms: HashMap::new(),
            members_per_room: caps.members_per_room,
            rooms_per_shard: caps.rooms_per_shard,
        }
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Adds a member; every member, the new one included, receives the connect packet,
    /// whose payload says whether the new member is the initiator (the first member):
    /// `"true"` or `"false"`. A member of the same user id is replaced: the others get
    /// its disconnect packet first (its connection is gone), and it is to be closed.
    /// `Err` (the reason, naming the setting) when the room is full or the shard has too
    /// many rooms.
    pub fn connect(
        &mut self,
        key: &RoomKey,
        conn: ConnId,
        user_id: &str,
    ) -> Result<Connected, String> {
        if !self.rooms.contains_key(key) && self.rooms.len() >= self.rooms_per_shard {
            return Err(over(
                format!(
                    "too many relay rooms on this shard ({} held)",
                    self.rooms.len()
                ),
                self.rooms_per_shard,
                "limits.rooms_per_shard",
            )
            .to_string());
        }
        let members = self.rooms.entry(key.clone()).or_default();
        let old = members.iter().position(|m| m.user_id == user_id);
        let staying = members.len() - usize::from(old.is_some());
        if staying >= self.members_per_room {
            let full = over(
                format!("room {:?} is full ({staying} members)", key.room),
                self.members_per_room,
                "limits.members_per_room",
            );
            if members.is_empty() {
                self.rooms.remove(key);
            }
            return Err(full.to_string());
        }
        let mut out = Vec::new();
        let mut replaced = None;
        if let Some(pos) = old {
            let gone = members.remove(pos);
            let text: Rc<str> = packet("disconnect", &gone.user_id, &key.room, "").into();
            out.extend(members.iter().map(|m| Delivery {
                to: m.conn,
                text: text.clone(),
            }));
            replaced = Some(gone.conn);
        }
        let initiator = members.is_empty();
        members.push(Member {
            conn,
            user_id: user_id.to_string(),
        });
        // What the original server sends (`JSON.stringify(isInitiator)`) and its client
        // reads with `JSON.parse`.
        let payload = if initiator { "true" } else { "false" };
        let text: Rc<str> = packet("connect", user_id, &key.room, payload).into();
        out.extend(members.iter().map(|m| Delivery {
            to: m.conn,
            text: text.clone(),
        }));
        Ok(Connected {
            deliveries: out,
            replaced,
        })
    }

    /// The original text, unchanged, to every other member; nothing from a connection
    /// that is no member (any more: a replaced session before it is closed).
    pub fn broadcast(&self, key: &RoomKey, from: ConnId, text: &str) -> Vec<Delivery> {
        let Some(members) = self.rooms.get(key) else {
            return Vec::new();
        };
        if !members.iter().any(|m| m.conn == from) {
            return Vec::new();
        }
        let text: Rc<str> = text.into();
        members
            .iter()
            .filter(|m| m.conn != from)
            .map(|m| Delivery {
                to: m.conn,
                text: text.clone(),
            })
            .collect()
    }

    /// The ping answer: the ping packet whose payload is the JSON array of user ids.
    pub fn ping(&self, key: &RoomKey, user_id: &str) -> String {
        let mut users: Vec<&str> = Vec::new();
        for m in self.rooms.get(key).into_iter().flatten() {
            if !users.contains(&m.user_id.as_str()) {
                users.push(&m.user_id);
            }
        }
        let list = serde_json::to_string(&users).expect("strings serialize");
        packet("ping", user_id, &key.room, &list)
    }

    /// Removes a member; every other member receives a disconnect packet. An empty room
    /// is removed.
    pub fn disconnect(&mut self, key: &RoomKey, conn: ConnId) -> Vec<Delivery> {
        let Some(members) = self.rooms.get_mut(key) else {
            return Vec::new();
        };
        let Some(pos) = members.iter().position(|m| m.conn == conn) else {
            return Vec::new();
        };
        let gone = members.remove(pos);
        let text: Rc<str> = packet("disconnect", &gone.user_id, &key.room, "").into();
        let out = members
            .iter()
            .map(|m| Delivery {
                to: m.conn,
                text: text.clone(),
            })
            .collect();
        if members.is_empty() {
            self.rooms.remove(key);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(room: &str) -> RoomKey {
        RoomKey {
            namespace: "ns".into(),
            room: room.into(),
        }
    }

    fn session(user: Option<&str>) -> Session {
        Session {
            namespace: "ns".into(),
            token_user: user.map(str::to_string),
            token_room: None,
            joined: None,
        }
    }

    #[test]
    fn connect_marks_the_first_member_as_initiator() {
        let mut rooms = Rooms::default();
        let d = rooms.connect(&key("r"), 1, "a").unwrap().deliveries;
        assert_eq!(d.len(), 1);
        let p: Packet = serde_json::from_str(&d[0].text).unwrap();
        assert_eq!(p.payload, serde_json::json!("true"));
        // The original client reads the payload with JSON.parse.
        let flag: bool = serde_json::from_str(p.payload.as_str().unwrap()).unwrap();
        assert!(flag);
        let d = rooms.connect(&key("r"), 2, "b").unwrap().deliveries;
        assert_eq!(d.iter().map(|d| d.to).collect::<Vec<_>>(), vec![1, 2]);
        let p: Packet = serde_json::from_str(&d[0].text).unwrap();
        assert_eq!(p.payload, serde_json::json!("false"));
        assert!(d[0].text.contains("\"UserId\":\"b\""));
    }

    #[test]
    fn broadcast_skips_the_sender_and_keeps_the_text() {
        let mut rooms = Rooms::default();
        rooms.connect(&key("r"), 1, "a").unwrap();
        rooms.connect(&key("r"), 2, "b").unwrap();
        rooms.connect(&key("other"), 3, "c").unwrap();
        let d = rooms.broadcast(&key("r"), 1, "{\"x\": 1}");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].to, 2);
        assert_eq!(&*d[0].text, "{\"x\": 1}");
    }

    #[test]
    fn ping_lists_users_and_disconnect_notifies_the_rest() {
        let mut rooms = Rooms::default();
        rooms.connect(&key("r"), 1, "a").unwrap();
        rooms.connect(&key("r"), 2, "b").unwrap();
        let p: Packet = serde_json::from_str(&rooms.ping(&key("r"), "a")).unwrap();
        assert_eq!(p.payload, serde_json::json!("[\"a\",\"b\"]"));
        let d = rooms.disconnect(&key("r"), 1);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].text.contains("\"Event\":\"disconnect\"")
                && d[0].text.contains("\"UserId\":\"a\"")
        );
        rooms.disconnect(&key("r"), 2);
        assert!(rooms.is_empty(), "an empty room is removed");
    }

    #[test]
    fn a_second_connect_of_a_user_replaces_the_first_and_the_room_hears_it_go_then_come() {
        let mut rooms = Rooms::default();
        rooms.connect(&key("r"), 1, "alice").unwrap();
        rooms.connect(&key("r"), 2, "bob").unwrap();
        let j = rooms.connect(&key("r"), 3, "alice").unwrap();
        assert_eq!(j.replaced, Some(1));
        let story: Vec<(ConnId, String, String)> = j
            .deliveries
            .iter()
            .map(|d| {
                let p: Packet = serde_json::from_str(&d.text).unwrap();
                (d.to, p.header.event, p.header.user_id)
            })
            .collect();
        assert_eq!(
            story,
            vec![
                (2, "disconnect".into(), "alice".into()),
                (2, "connect".into(), "alice".into()),
                (3, "connect".into(), "alice".into()),
            ]
        );
        // The replaced connection relays nothing and its close tells nobody.
        assert!(rooms.broadcast(&key("r"), 1, "{}").is_empty());
        assert!(rooms.disconnect(&key("r"), 1).is_empty());
        let p: Packet = serde_json::from_str(&rooms.ping(&key("r"), "bob")).unwrap();
        assert_eq!(p.payload, serde_json::json!("[\"bob\",\"alice\"]"));
    }

    #[test]
    fn full_relay_rooms_and_shards_refuse_naming_the_setting() {
        let mut rooms = Rooms::new(&Caps {
            members_per_room: 2,
            rooms_per_shard: 2,
            ..Caps::default()
        });
        rooms.connect(&key("r"), 1, "a").unwrap();
        rooms.connect(&key("r"), 2, "b").unwrap();
        let e = rooms.connect(&key("r"), 3, "c").unwrap_err();
        assert!(e.contains("limits.members_per_room"), "{e}");
        // The same user again is no newcomer.
        assert_eq!(rooms.connect(&key("r"), 4, "b").unwrap().replaced, Some(2));
        rooms.connect(&key("s"), 5, "c").unwrap();
        let e = rooms.connect(&key("t"), 6, "d").unwrap_err();
        assert!(e.contains("limits.rooms_per_shard"), "{e}");
        assert_eq!(rooms.len(), 2);
    }

    #[test]
    fn session_rejects_forged_user_malformed_json_and_early_packets() {
        let s = session(Some("alice"));
        let forged = packet("connect", "mallory", "r", "");
        assert!(s
            .handle_text(&forged)
            .unwrap_err()
            .contains("does not match"));
        assert!(s
            .handle_text("{not json")
            .unwrap_err()
            .contains("malformed"));
        let early = packet("broadcast", "alice", "r", "x");
        assert!(s
            .handle_text(&early)
            .unwrap_err()
            .contains("before connect"));
        let ok = s.handle_text(&packet("connect", "alice", "r", "")).unwrap();
        assert_eq!(
            ok,
            Request::Connect {
                user_id: "alice".into(),
                room: key("r")
            }
        );
    }

    #[test]
    fn anonymous_session_takes_user_from_packet_and_validates_it() {
        let s = session(None);
        assert!(s.handle_text(&packet("connect", "", "r", "")).is_err());
        assert!(s
            .handle_text(&packet("connect", "bad id", "r", ""))
            .is_err());
        assert!(matches!(
            s.handle_text(&packet("connect", "bob", "r", "")),
            Ok(Request::Connect { .. })
        ));
    }

    #[test]
    fn token_room_scope_is_enforced() {
        let mut s = session(Some("alice"));
        s.token_room = Some("r1".into());
        assert!(s
            .handle_text(&packet("connect", "alice", "r2", ""))
            .is_err());
        assert!(s.handle_text(&packet("connect", "alice", "r1", "")).is_ok());
    }

    #[test]
    fn joined_session_accepts_room_packets_and_refuses_a_second_connect() {
        let mut s = session(Some("alice"));
        s.joined = Some(("alice".into(), key("r")));
        assert_eq!(
            s.handle_text(&packet("ping", "alice", "r", "")),
            Ok(Request::Ping)
        );
        assert_eq!(
            s.handle_text(&packet("broadcast", "", "", "x")),
            Ok(Request::Broadcast)
        );
        assert!(s.handle_text(&packet("connect", "alice", "r", "")).is_err());
        assert!(s
            .handle_text(&packet("ping", "alice", "other", ""))
            .is_err());
        assert!(s.handle_text(&packet("dance", "alice", "r", "")).is_err());
    }
}
