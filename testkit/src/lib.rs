//! corelay-testkit: what corelay's tests, its load tool and its benchmarks share.
//!
//! - [`server`]: [`Server::builder`], the one way to start the real `corelay` binary.
//! - [`net`]: plain HTTP/1.1 and WebSocket clients, tokens minted with [`SECRET`], and
//!   [`Endpoint`] (a [`client::Client`] on a UDP socket).
//! - [`client`]: a str0m WebRTC client speaking the mediasoup dialect (sans-IO).
//! - [`sim`]: an in-memory network: one media `Engine`, clients, a virtual clock.
//! - [`script`]: [`run_check_script`] for the shell checks under tests/.
//!
//! Only tests, the load tool and the benchmarks depend on this crate; the server does not.

pub mod client;
pub mod net;
pub mod script;
pub mod server;
pub mod sim;

pub use net::*;
pub use script::run_check_script;
pub use server::{default_binary, Capture, Ready, Server, ServerBuilder};
