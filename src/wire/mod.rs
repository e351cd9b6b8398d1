//! Zero-copy header views and emitters: Ethernet II, IPv4, IPv6, UDP,
//! TCP, VXLAN, the virtio-net header of an offloading TUN, and the ICMPv4 and ICMPv6 errors weft
//! originates. No I/O happens here.
//!
//! Every header follows one pattern, after smoltcp's `wire`: a `Packet<T: AsRef<[u8]>>`
//! view with `new_unchecked`, `new_checked` (which calls `check_len`), cheap getters and,
//! for `T: AsMut<[u8]>`, setters. **Contract:** once `new_checked` has returned `Ok`, no
//! getter or setter of that view can panic, whatever bytes the buffer holds.

pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod virtio_net;
pub mod vxlan;

use std::fmt;
use std::str::FromStr;

/// Why a header view refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The buffer is shorter than the header (or than a length field inside it claims).
    Truncated,
    /// A field holds a value the header cannot have (version, header length, total length).
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated header"),
            Error::Malformed => f.write_str("malformed header"),
        }
    }
}

impl std::error::Error for Error {}

/// A result of header parsing.
pub type Result<T> = core::result::Result<T, Error>;

/// A 48-bit Ethernet (MAC) address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// True for a multicast (or broadcast) address: the I/G bit is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for a locally administered address: the U/L bit is set.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// A unicast, locally administered address built from `bytes`, as flannel's
    /// `pkg/mac` generates VTEP MACs (I/G bit cleared, U/L bit set).
    pub fn local_unicast(mut bytes: [u8; 6]) -> MacAddr {
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        MacAddr(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The error of parsing a MAC address from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address {0:?}: expected six hex octets separated by ':' (e.g. 0e:2a:01:02:03:04)"
)]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Parses `aa:bb:cc:dd:ee:ff` (or with `-` separators), as Go's `net.ParseMAC` does
    /// for the 48-bit forms flannel writes.
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 || part.len() != 2 {
                return Err(err());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| err())?;
            n += 1;
        }
        if n != 6 {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> core::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads a big-endian u16 at `at`; callers have checked the length.
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Writes a big-endian u16 at `at`; callers have checked the length.
#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_errors() {
        let m: MacAddr = "0e:00:00:00:01:01".parse().unwrap();
        assert_eq!(m.0, [0x0e, 0, 0, 0, 1, 1]);
        assert_eq!(m.to_string(), "0e:00:00:00:01:01");
        assert_eq!("0E-00-00-00-01-01".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "0e:00:00:00:01",
            "0e:00:00:00:01:01:02",
            "zz:00:00:00:01:01",
            "e:0:0:0:1:1",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn local_unicast_sets_bits() {
        let m = MacAddr::local_unicast([0xff; 6]);
        assert!(!m.is_multicast());
        assert!(m.is_local());
    }
}
