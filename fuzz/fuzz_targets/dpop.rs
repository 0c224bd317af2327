#![no_main]
//! cargo-fuzz target `dpop`: see `portcullis::fuzzing::dpop` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::dpop(data));
