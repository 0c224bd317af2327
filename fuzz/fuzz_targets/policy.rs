#![no_main]
//! cargo-fuzz target `policy`: see `portcullis::fuzzing::policy` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::policy(data));
