//! ICMPv4 (RFC 792, RFC 1191): the views weft needs to tell errors from queries, and the
//! Destination Unreachable messages it originates.

use std::net::Ipv4Addr;

use super::{be16, checksum, ipv4, put16, Error, Result};

/// Length of the ICMP header (type, code, checksum, 4 bytes of rest-of-header).
pub const HEADER_LEN: usize = 8;
/// Echo reply.
pub const TYPE_ECHO_REPLY: u8 = 0;
/// Destination unreachable.
pub const TYPE_DEST_UNREACHABLE: u8 = 3;
/// Echo request.
pub const TYPE_ECHO_REQUEST: u8 = 8;
/// Destination unreachable code: net unreachable.
pub const CODE_NET_UNREACHABLE: u8 = 0;
/// Destination unreachable code: port unreachable.
pub const CODE_PORT_UNREACHABLE: u8 = 3;
/// Destination unreachable code: fragmentation needed and DF set (RFC 1191).
pub const CODE_FRAG_NEEDED: u8 = 4;
/// How many bytes of the offending datagram an error quotes at most: RFC 1812 4.3.2.3
/// ("as much of the original datagram as possible without the length of the ICMP datagram
/// exceeding 576 bytes"), which is what Linux does.
pub const MAX_ERROR_LEN: usize = 576;
/// The TOS Linux puts on the ICMP errors it originates: precedence "internetwork control".
pub const ERROR_TOS: u8 = 0xc0;

/// True for the ICMP types that are error messages (RFC 1122 3.2.2: never answer these
/// with an error). Unknown types are treated as errors, the safe side.
pub fn is_error_type(t: u8) -> bool {
    !matches!(t, 0 | 8 | 9 | 10 | 13 | 14 | 15 | 16 | 17 | 18)
}

/// A view of an ICMPv4 message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer that holds at least the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Packet { buffer })
    }

    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// Message code.
    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// The next-hop MTU of a fragmentation-needed message (RFC 1191).
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        be16(self.buffer.as_ref(), 6)
    }

    /// The bytes after the header (for errors: the quoted datagram).
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// True when the checksum over the whole message is valid.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref(), 0)) == 0xffff
    }
}

/// A Destination Unreachable message from `src` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestUnreachable {
    /// Source of the error (the router that refused the datagram).
    pub src: Ipv4Addr,
    /// Destination: the offending datagram's source.
    pub dst: Ipv4Addr,
    /// The code (net unreachable, frag needed, ...).
    pub code: u8,
    /// Next-hop MTU for [`CODE_FRAG_NEEDED`], otherwise 0.
    pub next_hop_mtu: u16,
    /// IP identification of the error datagram.
    pub ident: u16,
}

impl DestUnreachable {
    /// Offset of the quoted datagram in an emitted message: outer IPv4 plus ICMP header.
    pub const QUOTE_OFFSET: usize = ipv4::HEADER_LEN + HEADER_LEN;

    /// How many bytes of a `len`-byte offending datagram to quote.
    pub fn quote_len(len: usize) -> usize {
        len.min(MAX_ERROR_LEN - Self::QUOTE_OFFSET)
    }

    /// Emits the IPv4 and ICMP headers into `msg[..28]`; `msg[28..]` must already hold the
    /// quoted datagram (so it can be built in place over the offending packet, without a
    /// copy). IP header as Linux's `icmp_send`: TOS 0xc0, DF clear, TTL 64.
    ///
    /// # Panics
    /// If `msg` is shorter than 28 bytes (an emitter bug, never wire input).
    pub fn emit(&self, msg: &mut [u8]) {
        let icmp_len = msg.len() - ipv4::HEADER_LEN;
        ipv4::Repr {
            src: self.src,
            dst: self.dst,
            protocol: ipv4::PROTO_ICMP,
            payload_len: icmp_len,
            ttl: 64,
            tos: ERROR_TOS,
            ident: self.ident,
            dont_frag: false,
        }
        .emit(msg);
        let icmp = &mut msg[ipv4::HEADER_LEN..];
        icmp[0] = TYPE_DEST_UNREACHABLE;
        icmp[1] = self.code;
        put16(icmp, 2, 0);
        put16(icmp, 4, 0);
        put16(icmp, 6, self.next_hop_mtu);
        let c = checksum::checksum(icmp);
        put16(icmp, 2, c);
    }
}

/// An Echo Request (ping) header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoRequest {
    /// Identifier.
    pub ident: u16,
    /// Sequence number.
    pub seq: u16,
}

impl EchoRequest {
    /// Emits the ICMP header into `msg[..8]` and the checksum over the whole of `msg`,
    /// whose `msg[8..]` must already hold the echo data.
    ///
    /// # Panics
    /// If `msg` is shorter than 8 bytes (an emitter bug, never wire input).
    pub fn emit(&self, msg: &mut [u8]) {
        msg[0] = TYPE_ECHO_REQUEST;
        msg[1] = 0;
        put16(msg, 2, 0);
        put16(msg, 4, self.ident);
        put16(msg, 6, self.seq);
        let c = checksum::checksum(msg);
        put16(msg, 2, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_matches_etherparse() {
        let data = [7u8; 13];
        let mut ours = vec![0u8; HEADER_LEN + data.len()];
        ours[HEADER_LEN..].copy_from_slice(&data);
        EchoRequest {
            ident: 0x1234,
            seq: 9,
        }
        .emit(&mut ours);
        let mut theirs = Vec::new();
        etherparse::Icmpv4Header::with_checksum(
            etherparse::Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 0x1234, seq: 9 }),
            &data,
        )
        .write(&mut theirs)
        .unwrap();
        theirs.extend_from_slice(&data);
        assert_eq!(ours, theirs);
        let v = Packet::new_checked(&ours[..]).unwrap();
        assert_eq!(v.msg_type(), TYPE_ECHO_REQUEST);
        assert!(v.verify_checksum());
    }

    #[test]
    fn error_types() {
        assert!(!is_error_type(TYPE_ECHO_REQUEST));
        assert!(!is_error_type(TYPE_ECHO_REPLY));
        assert!(is_error_type(TYPE_DEST_UNREACHABLE));
        assert!(is_error_type(11));
        assert!(is_error_type(200));
    }

    #[test]
    fn frag_needed_agrees_with_etherparse() {
        let quoted: Vec<u8> = (0..40u8).collect();
        let mut msg = vec![0u8; 28 + quoted.len()];
        msg[28..].copy_from_slice(&quoted);
        DestUnreachable {
            src: Ipv4Addr::new(10, 244, 1, 0),
            dst: Ipv4Addr::new(10, 244, 1, 5),
            code: CODE_FRAG_NEEDED,
            next_hop_mtu: 1450,
            ident: 7,
        }
        .emit(&mut msg);
        let s = etherparse::SlicedPacket::from_ip(&msg).unwrap();
        match s.transport.unwrap() {
            etherparse::TransportSlice::Icmpv4(i) => {
                use etherparse::icmpv4::DestUnreachableHeader;
                assert_eq!(
                    i.icmp_type(),
                    etherparse::Icmpv4Type::DestinationUnreachable(
                        DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1450 }
                    )
                );
                assert_eq!(i.payload(), &quoted[..]);
                let h = i.header();
                assert_eq!(h.checksum, h.icmp_type.calc_checksum(i.payload()));
            }
            other => panic!("not ICMP: {other:?}"),
        }
        let p = Packet::new_checked(&msg[20..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.next_hop_mtu(), 1450);
        assert!(ipv4::Packet::new_checked(&msg[..])
            .unwrap()
            .verify_checksum());
    }
}
