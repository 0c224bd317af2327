#![no_main]
//! cargo-fuzz target `head`: see `portcullis::fuzzing::head` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::head(data));
