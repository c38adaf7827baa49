//! The end-of-run figures: per room and in total, as a table and as JSON.
//!
//! Loss of one (subscriber, track): the packets the publisher sent from the first one the
//! subscriber received (the lowest sequence number it saw) to the end, minus the distinct
//! packets it received. A track that was consumed but never delivered counts every packet
//! sent after its `resume-consumer` as lost; tracks never consumed show up as
//! `tracksReceived < tracksExpected` and as the error `track_missing`.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use serde_json::{json, Value};

use crate::worker::{new_hist, Hist, Plan, Role, WorkerResult};

/// Figures of one room, or of all rooms.
pub struct Figures {
    pub name: String,
    pub peers: u64,
    pub peers_connected: u64,
    pub tracks_expected: u64,
    pub tracks_received: u64,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub keyframes_sent: u64,
    pub packets_expected: u64,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub bytes_received: u64,
    pub latency_us: Hist,
    pub join_ms: Hist,
    pub errors: BTreeMap<String, u64>,
}

impl Figures {
    fn new(name: &str) -> Figures {
        Figures {
            name: name.to_string(),
            peers: 0,
            peers_connected: 0,
            tracks_expected: 0,
            tracks_received: 0,
            packets_sent: 0,
            bytes_sent: 0,
            keyframes_sent: 0,
            packets_expected: 0,
            packets_received: 0,
            packets_lost: 0,
            duplicates: 0,
            reordered: 0,
            bytes_received: 0,
            latency_us: new_hist(),
            join_ms: new_hist(),
            errors: BTreeMap::new(),
        }
    }

    pub fn loss_percent(&self) -> f64 {
        if self.packets_expected == 0 {
            0.0
        } else {
            self.packets_lost as f64 * 100.0 / self.packets_expected as f64
        }
    }

    pub fn tracks_missing(&self) -> u64 {
        self.tracks_expected.saturating_sub(self.tracks_received)
    }

    fn add(&mut self, o: &Figures) {
        self.peers += o.peers;
        self.peers_connected += o.peers_connected;
        self.tracks_expected += o.tracks_expected;
        self.tracks_received += o.tracks_received;
        self.packets_sent += o.packets_sent;
        self.bytes_sent += o.bytes_sent;
        self.keyframes_sent += o.keyframes_sent;
        self.packets_expected += o.packets_expected;
        self.packets_received += o.packets_received;
        self.packets_lost += o.packets_lost;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.bytes_received += o.bytes_received;
        let _ = self.latency_us.add(&o.latency_us);
        let _ = self.join_ms.add(&o.join_ms);
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Merges the workers' results into figures per room and a total.
pub fn summarize(
    rooms: &[String],
    plans: &[Plan],
    results: Vec<WorkerResult>,
) -> (Vec<Figures>, Figures) {
    let mut figs: Vec<Figures> = rooms.iter().map(|r| Figures::new(r)).collect();
    let mut subs = vec![0u64; rooms.len()];
    let mut pubs = vec![0u64; rooms.len()];
    for p in plans {
        figs[p.room].peers += 1;
        match p.role {
            Role::Subscriber => subs[p.room] += 1,
            _ => pubs[p.room] += 1,
        }
    }
    for (r, f) in figs.iter_mut().enumerate() {
        f.tracks_expected = subs[r] * pubs[r];
    }
    let mut sent: HashMap<u32, u64> = HashMap::new();
    for w in &results {
        for p in &w.publishers {
            sent.insert(p.id, p.packets);
            let f = &mut figs[p.room];
            f.packets_sent += p.packets;
            f.bytes_sent += p.bytes;
            f.keyframes_sent += p.keyframes;
        }
    }
    let mut delivered: HashSet<(usize, u32, u32)> = HashSet::new();
    for w in &results {
        for t in &w.tracks {
            let f = &mut figs[t.room];
            let total = t.publisher.and_then(|p| sent.get(&p)).copied().unwrap_or(0);
            let expected = if t.unique > 0 {
                total.saturating_sub(t.min_seq).max(t.unique)
            } else {
                t.resume_seq.map_or(0, |r| total.saturating_sub(r))
            };
            f.packets_expected += expected;
            f.packets_received += t.unique;
            f.packets_lost += expected.saturating_sub(t.unique);
            f.duplicates += t.duplicates;
            f.reordered += t.reordered;
            f.bytes_received += t.bytes;
            if t.unique > 0 {
                if let Some(p) = t.publisher {
                    delivered.insert((t.room, t.subscriber, p));
                }
            }
        }
    }
    for (room, _, _) in &delivered {
        figs[*room].tracks_received += 1;
    }
    for w in results {
        for (r, s) in w.rooms.into_iter().enumerate() {
            let f = &mut figs[r];
            f.peers_connected += s.peers_connected;
            let _ = f.latency_us.add(&s.latency_us);
            let _ = f.join_ms.add(&s.join_ms);
            for (k, v) in s.errors {
                *f.errors.entry(k).or_default() += v;
            }
        }
    }
    let mut total = Figures::new("TOTAL");
    for f in &mut figs {
        let missing = f.tracks_missing();
        if missing > 0 {
            *f.errors.entry("track_missing".into()).or_default() += missing;
        }
        total.add(f);
    }
    (figs, total)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs.max(1e-9) / 1e6
}

/// The table for stdout.
pub fn table(rooms: &[Figures], total: &Figures, secs: f64) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<20} {:>9} {:>11} {:>9} {:>9} {:>10} {:>10} {:>7} {:>31} {:>15} {:>6}\n",
        "room",
        "peers",
        "tracks",
        "sent",
        "recv",
        "pkts sent",
        "pkts recv",
        "loss",
        "latency p50/p90/p99/max",
        "join p50/p99",
        "errors"
    ));
    out.push_str(&format!(
        "{:<20} {:>9} {:>11} {:>9} {:>9} {:>10} {:>10} {:>7} {:>31} {:>15} {:>6}\n",
        "", "conn/all", "recv/exp", "Mbit/s", "Mbit/s", "", "", "%", "ms", "ms", ""
    ));
    for f in rooms.iter().chain(std::iter::once(total)) {
        let l = &f.latency_us;
        let lat = format!(
            "{:.2}/{:.2}/{:.2}/{:.2}",
            ms(l.value_at_quantile(0.5)),
            ms(l.value_at_quantile(0.9)),
            ms(l.value_at_quantile(0.99)),
            ms(l.max())
        );
        let join = format!(
            "{}/{}",
            f.join_ms.value_at_quantile(0.5),
            f.join_ms.value_at_quantile(0.99)
        );
        out.push_str(&format!(
            "{:<20} {:>9} {:>11} {:>9.3} {:>9.3} {:>10} {:>10} {:>7.3} {:>31} {:>15} {:>6}\n",
            f.name,
            format!("{}/{}", f.peers_connected, f.peers),
            format!("{}/{}", f.tracks_received, f.tracks_expected),
            mbps(f.bytes_sent, secs),
            mbps(f.bytes_received, secs),
            f.packets_sent,
            f.packets_received,
            f.loss_percent(),
            lat,
            join,
            f.errors_total()
        ));
    }
    if total.errors.is_empty() {
        out.push_str("errors: none\n");
    } else {
        let list: Vec<String> = total
            .errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!("errors: {}\n", list.join(" ")));
    }
    out
}

fn hist_json(h: &Hist) -> Value {
    let mut bytes = Vec::new();
    let encoded = V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map(|_| base64::engine::general_purpose::STANDARD.encode(&bytes))
        .unwrap_or_default();
    json!({
        "count": h.len(),
        "min": if h.is_empty() { 0 } else { h.min() },
        "mean": if h.is_empty() { 0.0 } else { h.mean() },
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "max": h.max(),
        "histogram": encoded,
    })
}

/// One room's (or the total's) figures as JSON.
pub fn figures_json(f: &Figures, secs: f64, room: bool) -> Value {
    let mut v = json!({
        "peers": f.peers,
        "peersConnected": f.peers_connected,
        "tracksExpected": f.tracks_expected,
        "tracksReceived": f.tracks_received,
        "packetsSent": f.packets_sent,
        "packetsExpected": f.packets_expected,
        "packetsReceived": f.packets_received,
        "packetsLost": f.packets_lost,
        "lossPercent": f.loss_percent(),
        "duplicates": f.duplicates,
        "reordered": f.reordered,
        "keyframesSent": f.keyframes_sent,
        "bytesSent": f.bytes_sent,
        "bytesReceived": f.bytes_received,
        "bitrateSentBps": (f.bytes_sent as f64 * 8.0 / secs.max(1e-9)).round(),
        "bitrateReceivedBps": (f.bytes_received as f64 * 8.0 / secs.max(1e-9)).round(),
        "latencyUs": hist_json(&f.latency_us),
        "joinMs": hist_json(&f.join_ms),
        "errors": f.errors,
    });
    if room {
        v["room"] = json!(f.name);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{PubResult, RoomStats, TrackResult};
    use std::time::Duration;

    fn plan(id: u32, role: Role) -> Plan {
        Plan {
            id,
            room: 0,
            role,
            start: Duration::ZERO,
        }
    }

    #[test]
    fn loss_counts_from_the_first_packet_and_missing_tracks_show() {
        let plans = vec![
            plan(0, Role::Video),
            plan(1, Role::Audio),
            plan(2, Role::Subscriber),
            plan(3, Role::Subscriber),
        ];
        let track = |sub, publisher, unique, min_seq, resume_seq| TrackResult {
            subscriber: sub,
            room: 0,
            publisher: Some(publisher),
            unique,
            min_seq,
            duplicates: 0,
            reordered: 0,
            bytes: unique * 100,
            resume_seq,
        };
        let w = WorkerResult {
            publishers: vec![
                PubResult {
                    id: 0,
                    room: 0,
                    packets: 100,
                    bytes: 100_000,
                    keyframes: 2,
                },
                PubResult {
                    id: 1,
                    room: 0,
                    packets: 50,
                    bytes: 4000,
                    keyframes: 0,
                },
            ],
            tracks: vec![
                // joined at seq 20, got all 80 of the rest
                track(2, 0, 80, 20, Some(18)),
                // got 45 of the 50 from seq 0
                track(2, 1, 45, 0, Some(0)),
                // consumed at seq 40, never delivered: 10 lost
                track(3, 1, 0, 0, Some(40)),
            ],
            rooms: vec![RoomStats::new()],
        };
        let (rooms, total) = summarize(&["r".to_string()], &plans, vec![w]);
        assert_eq!(rooms[0].tracks_expected, 4);
        assert_eq!(rooms[0].tracks_received, 2);
        assert_eq!(total.packets_sent, 150);
        assert_eq!(total.packets_expected, 80 + 50 + 10);
        assert_eq!(total.packets_lost, 5 + 10);
        assert_eq!(total.errors["track_missing"], 2);
        let j = figures_json(&rooms[0], 1.0, true);
        assert_eq!(j["room"], "r");
        assert_eq!(j["packetsLost"], 15);
        assert!(j["latencyUs"]["histogram"].as_str().is_some());
    }
}
