//! After a panic: the driver that caught a panic of an engine call asks which room was
//! being worked on and closes it, so that state a panic may have left half changed is
//! dropped with its room while the other rooms go on.

use std::time::Instant;

use super::engine::{Engine, Notice};

impl Engine {
    /// The room of the transport this engine was working on when a call panicked, and
    /// forgets that transport; `None` when the call was not working on one (or it is gone).
    pub fn take_panicked_room(&mut self) -> Option<String> {
        let tid = self.working_on.take()?;
        let peer = self.transports.get(&tid)?.peer;
        Some(self.peers.get(&peer)?.room.clone())
    }

    /// Closes a room: every peer leaves (its transports, producers and consumers are
    /// released) and is told `reason` as [`Notice::MediaFailed`]. Returns how many peers
    /// it had.
    pub fn close_room(&mut self, now: Instant, room: &str, reason: &str) -> usize {
        let peers = self
            .rooms
            .get(room)
            .map(|r| r.peers.clone())
            .unwrap_or_default();
        for &peer in &peers {
            self.leave(now, peer);
            self.notices.push_back((
                peer,
                Notice::MediaFailed {
                    reason: reason.to_string(),
                },
            ));
        }
        self.rooms.remove(room);
        self.working_on = None;
        peers.len()
    }

    /// Fault injection for tests (debug builds only): from now on a datagram for a
    /// transport whose room id contains `marker` panics in [`Engine::handle_datagram`].
    #[cfg(debug_assertions)]
    pub fn set_fault_room(&mut self, marker: Option<String>) {
        self.fault_room = marker;
    }

    /// Panics when fault injection names the room of transport `tid`.
    #[cfg(debug_assertions)]
    pub(super) fn inject_fault(&self, tid: u64) {
        let Some(marker) = &self.fault_room else {
            return;
        };
        let room = self
            .transports
            .get(&tid)
            .and_then(|t| self.peers.get(&t.peer))
            .map(|p| p.room.as_str());
        if let Some(room) = room.filter(|r| r.contains(marker.as_str())) {
            panic!("fault injection: a datagram for room {room}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::sfu::{Engine, Notice};

    #[test]
    fn closing_a_room_tells_its_peers_and_spares_the_others() {
        let now = Instant::now();
        let mut e = Engine::new(0, "127.0.0.1:40000".parse().unwrap()).unwrap();
        e.join(now, 1, "bad", "a", "A", None).unwrap();
        e.join(now, 2, "bad", "b", "B", None).unwrap();
        e.join(now, 3, "good", "c", "C", None).unwrap();
        while e.poll_notice().is_some() {}
        assert_eq!(e.close_room(now, "bad", "internal error"), 2);
        assert!(!e.has_room("bad"));
        assert!(e.has_room("good"));
        let notices: Vec<_> = std::iter::from_fn(|| e.poll_notice()).collect();
        for peer in [1, 2] {
            assert!(
                notices.iter().any(|(p, n)| *p == peer
                    && *n
                        == Notice::MediaFailed {
                            reason: "internal error".into()
                        }),
                "{notices:?}"
            );
        }
        assert!(notices.iter().all(|(p, _)| *p != 3), "{notices:?}");
        // Peer 3 still works; the closed room's peers may join again.
        e.join(now, 1, "bad", "a", "A", None).unwrap();
        assert_eq!(e.take_panicked_room(), None);
    }
}
