//! SDP offers and answers of the SDP bridge (publish, /connect, WHEP, subscribe answers, candidates).
//! Input format: `corelay::fuzz_entry::sdp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::sdp(data));
