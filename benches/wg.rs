//! WireGuard's per-packet cost: the AEAD alone (ring's ChaCha20-Poly1305, which boringtun's
//! transport path uses, against RustCrypto's `chacha20poly1305`, the choice it did not make)
//! and weft's node around it (`wg::Node::send` and `receive` of a 1400-byte packet on an
//! established session: counter, nonce, header, tag, replay window).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weft::testkit::wg::{packet, Pair};
use weft::wg::{Action, Node, PeerId};

const LEN: usize = 1400;

fn aead(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead_seal");
    g.throughput(Throughput::Bytes(LEN as u64));
    let key = [7u8; 32];
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key).unwrap(),
    );
    let mut buf = vec![0u8; LEN];
    let mut n = 0u64;
    g.bench_function("ring_1400", |b| {
        b.iter(|| {
            n += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_le_bytes());
            let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
            let tag = ring_key
                .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), &mut buf)
                .unwrap();
            black_box(tag)
        })
    });
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    let rc = chacha20poly1305::ChaCha20Poly1305::new(&key.into());
    g.bench_function("rustcrypto_1400", |b| {
        b.iter(|| {
            n += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_le_bytes());
            let tag = rc
                .encrypt_in_place_detached(&nonce.into(), b"", &mut buf)
                .unwrap();
            black_box(tag)
        })
    });
    g.finish();
}

/// Two nodes with an established session: (a, b, a's id for b).
fn established() -> (Node, Node, PeerId) {
    let mut pair = Pair::new();
    let mut out = vec![0u8; 2048];
    let first = pair.handshake(&packet(LEN), true, &mut out).unwrap();
    pair.b.receive(pair.a_addr, &first, &mut out);
    (pair.a, pair.b, pair.ab)
}

fn node(c: &mut Criterion) {
    let mut g = c.benchmark_group("wg_node");
    g.throughput(Throughput::Bytes(LEN as u64));
    let (mut a, mut b, ab) = established();
    let p = packet(LEN);
    let mut out = vec![0u8; 2048];
    g.bench_function("send_1400", |bn| {
        bn.iter(|| match a.send(ab, black_box(&p), &mut out) {
            Action::Send(_, d) => d.len(),
            other => panic!("{other:?}"),
        })
    });
    let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let mut sealed = vec![0u8; 2048];
    g.bench_function("receive_1400", |bn| {
        bn.iter_batched(
            || match a.send(ab, &p, &mut sealed) {
                Action::Send(_, d) => d.to_vec(),
                other => panic!("{other:?}"),
            },
            |d| match b.receive(from, &d, &mut out).1 {
                Action::Deliver(x) => x.len(),
                other => panic!("{other:?}"),
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, aead, node);
criterion_main!(benches);
