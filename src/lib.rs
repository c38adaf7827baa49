//! corelay: a thread-per-core WebRTC SFU.
//!
//! Layers (dependencies point inward): `shard` is the only module that knows glommio and
//! sockets; `http` parses and writes HTTP on any async stream; `signal` translates each
//! dialect's messages; `auth`, `config` and `stats` are shared plain data; `control` is
//! the one thread, off the shards, that calls other services (its own tokio runtime).

pub mod auth;
pub mod config;
pub mod control;
/// Entry points of the fuzz targets in `fuzz/`; the server does not use them.
pub mod fuzz_entry;
pub mod http;
pub mod notify;
pub mod routing;
pub mod sfu;
pub mod shard;
pub mod signal;
pub mod stats;
pub mod tune_check;
