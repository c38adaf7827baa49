//! The mediasoup-client dialect (/ws): sessions of JSON requests on one engine.
//! Input format: `corelay::fuzz_entry::mediasoup`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::mediasoup(data));
