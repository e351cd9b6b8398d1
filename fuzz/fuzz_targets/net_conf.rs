#![no_main]
//! net-conf.json: parsing never panics, and an accepted config obeys flannel's rules and
//! can always hand out a subnet to the first node.

use std::net::Ipv4Addr;
use std::time::SystemTime;

use weft::config::NetConfig;
use weft::lease::alloc::allocate;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(c) = NetConfig::parse(text) else { return };
    let plen = c.network.prefix_len();
    assert!(c.subnet_len <= 30 && c.subnet_len >= plen + 2, "{c:?}");
    assert!(c.network.contains(&c.subnet_min) && c.network.contains(&c.subnet_max), "{c:?}");
    assert!(c.subnet_min <= c.subnet_max, "{c:?}");
    let mask = u32::MAX << (32 - c.subnet_len);
    assert_eq!(u32::from(c.subnet_min) & mask, u32::from(c.subnet_min));
    assert_eq!(u32::from(c.subnet_max) & mask, u32::from(c.subnet_max));
    assert!(c.subnet_count() >= 1);
    let a = allocate(&c, &[], Ipv4Addr::new(192, 0, 2, 1), None, SystemTime::UNIX_EPOCH, data.len() as u64)
        .expect("an empty network must have a free subnet");
    assert!(c.is_compatible(a.subnet), "{a:?} for {c:?}");
    let _ = c.backend.pod_mtu(1500);
});
