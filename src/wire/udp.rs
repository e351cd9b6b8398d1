//! UDP headers (RFC 768).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{be16, checksum, put16, Error, Result};

/// Length of a UDP header.
pub const HEADER_LEN: usize = 8;

/// How an emitter fills the UDP checksum field over IPv4. A parameter, not a global,
/// because every choice is right somewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumMode {
    /// The full checksum, as a kernel vxlan device with `udpcsum` (the default) puts on
    /// the wire.
    #[default]
    Full,
    /// Zero: RFC 768 "an all zero transmitted checksum value means that the transmitter
    /// generated no checksum", allowed for IPv4 only (and RFC 7348 says VXLAN over IPv4
    /// SHOULD send it). Never combine with UDP GSO: the kernel refuses it.
    Zero,
    /// Only the pseudo-header sum, un-complemented, as the kernel leaves a
    /// `CHECKSUM_PARTIAL` packet for a device to finish (what a veth peer with default
    /// offloads shows on the wire).
    Partial,
}

/// A view of a UDP datagram.
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

    /// Checks that the buffer holds the header and that `8 <= length <= buffer length`.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let l = self.len() as usize;
        if l < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if b.len() < l {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// Length field (header plus payload).
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 6)
    }

    /// The payload, as long as the length field says.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }

    /// True when the checksum is zero (none sent, IPv4) or verifies against the pseudo-header.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let d = &self.buffer.as_ref()[..self.len() as usize];
        let ph = checksum::pseudo_header_v4(src, dst, super::ipv4::PROTO_UDP, d.len() as u16);
        checksum::fold(checksum::sum(d, ph)) == 0xffff
    }
}

/// The fields of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl Repr {
    /// Writes the header into `datagram[..8]`, the length from `datagram.len()`, and the
    /// checksum per `mode` over the whole of `datagram` (whose payload must be in place).
    ///
    /// # Panics
    /// If `datagram` is shorter than 8 bytes (an emitter bug, never wire input).
    #[inline]
    pub fn emit(&self, datagram: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, mode: ChecksumMode) {
        let len = datagram.len() as u16;
        let ph = checksum::pseudo_header_v4(src, dst, super::ipv4::PROTO_UDP, len);
        self.emit_with(datagram, ph, mode);
    }

    /// [`emit`](Self::emit) over IPv6 (RFC 8200 8.1): the pseudo-header holds the IPv6
    /// addresses. A zero checksum is not allowed over IPv6; [`ChecksumMode::Zero`] still
    /// writes one, for a test to see the receiver refuse it.
    #[inline]
    pub fn emit_v6(&self, datagram: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr, mode: ChecksumMode) {
        let len = datagram.len() as u32;
        let ph = checksum::pseudo_header_v6(src, dst, super::ipv4::PROTO_UDP, len);
        self.emit_with(datagram, ph, mode);
    }

    /// Writes the header with the checksum per `mode`, `ph` being the pseudo-header's sum.
    #[inline]
    fn emit_with(&self, datagram: &mut [u8], ph: u64, mode: ChecksumMode) {
        let len = datagram.len() as u16;
        put16(datagram, 0, self.src_port);
        put16(datagram, 2, self.dst_port);
        put16(datagram, 4, len);
        put16(datagram, 6, 0);
        let c = match mode {
            ChecksumMode::Zero => 0,
            ChecksumMode::Partial => checksum::fold(ph),
            ChecksumMode::Full => {
                // RFC 768: "If the computed checksum is zero, it is transmitted as all ones".
                match !checksum::fold(checksum::sum(datagram, ph)) {
                    0 => 0xffff,
                    c => c,
                }
            }
        };
        put16(datagram, 6, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    #[test]
    fn full_checksum_agrees_with_etherparse() {
        for len in [0usize, 1, 7, 100, 1401] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let mut d = vec![0xa5u8; 8 + len];
            d[8..].copy_from_slice(&payload);
            Repr {
                src_port: 53331,
                dst_port: 8472,
            }
            .emit(&mut d, SRC, DST, ChecksumMode::Full);
            let h = etherparse::UdpHeader::with_ipv4_checksum(
                53331,
                8472,
                &etherparse::Ipv4Header::new(
                    0,
                    64,
                    etherparse::IpNumber::UDP,
                    SRC.octets(),
                    DST.octets(),
                )
                .unwrap(),
                &payload,
            )
            .unwrap();
            assert_eq!(&d[..8], &h.to_bytes());
            let p = Packet::new_checked(&d[..]).unwrap();
            assert!(p.verify_checksum(SRC, DST));
            assert_eq!(p.payload(), &payload[..]);
        }
    }

    #[test]
    fn zero_and_partial() {
        let mut d = vec![0u8; 12];
        Repr {
            src_port: 1,
            dst_port: 2,
        }
        .emit(&mut d, SRC, DST, ChecksumMode::Zero);
        assert_eq!(Packet::new_checked(&d[..]).unwrap().checksum(), 0);
        assert!(Packet::new_checked(&d[..])
            .unwrap()
            .verify_checksum(SRC, DST));
        Repr {
            src_port: 1,
            dst_port: 2,
        }
        .emit(&mut d, SRC, DST, ChecksumMode::Partial);
        let ph = checksum::fold(checksum::pseudo_header_v4(SRC, DST, 17, 12));
        assert_eq!(Packet::new_checked(&d[..]).unwrap().checksum(), ph);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut d = vec![0u8; 10];
        Repr {
            src_port: 1,
            dst_port: 2,
        }
        .emit(&mut d, SRC, DST, ChecksumMode::Full);
        for n in 0..d.len() {
            assert_eq!(Packet::new_checked(&d[..n]).unwrap_err(), Error::Truncated);
        }
        d[5] = 7;
        assert_eq!(Packet::new_checked(&d[..]).unwrap_err(), Error::Malformed);
    }
}
