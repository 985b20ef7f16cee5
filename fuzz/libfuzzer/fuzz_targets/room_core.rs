#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chat_fuzz::room_core::run(data));
