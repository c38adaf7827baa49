//! Hostile clients (issue 14), finding 5 and the duplicate-userId part of finding 8: each
//! resource a client may make is capped by a `limits.*` setting, lowered here so that the
//! attack runs at a small scale against the real binary. The attacker gets an error
//! naming the setting and its session stays; victims in its room and in another room keep
//! working, and what the attacker held is released when it goes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corelay::sfu::ortc::{EXT_MID, VP8};
use corelay_testkit::client::ClientEvent;
use corelay_testkit::*;
use serde_json::{json, Value};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};
use tungstenite::Message;

// ------------------------------------------------------------------ mediasoup dialect

/// A mediasoup-dialect connection that sets events aside while waiting for answers.
struct Signal {
    ws: Ws,
    next: u64,
    events: VecDeque<Value>,
}

impl Signal {
    fn open(port: u16, user: &str, room: Option<&str>) -> Signal {
        let ws = ws_connect(port, &format!("/ws?token={}", token(user, room))).unwrap();
        Signal {
            ws,
            next: 0,
            events: VecDeque::new(),
        }
    }

    /// The answer's `data`, or its `error`.
    fn try_request(&mut self, kind: &str, data: Value) -> Result<Value, Value> {
        self.next += 1;
        let id = format!("r{}", self.next);
        send_text(
            &mut self.ws,
            &json!({"type": kind, "data": data, "requestId": id}).to_string(),
        );
        loop {
            let msg = recv_json(&mut self.ws);
            if msg["type"] == "response" && msg["requestId"] == id.as_str() {
                return match msg.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(msg["data"].clone()),
                };
            }
            self.events.push_back(msg);
        }
    }

    fn request(&mut self, kind: &str, data: Value) -> Value {
        self.try_request(kind, data)
            .unwrap_or_else(|e| panic!("{kind} failed: {e}"))
    }

    /// The request is refused with `limit_exceeded`, the message naming `setting`.
    fn refused(&mut self, kind: &str, data: Value, setting: &str) -> String {
        let e = self
            .try_request(kind, data)
            .expect_err("refused over the limit");
        assert_eq!(e["code"], "limit_exceeded", "{kind}: {e}");
        let message = e["message"].as_str().unwrap().to_string();
        assert!(message.contains(setting), "{kind}: {message}");
        message
    }

    /// The request is refused with `bad_request` and a message containing `says`.
    fn bad(&mut self, kind: &str, data: Value, says: &str) {
        let e = self.try_request(kind, data).expect_err("refused");
        assert_eq!(e["code"], "bad_request", "{kind}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{kind}: {e}");
    }

    /// Every event that came until now (a round trip makes sure the server sent them).
    fn drain_events(&mut self) -> Vec<Value> {
        self.try_request("no-such-request", json!({})).unwrap_err();
        self.events.drain(..).collect()
    }
}

/// Opens a transport for an endpoint through the signaling connection.
fn open_transport(ep: &mut Endpoint, sig: &mut Signal, direction: &str) -> (String, SocketAddr) {
    let t = sig.request("create-transport", json!({"direction": direction}));
    ep.client.connect(Instant::now(), &t).unwrap();
    let id = t["id"].as_str().unwrap().to_string();
    let dtls = ep.client.dtls_parameters();
    sig.request(
        "connect-transport",
        json!({"transportId": id, "dtlsParameters": dtls}),
    );
    let port = t["iceCandidates"][0]["port"].as_u64().unwrap() as u16;
    (id, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A publisher and a subscriber of one VP8 track in one room, with real media.
struct MediaRoom {
    publisher: Endpoint,
    subscriber: Endpoint,
    pub_sig: Signal,
    sub_sig: Signal,
    producer: String,
    ssrc: u32,
    seq: u64,
    ts: u32,
}

impl MediaRoom {
    fn open(port: u16, room: &str, tag: &str) -> MediaRoom {
        let mut pub_sig = Signal::open(port, &format!("{tag}-pub"), Some(room));
        pub_sig.request("join-room", json!({}));
        let mut publisher = Endpoint::new();
        let (send_t, _) = open_transport(&mut publisher, &mut pub_sig, "send");
        let ssrc = 4242;
        let params = publisher.client.add_sender(&VP8, ssrc, Some(ssrc + 1));
        let produced = pub_sig.request(
            "produce",
            json!({"transportId": send_t, "kind": "video", "rtpParameters": params}),
        );
        let producer = produced["id"].as_str().unwrap().to_string();
        let mut sub_sig = Signal::open(port, &format!("{tag}-sub"), Some(room));
        sub_sig.request("join-room", json!({}));
        let mut subscriber = Endpoint::new();
        let (recv_t, _) = open_transport(&mut subscriber, &mut sub_sig, "recv");
        let consumed = sub_sig.request(
            "consume",
            json!({"transportId": recv_t, "producerId": producer}),
        );
        subscriber
            .client
            .add_receiver("video", &consumed["rtpParameters"])
            .unwrap();
        sub_sig.request("resume-consumer", json!({"consumerId": consumed["id"]}));
        let mut m = MediaRoom {
            publisher,
            subscriber,
            pub_sig,
            sub_sig,
            producer,
            ssrc,
            seq: 1,
            ts: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(m.publisher.client.is_connected() && m.subscriber.client.is_connected()) {
            assert!(Instant::now() < deadline, "ICE/DTLS did not complete");
            m.pump();
            std::thread::sleep(Duration::from_millis(2));
        }
        m
    }

    fn pump(&mut self) {
        self.publisher.pump();
        self.subscriber.pump();
    }

    /// Sends keyframes until the subscriber got `want` packets (or a generous deadline);
    /// returns how many it got.
    fn flows(&mut self, want: u64) -> u64 {
        self.subscriber.client.events.clear();
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while got < want && Instant::now() < deadline {
            let payload = [[0x10u8, 0x00].as_slice(), &[0x5a; 500]].concat();
            self.publisher.client.send_rtp(
                Instant::now(),
                self.ssrc,
                VP8.pt,
                self.seq,
                self.ts,
                true,
                &payload,
            );
            self.seq += 1;
            self.ts = self.ts.wrapping_add(3000);
            for _ in 0..10 {
                self.pump();
                std::thread::sleep(Duration::from_millis(1));
            }
            while let Some(e) = self.subscriber.client.events.pop_front() {
                got += matches!(e, ClientEvent::Rtp(_)) as u64;
            }
        }
        got
    }
}

/// Sums of the shards' figures in `/health`: (transports, producers, consumers).
fn held(server: &Server) -> (u64, u64, u64) {
    let h = server.health();
    let sum = |k: &str| {
        h["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[k].as_u64().unwrap())
            .sum::<u64>()
    };
    (sum("transports"), sum("producers"), sum("consumers"))
}

/// Waits (bounded) until `held` is `want`.
fn wait_held(server: &Server, want: (u64, u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = held(server);
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "held {now:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vp8_params(mid: &str, ssrc: u32) -> Value {
    json!({
        "mid": mid,
        "codecs": [
            {"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000},
            {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000, "parameters": {"apt": 96}}
        ],
        "headerExtensions": [{"uri": EXT_MID, "id": 4}],
        "encodings": [{"ssrc": ssrc, "rtx": {"ssrc": ssrc + 1}}],
        "rtcp": {"cname": "attacker"}
    })
}

fn produce(transport: &str, params: Value) -> Value {
    json!({"transportId": transport, "kind": "video", "rtpParameters": params})
}

/// Finding 5 in the mediasoup dialect: one session asks for more transports, producers
/// and consumers than its caps, and for produce requests with too many encodings, codecs
/// and header extensions, invalid and duplicate extension ids, a CNAME over the string
/// cap and duplicate SSRCs. Each is refused with its own error; the attacker's session
/// stays; a publisher and subscriber in its room and in another room keep forwarding; what
/// the attacker held is released when it closes.
#[test]
fn mediasoup_requests_over_the_caps_are_refused_and_the_rooms_keep_forwarding() {
    let server = Server::builder()
        .shards(2)
        .env("CORELAY_TRANSPORTS_PER_SESSION", "3")
        .env("CORELAY_PRODUCERS_PER_SESSION", "3")
        .env("CORELAY_PRODUCERS_PER_TRANSPORT", "2")
        .env("CORELAY_CONSUMERS_PER_SESSION", "2")
        .env("CORELAY_ENCODINGS_PER_REQUEST", "4")
        .env("CORELAY_CODECS_PER_REQUEST", "6")
        .env("CORELAY_HEADER_EXTENSIONS_PER_REQUEST", "8")
        .env("CORELAY_MAX_STRING_BYTES", "128")
        .spawn();
    let port = server.port;
    let mut same = MediaRoom::open(port, "caps", "same");
    let mut other = MediaRoom::open(port, "elsewhere", "other");
    assert!(same.flows(5) >= 5 && other.flows(5) >= 5, "media before");
    let victims = held(&server);
    assert_eq!(victims, (4, 2, 2));

    let mut a = Signal::open(port, "mallory", Some("caps"));
    a.request("join-room", json!({}));
    // Transports: three, then the fourth is refused.
    let t1 = a.request("create-transport", json!({"direction": "send"}))["id"].clone();
    let t2 = a.request("create-transport", json!({"direction": "send"}))["id"].clone();
    let t3 = a.request("create-transport", json!({"direction": "recv"}))["id"].clone();
    let (t1, t2, t3) = (
        t1.as_str().unwrap(),
        t2.as_str().unwrap(),
        t3.as_str().unwrap(),
    );
    a.refused(
        "create-transport",
        json!({"direction": "recv"}),
        "limits.transports_per_session",
    );

    // What one produce may carry.
    let mut p = vp8_params("0", 1000);
    p["encodings"] = json!((0..5)
        .map(|i| json!({"rid": format!("r{i}")}))
        .collect::<Vec<_>>());
    a.refused("produce", produce(t1, p), "limits.encodings_per_request");
    let mut p = vp8_params("0", 1000);
    let codec = p["codecs"][0].clone();
    p["codecs"] = json!(vec![codec; 7]);
    a.refused("produce", produce(t1, p), "limits.codecs_per_request");
    let mut p = vp8_params("0", 1000);
    p["headerExtensions"] = json!((1..=9)
        .map(|i| json!({"uri": format!("urn:x:{i}"), "id": i}))
        .collect::<Vec<_>>());
    a.refused(
        "produce",
        produce(t1, p),
        "limits.header_extensions_per_request",
    );
    let mut p = vp8_params("0", 1000);
    p["headerExtensions"] = json!([{"uri": "urn:x:a", "id": 255}, {"uri": "urn:x:b", "id": 255}]);
    a.bad("produce", produce(t1, p), "id 255 is given to both");
    let mut p = vp8_params("0", 1000);
    p["headerExtensions"] = json!([{"uri": "urn:x:a", "id": 0}]);
    a.bad("produce", produce(t1, p), "RFC 8285");
    let mut p = vp8_params("0", 1000);
    let cname = "c".repeat(50 * 1024);
    p["rtcp"]["cname"] = json!(cname);
    let m = a.refused("produce", produce(t1, p), "limits.max_string_bytes");
    assert!(m.contains("rtcp.cname"), "{m}");
    let mut p = vp8_params("0", 1000);
    p["encodings"] = json!([{"ssrc": 1000, "rtx": {"ssrc": 1000}}]);
    a.bad("produce", produce(t1, p), "SSRC 1000 is declared twice");

    // Producers: two on a transport, a duplicate SSRC across them refused, three in all.
    a.request("produce", produce(t1, vp8_params("0", 1000)));
    a.bad(
        "produce",
        produce(t1, vp8_params("1", 1000)),
        "SSRC 1000 is already used",
    );
    a.bad(
        "produce",
        produce(t1, vp8_params("1", 999)),
        "SSRC 1000 is already used",
    );
    let p2 = a.request("produce", produce(t1, vp8_params("1", 2000)))["id"].clone();
    a.refused(
        "produce",
        produce(t1, vp8_params("2", 3000)),
        "limits.producers_per_transport",
    );
    a.request("produce", produce(t2, vp8_params("0", 4000)));
    a.refused(
        "produce",
        produce(t2, vp8_params("1", 5000)),
        "limits.producers_per_session",
    );

    // Consumers: two, then the third is refused.
    for _ in 0..2 {
        a.request(
            "consume",
            json!({"transportId": t3, "producerId": same.producer}),
        );
    }
    a.refused(
        "consume",
        json!({"transportId": t3, "producerId": same.producer}),
        "limits.consumers_per_session",
    );
    // rtpCapabilities are a codec list too.
    let caps = json!({"codecs": vec![json!({"mimeType": "video/VP8"}); 7]});
    a.refused(
        "consume",
        json!({"transportId": t3, "producerId": same.producer, "rtpCapabilities": caps}),
        "limits.codecs_per_request",
    );

    // The attacker's session stays and answers.
    a.request("pause-producer", json!({"producerId": p2}));
    assert_eq!(held(&server), (victims.0 + 3, victims.1 + 3, victims.2 + 2));

    // The victim subscriber heard of the three producers that were made, and of nothing
    // refused; consuming one shows the attacker's short CNAME, never the 50 KB one.
    let events = same.sub_sig.drain_events();
    let new: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "new-producer")
        .collect();
    assert_eq!(new.len(), 3, "{events:?}");
    assert!(events
        .iter()
        .all(|e| !e.to_string().contains(&cname[..1024])));
    assert!(same.flows(5) >= 5, "the same room forwards");
    assert!(other.flows(5) >= 5, "another room forwards");

    // Memory returns: the attacker goes, and with it all it held.
    drop(a);
    wait_held(&server, victims);
    assert!(same.flows(5) >= 5 && other.flows(5) >= 5, "media after");
    drop((same.pub_sig, same.sub_sig, other.pub_sig, other.sub_sig));
    wait_held(&server, (0, 0, 0));
}

/// Finding 5: members per room, rooms per shard (one shard, so the rooms share it), and
/// the string cap on a client's room name (the token's room) in the mediasoup dialect.
/// The newcomer is refused, the room never hears of it, and its session may try again
/// elsewhere.
#[test]
fn full_rooms_and_a_full_shard_refuse_only_the_newcomer() {
    let server = Server::builder()
        .shards(1)
        .env("CORELAY_MEMBERS_PER_ROOM", "2")
        .env("CORELAY_ROOMS_PER_SHARD", "2")
        .spawn();
    let port = server.port;
    let mut a = Signal::open(port, "a", None);
    let mut b = Signal::open(port, "b", None);
    let mut c = Signal::open(port, "c", None);
    a.request("join-room", json!({"roomId": "full"}));
    b.request("join-room", json!({"roomId": "full"}));
    c.refused(
        "join-room",
        json!({"roomId": "full"}),
        "limits.members_per_room",
    );
    // c takes a second room; the shard is then full for a third.
    c.request("join-room", json!({"roomId": "second"}));
    let mut d = Signal::open(port, "d", None);
    d.refused(
        "join-room",
        json!({"roomId": "third"}),
        "limits.rooms_per_shard",
    );
    // Nobody heard of the refused joins; the full room still works.
    let events = a.drain_events();
    let joined: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "peer-joined")
        .collect();
    assert_eq!(joined.len(), 1, "{events:?}");
    assert_eq!(joined[0]["data"]["userId"], "b");
    let t = b.request("create-transport", json!({"direction": "send"}));
    assert!(t["id"].is_string());
    // The second room empties and goes; now there is room on the shard.
    c.request("leave-room", json!({}));
    d.request("join-room", json!({"roomId": "third"}));
    assert_eq!(server.health()["shards"][0]["rooms"], 2);
}

// ------------------------------------------------------------------ WHIP, WHEP, /pubsub

/// An offer from a fresh str0m endpoint with `video` send-only video sections.
fn whip_offer(video: usize) -> (Endpoint, String, str0m::change::SdpPendingOffer, Vec<Mid>) {
    let mut ep = Endpoint::new();
    let mut change = ep.client.rtc.sdp_api();
    let mids = (0..video)
        .map(|_| change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None))
        .collect();
    let (offer, pending) = change.apply().unwrap();
    (ep, offer.to_sdp_string(), pending, mids)
}

/// The refusal's status and message (which names `setting`).
fn refused_http(r: &FullResponse, status: u16, setting: &str) {
    assert_eq!(r.0, status, "{}", r.2);
    let body: Value = serde_json::from_str(&r.2).unwrap();
    assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(setting), "{message}");
}

/// Finding 5 over WHIP and WHEP: an offer with too many m-lines (5,000 made 5,000
/// producers), too many sending sections, a line over the string cap (a huge CNAME), a
/// duplicate SSRC, and sessions per user. Each gets a 4xx naming the setting and leaves
/// nothing behind; a WHIP publisher in the room is still viewed over WHEP afterwards.
#[test]
fn whip_offers_over_the_caps_get_4xx_and_the_room_keeps_working() {
    let server = Server::builder()
        .shards(2)
        .env("CORELAY_MEDIA_SECTIONS_PER_OFFER", "4")
        .env("CORELAY_PRODUCERS_PER_TRANSPORT", "2")
        .env("CORELAY_SESSIONS_PER_USER", "2")
        .env("CORELAY_MAX_STRING_BYTES", "200")
        .spawn();
    let port = server.port;
    let room = "whipcaps";
    // The victim: a WHIP publisher.
    let (mut victim, offer, pending, mids) = whip_offer(1);
    let r = post_sdp(port, &format!("/whip/{room}"), "victim", room, &offer);
    assert_eq!(r.0, 201, "{}", r.2);
    let answer = SdpAnswer::from_sdp_string(&r.2).unwrap();
    victim
        .client
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();
    let before = held(&server);
    assert_eq!(before, (1, 1, 0));

    let whip = format!("/whip/{room}");
    let (_, offer, _, _) = whip_offer(5);
    refused_http(
        &post_sdp(port, &whip, "mallory", room, &offer),
        400,
        "limits.media_sections_per_offer",
    );
    let (_, offer, _, _) = whip_offer(3);
    refused_http(
        &post_sdp(port, &whip, "mallory", room, &offer),
        400,
        "limits.producers_per_transport",
    );
    // A 50 KB CNAME on an a=ssrc line (str0m's offer has none for a track without
    // media yet, so one is added to the section).
    let (_, offer, _, _) = whip_offer(1);
    let huge = format!("{offer}a=ssrc:77 cname:{}\r\n", "x".repeat(50 * 1024));
    refused_http(
        &post_sdp(port, &whip, "mallory", room, &huge),
        400,
        "limits.max_string_bytes",
    );
    let (_, offer, _, _) = whip_offer(2);
    let mut sections = offer
        .split("m=video")
        .map(str::to_string)
        .collect::<Vec<_>>();
    sections[1].push_str("a=ssrc:4711 cname:x\r\n");
    sections[2].push_str("a=ssrc:4711 cname:x\r\n");
    let dup = sections.join("m=video");
    let r = post_sdp(port, &whip, "mallory", room, &dup);
    assert_eq!(r.0, 400, "{}", r.2);
    assert!(r.2.contains("SSRC 4711"), "{}", r.2);
    assert_eq!(held(&server), before, "nothing is left of refused offers");

    // Sessions per user: two WHIP sessions of one user, then 429 naming the setting.
    let mut resources = Vec::new();
    for _ in 0..2 {
        let (_, offer, _, _) = whip_offer(1);
        let r = post_sdp(port, &whip, "mallory", room, &offer);
        assert_eq!(r.0, 201, "{}", r.2);
        resources.push(location(&r.1));
    }
    let (_, offer, _, _) = whip_offer(1);
    let r = post_sdp(port, &whip, "mallory", room, &offer);
    refused_http(&r, 429, "limits.sessions_per_user");
    assert!(r.1.iter().any(|(k, _)| k == "retry-after"), "{:?}", r.1);
    // Another user is not counted against mallory.
    let (_, offer, _, _) = whip_offer(1);
    let r = post_sdp(port, &whip, "trudy", room, &offer);
    assert_eq!(r.0, 201, "{}", r.2);
    let trudy = location(&r.1);
    // One ends; mallory may publish again.
    let auth = format!("Bearer {}", token("mallory", Some(room)));
    let r = http_with_headers(
        port,
        "DELETE",
        &resources.pop().unwrap(),
        &[("Authorization", auth.as_str())],
        b"",
    )
    .unwrap();
    assert_eq!(r.0, 200, "{}", r.2);
    let (_, offer, _, _) = whip_offer(1);
    assert_eq!(post_sdp(port, &whip, "mallory", room, &offer).0, 201);

    // The victim's track is still viewed over WHEP, media and all.
    let mut viewer = Endpoint::new();
    let mut change = viewer.client.rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let auth = format!("Bearer {}", token("viewer", Some(room)));
    let path = format!("/whep/{room}");
    let headers = [
        ("Content-Type", "application/sdp"),
        ("Authorization", auth.as_str()),
    ];
    let r = http_with_headers(
        port,
        "POST",
        &path,
        &headers,
        offer.to_sdp_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(r.0, 201, "{}", r.2);
    let answer = SdpAnswer::from_sdp_string(&r.2).unwrap();
    viewer
        .client
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(victim.client.is_connected() && viewer.client.is_connected()) {
        assert!(Instant::now() < deadline, "ICE/DTLS did not complete");
        victim.pump();
        viewer.pump();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mid = mids[0];
    let ssrc = *victim
        .client
        .rtc
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .unwrap()
        .ssrc();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 1;
    while got < 3 && Instant::now() < deadline {
        // Keyframes (VP8 payload descriptor S=1, then a key frame header).
        let payload = [0x10, 0x00, 7, 7, 7];
        victim.client.send_rtp(
            Instant::now(),
            ssrc,
            96,
            seq,
            seq as u32 * 3000,
            true,
            &payload,
        );
        seq += 1;
        for _ in 0..10 {
            victim.pump();
            viewer.pump();
            std::thread::sleep(Duration::from_millis(1));
        }
        while let Some(e) = viewer.client.events.pop_front() {
            got += matches!(e, ClientEvent::Rtp(_)) as u64;
        }
    }
    assert!(got >= 3, "the viewer got {got} packets");
    drop(trudy);
}

/// Finding 5 over `/pubsub`: a publish offer with too many m-lines is an error message
/// naming the setting; the session stays and publishes a good offer next.
#[test]
fn a_pubsub_offer_over_the_caps_is_an_error_and_the_session_stays() {
    let server = Server::builder()
        .shards(2)
        .env("CORELAY_MEDIA_SECTIONS_PER_OFFER", "2")
        .spawn();
    let mut ws = ws_connect(server.port, "/pubsub").unwrap();
    send_text(
        &mut ws,
        &json!({"type": "auth", "token": token("mallory", None)}).to_string(),
    );
    assert_eq!(recv_json(&mut ws)["type"], "auth-ok");
    let (_, offer, _, _) = whip_offer(3);
    send_text(
        &mut ws,
        &json!({"type": "publish-offer", "roomName": "ps", "offer": offer}).to_string(),
    );
    let e = recv_json(&mut ws);
    assert_eq!(e["type"], "error", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("limits.media_sections_per_offer"),
        "{e}"
    );
    let (_, offer, _, _) = whip_offer(1);
    send_text(
        &mut ws,
        &json!({"type": "publish-offer", "roomName": "ps", "offer": offer}).to_string(),
    );
    assert_eq!(recv_json(&mut ws)["type"], "publish-answer");
    assert_eq!(held(&server), (1, 1, 0));
}

// ------------------------------------------------------------------ relay rooms

fn pkt(event: &str, user: &str, room: &str, payload: &str) -> String {
    json!({"Header": {"Event": event, "UserId": user, "RoomId": room}, "Payload": payload})
        .to_string()
}

fn relay(port: u16, user: &str) -> Ws {
    ws_connect(port, &format!("/p2p?token={}", token(user, None))).unwrap()
}

/// Finding 5 in the relay rooms: members per room; the newcomer gets an error packet
/// naming the setting, its session stays and may join another room, the room keeps
/// relaying.
#[test]
fn a_full_relay_room_refuses_the_newcomer_alone() {
    let server = Server::builder()
        .shards(2)
        .env("CORELAY_MEMBERS_PER_ROOM", "2")
        .spawn();
    let port = server.port;
    let mut a = relay(port, "a");
    send_text(&mut a, &pkt("connect", "a", "r", ""));
    recv_json(&mut a);
    let mut b = relay(port, "b");
    send_text(&mut b, &pkt("connect", "b", "r", ""));
    recv_json(&mut b);
    assert_eq!(recv_json(&mut a)["Header"]["UserId"], "b");
    let mut c = relay(port, "c");
    send_text(&mut c, &pkt("connect", "c", "r", ""));
    let e = recv_json(&mut c);
    assert_eq!(e["Header"]["Event"], "error", "{e}");
    assert!(
        e["Payload"]
            .as_str()
            .unwrap()
            .contains("limits.members_per_room"),
        "{e}"
    );
    send_text(&mut c, &pkt("connect", "c", "elsewhere", ""));
    assert_eq!(recv_json(&mut c)["Header"]["Event"], "connect");
    send_text(&mut a, &pkt("broadcast", "a", "r", "hello"));
    assert_eq!(recv_json(&mut b)["Payload"], "hello");
    send_text(&mut a, &pkt("ping", "a", "r", ""));
    assert_eq!(recv_json(&mut a)["Payload"], "[\"a\",\"b\"]");
}

// ------------------------------------------------------------------ finding 8: one userId twice

/// Finding 8, mediasoup: a second session of alice in the room replaces the first, which
/// is told why and closed with 4000. bob hears alice's old producer close and nothing
/// else: no peer-left while the newer session is there, no second peer-joined; when the
/// newer session goes, exactly one peer-left.
#[test]
fn a_newer_mediasoup_session_replaces_the_older_and_the_room_hears_one_story() {
    let server = Server::builder().shards(2).spawn();
    let port = server.port;
    let room = "dup";
    let mut alice1 = Signal::open(port, "alice", Some(room));
    alice1.request("join-room", json!({}));
    let t = alice1.request("create-transport", json!({"direction": "send"}));
    let old = alice1.request(
        "produce",
        produce(t["id"].as_str().unwrap(), vp8_params("0", 1000)),
    )["id"]
        .clone();
    let mut bob = Signal::open(port, "bob", Some(room));
    let joined = bob.request("join-room", json!({}));
    assert_eq!(
        joined["peers"],
        json!([{"userId": "alice", "userName": "alice"}])
    );

    let mut alice2 = Signal::open(port, "alice", Some(room));
    let joined = alice2.request("join-room", json!({}));
    assert_eq!(
        joined["peers"],
        json!([{"userId": "bob", "userName": "bob"}])
    );
    assert_eq!(joined["producers"], json!([]), "the old producer is gone");
    let (code, reason, texts) = close_code(&mut alice1.ws);
    assert_eq!(
        (code, reason.as_str()),
        (4000, "replaced by a newer session")
    );
    let told = texts.last().expect("an error before the close");
    assert_eq!(told["data"]["code"], "replaced", "{told}");
    drop(alice1);
    let t = alice2.request("create-transport", json!({"direction": "send"}));
    let new = alice2.request(
        "produce",
        produce(t["id"].as_str().unwrap(), vp8_params("0", 1000)),
    )["id"]
        .clone();

    let story: Vec<Value> = bob
        .drain_events()
        .into_iter()
        .map(|e| json!([e["type"], e["data"]]))
        .collect();
    assert_eq!(
        story,
        vec![
            json!(["producer-closed", {"producerId": old}]),
            json!(["new-producer", {"producerId": new, "userId": "alice", "userName": "alice", "kind": "video"}]),
        ]
    );
    assert_eq!(held(&server).0, 1, "only the newer session's transport");
    drop(alice2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut story = Vec::new();
    while !story.iter().any(|e: &Value| e["type"] == "peer-left") {
        assert!(Instant::now() < deadline, "{story:?}");
        story.extend(bob.drain_events());
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<&Value> = story.iter().filter(|e| e["type"] == "peer-left").collect();
    assert_eq!(left.len(), 1, "{story:?}");
    assert_eq!(left[0]["data"]["userId"], "alice");
    wait_held(&server, (0, 0, 0));
}

/// Finding 8 with a WHIP resource: a user may publish over WHIP and be in the room over
/// `/ws` at once (neither replaces the other); ending the WHIP session tells the room its
/// producer closed, not that the user left; the user leaves when its last session goes.
#[test]
fn a_users_whip_resource_and_its_member_session_live_side_by_side() {
    let server = Server::builder().shards(2).spawn();
    let port = server.port;
    let room = "side";
    let mut bob = Signal::open(port, "bob", Some(room));
    bob.request("join-room", json!({}));
    let (_, offer, _, _) = whip_offer(1);
    let r = post_sdp(port, &format!("/whip/{room}"), "cam", room, &offer);
    assert_eq!(r.0, 201, "{}", r.2);
    let resource = location(&r.1);
    let mut cam = Signal::open(port, "cam", Some(room));
    let joined = cam.request("join-room", json!({}));
    assert_eq!(joined["producers"][0]["userId"], "cam", "{joined}");
    let auth = format!("Bearer {}", token("cam", Some(room)));
    let r = http_with_headers(
        port,
        "DELETE",
        &resource,
        &[("Authorization", auth.as_str())],
        b"",
    )
    .unwrap();
    assert_eq!(r.0, 200);
    let kinds: Vec<Value> = bob
        .drain_events()
        .into_iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        kinds,
        vec![
            json!("peer-joined"),
            json!("new-producer"),
            json!("producer-closed")
        ],
        "cam joined once and never left"
    );
    cam.request("create-transport", json!({"direction": "recv"}));
    drop(cam);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = bob.drain_events();
        if !e.is_empty() {
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0]["type"], "peer-left");
            assert_eq!(e[0]["data"]["userId"], "cam");
            break;
        }
        assert!(Instant::now() < deadline, "cam never left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Finding 8, relay rooms: a second connect of alice replaces the first (error packet,
/// close 4000); bob hears alice's old connection go, then alice connect; the old
/// session's close tells nobody; ping lists alice once.
#[test]
fn a_newer_relay_session_replaces_the_older() {
    let server = Server::builder().shards(2).spawn();
    let port = server.port;
    let mut alice1 = relay(port, "alice");
    send_text(&mut alice1, &pkt("connect", "alice", "r8", ""));
    recv_json(&mut alice1);
    let mut bob = relay(port, "bob");
    send_text(&mut bob, &pkt("connect", "bob", "r8", ""));
    recv_json(&mut bob);
    recv_json(&mut alice1);
    let mut alice2 = relay(port, "alice");
    send_text(&mut alice2, &pkt("connect", "alice", "r8", ""));
    let (code, reason, texts) = close_code(&mut alice1);
    assert_eq!(
        (code, reason.as_str()),
        (4000, "replaced by a newer session")
    );
    assert!(
        texts.iter().any(|t| t["Header"]["Event"] == "error"
            && t["Payload"].as_str().unwrap().contains("replaced")),
        "{texts:?}"
    );
    drop(alice1);
    let connect = recv_json(&mut alice2);
    assert_eq!(
        (
            connect["Header"]["Event"].as_str(),
            connect["Payload"].as_str()
        ),
        (Some("connect"), Some("false"))
    );
    let gone = recv_json(&mut bob);
    assert_eq!(
        (
            gone["Header"]["Event"].as_str(),
            gone["Header"]["UserId"].as_str()
        ),
        (Some("disconnect"), Some("alice"))
    );
    let came = recv_json(&mut bob);
    assert_eq!(
        (
            came["Header"]["Event"].as_str(),
            came["Header"]["UserId"].as_str()
        ),
        (Some("connect"), Some("alice"))
    );
    send_text(&mut bob, &pkt("ping", "bob", "r8", ""));
    let ping = recv_json(&mut bob);
    assert_eq!(
        ping["Payload"], "[\"bob\",\"alice\"]",
        "alice once, nothing else came between: {ping}"
    );
    send_text(&mut alice2, &pkt("broadcast", "alice", "r8", "still here"));
    assert_eq!(recv_json(&mut bob)["Payload"], "still here");
    send_text(&mut alice2, &pkt("disconnect", "alice", "r8", ""));
    let gone = recv_json(&mut bob);
    assert_eq!(gone["Header"]["Event"], "disconnect");
    send_text(&mut bob, &pkt("ping", "bob", "r8", ""));
    assert_eq!(recv_json(&mut bob)["Payload"], "[\"bob\"]");
}

/// Finding 8, `/pubsub`: a second session of alice replaces the first; bob hears the old
/// publisher leave (its publisherId is the old session's) and the new one arrive.
#[test]
fn a_newer_pubsub_session_replaces_the_older() {
    let server = Server::builder().shards(2).spawn();
    let open = |user: &str| {
        let mut ws = ws_connect(server.port, "/pubsub").unwrap();
        send_text(
            &mut ws,
            &json!({"type": "auth", "token": token(user, None)}).to_string(),
        );
        assert_eq!(recv_json(&mut ws)["type"], "auth-ok");
        ws
    };
    let publish = |ws: &mut Ws| {
        let (_, offer, _, _) = whip_offer(1);
        send_text(
            ws,
            &json!({"type": "publish-offer", "roomName": "ps8", "offer": offer}).to_string(),
        );
        let a = recv_json(ws);
        assert_eq!(a["type"], "publish-answer", "{a}");
        a["publisherId"].as_u64().unwrap()
    };
    let mut alice1 = open("alice");
    let old = publish(&mut alice1);
    let mut bob = open("bob");
    send_text(
        &mut bob,
        &json!({"type": "join", "roomName": "ps8"}).to_string(),
    );
    let n = recv_json(&mut bob);
    assert_eq!(
        (n["type"].as_str(), n["publisherId"].as_u64()),
        (Some("new-publisher"), Some(old))
    );
    let mut alice2 = open("alice");
    let new = publish(&mut alice2);
    let (code, _, _) = close_code(&mut alice1);
    assert_eq!(code, 4000);
    let left = recv_json(&mut bob);
    assert_eq!(
        (left["type"].as_str(), left["publisherId"].as_u64()),
        (Some("publisher-left"), Some(old))
    );
    let came = recv_json(&mut bob);
    assert_eq!(
        (came["type"].as_str(), came["publisherId"].as_u64()),
        (Some("new-publisher"), Some(new))
    );
    assert_eq!(held(&server), (1, 1, 0));
}

/// Finding 8, `/connect`: the peer connection outlives the socket, so a reconnecting
/// user used to leave its old one in the conversation until ICE consent ran out. Now a
/// newer `/connect` of the same user replaces it at once: one transport, one producer;
/// the other member's speaker slot, which carried the old one, carries the new one.
#[test]
fn a_newer_connect_of_a_user_replaces_its_older_peer() {
    let server = Server::builder().shards(2).spawn();
    let port = server.port;
    let connect = |user: &str| {
        let t = token(user, None);
        let auth = format!("Bearer {t}");
        let r =
            http_with_headers(port, "POST", "/join/c8", &[("Authorization", &auth)], b"").unwrap();
        assert_eq!(r.0, 200, "{}", r.2);
        let mut ep = Endpoint::new();
        let mut change = ep.client.rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let mut ws = ws_connect(port, &format!("/connect?token={t}")).unwrap();
        send_text(&mut ws, &offer.to_sdp_string());
        let answer = match ws.read().unwrap() {
            Message::Text(a) => a.to_string(),
            other => panic!("expected the SDP answer, got {other:?}"),
        };
        ep.client
            .rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        let ssrc = *ep
            .client
            .rtc
            .direct_api()
            .stream_tx_by_mid(mid, None)
            .unwrap()
            .ssrc();
        (ep, ssrc)
    };
    let mut bob = connect("bob");
    let _alice1 = connect("alice");
    wait_held(&server, (2, 2, 2));
    let mut alice2 = connect("alice");
    wait_held(&server, (2, 2, 2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(bob.0.client.is_connected() && alice2.0.client.is_connected()) {
        assert!(Instant::now() < deadline, "ICE/DTLS did not complete");
        bob.0.pump();
        alice2.0.pump();
        std::thread::sleep(Duration::from_millis(2));
    }
    // alice talks; bob hears her newer session.
    let mut heard = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 0u64;
    while heard < 20 && Instant::now() < deadline {
        seq += 1;
        let (ep, ssrc) = &mut alice2;
        ep.client.send_audio(
            Instant::now(),
            *ssrc,
            seq,
            seq as u32 * 960,
            -10,
            &[0xf8, 1, 0, 0],
        );
        let tick = Instant::now() + Duration::from_millis(20);
        while Instant::now() < tick {
            alice2.0.pump();
            bob.0.pump();
            std::thread::sleep(Duration::from_millis(1));
        }
        while let Some(e) = bob.0.client.events.pop_front() {
            heard += matches!(e, ClientEvent::Rtp(_)) as usize;
        }
    }
    assert!(
        heard >= 20,
        "bob heard {heard} packets of alice's newer session"
    );
}
