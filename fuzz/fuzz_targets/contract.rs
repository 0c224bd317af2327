#![no_main]
//! cargo-fuzz target `contract`: see `portcullis_fuzzing::contract` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzzing::contract(data));
