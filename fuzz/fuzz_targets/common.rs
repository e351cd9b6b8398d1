//! The two-node setup of the kernel vectors (shared/vectors/README.md), shared by the
//! decapsulation targets.

// Each target uses a part of this module.
#![allow(dead_code)]

use std::net::SocketAddrV4;

use weft::encap::{Inbound, Node, Outbound, HEADROOM};
use weft::lease::table::BackendKind;
use weft::lease::{Peer, Snapshot};
use weft::wire::udp::ChecksumMode;
use weft::wire::ipv4;

pub fn peer(i: u8, backend: BackendKind) -> Peer {
    weft::testkit::peer(i, backend, 1)
}

pub fn node(i: u8, vxlan: bool) -> Node {
    weft::testkit::node(i, vxlan, 1, ChecksumMode::Full)
}

/// Feeds `data` to both nodes, as a raw outer datagram and as a socket payload, and checks
/// every delivered packet: a valid IPv4 packet from the sender's subnet to the receiver's,
/// which the sender re-encapsulates into a datagram the receiver delivers unchanged.
pub fn check(data: &[u8], vxlan: bool) {
    let b = if vxlan { BackendKind::Vxlan } else { BackendKind::Udp };
    let table = Snapshot::build("10.244.0.0/16".parse().unwrap(), [peer(1, b), peer(2, b)], 0);
    for (rx, tx) in [(2u8, 1u8), (1, 2)] {
        let (rxn, txn) = (node(rx, vxlan), node(tx, vxlan));
        let mut raw = data.to_vec();
        if let Inbound::Deliver(r) = rxn.inbound_datagram(&table, &mut raw) {
            verify(&table, &rxn, &txn, &raw[r]);
        }
        let mut payload = data.to_vec();
        let from = SocketAddrV4::new(txn.public_ip, 40000);
        if let Inbound::Deliver(r) = rxn.inbound(&table, from, &mut payload, 0, data.len(), 0) {
            verify(&table, &rxn, &txn, &payload[r]);
        }
    }
}

fn verify(table: &Snapshot, rx: &Node, tx: &Node, inner: &[u8]) {
    let ip = ipv4::Packet::new_checked(inner).expect("delivered a malformed packet");
    assert!(ip.verify_checksum(), "delivered a bad header checksum");
    assert_eq!(ip.total_len() as usize, inner.len());
    assert!(tx.subnet.contains(&ip.src()), "spoofed source delivered");
    assert!(rx.subnet.contains(&ip.dst()), "foreign destination delivered");
    let mut buf = vec![0u8; HEADROOM + inner.len()];
    buf[HEADROOM..].copy_from_slice(inner);
    // Oversized DF packets legitimately come back as ICMP errors instead.
    if let Outbound::Send(t) = tx.outbound(table, &mut buf, HEADROOM, inner.len(), 1) {
        let mut d = buf[t.datagram].to_vec();
        match rx.inbound_datagram(table, &mut d) {
            Inbound::Deliver(r) => assert_eq!(&d[r], inner, "round trip changed the packet"),
            other => panic!("re-encapsulated packet dropped: {other:?}"),
        }
    }
}
