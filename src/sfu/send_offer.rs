//! A mediasoup-style send transport takes each producer's own numbering.
//!
//! mediasoup-client sends the payload types and header-extension ids of the browser's peer
//! connection, and those differ between browsers and between peer connections of one
//! browser (Chromium numbers extensions in the order the connection first uses them). str0m
//! fixes its numbering when an `Rtc` is built and changes it only through SDP negotiation.
//! So every `produce` is turned back into the SDP offer the browser itself made (one
//! send-only media section per producer, in order) and accepted on the transport's `Rtc`:
//! str0m then receives with the client's numbers. Consumers keep the router's numbering.
//!
//! One transport has one numbering (one browser peer connection): a producer that gives a
//! number another meaning than an earlier producer of the same transport is refused,
//! naming both.

use std::fmt::Write as _;

use serde_json::Value;

use super::ortc::{
    CodecParameters, Kind, ProducerSpec, RtpParameters, EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL,
    EXT_MID, EXT_RID, EXT_RRID, EXT_TWCC, EXT_VIDEO_ORIENTATION,
};

/// The header extensions corelay reads from producers; others are not negotiated (str0m
/// would not parse them anyway).
const KNOWN_EXTS: [&str; 7] = [
    EXT_AUDIO_LEVEL,
    EXT_ABS_SEND_TIME,
    EXT_TWCC,
    EXT_MID,
    EXT_RID,
    EXT_RRID,
    EXT_VIDEO_ORIENTATION,
];

/// Extension ids str0m can map (one-byte form 1-14, two-byte form up to 16).
const MAX_EXT_ID: u8 = 16;

/// A password for the client's ICE credentials in the synthesized offer. mediasoup-client
/// never sends its ICE parameters and an ICE-lite server never checks the remote password,
/// but str0m compares credentials between offers, so it must stay the same.
pub const REMOTE_ICE_PASSWORD: &str = "corelayremotepasswordunused";
/// The client's ufrag until its first STUN request tells the real one.
pub const REMOTE_ICE_UFRAG_UNKNOWN: &str = "corelayunknown";

/// One producer's media section, as its client numbers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendSection {
    /// The section's mid.
    pub mid: String,
    /// Audio or video.
    pub kind: Kind,
    /// SDP encoding name (`opus`, `VP8`, `VP9`, `H264`).
    pub name: &'static str,
    /// RTP clock rate in Hz.
    pub clock_rate: u32,
    /// Audio channels.
    pub channels: Option<u8>,
    /// The client's payload type for the codec.
    pub pt: u8,
    /// The client's RTX payload type, if it repairs with RTX.
    pub rtx_pt: Option<u8>,
    /// `k=v` pairs of the codec's format parameters.
    pub fmtp: Vec<String>,
    /// `rtcp-fb` values (`nack`, `nack pli`, `transport-cc` ...).
    pub feedback: Vec<String>,
    /// (id, uri) of the header extensions corelay reads.
    pub exts: Vec<(u8, &'static str)>,
    /// Declared (ssrc, rtx ssrc) of a single stream.
    pub ssrc: Option<(u32, Option<u32>)>,
    /// Simulcast rids, lowest first.
    pub rids: Vec<String>,
    /// The client's RTCP CNAME.
    pub cname: String,
}

/// Characters that may stand in an SDP token we write (no space, no line break).
fn is_token(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+/=".contains(c) || extra.contains(&c))
}

fn fmtp_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(u8::from(*b).to_string()),
        _ => None,
    }
}

fn media_codec(p: &RtpParameters) -> Option<&CodecParameters> {
    p.codecs
        .iter()
        .find(|c| !c.mime_type.eq_ignore_ascii_case("video/rtx"))
}

impl SendSection {
    /// The section of a checked producer; refuses what cannot be written as SDP.
    pub fn new(kind: Kind, spec: &ProducerSpec, p: &RtpParameters) -> Result<SendSection, String> {
        let codec = media_codec(p).ok_or("rtpParameters.codecs has no media codec")?;
        if !is_token(&spec.mid, &[]) || spec.mid.len() > 16 {
            return Err("rtpParameters.mid must be 1-16 letters, digits, '-' or '_'".into());
        }
        for rid in &spec.rids {
            if !is_token(rid, &[]) || rid.len() > 16 {
                return Err(format!(
                    "rid {rid:?} must be 1-16 letters, digits, '-' or '_'"
                ));
            }
        }
        if !is_token(&spec.cname, &['{', '}', ':', '@']) {
            return Err("rtcp.cname must be printable, without spaces".into());
        }
        let mut fmtp = Vec::new();
        for (k, v) in &codec.parameters {
            let Some(v) = fmtp_value(v) else { continue };
            if !is_token(k, &[]) || !is_token(&v, &[':', ',']) {
                return Err(format!(
                    "codec parameter {k:?} has a value corelay cannot use"
                ));
            }
            fmtp.push(format!("{k}={v}"));
        }
        let mut feedback = Vec::new();
        for fb in &codec.rtcp_feedback {
            let line = if fb.parameter.is_empty() {
                fb.kind.clone()
            } else {
                format!("{} {}", fb.kind, fb.parameter)
            };
            if !is_token(&fb.kind, &[])
                || !(fb.parameter.is_empty() || is_token(&fb.parameter, &[]))
            {
                return Err(format!("rtcpFeedback {line:?} is not a feedback type"));
            }
            feedback.push(line);
        }
        let mut exts: Vec<(u8, &'static str)> = Vec::new();
        for e in &p.header_extensions {
            let Some(uri) = KNOWN_EXTS.iter().copied().find(|k| *k == e.uri) else {
                continue;
            };
            if e.id == 0 || e.id > MAX_EXT_ID {
                return Err(format!(
                    "header extension {uri} uses id {}; corelay receives ids 1-{MAX_EXT_ID}",
                    e.id
                ));
            }
            if let Some((_, other)) = exts.iter().find(|(id, _)| *id == e.id) {
                return Err(format!(
                    "header extension id {} is given to both {other} and {uri}",
                    e.id
                ));
            }
            if exts.iter().any(|(_, u)| *u == uri) {
                return Err(format!("header extension {uri} is listed twice"));
            }
            exts.push((e.id, uri));
        }
        if spec.rtx_pt == Some(spec.pt) {
            return Err(format!(
                "RTX and {} share payload type {}",
                spec.codec.mime, spec.pt
            ));
        }
        let name = spec
            .codec
            .mime
            .split_once('/')
            .map(|x| x.1)
            .unwrap_or(spec.codec.mime);
        Ok(SendSection {
            mid: spec.mid.clone(),
            kind,
            name,
            clock_rate: spec.codec.clock_rate,
            channels: (kind == Kind::Audio).then(|| codec.channels.unwrap_or(2)),
            pt: spec.pt,
            rtx_pt: spec.rtx_pt,
            fmtp,
            feedback,
            exts,
            ssrc: spec.ssrc,
            rids: spec.rids.clone(),
            cname: spec.cname.clone(),
        })
    }

    /// The payload types of this section, each with what it carries.
    fn payload_types(&self) -> impl Iterator<Item = (u8, String)> + '_ {
        std::iter::once((self.pt, self.name.to_string())).chain(
            self.rtx_pt
                .map(|rtx| (rtx, format!("RTX of {}", self.name))),
        )
    }
}

/// Whether `new` numbers things as every section already on the transport does.
pub fn check_numbering(existing: &[SendSection], new: &SendSection) -> Result<(), String> {
    for s in existing.iter().filter(|s| s.mid != new.mid) {
        let theirs = format!("the producer of mid {} on this transport", s.mid);
        for &(id, uri) in &new.exts {
            for &(other_id, other_uri) in &s.exts {
                if uri == other_uri && id != other_id {
                    return Err(format!(
                        "header extension {uri} uses id {id} here but id {other_id} in {theirs}; \
                         one transport has one numbering"
                    ));
                }
                if id == other_id && uri != other_uri {
                    return Err(format!(
                        "header extension id {id} means {uri} here but {other_uri} in {theirs}; \
                         one transport has one numbering"
                    ));
                }
            }
        }
        for (pt, what) in new.payload_types() {
            for (other_pt, other_what) in s.payload_types() {
                if pt == other_pt && what != other_what {
                    return Err(format!(
                        "payload type {pt} is {what} here but {other_what} in {theirs}; \
                         one transport has one numbering"
                    ));
                }
                if what == other_what && pt != other_pt {
                    return Err(format!(
                        "{what} uses payload type {pt} here but {other_pt} in {theirs}; \
                         one transport has one numbering"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The offer the client's browser made for these sections: ICE-lite answerer's view of a
/// DTLS client that only sends. `fingerprint` is `"sha-256 AB:CD:..."`.
pub fn offer(sections: &[SendSection], ice_ufrag: &str, fingerprint: &str) -> String {
    let mut sdp = String::with_capacity(1024 * sections.len().max(1));
    let mids: Vec<&str> = sections.iter().map(|s| s.mid.as_str()).collect();
    let _ = write!(
        sdp,
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\n",
        mids.join(" ")
    );
    for s in sections {
        let kind = match s.kind {
            Kind::Audio => "audio",
            Kind::Video => "video",
        };
        let pts: Vec<String> = s.payload_types().map(|(pt, _)| pt.to_string()).collect();
        let _ = write!(
            sdp,
            "m={kind} 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:{ice_ufrag}\r\na=ice-pwd:{REMOTE_ICE_PASSWORD}\r\n\
             a=fingerprint:{fingerprint}\r\na=setup:active\r\na=mid:{}\r\n",
            pts.join(" "),
            s.mid
        );
        for (id, uri) in &s.exts {
            let _ = write!(sdp, "a=extmap:{id} {uri}\r\n");
        }
        sdp.push_str("a=sendonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\n");
        let _ = write!(sdp, "a=rtpmap:{} {}/{}", s.pt, s.name, s.clock_rate);
        if let Some(ch) = s.channels {
            let _ = write!(sdp, "/{ch}");
        }
        sdp.push_str("\r\n");
        for fb in &s.feedback {
            let _ = write!(sdp, "a=rtcp-fb:{} {fb}\r\n", s.pt);
        }
        if !s.fmtp.is_empty() {
            let _ = write!(sdp, "a=fmtp:{} {}\r\n", s.pt, s.fmtp.join(";"));
        }
        if let Some(rtx) = s.rtx_pt {
            let _ = write!(
                sdp,
                "a=rtpmap:{rtx} rtx/{}\r\na=fmtp:{rtx} apt={}\r\n",
                s.clock_rate, s.pt
            );
        }
        if s.rids.is_empty() {
            if let Some((ssrc, rtx)) = s.ssrc {
                if let Some(rtx) = rtx {
                    let _ = write!(sdp, "a=ssrc-group:FID {ssrc} {rtx}\r\n");
                }
                for x in std::iter::once(ssrc).chain(rtx) {
                    let _ = write!(sdp, "a=ssrc:{x} cname:{}\r\n", s.cname);
                }
            }
        } else {
            for rid in &s.rids {
                let _ = write!(sdp, "a=rid:{rid} send\r\n");
            }
            let _ = write!(sdp, "a=simulcast:send {}\r\n", s.rids.join(";"));
        }
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::ortc::check_producer;
    use serde_json::json;

    fn section(kind: Kind, v: Value) -> Result<SendSection, String> {
        let p: RtpParameters = serde_json::from_value(v).unwrap();
        let spec = check_producer(kind, &p)?;
        SendSection::new(kind, &spec, &p)
    }

    fn firefox_video() -> SendSection {
        section(
            Kind::Video,
            json!({
                "mid": "1",
                "codecs": [
                    {"mimeType": "video/VP8", "payloadType": 120, "clockRate": 90000,
                     "parameters": {"max-fs": 12288, "max-fr": 60},
                     "rtcpFeedback": [{"type": "nack"}, {"type": "nack", "parameter": "pli"},
                                      {"type": "transport-cc"}]},
                    {"mimeType": "video/rtx", "payloadType": 124, "clockRate": 90000, "parameters": {"apt": 120}}
                ],
                "headerExtensions": [{"uri": EXT_MID, "id": 3}, {"uri": EXT_TWCC, "id": 7},
                                     {"uri": "urn:ietf:params:rtp-hdrext:toffset", "id": 5}],
                "encodings": [{"ssrc": 11, "rtx": {"ssrc": 12}}],
                "rtcp": {"cname": "{ab-cd}"}
            }),
        )
        .unwrap()
    }

    #[test]
    fn the_offer_says_what_the_client_sends_in_its_own_numbers() {
        let v = firefox_video();
        assert_eq!(
            v.exts,
            vec![(3, EXT_MID), (7, EXT_TWCC)],
            "unknown extensions left out"
        );
        let sdp = offer(&[v], "ufrag", "sha-256 AB:CD");
        for line in [
            "a=group:BUNDLE 1",
            "m=video 9 UDP/TLS/RTP/SAVPF 120 124",
            "a=extmap:7 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "a=rtpmap:120 VP8/90000",
            "a=rtcp-fb:120 nack pli",
            "a=fmtp:120 max-fr=60;max-fs=12288",
            "a=fmtp:124 apt=120",
            "a=ssrc-group:FID 11 12",
            "a=ssrc:12 cname:{ab-cd}",
            "a=sendonly",
            "a=setup:active",
        ] {
            assert!(
                sdp.contains(&format!("{line}\r\n")),
                "{line} missing in\n{sdp}"
            );
        }
        str0m::change::SdpOffer::from_sdp_string(&sdp).expect("str0m parses the offer");
    }

    #[test]
    fn simulcast_sections_list_their_rids() {
        let s = section(
            Kind::Video,
            json!({
                "mid": "0",
                "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
                "headerExtensions": [{"uri": EXT_RID, "id": 10}],
                "encodings": [{"rid": "r0"}, {"rid": "r1"}]
            }),
        )
        .unwrap();
        let sdp = offer(&[s], "u", "sha-256 AB");
        assert!(sdp.contains("a=rid:r0 send\r\na=rid:r1 send\r\na=simulcast:send r0;r1\r\n"));
    }

    #[test]
    fn a_second_numbering_on_one_transport_is_refused_naming_both() {
        let video = firefox_video();
        let audio = |twcc: u8, pt: u8| {
            section(
                Kind::Audio,
                json!({
                    "mid": "0",
                    "codecs": [{"mimeType": "audio/opus", "payloadType": pt, "clockRate": 48000, "channels": 2}],
                    "headerExtensions": [{"uri": EXT_TWCC, "id": twcc}],
                    "encodings": [{"ssrc": 1}]
                }),
            )
            .unwrap()
        };
        check_numbering(std::slice::from_ref(&video), &audio(7, 109)).unwrap();
        let e = check_numbering(std::slice::from_ref(&video), &audio(4, 109)).unwrap_err();
        assert!(
            e.contains("uses id 4 here but id 7 in the producer of mid 1"),
            "{e}"
        );
        let e = check_numbering(std::slice::from_ref(&video), &audio(3, 109)).unwrap_err();
        assert!(e.contains("id 3 means"), "{e}");
        let e = check_numbering(std::slice::from_ref(&video), &audio(7, 124)).unwrap_err();
        assert!(
            e.contains("payload type 124 is opus here but RTX of VP8"),
            "{e}"
        );
    }

    #[test]
    fn text_that_would_break_the_offer_is_refused() {
        let bad = section(
            Kind::Audio,
            json!({
                "mid": "0",
                "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000,
                            "parameters": {"useinbandfec": "1\r\na=inject"}}],
                "encodings": [{"ssrc": 1}]
            }),
        );
        assert!(bad.unwrap_err().contains("useinbandfec"));
        let bad = section(
            Kind::Audio,
            json!({
                "mid": "0",
                "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000}],
                "encodings": [{"ssrc": 1}],
                "rtcp": {"cname": "a b"}
            }),
        );
        assert!(bad.unwrap_err().contains("cname"));
        let bad = section(
            Kind::Audio,
            json!({
                "mid": "0",
                "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000}],
                "headerExtensions": [{"uri": EXT_MID, "id": 40}],
                "encodings": [{"ssrc": 1}]
            }),
        );
        assert!(bad.unwrap_err().contains("ids 1-16"));
    }
}
