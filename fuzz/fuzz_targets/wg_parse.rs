#![no_main]
//! See `weft::testkit::fuzz::wg_parse` for what this target checks; `tests/fuzz_regressions.rs`
//! replays its seeds and corpus through the same function.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft::testkit::fuzz::wg_parse(data));
