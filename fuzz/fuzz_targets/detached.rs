#![no_main]
//! cargo-fuzz target `detached`: see `portcullis_fuzzing::detached` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzzing::detached(data));
