//! The publish/subscribe SDP dialect (/pubsub).
//! Input format: `corelay::fuzz_entry::pubsub`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::pubsub(data));
