//! UDP datagrams into the engine's demux and str0m (STUN, DTLS, SRTP/SRTCP).
//! Input format: `corelay::fuzz_entry::datagrams`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::datagrams(data));
