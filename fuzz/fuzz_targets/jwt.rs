#![no_main]
//! cargo-fuzz target `jwt`: see `portcullis_fuzzing::jwt` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzzing::jwt(data));
