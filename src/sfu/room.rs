//! Rooms and their peers (mediasoup calls a room a Router): who is in which room, joining
//! and leaving, the notices those raise, and what a peer may ask about its room.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

use super::engine::{wire_id, Engine, Notice, PeerId};
use super::ortc::{Kind, RtpCapabilities};
use super::SfuError;

/// A producer as `join-room` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerInfo {
    /// The producer's wire id (`p...`).
    pub producer_id: String,
    /// The publisher's user id.
    pub user_id: String,
    /// The publisher's display name.
    pub user_name: String,
    /// Audio or video.
    pub kind: Kind,
}

/// What a peer finds in the room it joins.
#[derive(Debug)]
pub struct JoinInfo {
    /// The room's producers, oldest first.
    pub producers: Vec<ProducerInfo>,
    /// The other users, as (user id, user name), in the order they joined (each once,
    /// the joining user not among them).
    pub peers: Vec<(String, String)>,
}

/// How a session takes part in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// A room dialect's session (mediasoup `join-room`, `/pubsub`, `/connect`): one per
    /// user per room. A newer member of the same user id replaces the older one, which is
    /// released and told [`Notice::Replaced`]; the room hears no leave or join (the user
    /// stayed), only the old session's producers closing.
    Member,
    /// A WHIP or WHEP resource: one user may hold several in a room (a camera and a
    /// screen, viewers sharing a token), up to `limits.sessions_per_user`.
    Resource,
}

/// One participant of a room and everything it owns.
pub(super) struct Peer {
    /// When the peer joined; cleared once its first media packet flowed.
    pub(super) joined_at: Option<Instant>,
    /// The user id (authenticated by the dialect).
    pub(super) user_id: String,
    /// The display name.
    pub(super) user_name: String,
    /// The room it joined.
    pub(super) room: String,
    /// What its consumers are checked against when `consume` names none.
    pub(super) rtp_capabilities: Option<RtpCapabilities>,
    /// Its transports.
    pub(super) transports: Vec<u64>,
    /// Its producers.
    pub(super) producers: Vec<u64>,
    /// Its consumers.
    pub(super) consumers: Vec<u64>,
    /// It lives for its transports alone (WHIP, WHEP, `/connect`: no signaling session
    /// holds it): when the media core releases one (not connected in time), it leaves.
    pub(super) one_shot: bool,
    /// A member (one per user per room) or a resource.
    pub(super) presence: Presence,
}

impl Peer {
    /// The time from joining to the first media packet, once: later packets give `None`.
    fn first_media(&mut self, now: Instant) -> Option<Duration> {
        let at = self.joined_at.take()?;
        Some(now.saturating_duration_since(at))
    }
}

/// Records a peer's first media packet (sent or received) in `out`. A free function over
/// the peer table so that the forward path can call it while it borrows other fields.
#[inline]
pub(super) fn note_first_media(
    peers: &mut HashMap<PeerId, Peer>,
    out: &mut Vec<Duration>,
    peer: PeerId,
    now: Instant,
) {
    if let Some(took) = peers.get_mut(&peer).and_then(|p| p.first_media(now)) {
        out.push(took);
    }
}

/// A room: its peers and its producers, both in the order they came.
#[derive(Default)]
pub(super) struct Room {
    /// Its peers, in the order they joined.
    pub(super) peers: Vec<PeerId>,
    /// Its producers, oldest first.
    pub(super) producers: Vec<u64>,
    /// When the room's speaker slots were last reviewed.
    pub(super) last_review: Option<Instant>,
    /// Some peer of the room receives loudest-speaker slots.
    pub(super) has_slots: bool,
}

impl Room {
    /// Queues a notice for every peer of the room but `except`, in the order they joined.
    pub(super) fn tell(
        &self,
        notices: &mut VecDeque<(PeerId, Notice)>,
        except: Option<PeerId>,
        mut notice: impl FnMut() -> Notice,
    ) {
        for &o in self.peers.iter().filter(|&&o| Some(o) != except) {
            notices.push_back((o, notice()));
        }
    }
}

impl Engine {
    /// The peer, or [`SfuError::NotJoined`].
    pub(super) fn peer(&self, peer: PeerId) -> Result<&Peer, SfuError> {
        self.peers.get(&peer).ok_or(SfuError::NotJoined)
    }

    /// Adds a member to a room (created on first use): see [`Presence::Member`]. An older
    /// member of the same user id in the room is replaced.
    pub fn join(
        &mut self,
        now: Instant,
        peer: PeerId,
        room: &str,
        user_id: &str,
        user_name: &str,
        rtp_capabilities: Option<RtpCapabilities>,
    ) -> Result<JoinInfo, SfuError> {
        self.join_as(
            now,
            peer,
            room,
            user_id,
            user_name,
            rtp_capabilities,
            Presence::Member,
        )
    }

    /// Adds a WHIP/WHEP resource to a room (created on first use): see
    /// [`Presence::Resource`].
    pub fn join_resource(
        &mut self,
        now: Instant,
        peer: PeerId,
        room: &str,
        user_id: &str,
        user_name: &str,
    ) -> Result<JoinInfo, SfuError> {
        self.join_as(
            now,
            peer,
            room,
            user_id,
            user_name,
            None,
            Presence::Resource,
        )
    }

    /// Checks a client's RTP capabilities against the caps.
    pub(super) fn check_capabilities(&self, caps: &RtpCapabilities) -> Result<(), SfuError> {
        let c = &self.caps;
        c.count(
            "rtpCapabilities.codecs",
            caps.codecs.len(),
            c.codecs_per_request,
            "limits.codecs_per_request",
        )?;
        for codec in &caps.codecs {
            c.string("rtpCapabilities.codecs[].mimeType", &codec.mime_type)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn join_as(
        &mut self,
        now: Instant,
        peer: PeerId,
        room: &str,
        user_id: &str,
        user_name: &str,
        rtp_capabilities: Option<RtpCapabilities>,
        presence: Presence,
    ) -> Result<JoinInfo, SfuError> {
        if self.peers.contains_key(&peer) {
            return Err(SfuError::BadRequest("already joined".into()));
        }
        if let Some(caps) = &rtp_capabilities {
            self.check_capabilities(caps)?;
        }
        let caps = &self.caps;
        // The older member of this user that the new one replaces, if any.
        let mut replaced = None;
        match self.rooms.get(room) {
            None => caps.room_for(
                "too many rooms on this shard",
                self.rooms.len(),
                caps.rooms_per_shard,
                "limits.rooms_per_shard",
            )?,
            Some(r) => {
                let mine = |o: &&PeerId| self.peers.get(o).is_some_and(|p| p.user_id == user_id);
                if presence == Presence::Member {
                    replaced = r.peers.iter().filter(mine).copied().find(|o| {
                        self.peers
                            .get(o)
                            .is_some_and(|p| p.presence == Presence::Member)
                    });
                }
                let stays = usize::from(replaced.is_some());
                caps.room_for(
                    &format!("too many sessions of user {user_id:?} in room {room:?}"),
                    r.peers.iter().filter(mine).count() - stays,
                    caps.sessions_per_user,
                    "limits.sessions_per_user",
                )?;
                caps.room_for(
                    &format!("room {room:?} is full"),
                    r.peers.len() - stays,
                    caps.members_per_room,
                    "limits.members_per_room",
                )?;
            }
        }
        if let Some(old) = replaced {
            self.remove_peer(now, old, Some(peer));
            self.notices.push_back((
                old,
                Notice::Replaced {
                    reason: format!(
                        "replaced: user {user_id:?} joined room {room:?} again from a newer \
                         session"
                    ),
                },
            ));
        }
        let r = self.rooms.entry(room.to_string()).or_default();
        let producers = r
            .producers
            .iter()
            .filter_map(|pid| self.producers.get(pid))
            .filter_map(|p| {
                let owner = self.peers.get(&p.peer)?;
                Some(ProducerInfo {
                    producer_id: wire_id("p", p.id),
                    user_id: owner.user_id.clone(),
                    user_name: owner.user_name.clone(),
                    kind: p.kind,
                })
            })
            .collect();
        let mut peers: Vec<(String, String)> = Vec::new();
        let mut present = false;
        for p in r.peers.iter().filter_map(|o| self.peers.get(o)) {
            if p.user_id == user_id {
                present = true;
            } else if !peers.iter().any(|(u, _)| *u == p.user_id) {
                peers.push((p.user_id.clone(), p.user_name.clone()));
            }
        }
        // The room hears of a user once, when its first session arrives (a replaced
        // member's user never left).
        if !present && replaced.is_none() {
            r.tell(&mut self.notices, None, || Notice::PeerJoined {
                user_id: user_id.to_string(),
                user_name: user_name.to_string(),
            });
        }
        r.peers.push(peer);
        self.peers.insert(
            peer,
            Peer {
                joined_at: Some(now),
                user_id: user_id.to_string(),
                user_name: user_name.to_string(),
                room: room.to_string(),
                rtp_capabilities,
                transports: Vec::new(),
                producers: Vec::new(),
                consumers: Vec::new(),
                one_shot: false,
                presence,
            },
        );
        Ok(JoinInfo { producers, peers })
    }

    /// Marks a peer as living for its transports alone (WHIP, WHEP, `/connect`: no
    /// signaling session holds it). When the media core releases one of its transports
    /// for not connecting within the connect timeout, such a peer leaves its room (and is
    /// told `MediaFailed`) instead of staying without it.
    pub fn set_one_shot(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.one_shot = true;
        }
    }

    /// The RTP capabilities a peer's consumers are checked against by default.
    pub fn set_rtp_capabilities(
        &mut self,
        peer: PeerId,
        caps: RtpCapabilities,
    ) -> Result<(), SfuError> {
        self.check_capabilities(&caps)?;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rtp_capabilities = Some(caps);
        }
        Ok(())
    }

    /// Releases everything of a peer and tells the room.
    pub fn leave(&mut self, now: Instant, peer: PeerId) {
        self.remove_peer(now, peer, None);
    }

    /// Releases everything of a peer; the room is told [`Notice::PeerLeft`], with
    /// `user_left` when no session of its user stays (none does while `successor`, a
    /// member of the same user about to join, replaces it). An empty room is removed,
    /// unless a successor is about to join it.
    fn remove_peer(&mut self, now: Instant, peer: PeerId, successor: Option<PeerId>) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let (producers, consumers, transports) = (
            p.producers.clone(),
            p.consumers.clone(),
            p.transports.clone(),
        );
        for id in producers {
            self.remove_producer(now, id);
        }
        for id in consumers {
            self.remove_consumer(now, id, false);
        }
        for id in transports {
            self.remove_transport(id);
        }
        let p = self.peers.remove(&peer).expect("checked");
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.peers.retain(|&o| o != peer);
            let user_left = successor.is_none()
                && !room
                    .peers
                    .iter()
                    .any(|o| self.peers.get(o).is_some_and(|q| q.user_id == p.user_id));
            room.tell(&mut self.notices, None, || Notice::PeerLeft {
                user_id: p.user_id.clone(),
                peer,
                user_left,
            });
            if room.peers.is_empty() && successor.is_none() {
                self.rooms.remove(&p.room);
            }
        }
    }

    /// Producers of one publishing peer in the caller's room, with the publisher's name.
    pub fn publisher_producers(
        &self,
        peer: PeerId,
        publisher: PeerId,
    ) -> Result<Vec<String>, SfuError> {
        let room = &self.peer(peer)?.room;
        let p = self.peers.get(&publisher).filter(|p| &p.room == room);
        let p = p.ok_or_else(|| SfuError::UnknownId(publisher.to_string()))?;
        Ok(p.producers.iter().map(|id| wire_id("p", *id)).collect())
    }

    /// Peers of the caller's room that publish: (peer, user name).
    pub fn room_publishers(&self, peer: PeerId) -> Result<Vec<(PeerId, String)>, SfuError> {
        let room = &self.peer(peer)?.room;
        let r = &self.rooms[room];
        Ok(r.peers
            .iter()
            .filter_map(|id| self.peers.get(id).map(|p| (*id, p)))
            .filter(|(_, p)| !p.producers.is_empty())
            .map(|(id, p)| (id, p.user_name.clone()))
            .collect())
    }

    /// Every producer of the caller's room but its own, oldest first.
    pub fn room_producers(&self, peer: PeerId) -> Result<Vec<(String, Kind)>, SfuError> {
        let room = &self.peer(peer)?.room;
        Ok(self.rooms[room]
            .producers
            .iter()
            .filter_map(|id| self.producers.get(id))
            .filter(|p| p.peer != peer)
            .map(|p| (wire_id("p", p.id), p.kind))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::Caps;

    fn engine(caps: Caps) -> Engine {
        let mut e = Engine::new(1 << 40, "10.0.0.1:40000".parse().unwrap()).unwrap();
        e.set_caps(caps);
        e
    }

    /// The notices each peer got, in order.
    fn notices(e: &mut Engine) -> Vec<(PeerId, Notice)> {
        std::iter::from_fn(|| e.poll_notice()).collect()
    }

    #[test]
    fn a_newer_member_replaces_the_older_and_the_room_hears_one_true_story() {
        let now = Instant::now();
        let mut e = engine(Caps::default());
        e.join(now, 1, "r", "alice", "Alice", None).unwrap();
        e.join(now, 2, "r", "bob", "Bob", None).unwrap();
        assert_eq!(
            notices(&mut e),
            vec![(
                1,
                Notice::PeerJoined {
                    user_id: "bob".into(),
                    user_name: "Bob".into()
                }
            )]
        );
        // alice again, from a newer session: the older one is replaced.
        let info = e.join(now, 3, "r", "alice", "Alice", None).unwrap();
        assert_eq!(info.peers, vec![("bob".to_string(), "Bob".to_string())]);
        let n = notices(&mut e);
        assert!(
            n.iter().any(|(p, n)| *p == 1
                && matches!(n, Notice::Replaced { reason } if reason.contains("alice"))),
            "{n:?}"
        );
        // bob hears alice's old peer go, but not that alice left, and no second join.
        assert!(
            n.iter().all(|(p, n)| *p != 2
                || matches!(
                    n,
                    Notice::PeerLeft {
                        peer: 1,
                        user_left: false,
                        ..
                    }
                )),
            "{n:?}"
        );
        assert!(!e.peers.contains_key(&1));
        // The old session's socket closes later: nothing happens.
        e.leave(now, 1);
        assert!(notices(&mut e).is_empty());
        // The newer one leaves: now alice left.
        e.leave(now, 3);
        assert_eq!(
            notices(&mut e),
            vec![(
                2,
                Notice::PeerLeft {
                    user_id: "alice".into(),
                    peer: 3,
                    user_left: true
                }
            )]
        );
        assert_eq!(e.rooms(), 1);
        e.leave(now, 2);
        assert_eq!(e.rooms(), 0);
    }

    #[test]
    fn resources_of_a_user_live_beside_its_member_and_the_room_hears_the_user_once() {
        let now = Instant::now();
        let mut e = engine(Caps {
            sessions_per_user: 3,
            ..Caps::default()
        });
        e.join(now, 1, "r", "bob", "Bob", None).unwrap();
        e.join_resource(now, 2, "r", "cam", "Cam").unwrap();
        e.join(now, 3, "r", "cam", "Cam", None).unwrap();
        e.join_resource(now, 4, "r", "cam", "Cam").unwrap();
        let n = notices(&mut e);
        let joined: Vec<_> = n
            .iter()
            .filter(|(p, n)| *p == 1 && matches!(n, Notice::PeerJoined { .. }))
            .collect();
        assert_eq!(joined.len(), 1, "cam arrived once: {n:?}");
        assert!(!n.iter().any(|(_, n)| matches!(n, Notice::Replaced { .. })));
        // A fourth session of cam is one too many.
        let err = e.join_resource(now, 5, "r", "cam", "Cam").unwrap_err();
        assert_eq!(err.code(), "limit_exceeded");
        assert!(
            err.to_string().contains("limits.sessions_per_user"),
            "{err}"
        );
        assert!(err.is_capacity());
        // A member replaces only a member, never a resource.
        e.join(now, 6, "r", "cam", "Cam", None).unwrap();
        assert!(e.peers.contains_key(&2) && e.peers.contains_key(&4));
        assert!(!e.peers.contains_key(&3));
        notices(&mut e);
        // Resources leave: cam is still there (its member), so bob hears no user leave.
        e.leave(now, 2);
        e.leave(now, 4);
        assert!(notices(&mut e).iter().all(|(_, n)| matches!(
            n,
            Notice::PeerLeft {
                user_left: false,
                ..
            }
        )));
        e.leave(now, 6);
        assert!(notices(&mut e).iter().any(|(_, n)| matches!(
            n,
            Notice::PeerLeft {
                user_left: true,
                ..
            }
        )));
    }

    #[test]
    fn full_rooms_and_shards_refuse_the_newcomer_only() {
        let now = Instant::now();
        let mut e = engine(Caps {
            members_per_room: 2,
            rooms_per_shard: 2,
            ..Caps::default()
        });
        e.join(now, 1, "a", "u1", "U", None).unwrap();
        e.join(now, 2, "a", "u2", "U", None).unwrap();
        notices(&mut e);
        let err = e.join(now, 3, "a", "u3", "U", None).unwrap_err();
        assert!(err.to_string().contains("limits.members_per_room"), "{err}");
        assert!(notices(&mut e).is_empty(), "nobody hears of a refused join");
        // Replacing a member of a full room is no newcomer.
        e.join(now, 4, "a", "u2", "U", None).unwrap();
        e.join(now, 5, "b", "u5", "U", None).unwrap();
        let err = e.join(now, 6, "c", "u6", "U", None).unwrap_err();
        assert!(err.to_string().contains("limits.rooms_per_shard"), "{err}");
        assert!(!e.peers.contains_key(&6) && !e.has_room("c"));
        e.leave(now, 5);
        e.join(now, 6, "c", "u6", "U", None).unwrap();
    }

    #[test]
    fn capabilities_over_the_caps_are_refused() {
        let now = Instant::now();
        let mut e = engine(Caps {
            codecs_per_request: 2,
            max_string_bytes: 64,
            ..Caps::default()
        });
        let caps = |mimes: &[&str]| RtpCapabilities {
            codecs: mimes
                .iter()
                .map(|m| crate::sfu::ortc::CapabilityCodec {
                    mime_type: m.to_string(),
                })
                .collect(),
        };
        let err = e
            .join(now, 1, "r", "u", "U", Some(caps(&["a", "b", "c"])))
            .unwrap_err();
        assert!(
            err.to_string().contains("limits.codecs_per_request"),
            "{err}"
        );
        assert!(!e.has_room("r"));
        e.join(now, 1, "r", "u", "U", Some(caps(&["audio/opus"])))
            .unwrap();
        let long = "v".repeat(65);
        let err = e.set_rtp_capabilities(1, caps(&[&long])).unwrap_err();
        assert!(err.to_string().contains("limits.max_string_bytes"), "{err}");
    }
}
