//! The IPv6 side of the core, for a dual-stack cluster: IPv6 pod packets from the TUN are
//! encapsulated over the IPv6 underlay to the peer's `PublicIPv6` (as flanneld's
//! `flannel-v6.<VNI>` sends them), and datagrams from the IPv6 underlay are checked against
//! the peers' IPv6 subnets. The same rules as IPv4, with IPv6's numbers: 70 bytes of
//! overhead, Packet Too Big rather than "fragmentation needed" (IPv6 routers never
//! fragment, so every oversized packet gets one), and no header checksum.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::ops::Range;

use ipnet::Ipv6Net;

use super::{
    ecn_encapsulate, flow_src_port, DropReason, Format, Inbound, Node, Outbound, Transmit,
    VXLAN6_OVERHEAD,
};
use crate::lease::{Peer, PeerV6, Snapshot};
use crate::wire::{icmpv6, ipv6, udp, MacAddr};

/// This node's IPv6 side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeV6 {
    /// Our IPv6 underlay address (outer source; the peers' `PublicIPv6`).
    pub public_ip: Ipv6Addr,
    /// Our IPv6 pod subnet (inbound destinations must lie in it).
    pub subnet: Ipv6Net,
    /// The inner MTU budget over the IPv6 underlay: underlay MTU minus 70 (1430 on 1500),
    /// as the kernel clamps `flannel-v6.<VNI>`.
    pub mtu: usize,
    /// Our IPv6 VTEP MAC (the lease's `BackendV6Data`): frames of IPv6 pod packets come
    /// addressed to it, and ours leave from it.
    pub mac: MacAddr,
}

impl Node {
    /// [`Node::outbound`] for an IPv6 pod packet at `buf[start..start + len]`.
    pub(super) fn outbound6(
        &self,
        table: &Snapshot,
        buf: &mut [u8],
        start: usize,
        len: usize,
        segment: Option<usize>,
    ) -> Outbound {
        let (Some(v6), Format::Vxlan { .. }) = (self.v6, self.format) else {
            return Outbound::Drop(DropReason::InnerIpv6);
        };
        if start < VXLAN6_OVERHEAD {
            return Outbound::Drop(DropReason::NoRoom);
        }
        let Ok(ip) = ipv6::Packet::new_checked(&buf[start..start + len]) else {
            return Outbound::Drop(DropReason::MalformedInner);
        };
        let (dst, tot) = (ip.dst(), ip.packet().len());
        let found = table
            .lookup6(dst)
            .filter(|p| p.backend == self.format.backend())
            .and_then(|p| Some((*p, p.v6?)));
        let Some((peer, peer6)) = found else {
            let e = (None, icmpv6::CODE_NO_ROUTE);
            return self.icmp6_error(buf, start, tot, e, DropReason::NoLease);
        };
        if peer6.public_ip == v6.public_ip || v6.subnet.contains(&dst) {
            return Outbound::Drop(DropReason::Loop);
        }
        // A super-packet leaves whole only for a peer that takes it as one datagram, and
        // only if the outer payload length can say how long it is.
        let fits = tot + VXLAN6_OVERHEAD - ipv6::HEADER_LEN <= u16::MAX as usize;
        if segment.is_some() && !(peer.super_datagrams && fits) {
            return Outbound::Split;
        }
        if segment.unwrap_or(tot) > v6.mtu {
            let mtu = Some(v6.mtu.min(u32::MAX as usize) as u32);
            return self.icmp6_error(buf, start, tot, (mtu, 0), DropReason::TooBig);
        }
        if !fits {
            return Outbound::Drop(DropReason::TooBig);
        }
        self.encap6(buf, start, tot, &peer, &peer6, &v6)
    }

    /// Encapsulates the checked IPv6 packet at `buf[start..start + len]` for `peer` over
    /// the IPv6 underlay.
    fn encap6(
        &self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        peer: &Peer,
        peer6: &PeerV6,
        v6: &NodeV6,
    ) -> Outbound {
        let Format::Vxlan {
            vni,
            port,
            src_ports,
            ..
        } = self.format
        else {
            return Outbound::Drop(DropReason::InnerIpv6);
        };
        let (outer, end) = (start - VXLAN6_OVERHEAD, start + len);
        let inner = &buf[start..end];
        let tos = ecn_encapsulate(ipv6::Packet::new_unchecked(inner).traffic_class());
        let sp = flow_src_port(inner, self.hash_seed, src_ports);
        let h = super::vxlan::Headers {
            // Our device's VNI, as the kernel's flannel-v6.<VNI> sends (and IPv4 does).
            vni,
            src_mac: v6.mac,
            dst_mac: if peer6.vtep_mac.0 != [0; 6] {
                peer6.vtep_mac
            } else {
                peer.vtep_mac
            },
            src_port: sp,
            dst_port: port,
        };
        h.emit6(
            &mut buf[outer..end],
            v6.public_ip,
            peer6.public_ip,
            self.udp_checksum,
        );
        Outbound::Send(Transmit {
            datagram: outer..end,
            dst: SocketAddr::V6(SocketAddrV6::new(peer6.public_ip, port, 0, 0)),
            src_port: sp,
            tos,
        })
    }

    /// Builds an ICMPv6 error (`mtu` set: Packet Too Big; otherwise Destination
    /// Unreachable with `code`) for the packet at `buf[start..start + len]` in place,
    /// unless RFC 4443 forbids answering it; then it is a plain drop.
    fn icmp6_error(
        &self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        (mtu, code): (Option<u32>, u8),
        reason: DropReason,
    ) -> Outbound {
        let offender = &buf[start..start + len];
        if !icmpv6::may_answer(offender) || start < icmpv6::Error::QUOTE_OFFSET {
            return Outbound::Drop(reason);
        }
        let ip = ipv6::Packet::new_unchecked(offender);
        let (src, dst) = (ip.src(), ip.dst());
        let msg = start - icmpv6::Error::QUOTE_OFFSET..start + icmpv6::Error::quote_len(len);
        // From the offender's destination, as for IPv4 (`Node::icmp_error`).
        icmpv6::Error {
            src: dst,
            dst: src,
            mtu,
            code,
        }
        .emit(&mut buf[msg.clone()]);
        Outbound::Reply {
            packet: msg,
            reason,
        }
    }

    /// [`Node::inbound`]'s policy for an IPv6 pod packet at `buf[inner]`, received from
    /// `from` over the IPv6 underlay: the sender must be a lease's `PublicIPv6` (of our
    /// backend and VNI), the inner source in that lease's IPv6 subnet, the destination in
    /// ours.
    pub(super) fn inbound6(
        &self,
        table: &Snapshot,
        from: Ipv6Addr,
        buf: &mut [u8],
        inner: Range<usize>,
        outer_ecn: u8,
    ) -> Inbound {
        let Some(v6) = self.v6 else {
            return Inbound::Drop(DropReason::InnerIpv6);
        };
        let ip = ipv6::Packet::new_unchecked(&buf[inner.clone()]);
        let (src, dst) = (ip.src(), ip.dst());
        if from == v6.public_ip {
            return Inbound::Drop(DropReason::Loop);
        }
        let Some(sender) = table.by_public_ipv6(from) else {
            return Inbound::Drop(DropReason::UnknownSender);
        };
        let vni_ok = match (self.format, sender.v6) {
            (Format::Vxlan { vni, .. }, Some(s6)) => s6.vni == vni,
            _ => false,
        };
        if sender.backend != self.format.backend() || !vni_ok {
            return Inbound::Drop(DropReason::WrongBackend);
        }
        match table.lookup6(src).and_then(|p| p.v6) {
            Some(owner) if owner.public_ip == from => {}
            _ => return Inbound::Drop(DropReason::SpoofedSource),
        }
        if !v6.subnet.contains(&dst) {
            return Inbound::Drop(DropReason::NotLocal);
        }
        if ipv6::zero_udp_checksum(&buf[inner.clone()]) {
            // RFC 8200 8.1: a receiving stack discards it, the pod's behind kernel vxlan
            // too; delivered here it would get a checksum it never had.
            return Inbound::Drop(DropReason::InnerChecksum);
        }
        if let Err(r) = ecn_decapsulate6(outer_ecn, &mut buf[inner.clone()]) {
            return Inbound::Drop(r);
        }
        Inbound::Deliver(inner)
    }
}

/// RFC 6040 decapsulation for an IPv6 inner packet: outer CE sets CE on an ECN-capable
/// packet and condemns a not-ECT one (IPv6 has no header checksum to fix).
pub(super) fn ecn_decapsulate6(outer_ecn: u8, inner: &mut [u8]) -> Result<(), DropReason> {
    if outer_ecn & 0x03 != 0x03 || inner.len() < ipv6::HEADER_LEN {
        return Ok(());
    }
    match (inner[1] >> 4) & 0x03 {
        0x00 => Err(DropReason::EcnCeNotEct),
        _ => {
            ipv6::set_ecn(inner, 0x03);
            Ok(())
        }
    }
}

/// Checks an outer IPv6+UDP datagram (fixed header only: a datagram behind extension
/// headers is refused) and returns the sender, the UDP payload range and the outer ECN
/// bits. A zero UDP checksum is refused, as Linux refuses it without `udp6zerocsumrx`.
pub fn parse_outer6(buf: &[u8], port: u16) -> Result<(SocketAddr, Range<usize>, u8), DropReason> {
    let ip = ipv6::Packet::new_checked(buf).map_err(|e| match e {
        crate::wire::Error::Truncated => DropReason::Truncated,
        crate::wire::Error::Malformed => DropReason::MalformedOuter,
    })?;
    if ip.next_header() != ipv6::NEXT_UDP {
        return Err(DropReason::NotUdp);
    }
    let u = udp::Packet::new_checked(ip.payload()).map_err(|e| match e {
        crate::wire::Error::Truncated => DropReason::Truncated,
        crate::wire::Error::Malformed => DropReason::MalformedOuter,
    })?;
    if u.checksum() == 0 {
        return Err(DropReason::MalformedOuter);
    }
    if u.dst_port() != port {
        return Err(DropReason::WrongPort);
    }
    let start = ipv6::HEADER_LEN + udp::HEADER_LEN;
    let end = ipv6::HEADER_LEN + u.len() as usize;
    let from = SocketAddr::V6(SocketAddrV6::new(ip.src(), u.src_port(), 0, 0));
    Ok((from, start..end, (ip.traffic_class() & 0x03)))
}
