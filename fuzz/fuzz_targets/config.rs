#![no_main]
//! cargo-fuzz target `config`: see `portcullis_fuzzing::config` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzzing::config(data));
