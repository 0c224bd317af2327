#![no_main]
//! cargo-fuzz target `httpsig`: see `portcullis::fuzzing::httpsig` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::httpsig(data));
