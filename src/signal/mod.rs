//! Signaling dialects. Each module translates one wire protocol into actions on the
//! shard's state; none of them touches a socket. WebSocket dialects implement
//! [`dialect::Dialect`]; the runtime in `shard/` runs them. [`sockjs`] wraps a dialect in
//! SockJS framing.

pub mod connect;
pub mod dialect;
pub mod identity;
pub mod mediasoup;
pub mod p2p;
pub mod pubsub;
pub mod sockjs;
pub mod whip;
