//! The one-shot SDP dialect (/connect), raw and framed.
//! Input format: `corelay::fuzz_entry::connect`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::connect(data));
