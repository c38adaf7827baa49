//! A minimal WebRTC endpoint on str0m that talks to corelay the way mediasoup-client in a
//! browser does: full ICE (controlling), DTLS client, RTP sent and received raw. Used by
//! the scenario tests, the benchmarks and the load tool. Sans-IO like the engine.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use serde_json::{json, Value};
use str0m::config::Fingerprint;
use str0m::media::{KeyframeRequest, MediaKind, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};

use corelay::sfu::ortc::{RouterCodec, EXT_MID, EXT_TWCC};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad transport parameters: {0}")]
    Params(String),
    #[error("webrtc: {0}")]
    Rtc(String),
}

/// What the client saw.
#[derive(Debug)]
pub enum ClientEvent {
    Connected,
    Disconnected,
    Rtp(Box<RtpPacket>),
    KeyframeRequest(KeyframeRequest),
}

/// The payload types and header-extension ids a client sends with. Browsers differ, so
/// tests send with more than one numbering.
#[derive(Clone, Debug)]
pub struct Numbering {
    /// (codec, payload type, RTX payload type)
    pub codecs: Vec<(RouterCodec, u8, Option<u8>)>,
    /// (id, uri) of the header extensions the client writes.
    pub exts: Vec<(u8, &'static str)>,
}

impl Numbering {
    /// The router's own numbering (str0m's defaults).
    pub fn router() -> Numbering {
        use corelay::sfu::ortc::{
            EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_RID, EXT_RRID, EXT_VIDEO_ORIENTATION, H264,
            OPUS, VP8, VP9,
        };
        Numbering {
            codecs: [OPUS, VP8, VP9, H264]
                .iter()
                .map(|c| (*c, c.pt, c.rtx_pt))
                .collect(),
            exts: vec![
                (1, EXT_AUDIO_LEVEL),
                (2, EXT_ABS_SEND_TIME),
                (3, EXT_TWCC),
                (4, EXT_MID),
                (10, EXT_RID),
                (11, EXT_RRID),
                (13, EXT_VIDEO_ORIENTATION),
            ],
        }
    }

    /// The client's payload types for a codec (router values for codecs it does not list).
    pub fn pt(&self, codec: &RouterCodec) -> (u8, Option<u8>) {
        self.codecs
            .iter()
            .find(|(c, _, _)| c.mime == codec.mime)
            .map(|(_, pt, rtx)| (*pt, *rtx))
            .unwrap_or((codec.pt, codec.rtx_pt))
    }

    fn ext_json(&self, kind: corelay::sfu::ortc::Kind) -> Value {
        use corelay::sfu::ortc::{Kind, EXT_AUDIO_LEVEL, EXT_RID, EXT_RRID, EXT_VIDEO_ORIENTATION};
        self.exts
            .iter()
            .filter(|(_, uri)| match kind {
                Kind::Audio => ![EXT_RID, EXT_RRID, EXT_VIDEO_ORIENTATION].contains(uri),
                Kind::Video => *uri != EXT_AUDIO_LEVEL,
            })
            .map(|(id, uri)| json!({"uri": uri, "id": id}))
            .collect()
    }

    fn rtc_config(&self) -> RtcConfig {
        use corelay::sfu::ortc::{
            EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_RID, EXT_RRID, EXT_VIDEO_ORIENTATION,
        };
        use str0m::format::FormatParams;
        use str0m::media::Frequency;
        use str0m::rtp::Extension;
        let mut config = RtcConfig::new().clear_codecs().clear_extension_map();
        for (codec, pt, rtx) in &self.codecs {
            let (clock, channels) = match codec.kind {
                corelay::sfu::ortc::Kind::Audio => (Frequency::FORTY_EIGHT_KHZ, Some(2)),
                corelay::sfu::ortc::Kind::Video => (Frequency::NINETY_KHZ, None),
            };
            let mut format = FormatParams::default();
            if codec.mime == "video/H264" {
                format.packetization_mode = Some(1);
                format.profile_level_id = Some(0x42001f);
            }
            config.codec_config().add_config(
                (*pt).into(),
                rtx.map(Into::into),
                codec.str0m(),
                clock,
                channels,
                format,
            );
        }
        for (id, uri) in &self.exts {
            let ext = match *uri {
                EXT_AUDIO_LEVEL => Extension::AudioLevel,
                EXT_ABS_SEND_TIME => Extension::AbsoluteSendTime,
                EXT_TWCC => Extension::TransportSequenceNumber,
                EXT_MID => Extension::RtpMid,
                EXT_RID => Extension::RtpStreamId,
                EXT_RRID => Extension::RepairedRtpStreamId,
                EXT_VIDEO_ORIENTATION => Extension::VideoOrientation,
                _ => continue,
            };
            config = config.set_extension(*id, ext);
        }
        config
    }
}

pub struct Client {
    pub rtc: Rtc,
    pub numbering: Numbering,
    pub addr: SocketAddr,
    server: Option<SocketAddr>,
    pub outbox: Vec<Transmit>,
    pub events: VecDeque<ClientEvent>,
    pub deadline: Instant,
    next_mid: u32,
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, ClientError> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(*p)
            .ok_or_else(|| ClientError::Params(format!("missing {}", path.join("."))))?;
    }
    Ok(cur)
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, ClientError> {
    field(v, path)?
        .as_str()
        .ok_or_else(|| ClientError::Params(format!("{} is not a string", path.join("."))))
}

impl Client {
    pub fn new(now: Instant, addr: SocketAddr) -> Client {
        Client::with_numbering(now, addr, Numbering::router())
    }

    /// A client that sends with its own payload types and extension ids.
    pub fn with_numbering(now: Instant, addr: SocketAddr, numbering: Numbering) -> Client {
        let mut rtc = numbering
            .rtc_config()
            .set_rtp_mode(true)
            .set_stats_interval(None)
            .build(now);
        let cand = Candidate::host(addr, "udp").expect("a host candidate from a socket address");
        rtc.add_local_candidate(cand);
        Client {
            rtc,
            numbering,
            addr,
            server: None,
            outbox: Vec::new(),
            events: VecDeque::new(),
            deadline: now,
            next_mid: 0,
        }
    }

    /// `dtlsParameters` for `connect-transport`, typed for the engine.
    pub fn dtls(&mut self) -> corelay::sfu::ortc::DtlsParameters {
        serde_json::from_value(self.dtls_parameters()).expect("our own dtlsParameters")
    }

    /// `dtlsParameters` for `connect-transport`, as JSON.
    pub fn dtls_parameters(&mut self) -> Value {
        let fp = self.rtc.direct_api().local_dtls_fingerprint().clone();
        let shown = fp.to_string();
        let value = shown.split_once(' ').map(|x| x.1).unwrap_or(&shown);
        json!({"role": "client", "fingerprints": [{"algorithm": fp.hash_func, "value": value}]})
    }

    /// Starts ICE and DTLS towards a transport, from the `create-transport` answer.
    pub fn connect(&mut self, now: Instant, transport: &Value) -> Result<(), ClientError> {
        let ufrag = text(transport, &["iceParameters", "usernameFragment"])?.to_string();
        let pass = text(transport, &["iceParameters", "password"])?.to_string();
        let cand = field(transport, &["iceCandidates"])?
            .get(0)
            .ok_or_else(|| ClientError::Params("no ICE candidate".into()))?;
        let ip = text(cand, &["ip"])?;
        let port = field(cand, &["port"])?
            .as_u64()
            .ok_or_else(|| ClientError::Params("candidate port".into()))?;
        let server: SocketAddr = format!("{ip}:{port}")
            .parse()
            .or_else(|_| format!("[{ip}]:{port}").parse())
            .map_err(|_| ClientError::Params(format!("candidate address {ip}:{port}")))?;
        let fps = field(transport, &["dtlsParameters", "fingerprints"])?
            .as_array()
            .ok_or_else(|| ClientError::Params("fingerprints".into()))?;
        let fp = fps
            .last()
            .ok_or_else(|| ClientError::Params("no fingerprint".into()))?;
        let fp: Fingerprint = format!("{} {}", text(fp, &["algorithm"])?, text(fp, &["value"])?)
            .parse()
            .map_err(ClientError::Params)?;
        let remote = Candidate::host(server, "udp").map_err(|e| ClientError::Rtc(e.to_string()))?;
        self.rtc.add_remote_candidate(remote);
        {
            let mut api = self.rtc.direct_api();
            api.set_ice_controlling(true);
            api.set_remote_ice_credentials(IceCreds { ufrag, pass });
            api.set_remote_fingerprint(fp);
            api.start_dtls(true)
                .map_err(|e| ClientError::Rtc(e.to_string()))?;
        }
        self.server = Some(server);
        self.drive(now);
        Ok(())
    }

    /// Declares an outgoing stream; returns `rtpParameters` for `produce`.
    pub fn add_sender(&mut self, codec: &RouterCodec, ssrc: u32, rtx: Option<u32>) -> Value {
        let mid_text = self.next_mid.to_string();
        self.next_mid += 1;
        let mid: Mid = mid_text.as_str().into();
        let kind = match codec.kind {
            corelay::sfu::ortc::Kind::Audio => MediaKind::Audio,
            corelay::sfu::ortc::Kind::Video => MediaKind::Video,
        };
        {
            let mut api = self.rtc.direct_api();
            api.declare_media(mid, kind);
            api.declare_stream_tx(ssrc.into(), rtx.map(Into::into), mid, None);
        }
        let (pt, rtx_pt) = self.numbering.pt(codec);
        let mut codecs = vec![json!({
            "mimeType": codec.mime, "payloadType": pt, "clockRate": codec.clock_rate,
        })];
        if let (Some(rtx_pt), Some(_)) = (rtx_pt, rtx) {
            codecs.push(json!({
                "mimeType": "video/rtx", "payloadType": rtx_pt, "clockRate": codec.clock_rate,
                "parameters": {"apt": pt},
            }));
        }
        let mut encoding = json!({"ssrc": ssrc});
        if let Some(r) = rtx {
            encoding["rtx"] = json!({"ssrc": r});
        }
        json!({
            "mid": mid_text,
            "codecs": codecs,
            "headerExtensions": self.numbering.ext_json(codec.kind),
            "encodings": [encoding],
            "rtcp": {"cname": format!("client-{ssrc}")},
        })
    }

    /// Declares a simulcast sender: one stream per (rid, ssrc), lowest first; returns
    /// `rtpParameters` whose encodings carry only rids, as browsers send them.
    pub fn add_simulcast_sender(&mut self, codec: &RouterCodec, layers: &[(&str, u32)]) -> Value {
        let mid_text = self.next_mid.to_string();
        self.next_mid += 1;
        let mid: Mid = mid_text.as_str().into();
        {
            let mut api = self.rtc.direct_api();
            api.declare_media(mid, MediaKind::Video);
            for (rid, ssrc) in layers {
                api.declare_stream_tx((*ssrc).into(), None, mid, Some((*rid).into()));
            }
        }
        let (pt, _) = self.numbering.pt(codec);
        json!({
            "mid": mid_text,
            "codecs": [{"mimeType": codec.mime, "payloadType": pt, "clockRate": codec.clock_rate}],
            "headerExtensions": self.numbering.ext_json(codec.kind),
            "encodings": layers.iter().map(|(rid, _)| json!({"rid": rid})).collect::<Vec<_>>(),
            "rtcp": {"cname": "simulcast-client"},
        })
    }

    /// Declares an incoming stream from a `consume` answer's `rtpParameters`.
    pub fn add_receiver(&mut self, kind: &str, params: &Value) -> Result<Ssrc, ClientError> {
        let mid = text(params, &["mid"])?;
        let ssrc = field(params, &["encodings"])?
            .get(0)
            .and_then(|e| e.get("ssrc"))
            .and_then(Value::as_u64)
            .ok_or_else(|| ClientError::Params("encodings[0].ssrc".into()))?
            as u32;
        let rtx = field(params, &["encodings"])?
            .get(0)
            .and_then(|e| e.get("rtx"))
            .and_then(|r| r.get("ssrc"))
            .and_then(Value::as_u64)
            .map(|s| Ssrc::from(s as u32));
        let kind = if kind == "audio" {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let mid: Mid = mid.into();
        let mut api = self.rtc.direct_api();
        api.declare_media(mid, kind);
        api.expect_stream_rx(ssrc.into(), rtx, mid, None);
        Ok(ssrc.into())
    }

    /// Sends one RTP packet on a declared stream.
    #[allow(clippy::too_many_arguments)]
    pub fn send_rtp(
        &mut self,
        now: Instant,
        ssrc: u32,
        pt: u8,
        seq: u64,
        ts: u32,
        marker: bool,
        payload: &[u8],
    ) -> bool {
        let sent = {
            let mut api = self.rtc.direct_api();
            match api.stream_tx(&ssrc.into()) {
                Some(tx) => {
                    tx.write_rtp(
                        RtpWrite::new(pt.into(), seq.into(), ts, now, payload.to_vec())
                            .marker(marker)
                            .nackable(true),
                    );
                    true
                }
                None => false,
            }
        };
        self.drive(now);
        sent
    }

    /// Sends one Opus packet carrying an RFC 6464 audio level (dBov, 0 loudest).
    pub fn send_audio(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq: u64,
        ts: u32,
        level: i8,
        payload: &[u8],
    ) {
        {
            let mut api = self.rtc.direct_api();
            if let Some(tx) = api.stream_tx(&ssrc.into()) {
                let ext = str0m::rtp::ExtensionValues {
                    audio_level: Some(level),
                    voice_activity: Some(level > -50),
                    ..Default::default()
                };
                let (pt, _) = self.numbering.pt(&corelay::sfu::ortc::OPUS);
                tx.write_rtp(
                    RtpWrite::new(pt.into(), seq.into(), ts, now, payload.to_vec()).ext_vals(ext),
                );
            }
        }
        self.drive(now);
    }

    /// Asks the server for a keyframe on an incoming stream (a PLI).
    pub fn request_keyframe(&mut self, now: Instant, ssrc: Ssrc) {
        if let Some(rx) = self.rtc.direct_api().stream_rx(&ssrc) {
            rx.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
        }
        self.drive(now);
    }

    pub fn is_connected(&self) -> bool {
        self.rtc.is_connected()
    }

    /// One datagram from the server.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if let Ok(r) = Receive::new(Protocol::Udp, from, self.addr, data) {
            let _ = self.rtc.handle_input(Input::Receive(now, r));
        }
        self.drive(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = self.rtc.handle_input(Input::Timeout(now));
        self.drive(now);
    }

    /// Drains outputs until str0m only has a timeout left.
    fn drive(&mut self, now: Instant) {
        let mut fed = false;
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    if t <= now && !fed {
                        fed = true;
                        let _ = self.rtc.handle_input(Input::Timeout(now));
                        continue;
                    }
                    self.deadline = t;
                    return;
                }
                Ok(Output::Transmit(t)) => self.outbox.push(t),
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.events.push_back(ClientEvent::Connected),
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.events.push_back(ClientEvent::Disconnected)
                    }
                    Event::RtpPacket(p) => self.events.push_back(ClientEvent::Rtp(Box::new(p))),
                    Event::KeyframeRequest(k) => {
                        self.events.push_back(ClientEvent::KeyframeRequest(k))
                    }
                    _ => {}
                },
                Err(_) => {
                    self.events.push_back(ClientEvent::Disconnected);
                    return;
                }
            }
        }
    }
}
