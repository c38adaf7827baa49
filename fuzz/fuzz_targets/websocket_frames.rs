//! A client's WebSocket byte stream through the frame-bounded reader and tungstenite, straight and relocated.
//! Input format: `corelay::fuzz_entry::websocket_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelay::fuzz_entry::websocket_frames(data));
