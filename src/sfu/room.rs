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
pub struct JoinInfo {
    /// The room's producers, oldest first.
    pub producers: Vec<ProducerInfo>,
    /// The other peers, as (user id, user name), in the order they joined.
    pub peers: Vec<(String, String)>,
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

    /// Adds a peer to a room (created on first use).
    pub fn join(
        &mut self,
        now: Instant,
        peer: PeerId,
        room: &str,
        user_id: &str,
        user_name: &str,
        rtp_capabilities: Option<RtpCapabilities>,
    ) -> Result<JoinInfo, SfuError> {
        if self.peers.contains_key(&peer) {
            return Err(SfuError::BadRequest("already joined".into()));
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
        let peers = r
            .peers
            .iter()
            .filter_map(|o| self.peers.get(o))
            .map(|p| (p.user_id.clone(), p.user_name.clone()))
            .collect();
        r.tell(&mut self.notices, None, || Notice::PeerJoined {
            user_id: user_id.to_string(),
            user_name: user_name.to_string(),
        });
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
    pub fn set_rtp_capabilities(&mut self, peer: PeerId, caps: RtpCapabilities) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rtp_capabilities = Some(caps);
        }
    }

    /// Releases everything of a peer and tells the room.
    pub fn leave(&mut self, now: Instant, peer: PeerId) {
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
            room.tell(&mut self.notices, None, || Notice::PeerLeft {
                user_id: p.user_id.clone(),
                peer,
            });
            if room.peers.is_empty() {
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
