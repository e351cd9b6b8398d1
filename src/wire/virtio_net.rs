//! The virtio-net header (`struct virtio_net_hdr`, virtio 1.x section 5.1.6; Linux
//! `include/uapi/linux/virtio_net.h`) that a TUN opened with `IFF_VNET_HDR` puts before
//! every packet it reads and expects before every packet written to it: whether the L4
//! checksum is partial and where it lies, and how to segment a GSO super-packet.
//!
//! ```text
//!  0       1       2       4       6       8       10
//! | flags |gso_typ|hdr_len|gso_sz |cs_strt|cs_off |
//! ```
//! The 16-bit fields are little-endian: the layout of a TUN on x86-64 and arm64 (legacy
//! virtio is native-endian; a big-endian host would need `TUNSETVNETLE`). This is the
//! 10-byte header without `num_buffers`, which a TUN only adds with `TUNSETVNETHDRSZ`.

use super::{Error, Result};

/// Length of `struct virtio_net_hdr` (without `num_buffers`).
pub const LEN: usize = 10;

/// Flag: the L4 checksum is partial; the device finishes the sum over `csum_start..` and
/// stores it at `csum_start + csum_offset`.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Flag (received packets only): the checksum has been validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// GSO type: not a GSO packet.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// GSO type: TCP over IPv4 (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// GSO type: UDP fragmentation offload (UFO, deprecated).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// GSO type: TCP over IPv6 (TSO6).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// GSO type: UDP segmentation (USO).
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// GSO type bit, ORed into the others: the TCP segments carry ECN CWR.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

mod field {
    pub(super) const FLAGS: usize = 0;
    pub(super) const GSO_TYPE: usize = 1;
    pub(super) const HDR_LEN: usize = 2;
    pub(super) const GSO_SIZE: usize = 4;
    pub(super) const CSUM_START: usize = 6;
    pub(super) const CSUM_OFFSET: usize = 8;
}

#[inline]
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
fn put_le16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// A view of a virtio-net header and the packet after it.
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

    /// Checks that the buffer holds the 10-byte header. The fields are not validated: they
    /// are offsets and sizes into the packet that only its consumer can judge.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// `VIRTIO_NET_HDR_F_*` flags.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// True when [`VIRTIO_NET_HDR_F_NEEDS_CSUM`] is set.
    #[inline]
    pub fn needs_csum(&self) -> bool {
        self.flags() & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// `VIRTIO_NET_HDR_GSO_*` type, [`VIRTIO_NET_HDR_GSO_ECN`] included.
    #[inline]
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// Length of the headers before the payload (a hint: Linux recomputes it).
    #[inline]
    pub fn hdr_len(&self) -> u16 {
        le16(self.buffer.as_ref(), field::HDR_LEN)
    }

    /// Payload bytes per segment (the MSS) of a GSO packet.
    #[inline]
    pub fn gso_size(&self) -> u16 {
        le16(self.buffer.as_ref(), field::GSO_SIZE)
    }

    /// Where the checksummed region starts, from the start of the packet.
    #[inline]
    pub fn csum_start(&self) -> u16 {
        le16(self.buffer.as_ref(), field::CSUM_START)
    }

    /// Offset of the checksum field from `csum_start`.
    #[inline]
    pub fn csum_offset(&self) -> u16 {
        le16(self.buffer.as_ref(), field::CSUM_OFFSET)
    }

    /// The packet after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the GSO type.
    #[inline]
    pub fn set_gso_type(&mut self, gso_type: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = gso_type;
    }

    /// Sets the header length.
    #[inline]
    pub fn set_hdr_len(&mut self, v: u16) {
        put_le16(self.buffer.as_mut(), field::HDR_LEN, v);
    }

    /// Sets the segment size.
    #[inline]
    pub fn set_gso_size(&mut self, v: u16) {
        put_le16(self.buffer.as_mut(), field::GSO_SIZE, v);
    }

    /// Sets where the checksummed region starts.
    #[inline]
    pub fn set_csum_start(&mut self, v: u16) {
        put_le16(self.buffer.as_mut(), field::CSUM_START, v);
    }

    /// Sets the offset of the checksum field from `csum_start`.
    #[inline]
    pub fn set_csum_offset(&mut self, v: u16) {
        put_le16(self.buffer.as_mut(), field::CSUM_OFFSET, v);
    }

    /// The mutable packet after the header.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[LEN..]
    }
}

/// The fields of a virtio-net header. The default is all zero: no checksum offload, no GSO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers before the payload.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed region starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl Repr {
    /// The fields of a checked header.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Repr {
        Repr {
            flags: p.flags(),
            gso_type: p.gso_type(),
            hdr_len: p.hdr_len(),
            gso_size: p.gso_size(),
            csum_start: p.csum_start(),
            csum_offset: p.csum_offset(),
        }
    }

    /// Header length.
    pub const fn buffer_len(&self) -> usize {
        LEN
    }

    /// Writes the header into `buf[..10]`.
    ///
    /// # Panics
    /// If `buf` is shorter than 10 bytes (an emitter bug, never wire input).
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let mut p = Packet::new_unchecked(&mut buf[..LEN]);
        p.set_flags(self.flags);
        p.set_gso_type(self.gso_type);
        p.set_hdr_len(self.hdr_len);
        p.set_gso_size(self.gso_size);
        p.set_csum_start(self.csum_start);
        p.set_csum_offset(self.csum_offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Repr {
            flags: 1,
            gso_type: 1,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; 10];
        h.emit(&mut b);
        assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()), h);
        assert_eq!(Packet::new_checked(&b[..9]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn layout_is_little_endian_as_linux_writes_it() {
        // A TSO read from a TUN: NEEDS_CSUM, TCPV4|ECN, hdr_len 66, gso_size 1448,
        // csum_start 34, csum_offset 16, then the packet.
        let b = [
            0x01, 0x81, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x45, 0x00,
        ];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.needs_csum());
        assert_eq!(
            p.gso_type(),
            VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN
        );
        assert_eq!(
            (p.hdr_len(), p.gso_size(), p.csum_start(), p.csum_offset()),
            (66, 1448, 34, 16)
        );
        assert_eq!(p.payload(), &[0x45, 0x00]);
        let mut out = [0xa5u8; 12];
        Repr::parse(&p).emit(&mut out);
        assert_eq!(&out[..LEN], &b[..LEN]);
        assert_eq!(&out[LEN..], &[0xa5, 0xa5], "emit writes 10 bytes only");
        assert_eq!(Repr::default().buffer_len(), LEN);
    }

    /// tun-rs copies the header in native byte order: the same bytes on a little-endian host.
    #[test]
    #[cfg(target_endian = "little")]
    fn agrees_with_tun_rs() {
        let h = Repr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
            hdr_len: 0x1234,
            gso_size: 0x5678,
            csum_start: 0x9abc,
            csum_offset: 0xdef0,
        };
        let mut b = [0u8; LEN];
        h.emit(&mut b);
        let t = tun_rs::VirtioNetHdr::decode(&b).unwrap();
        assert_eq!(
            (
                t.flags,
                t.gso_type,
                t.hdr_len,
                t.gso_size,
                t.csum_start,
                t.csum_offset
            ),
            (
                h.flags,
                h.gso_type,
                h.hdr_len,
                h.gso_size,
                h.csum_start,
                h.csum_offset
            )
        );
        assert_eq!(LEN, tun_rs::VIRTIO_NET_HDR_LEN);
        assert_eq!(VIRTIO_NET_HDR_GSO_TCPV4, tun_rs::VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(VIRTIO_NET_HDR_GSO_TCPV6, tun_rs::VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!(VIRTIO_NET_HDR_GSO_UDP_L4, tun_rs::VIRTIO_NET_HDR_GSO_UDP_L4);
    }

    #[test]
    fn checked_views_never_panic() {
        for len in 0..24 {
            for fill in [0x00u8, 0xff, 0x5a] {
                let mut b = vec![fill; len];
                let Ok(mut p) = Packet::new_checked(&mut b[..]) else {
                    assert!(len < LEN);
                    continue;
                };
                let r = Repr::parse(&p);
                let _ = (p.needs_csum(), p.payload().len());
                p.set_flags(r.flags);
                p.set_gso_type(r.gso_type);
                p.set_hdr_len(r.hdr_len);
                p.set_gso_size(r.gso_size);
                p.set_csum_start(r.csum_start);
                p.set_csum_offset(r.csum_offset);
                p.payload_mut().fill(0);
                assert_eq!(Repr::parse(&p), r);
            }
        }
    }
}
