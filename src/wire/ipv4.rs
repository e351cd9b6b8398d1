//! IPv4 headers (RFC 791).

use std::net::Ipv4Addr;

use super::{be16, checksum, put16, Error, Result};

mod field {
    pub(super) const VER_IHL: usize = 0;
    pub(super) const TOS: usize = 1;
    pub(super) const TOTAL_LEN: usize = 2;
    pub(super) const IDENT: usize = 4;
    pub(super) const FLAGS_FRAG: usize = 6;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: usize = 10;
    pub(super) const SRC: usize = 12;
    pub(super) const DST: usize = 16;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds the header, that the version is 4, that the header
    /// length is at least 20 bytes, and that `header_len <= total_len <= buffer length`
    /// (trailing bytes past `total_len`, such as Ethernet padding, are allowed).
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(Error::Malformed);
        }
        let hl = self.header_len();
        let tl = self.total_len() as usize;
        if hl < HEADER_LEN || tl < hl {
            return Err(Error::Malformed);
        }
        if b.len() < hl || b.len() < tl {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4 after a successful check).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes.
    #[inline]
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }

    /// Type of service (DSCP and ECN).
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// Total length in bytes (header plus payload).
    #[inline]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::TOTAL_LEN)
    }

    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't-fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_DF != 0
    }

    /// More-fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_MF != 0
    }

    /// Fragment offset in 8-byte units.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FRAG_OFFSET_MASK
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }

    /// Destination address.
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }

    /// True when the header checksum is valid.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(&self.buffer.as_ref()[..self.header_len()], 0)) == 0xffff
    }

    /// The whole packet: `total_len` bytes, without trailing padding.
    #[inline]
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total_len() as usize]
    }

    /// The payload: from the end of the header to `total_len`.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the time to live (the checksum is not updated).
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the identification (the checksum is not updated).
    #[inline]
    pub fn set_ident(&mut self, id: u16) {
        put16(self.buffer.as_mut(), field::IDENT, id);
    }

    /// Recomputes the header checksum.
    #[inline]
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buffer.as_mut();
        put16(b, field::CHECKSUM, 0);
        let c = checksum::checksum(&b[..hl]);
        put16(b, field::CHECKSUM, c);
    }

    /// The mutable payload.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), self.total_len() as usize);
        &mut self.buffer.as_mut()[hl..tl]
    }
}

/// Recomputes the TCP or UDP checksum of the IPv4 packet `pkt` over its whole payload,
/// finishing a checksum a sender left partial (`CHECKSUM_PARTIAL`, as a kernel peer on a
/// veth does). Returns false, changing nothing, for other protocols, fragments, or a
/// malformed packet. A UDP checksum of zero (none sent) stays zero.
pub fn fill_transport_checksum(pkt: &mut [u8]) -> bool {
    let Ok(ip) = Packet::new_checked(&*pkt) else {
        return false;
    };
    if ip.more_frags() || ip.frag_offset() != 0 {
        return false;
    }
    let (src, dst, proto) = (ip.src(), ip.dst(), ip.protocol());
    let (hl, tl) = (ip.header_len(), ip.total_len() as usize);
    let l4 = &mut pkt[hl..tl];
    let at = match proto {
        PROTO_TCP if l4.len() >= 20 => 16,
        PROTO_UDP if l4.len() >= 8 => {
            if be16(l4, 6) == 0 {
                return true;
            }
            6
        }
        _ => return false,
    };
    put16(l4, at, 0);
    let ph = checksum::pseudo_header_v4(src, dst, proto, l4.len() as u16);
    let mut c = !checksum::fold(checksum::sum(l4, ph));
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    put16(l4, at, c);
    true
}

/// The fields of an option-less IPv4 header that weft emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Payload protocol.
    pub protocol: u8,
    /// Payload length (the total length is this plus 20).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Type of service byte.
    pub tos: u8,
    /// Identification.
    pub ident: u16,
    /// Don't-fragment flag.
    pub dont_frag: bool,
}

impl Repr {
    /// Header length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header, checksum included, into the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than 20 bytes (an emitter bug, never wire input).
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let h = &mut buf[..HEADER_LEN];
        h[field::VER_IHL] = 0x45;
        h[field::TOS] = self.tos;
        put16(h, field::TOTAL_LEN, (HEADER_LEN + self.payload_len) as u16);
        put16(h, field::IDENT, self.ident);
        put16(
            h,
            field::FLAGS_FRAG,
            if self.dont_frag { FLAG_DF } else { 0 },
        );
        h[field::TTL] = self.ttl;
        h[field::PROTOCOL] = self.protocol;
        put16(h, field::CHECKSUM, 0);
        h[field::SRC..field::SRC + 4].copy_from_slice(&self.src.octets());
        h[field::DST..field::DST + 4].copy_from_slice(&self.dst.octets());
        let c = checksum::checksum(h);
        put16(h, field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The inner ICMP echo header of the first kernel vector: 10.244.1.0 -> 10.244.2.0,
    // total 84, id 0x4b72, DF, TTL 64.
    fn sample() -> Vec<u8> {
        let mut v = vec![0u8; 28];
        Repr {
            src: Ipv4Addr::new(10, 244, 1, 0),
            dst: Ipv4Addr::new(10, 244, 2, 0),
            protocol: PROTO_ICMP,
            payload_len: 8,
            ttl: 64,
            tos: 0,
            ident: 0x1234,
            dont_frag: true,
        }
        .emit(&mut v);
        v
    }

    #[test]
    fn emit_agrees_with_etherparse() {
        let v = sample();
        let (h, _) = etherparse::Ipv4Header::from_slice(&v).unwrap();
        assert_eq!(h.source, [10, 244, 1, 0]);
        assert_eq!(h.destination, [10, 244, 2, 0]);
        assert_eq!(h.total_len, 28);
        assert!(h.dont_fragment);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        let p = Packet::new_checked(&v[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.ident(), 0x1234);
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn rejects_bad_headers() {
        let v = sample();
        for n in 0..v.len() {
            assert!(Packet::new_checked(&v[..n]).is_err(), "len {n}");
        }
        let mut bad = v.clone();
        bad[0] = 0x65; // version 6
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        let mut bad = v.clone();
        bad[0] = 0x44; // IHL 4
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        let mut bad = v.clone();
        bad[3] = 19; // total length below header
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        let mut bad = v.clone();
        bad[0] = 0x4f; // IHL 60 > buffer
        assert!(Packet::new_checked(&bad[..]).is_err());
        let mut bad = v;
        bad[10] ^= 1;
        assert!(!Packet::new_checked(&bad[..]).unwrap().verify_checksum());
    }

    #[test]
    fn trailing_padding_is_not_payload() {
        let mut v = sample();
        v.extend_from_slice(&[0; 6]);
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.packet().len(), 28);
    }
}

#[cfg(test)]
mod transport_checksum_tests {
    use super::*;

    #[test]
    fn fills_tcp_and_udp_like_etherparse() {
        let tcp = etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64)
            .tcp(1000, 80, 7, 512);
        let udp =
            etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64).udp(53, 9999);
        let mut t = Vec::new();
        tcp.write(&mut t, b"hello, tcp").unwrap();
        let mut u = Vec::new();
        udp.write(&mut u, b"odd").unwrap();
        for (pkt, at) in [(t, 20 + 16), (u, 20 + 6)] {
            let mut broken = pkt.clone();
            broken[at] ^= 0x5a;
            assert!(fill_transport_checksum(&mut broken));
            assert_eq!(broken, pkt);
        }
        let mut icmp = Vec::new();
        etherparse::PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 1)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"x")
            .unwrap();
        assert!(!fill_transport_checksum(&mut icmp));
        assert!(!fill_transport_checksum(&mut [0x45, 0, 0]));
    }
}
