//! Receive coalescing for a TUN with a virtio-net header: consecutive TCP/IPv4 segments of
//! one flow become one super-packet, written once with `gso_type = TCPV4`, and every TCP or
//! UDP packet goes out with `NEEDS_CSUM` and only its pseudo-header checksum, which the
//! kernel finishes only if it must (it never does on a veth). So the receive path copies
//! each payload once and computes no inner checksum.
//!
//! Merge rules follow the kernel's `tcp_gro_receive`: same addresses, ports, IP header
//! fields (TOS, TTL, DF, no options, no fragments) and TCP header length and options; the
//! next sequence number; the same ACK number; ACK or ACK|PSH only, and nothing merges after
//! a PSH or a short segment. The super-packet keeps the first segment's window.
//!
//! Consecutive UDP/IPv4 datagrams of one flow are merged too (as the kernel's UDP GRO does
//! for a socket that asked for it): same addresses, ports and IP header fields, the same
//! payload size but for a shorter last one, at most [`MAX_UDP_SEGMENTS`]. The result is
//! written once with `gso_type = UDP_L4` and the datagram size as `gso_size`; the kernel
//! carries it whole through the bridge and the pod's veth and cuts it back into the same
//! datagrams at the pod's socket (or wherever a device cannot take it). One TUN write, one
//! trip through forwarding, bridge and netfilter, instead of one per datagram.

use crate::wire::virtio_net::{
    self, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_UDP_L4,
};
use crate::wire::{be16, checksum, ipv4, put16, tcp};

/// Where the packet starts in the coalescer's buffer: after the virtio-net header.
const PKT: usize = virtio_net::LEN;
/// The largest IPv4 packet.
const MAX_LEN: usize = 65535;

/// The most datagrams one UDP super-packet carries (the kernel's `UDP_MAX_SEGMENTS` was 64
/// until 6.9).
pub const MAX_UDP_SEGMENTS: usize = 64;

/// A UDP/IPv4 datagram's facts for a merge: header length, ports, payload length.
#[derive(Debug, Clone, Copy)]
struct Udp {
    ihl: usize,
    ports: [u8; 4],
    payload: usize,
}

/// A mergeable UDP/IPv4 datagram: no IP options, unfragmented, the UDP length agreeing
/// with the IP total length (which agrees with the packet), some payload.
fn udp4(pkt: &[u8]) -> Option<Udp> {
    let ip = ipv4::Packet::new_checked(pkt).ok()?;
    let ihl = ip.header_len();
    if ip.protocol() != ipv4::PROTO_UDP
        || ihl != ipv4::HEADER_LEN
        || ip.more_frags()
        || ip.frag_offset() != 0
        || ip.total_len() as usize != pkt.len()
        || pkt.len() < ihl + 8
        || be16(pkt, ihl + 4) as usize != pkt.len() - ihl
    {
        return None;
    }
    let payload = pkt.len() - ihl - 8;
    (payload > 0).then(|| Udp {
        ihl,
        ports: [pkt[ihl], pkt[ihl + 1], pkt[ihl + 2], pkt[ihl + 3]],
        payload,
    })
}

/// The TCP/IPv4 facts a merge decision needs.
#[derive(Debug, Clone, Copy)]
struct Tcp {
    ihl: usize,
    thl: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

impl Tcp {
    fn of(ip: &ipv4::Packet<&[u8]>, seg: &tcp::Packet<&[u8]>) -> Tcp {
        Tcp {
            ihl: ip.header_len(),
            thl: seg.header_len(),
            seq: seg.seq_number(),
            flags: seg.flags(),
            payload: seg.payload().len(),
        }
    }
}

/// Checked IPv4 and TCP views of one packet.
type Views<'a> = (ipv4::Packet<&'a [u8]>, tcp::Packet<&'a [u8]>);

/// Checked IPv4 and TCP views of an unfragmented TCP/IPv4 packet, the TCP view over the IP
/// payload (up to the IP total length).
fn views(pkt: &[u8]) -> Option<Views<'_>> {
    let ip = ipv4::Packet::new_checked(pkt).ok()?;
    if ip.protocol() != ipv4::PROTO_TCP || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    // In bounds: the check saw header_len <= total_len <= pkt.len().
    let seg = tcp::Packet::new_checked(&pkt[ip.header_len()..ip.total_len() as usize]).ok()?;
    Some((ip, seg))
}

/// [`views`] of a packet that is exactly as long as its IP total length says.
fn tcp4(pkt: &[u8]) -> Option<Views<'_>> {
    views(pkt).filter(|(ip, _)| ip.total_len() as usize == pkt.len())
}

/// ACK or ACK|PSH: the only flags a merged segment may carry.
fn mergeable_flags(flags: u8) -> bool {
    flags == tcp::FLAG_ACK || flags == tcp::FLAG_ACK | tcp::FLAG_PSH
}

/// One open super-packet, built in a buffer allocated once.
pub struct Coalescer {
    /// virtio-net header space, then the packet.
    buf: Vec<u8>,
    /// Packet bytes after the header space.
    len: usize,
    segs: usize,
    /// TCP super-packet state: header lengths, payload per segment, next sequence number.
    tcp: Option<Tcp>,
    /// UDP super-packet state (the first datagram's facts), when UDP merging is on.
    udp: Option<Udp>,
    /// Whether UDP datagrams are merged (`--tun-udp-coalesce`).
    merge_udp: bool,
    mss: usize,
    next_seq: u32,
    /// No more segments may join (after PSH, a short segment, or a forced GSO packet).
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    /// An empty coalescer (allocates its 64 KB buffer now, never later).
    pub fn new() -> Coalescer {
        Coalescer {
            buf: vec![0; PKT + MAX_LEN],
            len: 0,
            segs: 0,
            tcp: None,
            udp: None,
            merge_udp: true,
            mss: 0,
            next_seq: 0,
            closed: false,
        }
    }

    /// The same coalescer with UDP merging on or off (on by default).
    pub fn merging_udp(mut self, on: bool) -> Coalescer {
        self.merge_udp = on;
        self
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.segs == 0
    }

    /// Segments merged into the pending packet.
    pub fn segments(&self) -> usize {
        self.segs
    }

    /// Adds a checked IPv4 packet: merged into the pending super-packet, or started as a
    /// new one if nothing is pending. Returns false (and keeps nothing) when the caller must
    /// [`flush`](Self::flush) first.
    pub fn push(&mut self, pkt: &[u8]) -> bool {
        if pkt.len() > MAX_LEN {
            return false;
        }
        if self.segs == 0 {
            self.start(pkt);
            return true;
        }
        if self.udp.is_some() {
            return self.push_udp(pkt);
        }
        let (Some(cur), Some((ip, seg))) = (self.tcp, tcp4(pkt)) else {
            return false;
        };
        if self.closed {
            return false;
        }
        // The pending packet's headers, checked when it started (its IP total length is
        // still its first segment's).
        let Some((hip, hseg)) = views(&self.buf[PKT..PKT + self.len]) else {
            return false;
        };
        let t = Tcp::of(&ip, &seg);
        let ok = t.ihl == ipv4::HEADER_LEN
            && t.ihl == cur.ihl
            && t.thl == cur.thl
            && t.seq == self.next_seq
            && t.payload > 0
            && t.payload <= self.mss
            && self.len + t.payload <= MAX_LEN
            && mergeable_flags(t.flags)
            // IP: TOS, TTL, addresses (both TCP, no options, unfragmented) and the flags
            // word: DF and the reserved bit, which `ipv4::Packet` has no getter for.
            && ip.tos() == hip.tos()
            && be16(pkt, 6) == be16(&self.buf[PKT..], 6)
            && ip.ttl() == hip.ttl()
            && ip.src() == hip.src()
            && ip.dst() == hip.dst()
            // TCP: ports, ACK number, options.
            && seg.src_port() == hseg.src_port()
            && seg.dst_port() == hseg.dst_port()
            && seg.ack_number() == hseg.ack_number()
            && seg.options() == hseg.options();
        if !ok {
            return false;
        }
        let at = PKT + self.len;
        self.buf[at..at + t.payload].copy_from_slice(seg.payload());
        self.len += t.payload;
        self.segs += 1;
        self.next_seq = self.next_seq.wrapping_add(t.payload as u32);
        if t.flags & tcp::FLAG_PSH != 0 {
            // The super-packet carries PSH on its last segment, as GSO will split it.
            let head = &mut self.buf[PKT + cur.ihl..PKT + self.len];
            if let Ok(mut h) = tcp::Packet::new_checked(head) {
                h.set_flags(h.flags() | tcp::FLAG_PSH);
            }
            self.closed = true;
        }
        if t.payload < self.mss {
            self.closed = true;
        }
        true
    }

    /// Merges a datagram into the pending UDP super-packet, if it belongs there.
    fn push_udp(&mut self, pkt: &[u8]) -> bool {
        let (Some(cur), Some(u)) = (self.udp, udp4(pkt)) else {
            return false;
        };
        let head = &self.buf[PKT..PKT + ipv4::HEADER_LEN];
        let ok = !self.closed
            && u.ports == cur.ports
            && u.payload <= cur.payload
            && self.segs < MAX_UDP_SEGMENTS
            && self.len + u.payload <= MAX_LEN
            // TOS, the flags word (DF), TTL and protocol, and both addresses.
            && pkt[1] == head[1]
            && pkt[6..10] == head[6..10]
            && pkt[12..20] == head[12..20];
        if !ok {
            return false;
        }
        let at = PKT + self.len;
        self.buf[at..at + u.payload].copy_from_slice(&pkt[u.ihl + 8..]);
        self.len += u.payload;
        self.segs += 1;
        // Only the last datagram may be shorter.
        self.closed = u.payload < cur.payload;
        true
    }

    fn start(&mut self, pkt: &[u8]) {
        self.buf[PKT..PKT + pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        self.segs = 1;
        self.udp = if self.merge_udp { udp4(pkt) } else { None };
        self.tcp = tcp4(pkt)
            .map(|(ip, seg)| Tcp::of(&ip, &seg))
            .filter(|t| t.ihl == ipv4::HEADER_LEN && t.payload > 0 && mergeable_flags(t.flags));
        if let Some(t) = self.tcp {
            self.mss = t.payload;
            self.next_seq = t.seq.wrapping_add(t.payload as u32);
            self.closed = t.flags & tcp::FLAG_PSH != 0;
        }
    }

    /// Starts a pending packet from an oversized TCP/IPv4 packet (a peer's TSO segment) to
    /// be segmented by the kernel at `mss`. Nothing must be pending. Returns false if it is
    /// not such a packet.
    pub fn push_oversized(&mut self, pkt: &[u8], mss: usize) -> bool {
        let Some(t) = tcp4(pkt).map(|(ip, seg)| Tcp::of(&ip, &seg)) else {
            return false;
        };
        if self.segs != 0 || mss == 0 || mss > u16::MAX as usize || pkt.len() > MAX_LEN {
            return false;
        }
        self.buf[PKT..PKT + pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        self.tcp = Some(t);
        self.udp = None;
        self.mss = mss;
        // Forces a GSO header even though it arrived as one packet.
        self.segs = t.payload.div_ceil(mss).max(2);
        self.closed = true;
        true
    }

    /// Finishes the pending packet and returns the bytes to write to the TUN (virtio-net
    /// header included); the coalescer is empty afterwards. `None` if nothing is pending.
    pub fn flush(&mut self) -> Option<&[u8]> {
        if self.segs == 0 {
            return None;
        }
        let segs = std::mem::take(&mut self.segs);
        let len = self.len;
        let pkt = &mut self.buf[PKT..PKT + len];
        let mut hdr = virtio_net::Repr::default();
        match (self.tcp.take(), self.udp.take()) {
            (Some(t), _) if segs > 1 => hdr = finish_gso(pkt, &t, self.mss),
            (None, Some(u)) if segs > 1 => {
                put16(pkt, 2, len as u16); // IPv4 total length: `ipv4::Packet` has no setter
                ipv4::Packet::new_unchecked(&mut *pkt).fill_checksum();
                put16(pkt, u.ihl + 4, (len - u.ihl) as u16); // UDP length
                partial_checksum(pkt, u.ihl, ipv4::PROTO_UDP, 6);
                hdr = virtio_net::Repr {
                    flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                    gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
                    hdr_len: (u.ihl + 8) as u16,
                    gso_size: u.payload as u16,
                    csum_start: u.ihl as u16,
                    csum_offset: 6,
                };
            }
            _ => {
                // One packet: let the kernel finish a TCP or UDP checksum (it may have come
                // partial from a kernel peer), unless UDP sent none.
                if let Ok(ip) = ipv4::Packet::new_checked(&*pkt) {
                    let ihl = ip.header_len();
                    let l4 = ip.payload();
                    let first_frag = !ip.more_frags() && ip.frag_offset() == 0;
                    let off = match ip.protocol() {
                        ipv4::PROTO_TCP if l4.len() >= tcp::HEADER_LEN => {
                            Some(tcp::CHECKSUM_OFFSET)
                        }
                        ipv4::PROTO_UDP if l4.len() >= 8 && be16(l4, 6) != 0 => Some(6),
                        _ => None,
                    };
                    if let (Some(off), true) = (off, first_frag) {
                        let proto = ip.protocol();
                        partial_checksum(pkt, ihl, proto, off);
                        hdr = virtio_net::Repr {
                            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                            gso_type: VIRTIO_NET_HDR_GSO_NONE,
                            hdr_len: 0,
                            gso_size: 0,
                            csum_start: ihl as u16,
                            csum_offset: off as u16,
                        };
                    }
                }
            }
        }
        self.closed = false;
        self.len = 0;
        hdr.emit(&mut self.buf[..PKT]);
        Some(&self.buf[..PKT + len])
    }
}

/// Fixes up a TCP super-packet for a GSO write (IPv4 total length and checksum, TCP
/// checksum partial) and returns its virtio-net header, segmenting at `mss`.
fn finish_gso(pkt: &mut [u8], t: &Tcp, mss: usize) -> virtio_net::Repr {
    put16(pkt, 2, pkt.len() as u16); // IPv4 total length: `ipv4::Packet` has no setter
    ipv4::Packet::new_unchecked(&mut *pkt).fill_checksum();
    partial_checksum(pkt, t.ihl, ipv4::PROTO_TCP, tcp::CHECKSUM_OFFSET);
    virtio_net::Repr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: (t.ihl + t.thl) as u16,
        gso_size: mss as u16,
        csum_start: t.ihl as u16,
        csum_offset: tcp::CHECKSUM_OFFSET as u16,
    }
}

/// [`Coalescer::push_oversized`] and [`Coalescer::flush`] in place, without the copy: the
/// oversized TCP/IPv4 packet at `buf[pkt]` (a peer's TSO super-packet) gets its virtio-net
/// header written into the headroom before it (the decapsulated outer headers). Returns
/// where the bytes to write to the TUN start (they end at `pkt.end`), or `None` if it is not
/// such a packet or there is no headroom.
pub fn oversized_in_place(
    buf: &mut [u8],
    pkt: std::ops::Range<usize>,
    mss: usize,
) -> Option<usize> {
    let start = pkt.start.checked_sub(PKT)?;
    let bytes = buf.get(pkt.clone())?;
    let t = tcp4(bytes).map(|(ip, seg)| Tcp::of(&ip, &seg))?;
    if mss == 0 || mss > u16::MAX as usize || bytes.len() > MAX_LEN {
        return None;
    }
    let hdr = finish_gso(&mut buf[pkt.clone()], &t, mss);
    hdr.emit(&mut buf[start..pkt.start]);
    Some(start)
}

/// The datagrams of one `UDP_GRO` read of `len` bytes with segment size `stride` (0: one
/// datagram): back to back, every one `stride` long but the last. A stride that lies
/// (larger than the read, or zero) yields the whole read as one datagram.
pub fn datagrams(len: usize, stride: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let stride = if stride == 0 || stride > len {
        len.max(1)
    } else {
        stride
    };
    (0..len)
        .step_by(stride)
        .map(move |at| at..(at + stride).min(len))
}

/// Sets the L4 checksum at `ihl + off` to the folded pseudo-header sum: what a
/// `CHECKSUM_PARTIAL` packet carries for the kernel to finish. `pkt` holds an IPv4 header
/// (the callers have checked it).
fn partial_checksum(pkt: &mut [u8], ihl: usize, proto: u8, off: usize) {
    let ip = ipv4::Packet::new_unchecked(&*pkt);
    let (src, dst) = (ip.src(), ip.dst());
    let l4_len = (pkt.len() - ihl) as u16;
    let c = checksum::fold(checksum::pseudo_header_v4(src, dst, proto, l4_len));
    put16(pkt, ihl + off, c);
}

/// Finishes a `NEEDS_CSUM` packet as the kernel would: the checksum over `csum_start..`
/// stored at `csum_start + csum_offset`. For tests and for peers without offload.
pub fn complete_checksum(pkt: &mut [u8], hdr: &virtio_net::Repr) -> bool {
    let (s, o) = (hdr.csum_start as usize, hdr.csum_offset as usize);
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 || s + o + 2 > pkt.len() {
        return false;
    }
    let c = !checksum::fold(checksum::sum(&pkt[s..], 0));
    put16(pkt, s + o, c);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::gso::split_tcp4;

    fn segment_stream(payload: usize, mss: usize, psh_last: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut b = etherparse::PacketBuilder::ipv4([10, 244, 200, 11], [10, 244, 70, 11], 64)
            .tcp(54388, 5201, 4_294_960_000, 500)
            .ack(77)
            .options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Timestamp(1, 2),
            ])
            .unwrap();
        if psh_last {
            b = b.psh();
        }
        let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 1) as u8).collect();
        let mut whole = Vec::new();
        b.write(&mut whole, &data).unwrap();
        let mut segs = Vec::new();
        split_tcp4(&whole, mss, &mut vec![0u8; 4096], |s| segs.push(s.to_vec())).unwrap();
        (whole, segs)
    }

    /// Completes the checksum the way the kernel would and checks it with etherparse.
    fn finish(out: &[u8]) -> (virtio_net::Repr, Vec<u8>) {
        let hdr = virtio_net::Repr::parse(&virtio_net::Packet::new_checked(out).unwrap());
        let mut pkt = out[virtio_net::LEN..].to_vec();
        complete_checksum(&mut pkt, &hdr);
        (hdr, pkt)
    }

    #[test]
    fn split_then_coalesce_is_the_original() {
        let (whole, segs) = segment_stream(20_000, 1398, true);
        assert!(segs.len() > 10);
        let mut c = Coalescer::new();
        for s in &segs {
            assert!(c.push(s));
        }
        let (hdr, pkt) = finish(c.flush().unwrap());
        assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(hdr.gso_size, 1398);
        assert_eq!(hdr.hdr_len, 20 + 32);
        // Byte-exact but for the IP ID (GSO increments it per segment; the super-packet
        // keeps the first segment's, which is the original's).
        assert_eq!(pkt, whole);
        let s = etherparse::SlicedPacket::from_ip(&pkt).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        let Some(etherparse::TransportSlice::Tcp(t)) = s.transport else {
            panic!()
        };
        assert_eq!(
            t.checksum(),
            t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap()
        );
        assert!(c.is_empty());
        assert!(c.flush().is_none());
    }

    #[test]
    fn refuses_what_gro_must_not_merge() {
        let (_, segs) = segment_stream(5000, 1000, false);
        let mut c = Coalescer::new();
        assert!(c.push(&segs[0]));
        // A gap in the sequence.
        assert!(!c.push(&segs[2]));
        assert!(c.push(&segs[1]));
        // Another flow (destination port changed).
        let mut other = segs[2].clone();
        other[23] ^= 1;
        assert!(!c.push(&other));
        // A different ACK number.
        let mut ack = segs[2].clone();
        ack[31] ^= 1;
        assert!(!c.push(&ack));
        // A segment after a short one.
        let (_, short) = segment_stream(1500, 1000, false);
        let mut c = Coalescer::new();
        assert!(c.push(&short[0]));
        assert!(c.push(&short[1])); // 500 bytes: closes
        let mut next = short[1].clone();
        let seq = u32::from_be_bytes([next[24], next[25], next[26], next[27]]) + 500;
        next[24..28].copy_from_slice(&seq.to_be_bytes());
        assert!(!c.push(&next));
        assert_eq!(c.segments(), 2);
    }

    #[test]
    fn single_packets_get_a_partial_checksum_the_kernel_can_finish() {
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut udp, b"hello")
            .unwrap();
        let mut c = Coalescer::new().merging_udp(false);
        assert!(c.push(&udp));
        assert!(!c.push(&udp)); // with UDP merging off, UDP never merges
        let (hdr, pkt) = finish(c.flush().unwrap());
        assert_eq!(
            (hdr.flags, hdr.gso_type, hdr.csum_start, hdr.csum_offset),
            (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 20, 6)
        );
        assert_eq!(pkt, udp);
        // ICMP: no offload flags, bytes unchanged.
        let mut icmp = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"x")
            .unwrap();
        assert!(c.push(&icmp));
        let out = c.flush().unwrap();
        assert_eq!(
            virtio_net::Repr::parse(&virtio_net::Packet::new_checked(out).unwrap()),
            virtio_net::Repr::default()
        );
        assert_eq!(&out[virtio_net::LEN..], &icmp[..]);
    }

    #[test]
    fn oversized_packets_are_handed_to_kernel_gso() {
        let (whole, _) = segment_stream(7000, 1398, false);
        let mut c = Coalescer::new();
        assert!(c.push_oversized(&whole, 1398));
        let (hdr, pkt) = finish(c.flush().unwrap());
        assert_eq!(
            (hdr.gso_type, hdr.gso_size),
            (VIRTIO_NET_HDR_GSO_TCPV4, 1398)
        );
        assert_eq!(pkt, whole);
        // In place: the same bytes, without the copy into the coalescer.
        let mut buf = vec![0xee; 50];
        buf.extend_from_slice(&whole);
        let s = oversized_in_place(&mut buf, 50..50 + whole.len(), 1398).unwrap();
        assert_eq!(s, 50 - virtio_net::LEN);
        let mut co = Coalescer::new();
        assert!(co.push_oversized(&whole, 1398));
        assert_eq!(&buf[s..], co.flush().unwrap());
        assert_eq!(
            oversized_in_place(&mut buf, 5..5 + whole.len(), 1398),
            None,
            "no headroom"
        );
        assert_eq!(
            oversized_in_place(&mut buf, 50..60, 1398),
            None,
            "not TCP/IPv4"
        );
    }

    fn udp_datagram(payload: &[u8], id: u16) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 244, 1, 11], [10, 244, 2, 11], 64)
            .udp(5001, 5201)
            .write(&mut v, payload)
            .unwrap();
        v[4..6].copy_from_slice(&id.to_be_bytes());
        let c = checksum::checksum(&{
            let mut h = v[..20].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        v[10..12].copy_from_slice(&c.to_be_bytes());
        v
    }

    #[test]
    fn a_flows_udp_datagrams_become_one_udp_gso_write_that_cuts_back_into_them() {
        let payloads: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![i; if i == 4 { 300 } else { 1400 }])
            .collect();
        let dgrams: Vec<Vec<u8>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| udp_datagram(p, 100 + i as u16))
            .collect();
        let mut c = Coalescer::new();
        for d in &dgrams {
            assert!(c.push(d), "datagram refused");
        }
        // Nothing joins after the short last one.
        assert!(!c.push(&dgrams[0]));
        assert_eq!(c.segments(), 5);
        let out = c.flush().unwrap().to_vec();
        let raw = &out[virtio_net::LEN..];
        // The checksum field holds the pseudo-header sum of the whole, for the kernel to
        // adjust per datagram as it cuts.
        let want = checksum::fold(checksum::pseudo_header_v4(
            [10, 244, 1, 11].into(),
            [10, 244, 2, 11].into(),
            17,
            (raw.len() - 20) as u16,
        ));
        assert_eq!(be16(raw, 26), want);
        let (hdr, pkt) = finish(&out);
        assert_eq!(
            (
                hdr.gso_type,
                hdr.gso_size,
                hdr.hdr_len,
                hdr.csum_start,
                hdr.csum_offset
            ),
            (VIRTIO_NET_HDR_GSO_UDP_L4, 1400, 28, 20, 6)
        );
        assert_eq!(pkt.len(), 28 + 4 * 1400 + 300);
        assert_eq!(be16(&pkt, 2) as usize, pkt.len());
        assert_eq!(be16(&pkt, 24) as usize, pkt.len() - 20);
        assert_eq!(checksum::checksum(&pkt[..20]), 0);
        // The payloads, back to back, cut by gso_size, are the datagrams' payloads.
        let cut: Vec<&[u8]> = pkt[28..].chunks(1400).collect();
        assert_eq!(cut.len(), 5);
        for (c, p) in cut.iter().zip(&payloads) {
            assert_eq!(c, &&p[..]);
        }
    }

    #[test]
    fn udp_datagrams_of_other_flows_or_sizes_or_with_merging_off_stay_apart() {
        let a = udp_datagram(&[1; 1000], 1);
        let mut other_port = udp_datagram(&[1; 1000], 2);
        other_port[20..22].copy_from_slice(&5002u16.to_be_bytes());
        let bigger = udp_datagram(&[1; 1001], 3);
        let mut c = Coalescer::new();
        assert!(c.push(&a));
        assert!(!c.push(&other_port), "another flow merged");
        assert!(!c.push(&bigger), "a larger datagram merged");
        let (hdr, pkt) = finish(c.flush().unwrap());
        assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_NONE);
        assert_eq!(pkt.len(), a.len());
        let mut off = Coalescer::new().merging_udp(false);
        assert!(off.push(&a));
        assert!(
            !off.push(&udp_datagram(&[1; 1000], 4)),
            "merged with merging off"
        );
    }

    #[test]
    fn datagrams_cover_the_read_exactly() {
        let v: Vec<_> = datagrams(10, 4).collect();
        assert_eq!(v, vec![0..4, 4..8, 8..10]);
        assert_eq!(datagrams(10, 0).collect::<Vec<_>>(), vec![0..10]);
        assert_eq!(datagrams(10, 99).collect::<Vec<_>>(), vec![0..10]);
        assert_eq!(datagrams(0, 5).count(), 0);
    }
}
