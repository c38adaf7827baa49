//! Does an RTP payload start a keyframe? Needed to hold a consumer's video until a
//! decodable picture arrives after resume or a layer switch.

use super::ortc::RouterCodec;

/// Whether `payload` starts a keyframe of `codec` (VP8, VP9, H264); other codecs (audio)
/// count every packet as one.
pub fn is_keyframe(codec: &RouterCodec, payload: &[u8]) -> bool {
    match codec.mime {
        "video/VP8" => vp8(payload),
        "video/VP9" => vp9(payload),
        "video/H264" => h264(payload),
        _ => true,
    }
}

/// RFC 7741: payload descriptor, then the VP8 payload header whose P bit is 0 for a
/// keyframe; only meaningful at the start of a partition (S=1, PID=0).
fn vp8(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    if !start {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // picture id: 7 or 15 bits
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    p.get(i).is_some_and(|h| h & 0x01 == 0)
}

/// VP9 payload descriptor (draft-ietf-payload-vp9): P=0 (not inter-predicted) and B=1
/// (beginning of a frame).
fn vp9(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    b0 & 0x40 == 0 && b0 & 0x08 != 0
}

/// RFC 6184: an IDR slice or SPS, alone, in a STAP-A, or starting a FU-A.
fn h264(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        5 | 7 => true,
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let len = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if matches!(p[i + 2] & 0x1f, 5 | 7) {
                    return true;
                }
                i += 2 + len;
            }
            false
        }
        28 => p.get(1).is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == 5),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::ortc::{H264, VP8, VP9};

    #[test]
    fn vp8_keyframe_and_delta() {
        // S=1, X=1 with I (15-bit picture id), then payload header byte.
        assert!(is_keyframe(&VP8, &[0x90, 0x80, 0x81, 0x23, 0x10]));
        assert!(!is_keyframe(&VP8, &[0x90, 0x80, 0x81, 0x23, 0x11]));
        // not the start of a partition
        assert!(!is_keyframe(&VP8, &[0x80, 0x80, 0x81, 0x23, 0x10]));
        assert!(is_keyframe(&VP8, &[0x10, 0x00]));
    }

    #[test]
    fn vp9_and_h264() {
        assert!(is_keyframe(&VP9, &[0x08]));
        assert!(!is_keyframe(&VP9, &[0x48]));
        assert!(is_keyframe(&H264, &[0x65]));
        assert!(is_keyframe(&H264, &[0x18, 0x00, 0x02, 0x67, 0x00]));
        assert!(is_keyframe(&H264, &[0x1c, 0x85]));
        assert!(!is_keyframe(&H264, &[0x1c, 0x05]));
        assert!(!is_keyframe(&H264, &[0x41]));
    }
}
