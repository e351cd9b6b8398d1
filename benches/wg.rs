//! WireGuard's per-packet cost: the AEAD alone (ring's ChaCha20-Poly1305, which boringtun's
//! transport path uses, against RustCrypto's `chacha20poly1305`, the choice it did not make)
//! and weft's node around it (`wg::Node::send` and `receive` of a 1400-byte packet on an
//! established session: counter, nonce, header, tag, replay window).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weft::wg::{Action, Key, Node, PeerId};

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
    let (ka, kb) = (Key([1; 32]), Key([2; 32]));
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        "192.0.2.1:51820".parse().unwrap(),
        "192.0.2.2:51820".parse().unwrap(),
    );
    let (mut a, mut b) = (Node::new(&ka), Node::new(&kb));
    let ab = a.set_peer(&kb.public(), None, None, Some(b_addr));
    b.set_peer(&ka.public(), None, None, Some(a_addr));
    let mut out = vec![0u8; 2048];
    let Action::Send(_, init) = a.send(ab, &packet(), &mut out) else {
        panic!()
    };
    let init = init.to_vec();
    let Action::Send(_, resp) = b.receive(a_addr, &init, &mut out).1 else {
        panic!()
    };
    let resp = resp.to_vec();
    a.receive(b_addr, &resp, &mut out);
    let Action::Send(_, first) = a.flush(ab, &mut out) else {
        panic!()
    };
    let first = first.to_vec();
    b.receive(a_addr, &first, &mut out);
    (a, b, ab)
}

fn packet() -> Vec<u8> {
    let mut p = vec![0u8; LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
    p
}

fn node(c: &mut Criterion) {
    let mut g = c.benchmark_group("wg_node");
    g.throughput(Throughput::Bytes(LEN as u64));
    let (mut a, mut b, ab) = established();
    let p = packet();
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
