//! The media core, free of I/O: every call takes `now`, datagrams and commands go in,
//! datagrams and notices come out. Only `shard/` drives it.

pub mod consumer;
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

pub use engine::{Engine, Notice, PeerId};

/// Errors of the media core, mapped once to each dialect's wire error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SfuError {
    #[error("join a room first")]
    NotJoined,
    #[error("unknown id {0:?}")]
    UnknownId(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SfuError {
    /// A short machine-readable code for wire errors.
    pub fn code(&self) -> &'static str {
        match self {
            SfuError::NotJoined => "not_joined",
            SfuError::UnknownId(_) => "unknown_id",
            SfuError::BadRequest(_) => "bad_request",
            SfuError::Internal(_) => "internal",
        }
    }
}
