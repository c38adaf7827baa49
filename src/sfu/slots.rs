//! Loudest-speaker slots (`/connect`): a peer's receiving audio sections are consumers
//! whose producer changes over time, so that it hears the loudest other speakers of its
//! room. Reviewed a few times a second, driven by audio packets; the level and hysteresis
//! math is in [`speakers`].

use std::time::{Duration, Instant};

use super::engine::{Engine, PeerId};
use super::ortc::Kind;
use super::speakers::{self, Held, Level};

/// How often a room's loudest-speaker slots are reviewed.
const SLOT_REVIEW: Duration = Duration::from_millis(250);

impl Engine {
    /// A peer of the room now has slots: the room's slots are reviewed from now on, and
    /// at once.
    pub(super) fn enable_slots(&mut self, now: Instant, peer: PeerId) {
        if let Some(room) = self.peers.get(&peer).map(|p| p.room.clone()) {
            if let Some(r) = self.rooms.get_mut(&room) {
                r.has_slots = true;
            }
            self.review_slots(now, &room);
        }
    }

    /// An audio packet of `publisher` arrived: its room's slots are due for review if the
    /// room has slots and was not reviewed within [`SLOT_REVIEW`]. The review itself runs
    /// after the drain ([`Engine::review_due_slots`]), not per packet.
    pub(super) fn schedule_slot_review(&mut self, now: Instant, publisher: PeerId) {
        let Some(room_name) = self.peers.get(&publisher).map(|o| &o.room) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let due = room
            .last_review
            .is_none_or(|t| now.saturating_duration_since(t) >= SLOT_REVIEW);
        if due && room.has_slots {
            room.last_review = Some(now);
            self.review_rooms.push(room_name.clone());
        }
    }

    /// Reviews the slots of every room scheduled for it.
    pub(super) fn review_due_slots(&mut self, now: Instant) {
        while let Some(room) = self.review_rooms.pop() {
            self.review_slots(now, &room);
        }
    }

    /// Moves each peer's speaker slots onto the loudest other speakers of the room.
    pub(super) fn review_slots(&mut self, now: Instant, room: &str) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let speakers: Vec<(u64, PeerId, Level)> = r
            .producers
            .iter()
            .filter_map(|id| self.producers.get(id))
            .filter(|p| p.kind == Kind::Audio && !p.paused)
            .map(|p| (p.id, p.peer, p.level))
            .collect();
        for peer in r.peers.clone() {
            let mut slots: Vec<u64> = self
                .consumers
                .iter()
                .filter(|(_, c)| c.peer == peer && c.slot.is_some())
                .map(|(id, _)| *id)
                .collect();
            if slots.is_empty() {
                continue;
            }
            slots.sort_unstable();
            let others: Vec<(u64, Level)> = speakers
                .iter()
                .filter(|(_, owner, _)| *owner != peer)
                .map(|(id, _, l)| (*id, *l))
                .collect();
            let current: Vec<Option<Held>> = slots
                .iter()
                .map(|c| self.consumers[c].slot.flatten())
                .collect();
            let chosen = speakers::choose(now, &current, &others);
            for ((cid, old), new) in slots.iter().zip(current).zip(chosen) {
                if old.map(|h| h.speaker) != new.map(|h| h.speaker) {
                    self.move_slot(*cid, new);
                } else if let (Some(c), Some(n)) = (self.consumers.get_mut(cid), new) {
                    c.slot = Some(Some(n));
                }
            }
        }
    }

    /// Puts a slot consumer on another speaker. Its SSRC stays; sequence numbers continue
    /// and timestamps move on by the elapsed time, so the stream stays valid.
    pub(super) fn move_slot(&mut self, cid: u64, new: Option<Held>) {
        let Some(c) = self.consumers.get_mut(&cid) else {
            return;
        };
        if let Some(old) = self.producers.get_mut(&c.producer) {
            old.consumers.retain(|x| *x != cid);
        }
        c.producer = new.map_or(0, |h| h.speaker);
        c.slot = Some(new);
        c.rewriter.mark_discontinuity();
        if let Some(p) = self.producers.get_mut(&c.producer) {
            p.consumers.push(cid);
        }
    }
}
