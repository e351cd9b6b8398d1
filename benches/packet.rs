//! Per-packet costs of the sans-IO core: encapsulation and decapsulation (64 B and 1400 B
//! inner packets, both backends), with etherparse's parser as a baseline for decap.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft::encap::{Inbound, Outbound, HEADROOM};
use weft::lease::table::BackendKind;
use weft::lease::LeaseTable;
use weft::testkit;
use weft::wire::udp::ChecksumMode;

fn tcp_packet(payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 244, 1, 5], [10, 244, 2, 5], 64)
        .tcp(40000, 5201, 1, 1000)
        .write(&mut v, &vec![0x61; payload])
        .unwrap();
    v
}

fn bench(c: &mut Criterion) {
    for (name, vxlan) in [("vxlan", true), ("udp", false)] {
        let backend = if vxlan {
            BackendKind::Vxlan
        } else {
            BackendKind::Udp
        };
        let table = LeaseTable::new("10.244.0.0/16".parse().unwrap());
        table.replace_all((1..=250).map(|i| testkit::peer(i, backend, 1)));
        let mut g = c.benchmark_group(name);
        for size in [64usize, 1400] {
            let pkt = tcp_packet(size - 40);
            g.throughput(Throughput::Bytes(size as u64));
            for (cname, csum) in [
                ("csum_full", ChecksumMode::Full),
                ("csum_kernel", ChecksumMode::Zero),
            ] {
                let tx = testkit::node(1, vxlan, 1, csum);
                let mut buf = vec![0u8; HEADROOM + pkt.len()];
                buf[HEADROOM..].copy_from_slice(&pkt);
                g.bench_function(BenchmarkId::new(format!("encap_{cname}"), size), |b| {
                    b.iter(|| {
                        let snap = table.load();
                        match tx.outbound(&snap, black_box(&mut buf), HEADROOM, pkt.len(), 7) {
                            Outbound::Send(t) => black_box(t.datagram.start),
                            _ => unreachable!(),
                        }
                    })
                });
            }
            // Decapsulate what a peer would send, as received from a UDP socket.
            let mut buf = vec![0u8; HEADROOM + pkt.len()];
            buf[HEADROOM..].copy_from_slice(&pkt);
            let Outbound::Send(t) = testkit::node(1, vxlan, 1, ChecksumMode::Full).outbound(
                &table.load(),
                &mut buf,
                HEADROOM,
                pkt.len(),
                7,
            ) else {
                unreachable!()
            };
            let from = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), t.src_port));
            let mut payload = buf[t.udp_payload()].to_vec();
            let rx = testkit::node(2, vxlan, 1, ChecksumMode::Full);
            g.bench_function(BenchmarkId::new("decap", size), |b| {
                b.iter(|| {
                    let snap = table.load();
                    let len = payload.len();
                    match rx.inbound(&snap, from, black_box(&mut payload), 0, len, 0) {
                        Inbound::Deliver(r) => black_box(r.start),
                        other => panic!("{other:?}"),
                    }
                })
            });
            let datagram = buf[t.datagram].to_vec();
            g.bench_function(BenchmarkId::new("etherparse_parse_baseline", size), |b| {
                b.iter(|| {
                    let s = etherparse::SlicedPacket::from_ip(black_box(&datagram)).unwrap();
                    black_box(s.transport.is_some())
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
