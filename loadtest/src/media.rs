//! What the synthetic publishers send: RTP payloads that the server treats as VP8 or Opus
//! and that carry a stamp (run, publisher, sequence number, send time) so subscribers can
//! measure loss, duplicates, reordering and one-way latency.
//!
//! Video payload: a 2-byte VP8 payload descriptor (byte 0: `0x10` = S bit on the first
//! packet of a frame, `0x00` otherwise, no X extension; byte 1: the VP8 payload header
//! whose least significant bit is 0 for a keyframe and 1 for a delta frame), then the
//! stamp, then filler. Audio payload: the stamp, then filler.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// First bytes of every stamp.
pub const MAGIC: [u8; 4] = *b"CRLd";
/// magic (4) + run id (4) + publisher id (4) + sequence number (8) + send time (8).
pub const STAMP_LEN: usize = 28;
/// Bytes before the stamp in a video payload.
pub const VP8_DESCRIPTOR_LEN: usize = 2;
/// Largest RTP payload: keeps each RTP packet (12-byte header, header extensions for
/// mid and transport-cc, SRTP tag) at or under 1200 bytes.
pub const MAX_PAYLOAD: usize = 1140;
/// Opus-like audio: one packet every 20 ms (50 packets/s) of this many bytes (32 kbit/s).
pub const AUDIO_PAYLOAD: usize = 80;
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// RTP clock ticks per audio packet (48 kHz, 20 ms).
pub const AUDIO_TICKS: u32 = 960;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process-wide time origin of send stamps. Call once early so every thread agrees.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn nanos_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// What a payload says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub run: u32,
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

fn put_stamp(buf: &mut Vec<u8>, s: &Stamp) {
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&s.run.to_be_bytes());
    buf.extend_from_slice(&s.publisher.to_be_bytes());
    buf.extend_from_slice(&s.seq.to_be_bytes());
    buf.extend_from_slice(&s.sent_ns.to_be_bytes());
}

/// Fills `buf` with one video packet of `size` bytes (at least descriptor + stamp).
pub fn video_payload(buf: &mut Vec<u8>, first: bool, keyframe: bool, stamp: &Stamp, size: usize) {
    buf.clear();
    buf.push(if first { 0x10 } else { 0x00 });
    buf.push(if keyframe { 0x00 } else { 0x01 });
    put_stamp(buf, stamp);
    let size = size.max(VP8_DESCRIPTOR_LEN + STAMP_LEN);
    buf.resize(size, 0x5a);
}

/// Fills `buf` with one audio packet of `size` bytes (at least the stamp).
pub fn audio_payload(buf: &mut Vec<u8>, stamp: &Stamp, size: usize) {
    buf.clear();
    put_stamp(buf, stamp);
    buf.resize(size.max(STAMP_LEN), 0xa5);
}

/// Reads the stamp of a received payload; `video` says whether a VP8 descriptor precedes.
pub fn read_stamp(payload: &[u8], video: bool) -> Option<Stamp> {
    let p = payload.get(if video { VP8_DESCRIPTOR_LEN } else { 0 }..)?;
    if p.len() < STAMP_LEN || p[..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().expect("8 bytes"));
    Some(Stamp {
        run: u32_at(4),
        publisher: u32_at(8),
        seq: u64_at(12),
        sent_ns: u64_at(20),
    })
}

/// Sizes of the packets of one video frame: `frame_bytes` split into as few packets of at
/// most [`MAX_PAYLOAD`] as possible, of near-equal size.
pub fn frame_packet_sizes(frame_bytes: usize) -> Vec<usize> {
    let min = VP8_DESCRIPTOR_LEN + STAMP_LEN;
    let bytes = frame_bytes.max(min);
    let n = bytes.div_ceil(MAX_PAYLOAD);
    let (base, extra) = (bytes / n, bytes % n);
    (0..n).map(|i| base + usize::from(i < extra)).collect()
}

/// Loss, duplicates and reordering of one received track, from the stamps' sequence
/// numbers. Remembers the last [`SeqWindow::SIZE`] sequence numbers below the highest.
pub struct SeqWindow {
    bits: Box<[u64; SeqWindow::WORDS]>,
    /// Highest sequence number seen, if any.
    pub max: Option<u64>,
    /// Lowest sequence number seen.
    pub min: u64,
    /// Distinct packets received.
    pub unique: u64,
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
}

/// How a sequence number was taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    New,
    Reordered,
    Duplicate,
}

impl Default for SeqWindow {
    fn default() -> Self {
        SeqWindow {
            bits: Box::new([0; SeqWindow::WORDS]),
            max: None,
            min: 0,
            unique: 0,
            duplicates: 0,
            reordered: 0,
        }
    }
}

impl SeqWindow {
    const WORDS: usize = 128;
    pub const SIZE: u64 = (SeqWindow::WORDS * 64) as u64;

    fn bit(&mut self, seq: u64) -> (&mut u64, u64) {
        let i = (seq % Self::SIZE) as usize;
        (&mut self.bits[i / 64], 1u64 << (i % 64))
    }

    pub fn record(&mut self, seq: u64) -> Seen {
        let Some(max) = self.max else {
            self.max = Some(seq);
            self.min = seq;
            self.unique = 1;
            let (w, m) = self.bit(seq);
            *w |= m;
            return Seen::New;
        };
        if seq > max {
            // Clear the slots the window slides over.
            let gap = seq - max;
            if gap >= Self::SIZE {
                self.bits.fill(0);
            } else {
                for s in max + 1..seq {
                    let (w, m) = self.bit(s);
                    *w &= !m;
                }
            }
            let (w, m) = self.bit(seq);
            *w |= m;
            self.max = Some(seq);
            self.unique += 1;
            return Seen::New;
        }
        if seq == max {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.min = self.min.min(seq);
        if max - seq >= Self::SIZE {
            // Too old to tell; count it as a late, distinct packet.
            self.unique += 1;
            self.reordered += 1;
            return Seen::Reordered;
        }
        let (w, m) = self.bit(seq);
        if *w & m != 0 {
            self.duplicates += 1;
            Seen::Duplicate
        } else {
            *w |= m;
            self.unique += 1;
            self.reordered += 1;
            Seen::Reordered
        }
    }

    /// Packets from the lowest to the highest sequence number seen.
    pub fn span(&self) -> u64 {
        self.max.map_or(0, |m| m - self.min + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_after_the_vp8_descriptor() {
        let s = Stamp {
            run: 7,
            publisher: 3,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut buf = Vec::new();
        video_payload(&mut buf, true, true, &s, 1000);
        assert_eq!(buf.len(), 1000);
        assert_eq!(&buf[..2], &[0x10, 0x00]);
        assert_eq!(read_stamp(&buf, true), Some(s));
        video_payload(&mut buf, false, false, &s, 10);
        assert_eq!(buf.len(), VP8_DESCRIPTOR_LEN + STAMP_LEN);
        assert_eq!(&buf[..2], &[0x00, 0x01]);
        audio_payload(&mut buf, &s, AUDIO_PAYLOAD);
        assert_eq!(read_stamp(&buf, false), Some(s));
        assert_eq!(read_stamp(&buf[1..], false), None);
    }

    #[test]
    fn frames_split_into_near_equal_packets_under_the_limit() {
        let sizes = frame_packet_sizes(1_000_000 / 8 / 30);
        assert_eq!(sizes.len(), 4);
        assert_eq!(sizes.iter().sum::<usize>(), 4166);
        assert!(sizes.iter().all(|&s| (1041..=MAX_PAYLOAD).contains(&s)));
        assert_eq!(frame_packet_sizes(10), vec![VP8_DESCRIPTOR_LEN + STAMP_LEN]);
        assert_eq!(frame_packet_sizes(MAX_PAYLOAD), vec![MAX_PAYLOAD]);
    }

    #[test]
    fn window_counts_duplicates_and_reordering() {
        let mut w = SeqWindow::default();
        assert_eq!(w.record(10), Seen::New);
        assert_eq!(w.record(12), Seen::New);
        assert_eq!(w.record(11), Seen::Reordered);
        assert_eq!(w.record(11), Seen::Duplicate);
        assert_eq!(w.record(12), Seen::Duplicate);
        assert_eq!(w.record(9), Seen::Reordered);
        assert_eq!(
            (w.unique, w.duplicates, w.reordered, w.span()),
            (4, 2, 2, 4)
        );
        // A jump beyond the window forgets the old slots without false duplicates.
        assert_eq!(w.record(12 + 3 * SeqWindow::SIZE), Seen::New);
        assert_eq!(w.record(13 + 2 * SeqWindow::SIZE), Seen::Reordered);
        assert_eq!(w.record(11 + 3 * SeqWindow::SIZE), Seen::Reordered);
        assert_eq!(w.record(11 + 3 * SeqWindow::SIZE), Seen::Duplicate);
    }
}
