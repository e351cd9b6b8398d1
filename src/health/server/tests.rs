//! The listener against the clients that held the old one shut, over loopback TCP (no root
//! needed). Deadlines here bound a hang; they are a second or more, far above what a probe
//! takes, and the latency itself is measured by the netns test and reported, not asserted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{serve, Limits};
use crate::health::Status;

fn start(limits: Limits) -> SocketAddr {
    let status = Status::starting("testing");
    serve(
        "healthz-test",
        "127.0.0.1:0".parse().unwrap(),
        status,
        limits,
    )
    .unwrap()
}

/// A connection from `from` (any 127/8 address is this host's).
fn connect(to: SocketAddr, from: &str) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `request` on `s` and reads to the end: what came back, and how long it took.
fn exchange(mut s: TcpStream, request: &str) -> (String, Duration) {
    let t = Instant::now();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
}

fn get(to: SocketAddr, from: &str, path: &str) -> (String, Duration) {
    exchange(
        connect(to, from),
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn probes_are_answered_while_idle_and_trickling_clients_hold_connections() {
    let addr = start(Limits::default());
    let idle: Vec<TcpStream> = (0..100).map(|_| connect(addr, "127.0.0.1")).collect();
    let mut slow = connect(addr, "127.0.0.1");
    slow.write_all(b"G").unwrap();
    slow.write_all(b"E").unwrap();
    for _ in 0..5 {
        let (reply, took) = get(addr, "127.0.0.1", "/healthz");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("starting: testing\n"), "{reply}");
        // kubelet's default probe timeout; the latency is a fraction of a millisecond.
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    drop(idle);
}

#[test]
fn one_address_cannot_take_every_connection() {
    let addr = start(Limits {
        max_per_peer: 3,
        ..Limits::default()
    });
    let held: Vec<TcpStream> = (0..3).map(|_| connect(addr, "127.0.0.3")).collect();
    // The fourth from the same address is closed unanswered ...
    let (reply, _) = get(addr, "127.0.0.3", "/healthz");
    assert_eq!(reply, "");
    // ... while another address is served, and the first again once it lets go.
    assert!(get(addr, "127.0.0.1", "/healthz").0.contains("200 OK"));
    drop(held);
    let served = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        get(addr, "127.0.0.3", "/healthz").0.contains("200 OK")
    });
    assert!(served, "connections were not given back");
}

#[test]
fn the_total_is_bounded_too() {
    let addr = start(Limits {
        max_connections: 4,
        ..Limits::default()
    });
    let held: Vec<TcpStream> = (1..=4)
        .map(|i| connect(addr, &format!("127.0.1.{i}")))
        .collect();
    assert_eq!(get(addr, "127.0.1.9", "/healthz").0, "");
    drop(held);
}

#[test]
fn a_trickling_client_is_cut_off_and_an_idle_one_outlives_nothing() {
    let limits = Limits {
        head_timeout: Duration::from_millis(300),
        lifetime: Duration::from_millis(900),
        ..Limits::default()
    };
    let addr = start(limits);
    // One byte every 100 ms: a complete head would take 4 s.
    let mut slow = connect(addr, "127.0.0.1");
    let t = Instant::now();
    let head = format!("GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20));
    let cut_off = head.bytes().find_map(|b| {
        std::thread::sleep(Duration::from_millis(100));
        slow.write_all(&[b]).is_err().then(|| t.elapsed())
    });
    let cut_off = cut_off.expect("the whole head was taken, a byte at a time");
    assert!(
        cut_off < Duration::from_secs(2),
        "cut off after {cut_off:?}"
    );
    // An idle connection that never sends is closed (a read sees the end, not the
    // client's own 5 s timeout).
    let mut idle = connect(addr, "127.0.0.1");
    let t = Instant::now();
    assert_eq!(idle.read(&mut [0u8; 64]).unwrap(), 0);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn an_oversized_head_is_refused_and_only_reads_are_served() {
    let addr = start(Limits::default());
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (reply, _) = exchange(connect(addr, "127.0.0.1"), &huge);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    let (reply, _) = exchange(
        connect(addr, "127.0.0.1"),
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    let (reply, _) = exchange(
        connect(addr, "127.0.0.1"),
        "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(reply.contains("content-length: 18\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\n"), "HEAD has no body: {reply}");
    // HTTP/1.0, as the old server spoke and simple probes still do.
    let (reply, _) = exchange(connect(addr, "127.0.0.1"), "GET /nope HTTP/1.0\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.0 404"), "{reply}");
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let addr = start(Limits::default());
    let mut s = connect(addr, "127.0.0.1");
    for _ in 0..3 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        let reply = String::from_utf8_lossy(&buf[..n]);
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    }
}
