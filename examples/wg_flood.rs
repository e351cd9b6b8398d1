//! A flood of WireGuard handshake initiations, for the test that weft answers it with
//! cookie replies while its established peers keep their traffic. The initiations are real
//! (weft's sans-IO node makes them, from fresh keys that are no peer of the target's), so
//! each carries a valid MAC1 and reaches the target's rate limiter, the costly path; they
//! are made once and sent again and again, as a flooder would.
//!
//! `wg_flood --target IP:PORT --peer B64 [--rate PPS] [--seconds S]`
//!
//! Prints `N initiations sent, C cookie replies read` (replies of type 3).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use weft::wg::{Action, Key, Node};

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        let i = argv.iter().position(|a| a == name)?;
        argv.get(i + 1).cloned()
    };
    let (Some(target), Some(peer)) = (get("--target"), get("--peer")) else {
        eprintln!("usage: wg_flood --target IP:PORT --peer B64 [--rate PPS] [--seconds S]");
        std::process::exit(2);
    };
    let target: SocketAddr = target.parse().expect("--target IP:PORT");
    let peer = Key::parse(&peer).expect("--peer: a base64 public key");
    let rate: u64 = get("--rate").map_or(20_000, |r| r.parse().expect("--rate"));
    let seconds: f64 = get("--seconds").map_or(5.0, |s| s.parse().expect("--seconds"));
    let inits = initiations(&peer, target, 16);
    let sock = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
    sock.set_nonblocking(true).expect("non-blocking");
    let (sent, cookies) = flood(&sock, target, &inits, rate, seconds);
    println!("{sent} initiations sent, {cookies} cookie replies read");
}

/// `n` handshake initiations to `peer` at `target`, each from a fresh key.
fn initiations(peer: &Key, target: SocketAddr, n: usize) -> Vec<Vec<u8>> {
    let mut out = vec![0u8; 256];
    let packet = [0x45u8; 20];
    (0..n)
        .map(|_| {
            let mut node = Node::new(&Key::generate().expect("a random key"));
            let id = node.set_peer(peer, None, None, Some(target));
            match node.send(id, &packet, &mut out) {
                Action::Send(_, init) => init.to_vec(),
                other => panic!("no initiation: {other:?}"),
            }
        })
        .collect()
}

/// Sends `inits` round-robin at `rate` a second for `seconds`, in 1 ms slices; returns
/// (sent, cookie replies read).
fn flood(
    sock: &UdpSocket,
    target: SocketAddr,
    inits: &[Vec<u8>],
    rate: u64,
    seconds: f64,
) -> (u64, u64) {
    let start = Instant::now();
    let (mut sent, mut cookies) = (0u64, 0u64);
    let mut buf = [0u8; 256];
    while start.elapsed().as_secs_f64() < seconds {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let m = &inits[sent as usize % inits.len()];
            if sock.send_to(m, target).is_err() {
                break;
            }
            sent += 1;
        }
        while let Ok(n) = sock.recv(&mut buf) {
            cookies += u64::from(n == 64 && buf[0] == 3);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (sent, cookies)
}
