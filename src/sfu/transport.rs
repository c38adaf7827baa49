//! A WebRtcTransport: one str0m `Rtc` in RTP mode, set up through the Direct API as an
//! ICE-lite, DTLS-server endpoint with one host candidate on the shard's UDP port.

use std::net::SocketAddr;
use std::time::Instant;

use rustc_hash::FxHashMap as HashMap;
use str0m::change::SdpOffer;
use str0m::config::{DtlsCert, Fingerprint};
use str0m::net::{Protocol, Receive};
use str0m::rtp::Ssrc;
use str0m::{Candidate, IceCreds, Input, Rtc, RtcConfig};

use super::engine::{parse_id, wire_id, Engine, PeerId};

use super::ortc::{
    check_fingerprint, DtlsFingerprint, DtlsParameters, IceCandidate, IceParameters,
};
use super::send_offer::{
    self, check_numbering, SendSection, REMOTE_ICE_PASSWORD, REMOTE_ICE_UFRAG_UNKNOWN,
};
use super::SfuError;

/// Which way media flows on a transport, seen from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The client sends media (producers live here).
    Send,
    /// The client receives media (consumers live here).
    Recv,
    /// Both on one connection (`/connect`): the client's audio is published, and its
    /// receiving audio sections are slots for the loudest other speakers.
    Both,
}

/// One client connection: a str0m `Rtc` with its ICE and DTLS state and what the engine
/// keeps about it.
pub struct Transport {
    /// The transport's id (its wire id is `t` and this in hex).
    pub id: u64,
    /// The peer that owns it.
    pub peer: u64,
    /// Which way media flows.
    pub direction: Direction,
    /// The WebRTC engine of this connection, in RTP mode.
    pub rtc: Rtc,
    /// The local ICE ufrag, the key of the engine's ufrag demux table.
    pub ufrag: String,
    /// The local ICE password: a client's STUN request binds its address only if its
    /// MESSAGE-INTEGRITY checks out with it.
    pub(super) ice_pass: String,
    /// The one host candidate: announced IP and the shard's UDP port.
    pub candidate: SocketAddr,
    /// DTLS started (connect-transport received, or SDP negotiated).
    pub connected: bool,
    /// Negotiated with SDP: ICE credentials and the fingerprint come from the SDP.
    pub sdp: bool,
    /// Next consumer mid on this transport ("0", "1", ...).
    pub next_mid: u32,
    /// When str0m next wants `handle_timeout`.
    pub deadline: Instant,
    /// The wake-up armed in the engine's timer heap (no later than `deadline`); `None`
    /// while it is being handled.
    pub(super) timer: Option<Instant>,
    /// When it is released unless ICE and DTLS are up by then; `None` once connected.
    pub connect_by: Option<Instant>,
    /// Demux by SSRC: the producer and layer of every SSRC its producers declared or
    /// learnt (mediasoup's RtpListener keeps the same table).
    pub(super) ssrc_routes: HashMap<Ssrc, (u64, usize)>,
    /// Queued for draining (the engine's dirty list holds it once).
    pub dirty: bool,
    /// Source addresses bound to this transport (at most the engine's
    /// `sources_per_transport`), to forget them on close.
    pub sources: Vec<SocketAddr>,
    /// DTLS datagrams that arrived before connect-transport, replayed then.
    pub early_dtls: Vec<(SocketAddr, Vec<u8>)>,
    /// A server-side SDP offer waiting for its answer, and the producer each of its
    /// media sections will carry.
    pub pending_offer: Option<(
        str0m::change::SdpPendingOffer,
        Vec<(str0m::media::Mid, u64)>,
    )>,
    /// Producers a subscriber's own offer (WHEP) is matched with, in order.
    pub offered_producers: Vec<u64>,
    /// A mediasoup-style send transport's producers, as their client numbers them: the
    /// sections of the offer negotiated on `rtc` (see `send_offer`).
    pub send_sections: Vec<SendSection>,
    /// The client's ICE ufrag as `rtc` knows it (learnt from STUN, or put in an offer).
    pub remote_ufrag: Option<String>,
    /// The client's DTLS fingerprint from connect-transport, as `"sha-256 AB:CD:..."`.
    pub remote_fingerprint: Option<String>,
}

impl Transport {
    /// An ICE-lite, DTLS-server `Rtc` with one host candidate, reusing the shard's DTLS
    /// certificate; send transports give TWCC feedback.
    pub fn new(
        now: Instant,
        id: u64,
        peer: u64,
        direction: Direction,
        cert: &DtlsCert,
        candidate: SocketAddr,
    ) -> Result<Transport, SfuError> {
        let creds = IceCreds::new();
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .set_dtls_cert(cert.clone())
            .set_local_ice_credentials(creds.clone())
            // Stats events are not used; skip computing them.
            .set_stats_interval(None)
            // What str0m keeps per video stream for resends, for streams it makes itself
            // (SDP); consumers also get a shorter window (`consumer::size_resend_cache`).
            .set_send_buffer_video(super::consumer::VIDEO_RESEND_PACKETS)
            .build(now);
        let host =
            Candidate::host(candidate, "udp").map_err(|e| SfuError::Internal(e.to_string()))?;
        rtc.add_local_candidate(host);
        {
            let mut api = rtc.direct_api();
            api.set_ice_controlling(false);
            if direction == Direction::Send {
                // Congestion feedback: the browser's send-side estimator needs TWCC to
                // ramp its rate beyond the start value.
                api.enable_twcc_feedback();
            }
        }
        Ok(Transport {
            id,
            peer,
            direction,
            rtc,
            ufrag: creds.ufrag,
            ice_pass: creds.pass,
            candidate,
            connected: false,
            sdp: false,
            next_mid: 0,
            deadline: now,
            timer: None,
            connect_by: None,
            ssrc_routes: HashMap::default(),
            dirty: false,
            sources: Vec::new(),
            early_dtls: Vec::new(),
            pending_offer: None,
            offered_producers: Vec::new(),
            send_sections: Vec::new(),
            remote_ufrag: None,
            remote_fingerprint: None,
        })
    }

    fn local_creds(&mut self) -> IceCreds {
        self.rtc.direct_api().local_ice_credentials()
    }

    /// `iceParameters` as mediasoup-client expects them.
    pub fn ice_parameters(&mut self) -> IceParameters {
        let c = self.local_creds();
        IceParameters {
            username_fragment: c.ufrag,
            password: c.pass,
            ice_lite: true,
        }
    }

    /// `iceCandidates` as mediasoup-client expects them: the one host candidate.
    pub fn ice_candidates(&self) -> Vec<IceCandidate> {
        vec![IceCandidate {
            foundation: "udpcandidate",
            priority: 1_076_302_079,
            address: self.candidate.ip().to_string(),
            ip: self.candidate.ip().to_string(),
            protocol: "udp",
            port: self.candidate.port(),
            kind: "host",
        }]
    }

    /// `dtlsParameters` as mediasoup-client expects them: role auto, the local
    /// fingerprint.
    pub fn dtls_parameters(&mut self) -> DtlsParameters {
        let fp = self.rtc.direct_api().local_dtls_fingerprint().clone();
        let shown = fp.to_string();
        let value = shown.split_once(' ').map(|x| x.1).unwrap_or(&shown);
        DtlsParameters {
            role: Some("auto".into()),
            fingerprints: vec![DtlsFingerprint {
                algorithm: fp.hash_func.to_string(),
                value: value.to_string(),
            }],
        }
    }

    /// Completes the transport with the client's DTLS fingerprint (sha-256 or sha-1; str0m
    /// verifies no other). The client is the DTLS client.
    pub fn connect(&mut self, algorithm: &str, value: &str) -> Result<(), SfuError> {
        if self.connected {
            return Err(SfuError::BadRequest("transport already connected".into()));
        }
        let text = format!("{} {}", algorithm.to_ascii_lowercase(), value);
        let fp: Fingerprint = text
            .parse()
            .map_err(|e| SfuError::BadRequest(format!("bad DTLS fingerprint: {e}")))?;
        self.remote_fingerprint = Some(fp.to_string());
        let mut api = self.rtc.direct_api();
        api.set_remote_fingerprint(fp);
        api.start_dtls(false)
            .map_err(|e| SfuError::Internal(format!("cannot start DTLS: {e}")))?;
        self.connected = true;
        // Producers declared before connect-transport are negotiated now.
        if !self.send_sections.is_empty() {
            self.renegotiate()?;
        }
        Ok(())
    }

    /// The remote ufrag comes from the client's first STUN request: mediasoup-client never
    /// sends its ICE parameters, and ice-lite never checks the remote password.
    pub fn learn_remote_ufrag(&mut self, ufrag: &str) {
        if self.remote_ufrag.as_deref() == Some(ufrag) {
            return;
        }
        self.remote_ufrag = Some(ufrag.to_string());
        let mut api = self.rtc.direct_api();
        // The same password as every negotiated offer says (see `send_offer`), so that
        // str0m never takes a later offer for an ICE restart.
        api.set_remote_ice_credentials(IceCreds {
            ufrag: ufrag.to_string(),
            pass: REMOTE_ICE_PASSWORD.to_string(),
        });
    }

    /// New local ICE credentials (restart-ice); returns the new ufrag.
    pub fn restart_ice(&mut self) -> String {
        let creds = IceCreds::new();
        self.rtc
            .direct_api()
            .set_local_ice_credentials(creds.clone());
        self.ufrag = creds.ufrag.clone();
        self.ice_pass = creds.pass;
        creds.ufrag
    }

    /// Takes one more producer's section in its client's numbering (see `send_offer`):
    /// str0m renegotiates with an offer of every section so far. Before connect-transport
    /// (the client's DTLS fingerprint is part of the offer) the sections wait for it.
    pub fn negotiate_section(&mut self, section: SendSection) -> Result<(), SfuError> {
        check_numbering(&self.send_sections, &section).map_err(SfuError::BadRequest)?;
        let before = self.send_sections.clone();
        match self.send_sections.iter_mut().find(|s| s.mid == section.mid) {
            // A mid whose producer was closed, used again: str0m's media keeps its kind and
            // the payload types it was negotiated with.
            Some(old) if old.kind != section.kind || old.pt != section.pt => {
                return Err(SfuError::BadRequest(format!(
                    "mid {} carried another kind or codec before; use a new mid",
                    section.mid
                )));
            }
            Some(old) => *old = section,
            None => self.send_sections.push(section),
        }
        if self.remote_fingerprint.is_none() {
            return Ok(());
        }
        self.renegotiate()
            .inspect_err(|_| self.send_sections = before)
    }

    /// Accepts the offer of every send section on `rtc`.
    fn renegotiate(&mut self) -> Result<(), SfuError> {
        let Some(fingerprint) = self.remote_fingerprint.clone() else {
            return Ok(());
        };
        let ufrag = self
            .remote_ufrag
            .get_or_insert_with(|| REMOTE_ICE_UFRAG_UNKNOWN.to_string())
            .clone();
        let text = send_offer::offer(&self.send_sections, &ufrag, &fingerprint);
        let offer = SdpOffer::from_sdp_string(&text)
            .map_err(|e| SfuError::Internal(format!("producer offer does not parse: {e}")))?;
        self.rtc.sdp_api().accept_offer(offer).map_err(|e| {
            SfuError::BadRequest(format!("cannot take the producer's parameters: {e}"))
        })?;
        Ok(())
    }

    /// The mid for the next consumer on this transport ("0", "1", ...).
    pub fn next_mid(&mut self) -> String {
        let m = self.next_mid;
        self.next_mid += 1;
        m.to_string()
    }
}

/// What create-transport answers: the transport's wire id and its ICE and DTLS
/// parameters, as mediasoup-client expects them.
pub struct TransportInfo {
    /// The transport's wire id (`t...`).
    pub id: String,
    /// `iceParameters`.
    pub ice_parameters: IceParameters,
    /// `iceCandidates`: the shard's one host candidate.
    pub ice_candidates: Vec<IceCandidate>,
    /// `dtlsParameters`.
    pub dtls_parameters: DtlsParameters,
}

impl Engine {
    /// A mediasoup-style WebRtcTransport for one direction.
    pub fn create_transport(
        &mut self,
        now: Instant,
        peer: PeerId,
        direction: Direction,
    ) -> Result<TransportInfo, SfuError> {
        self.check_new_transport(peer)?;
        let id = self.fresh_id();
        let mut t = Transport::new(now, id, peer, direction, &self.cert, self.candidate)?;
        let info = TransportInfo {
            id: wire_id("t", id),
            ice_parameters: t.ice_parameters(),
            ice_candidates: t.ice_candidates(),
            dtls_parameters: t.dtls_parameters(),
        };
        self.add_transport(now, t);
        // mediasoup-client makes its transports at join and connects each at its first
        // produce or consume, maybe much later: the clock starts at first use
        // (`used_transport`). Until then the session holds it, within its caps.
        if let Some(t) = self.transports.get_mut(&id) {
            t.connect_by = None;
        }
        self.drain(now, id);
        Ok(info)
    }

    /// One of the caller's own transports, by wire id, now in use (connect-transport,
    /// produce, consume): from here it has the connect timeout to connect.
    pub(super) fn used_transport(
        &mut self,
        now: Instant,
        peer: PeerId,
        transport: &str,
    ) -> Result<u64, SfuError> {
        let id = self.own_transport(peer, transport)?;
        self.arm_connect_deadline(now, id);
        Ok(id)
    }

    /// One of the caller's own transports, by wire id.
    pub(super) fn own_transport(&self, peer: PeerId, transport: &str) -> Result<u64, SfuError> {
        let id = parse_id("t", transport).ok_or_else(|| SfuError::UnknownId(transport.into()))?;
        match self.transports.get(&id) {
            Some(t) if t.peer == peer => Ok(id),
            _ => Err(SfuError::UnknownId(transport.into())),
        }
    }

    /// connect-transport: the client's DTLS parameters (a sha-256 fingerprint is
    /// required); DTLS datagrams that came early are replayed.
    pub fn connect_transport(
        &mut self,
        now: Instant,
        peer: PeerId,
        transport: &str,
        dtls: &DtlsParameters,
    ) -> Result<(), SfuError> {
        let id = self.used_transport(now, peer, transport)?;
        // Every entry has its algorithm's digest length.
        for (i, f) in dtls.fingerprints.iter().enumerate() {
            check_fingerprint(&f.algorithm, &f.value).map_err(|e| {
                SfuError::BadRequest(format!("dtlsParameters.fingerprints[{i}]: {e}"))
            })?;
        }
        // str0m verifies sha-256 and sha-1 only; sha-256 is what browsers send.
        let fp = dtls
            .fingerprints
            .iter()
            .find(|f| f.algorithm.trim().eq_ignore_ascii_case("sha-256"))
            .ok_or_else(|| {
                SfuError::BadRequest("dtlsParameters.fingerprints has no sha-256 entry".into())
            })?;
        self.caps
            .string("dtlsParameters.fingerprints[].value", &fp.value)?;
        let t = self.transports.get_mut(&id).expect("checked");
        t.connect("sha-256", fp.value.trim())?;
        for (source, data) in std::mem::take(&mut t.early_dtls) {
            if let Ok(r) = Receive::new(Protocol::Udp, source, self.candidate, &data) {
                let _ = t.rtc.handle_input(Input::Receive(now, r));
            }
        }
        self.drain(now, id);
        Ok(())
    }

    /// restart-ice: new local ICE credentials; returns the new `iceParameters`.
    pub fn restart_ice(
        &mut self,
        now: Instant,
        peer: PeerId,
        transport: &str,
    ) -> Result<IceParameters, SfuError> {
        let id = self.own_transport(peer, transport)?;
        let t = self.transports.get_mut(&id).expect("checked");
        let old = t.ufrag.clone();
        let new = t.restart_ice();
        let params = t.ice_parameters();
        self.by_ufrag.remove(&old);
        self.by_ufrag.insert(new, id);
        self.drain(now, id);
        Ok(params)
    }
}
