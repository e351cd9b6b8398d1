//! A garbage flood for the reliability tests: `flood DST:PORT SECONDS SIZE [MBIT]` sends
//! random SIZE-byte UDP datagrams to DST:PORT for SECONDS (paced to MBIT Mbit/s when given,
//! else as fast as one core sends) and prints `sent N datagrams in S s`. Run it inside a
//! test's namespace (`ip netns exec`); it stops by itself.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        eprintln!("usage: flood DST:PORT SECONDS SIZE [MBIT]");
        std::process::exit(2);
    }
    let dst: SocketAddr = a[1].parse().expect("DST:PORT");
    let secs: f64 = a[2].parse().expect("SECONDS");
    let size: usize = a[3].parse().expect("SIZE");
    let mbit: Option<f64> = a.get(4).map(|m| m.parse().expect("MBIT"));
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
    // Payloads differ (a cheap xorshift), so nothing downstream can dedupe them.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64;
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let per_datagram = mbit.map(|m| Duration::from_secs_f64(size as f64 * 8.0 / (m * 1e6)));
    let mut sent: u64 = 0;
    while Instant::now() < end {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        if sock.send_to(&buf, dst).is_ok() {
            sent += 1;
        }
        if let Some(d) = per_datagram {
            let due = start + d * sent as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    println!(
        "sent {sent} datagrams in {:.2} s",
        start.elapsed().as_secs_f64()
    );
}
