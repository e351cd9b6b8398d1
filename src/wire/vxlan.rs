//! VXLAN headers (RFC 7348 section 5).
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//! RFC 7348: the I flag "MUST be set to 1 for a valid VXLAN Network ID (VNI)"; the other
//! flag bits and the reserved fields "MUST be set to zero on transmission and ignored on
//! receipt".

use super::{Error, Result};

/// Length of a VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid.
pub const FLAG_I: u8 = 0x08;
/// The UDP port the Linux kernel (and so flannel, which leaves `Port` at 0) uses for VXLAN.
pub const PORT_LINUX: u16 = 8472;
/// The IANA-assigned VXLAN port (RFC 7348).
pub const PORT_IANA: u16 = 4789;
/// The largest VNI: 24 bits.
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// A view of a VXLAN header and its payload (the inner Ethernet frame).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer that holds at least a whole header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// True when the I flag is set (reserved bits are ignored, per RFC 7348).
    #[inline]
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VNI.
    #[inline]
    pub fn vni(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([0, b[4], b[5], b[6]])
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// The fields of a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The VNI (24 bits; higher bits are ignored).
    pub vni: u32,
}

impl Repr {
    /// Writes the header into `buf[..8]`: I flag, VNI, every reserved bit zero.
    ///
    /// # Panics
    /// If `buf` is shorter than 8 bytes (an emitter bug, never wire input).
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let v = (self.vni & VNI_MAX).to_be_bytes();
        buf[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_parse() {
        let mut b = [0xa5u8; 9];
        Repr { vni: 0x123456 }.emit(&mut b);
        assert_eq!(&b[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.vni_valid());
        assert_eq!(p.vni(), 0x123456);
        assert_eq!(p.payload(), &[0xa5]);
        // Reserved bits set by a sender are ignored on receipt.
        let odd = [0xffu8, 0xff, 0xff, 0xff, 0, 0, 1, 0xff];
        let p = Packet::new_checked(&odd[..]).unwrap();
        assert!(p.vni_valid());
        assert_eq!(p.vni(), 1);
        for n in 0..8 {
            assert_eq!(Packet::new_checked(&b[..n]).unwrap_err(), Error::Truncated);
        }
    }

    #[test]
    fn agrees_with_etherparse() {
        let mut b = [0u8; 8];
        Repr { vni: 1 }.emit(&mut b);
        // etherparse has no VXLAN type; check against the bytes the kernel sends (VNI 1).
        assert_eq!(b, [0x08, 0, 0, 0, 0, 0, 1, 0]);
    }
}
