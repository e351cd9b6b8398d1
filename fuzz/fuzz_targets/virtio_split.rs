#![no_main]
//! A TUN read with an arbitrary virtio-net header (a hostile hdr_len, csum_start or
//! gso_size) and packet goes through tun-rs's split, as weft's transmit path does, and each
//! segment through weft's encapsulation. No panic, and every segment stays in its buffer.

#[path = "common.rs"]
mod common;

use weft::encap::{Outbound, HEADROOM};
use weft::lease::table::BackendKind;
use weft::lease::Snapshot;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() <= tun_rs::VIRTIO_NET_HDR_LEN {
        return;
    }
    let Ok(hdr) = tun_rs::VirtioNetHdr::decode(&data[..tun_rs::VIRTIO_NET_HDR_LEN]) else { return };
    let mut input = data[tun_rs::VIRTIO_NET_HDR_LEN..].to_vec();
    let mut bufs = vec![vec![0u8; HEADROOM + 2048]; 16];
    let mut sizes = vec![0usize; 16];
    let is_v6 = input.first().is_some_and(|b| b >> 4 == 6);
    let Ok(n) = tun_rs::gso_split(&mut input, hdr, &mut bufs, &mut sizes, HEADROOM, is_v6) else { return };
    let table = Snapshot::build("10.244.0.0/16".parse().unwrap(), [common::peer(1, BackendKind::Vxlan), common::peer(2, BackendKind::Vxlan)], 0);
    let tx = common::node(1, true);
    for i in 0..n.min(bufs.len()) {
        assert!(HEADROOM + sizes[i] <= bufs[i].len(), "segment overflows its buffer");
        if let Outbound::Send(t) = tx.outbound(&table, &mut bufs[i], HEADROOM, sizes[i], 1) {
            assert!(t.datagram.end <= bufs[i].len());
        }
    }
});
