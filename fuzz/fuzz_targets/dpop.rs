#![no_main]
//! cargo-fuzz target `dpop`: see `portcullis_fuzzing::dpop` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzzing::dpop(data));
