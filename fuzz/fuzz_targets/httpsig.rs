#![no_main]
//! cargo-fuzz target `httpsig`: see `portcullis_fuzzing::httpsig` (shared with tests/fuzz_corpus.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzzing::httpsig(data));
