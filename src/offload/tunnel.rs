//! GSO over the UDP tunnel, done by the kernel (Linux 6.17+, `TUN_F_UDP_TUNNEL_GSO`).
//!
//! A pod's TCP stream reaches weft as 64 KB TSO super-packets. Instead of cutting each into
//! ~46 segments and encapsulating every one, weft encapsulates the super-packet once (one
//! set of outer headers, the inner TCP super-packet untouched, its checksum still partial)
//! and writes the frame into a TAP with a `virtio_net_hdr_v1_hash_tunnel` header saying
//! "UDP tunnel over IPv4, inner TCPv4, segment size N, outer UDP checksum partial". The
//! kernel forwards it out of the underlay as one GSO skb, and whoever segments it (the
//! NIC with `tx-udp_tnl-segmentation`, the kernel's software GSO, or nobody on a veth,
//! which carries it whole to the peer) produces exactly the datagrams kernel vxlan would:
//! outer IP ID incremented per segment, outer UDP checksum complete, inner checksums
//! complete. A TAP, not the TUN: the kernel checks `outer_th_offset >= ETH_HLEN + 20`,
//! so the frame needs an Ethernet header. flannel's udp format works the same way: there
//! the tunnel header between the outer UDP header and the inner IPv4 packet is empty.
//!
//! The frame is injected as if received, so it is *forwarded*: its outer TTL is written
//! one higher (the wire sees 64, as from kernel vxlan), and the TAP needs `forwarding`,
//! `accept_local` (its source is a local address) and no `rp_filter` (see
//! [`crate::dataplane`]'s injector, which sets and checks them).
//!
//! This module is pure: it reads the TUN's virtio-net header and writes the tunnel header
//! and the Ethernet header in place, in the headroom before what [`crate::encap`] emitted.

use std::ops::Range;

use crate::wire::virtio_net::{
    self, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};
use crate::wire::{checksum, ipv4, ipv6};

/// `sizeof(struct virtio_net_hdr_v1_hash_tunnel)`: the 12-byte `virtio_net_hdr_v1`, the
/// hash report (8 bytes, unused here) and the two tunnel offsets.
pub const HDR_LEN: usize = 24;
/// The Ethernet header the TAP frame starts with.
pub const ETH_LEN: usize = 14;
/// Bytes written before the outer IPv4 header: the tunnel header and the Ethernet header.
pub const PREFIX: usize = HDR_LEN + ETH_LEN;
/// `TUN_F_UDP_TUNNEL_GSO` for `TUNSETOFFLOAD` (if_tun.h, 6.17).
pub const TUN_F_UDP_TUNNEL_GSO: u32 = 0x80;
/// `TUN_F_UDP_TUNNEL_GSO_CSUM`: the outer UDP checksum may be left partial.
pub const TUN_F_UDP_TUNNEL_GSO_CSUM: u32 = 0x100;
/// gso_type bit: the packet is in a UDP tunnel over IPv4.
pub const VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
/// gso_type bit: the packet is in a UDP tunnel over IPv6.
pub const VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6: u8 = 0x40;
/// flags bit: the outer UDP checksum is partial (the kernel finishes it per segment).
pub const VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM: u8 = 8;
/// Source MAC of injected frames (locally administered; nothing sees it but the TAP).
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The largest outer IPv4 datagram.
const MAX_DATAGRAM: usize = 65535;

/// A TSO super-packet, as a TUN read's virtio-net header and IPv4/TCP headers describe it,
/// that the kernel can segment inside the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tso {
    /// Payload bytes per segment (the sender's MSS).
    pub gso_size: u16,
    /// Inner IPv4 + TCP header bytes: each segment's headers.
    pub headers: usize,
    /// Offset of the inner TCP header (the inner IPv4 header length).
    pub csum_start: u16,
    /// Offset of the TCP checksum within the TCP header (16).
    pub csum_offset: u16,
    /// The segments carry ECN CWR (`VIRTIO_NET_HDR_GSO_ECN`).
    pub ecn: bool,
    /// How many segments the kernel will make.
    pub segments: usize,
    /// The super-packet is TCP/IPv6 (an IPv6 pod's), not TCP/IPv4.
    pub v6: bool,
}

impl Tso {
    /// The size of the largest segment, inner headers included: what must fit the MTU.
    pub fn segment_len(&self) -> usize {
        self.headers + self.gso_size as usize
    }
}

/// The IP header length of a TCP super-packet `pkt` of GSO type `gso` (TCPv4 or TCPv6,
/// without extension headers) whose length fields agree with it; `None` otherwise.
fn tcp_ip_header(gso: u8, pkt: &[u8]) -> Option<usize> {
    match gso {
        VIRTIO_NET_HDR_GSO_TCPV4 => {
            let ip = ipv4::Packet::new_checked(pkt).ok()?;
            (ip.protocol() == 6 && ip.total_len() as usize == pkt.len()).then(|| ip.header_len())
        }
        VIRTIO_NET_HDR_GSO_TCPV6 => {
            let ip = ipv6::Packet::new_checked(pkt).ok()?;
            let whole = ip.packet().len() == pkt.len();
            (ip.next_header() == ipv6::NEXT_TCP && whole).then_some(ipv6::HEADER_LEN)
        }
        _ => None,
    }
}

/// Reads a TUN read's 10-byte virtio-net header `vhdr` and the packet `pkt` after it, and
/// says whether it is a TCP TSO super-packet (IPv4, or IPv6 without extension headers)
/// that can leave whole: GSO type TCPv4 or TCPv6, checksum partial at the TCP checksum,
/// headers consistent with the packet, at least one byte of payload. Anything else (plain
/// packets, UDP, a header that lies) is `None`: the caller splits it in userspace.
pub fn tso_read(vhdr: &[u8], pkt: &[u8]) -> Option<Tso> {
    let h = virtio_net::Packet::new_checked(vhdr).ok()?;
    let gso = h.gso_type() & !VIRTIO_NET_HDR_GSO_ECN;
    if h.flags() & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 || h.gso_size() == 0 {
        return None;
    }
    let ihl = tcp_ip_header(gso, pkt)?;
    if h.csum_start() as usize != ihl || h.csum_offset() != 16 {
        return None;
    }
    let tcp_len = (*pkt.get(ihl + 12)? >> 4) as usize * 4;
    if !(20..=60).contains(&tcp_len) || ihl + tcp_len >= pkt.len() {
        return None;
    }
    let headers = ihl + tcp_len;
    let payload = pkt.len() - headers;
    let gso_size = h.gso_size();
    Some(Tso {
        gso_size,
        headers,
        csum_start: ihl as u16,
        csum_offset: 16,
        ecn: h.gso_type() & VIRTIO_NET_HDR_GSO_ECN != 0,
        segments: payload.div_ceil(gso_size as usize),
        v6: gso == VIRTIO_NET_HDR_GSO_TCPV6,
    })
}

/// Turns the datagram at `buf[datagram]` (outer IPv4 or IPv6 + UDP + tunnel headers + the
/// inner super-packet, which starts at `inner`), as [`crate::encap`] emitted it, into a
/// frame for the injection TAP whose MAC is `tap_mac`, in place, and returns the frame's
/// range (the tunnel header first). The outer TTL (hop limit) goes up by one (forwarding
/// takes it back) and the outer UDP checksum becomes the pseudo-header sum the kernel
/// completes per segment. `None` when the headroom is short or the datagram is not what
/// encap emits.
pub fn frame(
    buf: &mut [u8],
    datagram: Range<usize>,
    inner: usize,
    tso: &Tso,
    tap_mac: [u8; 6],
) -> Option<Range<usize>> {
    let o = datagram.start;
    let start = o.checked_sub(PREFIX)?;
    if datagram.end > buf.len() || inner + tso.headers >= datagram.end {
        return None;
    }
    let outer = &mut buf[datagram.clone()];
    let (ip_len, partial, ethertype, tunnel) = match outer.first().map(|b| b >> 4) {
        Some(4) => (
            20,
            outer_ipv4(outer)?,
            0x0800u16,
            VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4,
        ),
        Some(6) => (
            40,
            outer_ipv6(outer)?,
            0x86dd,
            VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6,
        ),
        _ => return None,
    };
    let udp = o + ip_len;
    if inner < udp + 8 {
        return None;
    }
    buf[udp + 6..udp + 8].copy_from_slice(&partial.to_be_bytes());

    let eth = o - ETH_LEN;
    buf[eth..eth + 6].copy_from_slice(&tap_mac);
    buf[eth + 6..eth + 12].copy_from_slice(&SRC_MAC);
    buf[eth + 12..o].copy_from_slice(&ethertype.to_be_bytes());

    // Offsets from the start of the Ethernet frame, as the kernel reads them.
    let outer_th = (udp - eth) as u16;
    let inner_nh = (inner - eth) as u16;
    let csum_start = inner_nh + tso.csum_start;
    let hdr_len = inner_nh + tso.headers as u16;
    let inner_type = if tso.v6 {
        VIRTIO_NET_HDR_GSO_TCPV6
    } else {
        VIRTIO_NET_HDR_GSO_TCPV4
    };
    let mut gso_type = inner_type | tunnel;
    if tso.ecn {
        gso_type |= VIRTIO_NET_HDR_GSO_ECN;
    }
    let h = &mut buf[start..eth];
    h.fill(0);
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&tso.gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&tso.csum_offset.to_le_bytes());
    // 10..12 num_buffers, 12..20 the hash report: zero.
    h[20..22].copy_from_slice(&outer_th.to_le_bytes());
    h[22..24].copy_from_slice(&inner_nh.to_le_bytes());
    Some(start..datagram.end)
}

/// The outer IPv4 header of `datagram`, checked (option-less, UDP, its length the
/// datagram's, the UDP length agreeing), its TTL raised by one; returns the outer UDP
/// checksum's pseudo-header sum.
fn outer_ipv4(datagram: &mut [u8]) -> Option<u16> {
    if datagram.len() > MAX_DATAGRAM {
        return None;
    }
    let total = datagram.len();
    let mut ip = ipv4::Packet::new_checked(&mut *datagram).ok()?;
    if ip.header_len() != 20 || ip.protocol() != 17 || ip.total_len() as usize != total {
        return None;
    }
    let udp_len = udp_len(ip.packet(), 20)?;
    ip.set_ttl(ip.ttl().saturating_add(1));
    ip.fill_checksum();
    let (src, dst) = (ip.src(), ip.dst());
    Some(checksum::fold(checksum::pseudo_header_v4(
        src, dst, 17, udp_len,
    )))
}

/// [`outer_ipv4`] for an outer IPv6 header (next header UDP, no extension headers).
fn outer_ipv6(datagram: &mut [u8]) -> Option<u16> {
    let ip = ipv6::Packet::new_checked(&*datagram).ok()?;
    if ip.next_header() != ipv6::NEXT_UDP || ip.packet().len() != datagram.len() {
        return None;
    }
    let (src, dst) = (ip.src(), ip.dst());
    let udp_len = udp_len(datagram, 40)?;
    datagram[7] = datagram[7].saturating_add(1);
    let ph = checksum::pseudo_header_v6(src, dst, 17, udp_len as u32);
    Some(checksum::fold(ph))
}

/// The UDP length at `udp` in `datagram` if it covers the rest of the datagram exactly.
fn udp_len(datagram: &[u8], udp: usize) -> Option<u16> {
    let len = u16::try_from(datagram.len().checked_sub(udp)?).ok()?;
    let field = u16::from_be_bytes([*datagram.get(udp + 4)?, *datagram.get(udp + 5)?]);
    (field == len).then_some(len)
}

/// The kernel's own checks on a tunnel header (`virtio_net_hdr_tnl_to_skb` and
/// `__virtio_net_hdr_to_skb`, Linux 6.17), for tests and the fuzz target: a frame this
/// module builds must pass them, or the kernel would refuse the write with `EINVAL`.
pub fn kernel_accepts(frame: &[u8]) -> bool {
    if frame.len() < HDR_LEN + ETH_LEN + 20 {
        return false;
    }
    let (h, pkt) = frame.split_at(HDR_LEN);
    let le = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]) as usize;
    let (flags, gso_type) = (h[0], h[1]);
    let tunnel =
        gso_type & (VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 | VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6);
    let inner_type = gso_type & !(VIRTIO_NET_HDR_GSO_ECN | tunnel);
    let (hdr_len, gso_size, csum_start, csum_offset) = (le(2), le(4), le(6), le(8));
    let (outer_th, inner_nh) = (le(20), le(22));
    let outer_ip = match tunnel {
        VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 => 20,
        VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6 => 40,
        _ => return false,
    };
    let inner_ip = match inner_type {
        VIRTIO_NET_HDR_GSO_TCPV4 => 20,
        VIRTIO_NET_HDR_GSO_TCPV6 => 40,
        _ => return false,
    };
    flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
        && outer_th >= ETH_LEN + outer_ip
        && inner_nh >= outer_th + 8
        && csum_start >= inner_nh + inner_ip
        && csum_start + csum_offset + 2 <= pkt.len()
        && hdr_len <= pkt.len()
        && gso_size > 0
        && pkt.len() > hdr_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encap::{Outbound, VXLAN_OVERHEAD};
    use crate::lease::table::BackendKind;
    use crate::lease::LeaseTable;
    use crate::testkit;
    use crate::wire::udp::ChecksumMode;

    /// A TUN read of a TSO super-packet from 10.244.1.2 to 10.244.2.2: the 10-byte
    /// virtio-net header as the kernel writes it, then IPv4/TCP with `payload` bytes and a
    /// partial checksum.
    fn tso_read_bytes(payload: usize, mss: u16) -> (Vec<u8>, Vec<u8>) {
        let tcp_len = 32 + payload;
        let mut p = vec![0u8; 20 + tcp_len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        let c = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20 + 12] = 8 << 4;
        p[20 + 13] = 0x10;
        for (i, b) in p[52..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let sum = checksum::pseudo_header_v4(
            [10, 244, 1, 2].into(),
            [10, 244, 2, 2].into(),
            6,
            tcp_len as u16,
        );
        p[36..38].copy_from_slice(&checksum::fold(sum).to_be_bytes());
        let mut h = vec![0u8; 10];
        h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        h[1] = VIRTIO_NET_HDR_GSO_TCPV4;
        h[2..4].copy_from_slice(&52u16.to_le_bytes());
        h[4..6].copy_from_slice(&mss.to_le_bytes());
        h[6..8].copy_from_slice(&20u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        (h, p)
    }

    #[test]
    fn a_tso_read_is_recognised_and_anything_else_is_not() {
        let (h, p) = tso_read_bytes(64_000, 1398);
        let t = tso_read(&h, &p).unwrap();
        assert_eq!((t.headers, t.gso_size, t.segments), (52, 1398, 46));
        assert_eq!(t.segment_len(), 1450);
        let mut plain = h.clone();
        plain[1] = 0;
        assert_eq!(tso_read(&plain, &p), None, "not GSO");
        let mut no_csum = h.clone();
        no_csum[0] = 0;
        assert_eq!(tso_read(&no_csum, &p), None, "checksum not partial");
        let mut lying = h.clone();
        lying[6] = 24;
        assert_eq!(
            tso_read(&lying, &p),
            None,
            "csum_start is not the IP header length"
        );
        assert_eq!(
            tso_read(&h, &p[..p.len() - 1]),
            None,
            "total length disagrees"
        );
        let mut ecn = h.clone();
        ecn[1] |= VIRTIO_NET_HDR_GSO_ECN;
        assert!(tso_read(&ecn, &p).unwrap().ecn);
    }

    #[test]
    fn the_frame_carries_what_the_kernel_needs_and_passes_its_checks() {
        let node = testkit::node(1, true, 1, ChecksumMode::Zero);
        let table = LeaseTable::new("10.244.0.0/16".parse().unwrap());
        table.upsert(testkit::peer(2, BackendKind::Vxlan, 1));
        let (h, p) = tso_read_bytes(64_000, 1398);
        let tso = tso_read(&h, &p).unwrap();
        let at = PREFIX + VXLAN_OVERHEAD;
        let mut buf = vec![0u8; at + p.len()];
        buf[at..].copy_from_slice(&p);
        let snap = table.load();
        let t = match node.outbound_super(&snap, &mut buf, at, p.len(), 7, tso.segment_len()) {
            Outbound::Send(t) => t,
            o => panic!("{o:?}"),
        };
        let mac = [2, 0xaa, 0, 0, 0, 1];
        let f = frame(&mut buf, t.datagram.clone(), at, &tso, mac).unwrap();
        assert_eq!(f.start, 0);
        let fr = &buf[f.clone()];
        assert!(kernel_accepts(fr));
        // Tunnel header: flags, type, offsets from the Ethernet header.
        assert_eq!(fr[0], 1 | 8);
        assert_eq!(fr[1], 0x21);
        let le = |i: usize| u16::from_le_bytes([fr[i], fr[i + 1]]);
        assert_eq!((le(2), le(4), le(6), le(8)), (64 + 52, 1398, 64 + 20, 16));
        assert_eq!((le(20), le(22)), (34, 64));
        // Ethernet to the TAP, then the outer IPv4 with TTL 65 and a valid checksum.
        assert_eq!(&fr[24..30], &mac);
        assert_eq!(&fr[36..38], &[8, 0]);
        let ip = &fr[38..58];
        assert_eq!(ip[8], 65);
        assert_eq!(checksum::checksum(ip), 0);
        // Outer UDP: to 8472, checksum = the pseudo-header sum, not complemented.
        let udp = &fr[58..66];
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 8472);
        let len = u16::from_be_bytes([udp[4], udp[5]]);
        assert_eq!(len as usize, fr.len() - 58);
        let want = checksum::fold(checksum::pseudo_header_v4(
            [192, 0, 2, 1].into(),
            [192, 0, 2, 2].into(),
            17,
            len,
        ));
        assert_eq!(u16::from_be_bytes([udp[6], udp[7]]), want);
        // The inner super-packet is untouched.
        assert_eq!(&fr[88..], &p[..]);
    }

    #[test]
    fn short_headroom_or_a_foreign_datagram_is_refused() {
        let (h, p) = tso_read_bytes(3000, 1398);
        let tso = tso_read(&h, &p).unwrap();
        let mut buf = vec![0u8; 200 + p.len()];
        assert_eq!(
            frame(&mut buf, 10..200, 60, &tso, [0; 6]),
            None,
            "no headroom"
        );
        assert_eq!(
            frame(&mut buf, 100..300, 150, &tso, [0; 6]),
            None,
            "not IPv4/UDP"
        );
    }
}
