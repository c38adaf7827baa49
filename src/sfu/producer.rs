//! Producers: a publisher's track as its room sees it (mediasoup's Producer), with its
//! simulcast layers, the choice of the one layer that is forwarded, and keyframe requests
//! to the publisher with their debounce (mediasoup's KeyFrameRequestManager).

use std::time::{Duration, Instant};

use str0m::media::{KeyframeRequestKind, Mid, Rid};
use str0m::rtp::{ExtensionValues, Ssrc};

use super::engine::{parse_id, wire_id, Engine, Notice, PeerId};
use super::ortc::{self, Kind, ProducerSpec, RtpParameters};
use super::send_offer::SendSection;
use super::speakers::Level;
use super::transport::Direction;
use super::SfuError;

/// How often a producer may be asked for a keyframe.
const KEYFRAME_DEBOUNCE: Duration = Duration::from_millis(500);
/// A simulcast layer without packets for this long counts as inactive.
const LAYER_IDLE: Duration = Duration::from_millis(1500);

/// One encoding of a producer: a simulcast layer, or the only one.
pub(super) struct Layer {
    /// The simulcast rid, if it has one.
    pub(super) rid: Option<Rid>,
    /// The SSRC, declared or learnt from the first packet.
    pub(super) ssrc: Option<Ssrc>,
    /// When its last packet arrived.
    pub(super) last_packet: Option<Instant>,
}

impl Layer {
    /// An encoding whose SSRC the client declared.
    pub(super) fn with_ssrc(ssrc: Ssrc) -> Layer {
        Layer {
            rid: None,
            ssrc: Some(ssrc),
            last_packet: None,
        }
    }

    /// A simulcast encoding named by its rid; its SSRC is learnt from its first packet.
    pub(super) fn with_rid(rid: Rid) -> Layer {
        Layer {
            rid: Some(rid),
            ssrc: None,
            last_packet: None,
        }
    }

    /// The one encoding of a track that declared neither SSRC nor rid (SDP publishers):
    /// its SSRC is learnt from its first packet.
    pub(super) fn unnamed() -> Layer {
        Layer {
            rid: None,
            ssrc: None,
            last_packet: None,
        }
    }
}

/// A published track.
pub(super) struct Producer {
    /// Its id (the wire id is `p` and this in hex).
    pub(super) id: u64,
    /// The publishing peer.
    pub(super) peer: PeerId,
    /// The publisher's transport it arrives on.
    pub(super) transport: u64,
    /// Audio or video.
    pub(super) kind: Kind,
    /// Codec and numbering, as checked against the router.
    pub(super) spec: ProducerSpec,
    /// Its media section on the transport.
    pub(super) mid: Mid,
    /// Paused by its publisher: nothing is forwarded.
    pub(super) paused: bool,
    /// Consumers it is forwarded to, oldest first.
    pub(super) consumers: Vec<u64>,
    /// One entry per encoding, lowest first.
    pub(super) layers: Vec<Layer>,
    /// The layer forwarded now.
    pub(super) selected: usize,
    /// When the publisher was last asked for a keyframe (the debounce).
    pub(super) last_keyframe_request: Option<Instant>,
    /// Smoothed audio level, for loudest-speaker slots.
    pub(super) level: Level,
}

impl Producer {
    /// The SSRCs it knows (declared or learnt), with their layers.
    pub(super) fn ssrcs(&self) -> impl Iterator<Item = (Ssrc, usize)> + '_ {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.ssrc.map(|s| (s, i)))
    }

    /// Every SSRC it declared or learnt, RTX included.
    pub(super) fn all_ssrcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.ssrcs()
            .map(|(s, _)| *s)
            .chain(self.spec.ssrc.and_then(|(_, rtx)| rtx))
    }

    /// The layer of a packet with this SSRC, learning the SSRC of a rid layer (or of the
    /// one unnamed layer) from its first packet. `None`: the packet is none of its layers.
    pub(super) fn layer_of(&mut self, ssrc: Ssrc, ext: &ExtensionValues) -> Option<usize> {
        let layer = match self.layers.iter().position(|l| l.ssrc == Some(ssrc)) {
            Some(i) => i,
            None => {
                let fresh = self
                    .layers
                    .iter()
                    .position(|l| l.rid.is_some() && l.rid == ext.rid);
                let fresh = fresh.or_else(|| {
                    let only = self.layers.len() == 1;
                    (only && self.layers[0].rid.is_none() && self.layers[0].ssrc.is_none())
                        .then_some(0)
                })?;
                self.layers[fresh].ssrc = Some(ssrc);
                fresh
            }
        };
        Some(layer)
    }

    /// A packet of `layer` arrived: the layer is active and, for audio, the packet's level
    /// is fed.
    pub(super) fn note_packet(&mut self, now: Instant, layer: usize, ext: &ExtensionValues) {
        self.layers[layer].last_packet = Some(now);
        if self.kind == Kind::Audio {
            self.level.update(now, ext.audio_level);
        }
    }

    /// Selects the highest active layer (`layer`, the one that just got a packet, when
    /// none is). Returns whether the selection changed: consumers then wait for a
    /// keyframe of the new layer.
    pub(super) fn select_layer(&mut self, now: Instant, layer: usize) -> bool {
        let best = self
            .layers
            .iter()
            .rposition(|l| {
                l.last_packet
                    .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE)
            })
            .unwrap_or(layer);
        let switched = best != self.selected;
        self.selected = best;
        switched
    }

    /// The SSRC of the selected layer to ask a keyframe of, unless one was asked for
    /// within the debounce interval or the layer's SSRC is not known yet (then `None`).
    /// A `Some` counts as a request.
    pub(super) fn keyframe_request(&mut self, now: Instant) -> Option<Ssrc> {
        if self
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_DEBOUNCE)
        {
            return None;
        }
        let ssrc = self.layers.get(self.selected).and_then(|l| l.ssrc)?;
        self.last_keyframe_request = Some(now);
        Some(ssrc)
    }
}

impl Engine {
    /// A mediasoup-style `produce`: the client's RTP parameters become a producer on one
    /// of its send transports. Returns the producer's wire id.
    pub fn produce(
        &mut self,
        now: Instant,
        peer: PeerId,
        transport: &str,
        kind: Kind,
        params: &RtpParameters,
    ) -> Result<String, SfuError> {
        let tid = self.used_transport(now, peer, transport)?;
        self.peer(peer)?;
        if self.transports[&tid].direction != Direction::Send {
            return Err(SfuError::BadRequest(
                "produce needs a send transport".into(),
            ));
        }
        ortc::check_limits(params, &self.caps)?;
        let spec = ortc::check_producer(kind, params).map_err(SfuError::BadRequest)?;
        let mid: Mid = spec.mid.as_str().into();
        if self.producer_by_mid.contains_key(&(tid, mid)) {
            return Err(SfuError::BadRequest(format!(
                "mid {} already produces on this transport",
                spec.mid
            )));
        }
        self.check_new_producers(peer, tid, 1)?;
        for ssrc in ortc::declared_ssrcs(params) {
            // A transport's producers are its owner's.
            let taken = self
                .peer(peer)?
                .producers
                .iter()
                .filter_map(|id| self.producers.get(id))
                .filter(|p| p.transport == tid)
                .find(|p| p.all_ssrcs().any(|s| s == ssrc));
            if let Some(p) = taken {
                return Err(SfuError::BadRequest(format!(
                    "SSRC {ssrc} is already used by producer {} (mid {}) on this transport",
                    wire_id("p", p.id),
                    p.spec.mid
                )));
            }
        }
        let section = SendSection::new(kind, &spec, params).map_err(SfuError::BadRequest)?;
        let t = self.transports.get_mut(&tid).expect("checked");
        t.negotiate_section(section)?;
        let layers = if let Some((ssrc, _)) = spec.ssrc {
            vec![Layer::with_ssrc(ssrc.into())]
        } else {
            spec.rids
                .iter()
                .map(|r| Layer::with_rid(r.as_str().into()))
                .collect()
        };
        let id = self.add_producer(now, peer, tid, kind, spec, mid, layers);
        self.drain(now, tid);
        Ok(wire_id("p", id))
    }

    /// Registers a producer (its media already declared on the transport) and tells the
    /// room. Shared by the mediasoup dialect and the SDP bridge.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_producer(
        &mut self,
        now: Instant,
        peer: PeerId,
        tid: u64,
        kind: Kind,
        spec: ProducerSpec,
        mid: Mid,
        layers: Vec<Layer>,
    ) -> u64 {
        let id = self.fresh_id();
        let selected = layers.len().saturating_sub(1);
        if let Some(t) = self.transports.get_mut(&tid) {
            for (i, l) in layers.iter().enumerate() {
                if let Some(ssrc) = l.ssrc {
                    t.ssrc_routes.insert(ssrc, (id, i));
                }
            }
        }
        self.producers.insert(
            id,
            Producer {
                id,
                peer,
                transport: tid,
                kind,
                spec,
                mid,
                paused: false,
                consumers: Vec::new(),
                layers,
                selected,
                last_keyframe_request: None,
                level: Level::new(now),
            },
        );
        self.producer_by_mid.insert((tid, mid), id);
        let Some(p) = self.peers.get_mut(&peer) else {
            return id;
        };
        p.producers.push(id);
        let r = self.rooms.get_mut(&p.room).expect("a peer's room exists");
        r.producers.push(id);
        let producer_id = wire_id("p", id);
        r.tell(&mut self.notices, Some(peer), || Notice::NewProducer {
            producer_id: producer_id.clone(),
            publisher: peer,
            user_id: p.user_id.clone(),
            user_name: p.user_name.clone(),
            kind,
        });
        id
    }

    /// A producer of the caller's room (anyone's), by wire id.
    pub(super) fn producer_in_room(&self, peer: PeerId, producer: &str) -> Result<u64, SfuError> {
        let id = parse_id("p", producer).ok_or_else(|| SfuError::UnknownId(producer.into()))?;
        let room = &self.peer(peer)?.room;
        match self.producers.get(&id) {
            Some(p) if self.peers.get(&p.peer).is_some_and(|o| &o.room == room) => Ok(id),
            _ => Err(SfuError::UnknownId(producer.into())),
        }
    }

    /// One of the caller's own producers, by wire id.
    fn own_producer(&self, peer: PeerId, producer: &str) -> Result<u64, SfuError> {
        let id = parse_id("p", producer).ok_or_else(|| SfuError::UnknownId(producer.into()))?;
        match self.producers.get(&id) {
            Some(p) if p.peer == peer => Ok(id),
            _ => Err(SfuError::UnknownId(producer.into())),
        }
    }

    /// Pauses or resumes one of the caller's producers. Its consumers start a new run; a
    /// resumed video producer is asked for a keyframe.
    pub fn set_producer_paused(
        &mut self,
        now: Instant,
        peer: PeerId,
        producer: &str,
        paused: bool,
    ) -> Result<(), SfuError> {
        let id = self.own_producer(peer, producer)?;
        let p = self.producers.get_mut(&id).expect("checked");
        if p.paused == paused {
            return Ok(());
        }
        p.paused = paused;
        let video = p.kind == Kind::Video;
        for cid in &p.consumers {
            if let Some(c) = self.consumers.get_mut(cid) {
                c.restart(video);
            }
        }
        if !paused && video {
            self.request_keyframe(now, id);
            self.drain_dirty(now);
        }
        Ok(())
    }

    /// Closes one of the caller's producers (and its consumers).
    pub fn close_producer(
        &mut self,
        now: Instant,
        peer: PeerId,
        producer: &str,
    ) -> Result<(), SfuError> {
        let id = self.own_producer(peer, producer)?;
        self.remove_producer(now, id);
        Ok(())
    }

    /// Removes a producer, its consumers (each subscriber is told) and its media on the
    /// transport, and tells the room.
    pub(super) fn remove_producer(&mut self, now: Instant, id: u64) {
        let Some(p) = self.producers.remove(&id) else {
            return;
        };
        self.producer_by_mid.remove(&(p.transport, p.mid));
        for cid in &p.consumers {
            if self.consumers.get(cid).is_some_and(|c| c.slot.is_some()) {
                // A loudest-speaker slot outlives its speaker: it carries nobody until
                // the room's next review puts another speaker on it.
                self.move_slot(*cid, None);
            } else {
                self.remove_consumer(now, *cid, true);
            }
        }
        if let Some(t) = self.transports.get_mut(&p.transport) {
            for (ssrc, _) in p.ssrcs() {
                // Unless a newer producer of the transport took the SSRC over.
                if t.ssrc_routes.get(&ssrc).is_some_and(|r| r.0 == id) {
                    t.ssrc_routes.remove(&ssrc);
                }
            }
            t.rtc.direct_api().remove_media(p.mid);
            self.mark_dirty(p.transport);
        }
        if let Some(owner) = self.peers.get_mut(&p.peer) {
            owner.producers.retain(|&x| x != id);
            if let Some(r) = self.rooms.get_mut(&owner.room) {
                r.producers.retain(|&x| x != id);
                r.tell(&mut self.notices, None, || Notice::ProducerClosed {
                    producer_id: wire_id("p", id),
                });
            }
        }
        self.drain_dirty(now);
    }

    /// Asks a producer's publisher for a keyframe (a PLI), at most once per debounce
    /// interval.
    pub(super) fn request_keyframe(&mut self, now: Instant, producer: u64) {
        let Some(p) = self.producers.get_mut(&producer) else {
            return;
        };
        let Some(ssrc) = p.keyframe_request(now) else {
            return;
        };
        let tid = p.transport;
        if let Some(t) = self.transports.get_mut(&tid) {
            if let Some(rx) = t.rtc.direct_api().stream_rx(&ssrc) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                self.mark_dirty(tid);
            }
        }
    }

    /// Another layer is forwarded now: every consumer waits for its keyframe, asked for
    /// at once (not held back by the debounce).
    pub(super) fn layer_switched(&mut self, now: Instant, pid: u64) {
        let Some(p) = self.producers.get_mut(&pid) else {
            return;
        };
        for cid in &p.consumers {
            if let Some(c) = self.consumers.get_mut(cid) {
                c.restart(true);
            }
        }
        p.last_keyframe_request = None;
        self.request_keyframe(now, pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::ortc::VP8;

    impl Producer {
        /// Whether packets with this SSRC are one of its layers.
        fn has_ssrc(&self, ssrc: Ssrc) -> bool {
            self.layers.iter().any(|l| l.ssrc == Some(ssrc))
        }

        /// Takes one received packet as the engine does: its layer (learning the SSRC),
        /// then the packet noted. `None`: the packet is none of its layers.
        fn receive(&mut self, now: Instant, ssrc: Ssrc, ext: &ExtensionValues) -> Option<usize> {
            let layer = self.layer_of(ssrc, ext)?;
            self.note_packet(now, layer, ext);
            Some(layer)
        }
    }

    fn producer(now: Instant, layers: Vec<Layer>) -> Producer {
        Producer {
            id: 1,
            peer: 1,
            transport: 1,
            kind: Kind::Video,
            spec: ProducerSpec {
                codec: VP8,
                pt: VP8.pt,
                rtx_pt: None,
                mid: "0".into(),
                cname: "c".into(),
                rids: Vec::new(),
                ssrc: None,
            },
            mid: "0".into(),
            paused: false,
            consumers: Vec::new(),
            selected: layers.len() - 1,
            layers,
            last_keyframe_request: None,
            level: Level::new(now),
        }
    }

    fn s(n: u32) -> Ssrc {
        n.into()
    }

    fn rid(r: &str) -> ExtensionValues {
        ExtensionValues {
            rid: Some(r.into()),
            ..Default::default()
        }
    }

    #[test]
    fn rid_layers_learn_their_ssrc_and_unknown_packets_are_refused() {
        let now = Instant::now();
        let mut p = producer(
            now,
            vec![Layer::with_rid("l".into()), Layer::with_rid("h".into())],
        );
        assert_eq!(p.receive(now, s(10), &rid("h")), Some(1));
        assert_eq!(p.receive(now, s(9), &rid("l")), Some(0));
        // Known by SSRC from now on, rid or not.
        assert_eq!(p.receive(now, s(10), &ExtensionValues::default()), Some(1));
        assert!(p.has_ssrc(s(9)));
        assert_eq!(p.receive(now, s(11), &rid("x")), None);
        // The one unnamed layer takes the first SSRC it sees, and only that one.
        let mut q = producer(now, vec![Layer::unnamed()]);
        assert_eq!(q.receive(now, s(5), &ExtensionValues::default()), Some(0));
        assert_eq!(q.receive(now, s(6), &ExtensionValues::default()), None);
    }

    #[test]
    fn the_highest_active_layer_is_selected() {
        let t0 = Instant::now();
        let mut p = producer(t0, vec![Layer::with_ssrc(s(1)), Layer::with_ssrc(s(2))]);
        let low = p.receive(t0, s(1), &ExtensionValues::default()).unwrap();
        // Nothing of the high layer yet, but it is selected from the start: the low
        // layer is the highest active one.
        assert!(p.select_layer(t0, low));
        assert_eq!(p.selected, 0);
        let high = p.receive(t0, s(2), &ExtensionValues::default()).unwrap();
        assert!(p.select_layer(t0, high));
        assert!(
            !p.select_layer(t0, low),
            "a low packet keeps the high layer"
        );
        assert_eq!(p.selected, 1);
        // The high layer goes quiet: back to the low one.
        let later = t0 + LAYER_IDLE;
        p.receive(later, s(1), &ExtensionValues::default());
        assert!(p.select_layer(later, low));
        assert_eq!(p.selected, 0);
    }

    #[test]
    fn keyframe_requests_are_debounced() {
        let t0 = Instant::now();
        let mut p = producer(t0, vec![Layer::with_rid("h".into())]);
        assert_eq!(p.keyframe_request(t0), None, "no SSRC known yet");
        p.receive(t0, s(7), &rid("h"));
        assert_eq!(p.keyframe_request(t0), Some(s(7)));
        assert_eq!(p.keyframe_request(t0 + KEYFRAME_DEBOUNCE / 2), None);
        assert_eq!(p.keyframe_request(t0 + KEYFRAME_DEBOUNCE), Some(s(7)));
    }
}
