//! Request heads and bodies on one connection, and what the front door reads from a head.
//! Input format: `corelay::fuzz_entry::http_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::http_request(data));
