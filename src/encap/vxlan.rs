//! The VXLAN format as Linux's vxlan driver sends and accepts it for flannel's `flannel.1`:
//! outer IPv4 (TTL 64, DF clear, ECN from the inner packet) + UDP (flow-hashed source port,
//! destination 8472) + VXLAN (I flag, VNI) + Ethernet (our VTEP MAC to the peer's, IPv4);
//! and for `flannel-v6.1`: the same over an outer IPv6 header (hop limit 64, ECN from the
//! inner packet, UDP checksum always), an IPv6 pod packet inside.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use super::{ecn_encapsulate, emit_outer_ipv4, DropReason, OUTER_TTL, VXLAN_OVERHEAD};
use crate::wire::udp::ChecksumMode;
use crate::wire::{ethernet, ipv4, ipv6, udp, vxlan, MacAddr};

/// Outer IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14): what `flannel-v6.1` costs.
pub const VXLAN6_OVERHEAD: usize = 70;

const UDP_AT: usize = ipv4::HEADER_LEN;
const VXLAN_AT: usize = UDP_AT + udp::HEADER_LEN;

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
        self.emit_tunnel(&mut frame[VXLAN_AT..], ethernet::ETHERTYPE_IPV4);
        udp::Repr {
            src_port: self.src_port,
            dst_port: self.dst_port,
        }
        .emit(&mut frame[UDP_AT..], src, dst, csum);
        emit_outer_ipv4(frame, src, dst, ip_id, inner_tos);
    }

    /// Writes the 70 bytes of outer headers for an IPv6 underlay at the start of `frame`,
    /// whose bytes from offset 70 on must already hold the inner IPv6 packet: as the
    /// kernel's vxlan over IPv6, hop limit 64, the inner packet's ECN bits (RFC 6040) in
    /// the traffic class, flow label 0 (the kernel hashes one; a UDP socket writes its
    /// own), and a UDP checksum per `csum`.
    ///
    /// # Panics
    /// If `frame` is shorter than 72 bytes (a caller bug: [`super::Node::outbound`]
    /// checks it).
    pub fn emit6(&self, frame: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr, csum: ChecksumMode) {
        let inner_tc = ipv6::Packet::new_unchecked(&frame[VXLAN6_OVERHEAD..]).traffic_class();
        let (udp_at, vxlan_at) = (ipv6::HEADER_LEN, ipv6::HEADER_LEN + udp::HEADER_LEN);
        self.emit_tunnel(&mut frame[vxlan_at..], ethernet::ETHERTYPE_IPV6);
        udp::Repr {
            src_port: self.src_port,
            dst_port: self.dst_port,
        }
        .emit_v6(&mut frame[udp_at..], src, dst, csum);
        ipv6::Repr {
            src,
            dst,
            next_header: ipv6::NEXT_UDP,
            payload_len: frame.len() - ipv6::HEADER_LEN,
            hop_limit: OUTER_TTL,
            traffic_class: ecn_encapsulate(inner_tc),
            flow_label: 0,
        }
        .emit(frame);
    }

    /// The VXLAN header and the inner Ethernet header, at the start of `tunnel`.
    fn emit_tunnel(&self, tunnel: &mut [u8], ethertype: u16) {
        vxlan::Repr { vni: self.vni }.emit(tunnel);
        ethernet::Repr {
            dst: self.dst_mac,
            src: self.src_mac,
            ethertype,
        }
        .emit(&mut tunnel[vxlan::HEADER_LEN..]);
    }
}

/// Validates a VXLAN UDP payload for VNI `vni` and VTEP `mac` and returns the range of the
/// inner IPv4 or IPv6 packet within it (trailing Ethernet padding excluded). Which family
/// may arrive over which underlay is the caller's policy.
pub fn decap(payload: &[u8], vni: u32, mac: MacAddr) -> Result<Range<usize>, DropReason> {
    decap_dual(payload, vni, mac, mac)
}

/// [`decap`] for a dual-stack node: an IPv6 pod packet's frame must be addressed to
/// `mac6` (the MAC its lease's `BackendV6Data` publishes), an IPv4 one's to `mac`.
pub fn decap_dual(
    payload: &[u8],
    vni: u32,
    mac: MacAddr,
    mac6: MacAddr,
) -> Result<Range<usize>, DropReason> {
    let v = vxlan::Packet::new_checked(payload).map_err(|_| DropReason::Truncated)?;
    if !v.vni_valid() {
        return Err(DropReason::VxlanFlags);
    }
    if v.vni() != vni {
        return Err(DropReason::WrongVni);
    }
    let eth = ethernet::Frame::new_checked(v.payload()).map_err(|_| DropReason::Truncated)?;
    let v6 = eth.ethertype() == ethernet::ETHERTYPE_IPV6;
    if eth.dst() != if v6 { mac6 } else { mac } {
        return Err(DropReason::WrongDstMac);
    }
    let start = vxlan::HEADER_LEN + ethernet::HEADER_LEN;
    match eth.ethertype() {
        ethernet::ETHERTYPE_IPV4 => {}
        ethernet::ETHERTYPE_IPV6 => {
            let ip = ipv6::Packet::new_checked(eth.payload()).map_err(|e| match e {
                crate::wire::Error::Truncated => DropReason::Truncated,
                crate::wire::Error::Malformed => DropReason::MalformedInner,
            })?;
            return Ok(start..start + ip.packet().len());
        }
        _ => return Err(DropReason::NotIpv4),
    }
    let ip = ipv4::Packet::new_checked(eth.payload()).map_err(|e| match e {
        crate::wire::Error::Truncated => DropReason::Truncated,
        crate::wire::Error::Malformed => DropReason::MalformedInner,
    })?;
    if !ip.verify_checksum() {
        return Err(DropReason::InnerChecksum);
    }
    Ok(start..start + ip.total_len() as usize)
}
