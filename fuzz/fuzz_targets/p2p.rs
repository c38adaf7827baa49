//! The peer-to-peer relay dialect (/p2p/{namespace}).
//! Input format: `corelay::fuzz_entry::p2p`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::p2p(data));
