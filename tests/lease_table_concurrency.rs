//! Readers hammer the lock-free lease table from several threads while a writer churns
//! leases; every answer must be one the writer published, and no reader may ever see a
//! half-updated table.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;

use ipnet::Ipv4Net;
use weft::lease::table::BackendKind;
use weft::lease::{LeaseTable, Peer};
use weft::wire::MacAddr;

const SUBNETS: u32 = 64;

fn subnet(i: u32) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24).unwrap()
}

fn present(i: u32, generation: u64) -> bool {
    !(i as u64 + generation).is_multiple_of(3)
}

fn peer(i: u32, tag: u32) -> Peer {
    Peer {
        subnet: Some(subnet(i)),
        public_ip: Ipv4Addr::from(tag),
        backend: BackendKind::Vxlan,
        vni: i,
        vtep_mac: MacAddr([2, 0, 0, 0, 0, i as u8]),
        super_datagrams: true,
        v6: None,
        wg: None,
    }
}

fn xorshift(x: &mut u32) -> u32 {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    *x
}

/// Whole-table publishes: every snapshot is one generation, so a reader that sees two
/// generations in one snapshot has seen a torn table.
#[test]
fn whole_snapshots_are_never_torn() {
    let table = Arc::new(LeaseTable::new("10.244.0.0/16".parse().unwrap()));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (table, done) = (table.clone(), done.clone());
            thread::spawn(move || {
                let mut seed = 0x1234_5678 + r;
                let (mut checks, mut last_gen) = (0u64, 0u64);
                while !done.load(Ordering::Relaxed) || checks < 10_000 {
                    let snap = table.load();
                    let g = snap.generation();
                    assert!(
                        g >= last_gen,
                        "generation went backwards: {last_gen} -> {g}"
                    );
                    last_gen = g;
                    for _ in 0..16 {
                        let i = xorshift(&mut seed) % SUBNETS;
                        let dst =
                            Ipv4Addr::new(10, 244, i as u8, (xorshift(&mut seed) % 256) as u8);
                        match snap.lookup(dst) {
                            Some(p) => {
                                assert!(
                                    g > 0 && present(i, g),
                                    "subnet {i} present in generation {g}"
                                );
                                assert!(p.subnet.is_some_and(|s| s.contains(&dst)));
                                assert_eq!(u32::from(p.public_ip) as u64, g, "torn snapshot");
                                assert_eq!(p.vni, i);
                            }
                            None => assert!(
                                g == 0 || !present(i, g),
                                "subnet {i} missing in generation {g}"
                            ),
                        }
                        checks += 1;
                    }
                }
                checks
            })
        })
        .collect();
    for g in 1..=3000u64 {
        let peers = (0..SUBNETS)
            .filter(|&i| present(i, g))
            .map(|i| peer(i, g as u32));
        assert_eq!(table.replace_all(peers), g);
    }
    done.store(true, Ordering::Relaxed);
    let total: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(total >= 30_000);
}

/// Single-lease churn (upsert and remove): each answer must be a version of that very
/// subnet's lease that the writer had already published.
#[test]
fn churned_answers_were_published() {
    let table = Arc::new(LeaseTable::new("10.244.0.0/16".parse().unwrap()));
    let published: Arc<Vec<AtomicU32>> =
        Arc::new((0..SUBNETS).map(|_| AtomicU32::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (table, published, done) = (table.clone(), published.clone(), done.clone());
            thread::spawn(move || {
                let mut seed = 0x9e37_79b9 + r;
                let mut seen = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let i = xorshift(&mut seed) % SUBNETS;
                    let dst = Ipv4Addr::new(10, 244, i as u8, 9);
                    if let Some(p) = table.load().lookup(dst) {
                        let tag = u32::from(p.public_ip);
                        assert_eq!(tag & 0xff, i, "answer for another subnet");
                        assert!(
                            tag >> 8 <= published[i as usize].load(Ordering::Acquire),
                            "unpublished version"
                        );
                        seen += 1;
                    }
                }
                seen
            })
        })
        .collect();
    let mut seed = 42;
    for v in 1..=20_000u32 {
        let i = xorshift(&mut seed) % SUBNETS;
        if v % 5 == 0 {
            table.remove(subnet(i));
        } else {
            // Record the version before publishing it: readers may see it from then on.
            published[i as usize].store(v, Ordering::Release);
            table.upsert(peer(i, v << 8 | i));
        }
    }
    done.store(true, Ordering::Relaxed);
    let seen: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(seen > 0);
}
