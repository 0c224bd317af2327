#![no_main]
//! cargo-fuzz target `config`: see `portcullis::fuzzing::config` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::config(data));
