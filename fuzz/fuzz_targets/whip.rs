//! WHIP and WHEP requests (heads, SDP bodies, trickle fragments).
//! Input format: `corelay::fuzz_entry::whip`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::whip(data));
