//! The seam between a WebSocket dialect and the shard that runs it.
//!
//! A dialect is a translator: it gets one text message and a [`Context`] that lends it the
//! shard's state for that call (the media engine, the relay rooms, the authenticator),
//! and says what the runtime must do next as a [`Step`]. It never sees a socket, a task or
//! another shard. A session that moves to the shard owning its room moves as its boxed
//! dialect state, so every dialect relocates the same way.

use std::time::{Duration, Instant};

use crate::auth::Authenticator;
use crate::sfu::{Engine, Notice};
use crate::signal::p2p::{Delivery, Rooms};

/// A connection's id, unique within its process (the shard id is in its top bits).
pub type ConnId = u64;

/// What a WebSocket close code means to a dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: done (a one-shot exchange answered).
    Normal,
    /// 1008: the client broke the dialect's rules (failed authentication, wrong order).
    Policy,
}

/// The WebSocket close code of a session replaced by a newer session of the same user in
/// the same room (a private-use code, RFC 6455 7.4.2: clients should not reconnect on it).
pub const REPLACED_CLOSE_CODE: u16 = 4000;
/// The close reason that goes with [`REPLACED_CLOSE_CODE`].
pub const REPLACED_CLOSE_REASON: &str = "replaced by a newer session";

/// What the runtime does after one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these texts to the client (possibly none).
    Reply(Vec<String>),
    /// The session belongs to the shard that owns this key (a room's routing key): move
    /// there, and handle the same message again. A dialect that took several messages
    /// from that one text (a SockJS frame) keeps the unhandled ones in its own state, and
    /// carries on with them when it gets the same text again.
    Relocate { key: String },
    /// Send these texts, then close.
    Close(Vec<String>, CloseCode),
}

/// The shard's state, lent to a dialect for one call.
pub struct Context<'a> {
    /// When the message arrived.
    pub now: Instant,
    /// This session's connection (the media engine's peer id of this session).
    pub conn: ConnId,
    /// The shard serving the session, for logs.
    pub shard: usize,
    /// The media core of this shard's rooms.
    pub engine: &'a mut Engine,
    /// The relay rooms of this shard.
    pub relay: &'a mut Rooms,
    /// Verifies tokens that arrive in messages (`/pubsub`'s `auth`).
    pub auth: &'a Authenticator,
    owns: &'a dyn Fn(&str) -> bool,
    /// Texts for other sessions of this shard, delivered after the call.
    pub deliveries: Vec<Delivery>,
    /// Wire error codes this call answered with, counted in `/metrics`.
    pub errors: Vec<&'static str>,
    /// Other sessions of this shard that a newer session of their user replaced, with
    /// the reason: each gets its dialect's [`Dialect::replaced_text`] and is closed with
    /// [`REPLACED_CLOSE_CODE`] after the call.
    pub replaced: Vec<(ConnId, String)>,
}

impl<'a> Context<'a> {
    /// `owns(key)` tells whether this shard owns a room's routing key.
    pub fn new(
        now: Instant,
        conn: ConnId,
        shard: usize,
        engine: &'a mut Engine,
        relay: &'a mut Rooms,
        auth: &'a Authenticator,
        owns: &'a dyn Fn(&str) -> bool,
    ) -> Context<'a> {
        Context {
            now,
            conn,
            shard,
            engine,
            relay,
            auth,
            owns,
            deliveries: Vec::new(),
            errors: Vec::new(),
            replaced: Vec::new(),
        }
    }

    /// Whether this shard owns the room with this routing key.
    pub fn owns(&self, key: &str) -> bool {
        (self.owns)(key)
    }

    /// The ownership test itself, to pass along while the engine is borrowed.
    pub fn owns_fn(&self) -> &'a dyn Fn(&str) -> bool {
        self.owns
    }

    /// `Step::Relocate` when another shard owns `key`.
    pub fn owner_elsewhere(&self, key: &str) -> Option<Step> {
        (!self.owns(key)).then(|| Step::Relocate {
            key: key.to_string(),
        })
    }
}

/// A session's dialect, boxed so that any dialect moves between shards the same way.
pub type BoxedDialect = Box<dyn Dialect>;

/// One WebSocket dialect's session. `Send`, because a session moves between shards.
pub trait Dialect: Send {
    /// The dialect's name, for logs.
    fn name(&self) -> &'static str;
    /// Handles one text message from the client.
    fn on_text(&mut self, cx: &mut Context<'_>, text: &str) -> Step;
    /// An error text for the client (binary frames, oversized messages).
    fn error_text(&self, reason: &str) -> String;
    /// The socket closed: release whatever the session holds on this shard.
    fn on_close(&mut self, cx: &mut Context<'_>);
    /// A media-core notice for this session, worded as this dialect's event, if it has one.
    fn notice(&mut self, _notice: &Notice) -> Option<String> {
        None
    }
    /// The text a session gets before it is closed because a newer session of its user
    /// joined its room (then the runtime closes it with [`REPLACED_CLOSE_CODE`]).
    fn replaced_text(&self, reason: &str) -> String {
        self.error_text(reason)
    }

    // Framing hooks: a dialect that wraps another in a framing (SockJS) words what the
    // runtime sends on its own. The defaults send nothing extra and texts as they are.

    /// Whether the client has authenticated. A session that has not gets small messages
    /// only (`limits.unauthenticated_message_bytes`) and `limits.auth_timeout_ms` to do it.
    fn authenticated(&self) -> bool {
        true
    }

    /// A text to send once, when a new session opens (not again after a relocation).
    fn opening(&self) -> Option<String> {
        None
    }
    /// A keep-alive: this text whenever nothing was sent to the client for this long.
    fn heartbeat(&self) -> Option<(Duration, String)> {
        None
    }
    /// A text another session delivered to this one (a relay packet), as sent to the client.
    fn delivery(&self, text: &str) -> String {
        text.to_string()
    }
    /// A text to send before the runtime closes the session with this WebSocket close code
    /// and reason (shutdown, a slow client, an oversized message, a dialect's `Close`).
    fn closing(&self, _code: u16, _reason: &str) -> Option<String> {
        None
    }
}
