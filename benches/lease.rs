//! Lease lookups: 16, 256 and 65,536 leases (flat index), a mixed-length table (longest
//! prefix match), and lookups while a writer keeps publishing new snapshots; and what one
//! change of the live set costs the writer at 1,000, 10,000 and 65,536 leases.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ipnet::Ipv4Net;
use weft::lease::table::BackendKind;
use weft::lease::{LeaseTable, Peer, PeerChanges};
use weft::wire::MacAddr;

const BATCH: usize = 1024;

fn peer(subnet: Ipv4Net, i: u32) -> Peer {
    Peer {
        subnet: Some(subnet),
        public_ip: Ipv4Addr::from(0xc000_0200 + i),
        backend: BackendKind::Vxlan,
        vni: 1,
        vtep_mac: MacAddr::default(),
        super_datagrams: true,
        v6: None,
        wg: None,
    }
}

/// `n` /24 leases spread over 10.0.0.0/8, and BATCH destinations inside them.
fn table(n: u32) -> (LeaseTable, Vec<Ipv4Addr>) {
    let t = LeaseTable::new("10.0.0.0/8".parse().unwrap());
    let stride = 65536 / n;
    t.replace_all((0..n).map(|i| {
        peer(
            Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + ((i * stride) << 8)), 24).unwrap(),
            i,
        )
    }));
    let mut x = 0x2545_f491u32;
    let dsts = (0..BATCH)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            Ipv4Addr::from(0x0a00_0000 + (((x % n) * stride) << 8) + (x >> 24))
        })
        .collect();
    (t, dsts)
}

/// How many of `dsts` have a peer, reading each peer's underlay address as the packet
/// path does (so a lookup costs its peer's cache line too).
fn lookups(t: &LeaseTable, dsts: &[Ipv4Addr]) -> usize {
    let snap = t.load();
    (dsts.iter())
        .filter_map(|d| snap.lookup(*d))
        .fold(0, |n, p| {
            black_box(p.public_ip);
            n + 1
        })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("lease_lookup");
    g.throughput(Throughput::Elements(BATCH as u64));
    for n in [16u32, 256, 65536] {
        let (t, dsts) = table(n);
        assert!(t.load().is_direct());
        g.bench_function(BenchmarkId::new("direct", n), |b| {
            b.iter(|| assert_eq!(lookups(&t, black_box(&dsts)), BATCH))
        });
    }
    // One arc-swap load per lookup, as a worker that re-loads for every packet would do.
    let (t, dsts) = table(256);
    g.bench_function(BenchmarkId::new("load_per_lookup", 256), |b| {
        b.iter(|| {
            assert_eq!(
                dsts.iter()
                    .filter(|d| t.load().lookup(black_box(**d)).is_some())
                    .count(),
                BATCH
            )
        })
    });
    // Mixed prefix lengths: 256 /24s plus 16 /16s and a /20: the hash-per-length LPM.
    let (t, dsts) = table(256);
    for i in 0..16u32 {
        t.upsert(peer(
            Ipv4Net::new(Ipv4Addr::from(0x0a80_0000 + (i << 16)), 16).unwrap(),
            1000 + i,
        ));
    }
    t.upsert(peer("10.200.0.0/20".parse().unwrap(), 2000));
    assert!(!t.load().is_direct());
    g.bench_function(BenchmarkId::new("lpm_mixed", 273), |b| {
        b.iter(|| assert_eq!(lookups(&t, black_box(&dsts)), BATCH))
    });

    // Lookups while another thread publishes a new 256-lease snapshot as fast as it can.
    let (t, dsts) = table(256);
    let t = Arc::new(t);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (t, stop) = (t.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut published = 0u64;
            let all: Vec<Peer> = t.load().peers().into_iter().copied().collect();
            while !stop.load(Ordering::Relaxed) {
                let p = all[(published % 256) as usize];
                t.upsert(Peer {
                    vni: p.vni ^ 1,
                    ..p
                });
                published += 1;
            }
            published
        })
    };
    g.bench_function(BenchmarkId::new("direct_while_publishing", 256), |b| {
        b.iter(|| assert_eq!(lookups(&t, black_box(&dsts)), BATCH))
    });
    stop.store(true, Ordering::Relaxed);
    let published = writer.join().unwrap();
    eprintln!("writer published {published} snapshots during the run");
    g.finish();
}

/// One node joining and one leaving a table of `n`: [`LeaseTable::apply`], the control
/// loop's write for a watched change.
fn change(c: &mut Criterion) {
    let mut g = c.benchmark_group("lease_change");
    for n in [1000u32, 10_000, 65536] {
        let (t, _) = table(n);
        let all: Vec<Peer> = t.load().peers().into_iter().copied().collect();
        let (first, last) = (all[0], all[all.len() - 1]);
        let mut flip = false;
        g.bench_function(BenchmarkId::new("apply", n), |b| {
            b.iter(|| {
                // Alternately remove one peer and put it back, so the size stays n.
                flip = !flip;
                let ch = match flip {
                    true => PeerChanges {
                        put: vec![],
                        gone: vec![first.key()],
                    },
                    false => PeerChanges {
                        put: vec![first, last],
                        gone: vec![],
                    },
                };
                black_box(t.apply(&ch))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, change);
criterion_main!(benches);
