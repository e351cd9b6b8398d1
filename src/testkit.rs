//! Fixtures shared by weft's benches, integration tests and fuzz targets; not part of weft's
//! API. Node `i` of a test cluster is 192.0.2.`i` with subnet 10.244.`i`.0/24 and VTEP MAC
//! 0e:00:00:00:`i`:01, as in the kernel vectors (`tests/data`); a vxlan node is dual-stack,
//! with 2001:db8::`i` and fd00:10:244:`i`::/64 (the IPv6 vectors' addresses, same MAC).

pub mod fuzz;
pub mod wg;

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::encap::{Format, Node, NodeV6, LINUX_SRC_PORTS};
use crate::lease::table::BackendKind;
use crate::lease::{Peer, PeerV6};
use crate::wire::udp::ChecksumMode;
use crate::wire::MacAddr;

/// Node `i`'s lease as the table holds it.
pub fn peer(i: u8, backend: BackendKind, vni: u32) -> Peer {
    Peer {
        subnet: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).ok(),
        public_ip: Ipv4Addr::new(192, 0, 2, i),
        backend,
        vni,
        vtep_mac: MacAddr([0x0e, 0, 0, 0, i, 1]),
        // A weft node: takes super-datagrams in either format.
        super_datagrams: true,
        v6: (backend == BackendKind::Vxlan).then(|| PeerV6 {
            subnet: subnet6(i),
            public_ip: public_ip6(i),
            vni,
            vtep_mac: MacAddr([0x0e, 0, 0, 0, i, 1]),
        }),
        wg: None,
    }
}

/// Node `i`'s IPv6 pod subnet, fd00:10:244:`i`::/64.
pub fn subnet6(i: u8) -> ipnet::Ipv6Net {
    let a = Ipv6Addr::new(0xfd00, 0x10, 0x244, i as u16, 0, 0, 0, 0);
    ipnet::Ipv6Net::new(a, 64).unwrap_or_default()
}

/// Node `i`'s IPv6 underlay address, 2001:db8::`i`.
pub fn public_ip6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16)
}

/// Node `i` itself, vxlan (ports 8472, MTU 1450) or udp (8285, 1472).
pub fn node(i: u8, vxlan: bool, vni: u32, udp_checksum: ChecksumMode) -> Node {
    let format = if vxlan {
        Format::Vxlan {
            vni,
            port: 8472,
            mac: MacAddr([0x0e, 0, 0, 0, i, 1]),
            src_ports: LINUX_SRC_PORTS,
        }
    } else {
        Format::Udp { port: 8285 }
    };
    Node {
        public_ip: Ipv4Addr::new(192, 0, 2, i),
        subnet: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).ok(),
        mtu: if vxlan { 1450 } else { 1472 },
        format,
        udp_checksum,
        hash_seed: 1,
        v6: vxlan.then(|| NodeV6 {
            public_ip: public_ip6(i),
            subnet: subnet6(i),
            mtu: 1430,
            mac: MacAddr([0x0e, 0, 0, 0, i, 1]),
        }),
    }
}
