//! The SDP bridge: transports negotiated with SDP offers and answers (WHIP, WHEP, the
//! publish/subscribe dialect, `/connect`) instead of mediasoup's parameters. This is the
//! one place that maps SDP media sections to producers and consumers; the dialects only
//! translate messages.

use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction as MediaDirection, MediaKind, Mid};
use str0m::Candidate;

use super::consumer::{size_resend_cache, Consumer};
use super::engine::{parse_id, wire_id, Engine, PeerId};
use super::ortc::{check_fingerprint, Kind, ProducerSpec, RouterCodec, OPUS};
use super::producer::Layer;
use super::rewrite::Rewriter;
use super::transport::{Direction, Transport};
use super::{Caps, SfuError};

/// A parser error as a client may see it: one line, without the parser's internal
/// positions (they print memory addresses).
fn sdp_error(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("PointerOffset"))
        .collect();
    if lines.is_empty() {
        "not an SDP document".into()
    } else {
        lines.join("; ")
    }
}

/// Checks every `a=fingerprint` of an SDP document (session or media level): a
/// recognised algorithm and exactly its digest length (see [`check_fingerprint`]).
fn check_sdp_fingerprints(sdp: &str) -> Result<(), String> {
    for line in sdp.lines() {
        let Some(rest) = line.trim().strip_prefix("a=fingerprint:") else {
            continue;
        };
        let (algorithm, value) = rest.trim().split_once(' ').unwrap_or((rest, ""));
        check_fingerprint(algorithm, value).map_err(|e| format!("a=fingerprint: {e}"))?;
    }
    Ok(())
}

/// Refuses an SDP whose payload types contradict each other, before str0m sees it: every
/// `a=rtpmap` of one payload type must name the same codec (encoding, clock rate,
/// channels) in every media section (bundled sections share one payload-type space, RFC
/// 8843 section 7.5), and a section's codecs must be of its kind (90 kHz video in video
/// sections, other rates in audio ones). str0m 0.25 asserts on such offers ("Pt locked
/// multiple times"): a panic any client could cause, found by the `sdp` fuzz target.
fn check_payload_types(sdp: &str) -> Result<(), String> {
    let mut kind = "";
    let mut seen: Vec<(u8, String)> = Vec::new();
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            kind = m.split(' ').next().unwrap_or("");
            continue;
        }
        let Some(map) = line.strip_prefix("a=rtpmap:") else {
            continue;
        };
        let (pt, codec) = map.trim().split_once(' ').unwrap_or((map, ""));
        let Ok(pt) = pt.trim().parse::<u8>() else {
            continue; // str0m's parser has its say on those.
        };
        let codec = codec.trim().to_ascii_lowercase();
        let rate = codec.split('/').nth(1).unwrap_or("");
        let wrong_kind = match kind {
            "video" => rate != "90000",
            "audio" => rate == "90000",
            _ => false,
        };
        if wrong_kind {
            return Err(format!(
                "payload type {pt} ({codec}) is not a codec of an {kind} section"
            ));
        }
        match seen.iter().find(|(p, _)| *p == pt) {
            Some((_, other)) if *other != codec => {
                return Err(format!(
                    "payload type {pt} is {other} in one media section and {codec} in \
                     another; bundled sections share payload types (RFC 8843 7.5)"
                ))
            }
            Some(_) => {}
            None => seen.push((pt, codec)),
        }
    }
    Ok(())
}

/// The mids of an offer's media sections, in SDP order.
fn offered_mids(offer: &str) -> Vec<Mid> {
    offer
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(|m| Mid::from(m.trim()))
        .collect()
}

/// What a consumer on a negotiated section carries.
#[derive(Clone, Copy)]
enum Slot {
    Producer(u64),
    /// The loudest other speakers of the room, switched over time.
    Speakers,
}

fn media_kind(kind: Kind) -> MediaKind {
    match kind {
        Kind::Audio => MediaKind::Audio,
        Kind::Video => MediaKind::Video,
    }
}

/// Checks an SDP document a client sent before it is parsed: every line within
/// `limits.max_string_bytes`, at most `limits.media_sections_per_offer` media sections,
/// and no SSRC in two media sections.
fn check_sdp(caps: &Caps, what: &str, text: &str) -> Result<(), SfuError> {
    let mut sections = 0usize;
    // Each SSRC with the section it was first seen in (a map: an offer may hold many).
    let mut ssrcs: rustc_hash::FxHashMap<u32, usize> = Default::default();
    for (n, line) in text.lines().enumerate() {
        caps.string(&format!("line {} of the {what}", n + 1), line)?;
        let line = line.trim_end();
        if line.starts_with("m=") {
            sections += 1;
            if sections > caps.media_sections_per_offer {
                return Err(super::caps::over(
                    format!("the {what} has more media sections (m= lines) than that"),
                    caps.media_sections_per_offer,
                    "limits.media_sections_per_offer",
                ));
            }
            continue;
        }
        let numbers = if let Some(rest) = line.strip_prefix("a=ssrc:") {
            rest.split_whitespace()
                .next()
                .into_iter()
                .collect::<Vec<_>>()
        } else if let Some(rest) = line.strip_prefix("a=ssrc-group:") {
            rest.split_whitespace().skip(1).collect()
        } else {
            continue;
        };
        for ssrc in numbers.into_iter().filter_map(|n| n.parse::<u32>().ok()) {
            let first = *ssrcs.entry(ssrc).or_insert(sections);
            if first != sections {
                return Err(SfuError::BadRequest(format!(
                    "SSRC {ssrc} is used by two media sections of the {what} \
                     ({first} and {sections})"
                )));
            }
        }
    }
    Ok(())
}

impl Engine {
    fn new_sdp_transport(
        &mut self,
        now: Instant,
        peer: PeerId,
        direction: Direction,
    ) -> Result<u64, SfuError> {
        self.check_new_transport(peer)?;
        let id = self.fresh_id();
        let mut t = Transport::new(now, id, peer, direction, &self.cert, self.candidate)?;
        t.sdp = true;
        t.connected = true;
        Ok(self.add_transport(now, t))
    }

    fn transport_producers(&self, tid: u64) -> usize {
        self.producers
            .values()
            .filter(|p| p.transport == tid)
            .count()
    }

    fn transport_consumers(&self, tid: u64) -> usize {
        self.consumers
            .values()
            .filter(|c| c.transport == tid)
            .count()
    }

    /// Makes an SDP transport, accepts the client's offer on it and maps the offer's media
    /// sections; `offered` are the producers a subscriber's offer is matched with (WHEP).
    /// Returns the transport and the answer; the transport is gone again on error.
    fn accept_client_offer(
        &mut self,
        now: Instant,
        peer: PeerId,
        direction: Direction,
        offer_text: &str,
        offered: Vec<u64>,
    ) -> Result<(u64, String), SfuError> {
        check_sdp_fingerprints(offer_text)
            .map_err(|e| SfuError::BadRequest(format!("invalid SDP offer: {e}")))?;
        check_sdp(&self.caps, "SDP offer", offer_text)?;
        check_payload_types(offer_text)
            .map_err(|e| SfuError::BadRequest(format!("invalid SDP offer: {e}")))?;
        let offer = SdpOffer::from_sdp_string(offer_text)
            .map_err(|e| SfuError::BadRequest(format!("invalid SDP offer: {}", sdp_error(&e))))?;
        let id = self.new_sdp_transport(now, peer, direction)?;
        let t = self.transports.get_mut(&id).expect("just made");
        let wanted = offered.len();
        t.offered_producers = offered;
        let answer = match t.rtc.sdp_api().accept_offer(offer) {
            Ok(a) => a,
            Err(e) => {
                self.remove_transport(id);
                return Err(SfuError::BadRequest(format!(
                    "cannot accept the offer: {e}"
                )));
            }
        };
        // What the offer would make, checked before anything is made (at most: sections
        // with a codec corelay does not forward become nothing).
        let (sends, receives) = self.offered_directions(id, offer_text);
        let (producers, consumers) = match direction {
            Direction::Send => (sends, 0),
            Direction::Recv => (0, receives.min(wanted)),
            Direction::Both => (sends, receives),
        };
        let fits = self
            .check_new_producers(peer, id, producers)
            .and_then(|_| self.check_new_consumers(peer, consumers));
        if let Err(e) = fits {
            self.remove_transport(id);
            return Err(e);
        }
        self.map_offered_media(now, id, offer_text);
        if let Some(t) = self.transports.get_mut(&id) {
            t.offered_producers.clear();
        }
        Ok((id, answer.to_sdp_string()))
    }

    /// A publisher's offer: answers it; each media section the client sends with a codec
    /// corelay forwards becomes a producer. Returns (transport id, answer).
    pub fn publish_offer(
        &mut self,
        now: Instant,
        peer: PeerId,
        offer: &str,
    ) -> Result<(String, String), SfuError> {
        let (id, answer) =
            self.accept_client_offer(now, peer, Direction::Send, offer, Vec::new())?;
        self.drain(now, id);
        if self.transport_producers(id) == 0 {
            self.remove_transport(id);
            return Err(SfuError::BadRequest(
                "the offer sends no media corelay can forward (audio: opus; video: VP8, VP9, H264)"
                    .into(),
            ));
        }
        Ok((wire_id("t", id), answer))
    }

    /// A subscriber's own offer (WHEP): each media section it receives carries the next
    /// of `producers` of its kind. Returns (transport id, answer).
    pub fn subscribe_offer(
        &mut self,
        now: Instant,
        peer: PeerId,
        offer: &str,
        producers: &[String],
    ) -> Result<(String, String), SfuError> {
        let wanted = producers
            .iter()
            .map(|p| self.producer_in_room(peer, p))
            .collect::<Result<Vec<u64>, _>>()?;
        let (id, answer) = self.accept_client_offer(now, peer, Direction::Recv, offer, wanted)?;
        self.drain(now, id);
        Ok((wire_id("t", id), answer))
    }

    /// A server-side offer for a subscriber: one send-only media section per producer.
    /// Returns (transport id, offer); the client answers with [`Engine::subscribe_answer`].
    pub fn subscribe_create_offer(
        &mut self,
        now: Instant,
        peer: PeerId,
        producers: &[String],
    ) -> Result<(String, String), SfuError> {
        let wanted = producers
            .iter()
            .map(|p| self.producer_in_room(peer, p))
            .collect::<Result<Vec<u64>, _>>()?;
        if wanted.is_empty() {
            return Err(SfuError::BadRequest("nothing to subscribe to".into()));
        }
        self.check_new_consumers(peer, wanted.len())?;
        let kinds: Vec<(u64, Kind)> = wanted
            .iter()
            .map(|p| (*p, self.producers[p].kind))
            .collect();
        let id = self.new_sdp_transport(now, peer, Direction::Recv)?;
        let t = self.transports.get_mut(&id).expect("just made");
        let mut change = t.rtc.sdp_api();
        let mids: Vec<(Mid, u64)> = kinds
            .iter()
            .map(|(pid, kind)| {
                let stream = Some(wire_id("p", *pid));
                (
                    change.add_media(
                        media_kind(*kind),
                        MediaDirection::SendOnly,
                        stream,
                        None,
                        None,
                    ),
                    *pid,
                )
            })
            .collect();
        let Some((offer, pending)) = change.apply() else {
            self.remove_transport(id);
            return Err(SfuError::Internal("no offer to make".into()));
        };
        t.pending_offer = Some((pending, mids));
        self.drain(now, id);
        Ok((wire_id("t", id), offer.to_sdp_string()))
    }

    /// The subscriber's answer to [`Engine::subscribe_create_offer`]; media starts.
    pub fn subscribe_answer(
        &mut self,
        now: Instant,
        peer: PeerId,
        transport: &str,
        answer: &str,
    ) -> Result<(), SfuError> {
        let id = self.own_sdp_transport(peer, transport)?;
        check_sdp_fingerprints(answer)
            .map_err(|e| SfuError::BadRequest(format!("invalid SDP answer: {e}")))?;
        check_sdp(&self.caps, "SDP answer", answer)?;
        check_payload_types(answer)
            .map_err(|e| SfuError::BadRequest(format!("invalid SDP answer: {e}")))?;
        let answer = SdpAnswer::from_sdp_string(answer)
            .map_err(|e| SfuError::BadRequest(format!("invalid SDP answer: {}", sdp_error(&e))))?;
        let t = self.transports.get_mut(&id).expect("checked");
        let (pending, mids) = t
            .pending_offer
            .take()
            .ok_or_else(|| SfuError::BadRequest("no offer is waiting for an answer".into()))?;
        t.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| SfuError::BadRequest(format!("cannot accept the answer: {e}")))?;
        for (mid, pid) in mids {
            // A section the answer rejected (port 0, inactive) carries nothing.
            let accepted = self
                .transports
                .get(&id)
                .and_then(|t| t.rtc.media(mid))
                .is_some_and(|m| {
                    !m.disabled()
                        && matches!(
                            m.direction(),
                            MediaDirection::SendOnly | MediaDirection::SendRecv
                        )
                });
            if accepted {
                self.attach_consumer(id, mid, Slot::Producer(pid));
            }
        }
        self.drain(now, id);
        if self.transport_consumers(id) == 0 {
            self.remove_transport(id);
            return Err(SfuError::BadRequest(
                "the answer accepts none of the offered media".into(),
            ));
        }
        Ok(())
    }

    fn own_sdp_transport(&self, peer: PeerId, transport: &str) -> Result<u64, SfuError> {
        let id = parse_id("t", transport).ok_or_else(|| SfuError::UnknownId(transport.into()))?;
        match self.transports.get(&id) {
            Some(t) if t.peer == peer && t.sdp => Ok(id),
            _ => Err(SfuError::UnknownId(transport.into())),
        }
    }

    /// A trickled ICE candidate (`candidate:...`, with or without `a=`).
    pub fn add_ice_candidate(
        &mut self,
        now: Instant,
        peer: PeerId,
        transport: &str,
        candidate: &str,
    ) -> Result<(), SfuError> {
        let id = self.own_sdp_transport(peer, transport)?;
        let line = candidate.trim().trim_start_matches("a=");
        self.caps.string("the ICE candidate", line)?;
        if line.is_empty() {
            return Ok(()); // end of candidates
        }
        let c = Candidate::from_sdp_string(line)
            .map_err(|e| SfuError::BadRequest(format!("bad ICE candidate: {e}")))?;
        self.transports
            .get_mut(&id)
            .expect("checked")
            .rtc
            .add_remote_candidate(c);
        self.drain(now, id);
        Ok(())
    }

    /// Ends one transport and what it carries (WHIP/WHEP `DELETE`).
    pub fn close_transport(
        &mut self,
        now: Instant,
        peer: PeerId,
        transport: &str,
    ) -> Result<(), SfuError> {
        let id = self.own_sdp_transport(peer, transport)?;
        self.release_transport(now, id, false);
        Ok(())
    }

    /// The peer that owns an SDP transport, and its user id.
    pub fn transport_owner(&self, transport: &str) -> Option<(PeerId, String)> {
        let id = parse_id("t", transport)?;
        let t = self.transports.get(&id).filter(|t| t.sdp)?;
        let p = self.peers.get(&t.peer)?;
        Some((t.peer, p.user_id.clone()))
    }

    /// How many media sections of a just-negotiated offer the client sends on and
    /// receives on (`/connect` sends audio only).
    fn offered_directions(&self, tid: u64, offer: &str) -> (usize, usize) {
        let Some(t) = self.transports.get(&tid) else {
            return (0, 0);
        };
        let (mut sends, mut receives) = (0, 0);
        for mid in offered_mids(offer) {
            let Some(media) = t.rtc.media(mid) else {
                continue;
            };
            if t.direction == Direction::Both && media.kind() == MediaKind::Video {
                continue;
            }
            let direction = media.direction();
            if matches!(
                direction,
                MediaDirection::RecvOnly | MediaDirection::SendRecv
            ) {
                sends += 1;
            }
            if matches!(
                direction,
                MediaDirection::SendOnly | MediaDirection::SendRecv
            ) {
                receives += 1;
            }
        }
        (sends, receives)
    }

    /// Maps the media sections of a just-negotiated offer (their mids, in SDP order) to
    /// producers (a publisher's sections) or consumers (a subscriber's own offer).
    fn map_offered_media(&mut self, now: Instant, tid: u64, offer: &str) {
        for mid in offered_mids(offer) {
            let Some(media) = self.transports.get(&tid).and_then(|t| t.rtc.media(mid)) else {
                continue;
            };
            let (kind, direction) = (media.kind(), media.direction());
            self.map_media(now, tid, mid, kind, direction);
        }
    }

    fn map_media(
        &mut self,
        now: Instant,
        tid: u64,
        mid: Mid,
        kind: MediaKind,
        direction: MediaDirection,
    ) {
        let Some(t) = self.transports.get_mut(&tid) else {
            return;
        };
        let kind = if kind == MediaKind::Audio {
            Kind::Audio
        } else {
            Kind::Video
        };
        let client_sends = matches!(
            direction,
            MediaDirection::RecvOnly | MediaDirection::SendRecv
        );
        let client_receives = matches!(
            direction,
            MediaDirection::SendOnly | MediaDirection::SendRecv
        );
        let both = t.direction == Direction::Both;
        // `/connect` is audio only: its video sections are left unused.
        if both && kind == Kind::Video {
            return;
        }
        if client_sends && matches!(t.direction, Direction::Send | Direction::Both) {
            let Some(media) = t.rtc.media(mid) else {
                return;
            };
            let codec = media.remote_pts().iter().find_map(|pt| {
                let params = t.rtc.codec_config().find(|p| p.pt() == *pt)?;
                let codec = RouterCodec::from_str0m(params.spec().codec)?;
                Some((codec, params.pt(), params.resend()))
            });
            if let Some((codec, pt, rtx_pt)) = codec.filter(|c| c.0.kind == kind) {
                let spec = ProducerSpec {
                    codec,
                    pt: *pt,
                    rtx_pt: rtx_pt.map(|p| *p),
                    mid: mid.to_string(),
                    cname: media.cname().to_string(),
                    rids: Vec::new(),
                    ssrc: None,
                };
                let layers = vec![Layer::unnamed()];
                let peer = t.peer;
                self.add_producer(now, peer, tid, kind, spec, mid, layers);
            }
        }
        let Some(t) = self.transports.get_mut(&tid) else {
            return;
        };
        if client_receives && both {
            self.attach_consumer(tid, mid, Slot::Speakers);
        } else if client_receives && t.direction == Direction::Recv {
            let pos = t
                .offered_producers
                .iter()
                .position(|p| self.producers.get(p).is_some_and(|p| p.kind == kind));
            if let Some(pos) = pos {
                let pid = t.offered_producers.remove(pos);
                self.attach_consumer(tid, mid, Slot::Producer(pid));
            }
        }
    }

    /// A one-shot `/connect` offer: the client's audio becomes a producer of the room and
    /// each audio section it receives becomes a slot for the loudest other speakers.
    pub fn connect_offer(
        &mut self,
        now: Instant,
        peer: PeerId,
        offer: &str,
    ) -> Result<(String, String), SfuError> {
        let (id, answer) =
            self.accept_client_offer(now, peer, Direction::Both, offer, Vec::new())?;
        if self.transport_producers(id) + self.transport_consumers(id) == 0 {
            self.remove_transport(id);
            return Err(SfuError::BadRequest(
                "the offer has no opus audio section".into(),
            ));
        }
        self.enable_slots(now, peer);
        self.drain(now, id);
        Ok((wire_id("t", id), answer))
    }

    /// A consumer on a negotiated media section: the payload type the subscriber accepted
    /// for the producer's codec, and the SSRC str0m announced for the section.
    fn attach_consumer(&mut self, tid: u64, mid: Mid, what: Slot) {
        let (codec, pid) = match what {
            Slot::Producer(pid) => match self.producers.get(&pid) {
                Some(p) => (p.spec.codec, pid),
                None => return,
            },
            Slot::Speakers => (OPUS, 0),
        };
        let Some(t) = self.transports.get_mut(&tid) else {
            return;
        };
        let Some(media) = t.rtc.media(mid) else {
            return;
        };
        let pt = media.remote_pts().iter().copied().find(|pt| {
            t.rtc
                .codec_config()
                .find(|p| p.pt() == *pt)
                .is_some_and(|p| p.spec().codec == codec.str0m())
        });
        let Some(pt) = pt else {
            tracing::info!(transport = tid, "subscriber cannot receive {}", codec.mime);
            return;
        };
        let mut api = t.rtc.direct_api();
        let ssrc = match api.stream_tx_by_mid(mid, None) {
            Some(tx) => tx.ssrc(),
            None => {
                let ssrc = api.new_ssrc();
                api.declare_stream_tx(ssrc, None, mid, None);
                ssrc
            }
        };
        if codec.kind == Kind::Video {
            if let Some(tx) = api.stream_tx(&ssrc) {
                size_resend_cache(tx);
            }
        }
        let peer = t.peer;
        self.add_consumer(Consumer {
            peer,
            transport: tid,
            producer: pid,
            mid,
            ssrc,
            pt: *pt,
            paused: false,
            wait_keyframe: codec.kind == Kind::Video,
            rewriter: Rewriter::default(),
            slot: matches!(what, Slot::Speakers).then_some(None),
            media_noted: false,
        });
        // No keyframe request here: one asked for before this transport is up would arrive
        // before the subscriber can decode it; the forward path asks once it can.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(mid: u32, ssrc: u32) -> String {
        format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{mid}\r\na=ssrc:{ssrc} cname:c\r\n\
             a=ssrc:{ssrc} msid:s t\r\n"
        )
    }

    #[test]
    fn offers_over_the_caps_are_refused_before_they_are_parsed() {
        let caps = Caps {
            media_sections_per_offer: 2,
            max_string_bytes: 64,
            ..Caps::default()
        };
        let head = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
        let two = format!("{head}{}{}", section(0, 1), section(1, 2));
        check_sdp(&caps, "SDP offer", &two).unwrap();
        let three = format!("{two}{}", section(2, 3));
        let e = check_sdp(&caps, "SDP offer", &three).unwrap_err();
        assert!(
            e.to_string().contains("limits.media_sections_per_offer"),
            "{e}"
        );
        let long = format!(
            "{head}{}a=ssrc:1 cname:{}\r\n",
            section(0, 1),
            "x".repeat(60)
        );
        let e = check_sdp(&caps, "SDP offer", &long).unwrap_err();
        assert!(
            e.to_string().contains("line 9 of the SDP offer")
                && e.to_string().contains("limits.max_string_bytes"),
            "{e}"
        );
        let dup = format!("{head}{}{}", section(0, 7), section(1, 7));
        let e = check_sdp(&caps, "SDP offer", &dup).unwrap_err();
        assert!(e.to_string().contains("SSRC 7"), "{e}");
        let grouped = format!(
            "{head}{}a=ssrc-group:FID 1 9\r\n{}",
            section(0, 1),
            section(1, 9)
        );
        assert!(check_sdp(&caps, "SDP offer", &grouped).is_err());
    }

    const FP: &str = "AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:\
                      AB:AB:AB:AB:AB:AB:AB:AB";

    fn offer(sections: &[(&str, &str, u8, &str)]) -> String {
        let mids: Vec<String> = (0..sections.len()).map(|m| m.to_string()).collect();
        let mut s = format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 {FP}\r\n\
             a=group:BUNDLE {}\r\n",
            mids.join(" ")
        );
        for (mid, (kind, dir, pt, codec)) in sections.iter().enumerate() {
            s += &format!(
                "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n\
                 a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=setup:actpass\r\na=mid:{mid}\r\n\
                 a={dir}\r\na=rtcp-mux\r\na=rtpmap:{pt} {codec}\r\n"
            );
        }
        s
    }

    /// Found by the `sdp` fuzz target: one payload type for two codecs in two sections of
    /// different directions, or a video codec in an audio section, made str0m panic
    /// ("Pt locked multiple times") inside `accept_offer`. Each is refused now, for that
    /// client, with a reason; the engine is left as it was.
    #[test]
    fn contradicting_payload_types_are_refused_before_str0m_sees_them() {
        let now = Instant::now();
        let mut e = Engine::new(0, "127.0.0.1:40000".parse().unwrap()).unwrap();
        e.join(now, 1, "room", "u1", "U1", None).unwrap();
        for (sections, says) in [
            (
                vec![
                    ("video", "sendonly", 96, "VP8/90000"),
                    ("video", "recvonly", 96, "H264/90000"),
                ],
                "payload type 96 is vp8/90000 in one media section and h264/90000",
            ),
            (
                vec![
                    ("audio", "sendonly", 96, "opus/48000/2"),
                    ("video", "recvonly", 96, "VP8/90000"),
                ],
                "payload type 96 is opus/48000/2",
            ),
            (
                vec![
                    ("audio", "sendonly", 97, "H264/90000"),
                    ("video", "recvonly", 97, "H264/90000"),
                ],
                "payload type 97 (h264/90000) is not a codec of an audio section",
            ),
        ] {
            let sdp = offer(&sections);
            for result in [
                e.publish_offer(now, 1, &sdp).map(|_| ()),
                e.connect_offer(now, 1, &sdp).map(|_| ()),
            ] {
                let err = result.unwrap_err().to_string();
                assert!(err.contains(says), "{err}");
            }
            assert_eq!(e.transports(), 0);
        }
        // One payload type for one codec in several sections is fine.
        let ok = offer(&[
            ("video", "sendonly", 96, "VP8/90000"),
            ("video", "recvonly", 96, "VP8/90000"),
        ]);
        let published = e.publish_offer(now, 1, &ok);
        assert!(published.is_ok(), "{published:?}");
    }
}
