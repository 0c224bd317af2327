#![no_main]
//! cargo-fuzz target `policy`: see `portcullis_fuzzing::policy` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzzing::policy(data));
