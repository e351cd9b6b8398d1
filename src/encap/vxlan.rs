//! The VXLAN format as Linux's vxlan driver sends and accepts it for flannel's `flannel.1`:
//! outer IPv4 (TTL 64, DF clear, ECN from the inner packet) + UDP (flow-hashed source port,
//! destination 8472) + VXLAN (I flag, VNI) + Ethernet (our VTEP MAC to the peer's, IPv4).

use std::net::Ipv4Addr;
use std::ops::Range;

use super::{emit_outer_ipv4, DropReason, VXLAN_OVERHEAD};
use crate::wire::udp::ChecksumMode;
use crate::wire::{ethernet, ipv4, udp, vxlan, MacAddr};

const UDP_AT: usize = ipv4::HEADER_LEN;
const VXLAN_AT: usize = UDP_AT + udp::HEADER_LEN;
const ETH_AT: usize = VXLAN_AT + vxlan::HEADER_LEN;

/// The per-datagram header fields of a VXLAN encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// VNI.
    pub vni: u32,
    /// Inner Ethernet source: our VTEP MAC.
    pub src_mac: MacAddr,
    /// Inner Ethernet destination: the peer's VTEP MAC.
    pub dst_mac: MacAddr,
    /// Outer UDP source port.
    pub src_port: u16,
    /// Outer UDP destination port.
    pub dst_port: u16,
}

impl Headers {
    /// Writes the 50 bytes of outer headers at the start of `frame`, whose bytes from
    /// offset 50 on must already hold the inner IPv4 packet (of at least 2 bytes).
    ///
    /// # Panics
    /// If `frame` is shorter than 52 bytes or longer than 65535 (caller bugs, never wire
    /// input: [`super::Node::outbound`] checks both).
    pub fn emit(
        &self,
        frame: &mut [u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ip_id: u16,
        csum: ChecksumMode,
    ) {
        let inner_tos = frame[VXLAN_OVERHEAD + 1];
        ethernet::Repr {
            dst: self.dst_mac,
            src: self.src_mac,
            ethertype: ethernet::ETHERTYPE_IPV4,
        }
        .emit(&mut frame[ETH_AT..]);
        vxlan::Repr { vni: self.vni }.emit(&mut frame[VXLAN_AT..]);
        udp::Repr {
            src_port: self.src_port,
            dst_port: self.dst_port,
        }
        .emit(&mut frame[UDP_AT..], src, dst, csum);
        emit_outer_ipv4(frame, src, dst, ip_id, inner_tos);
    }
}

/// Validates a VXLAN UDP payload for VNI `vni` and VTEP `mac` and returns the range of the
/// inner IPv4 packet within it (trailing Ethernet padding excluded).
pub fn decap(payload: &[u8], vni: u32, mac: MacAddr) -> Result<Range<usize>, DropReason> {
    let v = vxlan::Packet::new_checked(payload).map_err(|_| DropReason::Truncated)?;
    if !v.vni_valid() {
        return Err(DropReason::VxlanFlags);
    }
    if v.vni() != vni {
        return Err(DropReason::WrongVni);
    }
    let eth = ethernet::Frame::new_checked(v.payload()).map_err(|_| DropReason::Truncated)?;
    if eth.dst() != mac {
        return Err(DropReason::WrongDstMac);
    }
    match eth.ethertype() {
        ethernet::ETHERTYPE_IPV4 => {}
        ethernet::ETHERTYPE_IPV6 => return Err(DropReason::InnerIpv6),
        _ => return Err(DropReason::NotIpv4),
    }
    let start = vxlan::HEADER_LEN + ethernet::HEADER_LEN;
    let ip = ipv4::Packet::new_checked(eth.payload()).map_err(|e| match e {
        crate::wire::Error::Truncated => DropReason::Truncated,
        crate::wire::Error::Malformed => DropReason::MalformedInner,
    })?;
    if !ip.verify_checksum() {
        return Err(DropReason::InnerChecksum);
    }
    Ok(start..start + ip.total_len() as usize)
}
