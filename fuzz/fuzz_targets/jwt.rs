#![no_main]
//! cargo-fuzz target `jwt`: see `portcullis::fuzzing::jwt` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::jwt(data));
