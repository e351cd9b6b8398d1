//! IPv6 pod packets written to an offloading TUN: [`tun_header`], the virtio-net header
//! that lets the kernel finish the L4 checksum a kernel peer left partial and cut a peer's
//! TCP super-packet at our MSS; and [`Coalescer6`], receive coalescing of consecutive
//! TCP/IPv6 segments of a flow into one super-packet written once with `gso_type = TCPV6`
//! (and of UDP/IPv6 datagrams into one `UDP_L4` write), by the rules of
//! [`super::gro::Coalescer`] (the kernel's `tcp_gro_receive`, with
//! `ipv6_gro_receive`'s: the same first header word but for the payload length, i.e.
//! traffic class and flow label, the same hop limit and addresses, no extension headers).

use crate::wire::virtio_net::{
    self, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
};
use crate::wire::{checksum, ipv6, put16, tcp};

/// Where the packet starts in the coalescer's buffer: after the virtio-net header.
const PKT: usize = virtio_net::LEN;
/// The largest packet a merge builds (its payload length fits 16 bits with room to spare).
const MAX_LEN: usize = 65535;

/// The facts of a mergeable segment: TCP/IPv6 (ACK or ACK|PSH) or UDP/IPv6 (its length
/// agreeing), no extension headers, the packet exactly as long as its payload length says,
/// some payload.
#[derive(Debug, Clone, Copy)]
struct Seg {
    /// Next header: TCP or UDP.
    next: u8,
    /// The L4 header's length (8 for UDP).
    thl: usize,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: usize,
}

fn segment(pkt: &[u8], udp: bool) -> Option<Seg> {
    let ip = ipv6::Packet::new_checked(pkt).ok()?;
    if ip.packet().len() != pkt.len() {
        return None;
    }
    let l4 = ip.payload();
    if udp && ip.next_header() == ipv6::NEXT_UDP && l4.len() > 8 {
        let len = u16::from_be_bytes([l4[4], l4[5]]) as usize;
        // Lazily: the payload length is only computed for a UDP length that is the
        // datagram's (a lying one may be below the header's 8 bytes).
        return (len == l4.len()).then(|| Seg {
            next: ipv6::NEXT_UDP,
            thl: 8,
            seq: 0,
            ack: 0,
            flags: 0,
            payload: len - 8,
        });
    }
    if ip.next_header() != ipv6::NEXT_TCP {
        return None;
    }
    let t = tcp::Packet::new_checked(l4).ok()?;
    let flags = t.flags();
    let s = Seg {
        next: ipv6::NEXT_TCP,
        thl: t.header_len(),
        seq: t.seq_number(),
        ack: t.ack_number(),
        flags,
        payload: t.payload().len(),
    };
    let mergeable = flags == tcp::FLAG_ACK || flags == tcp::FLAG_ACK | tcp::FLAG_PSH;
    (mergeable && s.payload > 0).then_some(s)
}

/// One open TCP/IPv6 or UDP/IPv6 super-packet, built in a buffer allocated once.
pub struct Coalescer6 {
    /// Whether UDP datagrams are merged (`--tun-udp-coalesce`, as for IPv4).
    merge_udp: bool,
    /// virtio-net header space, then the packet.
    buf: Vec<u8>,
    len: usize,
    segs: usize,
    /// The first segment's facts (its header length, its payload is the MSS).
    first: Option<Seg>,
    next_seq: u32,
    /// No more segments may join (after PSH or a short segment).
    closed: bool,
}

impl Default for Coalescer6 {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer6 {
    /// An empty coalescer (allocates its 64 KB buffer now, never later).
    pub fn new() -> Coalescer6 {
        Coalescer6 {
            merge_udp: true,
            buf: vec![0; PKT + MAX_LEN],
            len: 0,
            segs: 0,
            first: None,
            next_seq: 0,
            closed: false,
        }
    }

    /// The same coalescer with UDP merging on or off (on by default).
    pub fn merging_udp(mut self, on: bool) -> Coalescer6 {
        self.merge_udp = on;
        self
    }

    /// Adds a packet: merged into the pending super-packet, or started as a new one if
    /// nothing is pending. False (keeping nothing) when it is not a mergeable TCP/IPv6
    /// segment or UDP/IPv6 datagram, or does not continue what is pending: the caller
    /// flushes and, for the latter, pushes again.
    pub fn push(&mut self, pkt: &[u8]) -> bool {
        let Some(s) = segment(pkt, self.merge_udp).filter(|_| pkt.len() <= MAX_LEN) else {
            return false;
        };
        let Some(first) = self.first else {
            self.buf[PKT..PKT + pkt.len()].copy_from_slice(pkt);
            (self.len, self.segs, self.first) = (pkt.len(), 1, Some(s));
            self.next_seq = s.seq.wrapping_add(s.payload as u32);
            self.closed = s.flags & tcp::FLAG_PSH != 0;
            return true;
        };
        let head = &self.buf[PKT..PKT + ipv6::HEADER_LEN + first.thl];
        let hl = ipv6::HEADER_LEN;
        let udp = s.next == ipv6::NEXT_UDP;
        let ok = !self.closed
            && s.next == first.next
            && s.thl == first.thl
            && (udp || s.seq == self.next_seq)
            && (!udp || self.segs < super::gro::MAX_UDP_SEGMENTS)
            && s.ack == first.ack
            && s.payload <= first.payload
            && self.len + s.payload <= MAX_LEN
            // Version, traffic class, flow label; next header, hop limit, addresses.
            && pkt[..4] == head[..4]
            && pkt[6..hl] == head[6..hl]
            // Ports; then TCP's options (the window and checksum may differ).
            && pkt[hl..hl + 4] == head[hl..hl + 4]
            && (udp || pkt[hl + tcp::HEADER_LEN..hl + s.thl] == head[hl + tcp::HEADER_LEN..]);
        if !ok {
            return false;
        }
        let at = PKT + self.len;
        self.buf[at..at + s.payload].copy_from_slice(&pkt[hl + s.thl..]);
        self.len += s.payload;
        self.segs += 1;
        self.next_seq = self.next_seq.wrapping_add(s.payload as u32);
        if !udp && s.flags & tcp::FLAG_PSH != 0 {
            // The super-packet carries PSH, as its last segment will once cut.
            self.buf[PKT + hl + 13] |= tcp::FLAG_PSH;
            self.closed = true;
        }
        self.closed |= s.payload < first.payload;
        true
    }

    /// Finishes the pending packet and returns the bytes to write to the TUN (virtio-net
    /// header included); empty afterwards. `None` if nothing is pending.
    pub fn flush(&mut self) -> Option<&[u8]> {
        let first = self.first.take()?;
        let (len, segs) = (
            std::mem::take(&mut self.len),
            std::mem::take(&mut self.segs),
        );
        self.closed = false;
        let pkt = &mut self.buf[PKT..PKT + len];
        let hl = ipv6::HEADER_LEN;
        let l4 = len - hl;
        put16(pkt, 4, l4 as u16);
        let (off, gso) = if first.next == ipv6::NEXT_UDP {
            put16(pkt, hl + 4, l4 as u16); // the UDP length covers every datagram
            (6, VIRTIO_NET_HDR_GSO_UDP_L4)
        } else {
            (tcp::CHECKSUM_OFFSET, VIRTIO_NET_HDR_GSO_TCPV6)
        };
        let ip = ipv6::Packet::new_unchecked(&*pkt);
        let ph = checksum::pseudo_header_v6(ip.src(), ip.dst(), first.next, l4 as u32);
        put16(pkt, hl + off, checksum::fold(ph));
        let mut hdr = needs_csum(off);
        if segs > 1 {
            hdr.gso_type = gso;
            hdr.hdr_len = (hl + first.thl) as u16;
            hdr.gso_size = first.payload as u16;
        }
        hdr.emit(&mut self.buf[..PKT]);
        Some(&self.buf[..PKT + len])
    }

    /// Segments merged into the pending packet.
    pub fn segments(&self) -> usize {
        self.segs
    }
}

/// The header of one IPv6 packet whose L4 checksum, at `off` in the L4 header right after
/// the fixed header, holds the pseudo-header sum for the kernel to finish.
fn needs_csum(off: usize) -> virtio_net::Repr {
    virtio_net::Repr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: ipv6::HEADER_LEN as u16,
        csum_offset: off as u16,
    }
}

/// Prepares the IPv6 packet `pkt` (a checked one, as decapsulation returns it) for a TUN
/// write and returns its header: a TCP or UDP packet right after the fixed header gets its
/// checksum set to the pseudo-header sum and `NEEDS_CSUM`; a TCP packet longer than `mtu`
/// also GSO at `mtu`'s MSS. `None` when it is longer than `mtu` and cannot be segmented
/// (not TCP, or behind extension headers): the caller drops it.
pub fn tun_header(pkt: &mut [u8], mtu: usize) -> Option<virtio_net::Repr> {
    let ip = ipv6::Packet::new_checked(&*pkt).ok()?;
    let (src, dst, next) = (ip.src(), ip.dst(), ip.next_header());
    let end = ip.packet().len();
    let l4 = &mut pkt[ipv6::HEADER_LEN..end];
    let off = match next {
        ipv6::NEXT_TCP if l4.len() >= tcp::HEADER_LEN => tcp::CHECKSUM_OFFSET,
        ipv6::NEXT_UDP if l4.len() >= 8 => 6,
        _ if end <= mtu => return Some(virtio_net::Repr::default()),
        _ => return None,
    };
    let mut hdr = needs_csum(off);
    if end > mtu {
        let thl = tcp::claimed_header_len(l4).filter(|_| next == ipv6::NEXT_TCP)?;
        let mss = mtu.checked_sub(ipv6::HEADER_LEN + thl).filter(|&m| m > 0)?;
        if thl < tcp::HEADER_LEN || thl > l4.len() || mss > u16::MAX as usize {
            return None;
        }
        hdr.gso_type = VIRTIO_NET_HDR_GSO_TCPV6;
        hdr.hdr_len = (ipv6::HEADER_LEN + thl) as u16;
        hdr.gso_size = mss as u16;
    }
    let ph = checksum::pseudo_header_v6(src, dst, next, l4.len() as u32);
    put16(l4, off, checksum::fold(ph));
    Some(hdr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::gro::complete_checksum;

    fn packet(tcp: bool, payload: usize) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv6(
            [0xfd, 0, 0x10, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            [0xfd, 0, 0x10, 0x44, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            64,
        );
        let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 3) as u8).collect();
        let mut v = Vec::new();
        if tcp {
            b.tcp(40000, 5201, 1, 500)
                .ack(9)
                .write(&mut v, &data)
                .unwrap();
        } else {
            b.udp(40000, 5201).write(&mut v, &data).unwrap();
        }
        v
    }

    #[test]
    fn a_partial_checksum_comes_out_whole_once_the_kernel_finishes_it() {
        for tcp in [true, false] {
            let good = packet(tcp, 300);
            let mut p = good.clone();
            // What a kernel peer on a veth sends: only the pseudo-header sum.
            let at = ipv6::HEADER_LEN + if tcp { 16 } else { 6 };
            p[at..at + 2].copy_from_slice(&[0x12, 0x34]);
            let h = tun_header(&mut p, 1430).unwrap();
            assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_NONE);
            assert!(complete_checksum(&mut p, &h));
            assert_eq!(p, good, "tcp={tcp}");
        }
    }

    /// Segment `i` of a flow (`mss` bytes of payload each), as etherparse builds it.
    fn seg(i: u32, mss: usize, psh: bool) -> Vec<u8> {
        let mut b = etherparse::PacketBuilder::ipv6(
            [0xfd, 0, 0x10, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            [0xfd, 0, 0x10, 0x44, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            64,
        )
        .tcp(40000, 5201, 1000 + i * mss as u32, 500)
        .ack(9);
        if psh {
            b = b.psh();
        }
        let data: Vec<u8> = (0..mss).map(|k| (i as usize * mss + k) as u8).collect();
        let mut v = Vec::new();
        b.write(&mut v, &data).unwrap();
        v
    }

    #[test]
    fn consecutive_segments_become_one_gso_packet_the_kernel_can_cut_back() {
        let mut co = Coalescer6::new();
        for i in 0..5 {
            assert!(co.push(&seg(i, 1370, i == 4)), "segment {i}");
        }
        // After PSH nothing joins; a new flow's segment does not either.
        assert!(!co.push(&seg(5, 1370, false)));
        assert_eq!(co.segments(), 5);
        let out = co.flush().unwrap().to_vec();
        let vh = virtio_net::Packet::new_checked(&out[..]).unwrap();
        let h = virtio_net::Repr::parse(&vh);
        assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!((h.hdr_len, h.gso_size), (60, 1370));
        let mut pkt = out[virtio_net::LEN..].to_vec();
        assert_eq!(pkt.len(), 60 + 5 * 1370);
        assert!(complete_checksum(&mut pkt, &h));
        // The whole is one valid TCP/IPv6 packet carrying the five payloads in order, PSH.
        let (ip, rest) = etherparse::Ipv6Header::from_slice(&pkt).unwrap();
        let (t, data) = etherparse::TcpHeader::from_slice(rest).unwrap();
        assert_eq!(t.calc_checksum_ipv6(&ip, data).unwrap(), t.checksum);
        assert!(t.psh);
        let want: Vec<u8> = (0..5 * 1370).map(|k| k as u8).collect();
        assert_eq!(data, &want[..]);
        assert!(co.flush().is_none());
        // A gap in the sequence does not merge; a lone segment goes without GSO.
        assert!(co.push(&seg(0, 1370, false)));
        assert!(!co.push(&seg(2, 1370, false)));
        let one = co.flush().unwrap();
        let h = virtio_net::Repr::parse(&virtio_net::Packet::new_checked(one).unwrap());
        assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_NONE);
        // Not TCP or UDP: refused, nothing kept; UDP too when UDP merging is off.
        let mut icmp = packet(false, 100);
        icmp[6] = ipv6::NEXT_ICMPV6;
        assert!(!co.push(&icmp));
        let mut no_udp = Coalescer6::new().merging_udp(false);
        assert!(!no_udp.push(&packet(false, 100)));
        assert!(co.flush().is_none() && no_udp.flush().is_none());
    }

    #[test]
    fn a_flows_udp_datagrams_become_one_udp_l4_write_of_whole_datagrams() {
        let mut co = Coalescer6::new();
        for n in [1380, 1380, 1380, 700] {
            assert!(co.push(&packet(false, n)), "{n}");
        }
        // Nothing joins after a shorter one.
        assert!(!co.push(&packet(false, 1380)));
        let out = co.flush().unwrap().to_vec();
        let h = virtio_net::Repr::parse(&virtio_net::Packet::new_checked(&out[..]).unwrap());
        assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_UDP_L4);
        assert_eq!((h.hdr_len, h.gso_size, h.csum_offset), (48, 1380, 6));
        let mut pkt = out[virtio_net::LEN..].to_vec();
        assert_eq!(pkt.len(), 48 + 3 * 1380 + 700);
        assert!(complete_checksum(&mut pkt, &h));
        let (ip, rest) = etherparse::Ipv6Header::from_slice(&pkt).unwrap();
        assert_eq!(ip.payload_length as usize, pkt.len() - 40);
        let (u, data) = etherparse::UdpHeader::from_slice(rest).unwrap();
        assert_eq!(u.length as usize, pkt.len() - 40);
        assert_eq!(u.calc_checksum_ipv6(&ip, data).unwrap(), u.checksum);
        // A different flow (ports) does not join.
        assert!(co.push(&packet(false, 1380)));
        let mut other = packet(false, 1380);
        other[41] ^= 1;
        assert!(!co.push(&other));
    }

    #[test]
    fn an_oversized_tcp_packet_is_cut_at_our_mss_and_anything_else_oversized_refused() {
        let mut p = packet(true, 4000);
        let h = tun_header(&mut p, 1430).unwrap();
        assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!(h.hdr_len, 60);
        assert_eq!(h.gso_size, 1430 - 60);
        assert!(tun_header(&mut packet(false, 4000), 1430).is_none());
        let mut icmp = packet(false, 100);
        icmp[6] = ipv6::NEXT_ICMPV6;
        assert_eq!(
            tun_header(&mut icmp, 1430),
            Some(virtio_net::Repr::default())
        );
    }
}
