#![no_main]
//! A TUN read with an arbitrary virtio-net header (a hostile gso_type, hdr_len, csum_start
//! or gso_size) and packet goes through weft's transmit path as a worker takes it: a TSO
//! super-packet that may leave whole is encapsulated once and framed for the injection TAP
//! (the frame must pass the kernel's own tunnel-header checks); anything else is cut by
//! `offload::gso::split_read` (tun-rs's split behind weft's validation) and each segment
//! encapsulated. No panic, and everything stays in its buffer.

#[path = "common.rs"]
mod common;

use weft::encap::{Outbound, HEADROOM, VXLAN_OVERHEAD};
use weft::lease::table::BackendKind;
use weft::lease::Snapshot;
use weft::offload::{gso, tunnel};
use weft::wire::virtio_net;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() <= virtio_net::LEN {
        return;
    }
    let (vhdr, pkt) = data.split_at(virtio_net::LEN);
    let table = Snapshot::build("10.244.0.0/16".parse().unwrap(), [common::peer(1, BackendKind::Vxlan), common::peer(2, BackendKind::Vxlan)], 0);
    let tx = common::node(1, true);
    if let Some(tso) = tunnel::tso_read(vhdr, pkt) {
        assert!(tso.gso_size > 0 && tso.headers < pkt.len() && tso.segments >= 1);
        let at = tunnel::PREFIX + VXLAN_OVERHEAD;
        let mut buf = vec![0u8; at + pkt.len()];
        buf[at..].copy_from_slice(pkt);
        if let Outbound::Send(t) = tx.outbound_super(&table, &mut buf, at, pkt.len(), 1, tso.segment_len()) {
            if let Some(f) = tunnel::frame(&mut buf, t.datagram, at, &tso, [2, 0, 0, 0, 0, 2]) {
                assert!(tunnel::kernel_accepts(&buf[f.clone()]), "a frame the kernel would refuse");
                assert_eq!(&buf[at..], pkt, "the inner super-packet was modified");
            }
        }
    }
    let mut input = pkt.to_vec();
    let vh = vhdr.to_vec();
    let mut bufs = vec![vec![0u8; HEADROOM + 2048]; 16];
    let mut sizes = vec![0usize; 16];
    let Ok(n) = gso::split_read(&vh, &mut input, &mut bufs, &mut sizes, HEADROOM) else { return };
    for i in 0..n.min(bufs.len()) {
        assert!(HEADROOM + sizes[i] <= bufs[i].len(), "segment overflows its buffer");
        if let Outbound::Send(t) = tx.outbound(&table, &mut bufs[i], HEADROOM, sizes[i], 1) {
            assert!(t.datagram.end <= bufs[i].len());
        }
    }
});
