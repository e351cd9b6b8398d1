//! TCP headers (RFC 9293 section 3.1).
//!
//! ```text
//!  0                   1                   2                   3
//! |          Source Port          |       Destination Port        |
//! |                        Sequence Number                        |
//! |                    Acknowledgment Number                      |
//! |  Data |       |C|E|U|A|P|R|S|F|                               |
//! | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
//! |           Checksum            |         Urgent Pointer        |
//! |                     Options (up to 40 bytes)                  |
//! ```
//!
//! TCP has no length field: a view covers one whole segment, header to the end of the
//! buffer, so give it the IP payload (to the IP total length), not the rest of a frame.

use std::net::Ipv4Addr;

use super::{be16, checksum, put16, Error, Result};

mod field {
    pub(super) const SRC_PORT: usize = 0;
    pub(super) const DST_PORT: usize = 2;
    pub(super) const SEQ: usize = 4;
    pub(super) const ACK: usize = 8;
    pub(super) const DATA_OFF: usize = 12;
    pub(super) const FLAGS: usize = 13;
    pub(super) const WINDOW: usize = 14;
    pub(super) const CHECKSUM: usize = 16;
    pub(super) const URGENT: usize = 18;
}

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;
/// The longest TCP header: data offset 15, 40 bytes of options.
pub const MAX_HEADER_LEN: usize = 60;
/// Offset of the checksum field from the start of the header (a virtio-net `csum_offset`).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;

/// FIN: no more data from the sender.
pub const FLAG_FIN: u8 = 0x01;
/// SYN: synchronize sequence numbers.
pub const FLAG_SYN: u8 = 0x02;
/// RST: reset the connection.
pub const FLAG_RST: u8 = 0x04;
/// PSH: push function.
pub const FLAG_PSH: u8 = 0x08;
/// ACK: the acknowledgment number is significant.
pub const FLAG_ACK: u8 = 0x10;
/// URG: the urgent pointer is significant.
pub const FLAG_URG: u8 = 0x20;
/// ECE: ECN-Echo (RFC 3168).
pub const FLAG_ECE: u8 = 0x40;
/// CWR: congestion window reduced (RFC 3168).
pub const FLAG_CWR: u8 = 0x80;

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// The header length the data offset of a TCP segment at the start of `buf` claims, with no
/// other check: `None` only when `buf` does not reach the data offset byte. For estimates
/// about a segment not validated yet; anything that reads the header needs a checked
/// [`Packet`].
#[inline]
pub fn claimed_header_len(buf: &[u8]) -> Option<usize> {
    buf.get(field::DATA_OFF).map(|b| ((b >> 4) as usize) * 4)
}

/// A view of a TCP segment.
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

    /// Checks that the buffer holds the fixed header ([`Error::Truncated`] if not), that the
    /// data offset says at least 20 bytes ([`Error::Malformed`] if not), and that the buffer
    /// holds the header it says, options included ([`Error::Truncated`] if not).
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if b.len() < hl {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }

    /// Acknowledgment number (meaningful when [`ack`](Self::ack) is set).
    #[inline]
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK)
    }

    /// Header length in bytes, options included: the data offset times four.
    #[inline]
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::DATA_OFF] >> 4) as usize) * 4
    }

    /// The flags byte: `FLAG_*` bits (CWR down to FIN).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// FIN flag.
    #[inline]
    pub fn fin(&self) -> bool {
        self.flags() & FLAG_FIN != 0
    }

    /// SYN flag.
    #[inline]
    pub fn syn(&self) -> bool {
        self.flags() & FLAG_SYN != 0
    }

    /// RST flag.
    #[inline]
    pub fn rst(&self) -> bool {
        self.flags() & FLAG_RST != 0
    }

    /// PSH flag.
    #[inline]
    pub fn psh(&self) -> bool {
        self.flags() & FLAG_PSH != 0
    }

    /// ACK flag.
    #[inline]
    pub fn ack(&self) -> bool {
        self.flags() & FLAG_ACK != 0
    }

    /// URG flag.
    #[inline]
    pub fn urg(&self) -> bool {
        self.flags() & FLAG_URG != 0
    }

    /// ECE flag.
    #[inline]
    pub fn ece(&self) -> bool {
        self.flags() & FLAG_ECE != 0
    }

    /// CWR flag.
    #[inline]
    pub fn cwr(&self) -> bool {
        self.flags() & FLAG_CWR != 0
    }

    /// Window size (unscaled).
    #[inline]
    pub fn window_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW)
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Urgent pointer.
    #[inline]
    pub fn urgent_at(&self) -> u16 {
        be16(self.buffer.as_ref(), field::URGENT)
    }

    /// The options: bytes 20 up to the header length (empty for a 20-byte header).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload: from the end of the header to the end of the buffer.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// True when the checksum verifies over the whole segment with the IPv4 pseudo-header.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let d = self.buffer.as_ref();
        let ph = checksum::pseudo_header_v4(src, dst, super::ipv4::PROTO_TCP, d.len() as u16);
        checksum::fold(checksum::sum(d, ph)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port (the checksum is not updated).
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    /// Sets the destination port (the checksum is not updated).
    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the sequence number (the checksum is not updated).
    #[inline]
    pub fn set_seq_number(&mut self, seq: u32) {
        put32(self.buffer.as_mut(), field::SEQ, seq);
    }

    /// Sets the acknowledgment number (the checksum is not updated).
    #[inline]
    pub fn set_ack_number(&mut self, ack: u32) {
        put32(self.buffer.as_mut(), field::ACK, ack);
    }

    /// Sets the data offset to `len` bytes, keeping the reserved bits beside it. Refuses,
    /// changing nothing, a length that is not a multiple of four in `20..=60`
    /// ([`Error::Malformed`]) or longer than the buffer ([`Error::Truncated`]), so a
    /// checked view stays one.
    pub fn set_header_len(&mut self, len: usize) -> Result<()> {
        if !len.is_multiple_of(4) || !(HEADER_LEN..=MAX_HEADER_LEN).contains(&len) {
            return Err(Error::Malformed);
        }
        let b = self.buffer.as_mut();
        if b.len() < len {
            return Err(Error::Truncated);
        }
        b[field::DATA_OFF] = ((len / 4) as u8) << 4 | (b[field::DATA_OFF] & 0x0f);
        Ok(())
    }

    /// Sets the flags byte (the checksum is not updated).
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the window size (the checksum is not updated).
    #[inline]
    pub fn set_window_len(&mut self, window: u16) {
        put16(self.buffer.as_mut(), field::WINDOW, window);
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, c);
    }

    /// Sets the urgent pointer (the checksum is not updated).
    #[inline]
    pub fn set_urgent_at(&mut self, at: u16) {
        put16(self.buffer.as_mut(), field::URGENT, at);
    }

    /// Computes the checksum over the whole segment with the IPv4 pseudo-header.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let d = self.buffer.as_ref();
        let ph = checksum::pseudo_header_v4(src, dst, super::ipv4::PROTO_TCP, d.len() as u16);
        let c = !checksum::fold(checksum::sum(d, ph));
        self.set_checksum(c);
    }

    /// The mutable options.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..hl]
    }

    /// The mutable payload.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);

    /// A segment written byte by byte: ports 54388 -> 5201, seq 0x01020304, ack 0xa0b0c0d0,
    /// data offset 8 (12 option bytes: NOP NOP timestamp), ACK|PSH|CWR, window 502,
    /// checksum 0x1234, urgent 7, payload "hi".
    const HAND: [u8; 34] = [
        0xd4, 0x74, 0x14, 0x51, // ports
        0x01, 0x02, 0x03, 0x04, // seq
        0xa0, 0xb0, 0xc0, 0xd0, // ack
        0x80, 0x98, // data offset 8, flags CWR|ACK|PSH
        0x01, 0xf6, // window
        0x12, 0x34, // checksum
        0x00, 0x07, // urgent pointer
        0x01, 0x01, 0x08, 0x0a, 0, 0, 0, 1, 0, 0, 0, 2, // options
        b'h', b'i',
    ];

    #[test]
    fn reads_a_hand_built_header() {
        let p = Packet::new_checked(&HAND[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (54388, 5201));
        assert_eq!(p.seq_number(), 0x0102_0304);
        assert_eq!(p.ack_number(), 0xa0b0_c0d0);
        assert_eq!(p.header_len(), 32);
        assert_eq!(p.flags(), FLAG_CWR | FLAG_ACK | FLAG_PSH);
        assert_eq!(
            (p.fin(), p.syn(), p.rst(), p.psh()),
            (false, false, false, true)
        );
        assert_eq!(
            (p.ack(), p.urg(), p.ece(), p.cwr()),
            (true, false, false, true)
        );
        assert_eq!(p.window_len(), 502);
        assert_eq!(p.checksum(), 0x1234);
        assert_eq!(p.urgent_at(), 7);
        assert_eq!(p.options(), &HAND[20..32]);
        assert_eq!(p.payload(), b"hi");
        assert_eq!(claimed_header_len(&HAND), Some(32));
        assert_eq!(claimed_header_len(&HAND[..12]), None);
    }

    #[test]
    fn setters_rebuild_the_hand_built_header() {
        let mut b = [0u8; 34];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_src_port(54388);
        p.set_dst_port(5201);
        p.set_seq_number(0x0102_0304);
        p.set_ack_number(0xa0b0_c0d0);
        p.set_header_len(32).unwrap();
        p.set_flags(FLAG_CWR | FLAG_ACK | FLAG_PSH);
        p.set_window_len(502);
        p.set_checksum(0x1234);
        p.set_urgent_at(7);
        p.options_mut().copy_from_slice(&HAND[20..32]);
        p.payload_mut().copy_from_slice(b"hi");
        assert_eq!(b, HAND);
    }

    #[test]
    fn set_header_len_keeps_the_view_checked() {
        let mut b = HAND;
        b[12] |= 0x0f; // reserved bits survive
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.set_header_len(19), Err(Error::Malformed));
        assert_eq!(p.set_header_len(22), Err(Error::Malformed));
        assert_eq!(p.set_header_len(64), Err(Error::Malformed));
        assert_eq!(p.set_header_len(36), Err(Error::Truncated));
        assert_eq!(p.header_len(), 32);
        p.set_header_len(20).unwrap();
        assert_eq!(p.header_len(), 20);
        assert!(p.options().is_empty());
        assert_eq!(p.payload().len(), 14);
        assert_eq!(b[12], 0x5f);
    }

    #[test]
    fn agrees_with_etherparse_and_checksums() {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4(SRC.octets(), DST.octets(), 64)
            .tcp(1000, 80, 4_294_967_000, 512)
            .ack(77)
            .syn()
            .ece()
            .urg(3)
            .options(&[
                etherparse::TcpOptionElement::MaximumSegmentSize(1410),
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::WindowScale(7),
            ])
            .unwrap()
            .write(&mut v, b"hello, tcp")
            .unwrap();
        let seg = &v[20..];
        let (h, rest) = etherparse::TcpHeader::from_slice(seg).unwrap();
        let p = Packet::new_checked(seg).unwrap();
        assert_eq!(p.src_port(), h.source_port);
        assert_eq!(p.dst_port(), h.destination_port);
        assert_eq!(p.seq_number(), h.sequence_number);
        assert_eq!(p.ack_number(), h.acknowledgment_number);
        assert_eq!(p.header_len(), h.header_len());
        assert_eq!(
            (p.fin(), p.syn(), p.rst(), p.psh()),
            (h.fin, h.syn, h.rst, h.psh)
        );
        assert_eq!(
            (p.ack(), p.urg(), p.ece(), p.cwr()),
            (h.ack, h.urg, h.ece, h.cwr)
        );
        assert_eq!(p.window_len(), h.window_size);
        assert_eq!(p.urgent_at(), h.urgent_pointer);
        assert_eq!(p.checksum(), h.checksum);
        assert_eq!(p.options(), h.options.as_slice());
        assert_eq!(p.payload(), rest);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(10, 244, 2, 4)));

        let mut broken = seg.to_vec();
        let mut q = Packet::new_checked(&mut broken[..]).unwrap();
        q.set_checksum(0xdead);
        assert!(!q.verify_checksum(SRC, DST));
        q.fill_checksum(SRC, DST);
        assert!(q.verify_checksum(SRC, DST));
        assert_eq!(broken, seg);
    }

    #[test]
    fn rejects_bad_lengths() {
        for n in 0..HAND.len() {
            let r = Packet::new_checked(&HAND[..n]);
            if n < 32 {
                assert_eq!(r.unwrap_err(), Error::Truncated, "len {n}");
            } else {
                assert!(r.is_ok());
            }
        }
        for off in 0..5u8 {
            let mut b = HAND;
            b[12] = off << 4;
            assert_eq!(
                Packet::new_checked(&b[..]).unwrap_err(),
                Error::Malformed,
                "offset {off}"
            );
        }
        let mut b = HAND;
        b[12] = 0xf0; // 60 > 34
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Truncated);
    }

    /// Every getter and setter of a checked view, on buffers of every short length and on
    /// garbage: none may panic (the `wire` contract).
    #[test]
    fn checked_views_never_panic() {
        fn exercise(buf: &mut [u8]) {
            let Ok(mut p) = Packet::new_checked(&mut *buf) else {
                return;
            };
            let _ = (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number());
            let _ = (p.header_len(), p.flags(), p.window_len(), p.checksum());
            let _ = (p.urgent_at(), p.options().len(), p.payload().len());
            let _ = (p.fin(), p.syn(), p.rst(), p.psh());
            let _ = (p.ack(), p.urg(), p.ece(), p.cwr());
            let _ = p.verify_checksum(SRC, DST);
            let _ = claimed_header_len(p.payload());
            for len in [0, 20, 24, 40, 60, 61, 1000] {
                let _ = p.set_header_len(len);
                let _ = (p.options().len(), p.payload().len());
            }
            p.set_src_port(1);
            p.set_dst_port(2);
            p.set_seq_number(3);
            p.set_ack_number(4);
            p.set_flags(0xff);
            p.set_window_len(5);
            p.set_urgent_at(6);
            p.options_mut().fill(1);
            p.payload_mut().fill(2);
            p.fill_checksum(SRC, DST);
            assert!(p.verify_checksum(SRC, DST));
            assert!(p.check_len().is_ok());
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        for len in 0..80 {
            for _ in 0..200 {
                let mut b: Vec<u8> = (0..len).map(|_| next()).collect();
                exercise(&mut b);
            }
            for fill in [0x00, 0xff, 0x50, 0xf0] {
                exercise(&mut vec![fill; len]);
            }
        }
    }
}
