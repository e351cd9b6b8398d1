#![no_main]
//! udp-backend decapsulation: the same invariants as the vxlan target.

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check(data, false));
