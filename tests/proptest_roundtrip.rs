//! Property tests: decap(encap(p)) == p for arbitrary valid inner packets on both
//! backends; every truncation of a valid frame is rejected; arbitrary bytes never panic.
//! Inner packets are built with etherparse, an independent implementation.

use std::net::{Ipv4Addr, SocketAddr};

use proptest::prelude::*;
use weft::encap::{DropReason, Format, Inbound, Node, Outbound, HEADROOM, LINUX_SRC_PORTS};
use weft::lease::table::BackendKind;
use weft::lease::Snapshot;
use weft::testkit;
use weft::wire::udp::ChecksumMode;
use weft::wire::MacAddr;

fn table(vxlan: bool) -> Snapshot {
    let b = if vxlan {
        BackendKind::Vxlan
    } else {
        BackendKind::Udp
    };
    Snapshot::build(
        "10.244.0.0/16".parse().unwrap(),
        [testkit::peer(1, b, 7), testkit::peer(2, b, 7)],
        0,
    )
}

prop_compose! {
    fn inner_packet()(
        src_host in any::<u8>(), dst_host in any::<u8>(), tos in any::<u8>(), ttl in 1u8..,
        df in any::<bool>(), id in any::<u16>(),
        proto in prop_oneof![Just(1u8), Just(6u8), Just(17u8), Just(47u8), any::<u8>()],
        payload in prop::collection::vec(any::<u8>(), 0..1400),
    ) -> Vec<u8> {
        let mut h = etherparse::Ipv4Header::new(
            payload.len() as u16, ttl, etherparse::IpNumber(proto), [10, 244, 1, src_host], [10, 244, 2, dst_host]).unwrap();
        h.dscp = etherparse::IpDscp::try_new(tos >> 2).unwrap();
        // Keep ECN off CE so the outer ECN (ECT(0) for CE) round-trips unchanged; CE is
        // checked in the unit tests.
        h.ecn = etherparse::IpEcn::try_new((tos & 3) % 3).unwrap();
        h.dont_fragment = df;
        h.identification = id;
        h.header_checksum = h.calc_header_checksum();
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(&payload);
        v
    }
}

fn encap(vxlan: bool, csum: ChecksumMode, p: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; HEADROOM + p.len()];
    buf[HEADROOM..].copy_from_slice(p);
    match testkit::node(1, vxlan, 7, csum).outbound(&table(vxlan), &mut buf, HEADROOM, p.len(), 9) {
        Outbound::Send(t) => {
            let from = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), t.src_port));
            (buf[t.datagram].to_vec(), from)
        }
        other => panic!("not sent: {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decap_of_encap_is_identity(
        p in inner_packet(), vxlan in any::<bool>(),
        csum in prop_oneof![Just(ChecksumMode::Full), Just(ChecksumMode::Zero), Just(ChecksumMode::Partial)],
    ) {
        let (mut d, _) = encap(vxlan, csum, &p);
        // The outer headers are valid to an independent parser too.
        {
            let s = etherparse::SlicedPacket::from_ip(&d).unwrap();
            let Some(etherparse::TransportSlice::Udp(u)) = s.transport else { panic!("not UDP") };
            if csum == ChecksumMode::Full {
                prop_assert_eq!(u.checksum(), u.to_header().calc_checksum_ipv4_raw([192, 0, 2, 1], [192, 0, 2, 2], u.payload()).unwrap());
            }
        }
        match testkit::node(2, vxlan, 7, csum).inbound_datagram(&table(vxlan), &mut d) {
            Inbound::Deliver(r) => prop_assert_eq!(&d[r], &p[..]),
            other => prop_assert!(false, "dropped: {:?}", other),
        }
    }

    #[test]
    fn every_truncation_is_rejected(p in inner_packet(), vxlan in any::<bool>()) {
        let (d, from) = encap(vxlan, ChecksumMode::Full, &p);
        let rx = testkit::node(2, vxlan, 7, ChecksumMode::Full);
        let t = table(vxlan);
        for n in 0..d.len() {
            let mut cut = d[..n].to_vec();
            prop_assert!(matches!(rx.inbound_datagram(&t, &mut cut), Inbound::Drop(_)), "datagram cut at {}", n);
            // The same cut seen from a UDP socket (payload only).
            if n >= 28 {
                let mut payload = d[28..n].to_vec();
                let len = payload.len();
                prop_assert!(matches!(rx.inbound(&t, from, &mut payload, 0, len, 0), Inbound::Drop(_)), "payload cut at {}", n);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), vxlan in any::<bool>()) {
        let rx = testkit::node(2, vxlan, 7, ChecksumMode::Full);
        let t = table(vxlan);
        let mut b = bytes.clone();
        let _ = rx.inbound_datagram(&t, &mut b);
        let mut b = bytes.clone();
        let len = b.len();
        let _ = rx.inbound(&t, SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 1)), &mut b, 0, len, 3);
        let mut b = vec![0u8; HEADROOM];
        b.extend_from_slice(&bytes);
        let _ = rx.outbound(&t, &mut b, HEADROOM, bytes.len(), 1);
    }

    #[test]
    fn bit_flips_in_a_kernel_frame_never_panic(i in 0usize..134, bit in 0u8..8) {
        // The kernel's ICMP port-unreachable frame (full checksums), outer IPv4 onwards.
        let frame = include_str!("data/kernel-vxlan-full-checksums.hex")
            .lines().rfind(|l| !l.starts_with('#')).unwrap();
        let mut d: Vec<u8> = (0..frame.len()).step_by(2).map(|k| u8::from_str_radix(&frame[k..k + 2], 16).unwrap()).collect();
        d.drain(..14);
        let i = i % d.len();
        d[i] ^= 1 << bit;
        let mac = MacAddr([0x0e, 0, 0, 0, 1, 1]);
        let rx = Node { format: Format::Vxlan { vni: 1, port: 8472, mac, src_ports: LINUX_SRC_PORTS }, ..testkit::node(1, true, 7, ChecksumMode::Full) };
        let t = Snapshot::build("10.244.0.0/16".parse().unwrap(), [testkit::peer(1, BackendKind::Vxlan, 1), testkit::peer(2, BackendKind::Vxlan, 1)], 0);
        let r = rx.inbound_datagram(&t, &mut d);
        // A flip in a field the receiver checks must be caught; flips elsewhere (UDP source
        // port or checksum, VXLAN reserved bits, inner source MAC, inner payload) may pass.
        if (0..20).contains(&i) || (22..26).contains(&i) || (i == 28 && bit == 3) || (32..35).contains(&i) || (36..42).contains(&i) || (48..70).contains(&i) {
            prop_assert!(matches!(r, Inbound::Drop(_)), "flip at {} bit {} passed: {:?}", i, bit, r);
        }
        let _ = DropReason::ALL;
    }
}
