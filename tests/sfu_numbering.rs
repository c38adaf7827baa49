//! Producers send with their own browser's payload types and header-extension ids
//! (Chromium, Firefox and Safari number differently, and Chromium's order depends on what
//! a peer connection sends first); subscribers receive with the router's numbering.

use std::time::Duration;

use corelay::sfu::ortc::{
    Kind, RtpParameters, EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_MID, EXT_RID, EXT_TWCC, OPUS, VP8,
};
use corelay::sfu::transport::Direction;
use corelay_testkit::client::{ClientEvent, Numbering};
use corelay_testkit::sim::{Video, World};
use serde_json::{json, Value};

/// Numbers as no router default has them: Firefox-like payload types, extensions shuffled.
fn shuffled() -> Numbering {
    Numbering {
        codecs: vec![(OPUS, 109, None), (VP8, 120, Some(124))],
        exts: vec![
            (12, EXT_AUDIO_LEVEL),
            (3, EXT_ABS_SEND_TIME),
            (9, EXT_MID),
            (4, EXT_TWCC),
            (6, EXT_RID),
        ],
    }
}

fn params(v: Value) -> RtpParameters {
    serde_json::from_value(v).unwrap()
}

/// (payload type, audio level) of every RTP packet a client received (drains its events).
fn packets(w: &mut World, c: usize) -> Vec<(u8, Option<i8>)> {
    let mut out = Vec::new();
    while let Some(e) = w.clients[c].events.pop_front() {
        if let ClientEvent::Rtp(p) = e {
            out.push((*p.header.payload_type, p.header.ext_vals.audio_level));
        }
    }
    out
}

#[test]
fn video_first_then_audio_in_the_clients_own_numbering_reaches_subscribers() {
    let mut w = World::new();
    w.engine.join(w.now, 1, "room", "u1", "Pub", None).unwrap();
    let (pc, tid) = w.transport_with(1, Direction::Send, shuffled());
    let video_params = w.clients[pc].add_sender(&VP8, 3000, Some(3500));
    assert_eq!(video_params["codecs"][0]["payloadType"], 120);
    let video_pid = w
        .engine
        .produce(w.now, 1, &tid, Kind::Video, &params(video_params))
        .unwrap();
    let audio_params = w.clients[pc].add_sender(&OPUS, 4000, None);
    let audio_pid = w
        .engine
        .produce(w.now, 1, &tid, Kind::Audio, &params(audio_params))
        .unwrap();

    let viewer = w.subscriber(10, &video_pid);
    w.engine
        .join(w.now, 11, "room", "u11", "Ear", None)
        .unwrap();
    let (ear, ear_tid) = w.transport(11, Direction::Recv);
    let info = w
        .engine
        .consume(w.now, 11, &ear_tid, &audio_pid, None)
        .unwrap();
    w.clients[ear]
        .add_receiver(
            "audio",
            &serde_json::to_value(&info.rtp_parameters).unwrap(),
        )
        .unwrap();
    w.engine
        .set_consumer_paused(w.now, 11, &info.id, false)
        .unwrap();
    w.connect_all();

    let mut video = Video {
        client: pc,
        ssrc: 3000,
        seq: 1,
        ts: 0,
    };
    video.frames(&mut w, 30);
    for i in 0..50u64 {
        w.clients[pc].send_audio(w.now, 4000, 100 + i, 960 * i as u32, -20, &[0xfc; 60]);
        w.step(Duration::from_millis(20));
    }
    w.run(Duration::from_millis(100));

    let seen = packets(&mut w, viewer.client);
    assert!(
        seen.len() >= 85,
        "the viewer got {} video packets",
        seen.len()
    );
    assert!(
        seen.iter().all(|(pt, _)| *pt == VP8.pt),
        "video reaches the viewer as the router's VP8 {}",
        VP8.pt
    );
    let heard = packets(&mut w, ear);
    assert!(
        heard.len() >= 45,
        "the listener got {} audio packets",
        heard.len()
    );
    assert!(heard.iter().all(|(pt, _)| *pt == OPUS.pt));
    assert!(
        heard.iter().all(|(_, level)| *level == Some(-20)),
        "the audio level sent at id 12 arrives: {:?}",
        &heard[..3]
    );
}

#[test]
fn a_second_numbering_on_one_transport_is_refused_naming_both() {
    let mut w = World::new();
    w.engine.join(w.now, 1, "room", "u1", "Pub", None).unwrap();
    let (pc, tid) = w.transport_with(1, Direction::Send, shuffled());
    let video_params = w.clients[pc].add_sender(&VP8, 3000, Some(3500));
    w.engine
        .produce(w.now, 1, &tid, Kind::Video, &params(video_params))
        .unwrap();
    let other = params(json!({
        "mid": "7",
        "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}],
        "headerExtensions": [{"uri": EXT_MID, "id": 9}, {"uri": EXT_TWCC, "id": 5}],
        "encodings": [{"ssrc": 77}]
    }));
    let e = w
        .engine
        .produce(w.now, 1, &tid, Kind::Audio, &other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("uses id 5 here but id 4 in the producer of mid 0"),
        "{e}"
    );
    assert_eq!(
        w.engine.producers(),
        1,
        "the refused producer left nothing behind"
    );
}

#[test]
fn producers_declared_before_connect_transport_are_negotiated_then() {
    use corelay_testkit::client::Client;
    let mut w = World::new();
    w.engine.join(w.now, 1, "room", "u1", "Pub", None).unwrap();
    let t = w
        .engine
        .create_transport(w.now, 1, Direction::Send)
        .unwrap();
    let pc = w.add_client_with(shuffled());
    let video_params = w.clients[pc].add_sender(&VP8, 3000, Some(3500));
    let pid = w
        .engine
        .produce(w.now, 1, &t.id, Kind::Video, &params(video_params))
        .unwrap();
    let info = json!({
        "iceParameters": t.ice_parameters,
        "iceCandidates": t.ice_candidates,
        "dtlsParameters": t.dtls_parameters,
    });
    w.clients[pc].connect(w.now, &info).unwrap();
    let dtls = Client::dtls(&mut w.clients[pc]);
    w.engine.connect_transport(w.now, 1, &t.id, &dtls).unwrap();
    let viewer = w.subscriber(10, &pid);
    w.connect_all();
    let mut video = Video {
        client: pc,
        ssrc: 3000,
        seq: 1,
        ts: 0,
    };
    video.frames(&mut w, 30);
    w.run(Duration::from_millis(100));
    let seen = packets(&mut w, viewer.client);
    assert!(
        seen.len() >= 85,
        "the viewer got {} video packets",
        seen.len()
    );
}
