//! The fuzz targets' bodies: each takes one input and panics if weft mishandles it. The
//! cargo-fuzz targets in `fuzz/` call these, and `tests/fuzz_regressions.rs` replays every
//! committed seed, past find and minimized corpus entry through the same functions, so an
//! input that once crashed a target stays a test in `cargo test`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use crate::config::NetConfig;
use crate::encap::{Inbound, Node, Outbound, HEADROOM, VXLAN_OVERHEAD};
use crate::lease::alloc::allocate;
use crate::lease::table::{BackendKind, Peer};
use crate::lease::{parse_subnet_key, subnet_key, Lease, LeaseAttrs, Snapshot};
use crate::offload::gro::{self, datagrams, Coalescer};
use crate::offload::v6::Coalescer6;
use crate::offload::{gso, tunnel};
use crate::wire::udp::ChecksumMode;
use crate::wire::{ipv4, ipv6, virtio_net};

/// A target's body: panics if weft mishandles the input.
pub type Target = fn(&[u8]);

/// Every target, by its cargo-fuzz name.
pub const TARGETS: &[(&str, Target)] = &[
    ("vxlan_decap", vxlan_decap),
    ("udp_decap", udp_decap),
    ("net_conf", net_conf),
    ("lease_json", lease_json),
    ("gro_datagrams", gro_datagrams),
    ("virtio_split", virtio_split),
    ("wg_receive", wg_receive),
    ("wg_uapi", wg_uapi),
    ("wg_parse", wg_parse),
];

fn node(i: u8, vxlan: bool) -> Node {
    super::node(i, vxlan, 1, ChecksumMode::Full)
}

fn two_nodes(b: BackendKind) -> Snapshot {
    Snapshot::build(
        "10.244.0.0/16".parse().unwrap_or_default(),
        [super::peer(1, b, 1), super::peer(2, b, 1)],
        0,
    )
}

/// VXLAN decapsulation: arbitrary outer datagrams and socket payloads never panic, and
/// whatever is delivered is valid, policy-conforming, and survives a round trip.
pub fn vxlan_decap(data: &[u8]) {
    decap(data, true)
}

/// udp-backend decapsulation: the same invariants as `vxlan_decap`.
pub fn udp_decap(data: &[u8]) {
    decap(data, false)
}

/// Feeds `data` to both nodes of the kernel vectors' two-node setup, as a raw outer datagram
/// and as a socket payload, and checks every delivered packet: a valid IPv4 packet from the
/// sender's subnet to the receiver's, which the sender re-encapsulates into a datagram the
/// receiver delivers unchanged.
fn decap(data: &[u8], vxlan: bool) {
    let table = two_nodes(if vxlan {
        BackendKind::Vxlan
    } else {
        BackendKind::Udp
    });
    for (rx, tx) in [(2u8, 1u8), (1, 2)] {
        let (rxn, txn) = (node(rx, vxlan), node(tx, vxlan));
        let mut raw = data.to_vec();
        if let Inbound::Deliver(r) = rxn.inbound_datagram(&table, &mut raw) {
            verify(&table, &rxn, &txn, &raw[r]);
        }
        let payload = data.to_vec();
        // Over each underlay family the sender has.
        let ips = [
            Some(IpAddr::V4(txn.public_ip)),
            txn.v6.map(|v| v.public_ip.into()),
        ];
        for from in ips
            .into_iter()
            .flatten()
            .map(|ip| SocketAddr::new(ip, 40000))
        {
            let mut payload = payload.clone();
            let len = data.len();
            if let Inbound::Deliver(r) = rxn.inbound(&table, from, &mut payload, 0, len, 0) {
                verify(&table, &rxn, &txn, &payload[r]);
            }
        }
    }
}

fn verify(table: &Snapshot, rx: &Node, tx: &Node, inner: &[u8]) {
    if inner.first().is_some_and(|b| b >> 4 == 6) {
        verify6(rx, tx, inner);
    } else {
        let ip = ipv4::Packet::new_checked(inner).expect("delivered a malformed packet");
        assert!(ip.verify_checksum(), "delivered a bad header checksum");
        assert_eq!(ip.total_len() as usize, inner.len());
        assert!(
            tx.subnet.is_some_and(|s| s.contains(&ip.src())),
            "spoofed source delivered"
        );
        assert!(
            rx.subnet.is_some_and(|s| s.contains(&ip.dst())),
            "foreign destination delivered"
        );
    }
    let mut buf = vec![0u8; HEADROOM + inner.len()];
    buf[HEADROOM..].copy_from_slice(inner);
    // Oversized DF packets legitimately come back as ICMP errors instead.
    if let Outbound::Send(t) = tx.outbound(table, &mut buf, HEADROOM, inner.len(), 1) {
        let mut d = buf[t.datagram].to_vec();
        match rx.inbound_datagram(table, &mut d) {
            Inbound::Deliver(r) => assert_eq!(&d[r], inner, "round trip changed the packet"),
            other => panic!("re-encapsulated packet dropped: {other:?}"),
        }
    }
}

/// The IPv6 checks of [`verify`]: a whole IPv6 packet from the sender's IPv6 subnet to
/// the receiver's.
fn verify6(rx: &Node, tx: &Node, inner: &[u8]) {
    let ip = ipv6::Packet::new_checked(inner).expect("delivered a malformed IPv6 packet");
    assert_eq!(ip.packet().len(), inner.len());
    let (rx6, tx6) = (
        rx.v6.expect("IPv6 to a v4-only node"),
        tx.v6.expect("from v4-only"),
    );
    assert!(
        tx6.subnet.contains(&ip.src()),
        "spoofed IPv6 source delivered"
    );
    assert!(
        rx6.subnet.contains(&ip.dst()),
        "foreign IPv6 destination delivered"
    );
}

/// net-conf.json: parsing never panics, and an accepted config obeys flannel's rules and
/// can always hand out a subnet to the first node.
pub fn net_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = NetConfig::parse(text) else {
        return;
    };
    assert!(c.ipv4.is_some() || c.ipv6.is_some(), "{c:?}");
    if let Some(v4) = &c.ipv4 {
        ipv4_side_obeys_flannel(v4);
    }
    if let Some(v6) = &c.ipv6 {
        assert!(v6.subnet_len <= 126 && v6.subnet_len >= v6.network.prefix_len() + 2);
        assert!(
            v6.subnet_min <= v6.subnet_max && v6.subnet_count() >= 1,
            "{c:?}"
        );
    }
    let now = SystemTime::UNIX_EPOCH;
    let a = allocate(
        &c,
        &[],
        Ipv4Addr::new(192, 0, 2, 1),
        Default::default(),
        now,
        data.len() as u64,
    )
    .expect("an empty network must have a free subnet");
    match (&c.ipv4, a.subnet) {
        (Some(v4), Some(sn)) => assert!(v4.is_compatible(sn), "{a:?} for {c:?}"),
        (None, None) => {}
        _ => panic!("{a:?} for {c:?}: an IPv4 subnet exactly when the config has IPv4"),
    }
    match (&c.ipv6, a.ipv6_subnet) {
        (Some(v6), Some(sn)) => assert!(v6.is_compatible(sn), "{a:?} for {c:?}"),
        (None, None) => {}
        _ => panic!("{a:?} for {c:?}: an IPv6 subnet exactly when the config has IPv6"),
    }
    let mtu = c.backend.pod_mtu(1500);
    if let crate::config::BackendConfig::Wireguard(w) = c.backend {
        // flanneld's 80 bytes off the MTU; ports flanneld can advertise.
        assert_eq!(mtu + 80, w.mtu.unwrap_or(1500), "{c:?}");
        assert!(w.listen_port != 0 && w.listen_port_v6 != 0, "{c:?}");
    }
}

/// flannel's rules for the IPv4 side: room for four subnets, bounds inside the network on
/// subnet boundaries, at least one subnet.
fn ipv4_side_obeys_flannel(c: &crate::config::Ipv4Config) {
    let plen = c.network.prefix_len();
    assert!(c.subnet_len <= 30 && c.subnet_len >= plen + 2, "{c:?}");
    assert!(
        c.network.contains(&c.subnet_min) && c.network.contains(&c.subnet_max),
        "{c:?}"
    );
    assert!(c.subnet_min <= c.subnet_max, "{c:?}");
    let mask = u32::MAX << (32 - c.subnet_len);
    assert_eq!(u32::from(c.subnet_min) & mask, u32::from(c.subnet_min));
    assert_eq!(u32::from(c.subnet_max) & mask, u32::from(c.subnet_max));
    assert!(c.subnet_count() >= 1);
}

/// Lease JSON and subnet keys: parsing never panics, and what parses round-trips through
/// flannel's serialization unchanged.
pub fn lease_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(a) = LeaseAttrs::from_json(text) {
        let again = LeaseAttrs::from_json(&a.to_json()).expect("our own JSON must parse");
        assert_eq!(again, a);
        let subnet = "10.244.1.0/24".parse().ok();
        let lease = Lease {
            subnet,
            ipv6_subnet: None,
            attrs: a,
            expiration: None,
        };
        if let Ok(p) = Peer::from_lease(&lease) {
            assert_eq!(p.public_ip, lease.attrs.public_ip);
        }
        // A wireguard side that reads has a key that writes back as it was read.
        for v6 in [false, true] {
            if let Ok(w) = lease.attrs.wireguard_data(v6) {
                let k = crate::wg::Key::parse(&w.public_key.to_base64()).unwrap();
                assert_eq!(k, w.public_key);
                assert_ne!(w.port, Some(0));
            }
        }
    }
    if let Ok((v4, v6)) = parse_subnet_key(text) {
        assert_eq!(parse_subnet_key(&subnet_key(v4, v6)).ok(), Some((v4, v6)));
    }
}

/// Checks what the receive path hands the TUN: a well-formed virtio-net header and a valid
/// IPv4 or IPv6 packet of the length it says, and for a merged UDP super-packet the lengths
/// the kernel's UDP GSO needs.
fn check_tun_write(out: &[u8]) -> usize {
    let vnet = virtio_net::Packet::new_checked(out).expect("short TUN write");
    let hdr = virtio_net::Repr::parse(&vnet);
    let pkt = vnet.payload();
    let (ihl, family) = if pkt.first().is_some_and(|b| b >> 4 == 6) {
        let ip = ipv6::Packet::new_checked(pkt).expect("invalid IPv6 to the TUN");
        assert_eq!(ipv6::HEADER_LEN + ip.payload_len() as usize, pkt.len());
        (ipv6::HEADER_LEN, 1)
    } else {
        let ip = ipv4::Packet::new_checked(pkt).expect("invalid IPv4 to the TUN");
        assert_eq!(ip.total_len() as usize, pkt.len());
        (ip.header_len(), 0)
    };
    let csum_end = hdr.csum_start as usize + hdr.csum_offset as usize + 2;
    assert!(csum_end <= pkt.len() || hdr.flags == 0);
    if hdr.gso_type == virtio_net::VIRTIO_NET_HDR_GSO_UDP_L4 {
        // Its UDP length covers the rest, and every datagram the kernel cuts from it holds a
        // UDP header and at most gso_size bytes.
        assert_eq!(hdr.hdr_len as usize, ihl + 8);
        assert_eq!(
            u16::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5]]) as usize,
            pkt.len() - ihl
        );
        assert!(hdr.gso_size > 0 && pkt.len() > ihl + 8 + hdr.gso_size as usize);
        let segments = (pkt.len() - ihl - 8).div_ceil(hdr.gso_size as usize);
        assert!(segments <= gro::MAX_UDP_SEGMENTS);
    }
    family
}

/// A UDP_GRO read whose stride lies (the first two bytes, little-endian, against the rest)
/// is cut into datagrams, each checked by the vxlan receive path and coalesced for the TUN,
/// as a worker does: once as from the peer's IPv4 underlay address and once as from its
/// IPv6 one, so IPv4 pod packets reach [`Coalescer`] and IPv6 ones [`Coalescer6`]. No
/// panic; every datagram lies inside the read; every TUN write passes `check_tun_write`.
pub fn gro_datagrams(data: &[u8]) {
    gro_tun_writes(data);
}

/// [`gro_datagrams`]'s body: the TUN writes it checked, IPv4's and IPv6's.
fn gro_tun_writes(data: &[u8]) -> [usize; 2] {
    let mut n = [0; 2];
    if data.len() < 2 {
        return n;
    }
    let stride = u16::from_le_bytes([data[0], data[1]]) as usize;
    let table = two_nodes(BackendKind::Vxlan);
    let rx = node(2, true);
    let senders = [
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 40000)),
        SocketAddr::from((crate::testkit::public_ip6(1), 40000)),
    ];
    for from in senders {
        let mut read = data[2..].to_vec();
        let (mut co, mut co6) = (Coalescer::new(), Coalescer6::new());
        for d in datagrams(read.len(), stride) {
            assert!(d.start < d.end && d.end <= read.len());
            if let Inbound::Deliver(r) = rx.inbound(&table, from, &mut read, d.start, d.len(), 0) {
                match read[r.start] >> 4 {
                    4 => deliver4(&rx, &mut co, &mut read, r, &mut n),
                    _ => deliver6(&rx, &mut co6, &mut read, r, &mut n),
                }
            }
        }
        for out in [co.flush(), co6.flush()].into_iter().flatten() {
            n[check_tun_write(out)] += 1;
        }
    }
    n
}

/// An IPv4 pod packet to the TUN, as a worker writes it: coalesced when it fits, else
/// alone behind a header that has the kernel cut it at our MSS.
fn deliver4(
    rx: &Node,
    co: &mut Coalescer,
    read: &mut [u8],
    r: std::ops::Range<usize>,
    n: &mut [usize; 2],
) {
    let pkt = &read[r.clone()];
    if pkt.len() > rx.mtu {
        if let Some(out) = co.flush() {
            n[check_tun_write(out)] += 1;
        }
        // As the worker does: the header written in place, before the packet.
        if let Some(mss) = gso::mss_for(pkt, rx.mtu) {
            if let Some(s) = gro::oversized_in_place(read, r.clone(), mss) {
                n[check_tun_write(&read[s..r.end])] += 1;
            }
        }
    } else if !co.push(pkt) {
        n[check_tun_write(
            co.flush()
                .expect("a refused push leaves something to flush"),
        )] += 1;
        assert!(co.push(pkt));
    }
}

/// An IPv6 pod packet to the TUN, as a worker writes it: coalesced when it fits (what is
/// pending goes first when it cannot join), else alone behind the header
/// [`crate::offload::v6::tun_header`] makes.
fn deliver6(
    rx: &Node,
    co6: &mut Coalescer6,
    read: &mut [u8],
    r: std::ops::Range<usize>,
    n: &mut [usize; 2],
) {
    let mtu = rx.mtu;
    let fits = r.len() <= mtu;
    if fits && co6.push(&read[r.clone()]) {
        return;
    }
    if let Some(out) = co6.flush() {
        n[check_tun_write(out)] += 1;
    }
    if fits && co6.push(&read[r.clone()]) {
        return;
    }
    let Some(at) = r.start.checked_sub(virtio_net::LEN) else {
        return;
    };
    if let Some(hdr) = crate::offload::v6::tun_header(&mut read[r.clone()], mtu) {
        hdr.emit(&mut read[at..r.start]);
        n[check_tun_write(&read[at..r.end])] += 1;
    }
}

/// A TUN read with an arbitrary virtio-net header (a hostile gso_type, hdr_len, csum_start
/// or gso_size) and packet goes through the transmit path as a worker takes it: a TSO
/// super-packet that may leave whole is encapsulated once and framed for the injection TAP
/// (the frame must pass the kernel's own tunnel-header checks); anything else is cut by
/// `gso::split_read` and each segment encapsulated. No panic, and everything stays in its
/// buffer.
pub fn virtio_split(data: &[u8]) {
    if data.len() <= virtio_net::LEN {
        return;
    }
    let (vhdr, pkt) = data.split_at(virtio_net::LEN);
    let table = two_nodes(BackendKind::Vxlan);
    let tx = node(1, true);
    if let Some(tso) = tunnel::tso_read(vhdr, pkt) {
        assert!(tso.gso_size > 0 && tso.headers < pkt.len() && tso.segments >= 1);
        let at = tunnel::PREFIX + VXLAN_OVERHEAD;
        let mut buf = vec![0u8; at + pkt.len()];
        buf[at..].copy_from_slice(pkt);
        let seg = tso.segment_len();
        if let Outbound::Send(t) = tx.outbound_super(&table, &mut buf, at, pkt.len(), 1, seg) {
            if let Some(f) = tunnel::frame(&mut buf, t.datagram, at, &tso, [2, 0, 0, 0, 0, 2]) {
                assert!(
                    tunnel::kernel_accepts(&buf[f]),
                    "a frame the kernel would refuse"
                );
                assert_eq!(&buf[at..], pkt, "the inner super-packet was modified");
            }
        }
    }
    let mut input = pkt.to_vec();
    let vh = vhdr.to_vec();
    let mut bufs = vec![vec![0u8; HEADROOM + 2048]; 16];
    let mut sizes = vec![0usize; 16];
    let Ok(n) = gso::split_read(&vh, &mut input, &mut bufs, &mut sizes, HEADROOM) else {
        return;
    };
    for i in 0..n.min(bufs.len()) {
        assert!(
            HEADROOM + sizes[i] <= bufs[i].len(),
            "segment overflows its buffer"
        );
        if let Outbound::Send(t) = tx.outbound(&table, &mut bufs[i], HEADROOM, sizes[i], 1) {
            assert!(t.datagram.end <= bufs[i].len());
        }
    }
}

/// WireGuard datagrams from the network into weft's node (`wg::Node`: boringtun's message
/// parsers, the rate limiter, the handshake state machine, session lookup, the replay
/// window), after an optional genuine exchange. The first byte picks what happens first:
/// nothing (0), a genuine initiation from our peer (1), or a whole handshake and one
/// genuine data message (2); the rest is datagrams, each behind a two-byte length. Nothing
/// forged can be delivered: only the genuine message is, once; a reply goes back to its
/// sender and is a handshake response or a cookie.
pub fn wg_receive(data: &[u8]) {
    use crate::wg::{Action, Key};
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut pair = super::wg::Pair::new();
    pair.b.set_peer(&Key([3; 32]).public(), None, None, None);
    let mut out = vec![0u8; 2048];
    if mode % 3 >= 1 {
        let packet = super::wg::packet(60);
        if let Some(msg) = pair.handshake(&packet, mode % 3 == 2, &mut out) {
            match pair.b.receive(pair.a_addr, &msg, &mut out).1 {
                Action::Deliver(p) => assert_eq!(p, &packet[..]),
                other => panic!("a genuine data message was not delivered: {other:?}"),
            }
        }
    }
    let stranger: SocketAddr = "198.51.100.7:4000".parse().unwrap();
    while rest.len() >= 2 {
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let (dgram, tail) = rest[2..].split_at(n);
        rest = tail;
        let from = if dgram.len() % 2 == 0 {
            pair.a_addr
        } else {
            stranger
        };
        match pair.b.receive(from, dgram, &mut out).1 {
            Action::Deliver(p) => panic!("a forged datagram was delivered: {p:?}"),
            Action::Send(to, d) => {
                assert_eq!(to, from, "a reply went elsewhere");
                assert!(d.len() == 92 || d.len() == 64, "reply of {} bytes", d.len());
            }
            _ => {}
        }
    }
}

/// WireGuard's message parsers alone, as any datagram from the network meets them: the
/// node's routing of it (boringtun's parsers of the four message types, the MAC1 check and
/// the rate limiter, an initiation's decryption of its sender's key, the receiver index),
/// on one node kept for the whole run (the handshake state machine is `wg_receive`'s:
/// this target builds nothing per input, so it runs fast enough for its campaign). Only a
/// configured peer is routed to; a cookie reply is 64 bytes of type 3 addressed to the
/// message's sender index.
pub fn wg_parse(data: &[u8]) {
    use crate::wg::{Key, Node};
    thread_local! {
        static NODE: Node = {
            let mut pair = super::wg::Pair::new();
            pair.b.set_peer(&Key([3; 32]).public(), None, None, None);
            pair.b
        };
    }
    let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let mut out = [0u8; 256];
    NODE.with(|node| match node.classify(from, data, &mut out) {
        Ok(id) => assert!(node.peers().any(|(p, _)| p == id), "routed to no peer"),
        Err(Ok(n)) => {
            assert_eq!((n, out[0]), (64, 3), "not a cookie reply");
            assert_eq!(out[4..8], data[4..8], "a cookie for another sender");
        }
        Err(Err(_)) => {}
    });
}

/// The UAPI socket's request parser (what `wg` sends to `flannel-wg.sock`): any bytes
/// never panic; each request taken ends at its first empty line, within the input, and
/// its answer ends as the protocol's do (`errno=N`, an empty line).
pub fn wg_uapi(data: &[u8]) {
    use crate::wg::uapi;
    let dev = uapi::Device::default();
    let mut input = data.to_vec();
    while let Ok(Some((req, used))) = uapi::parse(&input) {
        assert!(
            (7..=input.len()).contains(&used),
            "took {used} of {}",
            input.len()
        );
        assert_eq!(&input[used - 2..used], b"\n\n");
        assert!(uapi::respond(&req, &dev).ends_with("\n\n"));
        input.drain(..used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wg_parse`'s seeds reach past the parsers: the genuine initiation (from a Pair's
    /// node a, which the target's node b has as a peer) is routed to that peer after its
    /// MAC1 and its sender's key are checked, and its data messages by their index.
    #[test]
    fn wg_parse_seeds_reach_the_peer_lookup() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/wg_parse");
        let node = super::super::wg::Pair::new().b;
        let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mut out = [0u8; 256];
        for seed in ["genuine-initiation", "genuine-data"] {
            let data = std::fs::read(dir.join(seed)).unwrap();
            assert_eq!(node.classify(from, &data, &mut out), Ok(0), "{seed}");
        }
    }

    /// The kernel's own VXLAN payloads (the committed seeds made from its captures over
    /// either underlay) reach the TUN through the family's coalescer: the target exercises both
    /// receive paths, not just their refusals.
    #[test]
    fn gro_seeds_from_the_kernel_reach_the_tun_in_their_family() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/gro_datagrams");
        let mut by_family = [[0; 2]; 2];
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // The kernel's (make-seeds.py names them); past finds (found-*) are not.
            let six = match name.split_once('-').map(|(kind, _)| kind) {
                Some("single" | "double") => 0,
                Some("single6" | "double6") => 1,
                _ => continue,
            };
            let n = gro_tun_writes(&std::fs::read(&path).unwrap());
            by_family[six][0] += n[0];
            by_family[six][1] += n[1];
        }
        let [v4_seeds, v6_seeds] = by_family;
        assert!(v4_seeds[0] > 0 && v4_seeds[1] == 0, "{v4_seeds:?}");
        assert!(v6_seeds[1] > 0 && v6_seeds[0] == 0, "{v6_seeds:?}");
    }
}
