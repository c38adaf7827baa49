//! Consumers: one producer's track sent to one subscriber (mediasoup's SimpleConsumer),
//! with its own SSRC, payload type and sequence/timestamp numbering, and the keyframe gate
//! that holds video until the subscriber can decode it.

use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid};
use str0m::rtp::{Ssrc, StreamTx};

use super::engine::{parse_id, wire_id, Engine, Notice, PeerId};
use super::ortc::{self, ConsumerRtpParameters, Kind, RtpCapabilities};
use super::rewrite::Rewriter;
use super::speakers::Held;
use super::transport::Direction;
use super::SfuError;

/// How long a video packet sent to a subscriber is kept for resending on its NACK (str0m
/// keeps 3 s). A receiver NACKs a gap as soon as the next packet shows it (within a frame
/// interval) and repeats every round trip; a resend older than this misses the playout
/// of an interactive stream, whose jitter buffer holds a few hundred milliseconds at
/// most. 500 ms is a first NACK at a round trip up to about 400 ms, or three tries at
/// 150 ms.
pub(super) const VIDEO_RESEND_WINDOW: Duration = Duration::from_millis(500);

/// The most video packets kept per consumer for resending (str0m keeps up to 1000 per
/// stream, about 430 bytes each besides the payload the consumers share): 500 ms at
/// 4 Mbit/s in 1200-byte packets is about 210, rounded up for keyframe bursts.
pub(super) const VIDEO_RESEND_PACKETS: usize = 256;

/// Queued resends are dropped when resends pass this share of what is sent (str0m's own
/// default, kept).
const RESEND_RATIO_CAP: Option<f32> = Some(0.15);

/// Sizes a video consumer's resend (RTX) cache. Audio needs nothing: it is sent without
/// RTX and not nackable, so str0m caches none of it.
pub(super) fn size_resend_cache(tx: &mut StreamTx) {
    tx.set_rtx_cache(VIDEO_RESEND_PACKETS, VIDEO_RESEND_WINDOW, RESEND_RATIO_CAP);
}

/// What `consume` answers: everything mediasoup-client's `consume()` needs.
pub struct ConsumerInfo {
    /// The consumer's wire id (`c...`).
    pub id: String,
    /// The producer it carries.
    pub producer_id: String,
    /// Audio or video.
    pub kind: Kind,
    /// mediasoup `rtpParameters` for the client's receiving side.
    pub rtp_parameters: ConsumerRtpParameters,
    /// Whether the producer is paused now.
    pub producer_paused: bool,
}

/// A producer's track on one subscriber's transport.
pub(super) struct Consumer {
    /// The subscribing peer.
    pub(super) peer: PeerId,
    /// The subscriber's transport it is sent on.
    pub(super) transport: u64,
    /// The producer it carries; 0 for a speaker slot that carries nobody now.
    pub(super) producer: u64,
    /// Its media section on the transport.
    pub(super) mid: Mid,
    /// The SSRC it is sent with.
    pub(super) ssrc: Ssrc,
    /// The payload type this consumer's transport negotiated for the producer's codec.
    pub(super) pt: u8,
    /// Paused by its subscriber (mediasoup consumers start paused).
    pub(super) paused: bool,
    /// Video is held until a keyframe arrives.
    pub(super) wait_keyframe: bool,
    /// Its own sequence numbers and timestamps.
    pub(super) rewriter: Rewriter,
    /// A loudest-speaker slot (`/connect`): its producer changes; 0 when it carries none.
    pub(super) slot: Option<Option<Held>>,
    /// It has forwarded a packet, so its subscriber's first media is on record (the
    /// forward path then skips the peer lookup).
    pub(super) media_noted: bool,
}

/// One received packet of a producer's forwarded layer, as each of its consumers sees it.
pub(super) struct Incoming {
    /// The extended input sequence number.
    pub(super) seq: u64,
    /// The input timestamp.
    pub(super) ts: u32,
    /// The codec's clock rate.
    pub(super) clock_rate: u32,
    /// The producer is video.
    pub(super) video: bool,
    /// The packet starts a keyframe (always false for audio).
    pub(super) keyframe: bool,
}

/// A consumer's verdict on one packet.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Send it with these numbers.
    Write {
        /// The extended output sequence number.
        seq: u64,
        /// The output timestamp.
        ts: u32,
    },
    /// Not sent: the consumer waits for a keyframe the producer should be asked for.
    WaitKeyframe,
    /// Not sent, and nothing to ask for.
    Drop,
}

impl Consumer {
    /// The keyframe gate and the rewrite for one packet. `connected`: the subscriber's
    /// transport is up (before that nothing is sent, and video starts at a keyframe).
    #[inline]
    pub(super) fn admit(&mut self, now: Instant, connected: bool, pkt: &Incoming) -> Admit {
        if self.paused {
            return Admit::Drop;
        }
        if !connected {
            self.wait_keyframe = pkt.video;
            return Admit::Drop;
        }
        if self.wait_keyframe {
            if !pkt.keyframe {
                return Admit::WaitKeyframe;
            }
            self.wait_keyframe = false;
            self.rewriter.mark_discontinuity();
        }
        let (seq, ts) = self.rewriter.rewrite(pkt.seq, pkt.ts, pkt.clock_rate, now);
        Admit::Write { seq, ts }
    }

    /// The packets in between are dropped on purpose (the producer paused or switched
    /// layers): the next one continues the numbering, after a keyframe if `wait_keyframe`.
    pub(super) fn restart(&mut self, wait_keyframe: bool) {
        self.rewriter.mark_discontinuity();
        self.wait_keyframe = wait_keyframe;
    }

    /// Pauses or resumes; a resumed `video` consumer waits for a keyframe. Returns whether
    /// anything changed.
    pub(super) fn set_paused(&mut self, paused: bool, video: bool) -> bool {
        if self.paused == paused {
            return false;
        }
        self.paused = paused;
        self.rewriter.mark_discontinuity();
        if !paused && video {
            self.wait_keyframe = true;
        }
        true
    }
}

impl Engine {
    /// A mediasoup-style `consume`: a new consumer of a producer of the caller's room on
    /// one of its receive transports, paused until the client resumes it.
    pub fn consume(
        &mut self,
        now: Instant,
        peer: PeerId,
        transport: &str,
        producer: &str,
        rtp_capabilities: Option<&RtpCapabilities>,
    ) -> Result<ConsumerInfo, SfuError> {
        let tid = self.used_transport(now, peer, transport)?;
        let pid = self.producer_in_room(peer, producer)?;
        if let Some(caps) = rtp_capabilities {
            self.check_capabilities(caps)?;
        }
        self.check_new_consumers(peer, 1)?;
        let p = self.peer(peer)?;
        let caps = rtp_capabilities.or(p.rtp_capabilities.as_ref());
        let prod = &self.producers[&pid];
        let (codec, kind, cname, paused) = (
            prod.spec.codec,
            prod.kind,
            prod.spec.cname.clone(),
            prod.paused,
        );
        if !ortc::can_consume(caps, &codec) {
            return Err(SfuError::BadRequest(format!(
                "rtpCapabilities cannot receive {}",
                codec.mime
            )));
        }
        let t = self.transports.get_mut(&tid).expect("checked");
        if t.direction != Direction::Recv {
            return Err(SfuError::BadRequest(
                "consume needs a recv transport".into(),
            ));
        }
        let mid_text = t.next_mid();
        let mid: Mid = mid_text.as_str().into();
        let (ssrc, rtx) = {
            let mut api = t.rtc.direct_api();
            let ssrc = api.new_ssrc();
            let rtx = api.new_ssrc();
            let media_kind = match kind {
                Kind::Audio => MediaKind::Audio,
                Kind::Video => MediaKind::Video,
            };
            api.declare_media(mid, media_kind);
            let rtx_ssrc = (kind == Kind::Video).then_some(rtx);
            let tx = api.declare_stream_tx(ssrc, rtx_ssrc, mid, None);
            if kind == Kind::Video {
                size_resend_cache(tx);
            }
            (ssrc, rtx)
        };
        let id = self.add_consumer(Consumer {
            peer,
            transport: tid,
            producer: pid,
            mid,
            ssrc,
            pt: codec.pt,
            paused: true,
            wait_keyframe: kind == Kind::Video,
            rewriter: Rewriter::default(),
            slot: None,
            media_noted: false,
        });
        self.drain(now, tid);
        Ok(ConsumerInfo {
            id: wire_id("c", id),
            producer_id: producer.to_string(),
            kind,
            rtp_parameters: ortc::consumer_parameters(&codec, &mid_text, *ssrc, *rtx, &cname),
            producer_paused: paused,
        })
    }

    /// Registers a consumer (its stream already declared on the transport) with its
    /// transport, producer (0: none yet) and peer. Shared by every dialect.
    pub(super) fn add_consumer(&mut self, c: Consumer) -> u64 {
        let id = self.fresh_id();
        self.consumer_by_mid.insert((c.transport, c.mid), id);
        if let Some(p) = self.producers.get_mut(&c.producer) {
            p.consumers.push(id);
        }
        if let Some(p) = self.peers.get_mut(&c.peer) {
            p.consumers.push(id);
        }
        self.consumers.insert(id, c);
        id
    }

    /// One of the caller's own consumers, by wire id.
    fn own_consumer(&self, peer: PeerId, consumer: &str) -> Result<u64, SfuError> {
        let id = parse_id("c", consumer).ok_or_else(|| SfuError::UnknownId(consumer.into()))?;
        match self.consumers.get(&id) {
            Some(c) if c.peer == peer => Ok(id),
            _ => Err(SfuError::UnknownId(consumer.into())),
        }
    }

    /// Pauses or resumes one of the caller's consumers. A resumed video consumer waits for
    /// a keyframe, asked for now if its transport is up (else once it is).
    pub fn set_consumer_paused(
        &mut self,
        now: Instant,
        peer: PeerId,
        consumer: &str,
        paused: bool,
    ) -> Result<(), SfuError> {
        let id = self.own_consumer(peer, consumer)?;
        let c = self.consumers.get_mut(&id).expect("checked");
        let producer = c.producer;
        let video = self
            .producers
            .get(&producer)
            .is_some_and(|p| p.kind == Kind::Video);
        if !c.set_paused(paused, video) {
            return Ok(());
        }
        let connected = self
            .transports
            .get(&c.transport)
            .is_some_and(|t| t.rtc.is_connected());
        // Before the subscriber's transport is up a keyframe would be wasted; the forward
        // path asks for one once the consumer can take it.
        if !paused && video && connected {
            self.request_keyframe(now, producer);
            self.drain_dirty(now);
        }
        Ok(())
    }

    /// Removes a consumer and its stream on the transport; `notify` tells its subscriber.
    pub(super) fn remove_consumer(&mut self, now: Instant, id: u64, notify: bool) {
        let Some(c) = self.consumers.remove(&id) else {
            return;
        };
        self.consumer_by_mid.remove(&(c.transport, c.mid));
        if let Some(p) = self.producers.get_mut(&c.producer) {
            p.consumers.retain(|&x| x != id);
        }
        if let Some(t) = self.transports.get_mut(&c.transport) {
            t.rtc.direct_api().remove_stream_tx(c.ssrc);
            t.rtc.direct_api().remove_media(c.mid);
            self.mark_dirty(c.transport);
        }
        if let Some(owner) = self.peers.get_mut(&c.peer) {
            owner.consumers.retain(|&x| x != id);
        }
        if notify {
            self.notices.push_back((
                c.peer,
                Notice::ConsumerClosed {
                    consumer_id: wire_id("c", id),
                },
            ));
        }
        self.drain_dirty(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn consumer() -> Consumer {
        Consumer {
            peer: 1,
            transport: 1,
            producer: 1,
            mid: "0".into(),
            ssrc: 1u32.into(),
            pt: 96,
            paused: false,
            wait_keyframe: true,
            rewriter: Rewriter::default(),
            slot: None,
            media_noted: false,
        }
    }

    fn packet(seq: u64, keyframe: bool) -> Incoming {
        Incoming {
            seq,
            ts: seq as u32 * 3000,
            clock_rate: 90_000,
            video: true,
            keyframe,
        }
    }

    #[test]
    fn video_waits_for_a_keyframe_then_numbers_without_a_gap() {
        let t0 = Instant::now();
        let mut c = consumer();
        assert_eq!(c.admit(t0, true, &packet(10, false)), Admit::WaitKeyframe);
        assert_eq!(
            c.admit(t0, true, &packet(11, true)),
            Admit::Write {
                seq: 11,
                ts: 33_000
            }
        );
        assert!(matches!(
            c.admit(t0, true, &packet(12, false)),
            Admit::Write { seq: 12, .. }
        ));
        // Paused and resumed: the run continues at 13 after the next keyframe.
        assert!(c.set_paused(true, true));
        assert!(!c.set_paused(true, true));
        assert_eq!(c.admit(t0, true, &packet(13, true)), Admit::Drop);
        assert!(c.set_paused(false, true));
        assert_eq!(c.admit(t0, true, &packet(40, false)), Admit::WaitKeyframe);
        let later = t0 + Duration::from_secs(1);
        assert!(matches!(
            c.admit(later, true, &packet(41, true)),
            Admit::Write { seq: 13, .. }
        ));
    }

    #[test]
    fn nothing_goes_to_a_transport_that_is_not_up() {
        let t0 = Instant::now();
        let mut c = consumer();
        c.wait_keyframe = false;
        assert_eq!(c.admit(t0, false, &packet(1, false)), Admit::Drop);
        assert!(c.wait_keyframe, "video starts at a keyframe once it is up");
        let audio = Incoming {
            video: false,
            ..packet(2, false)
        };
        assert_eq!(c.admit(t0, false, &audio), Admit::Drop);
        assert!(!c.wait_keyframe);
        assert!(matches!(c.admit(t0, true, &audio), Admit::Write { .. }));
    }
}
