#![no_main]
//! cargo-fuzz target `path`: see `portcullis_fuzzing::path` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzzing::path(data));
