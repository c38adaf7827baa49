//! Signaling dialects. Each module translates one wire protocol into actions on the
//! shard's state; none of them touches a socket.

pub mod identity;
pub mod mediasoup;
pub mod p2p;
pub mod pubsub;
