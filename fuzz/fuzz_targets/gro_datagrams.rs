#![no_main]
//! A UDP_GRO read whose stride lies (any value, against any bytes) is cut into datagrams,
//! each checked by the vxlan receive path and coalesced for the TUN, as a worker does. No
//! panic; every datagram lies inside the read; whatever reaches the TUN carries a
//! well-formed virtio-net header and a valid IPv4 packet of the length it says, and a
//! merged UDP super-packet the lengths the kernel's UDP GSO needs.

#[path = "common.rs"]
mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use weft::encap::Inbound;
use weft::offload::gro::{self, datagrams, Coalescer};
use weft::offload::gso;
use weft::lease::table::BackendKind;
use weft::lease::Snapshot;
use weft::wire::{ipv4, virtio_net};

fn check_out(out: &[u8]) {
    let vnet = virtio_net::Packet::new_checked(out).expect("short TUN write");
    let hdr = virtio_net::Repr::parse(&vnet);
    let pkt = vnet.payload();
    let ip = ipv4::Packet::new_checked(pkt).expect("invalid IPv4 to the TUN");
    assert_eq!(ip.total_len() as usize, pkt.len());
    assert!((hdr.csum_start as usize + hdr.csum_offset as usize + 2) <= pkt.len() || hdr.flags == 0);
    if hdr.gso_type == virtio_net::VIRTIO_NET_HDR_GSO_UDP_L4 {
        // A merged UDP super-packet: its UDP length covers the rest, and every datagram the
        // kernel cuts from it holds a UDP header and at most gso_size bytes.
        let ihl = ip.header_len();
        assert_eq!(hdr.hdr_len as usize, ihl + 8);
        assert_eq!(u16::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5]]) as usize, pkt.len() - ihl);
        assert!(hdr.gso_size > 0 && pkt.len() > ihl + 8 + hdr.gso_size as usize);
        assert!((pkt.len() - ihl - 8).div_ceil(hdr.gso_size as usize) <= gro::MAX_UDP_SEGMENTS);
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let stride = u16::from_le_bytes([data[0], data[1]]) as usize;
    let mut read = data[2..].to_vec();
    let len = read.len();
    let table = Snapshot::build("10.244.0.0/16".parse().unwrap(), [common::peer(1, BackendKind::Vxlan), common::peer(2, BackendKind::Vxlan)], 0);
    let rx = common::node(2, true);
    let from = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40000);
    let mut co = Coalescer::new();
    for d in datagrams(len, stride) {
        assert!(d.start < d.end && d.end <= len);
        if let Inbound::Deliver(r) = rx.inbound(&table, from, &mut read, d.start, d.len(), 0) {
            let pkt = &read[r.clone()];
            if pkt.len() > rx.mtu {
                if let Some(out) = co.flush() {
                    check_out(out);
                }
                // As the worker does: the header written in place, before the packet.
                if let Some(mss) = gso::mss_for(pkt, rx.mtu) {
                    if let Some(s) = gro::oversized_in_place(&mut read, r.clone(), mss) {
                        check_out(&read[s..r.end]);
                    }
                }
            } else if !co.push(pkt) {
                check_out(co.flush().unwrap());
                assert!(co.push(pkt));
            }
        }
    }
    if let Some(out) = co.flush() {
        check_out(out);
    }
});
