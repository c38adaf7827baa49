//! corelay-testkit: what corelay's tests, its load tool and its benchmarks share.
//!
//! - [`client`]: a str0m WebRTC client speaking the mediasoup dialect (sans-IO).
//! - [`sim`]: an in-memory network: one media `Engine`, clients, a virtual clock.
//!
//! Only tests, the load tool and the benchmarks depend on this crate; the server does not.

pub mod client;
pub mod sim;
