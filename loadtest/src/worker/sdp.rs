//! WHIP publishers and WHEP subscribers (SDP mode of the str0m client) in a worker.
//!
//! A WHIP publisher offers one sendonly section of its kind and POSTs it at once. A WHEP
//! subscriber waits until no publisher of its room is still pending (WHEP has no
//! renegotiation: the answer covers what is published at the time), then offers one
//! recvonly section per publisher that has a producer and POSTs it. The POSTs run on the
//! worker's helper threads ([`crate::whip::HttpPool`]); their answers are taken on the
//! housekeeping tick, which connects the UDP socket to the answer's candidate and starts
//! ICE and DTLS. Media, stamps and figures are those of the `/ws` mode. Every resource
//! created is DELETEd when the run ends.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corelay_testkit::client::Client;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};

use super::{
    net, token, Endpoint, Peer, Plan, Role, SeqWindow, Track, Worker, CLIENT_RECV_BUFFER,
    PUB_PENDING, PUB_READY,
};
use crate::whip::{sdp_candidate, Done, HttpPool, HttpTarget, Job, Reply, What};

/// How long the DELETEs at the end may take in all.
const DELETE_WAIT: Duration = Duration::from_secs(3);

pub(super) struct SdpPeer {
    target: Arc<HttpTarget>,
    token: String,
    /// Until the answer: the client and its socket (bound, connected to the HTTP host
    /// only to learn the local address).
    pre: Option<(Client, UdpSocket)>,
    pending: Option<SdpPendingOffer>,
    posted: bool,
    /// The resource path from `Location`.
    resource: Option<String>,
    /// Publisher: its section.
    mid: Option<Mid>,
    /// Subscriber: the publishers its offer asks for.
    publishers: Vec<u32>,
}

/// A WHIP publisher's SSRC, once str0m has its stream (after the answer).
pub(super) fn resolve_ssrc(s: &SdpPeer, ssrc: &mut u32, client: &mut Client) {
    if *ssrc != 0 {
        return;
    }
    if let Some(mid) = s.mid {
        if let Some(tx) = client.rtc.direct_api().stream_tx_by_mid(mid, None) {
            *ssrc = *tx.ssrc();
        }
    }
}

fn label(role: Role) -> &'static str {
    match role {
        Role::Subscriber => "whep",
        _ => "whip",
    }
}

fn udp_socket(toward: SocketAddr) -> std::io::Result<(UdpSocket, SocketAddr)> {
    let bind: SocketAddr = if toward.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind)?;
    // Learn the local address the server's host is reached from; the socket is connected
    // again to the media candidate once the answer names it.
    s.connect(toward)?;
    s.set_nonblocking(true)?;
    let _ = net::set_recv_buffer(s.as_raw_fd(), CLIENT_RECV_BUFFER);
    let local = s.local_addr()?;
    Ok((s, local))
}

impl Worker {
    pub(super) fn start_sdp_peer(
        &mut self,
        plan: Plan,
        token_text: String,
        target: Arc<HttpTarget>,
        now: Instant,
    ) {
        let idx = self.peers.len();
        let mut peer = Peer::new(plan, now);
        if peer.is_publisher() {
            peer.ssrc = 0; // str0m picks it; known after the answer
            self.publishers.push(idx);
        }
        let mut s = SdpPeer {
            target,
            token: token_text,
            pre: None,
            pending: None,
            posted: false,
            resource: None,
            mid: None,
            publishers: Vec::new(),
        };
        match udp_socket(s.target.addr) {
            Ok((socket, local)) => {
                let mut client = Client::new(now, local);
                let kind = match peer.plan.role {
                    Role::Video => Some(MediaKind::Video),
                    Role::Audio => Some(MediaKind::Audio),
                    Role::Subscriber => None,
                };
                if let Some(kind) = kind {
                    let mut change = client.rtc.sdp_api();
                    s.mid = Some(change.add_media(kind, Direction::SendOnly, None, None, None));
                    if let Some((offer, pending)) = change.apply() {
                        self.post(idx, &peer.plan, &s, offer.to_sdp_string());
                        s.pending = Some(pending);
                    }
                    s.posted = true;
                }
                s.pre = Some((client, socket));
            }
            Err(_) => {
                self.stats.error(peer.plan.room, "udp_socket");
                peer.dead = true;
            }
        }
        peer.sdp = Some(s);
        self.peers.push(peer);
        if self.peers[idx].dead {
            self.mark_gone(idx);
        }
    }

    fn mark_gone(&mut self, i: usize) {
        let peer = &self.peers[i];
        if peer.is_publisher() {
            if let Some(s) = self.shared.pub_state.get(peer.plan.id as usize) {
                let _ = s.compare_exchange(
                    PUB_PENDING,
                    super::PUB_GONE,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
    }

    fn post(&self, i: usize, plan: &Plan, s: &SdpPeer, offer: String) {
        let Some(http) = self.http.as_ref() else {
            return;
        };
        http.submit(Job {
            peer: i,
            what: What::Post,
            target: s.target.clone(),
            path: s.target.room_path(&self.cfg.rooms[plan.room]),
            token: s.token.clone(),
            body: Some(offer),
            timeout: self.cfg.connect_timeout,
        });
    }

    /// Answers that came back, and WHEP subscribers whose publishers are now known.
    pub(super) fn sdp_housekeeping(&mut self, now: Instant) {
        while let Some(done) = self.http.as_ref().and_then(|h| h.results.try_recv().ok()) {
            self.on_http(done, now);
        }
        for i in 0..self.peers.len() {
            let peer = &self.peers[i];
            let waiting =
                !peer.dead && !peer.is_publisher() && peer.sdp.as_ref().is_some_and(|s| !s.posted);
            if waiting {
                self.offer_whep(i);
            }
        }
    }

    /// Offers once no publisher of the room is pending: a recvonly section per publisher
    /// with a producer.
    fn offer_whep(&mut self, i: usize) {
        let room = self.peers[i].plan.room;
        let pubs = &self.cfg.room_publishers[room];
        let state = |id: u32| self.shared.pub_state[id as usize].load(Ordering::Relaxed);
        if pubs.iter().any(|&(id, _)| state(id) == PUB_PENDING) {
            return;
        }
        let ready: Vec<(u32, Role)> = pubs
            .iter()
            .copied()
            .filter(|&(id, _)| state(id) == PUB_READY)
            .collect();
        if ready.is_empty() {
            return self.fail(i, Some("whep:nothing_published"));
        }
        let peer = &mut self.peers[i];
        let Some(s) = peer.sdp.as_mut() else {
            return;
        };
        let Some((client, _)) = s.pre.as_mut() else {
            return;
        };
        let mut change = client.rtc.sdp_api();
        for &(_, role) in &ready {
            let kind = if role == Role::Audio {
                MediaKind::Audio
            } else {
                MediaKind::Video
            };
            change.add_media(kind, Direction::RecvOnly, None, None, None);
        }
        s.posted = true;
        s.publishers = ready.iter().map(|p| p.0).collect();
        let Some((offer, pending)) = change.apply() else {
            return self.fail(i, Some("whep:no_offer"));
        };
        s.pending = Some(pending);
        let plan = peer.plan.clone();
        let s = self.peers[i].sdp.take().expect("sdp state");
        self.post(i, &plan, &s, offer.to_sdp_string());
        self.peers[i].sdp = Some(s);
    }

    fn on_http(&mut self, done: Done, now: Instant) {
        let i = done.peer;
        let (room, role) = (self.peers[i].plan.room, self.peers[i].plan.role);
        let kind = label(role);
        match (done.what, done.result) {
            (What::Delete, Ok(r)) if (200..300).contains(&r.status) => {}
            (What::Delete, Ok(r)) => self
                .stats
                .error(room, &format!("{kind}_delete:{}", r.status)),
            (What::Delete, Err(e)) => self.stats.error(room, &format!("{kind}_delete:{e}")),
            (What::Post, Ok(r)) if r.status == 201 => self.on_answer_sdp(i, r, now),
            (What::Post, Ok(r)) => {
                self.mark_gone(i);
                self.fail(i, Some(&format!("{kind}:{}", r.status)));
            }
            (What::Post, Err(e)) => {
                self.mark_gone(i);
                self.fail(i, Some(&format!("{kind}:{e}")));
            }
        }
    }

    fn on_answer_sdp(&mut self, i: usize, reply: Reply, now: Instant) {
        let room_name = self.cfg.rooms[self.peers[i].plan.room].clone();
        let peer = &mut self.peers[i];
        let Some(s) = peer.sdp.as_mut() else {
            return;
        };
        s.resource = reply
            .location
            .as_deref()
            .map(|l| s.target.resolve(l, &room_name));
        if peer.dead {
            return; // deleted at the end
        }
        let kind = label(peer.plan.role);
        if s.resource.is_none() {
            self.stats
                .error(peer.plan.room, &format!("{kind}:no_location"));
        }
        let (Some((mut client, socket)), Some(pending)) = (s.pre.take(), s.pending.take()) else {
            return self.fail(i, Some("bad_answer"));
        };
        let answer = match SdpAnswer::from_sdp_string(&reply.body) {
            Ok(a) => a,
            Err(_) => return self.fail(i, Some("bad_answer")),
        };
        if client.rtc.sdp_api().accept_answer(pending, answer).is_err() {
            return self.fail(i, Some("bad_answer"));
        }
        let Some(server) = sdp_candidate(&reply.body) else {
            return self.fail(i, Some("bad_answer"));
        };
        if socket.connect(server).is_err() {
            return self.fail(i, Some("udp_socket"));
        }
        if self.poller.add(socket.as_raw_fd(), token(i, true)).is_err() {
            return self.fail(i, Some("epoll"));
        }
        let peer = &mut self.peers[i];
        let s = peer.sdp.as_ref().expect("sdp state");
        if peer.is_publisher() {
            resolve_ssrc(s, &mut peer.ssrc, &mut client);
            peer.producing = true;
            peer.next_send = now;
            if let Some(st) = self.shared.pub_state.get(peer.plan.id as usize) {
                st.store(PUB_READY, Ordering::Relaxed);
            }
            self.next_media = self.next_media.min(now);
        } else {
            for &p in &s.publishers {
                let sent = self.shared.sent[p as usize].load(Ordering::Relaxed);
                peer.tracks.push(Track {
                    producer: String::new(),
                    publisher: Some(p),
                    window: SeqWindow::default(),
                    bytes: 0,
                    resume_seq: Some(sent),
                });
            }
        }
        client.handle_timeout(now);
        peer.ep = Some(Endpoint {
            client,
            socket,
            server,
        });
        self.after_input(i, now);
    }

    /// DELETEs every resource created (of live and failed peers), waiting a bounded time.
    pub(super) fn delete_resources(&mut self) {
        let Some(http) = self.http.take() else {
            return;
        };
        let mut outstanding: Vec<usize> = Vec::new();
        for (i, p) in self.peers.iter_mut().enumerate() {
            if let Some(s) = p.sdp.as_mut() {
                if submit_delete(&http, i, s) {
                    outstanding.push(i);
                }
            }
        }
        let end = Instant::now() + DELETE_WAIT;
        while !outstanding.is_empty() {
            let left = end.saturating_duration_since(Instant::now());
            let Ok(done) = http.results.recv_timeout(left) else {
                break;
            };
            let i = done.peer;
            match done.what {
                What::Delete => {
                    if let Some(k) = outstanding.iter().position(|&p| p == i) {
                        outstanding.swap_remove(k);
                    }
                    self.on_http(done, Instant::now());
                }
                What::Post => {
                    // An answer that came too late: its resource exists; delete it too.
                    let room = self.cfg.rooms[self.peers[i].plan.room].clone();
                    let location = done.result.ok().filter(|r| r.status == 201);
                    if let (Some(s), Some(l)) = (
                        self.peers[i].sdp.as_mut(),
                        location.and_then(|r| r.location),
                    ) {
                        s.resource = Some(s.target.resolve(&l, &room));
                        if submit_delete(&http, i, s) {
                            outstanding.push(i);
                        }
                    }
                }
            }
        }
        for i in outstanding {
            let peer = &self.peers[i];
            let kind = format!("{}_delete:timeout", label(peer.plan.role));
            self.stats.error(peer.plan.room, &kind);
        }
    }
}

fn submit_delete(http: &HttpPool, i: usize, s: &mut SdpPeer) -> bool {
    let Some(path) = s.resource.take() else {
        return false;
    };
    http.submit(Job {
        peer: i,
        what: What::Delete,
        target: s.target.clone(),
        path,
        token: s.token.clone(),
        body: None,
        timeout: Duration::from_secs(2),
    });
    true
}
