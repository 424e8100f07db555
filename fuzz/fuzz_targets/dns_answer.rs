#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pullwatch::fuzz_entry::dns_answer(data));
