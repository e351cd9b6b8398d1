//! Per-64 KB costs of the offload paths: splitting a TSO super-packet (weft's splitter, and
//! tun-rs's, which the transmit path uses), coalescing received segments back into one
//! (weft's receive path), and the Internet checksum per KB.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft::offload::gro::Coalescer;
use weft::offload::gso::split_tcp4;
use weft::wire::checksum;

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
    g.bench_function("gso_split_weft_64k", |b| {
        b.iter(|| {
            let mut n = 0usize;
            split_tcp4(black_box(&pkt), MSS, &mut scratch, |s| n += s.len()).unwrap();
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
            let mut input = pkt.clone();
            tun_rs::gso_split(black_box(&mut input), hdr, &mut bufs, &mut sizes, 64, false).unwrap()
        })
    });

    let mut segs = Vec::new();
    split_tcp4(&pkt, MSS, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
    let mut co = Coalescer::new();
    g.bench_function("gro_coalesce_weft_64k", |b| {
        b.iter(|| {
            for s in &segs {
                assert!(co.push(black_box(s)));
            }
            co.flush().unwrap().len()
        })
    });
    g.finish();

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
