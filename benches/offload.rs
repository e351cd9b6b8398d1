//! Per-64 KB costs of the offload paths: splitting a TSO super-packet (weft's splitter, and
//! tun-rs's, which the transmit path uses where tunnel GSO does not apply), handing it
//! whole to the kernel instead (recognising the TSO read, encapsulating once, building the
//! tunnel header: what the transmit path does per 64 KB with tunnel GSO), coalescing
//! received segments (or a flow's UDP datagrams) back into one, a peer's super-packet
//! readied for the TUN in place (weft's receive paths), and the Internet checksum per KB.

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use weft::encap::{Outbound, VXLAN_OVERHEAD};
use weft::lease::table::BackendKind;
use weft::lease::LeaseTable;
use weft::offload::gro::{self, Coalescer};
use weft::offload::gso::split_tcp4;
use weft::offload::tunnel;
use weft::testkit;
use weft::wire::checksum;
use weft::wire::udp::ChecksumMode;

const MSS: usize = 1398;

fn super_packet() -> Vec<u8> {
    let data: Vec<u8> = (0..65_000usize).map(|i| (i * 31) as u8).collect();
    let mut v = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 244, 1, 11], [10, 244, 2, 11], 64)
        .tcp(40000, 5201, 1, 1000)
        .ack(1)
        .write(&mut v, &data)
        .unwrap();
    v
}

fn bench(c: &mut Criterion) {
    let pkt = super_packet();
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(pkt.len() as u64));

    let mut scratch = vec![0u8; 4096];
    let hdr = bench_gso_splits(&mut g, &pkt, &mut scratch);
    bench_tunnel_gso_frame(&mut g, &pkt, hdr);
    bench_rx_in_place(&mut g, &pkt);
    bench_coalescing(&mut g, &pkt, &mut scratch);
    g.finish();

    bench_checksums(c);
}

/// An offload benchmark group measured in wall time.
type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// Splitting a TSO super-packet, by weft and by tun-rs; returns tun-rs's virtio header.
fn bench_gso_splits(g: &mut Group<'_>, pkt: &[u8], scratch: &mut [u8]) -> tun_rs::VirtioNetHdr {
    g.bench_function("gso_split_weft_64k", |b| {
        b.iter(|| {
            let mut n = 0usize;
            split_tcp4(black_box(pkt), MSS, scratch, |s| n += s.len()).unwrap();
            n
        })
    });

    // tun-rs's split, as weft's transmit path calls it: a TSO read with its virtio header.
    let hdr = tun_rs::VirtioNetHdr {
        flags: 1,
        gso_type: tun_rs::VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut bufs = vec![vec![0u8; 64 + 1500]; 64];
    let mut sizes = vec![0usize; 64];
    g.bench_function("gso_split_tun_rs_64k", |b| {
        b.iter(|| {
            let mut input = pkt.to_vec();
            tun_rs::gso_split(black_box(&mut input), hdr, &mut bufs, &mut sizes, 64, false).unwrap()
        })
    });
    hdr
}

/// Handing a super-packet whole to the kernel: recognised, encapsulated once, framed.
fn bench_tunnel_gso_frame(g: &mut Group<'_>, pkt: &[u8], hdr: tun_rs::VirtioNetHdr) {
    // The tunnel GSO transmit step: TUN read recognised, encapsulated once, framed.
    let mut vhdr = [0u8; 10];
    hdr.encode(&mut vhdr).unwrap();
    let mut read = pkt.to_vec();
    let sum = checksum::pseudo_header_v4(
        [10, 244, 1, 11].into(),
        [10, 244, 2, 11].into(),
        6,
        (read.len() - 20) as u16,
    );
    read[36..38].copy_from_slice(&checksum::fold(sum).to_be_bytes());
    let node = testkit::node(1, true, 1, ChecksumMode::Zero);
    let table = LeaseTable::new("10.244.0.0/16".parse().unwrap());
    table.upsert(testkit::peer(2, BackendKind::Vxlan, 1));
    let at = tunnel::PREFIX + VXLAN_OVERHEAD;
    let mut buf = vec![0u8; at + read.len()];
    buf[at..].copy_from_slice(&read);
    g.bench_function("tunnel_gso_frame_64k", |b| {
        b.iter(|| {
            let tso = tunnel::tso_read(black_box(&vhdr), &buf[at..]).unwrap();
            let snap = table.load();
            let Outbound::Send(t) =
                node.outbound_super(&snap, &mut buf, at, read.len(), 1, tso.segment_len())
            else {
                panic!("not sent")
            };
            tunnel::frame(&mut buf, t.datagram, at, &tso, [2, 0, 0, 0, 0, 2]).unwrap()
        })
    });
}

/// Readying a peer's whole super-packet for the TUN in place.
fn bench_rx_in_place(g: &mut Group<'_>, pkt: &[u8]) {
    // The receive side's step for a peer's whole super-packet: header in place, no copy.
    let mut rx = vec![0u8; 64 + pkt.len()];
    rx[64..].copy_from_slice(pkt);
    let end = rx.len();
    g.bench_function("gro_oversized_in_place_64k", |b| {
        b.iter(|| gro::oversized_in_place(black_box(&mut rx), 64..end, MSS).unwrap())
    });
}

/// Coalescing TCP segments, and one flow's UDP datagrams, back into one write.
fn bench_coalescing(g: &mut Group<'_>, pkt: &[u8], scratch: &mut [u8]) {
    let mut segs = Vec::new();
    split_tcp4(pkt, MSS, scratch, |s| segs.push(s.to_vec())).unwrap();
    let mut co = Coalescer::new();
    g.bench_function("gro_coalesce_weft_64k", |b| {
        b.iter(|| {
            for s in &segs {
                assert!(co.push(black_box(s)));
            }
            co.flush().unwrap().len()
        })
    });

    // UDP coalescing: 46 datagrams of 1400 bytes of one flow into one UDP_L4 write.
    let dgrams: Vec<Vec<u8>> = (0..46u16)
        .map(|i| {
            let mut v = Vec::new();
            etherparse::PacketBuilder::ipv4([10, 244, 1, 11], [10, 244, 2, 11], 64)
                .udp(5001, 5201)
                .write(&mut v, &[i as u8; 1400])
                .unwrap();
            v
        })
        .collect();
    let mut co = Coalescer::new();
    g.bench_function("gro_coalesce_udp_46x1400", |b| {
        b.iter(|| {
            for d in &dgrams {
                assert!(co.push(black_box(d)));
            }
            co.flush().unwrap().len()
        })
    });
}

/// The Internet checksum over 1 KB and 64 KB.
fn bench_checksums(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    for kb in [1usize, 64] {
        let data = vec![0xa5u8; kb * 1024];
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(
            BenchmarkId::new("internet_checksum", format!("{kb}KB")),
            |b| b.iter(|| checksum::checksum(black_box(&data))),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
