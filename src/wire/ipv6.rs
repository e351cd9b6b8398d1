//! IPv6 headers (RFC 8200): the fixed header of inner packets (IPv6 pods) and of the outer
//! datagrams over an IPv6 underlay. Extension headers are not walked: a packet whose next
//! header is one is forwarded as it is, and only its fixed header is read.

use std::net::Ipv6Addr;

use super::{be16, checksum, put16, Error, Result};

/// Next header: TCP.
pub const NEXT_TCP: u8 = 6;
/// Next header: UDP.
pub const NEXT_UDP: u8 = 17;
/// Next header: ICMPv6.
pub const NEXT_ICMPV6: u8 = 58;
/// The minimum link MTU every IPv6 link carries (RFC 8200 5).
pub const MIN_MTU: usize = 1280;

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

/// A view of an IPv6 packet.
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

    /// Checks the version and that the buffer holds the fixed header and the payload.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(Error::Malformed);
        }
        if b.len() < HEADER_LEN + self.payload_len() as usize {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Traffic class (DSCP and ECN), which straddles the first two bytes.
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }

    /// The fixed header and payload (any bytes past the payload length excluded).
    #[inline]
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + self.payload_len() as usize]
    }

    /// Everything after the fixed header, up to the payload length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.payload_len() as usize]
    }

    /// Payload length (everything after the fixed header).
    #[inline]
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    /// Next header (the first extension header or the upper-layer protocol).
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }

    /// Hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }

    /// Source address.
    #[inline]
    pub fn src(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[8..24]);
        Ipv6Addr::from(a)
    }

    /// Destination address.
    #[inline]
    pub fn dst(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[24..40]);
        Ipv6Addr::from(a)
    }
}

/// Sets the traffic class's ECN bits of the IPv6 header at the start of `pkt` (at least 2
/// bytes) to `ecn` (IPv6 has no header checksum to fix).
#[inline]
pub fn set_ecn(pkt: &mut [u8], ecn: u8) {
    pkt[1] = (pkt[1] & !0x30) | ((ecn & 0x03) << 4);
}

/// True for a UDP/IPv6 datagram (UDP right after the fixed header) whose checksum is zero,
/// which IPv6 forbids (RFC 8200 section 8.1: receivers discard it). A checksum a sender
/// left partial is never zero: it holds the pseudo-header's sum.
pub fn zero_udp_checksum(pkt: &[u8]) -> bool {
    pkt.len() >= HEADER_LEN + 8
        && pkt[6] == NEXT_UDP
        && pkt[HEADER_LEN + 6..HEADER_LEN + 8] == [0, 0]
}

/// Recomputes the TCP or UDP checksum of the IPv6 packet `pkt` (next header TCP or UDP,
/// no extension headers) over its whole payload, finishing a checksum a sender left
/// partial. Returns false, changing nothing, otherwise. A UDP checksum that computes to
/// zero is written as 0xffff (zero would mean none, which IPv6 forbids); a datagram that
/// arrives with none is dropped before it gets here ([`zero_udp_checksum`]).
pub fn fill_transport_checksum(pkt: &mut [u8]) -> bool {
    let Ok(ip) = Packet::new_checked(&*pkt) else {
        return false;
    };
    let (src, dst, next) = (ip.src(), ip.dst(), ip.next_header());
    let end = HEADER_LEN + ip.payload_len() as usize;
    let l4 = &mut pkt[HEADER_LEN..end];
    let at = match next {
        NEXT_TCP if l4.len() >= 20 => 16,
        NEXT_UDP if l4.len() >= 8 => 6,
        _ => return false,
    };
    put16(l4, at, 0);
    let ph = checksum::pseudo_header_v6(src, dst, next, l4.len() as u32);
    let mut c = !checksum::fold(checksum::sum(l4, ph));
    if next == NEXT_UDP && c == 0 {
        c = 0xffff;
    }
    put16(l4, at, c);
    true
}

/// The fields of an IPv6 fixed header that weft emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Next header.
    pub next_header: u8,
    /// Payload length.
    pub payload_len: usize,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class (DSCP and ECN).
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Repr {
    /// Writes the fixed header into `buf[..40]`.
    ///
    /// # Panics
    /// If `buf` is shorter than 40 bytes (an emitter bug, never wire input).
    pub fn emit(&self, buf: &mut [u8]) {
        let word = 6u32 << 28 | (self.traffic_class as u32) << 20 | (self.flow_label & 0xf_ffff);
        buf[..4].copy_from_slice(&word.to_be_bytes());
        put16(buf, 4, self.payload_len as u16);
        buf[6] = self.next_header;
        buf[7] = self.hop_limit;
        buf[8..24].copy_from_slice(&self.src.octets());
        buf[24..40].copy_from_slice(&self.dst.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etherparse_header() {
        let h = etherparse::Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: 4,
            next_header: etherparse::IpNumber::UDP,
            hop_limit: 9,
            source: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            destination: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        };
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(&[1, 2, 3, 4]);
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.payload_len(), 4);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 9);
        assert_eq!(p.src(), "fd00::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst(), "fd00::2".parse::<Ipv6Addr>().unwrap());
        for n in 0..v.len() {
            assert_eq!(Packet::new_checked(&v[..n]).unwrap_err(), Error::Truncated);
        }
        v[0] = 0x45;
        assert_eq!(Packet::new_checked(&v[..]).unwrap_err(), Error::Malformed);
    }

    #[test]
    fn emits_what_etherparse_reads_and_fills_a_udp_checksum_it_verifies() {
        let (src, dst) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let mut v = vec![0u8; HEADER_LEN + 12];
        Repr {
            src,
            dst,
            next_header: NEXT_UDP,
            payload_len: 12,
            hop_limit: 64,
            traffic_class: 0xb9,
            flow_label: 0x12345,
        }
        .emit(&mut v);
        v[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&[0x30, 0x39, 0x27, 0x0f, 0, 12, 0, 0]);
        v[HEADER_LEN + 8..].copy_from_slice(b"weft");
        let (h, _) = etherparse::Ipv6Header::from_slice(&v).unwrap();
        assert_eq!(h.traffic_class, 0xb9);
        assert_eq!(u32::from(h.flow_label), 0x12345);
        assert_eq!(h.payload_length, 12);
        assert_eq!(Packet::new_checked(&v[..]).unwrap().traffic_class(), 0xb9);
        assert!(fill_transport_checksum(&mut v));
        let udp = etherparse::UdpHeader::from_slice(&v[HEADER_LEN..])
            .unwrap()
            .0;
        let want = udp.calc_checksum_ipv6(&h, b"weft").unwrap();
        assert_eq!(udp.checksum, want);
        set_ecn(&mut v, 3);
        assert_eq!(Packet::new_checked(&v[..]).unwrap().traffic_class(), 0xbb);
    }
}
