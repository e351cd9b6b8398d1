//! ICMPv6 (RFC 4443): the errors weft originates for IPv6 pods (Packet Too Big and
//! Destination Unreachable), built in place in front of the offending packet, and the test
//! that says whether a packet may be answered with one.

use std::net::Ipv6Addr;

use super::{checksum, ipv6, put16};

/// Length of the ICMPv6 header (type, code, checksum, 4 bytes of rest-of-header).
pub const HEADER_LEN: usize = 8;
/// Destination Unreachable.
pub const TYPE_DEST_UNREACHABLE: u8 = 1;
/// Packet Too Big.
pub const TYPE_PACKET_TOO_BIG: u8 = 2;
/// Destination Unreachable code: no route to destination.
pub const CODE_NO_ROUTE: u8 = 0;
/// The hop limit Linux puts on the ICMPv6 errors it originates (the default hop limit).
pub const HOP_LIMIT: u8 = 64;

/// Types below 128 are errors (RFC 4443 2.1): never answered with an error.
pub fn is_error_type(t: u8) -> bool {
    t < 128
}

/// An ICMPv6 error from `src` to `dst`: Packet Too Big when `mtu` is set, otherwise
/// Destination Unreachable with `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// Source of the error (the offending packet's destination: see `encap`).
    pub src: Ipv6Addr,
    /// Destination: the offending packet's source.
    pub dst: Ipv6Addr,
    /// The MTU for Packet Too Big; `None` for Destination Unreachable.
    pub mtu: Option<u32>,
    /// The Destination Unreachable code (ignored for Packet Too Big).
    pub code: u8,
}

impl Error {
    /// Offset of the quoted packet in an emitted message: IPv6 plus ICMPv6 header.
    pub const QUOTE_OFFSET: usize = ipv6::HEADER_LEN + HEADER_LEN;

    /// How many bytes of a `len`-byte offending packet to quote: as much as fits without
    /// the error exceeding the minimum IPv6 MTU (RFC 4443 2.4 c).
    pub fn quote_len(len: usize) -> usize {
        len.min(ipv6::MIN_MTU - Self::QUOTE_OFFSET)
    }

    /// Emits the IPv6 and ICMPv6 headers into `msg[..48]` and the checksum over the whole;
    /// `msg[48..]` must already hold the quoted packet (it is built in place over the
    /// offending packet's headroom, without a copy).
    ///
    /// # Panics
    /// If `msg` is shorter than 48 bytes (an emitter bug, never wire input).
    pub fn emit(&self, msg: &mut [u8]) {
        let icmp_len = msg.len() - ipv6::HEADER_LEN;
        ipv6::Repr {
            src: self.src,
            dst: self.dst,
            next_header: ipv6::NEXT_ICMPV6,
            payload_len: icmp_len,
            hop_limit: HOP_LIMIT,
            traffic_class: 0,
            flow_label: 0,
        }
        .emit(msg);
        let icmp = &mut msg[ipv6::HEADER_LEN..];
        let (t, code, rest) = match self.mtu {
            Some(mtu) => (TYPE_PACKET_TOO_BIG, 0, mtu),
            None => (TYPE_DEST_UNREACHABLE, self.code, 0),
        };
        icmp[0] = t;
        icmp[1] = code;
        put16(icmp, 2, 0);
        icmp[4..8].copy_from_slice(&rest.to_be_bytes());
        let ph = checksum::pseudo_header_v6(self.src, self.dst, ipv6::NEXT_ICMPV6, icmp_len as u32);
        let c = !checksum::fold(checksum::sum(icmp, ph));
        put16(icmp, 2, c);
    }
}

/// Whether an ICMPv6 error may be sent about `pkt` (RFC 4443 2.4 e): not about an ICMPv6
/// error, nor a packet from an address that is not a unicast host, nor one to a multicast
/// address, nor a fragment other than the first. The extension headers are walked as the
/// kernel's `ipv6_skip_exthdr` walks them (hop-by-hop, routing, destination options,
/// fragment), at most [`MAX_EXT_HEADERS`]; a chain that runs off the packet or goes on
/// longer is not answered.
pub fn may_answer(pkt: &[u8]) -> bool {
    let Ok(ip) = ipv6::Packet::new_checked(pkt) else {
        return false;
    };
    let (src, dst) = (ip.src(), ip.dst());
    if src.is_unspecified() || src.is_multicast() || src.is_loopback() || dst.is_multicast() {
        return false;
    }
    let (l4, mut next, mut at) = (ip.payload(), ip.next_header(), 0usize);
    for _ in 0..=MAX_EXT_HEADERS {
        let Some(h) = l4.get(at..) else {
            return false;
        };
        match next {
            ipv6::NEXT_ICMPV6 => return h.first().is_some_and(|&t| !is_error_type(t)),
            // Hop-by-hop, routing, destination options: length in 8-byte units, less one.
            0 | 43 | 60 if h.len() >= 2 => (next, at) = (h[0], at + (h[1] as usize + 1) * 8),
            // The fragment header: offset in the upper 13 bits of bytes 2-3.
            44 if h.len() >= 8 => {
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    return false;
                }
                (next, at) = (h[0], at + 8);
            }
            0 | 43 | 60 | 44 => return false,
            _ => return true,
        }
    }
    false
}

/// How many extension headers [`may_answer`] walks before giving up on a packet.
pub const MAX_EXT_HEADERS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; ipv6::HEADER_LEN + payload.len()];
        ipv6::Repr {
            src: "fd00:1::5".parse().unwrap(),
            dst: "fd00:2::7".parse().unwrap(),
            next_header: next,
            payload_len: payload.len(),
            hop_limit: 63,
            traffic_class: 0,
            flow_label: 0,
        }
        .emit(&mut v);
        v[ipv6::HEADER_LEN..].copy_from_slice(payload);
        v
    }

    #[test]
    fn packet_too_big_is_what_etherparse_reads_with_a_valid_checksum() {
        let offender = packet(ipv6::NEXT_UDP, &[0x55; 1400]);
        let q = Error::quote_len(offender.len());
        assert_eq!(q, 1280 - 48);
        let mut msg = vec![0u8; Error::QUOTE_OFFSET + q];
        msg[Error::QUOTE_OFFSET..].copy_from_slice(&offender[..q]);
        let (src, dst) = ("fd00:2::7".parse().unwrap(), "fd00:1::5".parse().unwrap());
        Error {
            src,
            dst,
            mtu: Some(1430),
            code: 0,
        }
        .emit(&mut msg);
        assert_eq!(msg.len(), 1280);
        let (ip, rest) = etherparse::Ipv6Header::from_slice(&msg).unwrap();
        assert_eq!(ip.payload_length as usize, 1280 - 40);
        let (icmp, _) = etherparse::Icmpv6Header::from_slice(rest).unwrap();
        assert_eq!(
            icmp.icmp_type,
            etherparse::Icmpv6Type::PacketTooBig { mtu: 1430 }
        );
        let want = icmp
            .icmp_type
            .calc_checksum(ip.source, ip.destination, &rest[HEADER_LEN..])
            .unwrap();
        assert_eq!(icmp.checksum, want);
    }

    #[test]
    fn errors_multicast_and_later_fragments_are_not_answered() {
        assert!(may_answer(&packet(ipv6::NEXT_UDP, &[0; 8])));
        assert!(may_answer(&packet(ipv6::NEXT_ICMPV6, &[128, 0, 0, 0])));
        assert!(!may_answer(&packet(ipv6::NEXT_ICMPV6, &[2, 0, 0, 0])));
        assert!(!may_answer(&packet(ipv6::NEXT_ICMPV6, &[])));
        assert!(may_answer(&packet(44, &[17, 0, 0, 1, 0, 0, 0, 9])));
        assert!(!may_answer(&packet(44, &[17, 0, 0, 0x09, 0, 0, 0, 9])));
        let mut m = packet(ipv6::NEXT_UDP, &[0; 8]);
        m[24] = 0xff;
        assert!(!may_answer(&m));
        let mut u = packet(ipv6::NEXT_UDP, &[0; 8]);
        u[8..24].fill(0);
        assert!(!may_answer(&u));
        assert!(!may_answer(&u[..20]));
    }

    /// RFC 4443 2.4 (e.1) behind extension headers, as the kernel's `is_ineligible` walks
    /// them: an ICMPv6 error after hop-by-hop, routing, destination options or a first
    /// fragment is still an error, and is not answered.
    #[test]
    fn errors_behind_extension_headers_are_not_answered() {
        let ext = |next: u8| [next, 0, 1, 4, 0, 0, 0, 0]; // 8 bytes, a PadN option
        for first in [0u8, 43, 60] {
            let error = [&ext(ipv6::NEXT_ICMPV6)[..], &[1, 4, 0, 0]].concat();
            assert!(!may_answer(&packet(first, &error)), "{first}");
            let echo = [&ext(ipv6::NEXT_ICMPV6)[..], &[128, 0, 0, 0]].concat();
            assert!(may_answer(&packet(first, &echo)), "{first}");
        }
        // A first fragment holding an ICMPv6 error; hop-by-hop then destination options
        // then UDP.
        let frag = [ipv6::NEXT_ICMPV6, 0, 0, 1, 0, 0, 0, 9, 3, 0, 0, 0];
        assert!(!may_answer(&packet(44, &frag)));
        let two = [&ext(60)[..], &ext(ipv6::NEXT_UDP), &[0; 8]].concat();
        assert!(may_answer(&packet(0, &two)));
        // A header whose length runs past the packet, a chain too long to walk.
        assert!(!may_answer(&packet(60, &[ipv6::NEXT_UDP, 3, 0, 0])));
        let chain = |n: usize| -> Vec<u8> {
            let mut v: Vec<u8> = (1..n).flat_map(|_| ext(60)).collect();
            v.extend(ext(ipv6::NEXT_UDP));
            v.extend([0; 8]);
            v
        };
        assert!(may_answer(&packet(60, &chain(MAX_EXT_HEADERS))));
        assert!(!may_answer(&packet(60, &chain(MAX_EXT_HEADERS + 1))));
    }
}
