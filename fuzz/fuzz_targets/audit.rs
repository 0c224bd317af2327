#![no_main]
//! cargo-fuzz target `audit`: see `portcullis_fuzzing::audit` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzzing::audit(data));
