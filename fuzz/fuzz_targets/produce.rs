//! mediasoup produce/consume parameters: parsing, checks, the send transport's offer.
//! Input format: `corelay::fuzz_entry::produce`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::produce(data));
