//! A WireGuard probe built on weft's sans-IO node (`weft::wg::Node`) and one UDP socket, no
//! TUN: it pings a peer's pod address through the tunnel and answers the peer's pings to
//! its own, so a test can show weft's handshake and transport data interoperating with a
//! stock WireGuard (wireguard-go with wireguard-tools, configured as flanneld configures
//! flannel-wg) in both directions.
//!
//! `wg_probe --private B64 --peer B64 [--psk B64] --listen IP:PORT --endpoint IP:PORT
//!  --src IPv4 --dst IPv4 [--count N] [--answer N] [--seconds S]`
//!
//! Exits 0 once N echo replies came back from `dst` and N echo requests to `src` were
//! answered (both decrypted, authenticated, and in order of the tunnel); 1 on timeout,
//! printing what it saw.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use weft::wg::{Action, Key, Node, PeerId};
use weft::wire::{checksum, ipv4};

/// The probe's flags.
struct Args {
    private: Key,
    peer: Key,
    psk: Option<Key>,
    listen: SocketAddr,
    endpoint: SocketAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    count: u32,
    answer: u32,
    seconds: u64,
}

fn args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| -> Option<String> {
        let i = argv.iter().position(|a| a == name)?;
        argv.get(i + 1).cloned()
    };
    let need = |name: &str| get(name).ok_or(format!("{name} is required"));
    let key = |name: &str| -> Result<Key, String> {
        Key::parse(&need(name)?).map_err(|e| format!("{name}: {e}"))
    };
    let num = |name: &str, d: u64| {
        get(name).map_or(Ok(d), |v| v.parse().map_err(|e| format!("{name}: {e}")))
    };
    Ok(Args {
        private: key("--private")?,
        peer: key("--peer")?,
        psk: get("--psk")
            .map(|p| Key::parse(&p))
            .transpose()
            .map_err(|e| e.to_string())?,
        listen: need("--listen")?
            .parse()
            .map_err(|e| format!("--listen: {e}"))?,
        endpoint: need("--endpoint")?
            .parse()
            .map_err(|e| format!("--endpoint: {e}"))?,
        src: need("--src")?.parse().map_err(|e| format!("--src: {e}"))?,
        dst: need("--dst")?.parse().map_err(|e| format!("--dst: {e}"))?,
        count: num("--count", 3)? as u32,
        answer: num("--answer", 0)? as u32,
        seconds: num("--seconds", 10)?,
    })
}

/// An ICMP echo (request when `reply` is false) of `payload` bytes.
fn echo(src: Ipv4Addr, dst: Ipv4Addr, reply: bool, id_seq: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; ipv4::HEADER_LEN + 8 + payload.len()];
    ipv4::Repr {
        src,
        dst,
        protocol: 1,
        payload_len: 8 + payload.len(),
        ttl: 64,
        tos: 0,
        ident: 0,
        dont_frag: true,
    }
    .emit(&mut p);
    let icmp = &mut p[ipv4::HEADER_LEN..];
    icmp[0] = if reply { 0 } else { 8 };
    icmp[4..8].copy_from_slice(&id_seq);
    icmp[8..].copy_from_slice(payload);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// What the probe has seen.
#[derive(Default, Debug)]
struct Seen {
    replies: u32,
    answered: u32,
    datagrams: u32,
    dropped: Vec<String>,
}

/// Carries out `act`; returns a decrypted packet, if that is what it was.
fn act(sock: &UdpSocket, act: Action<'_>, seen: &mut Seen) -> Option<Vec<u8>> {
    match act {
        Action::Send(to, d) => {
            let _ = sock.send_to(d, to);
            None
        }
        Action::Deliver(p) => Some(p.to_vec()),
        Action::Dropped(why) => {
            seen.dropped.push(format!("{why:?}"));
            None
        }
        Action::Nothing => None,
    }
}

/// Handles a decrypted packet: counts our echo replies, answers echo requests to `src`.
fn on_packet(a: &Args, node: &mut Node, peer: PeerId, sock: &UdpSocket, p: &[u8], seen: &mut Seen) {
    let Ok(ip) = ipv4::Packet::new_checked(p) else {
        return;
    };
    let icmp = &p[ip.header_len()..];
    if ip.protocol() != 1 || icmp.len() < 8 {
        return;
    }
    let id_seq: [u8; 4] = icmp[4..8].try_into().unwrap_or_default();
    if icmp[0] == 0 && ip.src() == a.dst && id_seq[..2] == [0x57, 0x46] {
        seen.replies += 1;
    } else if icmp[0] == 8 && ip.dst() == a.src {
        let reply = echo(a.src, ip.src(), true, id_seq, &icmp[8..]);
        let mut out = vec![0u8; 2048];
        let r = node.send(peer, &reply, &mut out);
        act(sock, r, seen);
        seen.answered += 1;
    }
}

fn run(a: &Args) -> Result<Seen, String> {
    let sock = UdpSocket::bind(a.listen).map_err(|e| format!("bind {}: {e}", a.listen))?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let mut node = Node::new(&a.private);
    let peer = node.set_peer(&a.peer, a.psk, None, Some(a.endpoint));
    let (mut seen, mut sent) = (Seen::default(), 0u16);
    let (start, mut next) = (Instant::now(), Instant::now());
    let (mut buf, mut out) = (vec![0u8; 65536], vec![0u8; 65536]);
    while start.elapsed() < Duration::from_secs(a.seconds) {
        if seen.replies >= a.count && seen.answered >= a.answer {
            return Ok(seen);
        }
        if Instant::now() >= next {
            next = Instant::now() + Duration::from_millis(200);
            sent += 1;
            let [s0, s1] = sent.to_be_bytes();
            let req = echo(a.src, a.dst, false, [0x57, 0x46, s0, s1], b"weft wg probe");
            let r = node.send(peer, &req, &mut out);
            act(&sock, r, &mut seen);
            let r = node.tick(peer, &mut out);
            act(&sock, r, &mut seen);
            node.reset_rate_limit();
        }
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        seen.datagrams += 1;
        let (id, r) = node.receive(from, &buf[..n], &mut out);
        if let Some(p) = act(&sock, r, &mut seen) {
            on_packet(a, &mut node, peer, &sock, &p, &mut seen);
        }
        while let Some(id) = id {
            match node.flush(id, &mut out) {
                Action::Nothing => break,
                r => {
                    act(&sock, r, &mut seen);
                }
            }
        }
    }
    Err(format!("timed out: {seen:?}"))
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wg_probe: {e}");
            std::process::exit(2);
        }
    };
    match run(&a) {
        Ok(seen) => println!("wg_probe: ok {seen:?}"),
        Err(e) => {
            eprintln!("wg_probe: {e}");
            std::process::exit(1);
        }
    }
}
