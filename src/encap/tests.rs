//! Tests of the core against frames captured from Linux's own vxlan driver
//! (`tests/data/*.hex`, copied from `shared/vectors`) and against packets built by an
//! independent implementation (etherparse).

use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::lease::table::BackendKind;
use crate::lease::{Peer, Snapshot};
use crate::wire::{icmpv4, ipv4, udp::ChecksumMode, MacAddr};

pub(crate) const FULL: &str = include_str!("../../tests/data/kernel-vxlan-full-checksums.hex");
pub(crate) const PARTIAL: &str =
    include_str!("../../tests/data/kernel-vxlan-partial-checksums.hex");

/// (description, frame) pairs of a vector file.
pub(crate) fn frames(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut desc = String::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix('#') {
            desc = d.trim().to_string();
        } else if !line.trim().is_empty() {
            let h = line.trim();
            let bytes = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect();
            out.push((desc.clone(), bytes));
        }
    }
    out
}

const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const A_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 1, 1]);
const B_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 2, 1]);

/// Node `n`'s vxlan peer: 10.244.n.0/24 at 192.0.2.n.
fn peer(n: u8, public_ip: Ipv4Addr, vtep_mac: MacAddr) -> Peer {
    Peer {
        subnet: format!("10.244.{n}.0/24").parse().ok(),
        public_ip,
        backend: BackendKind::Vxlan,
        vni: 1,
        vtep_mac,
        super_datagrams: true,
        v6: None,
        wg: None,
    }
}

fn peer_a() -> Peer {
    peer(1, A_IP, A_MAC)
}

fn peer_b() -> Peer {
    peer(2, B_IP, B_MAC)
}

fn table() -> Snapshot {
    Snapshot::build("10.244.0.0/16".parse().unwrap(), [peer_a(), peer_b()], 0)
}

fn node_for(p: &Peer, csum: ChecksumMode) -> Node {
    Node {
        public_ip: p.public_ip,
        subnet: p.subnet,
        mtu: 1450,
        format: Format::Vxlan {
            vni: 1,
            port: 8472,
            mac: p.vtep_mac,
            src_ports: LINUX_SRC_PORTS,
        },
        udp_checksum: csum,
        hash_seed: 7,
        v6: None,
    }
}

fn udp_node(p: &Peer) -> Node {
    Node {
        format: Format::Udp { port: 8285 },
        mtu: 1472,
        ..node_for(p, ChecksumMode::Full)
    }
}

/// The sender and receiver of a captured frame.
fn ends(datagram: &[u8]) -> (Peer, Peer) {
    let src = ipv4::Packet::new_checked(datagram).unwrap().src();
    if src == A_IP {
        (peer_a(), peer_b())
    } else {
        (peer_b(), peer_a())
    }
}

fn check_vectors(text: &str, csum: ChecksumMode) -> usize {
    let mut n = 0;
    for (desc, frame) in frames(text) {
        let datagram = &frame[14..];
        let (sender, receiver) = ends(datagram);
        let inner = &datagram[VXLAN_OVERHEAD..];

        // Decapsulation at the receiver yields exactly the inner packet.
        let mut rx = datagram.to_vec();
        let got = node_for(&receiver, csum).inbound_datagram(&table(), &mut rx);
        assert_eq!(
            got,
            Inbound::Deliver(VXLAN_OVERHEAD..datagram.len()),
            "{desc}"
        );
        assert_eq!(&rx[VXLAN_OVERHEAD..], inner, "{desc}");
        check_reemit(&desc, datagram, (&sender, &receiver), csum);
        check_outbound(&desc, datagram, (&sender, &receiver), csum);
        n += 1;
    }
    n
}

/// Encapsulating a captured frame's inner packet again with its IP ID and source port
/// reproduces every byte the kernel sent, checksums included.
fn check_reemit(
    desc: &str,
    datagram: &[u8],
    (sender, receiver): (&Peer, &Peer),
    csum: ChecksumMode,
) {
    let inner = &datagram[VXLAN_OVERHEAD..];
    let ip = ipv4::Packet::new_checked(datagram).unwrap();
    let sport = u16::from_be_bytes([datagram[20], datagram[21]]);
    let mut tx = vec![0xa5u8; datagram.len()];
    tx[VXLAN_OVERHEAD..].copy_from_slice(inner);
    let emit = |buf: &mut [u8], csum| {
        let h = vxlan::Headers {
            vni: 1,
            src_mac: sender.vtep_mac,
            dst_mac: receiver.vtep_mac,
            src_port: sport,
            dst_port: 8472,
        };
        h.emit(buf, sender.public_ip, receiver.public_ip, ip.ident(), csum);
    };
    emit(&mut tx, csum);
    if csum == ChecksumMode::Full || tx == datagram {
        assert_eq!(tx, datagram, "{desc}");
        return;
    }
    // The kernel used local checksum offload (LCO): the inner TCP/UDP checksum is left
    // partial, and the outer one is the full checksum the datagram will have once the
    // inner one is completed. Complete it and compare with a full checksum.
    assert_eq!(tx[..26], datagram[..26], "{desc}");
    assert_eq!(tx[28..], datagram[28..], "{desc}");
    let mut fixed = tx.clone();
    assert!(
        ipv4::fill_transport_checksum(&mut fixed[VXLAN_OVERHEAD..]),
        "{desc}"
    );
    assert_ne!(
        fixed[VXLAN_OVERHEAD..],
        datagram[VXLAN_OVERHEAD..],
        "{desc}: inner was complete"
    );
    emit(&mut fixed, ChecksumMode::Full);
    assert_eq!(
        fixed[26..28],
        datagram[26..28],
        "{desc}: LCO outer checksum"
    );
}

/// The full outbound path agrees with a captured frame except in the fields that
/// legitimately vary: the source port (our flow hash) and the UDP checksum that covers it.
fn check_outbound(
    desc: &str,
    datagram: &[u8],
    (sender, receiver): (&Peer, &Peer),
    csum: ChecksumMode,
) {
    let inner = &datagram[VXLAN_OVERHEAD..];
    let ip = ipv4::Packet::new_checked(datagram).unwrap();
    let mut buf = vec![0u8; HEADROOM + inner.len()];
    buf[HEADROOM..].copy_from_slice(inner);
    let Outbound::Send(t) =
        node_for(sender, csum).outbound(&table(), &mut buf, HEADROOM, inner.len(), ip.ident())
    else {
        panic!("{desc}: not sent")
    };
    assert_eq!(t.dst, SocketAddrV4::new(receiver.public_ip, 8472).into());
    let out = &buf[t.datagram.clone()];
    assert_eq!(out.len(), datagram.len(), "{desc}");
    for (i, (a, b)) in out.iter().zip(datagram).enumerate() {
        if !(20..22).contains(&i) && !(26..28).contains(&i) {
            assert_eq!(a, b, "{desc}: byte {i}");
        }
    }
    assert!((32768..=60999).contains(&t.src_port));
}

#[test]
fn kernel_vectors_full_checksums() {
    assert_eq!(check_vectors(FULL, ChecksumMode::Full), 8);
}

#[test]
fn kernel_vectors_partial_checksums() {
    // The kernel leaves the outer UDP checksum as the bare pseudo-header sum on a veth;
    // ChecksumMode::Partial reproduces it, and decapsulation accepts it.
    assert_eq!(check_vectors(PARTIAL, ChecksumMode::Partial), 6);
}

#[test]
fn ping_flow_gets_one_source_port_both_ways() {
    // The kernel used 53331 for the echo request and its reply: its hash is symmetric,
    // and so is ours (with our own seed, so the value differs).
    let f = frames(FULL);
    let req = &f[0].1[14 + VXLAN_OVERHEAD..];
    let rep = &f[1].1[14 + VXLAN_OVERHEAD..];
    assert_eq!(f[0].1[14 + 20..14 + 22], f[1].1[14 + 20..14 + 22]);
    assert_eq!(
        flow_src_port(req, 1, LINUX_SRC_PORTS),
        flow_src_port(rep, 1, LINUX_SRC_PORTS)
    );
    // Different flows spread over the range.
    let tcp = &f[4].1[14 + VXLAN_OVERHEAD..];
    let udp = &f[6].1[14 + VXLAN_OVERHEAD..];
    let ports = [req, tcp, udp].map(|p| flow_src_port(p, 1, LINUX_SRC_PORTS));
    assert!(ports[0] != ports[1] || ports[1] != ports[2], "{ports:?}");
}

#[test]
fn icmp_error_emitter_matches_the_kernel() {
    // The last full-checksum frame carries the kernel's own port unreachable for the
    // probe datagram; emit the same message and compare every byte.
    let f = frames(FULL);
    let kernel = &f[7].1[14 + VXLAN_OVERHEAD..];
    let probe = &f[6].1[14 + VXLAN_OVERHEAD..];
    let ident = ipv4::Packet::new_checked(kernel).unwrap().ident();
    let mut msg = vec![0u8; 28 + probe.len()];
    msg[28..].copy_from_slice(probe);
    icmpv4::DestUnreachable {
        src: Ipv4Addr::new(10, 244, 2, 0),
        dst: Ipv4Addr::new(10, 244, 1, 0),
        code: icmpv4::CODE_PORT_UNREACHABLE,
        next_hop_mtu: 0,
        ident,
    }
    .emit(&mut msg);
    assert_eq!(msg, kernel);
}

fn icmp_echo(src: [u8; 4], dst: [u8; 4], payload: usize, df: bool) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::ICMP, src, dst).unwrap();
    ip.dont_fragment = df;
    let b = etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .icmpv4_echo_request(1, 2);
    let data = vec![0x57u8; payload];
    let mut v = Vec::new();
    b.write(&mut v, &data).unwrap();
    v
}

fn run_outbound(node: &Node, pkt: &[u8]) -> (Outbound, Vec<u8>) {
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(pkt);
    let o = node.outbound(&table(), &mut buf, HEADROOM, pkt.len(), 99);
    (o, buf)
}

#[test]
fn mtu_budget_and_frag_needed() {
    let a = node_for(&peer_a(), ChecksumMode::Full);
    // 1450 bytes with DF fits the budget.
    let fits = icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 1450 - 28, true);
    assert!(matches!(run_outbound(&a, &fits).0, Outbound::Send(_)));
    // One byte more with DF: fragmentation needed, next-hop MTU 1450, from the destination
    // (not from one of the node's own addresses, which the kernel would drop as martian).
    let big = icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 1450 - 27, true);
    let (o, buf) = run_outbound(&a, &big);
    let Outbound::Reply { packet, reason } = o else {
        panic!("{o:?}")
    };
    assert_eq!(reason, DropReason::TooBig);
    let msg = &buf[packet];
    let s = etherparse::SlicedPacket::from_ip(msg).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
        panic!()
    };
    assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 244, 2, 5));
    assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 244, 1, 5));
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = s.transport else {
        panic!()
    };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1450 }
        )
    );
    assert_eq!(
        icmp.header().checksum,
        icmp.icmp_type().calc_checksum(icmp.payload())
    );
    // It quotes the offender's first bytes: the whole 576-byte message at most.
    assert_eq!(msg.len(), 576);
    assert_eq!(icmp.payload(), &big[..548]);
    // Without DF it is sent whole; the underlay fragments the outer datagram.
    let big_nodf = icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 1450 - 27, false);
    assert!(matches!(run_outbound(&a, &big_nodf).0, Outbound::Send(_)));
    // The udp backend's budget is 1472.
    let u = udp_node(&peer_a());
    let t = Snapshot::build(
        "10.244.0.0/16".parse().unwrap(),
        [Peer {
            backend: BackendKind::Udp,
            ..peer_b()
        }],
        0,
    );
    let pkt = icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 1472 - 28, true);
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(&pkt);
    assert!(matches!(
        u.outbound(&t, &mut buf, HEADROOM, pkt.len(), 1),
        Outbound::Send(_)
    ));
    let pkt = icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 1472 - 27, true);
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(&pkt);
    assert!(matches!(
        u.outbound(&t, &mut buf, HEADROOM, pkt.len(), 1),
        Outbound::Reply {
            reason: DropReason::TooBig,
            ..
        }
    ));
}

#[test]
fn no_lease_gets_net_unreachable_but_never_for_icmp_errors() {
    let a = node_for(&peer_a(), ChecksumMode::Full);
    let pkt = icmp_echo([10, 244, 1, 5], [10, 244, 9, 5], 10, false);
    let (o, buf) = run_outbound(&a, &pkt);
    let Outbound::Reply { packet, reason } = o else {
        panic!("{o:?}")
    };
    assert_eq!(reason, DropReason::NoLease);
    let msg = &buf[packet];
    let ip = ipv4::Packet::new_checked(msg).unwrap();
    assert!(ip.verify_checksum());
    let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((icmp.msg_type(), icmp.code()), (3, 0));
    assert!(icmp.verify_checksum());
    assert_eq!(icmp.data(), &pkt[..]);

    // An ICMP error to an unknown destination is dropped silently.
    let mut err = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 244, 1, 5], [10, 244, 9, 5], 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Host,
        ))
        .write(&mut err, &pkt[..28])
        .unwrap();
    assert_eq!(
        run_outbound(&a, &err).0,
        Outbound::Drop(DropReason::NoLease)
    );
    // So is anything to a multicast or broadcast destination.
    let mc = icmp_echo([10, 244, 1, 5], [224, 0, 0, 1], 10, false);
    assert_eq!(run_outbound(&a, &mc).0, Outbound::Drop(DropReason::NoLease));
    // And a non-first fragment.
    let mut frag = pkt.clone();
    frag[6..8].copy_from_slice(&[0x00, 0x10]);
    let mut p = ipv4::Packet::new_unchecked(&mut frag[..]);
    p.fill_checksum();
    assert_eq!(
        run_outbound(&a, &frag).0,
        Outbound::Drop(DropReason::NoLease)
    );
}

#[test]
fn outbound_refusals() {
    let a = node_for(&peer_a(), ChecksumMode::Full);
    let v6 = [0x60u8; 48];
    assert_eq!(
        run_outbound(&a, &v6).0,
        Outbound::Drop(DropReason::InnerIpv6)
    );
    assert_eq!(
        run_outbound(&a, &[0x45, 0, 0]).0,
        Outbound::Drop(DropReason::MalformedInner)
    );
    assert_eq!(
        run_outbound(&a, &[]).0,
        Outbound::Drop(DropReason::Truncated)
    );
    // Our own subnet is a loop.
    let own = icmp_echo([10, 244, 2, 5], [10, 244, 1, 7], 10, false);
    assert_eq!(run_outbound(&a, &own).0, Outbound::Drop(DropReason::Loop));
    // Not enough headroom is refused, not a panic.
    let pkt = icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 10, false);
    let mut buf = pkt.clone();
    assert_eq!(
        a.outbound(&table(), &mut buf, 0, pkt.len(), 1),
        Outbound::Drop(DropReason::NoRoom)
    );
    assert_eq!(
        a.outbound(&table(), &mut buf, 10, usize::MAX, 1),
        Outbound::Drop(DropReason::NoRoom)
    );
    // A peer of another backend is unreachable for us.
    let t = Snapshot::build(
        "10.244.0.0/16".parse().unwrap(),
        [Peer {
            backend: BackendKind::Udp,
            ..peer_b()
        }],
        0,
    );
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(&pkt);
    assert!(matches!(
        a.outbound(&t, &mut buf, HEADROOM, pkt.len(), 1),
        Outbound::Reply {
            reason: DropReason::NoLease,
            ..
        }
    ));
}

fn encap_from(sender: &Node, pkt: &[u8]) -> Vec<u8> {
    let (o, buf) = run_outbound(sender, pkt);
    let Outbound::Send(t) = o else {
        panic!("{o:?}")
    };
    buf[t.datagram].to_vec()
}

#[test]
fn inbound_policy_drops_spoofing_and_strangers() {
    let (a, b, good) = policy_nodes();
    let mut d = good.clone();
    assert!(matches!(
        b.inbound_datagram(&table(), &mut d),
        Inbound::Deliver(_)
    ));

    // Inner source from B's own subnet, sent by A: spoofed.
    let mut d = encap_from(&a, &icmp_echo([10, 244, 2, 9], [10, 244, 2, 5], 20, false));
    assert_eq!(
        b.inbound_datagram(&table(), &mut d),
        Inbound::Drop(DropReason::SpoofedSource)
    );
    // Inner source outside every lease: spoofed too.
    let mut d = encap_from(&a, &icmp_echo([172, 16, 0, 1], [10, 244, 2, 5], 20, false));
    assert_eq!(
        b.inbound_datagram(&table(), &mut d),
        Inbound::Drop(DropReason::SpoofedSource)
    );
    // A destination that is not B's: not local.
    let c = Peer {
        subnet: "10.244.3.0/24".parse().ok(),
        public_ip: Ipv4Addr::new(192, 0, 2, 3),
        ..peer_b()
    };
    let t3 = Snapshot::build("10.244.0.0/16".parse().unwrap(), [peer_a(), peer_b(), c], 0);
    let mut buf = vec![0u8; HEADROOM + 48];
    let pkt = icmp_echo([10, 244, 1, 5], [10, 244, 3, 5], 20, false);
    buf[HEADROOM..].copy_from_slice(&pkt);
    let Outbound::Send(t) = a.outbound(&t3, &mut buf, HEADROOM, pkt.len(), 1) else {
        panic!()
    };
    let mut d = buf[t.datagram].to_vec();
    assert_eq!(
        b.inbound_datagram(&t3, &mut d),
        Inbound::Drop(DropReason::NotLocal)
    );
    // Claiming to come from node B itself (a found fuzz case: B's own lease made it
    // "known"), with an inner packet between B's own addresses.
    let mut own = encap_from(&a, &icmp_echo([10, 244, 2, 9], [10, 244, 2, 5], 20, false));
    own[12..16].copy_from_slice(&B_IP.octets());
    ipv4::Packet::new_unchecked(&mut own[..]).fill_checksum();
    assert_eq!(
        b.inbound_datagram(&table(), &mut own),
        Inbound::Drop(DropReason::Loop)
    );
    // From a host without a lease.
    let mut d = good.clone();
    d[12..16].copy_from_slice(&[192, 0, 2, 77]);
    ipv4::Packet::new_unchecked(&mut d[..]).fill_checksum();
    assert_eq!(
        b.inbound_datagram(&table(), &mut d),
        Inbound::Drop(DropReason::UnknownSender)
    );
}

/// Nodes A and B, and a datagram from A to a pod on B that B delivers.
fn policy_nodes() -> (Node, Node, Vec<u8>) {
    let a = node_for(&peer_a(), ChecksumMode::Full);
    let b = node_for(&peer_b(), ChecksumMode::Full);
    let good = encap_from(&a, &icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 20, false));
    (a, b, good)
}

#[test]
fn inbound_policy_drops_bad_headers_and_wrong_backends() {
    let (_, b, good) = policy_nodes();
    // Wrong VNI, missing I flag, wrong port, wrong inner MAC, not IPv4, bad inner checksum.
    let cases: [(usize, u8, DropReason); 6] = [
        (34, 2, DropReason::WrongVni),
        (28, 0x00, DropReason::VxlanFlags),
        (23, 0x00, DropReason::WrongPort),
        (36, 0xff, DropReason::WrongDstMac),
        (48, 0x99, DropReason::NotIpv4),
        (60, 0x00, DropReason::InnerChecksum),
    ];
    for (at, val, want) in cases {
        let mut d = good.clone();
        d[at] = val;
        assert_eq!(
            b.inbound_datagram(&table(), &mut d),
            Inbound::Drop(want),
            "byte {at}"
        );
    }
    // A lease of the wrong backend for the sender.
    let t = Snapshot::build(
        "10.244.0.0/16".parse().unwrap(),
        [
            Peer {
                backend: BackendKind::Udp,
                ..peer_a()
            },
            peer_b(),
        ],
        0,
    );
    let mut d = good.clone();
    assert_eq!(
        b.inbound_datagram(&t, &mut d),
        Inbound::Drop(DropReason::WrongBackend)
    );
    let t = Snapshot::build(
        "10.244.0.0/16".parse().unwrap(),
        [Peer { vni: 2, ..peer_a() }, peer_b()],
        0,
    );
    let mut d = good;
    assert_eq!(
        b.inbound_datagram(&t, &mut d),
        Inbound::Drop(DropReason::WrongBackend)
    );
}

#[test]
fn udp_backend_round_trip_and_policy() {
    let ua = Peer {
        backend: BackendKind::Udp,
        vni: 0,
        vtep_mac: MacAddr::default(),
        ..peer_a()
    };
    let ub = Peer {
        backend: BackendKind::Udp,
        vni: 0,
        vtep_mac: MacAddr::default(),
        ..peer_b()
    };
    let t = Snapshot::build("10.244.0.0/16".parse().unwrap(), [ua, ub], 0);
    let (a, b) = (udp_node(&ua), udp_node(&ub));
    let pkt = icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 100, true);
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(&pkt);
    let Outbound::Send(tx) = a.outbound(&t, &mut buf, HEADROOM, pkt.len(), 5) else {
        panic!()
    };
    assert_eq!(tx.dst, SocketAddrV4::new(B_IP, 8285).into());
    let dg = buf[tx.datagram.clone()].to_vec();
    // Independent check of the outer headers.
    let s = etherparse::SlicedPacket::from_ip(&dg).unwrap();
    let Some(etherparse::TransportSlice::Udp(u)) = s.transport else {
        panic!()
    };
    assert_eq!((u.source_port(), u.destination_port()), (8285, 8285));
    assert_eq!(u.payload(), &pkt[..]);
    assert_eq!(&buf[tx.udp_payload()], &pkt[..]);
    let mut d = dg.clone();
    assert_eq!(
        b.inbound_datagram(&t, &mut d),
        Inbound::Deliver(28..dg.len())
    );
    // Trailing junk after the inner packet is refused (flannel would write it to the TUN).
    let mut d = dg.clone();
    d.push(0);
    d[3] += 1;
    d[25] += 1;
    ipv4::Packet::new_unchecked(&mut d[..]).fill_checksum();
    assert_eq!(
        b.inbound_datagram(&t, &mut d),
        Inbound::Drop(DropReason::MalformedInner)
    );
}

/// A super-packet leaves whole only for a peer that takes super-datagrams: flanneld's udp
/// proxy (no mark in its lease) gets [`Outbound::Split`] and the buffer untouched; weft's
/// udp node and every vxlan peer get it encapsulated once.
#[test]
fn super_packets_leave_whole_only_for_peers_that_take_them() {
    let udp_peer = |p: Peer, super_datagrams| Peer {
        backend: BackendKind::Udp,
        vni: 0,
        vtep_mac: MacAddr::default(),
        super_datagrams,
        ..p
    };
    let pkt = icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 8000, true);
    for (takes, want_whole) in [(false, false), (true, true)] {
        let (ua, ub) = (udp_peer(peer_a(), true), udp_peer(peer_b(), takes));
        let t = Snapshot::build("10.244.0.0/16".parse().unwrap(), [ua, ub], 0);
        let a = udp_node(&ua);
        let mut buf = vec![0xa5u8; HEADROOM + pkt.len()];
        buf[HEADROOM..].copy_from_slice(&pkt);
        let before = buf.clone();
        let o = a.outbound_super(&t, &mut buf, HEADROOM, pkt.len(), 5, 1400);
        if want_whole {
            assert!(matches!(o, Outbound::Send(_)), "{o:?}");
        } else {
            assert_eq!(o, Outbound::Split);
            assert_eq!(buf, before, "a split super-packet was written to");
        }
        // A packet within the MTU is never split, whoever the peer.
        let small = icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 100, true);
        buf[HEADROOM..HEADROOM + small.len()].copy_from_slice(&small);
        let o = a.outbound(&t, &mut buf, HEADROOM, small.len(), 6);
        assert!(matches!(o, Outbound::Send(_)), "{o:?}");
    }
    // vxlan peers (kernel vxlan or weft) all take them.
    let (a, t) = (node_for(&peer_a(), ChecksumMode::Full), table());
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(&pkt);
    let o = a.outbound_super(&t, &mut buf, HEADROOM, pkt.len(), 5, 1400);
    assert!(matches!(o, Outbound::Send(_)), "{o:?}");
}

#[test]
fn ecn_follows_rfc6040() {
    assert_eq!(ecn_encapsulate(0x00), 0);
    assert_eq!(ecn_encapsulate(0x01), 1);
    assert_eq!(ecn_encapsulate(0x02), 2);
    assert_eq!(ecn_encapsulate(0x03), 2);
    let mut pkt = icmp_echo([10, 244, 1, 5], [10, 244, 2, 5], 8, false);
    assert_eq!(
        ecn_decapsulate(3, &mut pkt.clone()),
        Err(DropReason::EcnCeNotEct)
    );
    pkt[1] = 0x02;
    ipv4::Packet::new_unchecked(&mut pkt[..]).fill_checksum();
    ecn_decapsulate(3, &mut pkt).unwrap();
    assert_eq!(pkt[1], 0x03);
    assert!(ipv4::Packet::new_checked(&pkt[..])
        .unwrap()
        .verify_checksum());
}

#[test]
fn drop_reason_table_is_complete() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
    let names: std::collections::HashSet<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), DropReason::COUNT);
}

fn udp_flow(src: [u8; 4], dst: [u8; 4], sport: u16, tos: u8) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, src, dst).unwrap();
    ip.ecn = etherparse::IpEcn::try_new(tos & 3).unwrap();
    let mut v = Vec::new();
    etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .udp(sport, 5201)
        .write(&mut v, &[7u8; 100])
        .unwrap();
    v
}

#[test]
fn transmit_carries_a_bound_source_port_and_the_outer_tos() {
    let bound = [40001, 40002, 40003, 40004, 40005, 40006, 40007, 40008];
    let mut n = node_for(&peer_a(), ChecksumMode::Zero);
    n.format = n.format.with_bound_ports(&bound);
    let send = |pkt: &[u8]| match run_outbound(&n, pkt) {
        (Outbound::Send(t), buf) => (t, buf),
        (o, _) => panic!("not sent: {o:?}"),
    };
    let mut seen = std::collections::HashSet::new();
    for sport in 1000..1064 {
        let (t, buf) = send(&udp_flow([10, 244, 1, 5], [10, 244, 2, 5], sport, 0));
        assert!(bound.contains(&t.src_port), "{} not bound", t.src_port);
        // The port the Transmit names is the one written into the datagram.
        let d = &buf[t.datagram.clone()];
        assert_eq!(u16::from_be_bytes([d[20], d[21]]), t.src_port);
        // One flow, one port, whatever its ECN marks.
        let (again, _) = send(&udp_flow([10, 244, 1, 5], [10, 244, 2, 5], sport, 2));
        assert_eq!(again.src_port, t.src_port);
        seen.insert(t.src_port);
    }
    assert!(seen.len() >= 6, "64 flows used only {seen:?}");
    // Outer TOS: the inner ECN as RFC 6040 maps it, in the Transmit and in the header.
    for (inner, outer) in [(0, 0), (1, 1), (2, 2), (3, 2)] {
        let (t, buf) = send(&udp_flow([10, 244, 1, 5], [10, 244, 2, 5], 999, inner));
        assert_eq!(t.tos, outer);
        assert_eq!(buf[t.datagram.start + 1], outer);
    }
    // The udp format keeps its one port both ways, as flannel's proxy.
    let u = udp_node(&peer_a()).format.with_bound_ports(&bound);
    assert_eq!(u, udp_node(&peer_a()).format);
    // An empty set changes nothing.
    assert_eq!(n.format.with_bound_ports(&[]), n.format);
}
