#![no_main]
//! VXLAN decapsulation: arbitrary outer datagrams and socket payloads never panic, and
//! whatever is delivered is valid, policy-conforming, and survives a round trip.

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check(data, true));
