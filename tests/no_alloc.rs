//! The packet path allocates nothing: a counting global allocator watches encapsulation,
//! decapsulation, ICMP generation and lease lookups (through the shared table, as workers
//! read it).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;

use weft::encap::{Format, Inbound, Node, Outbound, HEADROOM, LINUX_SRC_PORTS};
use weft::lease::table::BackendKind;
use weft::lease::{LeaseTable, Peer};
use weft::wire::udp::ChecksumMode;
use weft::wire::MacAddr;

struct Counting;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    let _ = ACTIVE.try_with(|a| {
        if a.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: delegates every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    ACTIVE.with(|a| a.set(true));
    f();
    ACTIVE.with(|a| a.set(false));
    COUNT.with(|c| c.get())
}

fn peer(i: u8, backend: BackendKind) -> Peer {
    Peer {
        subnet: format!("10.244.{i}.0/24").parse().ok(),
        public_ip: Ipv4Addr::new(192, 0, 2, i),
        backend,
        vni: 1,
        vtep_mac: MacAddr([0x0e, 0, 0, 0, i, 1]),
        super_datagrams: true,
        v6: None,
        wg: None,
    }
}

fn echo(dst: [u8; 4], payload: usize, df: bool) -> Vec<u8> {
    let mut ip =
        etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::ICMP, [10, 244, 1, 5], dst)
            .unwrap();
    ip.dont_fragment = df;
    let mut v = Vec::new();
    etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .icmpv4_echo_request(1, 1)
        .write(&mut v, &vec![0x5a; payload])
        .unwrap();
    v
}

fn check(format: Format, backend: BackendKind, mtu: usize) {
    let table = LeaseTable::new("10.244.0.0/16".parse().unwrap());
    table.replace_all((1..=200).map(|i| peer(i, backend)));
    let a = Node {
        public_ip: Ipv4Addr::new(192, 0, 2, 1),
        subnet: "10.244.1.0/24".parse().ok(),
        mtu,
        format,
        udp_checksum: ChecksumMode::Full,
        hash_seed: 1,
        v6: None,
    };
    let b = Node {
        public_ip: Ipv4Addr::new(192, 0, 2, 2),
        subnet: "10.244.2.0/24".parse().ok(),
        ..a
    };
    let b = match format {
        Format::Vxlan {
            vni,
            port,
            src_ports,
            ..
        } => Node {
            format: Format::Vxlan {
                vni,
                port,
                src_ports,
                mac: MacAddr([0x0e, 0, 0, 0, 2, 1]),
            },
            ..b
        },
        Format::Udp { .. } => b,
    };
    let packets = [
        echo([10, 244, 2, 5], 1400, true),
        echo([10, 244, 2, 5], 64, false),
    ];
    let too_big = echo([10, 244, 2, 5], 2000, true);
    let unknown = echo([10, 244, 250, 5], 64, false);
    let mut buf = vec![0u8; HEADROOM + 4096];
    let _ = table.load(); // arc-swap registers this thread on its first load
    for pkt in &packets {
        let n = allocations_in(|| {
            buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
            let snap = table.load();
            let Outbound::Send(t) = a.outbound(&snap, &mut buf, HEADROOM, pkt.len(), 1) else {
                panic!("not sent")
            };
            let from = std::net::SocketAddr::from((a.public_ip, t.src_port));
            let payload = t.udp_payload();
            match b.inbound(&snap, from, &mut buf, payload.start, payload.len(), 0) {
                Inbound::Deliver(r) => assert_eq!(&buf[r], &pkt[..]),
                other => panic!("{other:?}"),
            }
        });
        assert_eq!(n, 0, "encap+decap of {} bytes allocated", pkt.len());
    }
    for pkt in [&too_big, &unknown] {
        let n = allocations_in(|| {
            buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
            let snap = table.load();
            assert!(matches!(
                a.outbound(&snap, &mut buf, HEADROOM, pkt.len(), 1),
                Outbound::Reply { .. }
            ));
        });
        assert_eq!(n, 0, "ICMP error generation allocated");
    }
    // Sanity: the counter does see allocations.
    assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 10]))) > 0);
}

#[test]
fn vxlan_path_allocates_nothing() {
    let mac = MacAddr([0x0e, 0, 0, 0, 1, 1]);
    check(
        Format::Vxlan {
            vni: 1,
            port: 8472,
            mac,
            src_ports: LINUX_SRC_PORTS,
        },
        BackendKind::Vxlan,
        1450,
    );
}

#[test]
fn udp_path_allocates_nothing() {
    check(Format::Udp { port: 8285 }, BackendKind::Udp, 1472);
}

/// An IPv6 UDP packet from node 1's pod to `dst_node`'s, `payload` bytes.
fn udp6(dst_node: u16, payload: usize) -> Vec<u8> {
    let pod = |n: u16| std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, n, 0, 0, 0, 5).octets();
    let mut v = Vec::new();
    etherparse::PacketBuilder::ipv6(pod(1), pod(dst_node), 64)
        .udp(40000, 5201)
        .write(&mut v, &vec![0x5a; payload])
        .unwrap();
    v
}

#[test]
fn ipv6_path_allocates_nothing() {
    use weft::testkit;
    let table = LeaseTable::new("10.244.0.0/16".parse().unwrap());
    table.replace_all((1..=200).map(|i| testkit::peer(i, BackendKind::Vxlan, 1)));
    let (a, b) = (
        testkit::node(1, true, 1, ChecksumMode::Full),
        testkit::node(2, true, 1, ChecksumMode::Full),
    );
    let mut buf = vec![0u8; HEADROOM + 4096];
    let _ = table.load();
    for pkt in [udp6(2, 1300), udp6(2, 16)] {
        let n = allocations_in(|| {
            buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
            let snap = table.load();
            let Outbound::Send(t) = a.outbound(&snap, &mut buf, HEADROOM, pkt.len(), 1) else {
                panic!("not sent")
            };
            let from = std::net::SocketAddr::new(testkit::public_ip6(1).into(), t.src_port);
            let payload = t.udp_payload();
            match b.inbound(&snap, from, &mut buf, payload.start, payload.len(), 0) {
                Inbound::Deliver(r) => assert_eq!(&buf[r], &pkt[..]),
                other => panic!("{other:?}"),
            }
        });
        assert_eq!(n, 0, "IPv6 encap+decap of {} bytes allocated", pkt.len());
    }
    for pkt in [udp6(2, 2000), udp6(250, 64)] {
        let n = allocations_in(|| {
            buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
            let snap = table.load();
            assert!(matches!(
                a.outbound(&snap, &mut buf, HEADROOM, pkt.len(), 1),
                Outbound::Reply { .. }
            ));
        });
        assert_eq!(n, 0, "ICMPv6 error generation allocated");
    }
}
