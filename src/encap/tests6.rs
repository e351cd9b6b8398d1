//! Tests of the core's IPv6 side against frames captured from Linux's own vxlan driver
//! configured as flanneld configures `flannel-v6.1` (`tests/data/kernel-vxlan6-*.hex`,
//! made by `scripts/capture-vectors6`), and against packets built by etherparse.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::tests::frames;
use super::*;
use crate::lease::table::BackendKind;
use crate::testkit::{node, peer, public_ip6};
use crate::wire::{icmpv6, ipv6, udp::ChecksumMode};

const FULL6: &str = include_str!("../../tests/data/kernel-vxlan6-full-checksums.hex");
const PARTIAL6: &str = include_str!("../../tests/data/kernel-vxlan6-partial-checksums.hex");
/// Where the outer UDP checksum lies in an outer IPv6 datagram.
const UDP_CSUM: std::ops::Range<usize> = 46..48;

fn table() -> Snapshot {
    Snapshot::build(
        "10.244.0.0/16".parse().unwrap(),
        [
            peer(1, BackendKind::Vxlan, 1),
            peer(2, BackendKind::Vxlan, 1),
        ],
        0,
    )
}

/// Node 1 or 2 (dual-stack, as in the vectors).
fn n(i: u8, csum: ChecksumMode) -> Node {
    node(i, true, 1, csum)
}

/// (sender, receiver) of a captured outer IPv6 datagram.
fn ends(datagram: &[u8]) -> (u8, u8) {
    let src = ipv6::Packet::new_checked(datagram).unwrap().src();
    if src == public_ip6(1) {
        (1, 2)
    } else {
        (2, 1)
    }
}

fn check_vectors6(text: &str, csum: ChecksumMode) -> usize {
    let mut count = 0;
    for (desc, frame) in frames(text) {
        assert_eq!(u16::from_be_bytes([frame[12], frame[13]]), 0x86dd, "{desc}");
        let datagram = &frame[14..];
        let (s, r) = ends(datagram);
        let inner = &datagram[VXLAN6_OVERHEAD..];
        // The receiver delivers exactly the inner packet.
        let mut rx = datagram.to_vec();
        let got = n(r, csum).inbound_datagram(&table(), &mut rx);
        let want = VXLAN6_OVERHEAD..datagram.len();
        assert_eq!(got, Inbound::Deliver(want), "{desc}");
        assert_eq!(&rx[VXLAN6_OVERHEAD..], inner, "{desc}");
        // Emitting again with the captured source port reproduces the kernel's bytes.
        let sport = u16::from_be_bytes([datagram[40], datagram[41]]);
        let emit = |buf: &mut [u8], csum| {
            let h = vxlan::Headers {
                vni: 1,
                src_mac: n(s, csum).v6.unwrap().mac,
                dst_mac: n(r, csum).v6.unwrap().mac,
                src_port: sport,
                dst_port: 8472,
            };
            h.emit6(buf, public_ip6(s), public_ip6(r), csum);
        };
        let mut tx = vec![0xa5u8; datagram.len()];
        tx[VXLAN6_OVERHEAD..].copy_from_slice(inner);
        emit(&mut tx, csum);
        if csum == ChecksumMode::Full || tx == datagram {
            assert_eq!(tx, datagram, "{desc}");
        } else {
            // Local checksum offload, as in the IPv4 vectors: the inner checksum is
            // partial, the outer one what it will be once the inner one is complete.
            assert_eq!(tx[..UDP_CSUM.start], datagram[..UDP_CSUM.start], "{desc}");
            assert_eq!(tx[UDP_CSUM.end..], datagram[UDP_CSUM.end..], "{desc}");
            let mut fixed = tx.clone();
            assert!(ipv6::fill_transport_checksum(&mut fixed[VXLAN6_OVERHEAD..]));
            emit(&mut fixed, ChecksumMode::Full);
            assert_eq!(fixed[UDP_CSUM], datagram[UDP_CSUM], "{desc}: LCO");
        }
        // The outbound path agrees but for the source port (our hash) and its checksum.
        let mut buf = vec![0u8; HEADROOM + inner.len()];
        buf[HEADROOM..].copy_from_slice(inner);
        let out = n(s, csum).outbound(&table(), &mut buf, HEADROOM, inner.len(), 0);
        let Outbound::Send(t) = out else {
            panic!("{desc}: not sent: {out:?}")
        };
        assert_eq!(t.dst, SocketAddr::new(IpAddr::V6(public_ip6(r)), 8472));
        assert_eq!(t.udp_payload().start, t.datagram.start + 48);
        let sent = &buf[t.datagram.clone()];
        assert_eq!(sent.len(), datagram.len(), "{desc}");
        for (i, (a, b)) in sent.iter().zip(datagram).enumerate() {
            if !(40..42).contains(&i) && !UDP_CSUM.contains(&i) {
                assert_eq!(a, b, "{desc}: byte {i}");
            }
        }
        count += 1;
    }
    count
}

#[test]
fn kernel_ipv6_vectors_full_checksums() {
    assert_eq!(check_vectors6(FULL6, ChecksumMode::Full), 8);
}

#[test]
fn kernel_ipv6_vectors_partial_checksums() {
    assert_eq!(check_vectors6(PARTIAL6, ChecksumMode::Partial), 8);
}

/// An IPv6 UDP packet from `src` to `dst` with `payload` bytes, from etherparse.
fn udp6(src: Ipv6Addr, dst: Ipv6Addr, payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .udp(40000, 5201)
        .write(&mut v, &vec![0x57; payload])
        .unwrap();
    v
}

fn pod(i: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, i as u16, 0, 0, 0, host)
}

fn outbound(node: &Node, pkt: &[u8]) -> (Outbound, Vec<u8>) {
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(pkt);
    (
        node.outbound(&table(), &mut buf, HEADROOM, pkt.len(), 0),
        buf,
    )
}

#[test]
fn the_largest_packet_that_fits_crosses_and_one_byte_more_gets_packet_too_big() {
    let a = n(1, ChecksumMode::Full);
    // 1430 bytes in all: the IPv6 budget on a 1500-byte underlay.
    let fits = udp6(pod(1, 5), pod(2, 7), 1430 - 48);
    let (out, buf) = outbound(&a, &fits);
    let Outbound::Send(t) = out else {
        panic!("{out:?}")
    };
    assert_eq!(t.datagram.len(), 1500);
    let mut d = buf[t.datagram].to_vec();
    let got = n(2, ChecksumMode::Full).inbound_datagram(&table(), &mut d);
    assert_eq!(got, Inbound::Deliver(VXLAN6_OVERHEAD..1500));
    assert_eq!(&d[VXLAN6_OVERHEAD..], &fits[..]);

    let big = udp6(pod(1, 5), pod(2, 7), 1431 - 48);
    let (out, buf) = outbound(&a, &big);
    let Outbound::Reply { packet, reason } = out else {
        panic!("{out:?}")
    };
    assert_eq!(reason, DropReason::TooBig);
    let msg = &buf[packet];
    assert_eq!(msg.len(), 1280, "as much as fits the minimum MTU");
    let (ip, rest) = etherparse::Ipv6Header::from_slice(msg).unwrap();
    assert_eq!(Ipv6Addr::from(ip.source), pod(2, 7));
    assert_eq!(Ipv6Addr::from(ip.destination), pod(1, 5));
    let (icmp, quoted) = etherparse::Icmpv6Header::from_slice(rest).unwrap();
    assert_eq!(
        icmp.icmp_type,
        etherparse::Icmpv6Type::PacketTooBig { mtu: 1430 }
    );
    let want = icmp
        .icmp_type
        .calc_checksum(ip.source, ip.destination, quoted)
        .unwrap();
    assert_eq!(icmp.checksum, want);
    assert_eq!(quoted, &big[..1280 - 48]);
}

#[test]
fn no_lease_gets_unreachable_and_multicast_or_errors_are_dropped() {
    let a = n(1, ChecksumMode::Full);
    let (out, buf) = outbound(&a, &udp6(pod(1, 5), pod(9, 7), 10));
    let Outbound::Reply { packet, reason } = out else {
        panic!("{out:?}")
    };
    assert_eq!(reason, DropReason::NoLease);
    assert_eq!(buf[packet.start + 40], icmpv6::TYPE_DEST_UNREACHABLE);
    let mcast = "ff02::2".parse().unwrap();
    let (out, _) = outbound(&a, &udp6(pod(1, 5), mcast, 10));
    assert_eq!(out, Outbound::Drop(DropReason::NoLease));
    let (out, _) = outbound(&a, &udp6(pod(1, 5), pod(1, 9), 10));
    assert_eq!(out, Outbound::Drop(DropReason::Loop));
    let (out, _) = outbound(&a, &[0x60, 0, 0]);
    assert_eq!(out, Outbound::Drop(DropReason::MalformedInner));
    // A node without an IPv6 network drops IPv6 pods, counted.
    let v4_only = Node { v6: None, ..a };
    let (out, _) = outbound(&v4_only, &udp6(pod(1, 5), pod(2, 7), 10));
    assert_eq!(out, Outbound::Drop(DropReason::InnerIpv6));
}

/// Node `from`'s datagram carrying `inner` to node 2, as node 2's socket would get it.
fn received(from: u8, inner: &[u8]) -> Vec<u8> {
    let (out, buf) = outbound(&n(from, ChecksumMode::Full), inner);
    let Outbound::Send(t) = out else {
        panic!("{out:?}")
    };
    buf[t.udp_payload()].to_vec()
}

#[test]
fn the_receiver_polices_ipv6_senders_sources_and_destinations() {
    let b = n(2, ChecksumMode::Full);
    let t = table();
    let check = |from: SocketAddr, mut payload: Vec<u8>| {
        let len = payload.len();
        b.inbound(&t, from, &mut payload, 0, len, 0)
    };
    let a6 = SocketAddr::new(public_ip6(1).into(), 40000);
    let good = received(1, &udp6(pod(1, 5), pod(2, 7), 10));
    assert!(matches!(check(a6, good.clone()), Inbound::Deliver(_)));
    // Over the IPv4 underlay an IPv6 pod packet is not what flannel sends.
    let a4 = SocketAddr::from((std::net::Ipv4Addr::new(192, 0, 2, 1), 40000));
    assert_eq!(
        check(a4, good.clone()),
        Inbound::Drop(DropReason::FamilyMismatch)
    );
    let stranger = SocketAddr::new("2001:db8::99".parse::<Ipv6Addr>().unwrap().into(), 1);
    assert_eq!(
        check(stranger, good.clone()),
        Inbound::Drop(DropReason::UnknownSender)
    );
    let ours = SocketAddr::new(public_ip6(2).into(), 1);
    assert_eq!(check(ours, good), Inbound::Drop(DropReason::Loop));
    // Node 1 claiming a source in node 2's subnet, or sending to a pod not ours.
    let spoofed = received(1, &udp6(pod(3, 5), pod(2, 7), 10));
    assert_eq!(check(a6, spoofed), Inbound::Drop(DropReason::SpoofedSource));
    // A destination outside the receiver's subnet.
    let moved = Node {
        v6: b.v6.map(|v6| NodeV6 {
            subnet: crate::testkit::subnet6(4),
            ..v6
        }),
        ..b
    };
    let mut p = received(1, &udp6(pod(1, 5), pod(2, 7), 10));
    let len = p.len();
    let got = moved.inbound(&t, a6, &mut p, 0, len, 0);
    assert_eq!(got, Inbound::Drop(DropReason::NotLocal));
}

#[test]
fn outer_ce_marks_an_ect_packet_and_condemns_a_not_ect_one() {
    let b = n(2, ChecksumMode::Full);
    let a6 = SocketAddr::new(public_ip6(1).into(), 40000);
    let mut ect = udp6(pod(1, 5), pod(2, 7), 10);
    ipv6::set_ecn(&mut ect, 0b10);
    let mut p = received(1, &ect);
    let len = p.len();
    let Inbound::Deliver(r) = b.inbound(&table(), a6, &mut p, 0, len, 0b11) else {
        panic!("dropped")
    };
    assert_eq!(
        ipv6::Packet::new_checked(&p[r]).unwrap().traffic_class() & 3,
        3
    );
    let mut p = received(1, &udp6(pod(1, 5), pod(2, 7), 10));
    let got = b.inbound(&table(), a6, &mut p, 0, len, 0b11);
    assert_eq!(got, Inbound::Drop(DropReason::EcnCeNotEct));
}

#[test]
fn both_directions_of_a_flow_share_a_source_port() {
    let a = n(1, ChecksumMode::Full);
    let port = |pkt: &[u8]| match outbound(&a, pkt).0 {
        Outbound::Send(t) => t.src_port,
        o => panic!("{o:?}"),
    };
    let there = udp6(pod(1, 5), pod(2, 7), 10);
    let mut back = udp6(pod(2, 7), pod(1, 5), 10);
    // The reply's ports are swapped too.
    back.swap(40, 42);
    back.swap(41, 43);
    let a_as_b = n(2, ChecksumMode::Full);
    let back_port = match outbound(&a_as_b, &back).0 {
        Outbound::Send(t) => t.src_port,
        o => panic!("{o:?}"),
    };
    assert_eq!(port(&there), back_port);
}

/// RFC 8200 8.1: a UDP/IPv6 datagram with checksum zero is discarded by the receiving
/// stack (the pod's, behind kernel vxlan), so weft drops it, counted, rather than deliver
/// it with a checksum filled in.
#[test]
fn an_inner_udp_datagram_with_a_zero_checksum_is_dropped() {
    let b = n(2, ChecksumMode::Full);
    let a6 = SocketAddr::new(public_ip6(1).into(), 40000);
    let mut inner = udp6(pod(1, 5), pod(2, 7), 10);
    let good = received(1, &inner);
    inner[ipv6::HEADER_LEN + 6..ipv6::HEADER_LEN + 8].fill(0);
    let mut zero = received(1, &inner);
    let len = zero.len();
    assert_eq!(
        b.inbound(&table(), a6, &mut zero, 0, len, 0),
        Inbound::Drop(DropReason::InnerChecksum)
    );
    let mut good = good;
    let len = good.len();
    assert!(matches!(
        b.inbound(&table(), a6, &mut good, 0, len, 0),
        Inbound::Deliver(_)
    ));
}

/// The VNI on the wire is our device's, as the kernel's flannel-v6.<VNI> and weft's IPv4
/// side send it, whatever a peer's BackendV6Data says; and a peer whose IPv6 VNI is not
/// ours is refused as its IPv4 side would be.
#[test]
fn the_vni_is_ours_both_ways() {
    let mut other = peer(2, BackendKind::Vxlan, 1);
    other.v6 = other
        .v6
        .map(|v| crate::lease::table::PeerV6 { vni: 7, ..v });
    let t = Snapshot::build(
        "10.244.0.0/16".parse().unwrap(),
        [peer(1, BackendKind::Vxlan, 1), other],
        0,
    );
    let a = n(1, ChecksumMode::Full);
    let pkt = udp6(pod(1, 5), pod(2, 7), 10);
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(&pkt);
    let Outbound::Send(tx) = a.outbound(&t, &mut buf, HEADROOM, pkt.len(), 0) else {
        panic!()
    };
    let vxlan = &buf[tx.datagram.start + VXLAN6_OVERHEAD - 14 - 8..];
    assert_eq!(&vxlan[4..7], &[0, 0, 1]);
    // Node 1 receiving from node 2, whose IPv6 lease says VNI 7.
    let mut from2 = received(2, &udp6(pod(2, 7), pod(1, 5), 10));
    let len = from2.len();
    let b6 = SocketAddr::new(public_ip6(2).into(), 40000);
    assert_eq!(
        a.inbound(&t, b6, &mut from2, 0, len, 0),
        Inbound::Drop(DropReason::WrongBackend)
    );
}
