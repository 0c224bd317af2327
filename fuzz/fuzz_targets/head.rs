#![no_main]
//! cargo-fuzz target `head`: see `portcullis_fuzzing::head` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzzing::head(data));
