//! One shard's media core: the [`Engine`], owner of rooms, peers, transports, producers
//! and consumers.
//!
//! Sans-IO: datagrams and commands go in with the current time, datagrams to send and
//! notices for signaling sessions come out. Nothing here reads a clock or touches a socket.
//!
//! Commands live with the object they act on ([`room`](super::room),
//! [`transport`](super::transport), [`producer`](super::producer),
//! [`consumer`](super::consumer), [`slots`](super::slots), and the SDP bridge in
//! [`sdp`](super::sdp)). This module keeps the engine itself: id allocation, the demux
//! tables (by ICE ufrag, by source address, by mid; each transport keeps its own by SSRC),
//! datagrams and timeouts in (the transports' deadlines in a heap), draining each str0m
//! `Rtc`, the fan-out of a received packet to its consumers, and the outbox and notices.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;
use str0m::config::DtlsCert;
use str0m::crypto::Sha1HmacProvider;
use str0m::ice::StunMessage;
use str0m::media::Mid;
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpHeader, RtpPacket, RtpWrite};
use str0m::{Event as RtcEvent, IceConnectionState, Input, Output};

use super::consumer::{Admit, Consumer, Incoming};
use super::keyframe::is_keyframe;
use super::ortc::Kind;
use super::producer::Producer;
use super::room::{note_first_media, Peer, Room};
use super::transport::Transport;
use super::unbound::UnboundRates;
use super::{Caps, SfuError};

pub use super::consumer::ConsumerInfo;
pub use super::room::{JoinInfo, ProducerInfo};
pub use super::transport::TransportInfo;

/// A participant, as the shard numbers its signaling sessions.
pub type PeerId = u64;

/// DTLS datagrams kept per transport until connect-transport arrives.
const EARLY_DTLS_MAX: usize = 16;

/// What the engine tells a signaling session.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Another user joined the room (its first session there).
    PeerJoined {
        /// Its user id.
        user_id: String,
        /// Its display name.
        user_name: String,
    },
    /// Another peer left the room (or its media failed, or a newer session of its user
    /// replaced it).
    PeerLeft {
        /// Its user id.
        user_id: String,
        /// Its peer id.
        peer: PeerId,
        /// No session of the user stays in the room: the user left. False while another
        /// of its sessions is there (a WHIP resource, or the member that replaced it).
        user_left: bool,
    },
    /// Another peer of the room produces a new track.
    NewProducer {
        /// The producer's wire id.
        producer_id: String,
        /// The publishing peer (SDP dialects group tracks by publisher).
        publisher: PeerId,
        /// The publisher's user id.
        user_id: String,
        /// The publisher's display name.
        user_name: String,
        /// Audio or video.
        kind: Kind,
    },
    /// A producer of the room was closed.
    ProducerClosed {
        /// The producer's wire id.
        producer_id: String,
    },
    /// One of the peer's consumers was closed (its producer went away).
    ConsumerClosed {
        /// The consumer's wire id.
        consumer_id: String,
    },
    /// ICE or DTLS failed, or consent expired: everything of the peer was released.
    MediaFailed {
        /// What happened, for logs and the client.
        reason: String,
    },
    /// One of the peer's transports was released by the media core (it did not connect
    /// within `limits.connect_timeout_ms`), with its producers and consumers; the peer
    /// stays in its room.
    TransportClosed {
        /// The transport's wire id.
        transport_id: String,
        /// Why, naming the setting.
        reason: String,
    },
    /// A newer session of the same user joined the room: everything of this peer was
    /// released, and its session is to be closed.
    Replaced {
        /// What happened, for the client.
        reason: String,
    },
}

/// What one transport may hold and how long it may take to connect (the
/// `limits.connect_timeout_ms`, `limits.sources_per_transport` and
/// `limits.unbound_packets_per_s` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// A transport whose ICE and DTLS are not up this long after it was made is released.
    pub connect_timeout: Duration,
    /// Client addresses one transport may have bound (each by a STUN binding request
    /// that passed its MESSAGE-INTEGRITY check).
    pub sources_per_transport: usize,
    /// Datagrams per second a source address not bound to a transport may send; 0 means
    /// no limit.
    pub unbound_packets_per_s: u32,
}

impl Default for TransportLimits {
    /// The defaults of the configuration table: 30 s, 8 sources, 50 datagrams/s.
    fn default() -> Self {
        TransportLimits {
            connect_timeout: Duration::from_secs(30),
            sources_per_transport: 8,
            unbound_packets_per_s: 50,
        }
    }
}

/// Counters the shard reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct EngineCounters {
    /// RTP packets received (decrypted by a transport).
    pub rtp_in: u64,
    /// RTP packets written to consumers.
    pub rtp_out: u64,
    /// Payload bytes of those packets.
    pub bytes_in: u64,
    /// Bytes of every datagram sent (media, RTCP, ICE, DTLS).
    pub bytes_out: u64,
    /// Datagrams that belong to no transport, do not parse, or that their transport
    /// refuses (the three below included).
    pub datagrams_dropped: u64,
    /// Transports released because they did not connect within the connect timeout.
    pub connect_timeouts: u64,
    /// STUN binding requests naming a transport's ufrag whose MESSAGE-INTEGRITY does not
    /// check out with that transport's password: dropped, nothing bound.
    pub stun_forged: u64,
    /// Datagrams from a source not bound to a transport beyond its packet rate.
    pub unbound_dropped: u64,
    /// Good STUN requests from a new address, dropped because their transport has
    /// `sources_per_transport` addresses bound already.
    pub sources_refused: u64,
}

/// One shard's media core: see the [module documentation](self).
pub struct Engine {
    /// The shard's bits of every id (`shard << 40`).
    pub(super) id_base: u64,
    /// The last id handed out, below `id_base`.
    pub(super) next_id: u64,
    /// One DTLS certificate for every transport of the shard.
    pub(super) cert: DtlsCert,
    /// The address clients send to: announced IP and this shard's UDP port.
    pub(super) candidate: SocketAddr,
    /// Joined peers.
    pub(super) peers: HashMap<PeerId, Peer>,
    /// Rooms by name, while they have peers.
    pub(super) rooms: HashMap<String, Room>,
    /// Transports by id (boxed: a `Transport` is about 10 KB, and a map of them inline
    /// would keep that much again per free slot).
    pub(super) transports: HashMap<u64, Box<Transport>>,
    /// Producers by id.
    pub(super) producers: HashMap<u64, Producer>,
    /// Consumers by id.
    pub(super) consumers: HashMap<u64, Consumer>,
    /// Demux before ICE: the transport of each local ICE ufrag.
    pub(super) by_ufrag: HashMap<String, u64>,
    /// Demux after a STUN request that passed its integrity check: the transport of each
    /// client address.
    pub(super) by_source: HashMap<SocketAddr, u64>,
    /// The producer of each (transport, mid).
    pub(super) producer_by_mid: HashMap<(u64, Mid), u64>,
    /// The consumer of each (transport, mid).
    pub(super) consumer_by_mid: HashMap<(u64, Mid), u64>,
    /// The transports' wake-ups, earliest first: `(at, transport)`. An entry counts only
    /// while it is its transport's [`Transport::timer`]; others are stale and skipped when
    /// they come up (lazy invalidation). The top is never stale between calls, so it is
    /// the engine's next timeout: no later than any transport's deadline, perhaps earlier
    /// (an early wake-up finds its transport not due and re-arms it at the deadline).
    pub(super) timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Transports that must connect by then: `(at, transport)`, an entry counting only
    /// while it is its transport's [`Transport::connect_by`] (stale ones are skipped).
    pub(super) connect_deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// What transports may hold and how long they may take to connect.
    pub(super) limits: TransportLimits,
    /// Packet rates of sources not bound to a transport.
    pub(super) unbound: UnboundRates,
    /// HMAC-SHA1 for the STUN integrity check (str0m's provider).
    pub(super) hmac: &'static dyn Sha1HmacProvider,
    /// Reused by `handle_timeout` for the transports that are due.
    pub(super) scratch_due: Vec<u64>,
    /// Transports written to since their last drain.
    pub(super) dirty: Vec<u64>,
    /// Rooms whose speaker slots are due for review.
    pub(super) review_rooms: Vec<String>,
    /// Join-to-first-media times not yet taken by the shard.
    pub(super) join_times: Vec<Duration>,
    /// Reused between drains so the packet path does not allocate.
    pub(super) scratch_events: Vec<(u64, RtcEvent)>,
    /// Datagrams to send, oldest first.
    pub(super) outbox: Vec<Transmit>,
    /// Notices for signaling sessions, oldest first.
    pub(super) notices: VecDeque<(PeerId, Notice)>,
    /// What the shard reports.
    pub(super) counters: EngineCounters,
    /// What one client may hold or ask for.
    pub(super) caps: Caps,
    /// The transport being worked on, for a driver that caught a panic (see
    /// [`Engine::take_panicked_room`]); `None` between calls.
    pub(super) working_on: Option<u64>,
    /// Fault injection (debug builds, tests only): a datagram for a room whose id contains
    /// this panics.
    #[cfg(debug_assertions)]
    pub(super) fault_room: Option<String>,
}

/// An id as the wire shows it: a one-letter prefix and hex digits.
pub(super) fn wire_id(prefix: &str, id: u64) -> String {
    format!("{prefix}{id:x}")
}

/// The id behind a wire id with this prefix.
pub(super) fn parse_id(prefix: &str, s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix(prefix)?, 16).ok()
}

impl Engine {
    /// `id_base` keeps ids unique across shards; `candidate` is what ICE advertises.
    pub fn new(id_base: u64, candidate: SocketAddr) -> Result<Engine, SfuError> {
        let crypto = str0m::crypto::from_feature_flags();
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| SfuError::Internal("cannot generate a DTLS certificate".into()))?;
        let limits = TransportLimits::default();
        Ok(Engine {
            id_base,
            next_id: 0,
            cert,
            candidate,
            peers: HashMap::default(),
            rooms: HashMap::default(),
            transports: HashMap::default(),
            producers: HashMap::default(),
            consumers: HashMap::default(),
            by_ufrag: HashMap::default(),
            by_source: HashMap::default(),
            producer_by_mid: HashMap::default(),
            consumer_by_mid: HashMap::default(),
            timers: BinaryHeap::new(),
            connect_deadlines: BinaryHeap::new(),
            limits,
            unbound: UnboundRates::new(limits.unbound_packets_per_s),
            hmac: crypto.sha1_hmac_provider,
            scratch_due: Vec::new(),
            dirty: Vec::new(),
            scratch_events: Vec::new(),
            join_times: Vec::new(),
            review_rooms: Vec::new(),
            outbox: Vec::new(),
            notices: VecDeque::new(),
            counters: EngineCounters::default(),
            caps: Caps::default(),
            working_on: None,
            #[cfg(debug_assertions)]
            fault_room: None,
        })
    }

    /// Sets what transports may hold and how long they may take to connect: the connect
    /// timeout counts for transports made from now on, the source cap at once, and the
    /// unbound sources' buckets start afresh.
    pub fn set_transport_limits(&mut self, limits: TransportLimits) {
        self.limits = limits;
        self.unbound = UnboundRates::new(limits.unbound_packets_per_s);
    }

    /// What transports may hold and how long they may take to connect.
    pub fn transport_limits(&self) -> TransportLimits {
        self.limits
    }

    /// Sets what one client may hold or ask for (the default: [`Caps::default`]). Applies
    /// to requests from now on; nothing held already is released.
    pub fn set_caps(&mut self, caps: Caps) {
        self.caps = caps;
    }

    /// What one client may hold or ask for.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// A new id for a transport, producer or consumer, unique across shards.
    pub(super) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.id_base | self.next_id
    }

    // ------------------------------------------------------------------ figures

    /// Rooms with at least one peer.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }
    /// Open transports.
    pub fn transports(&self) -> usize {
        self.transports.len()
    }
    /// Open producers.
    pub fn producers(&self) -> usize {
        self.producers.len()
    }
    /// Open consumers.
    pub fn consumers(&self) -> usize {
        self.consumers.len()
    }
    /// Client addresses bound to transports.
    pub fn bound_sources(&self) -> usize {
        self.by_source.len()
    }
    /// The counters so far.
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }
    /// Whether a room of this name has peers on this engine.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    // ------------------------------------------------------------------ outputs

    /// Moves the datagrams to send into `out`, after what it holds, oldest first. Buffers
    /// are exchanged, not allocated: a driver that empties `out` (keeping its capacity)
    /// and hands it back each flush allocates nothing for the outbox.
    pub fn poll_transmits(&mut self, out: &mut Vec<Transmit>) {
        if out.is_empty() {
            std::mem::swap(out, &mut self.outbox);
        } else {
            out.append(&mut self.outbox);
        }
    }

    /// How many datagrams wait to be sent.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Whether no datagram waits to be sent.
    pub fn outbox_is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    /// Times from `join` to each peer's first media packet (sent or received).
    pub fn take_join_times(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.join_times)
    }

    /// The next notice for a signaling session: (the peer it is for, the notice).
    pub fn poll_notice(&mut self) -> Option<(PeerId, Notice)> {
        self.notices.pop_front()
    }

    /// When to call `handle_timeout` next: no later than the earliest time any transport
    /// wants it (perhaps earlier: such a wake-up finds nothing due). `None` without
    /// transports.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rtc = self.timers.peek().map(|Reverse((at, _))| *at);
        let connect = self.connect_deadlines.peek().map(|Reverse((at, _))| *at);
        match (rtc, connect) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ------------------------------------------------------------------ transports

    /// `Err` when the peer may not open another transport
    /// (`limits.transports_per_session`).
    pub(super) fn check_new_transport(&self, peer: PeerId) -> Result<(), SfuError> {
        let held = self.peer(peer)?.transports.len();
        self.caps.room_for(
            "too many transports in this session",
            held,
            self.caps.transports_per_session,
            "limits.transports_per_session",
        )
    }

    /// `Err` when the peer may not hold `more` more consumers
    /// (`limits.consumers_per_session`).
    pub(super) fn check_new_consumers(&self, peer: PeerId, more: usize) -> Result<(), SfuError> {
        let held = self.peer(peer)?.consumers.len();
        let limit = self.caps.consumers_per_session;
        if held + more > limit {
            return Err(super::caps::over(
                format!("too many consumers in this session ({held} held, {more} more asked)"),
                limit,
                "limits.consumers_per_session",
            ));
        }
        Ok(())
    }

    /// `Err` when the peer may not hold `more` more producers on transport `tid`
    /// (`limits.producers_per_session`, `limits.producers_per_transport`).
    pub(super) fn check_new_producers(
        &self,
        peer: PeerId,
        tid: u64,
        more: usize,
    ) -> Result<(), SfuError> {
        let mine = &self.peer(peer)?.producers;
        let held = mine.len();
        let on_transport = mine
            .iter()
            .filter(|id| self.producers.get(id).is_some_and(|p| p.transport == tid))
            .count();
        let caps = &self.caps;
        for (held, limit, what, setting) in [
            (
                held,
                caps.producers_per_session,
                "this session",
                "limits.producers_per_session",
            ),
            (
                on_transport,
                caps.producers_per_transport,
                "this transport",
                "limits.producers_per_transport",
            ),
        ] {
            if held + more > limit {
                return Err(super::caps::over(
                    format!("too many producers on {what} ({held} held, {more} more asked)"),
                    limit,
                    setting,
                ));
            }
        }
        Ok(())
    }

    /// Registers a new transport with its peer and the ufrag demux table, and gives it
    /// until `now` + the connect timeout to connect. Shared by the mediasoup dialect and
    /// the SDP bridge.
    pub(super) fn add_transport(&mut self, now: Instant, t: Transport) -> u64 {
        let (id, peer) = (t.id, t.peer);
        self.by_ufrag.insert(t.ufrag.clone(), id);
        let mut t = Box::new(t);
        let deadline = t.deadline;
        arm(&mut self.timers, &mut t, deadline);
        self.transports.insert(id, t);
        self.arm_connect_deadline(now, id);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.transports.push(id);
        }
        id
    }

    /// Gives a transport that is not connected (and not yet on the clock) until `now` +
    /// the connect timeout to connect.
    pub(super) fn arm_connect_deadline(&mut self, now: Instant, id: u64) {
        let Some(t) = self.transports.get_mut(&id) else {
            return;
        };
        if t.connect_by.is_some() || t.rtc.is_connected() {
            return;
        }
        let connect_by = now + self.limits.connect_timeout;
        t.connect_by = Some(connect_by);
        self.connect_deadlines.push(Reverse((connect_by, id)));
    }

    /// Closes a transport and forgets its demux entries (its producers and consumers are
    /// removed by the caller).
    pub(super) fn remove_transport(&mut self, id: u64) {
        let Some(mut t) = self.transports.remove(&id) else {
            return;
        };
        t.rtc.disconnect();
        self.by_ufrag.remove(&t.ufrag);
        for s in &t.sources {
            self.by_source.remove(s);
        }
        self.dirty.retain(|&d| d != id);
        if let Some(p) = self.peers.get_mut(&t.peer) {
            p.transports.retain(|&x| x != id);
        }
        // Its timer entry is stale now (its SSRC routes went with it).
        self.settle_timers();
    }

    /// Releases a transport with its producers (the room is told `ProducerClosed`, their
    /// consumers' owners `ConsumerClosed`) and its consumers (their owner is told
    /// `ConsumerClosed` if `tell_owner`). The peer stays.
    pub(super) fn release_transport(&mut self, now: Instant, id: u64, tell_owner: bool) {
        let Some(peer) = self.transports.get(&id).map(|t| t.peer) else {
            return;
        };
        let (producers, consumers): (Vec<u64>, Vec<u64>) = match self.peers.get(&peer) {
            Some(p) => (
                p.producers
                    .iter()
                    .copied()
                    .filter(|pid| self.producers.get(pid).is_some_and(|x| x.transport == id))
                    .collect(),
                p.consumers
                    .iter()
                    .copied()
                    .filter(|cid| self.consumers.get(cid).is_some_and(|x| x.transport == id))
                    .collect(),
            ),
            None => Default::default(),
        };
        for p in producers {
            self.remove_producer(now, p);
        }
        for c in consumers {
            self.remove_consumer(now, c, tell_owner);
        }
        self.remove_transport(id);
    }

    /// A transport that did not connect in time: released with what it carries. A peer
    /// that lives for its transports alone (WHIP, WHEP, `/connect`) leaves its room and is
    /// told `MediaFailed`; any other is told `TransportClosed` and stays.
    fn expire_unconnected(&mut self, now: Instant, id: u64) {
        let Some(peer) = self.transports.get(&id).map(|t| t.peer) else {
            return;
        };
        self.counters.connect_timeouts += 1;
        let reason = format!(
            "transport not connected (ICE and DTLS) within {} ms (limits.connect_timeout_ms)",
            self.limits.connect_timeout.as_millis()
        );
        if self.peers.get(&peer).is_some_and(|p| p.one_shot) {
            self.fail_transport(now, id, reason);
            return;
        }
        tracing::info!(transport = id, "{reason}");
        self.release_transport(now, id, true);
        self.notices.push_back((
            peer,
            Notice::TransportClosed {
                transport_id: wire_id("t", id),
                reason,
            },
        ));
    }

    /// A transport failed: its peer leaves and is told why.
    fn fail_transport(&mut self, now: Instant, id: u64, reason: String) {
        let Some(peer) = self.transports.get(&id).map(|t| t.peer) else {
            return;
        };
        tracing::info!(transport = id, "{reason}");
        self.leave(now, peer);
        self.notices
            .push_back((peer, Notice::MediaFailed { reason }));
    }

    // ------------------------------------------------------------------ network

    /// One datagram from the shard's socket. Returns false when it belongs to no
    /// transport or cannot be parsed (counted as dropped).
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) -> bool {
        let tid = match self.by_source.get(&source) {
            Some(&t) => t,
            None => {
                if !self.unbound.admit(now, source) {
                    self.counters.unbound_dropped += 1;
                    self.counters.datagrams_dropped += 1;
                    return false;
                }
                match self.route_stun(source, data) {
                    Some(t) => t,
                    None => {
                        self.counters.datagrams_dropped += 1;
                        return false;
                    }
                }
            }
        };
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.candidate, data) else {
            self.counters.datagrams_dropped += 1;
            return false;
        };
        let Some(t) = self.transports.get_mut(&tid) else {
            return false;
        };
        if !t.connected && matches!(data.first(), Some(20..=63)) {
            // A DTLS ClientHello can beat connect-transport (the browser starts as soon as
            // ICE works): keep it for then, rather than make the client retransmit a
            // second later.
            if t.early_dtls.len() < EARLY_DTLS_MAX {
                t.early_dtls.push((source, data.to_vec()));
            }
            return true;
        }
        let input = Input::Receive(now, receive);
        if !t.rtc.accepts(&input) {
            self.counters.datagrams_dropped += 1;
            return false;
        }
        self.working_on = Some(tid);
        #[cfg(debug_assertions)]
        let t = {
            self.inject_fault(tid);
            self.transports.get_mut(&tid).expect("looked up above")
        };
        if let Err(e) = t.rtc.handle_input(input) {
            tracing::debug!(transport = tid, "input refused: {e}");
        }
        self.drain(now, tid);
        true
    }

    /// Before ICE completes, a STUN request's USERNAME (server:client ufrag) names the
    /// transport. Only a request whose MESSAGE-INTEGRITY checks out with that transport's
    /// ICE password binds its source address (up to `sources_per_transport` of them), for
    /// the datagrams that follow; forged ones bind nothing and teach nothing.
    fn route_stun(&mut self, source: SocketAddr, data: &[u8]) -> Option<u64> {
        let msg = StunMessage::parse(data).ok()?;
        if !msg.is_binding_request() {
            return None;
        }
        let (local, remote) = msg.split_username()?;
        let tid = *self.by_ufrag.get(local)?;
        let t = self.transports.get_mut(&tid)?;
        let hmac = self.hmac;
        if !msg.verify(t.ice_pass.as_bytes(), |key, parts| {
            hmac.sha1_hmac(key, parts)
        }) {
            self.counters.stun_forged += 1;
            return None;
        }
        if !t.sources.contains(&source) {
            if t.sources.len() >= self.limits.sources_per_transport {
                self.counters.sources_refused += 1;
                return None;
            }
            t.sources.push(source);
        }
        if !t.sdp {
            t.learn_remote_ufrag(remote);
        }
        self.by_source.insert(source, tid);
        Some(tid)
    }

    /// Feeds timeouts to every transport that is due: pops the due wake-ups off the heap
    /// (O(due log n), not a visit of every transport), once per transport per call.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.working_on = None;
        let mut due = std::mem::take(&mut self.scratch_due);
        // Transports that did not connect in time go first (they need no timeout fed).
        while let Some(&Reverse((at, id))) = self.connect_deadlines.peek() {
            if at > now {
                break;
            }
            self.connect_deadlines.pop();
            let Some(t) = self.transports.get_mut(&id) else {
                continue;
            };
            if t.connect_by != Some(at) {
                continue; // stale: connected, or re-armed
            }
            t.connect_by = None;
            if !t.rtc.is_connected() {
                due.push(id);
            }
        }
        for &id in &due {
            self.expire_unconnected(now, id);
        }
        due.clear();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(t) = self.transports.get_mut(&id) else {
                continue;
            };
            if t.timer != Some(at) {
                continue; // stale: superseded by an earlier wake-up
            }
            t.timer = None;
            if t.deadline <= now {
                due.push(id);
            } else {
                // Woken early (the deadline moved later since): wait for the deadline.
                let deadline = t.deadline;
                arm(&mut self.timers, t, deadline);
            }
        }
        // Wake-ups armed while these drain (even ones already due) wait for the next call.
        for &id in &due {
            self.working_on = Some(id);
            if let Some(t) = self.transports.get_mut(&id) {
                let _ = t.rtc.handle_input(Input::Timeout(now));
            }
            self.drain(now, id);
        }
        due.clear();
        self.scratch_due = due;
        self.settle_timers();
    }

    /// Drops stale wake-ups off the top of the heap, so that its top is the next timeout;
    /// rebuilds the heap when stale entries are most of it.
    fn settle_timers(&mut self) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if self
                .transports
                .get(&id)
                .is_some_and(|t| t.timer == Some(at))
            {
                break;
            }
            self.timers.pop();
        }
        if self.timers.len() > 2 * self.transports.len() + 64 {
            let mut entries = std::mem::take(&mut self.timers).into_vec();
            entries.clear();
            entries.extend(
                self.transports
                    .values()
                    .filter_map(|t| t.timer.map(|at| Reverse((at, t.id)))),
            );
            self.timers = BinaryHeap::from(entries);
        }
        // The same for the connect deadlines.
        while let Some(&Reverse((at, id))) = self.connect_deadlines.peek() {
            if self
                .transports
                .get(&id)
                .is_some_and(|t| t.connect_by == Some(at))
            {
                break;
            }
            self.connect_deadlines.pop();
        }
        if self.connect_deadlines.len() > 2 * self.transports.len() + 64 {
            let mut entries = std::mem::take(&mut self.connect_deadlines).into_vec();
            entries.clear();
            entries.extend(
                self.transports
                    .values()
                    .filter_map(|t| t.connect_by.map(|at| Reverse((at, t.id)))),
            );
            self.connect_deadlines = BinaryHeap::from(entries);
        }
    }

    /// Queues a transport for draining (once).
    pub(super) fn mark_dirty(&mut self, id: u64) {
        if let Some(t) = self.transports.get_mut(&id) {
            if !t.dirty {
                t.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Drains one transport's outputs until it only has a timeout left, then every
    /// transport that got media written into it meanwhile.
    pub(super) fn drain(&mut self, now: Instant, id: u64) {
        self.mark_dirty(id);
        self.drain_dirty(now);
    }

    /// Drains every queued transport: datagrams go to the outbox, received packets are
    /// forwarded (queuing their consumers' transports in turn), keyframe requests go to
    /// the producers; then the speaker slots due for review are reviewed.
    pub(super) fn drain_dirty(&mut self, now: Instant) {
        let mut events = std::mem::take(&mut self.scratch_events);
        while let Some(id) = self.dirty.pop() {
            self.working_on = Some(id);
            let Some(t) = self.transports.get_mut(&id) else {
                continue;
            };
            t.dirty = false;
            let mut failed = None;
            let mut timeout_fed = false;
            loop {
                match t.rtc.poll_output() {
                    Ok(Output::Timeout(at)) => {
                        if at <= now && !timeout_fed {
                            // Due already: feed it now and drain again.
                            timeout_fed = true;
                            let _ = t.rtc.handle_input(Input::Timeout(now));
                            continue;
                        }
                        t.deadline = at;
                        arm(&mut self.timers, t, at);
                        break;
                    }
                    Ok(Output::Transmit(tx)) => {
                        self.counters.bytes_out += tx.contents.len() as u64;
                        self.outbox.push(tx);
                    }
                    Ok(Output::Event(e)) => match e {
                        RtcEvent::RtpPacket(pkt) => {
                            // Forward right away: the Rtc holds one pending packet.
                            events.push((id, RtcEvent::RtpPacket(pkt)));
                        }
                        RtcEvent::Connected => t.connect_by = None,
                        RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                            failed =
                                Some("ICE disconnected (consent expired or failed)".to_string());
                        }
                        RtcEvent::KeyframeRequest(_) => events.push((id, e)),
                        _ => {}
                    },
                    Err(e) => {
                        failed = Some(format!("transport failed: {e}"));
                        break;
                    }
                }
            }
            if let Some(reason) = failed {
                // Still woken if it outlives the failure (its entry goes stale if not).
                if let Some(t) = self.transports.get_mut(&id) {
                    let deadline = t.deadline;
                    arm(&mut self.timers, t, deadline);
                }
                self.fail_transport(now, id, reason);
                continue;
            }
            for (tid, e) in events.drain(..) {
                match e {
                    RtcEvent::RtpPacket(pkt) => self.forward(now, tid, pkt),
                    RtcEvent::KeyframeRequest(req) => {
                        if let Some(&cid) = self.consumer_by_mid.get(&(tid, req.mid)) {
                            let producer = self.consumers[&cid].producer;
                            self.request_keyframe(now, producer);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.scratch_events = events;
        self.review_due_slots(now);
        self.working_on = None;
    }

    /// The producer and layer a received packet belongs to: by its SSRC in the
    /// transport's table (browsers stop sending the mid once the SSRC is acknowledged),
    /// else by its mid, learning the SSRC of a rid layer (or of the one unnamed layer)
    /// into the table. A packet whose mid names another producer than its SSRC goes by
    /// its mid.
    fn route(&mut self, tid: u64, header: &RtpHeader) -> Option<(u64, usize)> {
        let t = self.transports.get_mut(&tid)?;
        let mid = header.ext_vals.mid;
        if let Some(&(pid, layer)) = t.ssrc_routes.get(&header.ssrc) {
            let its_mid = || self.producers.get(&pid).map(|p| p.mid);
            if mid.is_none() || mid == its_mid() {
                return Some((pid, layer));
            }
        }
        let pid = *self.producer_by_mid.get(&(tid, mid?))?;
        let layer = self
            .producers
            .get_mut(&pid)?
            .layer_of(header.ssrc, &header.ext_vals)?;
        t.ssrc_routes.insert(header.ssrc, (pid, layer));
        Some((pid, layer))
    }

    /// The heart of the SFU: one received packet to every consumer of its producer.
    fn forward(&mut self, now: Instant, tid: u64, pkt: RtpPacket) {
        self.counters.rtp_in += 1;
        self.counters.bytes_in += pkt.payload.len() as u64;
        let Some((pid, layer)) = self.route(tid, &pkt.header) else {
            return;
        };
        let Some(p) = self.producers.get_mut(&pid) else {
            return;
        };
        p.note_packet(now, layer, &pkt.header.ext_vals);
        // Forward the highest active layer; switching waits for a keyframe.
        let switched = p.select_layer(now, layer);
        let selected = layer == p.selected;
        if p.kind == Kind::Audio {
            // Speaker slots of the room are reviewed a few times a second, not per packet.
            let publisher = p.peer;
            self.schedule_slot_review(now, publisher);
        }
        if switched {
            self.layer_switched(now, pid);
        }
        if !selected {
            return;
        }
        let p = &self.producers[&pid];
        if p.paused {
            return;
        }
        let codec = p.spec.codec;
        let video = p.kind == Kind::Video;
        let incoming = Incoming {
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            clock_rate: codec.clock_rate,
            video,
            keyframe: video && is_keyframe(&codec, &pkt.payload),
        };
        let ext = ExtensionValues {
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            video_orientation: pkt.header.ext_vals.video_orientation,
            ..Default::default()
        };
        let mut want_keyframe = false;
        // Disjoint fields: the producer's list is read while consumers and transports
        // change, so the per-packet path copies no list.
        let Engine {
            producers,
            consumers,
            transports,
            dirty,
            counters,
            peers,
            join_times,
            ..
        } = self;
        let p = &producers[&pid];
        note_first_media(peers, join_times, p.peer, now);
        for cid in &p.consumers {
            let Some(c) = consumers.get_mut(cid) else {
                continue;
            };
            if c.paused {
                continue;
            }
            let Some(t) = transports.get_mut(&c.transport) else {
                continue;
            };
            let (seq, ts) = match c.admit(now, t.rtc.is_connected(), &incoming) {
                Admit::Write { seq, ts } => (seq, ts),
                Admit::WaitKeyframe => {
                    want_keyframe = true;
                    continue;
                }
                Admit::Drop => continue,
            };
            let mut api = t.rtc.direct_api();
            let Some(tx) = api.stream_tx(&c.ssrc) else {
                continue;
            };
            let write = RtpWrite::new(c.pt.into(), seq.into(), ts, now, pkt.payload.clone())
                .marker(pkt.header.marker)
                .ext_vals(ext.clone())
                .nackable(video);
            tx.write_rtp(write);
            counters.rtp_out += 1;
            if !c.media_noted {
                c.media_noted = true;
                note_first_media(peers, join_times, c.peer, now);
            }
            if !t.dirty {
                t.dirty = true;
                dirty.push(t.id);
            }
        }
        if want_keyframe {
            self.request_keyframe(now, pid);
        }
    }
}

/// Arms a transport's wake-up for `at`, unless one no later is armed already (that one
/// comes first and re-arms for the deadline then). A superseded entry stays in the heap,
/// stale.
#[inline]
fn arm(timers: &mut BinaryHeap<Reverse<(Instant, u64)>>, t: &mut Transport, at: Instant) {
    if t.timer.is_none_or(|armed| at < armed) {
        t.timer = Some(at);
        timers.push(Reverse((at, t.id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::ortc::{RtpParameters, EXT_MID, EXT_RID};
    use crate::sfu::transport::Direction;

    fn engine() -> Engine {
        Engine::new(1 << 40, "10.0.0.1:40000".parse().unwrap()).unwrap()
    }

    /// A joined peer's transport, by id.
    fn transport(e: &mut Engine, now: Instant, peer: PeerId, dir: Direction) -> u64 {
        e.join(now, peer, "r", &format!("u{peer}"), "U", None)
            .unwrap();
        let t = e.create_transport(now, peer, dir).unwrap();
        parse_id("t", &t.id).unwrap()
    }

    /// Every transport has exactly one live wake-up, no later than its deadline; the top
    /// is live; stale entries never pile up.
    fn check_timers(e: &Engine) {
        let live = e
            .timers
            .iter()
            .filter(|Reverse((at, id))| e.transports.get(id).is_some_and(|t| t.timer == Some(*at)))
            .count();
        assert_eq!(live, e.transports.len());
        assert!(e
            .transports
            .values()
            .all(|t| t.timer.is_some_and(|at| at <= t.deadline)));
        if let Some(Reverse((at, id))) = e.timers.peek() {
            assert_eq!(e.transports[id].timer, Some(*at), "the top is live");
        }
        assert!(e.timers.len() <= 2 * e.transports.len() + 64);
    }

    #[test]
    fn an_earlier_deadline_supersedes_the_wake_up_and_stale_ones_are_dropped() {
        let t0 = Instant::now();
        let mut e = engine();
        let id = transport(&mut e, t0, 1, Direction::Recv);
        check_timers(&e);
        let at = |s: u64| t0 + Duration::from_secs(s);
        {
            let Engine {
                timers, transports, ..
            } = &mut e;
            timers.clear();
            let t = transports.get_mut(&id).unwrap();
            t.timer = None;
            t.deadline = at(20);
            arm(timers, t, at(10));
            arm(timers, t, at(20)); // later: the wake-up at 10 s stays
            assert_eq!(timers.len(), 1);
            arm(timers, t, at(5)); // earlier: the one at 10 s is stale now
            assert_eq!(timers.len(), 2);
        }
        assert_eq!(e.poll_timeout(), Some(at(5)));
        // Woken at 6 s, not due (the deadline is 20 s): re-armed for the deadline, and
        // the stale entry at 10 s is gone from the top.
        e.handle_timeout(at(6));
        assert_eq!(e.poll_timeout(), Some(at(20)));
        assert_eq!(e.timers.len(), 1);
        check_timers(&e);
        // Many superseded entries behind a live top: the heap is rebuilt.
        for s in (0..200).rev() {
            let Engine {
                timers, transports, ..
            } = &mut e;
            arm(
                timers,
                transports.get_mut(&id).unwrap(),
                at(7) + Duration::from_millis(s),
            );
        }
        e.settle_timers();
        assert_eq!(e.timers.len(), 1);
        check_timers(&e);
        e.leave(at(7), 1);
        assert_eq!(e.poll_timeout(), None);
        assert!(e.timers.is_empty());
    }

    #[test]
    fn wake_ups_follow_their_transports() {
        let t0 = Instant::now();
        let mut e = engine();
        for peer in 1..=40 {
            transport(&mut e, t0, peer, Direction::Recv);
        }
        check_timers(&e);
        let mut now = t0;
        for round in 0..600 {
            now += Duration::from_millis(50);
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
            if round % 30 == 0 {
                e.leave(now, 1 + round / 30);
            }
            check_timers(&e);
        }
        for peer in 1..=40 {
            e.leave(now, peer);
        }
        assert_eq!(e.transports(), 0);
        assert_eq!(e.poll_timeout(), None);
        assert!(e.timers.is_empty());
    }

    /// A STUN binding request for `ufrag`, its MESSAGE-INTEGRITY made with `pass`.
    fn stun(ufrag: &str, pass: &str) -> Vec<u8> {
        let user = format!("{ufrag}:client");
        let msg = StunMessage::binding_request(
            &user,
            str0m::ice::TransId::new(),
            true,
            7,
            1_845_501_695,
            true,
        );
        let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
        let mut buf = vec![0u8; 1500];
        let n = msg
            .to_bytes(Some(pass.as_bytes()), &mut buf, |k, p| hmac.sha1_hmac(k, p))
            .unwrap();
        buf.truncate(n);
        buf
    }

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((
            [10, 9, (i >> 16) as u8, (i >> 8) as u8],
            1024 + (i & 0xff) as u16,
        ))
    }

    #[test]
    fn forged_stun_binds_nothing_and_good_stun_binds_up_to_the_cap() {
        let now = Instant::now();
        let mut e = engine();
        e.set_transport_limits(TransportLimits {
            sources_per_transport: 3,
            ..TransportLimits::default()
        });
        let id = transport(&mut e, now, 1, Direction::Recv);
        let (ufrag, pass) = {
            let t = &e.transports[&id];
            (t.ufrag.clone(), t.ice_pass.clone())
        };
        // Forged: the right ufrag, the wrong password, each from a new address.
        let forged = stun(&ufrag, "not-the-password-at-all");
        for i in 0..20_000 {
            assert!(!e.handle_datagram(now, addr(i), &forged));
        }
        let c = e.counters();
        assert_eq!(c.stun_forged, 20_000);
        assert_eq!(e.bound_sources(), 0);
        assert!(e.transports[&id].sources.is_empty());
        assert_eq!(e.transports[&id].remote_ufrag, None, "nothing learnt");
        // From one address, only its packet rate is even looked at.
        for _ in 0..1000 {
            e.handle_datagram(now, addr(99_999), &forged);
        }
        let c = e.counters();
        assert_eq!(c.stun_forged, 20_000 + 50);
        assert_eq!(c.unbound_dropped, 950);
        // Good requests bind, up to the cap; the rest are refused and counted.
        let good = stun(&ufrag, &pass);
        for i in 0..5 {
            e.handle_datagram(now, addr(200_000 + i), &good);
        }
        assert_eq!(e.bound_sources(), 3);
        assert_eq!(e.counters().sources_refused, 2);
        assert_eq!(e.transports[&id].sources.len(), 3);
        assert_eq!(e.transports[&id].remote_ufrag.as_deref(), Some("client"));
        // A bound address goes by the address table from now on.
        let before = e.counters();
        assert!(e.handle_datagram(now, addr(200_000), &forged));
        assert_eq!(e.counters().stun_forged, before.stun_forged);
        // A restart's new password: the old one no longer binds.
        let ice = e.restart_ice(now, 1, &wire_id("t", id)).unwrap();
        let stale = stun(&ice.username_fragment, &pass);
        e.handle_datagram(now, addr(300_000), &stale);
        assert_eq!(e.counters().stun_forged, before.stun_forged + 1);
        e.leave(now, 1);
        assert_eq!(e.bound_sources(), 0);
    }

    #[test]
    fn a_mediasoup_transport_is_on_the_clock_from_its_first_use() {
        let t0 = Instant::now();
        let mut e = engine();
        e.set_transport_limits(TransportLimits {
            connect_timeout: Duration::from_secs(2),
            ..TransportLimits::default()
        });
        let tid = transport(&mut e, t0, 1, Direction::Recv);
        let step = |e: &mut Engine, from: Instant, to: Instant| {
            let mut now = from;
            while now < to {
                now += Duration::from_millis(50);
                if e.poll_timeout().is_some_and(|t| t <= now) {
                    e.handle_timeout(now);
                }
            }
        };
        // Made at join and not used: held as long as its session wants.
        let t1 = t0 + Duration::from_secs(10);
        step(&mut e, t0, t1);
        assert_eq!(e.transports(), 1);
        // First use (here a consume of nothing: the request fails, the use counts).
        let _ = e.consume(t1, 1, &wire_id("t", tid), "p999", None);
        step(&mut e, t1, t1 + Duration::from_millis(1900));
        assert_eq!(e.transports(), 1);
        step(
            &mut e,
            t1 + Duration::from_millis(1900),
            t1 + Duration::from_millis(2200),
        );
        assert_eq!(e.transports(), 0);
        assert_eq!(e.counters().connect_timeouts, 1);
    }

    #[test]
    fn a_transport_that_does_not_connect_in_time_is_released() {
        let t0 = Instant::now();
        let mut e = engine();
        e.set_transport_limits(TransportLimits {
            connect_timeout: Duration::from_secs(2),
            ..TransportLimits::default()
        });
        // Peer 1 publishes on a send transport that never connects; peer 2 watches.
        let tid = transport(&mut e, t0, 1, Direction::Send);
        e.join(t0, 2, "r", "u2", "U", None).unwrap();
        let vp8 =
            serde_json::json!([{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}]);
        let declared = params(serde_json::json!({
            "mid": "0", "codecs": vp8, "encodings": [{"ssrc": 1234}], "rtcp": {"cname": "c"}
        }));
        let pid = e
            .produce(t0, 1, &wire_id("t", tid), Kind::Video, &declared)
            .unwrap();
        // Peer 3 lives for its transport alone (as a WHIP peer does).
        let one_shot = transport(&mut e, t0, 3, Direction::Send);
        e.set_one_shot(3);
        // As the SDP bridge's transports are: on the clock from the start.
        e.arm_connect_deadline(t0, one_shot);
        while e.poll_notice().is_some() {}
        assert!(e
            .poll_timeout()
            .is_some_and(|t| t <= t0 + Duration::from_secs(2)));

        // Stepped on a virtual clock: nothing happens before the deadline.
        let mut now = t0;
        while now < t0 + Duration::from_millis(1990) {
            now += Duration::from_millis(10);
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
        }
        assert_eq!(e.transports(), 2);
        assert_eq!(e.counters().connect_timeouts, 0);
        while now < t0 + Duration::from_millis(2100) {
            now += Duration::from_millis(10);
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
        }
        assert_eq!(e.transports(), 0);
        assert_eq!(e.producers(), 0);
        assert_eq!(e.counters().connect_timeouts, 2);
        let notices: Vec<_> = std::iter::from_fn(|| e.poll_notice()).collect();
        let closed =
            |n: &Notice| matches!(n, Notice::ProducerClosed { producer_id } if *producer_id == pid);
        assert!(
            notices.iter().any(|(to, n)| *to == 2 && closed(n)),
            "{notices:?}"
        );
        assert!(notices.iter().any(|(to, n)| *to == 1
            && matches!(n, Notice::TransportClosed { transport_id, reason }
                if *transport_id == wire_id("t", tid) && reason.contains("limits.connect_timeout_ms"))));
        // Peer 1 stays in the room; peer 3 left it.
        assert!(e.peers.contains_key(&1));
        assert!(!e.peers.contains_key(&3));
        assert!(notices
            .iter()
            .any(|(to, n)| *to == 3 && matches!(n, Notice::MediaFailed { .. })));
        assert!(notices
            .iter()
            .any(|(to, n)| *to == 2 && matches!(n, Notice::PeerLeft { peer: 3, .. })));
        assert!(!notices
            .iter()
            .any(|(_, n)| matches!(n, Notice::PeerLeft { peer: 1, .. })));
        assert!(e.own_transport(1, &wire_id("t", tid)).is_err());
        assert!(e.own_transport(3, &wire_id("t", one_shot)).is_err());
        assert_eq!(e.poll_timeout(), None, "no wake-up left behind");
        assert!(e.connect_deadlines.is_empty());
    }

    fn params(v: serde_json::Value) -> RtpParameters {
        serde_json::from_value(v).unwrap()
    }

    fn header(ssrc: u32, mid: Option<&str>, rid: Option<&str>) -> RtpHeader {
        RtpHeader {
            ssrc: ssrc.into(),
            ext_vals: ExtensionValues {
                mid: mid.map(Mid::from),
                rid: rid.map(Into::into),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn ssrc_routes_are_declared_learnt_and_forgotten_with_their_producer() {
        let now = Instant::now();
        let mut e = engine();
        let tid = transport(&mut e, now, 1, Direction::Send);
        let tw = wire_id("t", tid);
        let exts = serde_json::json!([{"uri": EXT_MID, "id": 4}, {"uri": EXT_RID, "id": 10}]);
        let vp8 =
            serde_json::json!([{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}]);
        let declared = params(serde_json::json!({
            "mid": "0", "codecs": vp8, "headerExtensions": exts,
            "encodings": [{"ssrc": 1234}], "rtcp": {"cname": "c"}
        }));
        let p0 = e.produce(now, 1, &tw, Kind::Video, &declared).unwrap();
        let p0 = parse_id("p", &p0).unwrap();
        let routes = |e: &Engine| {
            let mut r: Vec<(u32, (u64, usize))> = e.transports[&tid]
                .ssrc_routes
                .iter()
                .map(|(s, r)| (**s, *r))
                .collect();
            r.sort_unstable();
            r
        };
        assert_eq!(routes(&e), vec![(1234, (p0, 0))], "declared");
        let simulcast = params(serde_json::json!({
            "mid": "1", "codecs": vp8, "headerExtensions": exts,
            "encodings": [{"rid": "l"}, {"rid": "h"}], "rtcp": {"cname": "c"}
        }));
        let p1 = e.produce(now, 1, &tw, Kind::Video, &simulcast).unwrap();
        let p1 = parse_id("p", &p1).unwrap();
        assert_eq!(routes(&e).len(), 1, "rid layers are learnt, not declared");

        // Learnt from mid + rid, then found by SSRC alone.
        assert_eq!(
            e.route(tid, &header(7, Some("1"), Some("h"))),
            Some((p1, 1))
        );
        assert_eq!(e.route(tid, &header(7, None, None)), Some((p1, 1)));
        assert_eq!(e.route(tid, &header(1234, None, None)), Some((p0, 0)));
        // Unknown SSRC without a mid: nobody's.
        assert_eq!(e.route(tid, &header(8, None, None)), None);
        // Another producer's mid on a known SSRC goes by the mid (and is not its layer).
        assert_eq!(e.route(tid, &header(1234, Some("1"), None)), None);
        assert_eq!(routes(&e), vec![(7, (p1, 1)), (1234, (p0, 0))]);

        // Closing a producer forgets its SSRCs, and only its own.
        e.close_producer(now, 1, &wire_id("p", p1)).unwrap();
        assert_eq!(routes(&e), vec![(1234, (p0, 0))]);
        assert_eq!(e.route(tid, &header(7, None, None)), None);
        // The SSRC used again by a new producer routes to it.
        e.close_producer(now, 1, &wire_id("p", p0)).unwrap();
        assert!(routes(&e).is_empty());
        let p2 = e.produce(now, 1, &tw, Kind::Video, &declared).unwrap();
        let p2 = parse_id("p", &p2).unwrap();
        assert_eq!(e.route(tid, &header(1234, None, None)), Some((p2, 0)));
    }
}
