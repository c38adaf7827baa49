//! The media core, free of I/O: every call takes `now`, datagrams and commands go in,
//! datagrams and notices come out. Only `shard/` drives it.
//!
//! One object per module, as in mediasoup's worker:
//! - [`engine`]: the [`Engine`] of one shard: ids, demux tables, datagrams and timeouts
//!   in, draining str0m, the fan-out of each received packet, outbox and notices;
//! - [`room`]: rooms (mediasoup's Router) and their peers, join and leave;
//! - [`transport`]: a WebRtcTransport (one str0m `Rtc`) and its commands;
//! - [`producer`]: a published track, its simulcast layers and keyframe requests;
//! - [`consumer`]: a producer's track for one subscriber, its keyframe gate and rewrite
//!   (numbering in [`rewrite`], keyframe detection in [`keyframe`]);
//! - [`slots`]: loudest-speaker slots for `/connect` (the math in [`speakers`]);
//! - [`sdp`]: the SDP bridge, offers and answers to producers and consumers;
//! - [`ortc`] and [`send_offer`]: mediasoup's RTP parameters, and a send transport's
//!   producers as the SDP offer str0m negotiates;
//! - [`unbound`]: packet rates of source addresses not bound to a transport.
//! - [`caps`]: what one client may hold or ask for (the `limits.*` settings, as plain
//!   numbers).
//!
//! Nothing here reads a clock, touches a socket or uses `unsafe`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod caps;
pub mod consumer;
mod contain;
pub mod engine;
pub mod keyframe;
pub mod ortc;
pub mod producer;
pub mod rewrite;
pub mod room;
pub mod sdp;
pub mod send_offer;
pub mod slots;
pub mod speakers;
pub mod transport;
pub mod unbound;

pub use caps::Caps;
pub use engine::{Engine, Notice, PeerId, TransportLimits};

/// Errors of the media core, mapped once to each dialect's wire error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SfuError {
    /// The peer has not joined a room.
    #[error("join a room first")]
    NotJoined,
    /// No transport, producer or consumer of this id that the caller may use.
    #[error("unknown id {0:?}")]
    UnknownId(String),
    /// The request is wrong; the text says how.
    #[error("{0}")]
    BadRequest(String),
    /// corelay failed; not the client's fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// The request is over one of the [`Caps`]: the text names the setting.
    #[error("{what}: the limit is {limit} ({setting})")]
    Limit {
        /// What was too many or too long.
        what: String,
        /// The cap.
        limit: usize,
        /// The setting that sets it, e.g. `limits.transports_per_session`.
        setting: &'static str,
    },
}

impl SfuError {
    /// A short machine-readable code for wire errors.
    pub fn code(&self) -> &'static str {
        match self {
            SfuError::NotJoined => "not_joined",
            SfuError::UnknownId(_) => "unknown_id",
            SfuError::BadRequest(_) => "bad_request",
            SfuError::Internal(_) => "internal",
            SfuError::Limit { .. } => "limit_exceeded",
        }
    }

    /// Whether the refusal is about what the server holds (a full room, a user's or a
    /// shard's count) rather than the request's own contents: HTTP dialects answer 429
    /// for those (trying later may succeed) and 400 for the rest.
    pub fn is_capacity(&self) -> bool {
        matches!(
            self,
            SfuError::Limit { setting, .. } if matches!(
                *setting,
                "limits.members_per_room" | "limits.rooms_per_shard" | "limits.sessions_per_user"
            )
        )
    }
}

#[cfg(test)]
mod tests {
    /// Time comes in as `now`: no file of the media core reads a clock outside its tests
    /// (which may, to start a virtual clock).
    #[test]
    fn the_media_core_reads_no_clock() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/sfu");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            for clock in [
                "Instant::now",
                "SystemTime::now",
                "Instant::elapsed",
                ".elapsed()",
            ] {
                assert!(!code.contains(clock), "{} uses {clock}", path.display());
            }
        }
    }
}
