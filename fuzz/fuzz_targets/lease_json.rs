#![no_main]
//! Lease JSON and subnet keys: parsing never panics, and what parses round-trips through
//! flannel's serialization unchanged.

use weft::lease::table::Peer;
use weft::lease::{parse_subnet_key, subnet_key, Lease, LeaseAttrs};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(a) = LeaseAttrs::from_json(text) {
        let again = LeaseAttrs::from_json(&a.to_json()).expect("our own JSON must parse");
        assert_eq!(again, a);
        let lease = Lease { subnet: "10.244.1.0/24".parse().unwrap(), ipv6_subnet: None, attrs: a, expiration: None };
        if let Ok(p) = Peer::from_lease(&lease) {
            assert_eq!(p.public_ip, lease.attrs.public_ip);
        }
    }
    if let Ok((v4, v6)) = parse_subnet_key(text) {
        assert_eq!(parse_subnet_key(&subnet_key(v4, v6)).unwrap(), (v4, v6));
    }
});
