//! RTP capabilities and parameters in mediasoup's JSON shapes, which mediasoup-client
//! expects, and the checks that keep them consistent with what str0m can receive.
//!
//! The router advertises str0m's default numbering (Opus 111, VP8 96/97, VP9 98/99, H264
//! 127/121; extension ids 1-4, 10, 11, 13), which is what consumers receive with. A
//! producer sends with its own browser's numbering, which differs between browsers and
//! even between peer connections of one browser: `send_offer` negotiates that numbering
//! into the send transport, so here only the codec itself is checked.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Caps, SfuError};

/// What a track carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Audio (Opus).
    Audio,
    /// Video (VP8, VP9, H264).
    Video,
}

impl RouterCodec {
    /// The same codec in str0m's terms.
    pub fn str0m(&self) -> str0m::format::Codec {
        use str0m::format::Codec;
        match self.mime {
            "audio/opus" => Codec::Opus,
            "video/VP8" => Codec::Vp8,
            "video/VP9" => Codec::Vp9,
            _ => Codec::H264,
        }
    }

    /// The router codec for a str0m codec, if corelay forwards it.
    pub fn from_str0m(codec: str0m::format::Codec) -> Option<RouterCodec> {
        ROUTER_CODECS.iter().copied().find(|c| c.str0m() == codec)
    }
}

impl Kind {
    /// `"audio"` or `"video"`, as mediasoup and SDP spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }
}

/// A codec the router forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterCodec {
    /// Audio or video.
    pub kind: Kind,
    /// The MIME type, as mediasoup spells it (`audio/opus`, `video/VP8` ...).
    pub mime: &'static str,
    /// RTP clock rate in Hz.
    pub clock_rate: u32,
    /// The payload type consumers receive it with (str0m's default numbering).
    pub pt: u8,
    /// The RTX payload type consumers are repaired with (video only).
    pub rtx_pt: Option<u8>,
}

/// Opus, 48 kHz stereo.
pub const OPUS: RouterCodec = RouterCodec {
    kind: Kind::Audio,
    mime: "audio/opus",
    clock_rate: 48_000,
    pt: 111,
    rtx_pt: None,
};
/// VP8.
pub const VP8: RouterCodec = RouterCodec {
    kind: Kind::Video,
    mime: "video/VP8",
    clock_rate: 90_000,
    pt: 96,
    rtx_pt: Some(97),
};
/// VP9.
pub const VP9: RouterCodec = RouterCodec {
    kind: Kind::Video,
    mime: "video/VP9",
    clock_rate: 90_000,
    pt: 98,
    rtx_pt: Some(99),
};
/// H264 (profile-level-id 42001f, packetization mode 1).
pub const H264: RouterCodec = RouterCodec {
    kind: Kind::Video,
    mime: "video/H264",
    clock_rate: 90_000,
    pt: 127,
    rtx_pt: Some(121),
};

/// In preference order: mediasoup-client sends with the first one the browser supports.
pub const ROUTER_CODECS: [RouterCodec; 4] = [OPUS, VP8, VP9, H264];

// Header extensions the router speaks (their ids and kinds are in `ROUTER_EXTS`).

/// RFC 6464 client-to-mixer audio level.
pub const EXT_AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// abs-send-time, for receive-side bandwidth estimation.
pub const EXT_ABS_SEND_TIME: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
/// Transport-wide congestion control sequence numbers.
pub const EXT_TWCC: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
/// The media section's mid (RFC 8843).
pub const EXT_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// The simulcast stream's rid (RFC 8852).
pub const EXT_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
/// The rid of the stream an RTX stream repairs (RFC 8852).
pub const EXT_RRID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
/// 3GPP coordination of video orientation.
pub const EXT_VIDEO_ORIENTATION: &str = "urn:3gpp:video-orientation";

struct RouterExt {
    uri: &'static str,
    id: u8,
    audio: bool,
    video: bool,
    /// Only the server receives it (simulcast ids).
    recv_only: bool,
}

const ROUTER_EXTS: [RouterExt; 7] = [
    RouterExt {
        uri: EXT_AUDIO_LEVEL,
        id: 1,
        audio: true,
        video: false,
        recv_only: false,
    },
    RouterExt {
        uri: EXT_ABS_SEND_TIME,
        id: 2,
        audio: true,
        video: true,
        recv_only: false,
    },
    RouterExt {
        uri: EXT_TWCC,
        id: 3,
        audio: true,
        video: true,
        recv_only: false,
    },
    RouterExt {
        uri: EXT_MID,
        id: 4,
        audio: true,
        video: true,
        recv_only: false,
    },
    RouterExt {
        uri: EXT_RID,
        id: 10,
        audio: false,
        video: true,
        recv_only: true,
    },
    RouterExt {
        uri: EXT_RRID,
        id: 11,
        audio: false,
        video: true,
        recv_only: true,
    },
    RouterExt {
        uri: EXT_VIDEO_ORIENTATION,
        id: 13,
        audio: false,
        video: true,
        recv_only: false,
    },
];

fn codec_parameters(c: &RouterCodec) -> Value {
    match c.mime {
        "audio/opus" => json!({"minptime": 10, "useinbandfec": 1}),
        "video/VP9" => json!({"profile-id": 0}),
        "video/H264" => json!({
            "packetization-mode": 1,
            "profile-level-id": "42001f",
            "level-asymmetry-allowed": 1
        }),
        _ => json!({}),
    }
}

fn feedback(kind: Kind) -> Value {
    match kind {
        Kind::Audio => json!([{"type": "transport-cc", "parameter": ""}]),
        Kind::Video => json!([
            {"type": "nack", "parameter": ""},
            {"type": "nack", "parameter": "pli"},
            {"type": "ccm", "parameter": "fir"},
            {"type": "transport-cc", "parameter": ""}
        ]),
    }
}

/// The router's RTP capabilities, as `join-room` returns them.
pub fn router_capabilities() -> Value {
    let mut codecs = Vec::new();
    for c in &ROUTER_CODECS {
        let mut codec = json!({
            "kind": c.kind.as_str(),
            "mimeType": c.mime,
            "clockRate": c.clock_rate,
            "preferredPayloadType": c.pt,
            "parameters": codec_parameters(c),
            "rtcpFeedback": feedback(c.kind),
        });
        if c.kind == Kind::Audio {
            codec["channels"] = json!(2);
        }
        codecs.push(codec);
        if let Some(rtx) = c.rtx_pt {
            codecs.push(json!({
                "kind": "video",
                "mimeType": "video/rtx",
                "clockRate": 90000,
                "preferredPayloadType": rtx,
                "parameters": {"apt": c.pt},
                "rtcpFeedback": [],
            }));
        }
    }
    let mut exts = Vec::new();
    for e in &ROUTER_EXTS {
        for (kind, on) in [("audio", e.audio), ("video", e.video)] {
            if on {
                exts.push(json!({
                    "kind": kind,
                    "uri": e.uri,
                    "preferredId": e.id,
                    "preferredEncrypt": false,
                    "direction": if e.recv_only { "recvonly" } else { "sendrecv" },
                }));
            }
        }
    }
    json!({"codecs": codecs, "headerExtensions": exts})
}

// ---- parameters a client sends (only the fields corelay uses; others are ignored) ----

/// One entry of `rtpParameters.codecs`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodecParameters {
    /// `mimeType`, e.g. `video/VP8` or `video/rtx`.
    pub mime_type: String,
    /// The payload type the client sends it with.
    pub payload_type: u8,
    /// RTP clock rate in Hz.
    pub clock_rate: u32,
    /// Audio channels.
    #[serde(default)]
    pub channels: Option<u8>,
    /// Format parameters (`apt` for RTX, `profile-level-id` ...).
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
    /// RTCP feedback the client supports for it.
    #[serde(default)]
    pub rtcp_feedback: Vec<RtcpFeedback>,
}

/// One entry of a codec's `rtcpFeedback`.
#[derive(Clone, Debug, Deserialize)]
pub struct RtcpFeedback {
    /// `type`: `nack`, `ccm`, `transport-cc` ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `parameter`: `pli`, `fir` ..., empty for none.
    #[serde(default)]
    pub parameter: String,
}

/// One entry of `rtpParameters.headerExtensions`.
#[derive(Clone, Debug, Deserialize)]
pub struct HeaderExtensionParameters {
    /// The extension's URI.
    pub uri: String,
    /// The id the client sends it with.
    pub id: u8,
}

/// An encoding's `rtx`.
#[derive(Clone, Debug, Deserialize)]
pub struct RtxParameters {
    /// The RTX stream's SSRC.
    pub ssrc: u32,
}

/// One entry of `rtpParameters.encodings`.
#[derive(Clone, Debug, Deserialize)]
pub struct Encoding {
    /// The stream's SSRC, if declared.
    #[serde(default)]
    pub ssrc: Option<u32>,
    /// The simulcast stream's rid.
    #[serde(default)]
    pub rid: Option<String>,
    /// Its RTX stream.
    #[serde(default)]
    pub rtx: Option<RtxParameters>,
}

/// `rtpParameters.rtcp`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RtcpParameters {
    /// The RTCP CNAME.
    #[serde(default)]
    pub cname: Option<String>,
}

/// A producer's `rtpParameters`, as mediasoup-client sends them with `produce`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RtpParameters {
    /// The media section's mid.
    #[serde(default)]
    pub mid: Option<String>,
    /// The codecs, media codec first, with their RTX entries.
    pub codecs: Vec<CodecParameters>,
    /// `headerExtensions` in the client's numbering.
    #[serde(default)]
    pub header_extensions: Vec<HeaderExtensionParameters>,
    /// One per stream: a single stream, or simulcast layers lowest first.
    #[serde(default)]
    pub encodings: Vec<Encoding>,
    /// RTCP parameters.
    #[serde(default)]
    pub rtcp: RtcpParameters,
}

/// Checks what a `produce` request gives against the caps (counts, string lengths) and
/// the rules every entry must follow whether corelay reads it or not: header extension
/// ids valid under RFC 8285 and each used once, each URI once, and no SSRC declared twice.
pub fn check_limits(p: &RtpParameters, caps: &Caps) -> Result<(), SfuError> {
    let bad = |m: String| Err(SfuError::BadRequest(m));
    caps.count(
        "rtpParameters.codecs",
        p.codecs.len(),
        caps.codecs_per_request,
        "limits.codecs_per_request",
    )?;
    for c in &p.codecs {
        caps.string("rtpParameters.codecs[].mimeType", &c.mime_type)?;
        caps.count(
            "rtpParameters.codecs[].rtcpFeedback",
            c.rtcp_feedback.len(),
            caps.codecs_per_request,
            "limits.codecs_per_request",
        )?;
        for fb in &c.rtcp_feedback {
            caps.string("rtpParameters.codecs[].rtcpFeedback[].type", &fb.kind)?;
            caps.string(
                "rtpParameters.codecs[].rtcpFeedback[].parameter",
                &fb.parameter,
            )?;
        }
        // The format parameters become one `a=fmtp` line.
        let fmtp = Value::Object(c.parameters.clone()).to_string();
        caps.string("rtpParameters.codecs[].parameters", &fmtp)?;
    }
    caps.count(
        "rtpParameters.headerExtensions",
        p.header_extensions.len(),
        caps.header_extensions_per_request,
        "limits.header_extensions_per_request",
    )?;
    for (i, e) in p.header_extensions.iter().enumerate() {
        caps.string("rtpParameters.headerExtensions[].uri", &e.uri)?;
        // RFC 8285: 1-14 in the one-byte form (15 is reserved there), 1-255 in the
        // two-byte form; 0 is padding, never an id.
        if e.id == 0 {
            return bad(format!(
                "header extension {} has id 0; ids are 1-14 (one-byte form) or 1-255 \
                 (two-byte form), RFC 8285",
                e.uri
            ));
        }
        if let Some(o) = p.header_extensions[..i].iter().find(|o| o.id == e.id) {
            return bad(format!(
                "header extension id {} is given to both {} and {}",
                e.id, o.uri, e.uri
            ));
        }
        if p.header_extensions[..i].iter().any(|o| o.uri == e.uri) {
            return bad(format!("header extension {} is listed twice", e.uri));
        }
    }
    caps.count(
        "rtpParameters.encodings",
        p.encodings.len(),
        caps.encodings_per_request,
        "limits.encodings_per_request",
    )?;
    let mut ssrcs: Vec<u32> = Vec::new();
    for e in &p.encodings {
        if let Some(rid) = &e.rid {
            caps.string("rtpParameters.encodings[].rid", rid)?;
        }
        for ssrc in e.ssrc.into_iter().chain(e.rtx.as_ref().map(|r| r.ssrc)) {
            if ssrcs.contains(&ssrc) {
                return bad(format!(
                    "SSRC {ssrc} is declared twice in rtpParameters.encodings"
                ));
            }
            ssrcs.push(ssrc);
        }
    }
    if let Some(mid) = &p.mid {
        caps.string("rtpParameters.mid", mid)?;
    }
    if let Some(cname) = &p.rtcp.cname {
        caps.string("rtpParameters.rtcp.cname", cname)?;
    }
    Ok(())
}

/// Every SSRC the encodings declare (media and RTX).
pub fn declared_ssrcs(p: &RtpParameters) -> impl Iterator<Item = u32> + '_ {
    p.encodings
        .iter()
        .flat_map(|e| e.ssrc.into_iter().chain(e.rtx.as_ref().map(|r| r.ssrc)))
}

/// What a producer sends, checked against the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerSpec {
    /// The router codec it sends.
    pub codec: RouterCodec,
    /// The payload type the client sends the codec with (its own numbering).
    pub pt: u8,
    /// The client's RTX payload type for the codec, if it repairs with RTX.
    pub rtx_pt: Option<u8>,
    /// The media section's mid.
    pub mid: String,
    /// The RTCP CNAME consumers announce.
    pub cname: String,
    /// Simulcast rids, lowest first; empty for a single stream.
    pub rids: Vec<String>,
    /// Declared (ssrc, rtx ssrc) of a single-stream producer.
    pub ssrc: Option<(u32, Option<u32>)>,
}

/// Checks a producer's parameters against the router; the error says what to change.
pub fn check_producer(kind: Kind, p: &RtpParameters) -> Result<ProducerSpec, String> {
    let mid = p
        .mid
        .clone()
        .filter(|m| !m.is_empty() && m.len() <= 16)
        .ok_or("rtpParameters.mid is required (1-16 characters)")?;
    let media = p
        .codecs
        .iter()
        .find(|c| !c.mime_type.eq_ignore_ascii_case("video/rtx"))
        .ok_or("rtpParameters.codecs has no media codec")?;
    let codec = ROUTER_CODECS
        .iter()
        .find(|r| r.mime.eq_ignore_ascii_case(&media.mime_type) && r.clock_rate == media.clock_rate)
        .copied()
        .ok_or_else(|| {
            format!(
                "codec {} at {} Hz is not supported (router codecs: opus, VP8, VP9, H264)",
                media.mime_type, media.clock_rate
            )
        })?;
    if codec.kind != kind {
        return Err(format!(
            "codec {} does not carry {}",
            codec.mime,
            kind.as_str()
        ));
    }
    if codec.mime == "video/H264" {
        let pm = media
            .parameters
            .get("packetization-mode")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if pm != 1 {
            return Err("H264 needs packetization-mode 1".into());
        }
    }
    let rtx_pt = p
        .codecs
        .iter()
        .filter(|c| c.mime_type.eq_ignore_ascii_case("video/rtx"))
        .find(|c| {
            c.parameters.get("apt").and_then(Value::as_u64) == Some(media.payload_type as u64)
        })
        .map(|c| c.payload_type);
    // The router repairs only video with RTX; an RTX entry for anything else is unused.
    let rtx_pt = rtx_pt.filter(|_| codec.rtx_pt.is_some());
    if p.encodings.is_empty() {
        return Err("rtpParameters.encodings is empty".into());
    }
    let rids: Vec<String> = p.encodings.iter().filter_map(|e| e.rid.clone()).collect();
    let ssrc = if rids.is_empty() {
        let e = &p.encodings[0];
        e.ssrc.map(|s| (s, e.rtx.as_ref().map(|r| r.ssrc)))
    } else {
        None
    };
    if rids.is_empty() && ssrc.is_none() {
        return Err("each encoding needs an ssrc or a rid".into());
    }
    Ok(ProducerSpec {
        codec,
        pt: media.payload_type,
        rtx_pt,
        mid,
        cname: p.rtcp.cname.clone().unwrap_or_else(|| "corelay".into()),
        rids,
        ssrc,
    })
}

/// One codec of a consumer's parameters.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerCodec {
    /// `mimeType`, e.g. `video/VP8`.
    pub mime_type: &'static str,
    /// The router's payload type.
    pub payload_type: u8,
    /// RTP clock rate in Hz.
    pub clock_rate: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Audio channels (Opus: 2).
    pub channels: Option<u8>,
    /// Format parameters (`a=fmtp`).
    pub parameters: Value,
    /// RTCP feedback the router implements.
    pub rtcp_feedback: Value,
}

/// One header extension of a consumer's parameters.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumerExtension {
    /// The extension URI.
    pub uri: &'static str,
    /// The router's id for it.
    pub id: u8,
    /// Always false (no RFC 6904 encryption).
    pub encrypt: bool,
    /// Always empty.
    pub parameters: Value,
}

/// An SSRC, as `encodings[].rtx` carries it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SsrcEntry {
    /// The SSRC.
    pub ssrc: u32,
}

/// The one encoding of a consumer: fresh SSRCs, RTX for video.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ConsumerEncoding {
    /// The consumer's own media SSRC.
    pub ssrc: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Its RTX SSRC (video only).
    pub rtx: Option<SsrcEntry>,
}

/// A consumer's RTCP parameters: the producer's CNAME (lip sync).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerRtcp {
    /// The producer's CNAME.
    pub cname: String,
    /// RTCP reduced size (RFC 5506).
    pub reduced_size: bool,
    /// RTP/RTCP multiplexing.
    pub mux: bool,
}

/// The `rtpParameters` of a consumer, as `consume` returns them: the router's numbering.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerRtpParameters {
    /// The consumer's mid on its transport.
    pub mid: String,
    /// The codec and, for video, its RTX.
    pub codecs: Vec<ConsumerCodec>,
    /// The extensions the router sends.
    pub header_extensions: Vec<ConsumerExtension>,
    /// Exactly one encoding.
    pub encodings: Vec<ConsumerEncoding>,
    /// RTCP parameters.
    pub rtcp: ConsumerRtcp,
}

/// The parameters of a consumer, as `consume` returns them.
pub fn consumer_parameters(
    codec: &RouterCodec,
    mid: &str,
    ssrc: u32,
    rtx_ssrc: u32,
    cname: &str,
) -> ConsumerRtpParameters {
    let mut codecs = vec![ConsumerCodec {
        mime_type: codec.mime,
        payload_type: codec.pt,
        clock_rate: codec.clock_rate,
        channels: (codec.kind == Kind::Audio).then_some(2),
        parameters: codec_parameters(codec),
        rtcp_feedback: feedback(codec.kind),
    }];
    if let Some(rtx) = codec.rtx_pt {
        codecs.push(ConsumerCodec {
            mime_type: "video/rtx",
            payload_type: rtx,
            clock_rate: codec.clock_rate,
            channels: None,
            parameters: json!({"apt": codec.pt}),
            rtcp_feedback: json!([]),
        });
    }
    let header_extensions = ROUTER_EXTS
        .iter()
        .filter(|e| !e.recv_only)
        .filter(|e| match codec.kind {
            Kind::Audio => e.audio,
            Kind::Video => e.video,
        })
        .map(|e| ConsumerExtension {
            uri: e.uri,
            id: e.id,
            encrypt: false,
            parameters: json!({}),
        })
        .collect();
    ConsumerRtpParameters {
        mid: mid.to_string(),
        codecs,
        header_extensions,
        encodings: vec![ConsumerEncoding {
            ssrc,
            rtx: codec.rtx_pt.map(|_| SsrcEntry { ssrc: rtx_ssrc }),
        }],
        rtcp: ConsumerRtcp {
            cname: cname.to_string(),
            reduced_size: true,
            mux: true,
        },
    }
}

/// A client's RTP capabilities (`join-room`, `consume`): only the codecs matter here.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RtpCapabilities {
    #[serde(default)]
    /// The codecs the client can receive.
    pub codecs: Vec<CapabilityCodec>,
}

/// One codec a client can receive.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityCodec {
    /// `mimeType`, e.g. `audio/opus`.
    pub mime_type: String,
}

/// Whether a client's capabilities can receive a codec. Missing capabilities mean yes.
pub fn can_consume(caps: Option<&RtpCapabilities>, codec: &RouterCodec) -> bool {
    let Some(caps) = caps else {
        return true;
    };
    caps.codecs
        .iter()
        .any(|c| c.mime_type.eq_ignore_ascii_case(codec.mime))
}

/// `iceParameters` of a transport: ICE-lite, the server's own credentials.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IceParameters {
    /// The server's ufrag.
    pub username_fragment: String,
    /// The server's password.
    pub password: String,
    /// Always true: the server is ICE-lite.
    pub ice_lite: bool,
}

/// One of a transport's `iceCandidates`.
#[derive(Clone, Debug, Serialize)]
pub struct IceCandidate {
    /// A constant foundation.
    pub foundation: &'static str,
    /// The candidate priority.
    pub priority: u32,
    /// `udp.announced_ip`.
    pub address: String,
    /// The same address (older clients read `ip`).
    pub ip: String,
    /// Always `udp`.
    pub protocol: &'static str,
    /// The owning shard's UDP port.
    pub port: u16,
    #[serde(rename = "type")]
    /// Always `host`.
    pub kind: &'static str,
}

/// One DTLS certificate fingerprint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DtlsFingerprint {
    /// Hash algorithm, e.g. `sha-256`.
    pub algorithm: String,
    /// Colon-separated hex bytes.
    pub value: String,
}

/// The DTLS fingerprint algorithms corelay recognises, with their digest lengths in
/// bytes (RFC 8122's hash names). str0m verifies a certificate against sha-256 or sha-1
/// only; the others are checked for their shape and otherwise ignored.
pub const FINGERPRINT_ALGORITHMS: &[(&str, usize)] = &[
    ("sha-1", 20),
    ("sha-224", 28),
    ("sha-256", 32),
    ("sha-384", 48),
    ("sha-512", 64),
];

/// Checks a DTLS fingerprint (from `dtlsParameters` or an SDP `a=fingerprint`): a
/// recognised algorithm (any case) and exactly its digest length in two-digit hex pairs
/// separated by `:`. Returns the algorithm in lower case and the digest.
pub fn check_fingerprint(algorithm: &str, value: &str) -> Result<(String, Vec<u8>), String> {
    let algorithm = algorithm.trim().to_ascii_lowercase();
    let Some(&(_, len)) = FINGERPRINT_ALGORITHMS
        .iter()
        .find(|(name, _)| *name == algorithm)
    else {
        let shown: String = algorithm.chars().take(32).collect();
        return Err(format!(
            "unknown fingerprint algorithm {shown:?}: use sha-256 (sha-1, sha-224, sha-384 \
             and sha-512 are also recognised)"
        ));
    };
    let value = value.trim();
    let n = value.split(':').count();
    if n != len {
        return Err(format!(
            "a {algorithm} fingerprint is {len} bytes (hex pairs separated by ':'), not {n}"
        ));
    }
    let mut bytes = Vec::with_capacity(len);
    for pair in value.split(':') {
        let b = pair.as_bytes();
        if b.len() != 2 || !b.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "a {algorithm} fingerprint is {len} two-digit hex pairs separated by ':' \
                 (AB:CD:...)"
            ));
        }
        bytes.push(u8::from_str_radix(pair, 16).expect("two hex digits"));
    }
    Ok((algorithm, bytes))
}

/// `dtlsParameters`: the server's (role auto) in create-transport, the client's in
/// connect-transport.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DtlsParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `auto` from the server; the client may say `client`.
    pub role: Option<String>,
    /// Certificate fingerprints.
    pub fingerprints: Vec<DtlsFingerprint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> RtpParameters {
        serde_json::from_value(v).unwrap()
    }

    fn hex(n: usize) -> String {
        (0..n)
            .map(|i| format!("{:02X}", i))
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn fingerprints_have_their_algorithms_digest_length() {
        for (alg, len) in FINGERPRINT_ALGORITHMS {
            let (a, bytes) = check_fingerprint(&alg.to_ascii_uppercase(), &hex(*len)).unwrap();
            assert_eq!((a.as_str(), bytes.len()), (*alg, *len));
            for wrong in [1, 2, len - 1, len + 1] {
                let e = check_fingerprint(alg, &hex(wrong)).unwrap_err();
                assert!(e.contains(&format!("{len} bytes")), "{alg} {wrong}: {e}");
            }
        }
        let e = check_fingerprint("md5", &hex(16)).unwrap_err();
        assert!(e.contains("unknown fingerprint algorithm \"md5\""), "{e}");
        for bad in [
            hex(31) + ":A",
            hex(31) + ":+A",
            hex(31) + ":ABC",
            hex(31) + ":zz",
            hex(31) + "::",
            hex(32).replace(':', "-"),
            String::new(),
        ] {
            assert!(check_fingerprint("sha-256", &bad).is_err(), "{bad:?}");
        }
        assert!(check_fingerprint("sha-256", &hex(32).to_lowercase()).is_ok());
    }

    #[test]
    fn capabilities_have_what_mediasoup_client_needs() {
        let caps = router_capabilities();
        let codecs = caps["codecs"].as_array().unwrap();
        let opus = codecs
            .iter()
            .find(|c| c["mimeType"] == "audio/opus")
            .unwrap();
        assert_eq!(opus["channels"], 2);
        for c in codecs {
            for k in [
                "kind",
                "mimeType",
                "clockRate",
                "preferredPayloadType",
                "parameters",
                "rtcpFeedback",
            ] {
                assert!(c.get(k).is_some(), "{k} missing in {c}");
            }
        }
        for video in codecs
            .iter()
            .filter(|c| c["kind"] == "video" && c["mimeType"] != "video/rtx")
        {
            let pt = &video["preferredPayloadType"];
            assert!(
                codecs
                    .iter()
                    .any(|r| r["mimeType"] == "video/rtx" && &r["parameters"]["apt"] == pt),
                "no rtx for {video}"
            );
        }
        let h264 = codecs
            .iter()
            .find(|c| c["mimeType"] == "video/H264")
            .unwrap();
        assert!(h264["parameters"]["profile-level-id"].is_string());
        assert!(caps["headerExtensions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["direction"].is_string()));
    }

    #[test]
    fn a_chrome_vp8_producer_is_accepted() {
        let p = params(json!({
            "mid": "1",
            "codecs": [
                {"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000},
                {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000, "parameters": {"apt": 96}}
            ],
            "headerExtensions": [{"uri": EXT_MID, "id": 4}, {"uri": EXT_TWCC, "id": 3}],
            "encodings": [{"ssrc": 1111, "rtx": {"ssrc": 2222}}],
            "rtcp": {"cname": "abc"}
        }));
        let spec = check_producer(Kind::Video, &p).unwrap();
        assert_eq!(spec.codec, VP8);
        assert_eq!(spec.ssrc, Some((1111, Some(2222))));
        assert_eq!(spec.cname, "abc");
    }

    #[test]
    fn a_producer_keeps_its_own_numbering() {
        // Firefox's numbers: Opus 109, VP8 120 with RTX 124.
        let p = params(json!({
            "mid": "0",
            "codecs": [{"mimeType": "audio/opus", "payloadType": 109, "clockRate": 48000, "channels": 2}],
            "headerExtensions": [{"uri": EXT_MID, "id": 9}],
            "encodings": [{"ssrc": 1}]
        }));
        let spec = check_producer(Kind::Audio, &p).unwrap();
        assert_eq!((spec.codec, spec.pt, spec.rtx_pt), (OPUS, 109, None));
        let p = params(json!({
            "mid": "1",
            "codecs": [
                {"mimeType": "video/VP8", "payloadType": 120, "clockRate": 90000},
                {"mimeType": "video/rtx", "payloadType": 124, "clockRate": 90000, "parameters": {"apt": 120}}
            ],
            "encodings": [{"ssrc": 2, "rtx": {"ssrc": 3}}]
        }));
        let spec = check_producer(Kind::Video, &p).unwrap();
        assert_eq!((spec.codec, spec.pt, spec.rtx_pt), (VP8, 120, Some(124)));
    }

    #[test]
    fn codecs_the_router_does_not_forward_are_refused_with_the_reason() {
        let p = params(json!({
            "mid": "0",
            "codecs": [{"mimeType": "video/AV1", "payloadType": 45, "clockRate": 90000}],
            "encodings": [{"ssrc": 1}]
        }));
        assert!(check_producer(Kind::Video, &p)
            .unwrap_err()
            .contains("not supported"));
        let p = params(json!({
            "mid": "0",
            "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000}],
            "encodings": [{"ssrc": 1}]
        }));
        assert!(check_producer(Kind::Video, &p).is_err(), "kind mismatch");
    }

    #[test]
    fn requests_over_the_caps_or_with_bad_ids_or_ssrcs_are_refused() {
        let caps = Caps {
            encodings_per_request: 2,
            codecs_per_request: 2,
            header_extensions_per_request: 3,
            max_string_bytes: 64,
            ..Caps::default()
        };
        let base = json!({
            "mid": "0",
            "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
            "headerExtensions": [{"uri": EXT_MID, "id": 4}, {"uri": "urn:x", "id": 255}],
            "encodings": [{"ssrc": 1, "rtx": {"ssrc": 2}}],
            "rtcp": {"cname": "c"}
        });
        check_limits(&params(base.clone()), &caps).unwrap();
        let with = |path: &str, v: Value| {
            let mut p = base.clone();
            p[path] = v;
            check_limits(&params(p), &caps).unwrap_err().to_string()
        };
        let codec = json!({"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000});
        let e = with("codecs", json!([codec, codec, codec]));
        assert!(e.contains("limits.codecs_per_request"), "{e}");
        let e = with(
            "encodings",
            json!([{"rid": "a"}, {"rid": "b"}, {"rid": "c"}]),
        );
        assert!(e.contains("limits.encodings_per_request"), "{e}");
        let ext = |id: u8, uri: &str| json!({"uri": uri, "id": id});
        let e = with(
            "headerExtensions",
            json!([ext(1, "a"), ext(2, "b"), ext(3, "c"), ext(5, "d")]),
        );
        assert!(e.contains("limits.header_extensions_per_request"), "{e}");
        let e = with("headerExtensions", json!([ext(0, "a")]));
        assert!(e.contains("id 0") && e.contains("RFC 8285"), "{e}");
        let e = with("headerExtensions", json!([ext(255, "a"), ext(255, "b")]));
        assert!(e.contains("id 255 is given to both a and b"), "{e}");
        let e = with("headerExtensions", json!([ext(1, "a"), ext(2, "a")]));
        assert!(e.contains("listed twice"), "{e}");
        let e = with("rtcp", json!({"cname": "c".repeat(65)}));
        assert!(
            e.contains("rtcp.cname") && e.contains("limits.max_string_bytes"),
            "{e}"
        );
        let e = with("encodings", json!([{"ssrc": 5, "rtx": {"ssrc": 5}}]));
        assert!(e.contains("SSRC 5 is declared twice"), "{e}");
    }

    #[test]
    fn simulcast_by_rid_is_accepted() {
        let p = params(json!({
            "mid": "2",
            "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
            "encodings": [{"rid": "r0"}, {"rid": "r1"}, {"rid": "r2"}]
        }));
        let spec = check_producer(Kind::Video, &p).unwrap();
        assert_eq!(spec.rids, vec!["r0", "r1", "r2"]);
    }

    #[test]
    fn consumer_parameters_have_one_encoding_with_rtx() {
        let v = serde_json::to_value(consumer_parameters(&VP8, "3", 10, 11, "cn")).unwrap();
        assert_eq!(v["encodings"], json!([{"ssrc": 10, "rtx": {"ssrc": 11}}]));
        assert_eq!(v["codecs"][1]["parameters"]["apt"], 96);
        assert_eq!(v["rtcp"]["cname"], "cn");
        assert_eq!(v["mid"], "3");
    }
}
