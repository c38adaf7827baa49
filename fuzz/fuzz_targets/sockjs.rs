//! SockJS framing around the relay dialect.
//! Input format: `corelay::fuzz_entry::sockjs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::sockjs(data));
