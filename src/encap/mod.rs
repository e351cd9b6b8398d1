//! The sans-IO encapsulation core: given packets in buffers, decide and rewrite in place,
//! and tell the I/O layer what to do (send to a peer, write back to the TUN, or drop with
//! a reason), after boringtun's `encapsulate`/`decapsulate`.
//!
//! Buffers: an inner packet read from the TUN sits at `buf[start..start + len]` with at
//! least [`VXLAN_OVERHEAD`] (or [`UDP_OVERHEAD`]) bytes of headroom before `start`
//! ([`HEADROOM`] suits both). Encapsulation writes the outer headers into that headroom:
//! no payload copy, no allocation. ICMP errors are built in place too, over the offending
//! packet's headroom, quoting its first bytes where they already are.

pub mod ratelimit;
pub mod udp;
mod v6;
pub mod vxlan;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;

use ipnet::Ipv4Net;

use crate::lease::table::BackendKind;
use crate::lease::{Peer, Snapshot};
use crate::wire::udp::ChecksumMode;
use crate::wire::{checksum, icmpv4, ipv4, MacAddr};

/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: usize = 50;
/// Outer IPv4 (20) + UDP (8): flannel's udp backend.
pub const UDP_OVERHEAD: usize = 28;
pub use v6::{parse_outer6, NodeV6};
pub use vxlan::VXLAN6_OVERHEAD;
/// Headroom to leave before an inner packet in a buffer: enough for either backend and
/// either underlay family ([`VXLAN6_OVERHEAD`]), and for a virtio-net header.
pub const HEADROOM: usize = 80;
/// Outer TTL: what a kernel vxlan device with the default `ttl 0` uses (ip_default_ttl).
pub const OUTER_TTL: u8 = 64;

/// Why a packet was dropped. Fieldless, so counting is one array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Outer IPv4 header malformed or with a bad checksum (raw datagram path).
    MalformedOuter,
    /// Outer protocol is not UDP (raw datagram path).
    NotUdp,
    /// Outer datagram is a fragment (raw datagram path; sockets reassemble).
    OuterFragment,
    /// Shorter than the headers it must hold.
    Truncated,
    /// Outer UDP destination port is not ours.
    WrongPort,
    /// VXLAN I flag not set.
    VxlanFlags,
    /// VXLAN VNI is not ours.
    WrongVni,
    /// Inner Ethernet destination is not our VTEP MAC.
    WrongDstMac,
    /// Inner EtherType is not IPv4 (and not IPv6).
    NotIpv4,
    /// Inner packet is IPv6, and this node has no IPv6 pod network.
    InnerIpv6,
    /// Inner IPv4 header malformed (version, header length, total length).
    MalformedInner,
    /// Inner IPv4 header checksum wrong, or an inner UDP/IPv6 datagram with a zero
    /// checksum (which IPv6 forbids).
    InnerChecksum,
    /// Sender is not the public IP of any lease.
    UnknownSender,
    /// Sender's lease is for another backend or VNI.
    WrongBackend,
    /// Inner source does not lie in the sender's subnet.
    SpoofedSource,
    /// Inner destination is not in this node's subnet.
    NotLocal,
    /// Outer CE mark on a non-ECN-capable inner packet (RFC 6040: must drop).
    EcnCeNotEct,
    /// No lease for the destination, and no ICMP error may be sent about it.
    NoLease,
    /// Larger than the MTU budget with DF set, and no ICMP error may be sent about it.
    TooBig,
    /// Destination lease belongs to this node (a routing loop).
    Loop,
    /// The buffer lacks headroom or room for the packet (a caller bug, counted not panicked).
    NoRoom,
    /// The inner packet's family is not the underlay's: flannel sends IPv4 pods over the
    /// IPv4 underlay and IPv6 pods over IPv6, and a peer's lease says only that.
    FamilyMismatch,
}

impl DropReason {
    /// Number of reasons (size of a counter array).
    pub const COUNT: usize = 22;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::MalformedOuter,
        DropReason::NotUdp,
        DropReason::OuterFragment,
        DropReason::Truncated,
        DropReason::WrongPort,
        DropReason::VxlanFlags,
        DropReason::WrongVni,
        DropReason::WrongDstMac,
        DropReason::NotIpv4,
        DropReason::InnerIpv6,
        DropReason::MalformedInner,
        DropReason::InnerChecksum,
        DropReason::UnknownSender,
        DropReason::WrongBackend,
        DropReason::SpoofedSource,
        DropReason::NotLocal,
        DropReason::EcnCeNotEct,
        DropReason::NoLease,
        DropReason::TooBig,
        DropReason::Loop,
        DropReason::NoRoom,
        DropReason::FamilyMismatch,
    ];

    /// Counter index.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::MalformedOuter => "malformed_outer",
            DropReason::NotUdp => "not_udp",
            DropReason::OuterFragment => "outer_fragment",
            DropReason::Truncated => "truncated",
            DropReason::WrongPort => "wrong_port",
            DropReason::VxlanFlags => "vxlan_flags",
            DropReason::WrongVni => "wrong_vni",
            DropReason::WrongDstMac => "wrong_dst_mac",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::InnerIpv6 => "inner_ipv6",
            DropReason::MalformedInner => "malformed_inner",
            DropReason::InnerChecksum => "inner_checksum",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::WrongBackend => "wrong_backend",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotLocal => "not_local",
            DropReason::EcnCeNotEct => "ecn_ce_not_ect",
            DropReason::NoLease => "no_lease",
            DropReason::TooBig => "too_big",
            DropReason::Loop => "loop",
            DropReason::NoRoom => "no_room",
            DropReason::FamilyMismatch => "family_mismatch",
        }
    }
}

/// A datagram to send to a peer: everything the core decided about it, which the I/O
/// layer must honour (a UDP socket writes the outer headers itself, so the source port and
/// the TOS byte have to travel beside the payload, not only inside the buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The whole outer IPv4 or IPv6 datagram in the buffer (for a raw socket or a capture).
    pub datagram: Range<usize>,
    /// The peer's underlay address and port: IPv6 for an IPv6 pod packet.
    pub dst: SocketAddr,
    /// The outer UDP source port chosen (flow hash for vxlan, the backend port for udp).
    pub src_port: u16,
    /// The outer TOS byte: the inner packet's ECN bits as RFC 6040 maps them (CE becomes
    /// ECT(0)), DSCP 0, as kernel vxlan with `tos 0` writes it.
    pub tos: u8,
}

impl Transmit {
    /// The UDP payload within the buffer: what a UDP socket sends.
    pub fn udp_payload(&self) -> Range<usize> {
        let outer = match self.dst {
            SocketAddr::V4(_) => UDP_OVERHEAD,
            SocketAddr::V6(_) => crate::wire::ipv6::HEADER_LEN + crate::wire::udp::HEADER_LEN,
        };
        self.datagram.start + outer..self.datagram.end
    }
}

/// What to do with a packet read from the TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Send it to a peer.
    Send(Transmit),
    /// Write these bytes (an ICMP error for the sender) back into the TUN.
    Reply {
        /// The ICMP datagram in the buffer.
        packet: Range<usize>,
        /// Why the original was refused.
        reason: DropReason,
    },
    /// Drop it.
    Drop(DropReason),
    /// A TSO super-packet ([`Node::outbound_super`]) for a peer that cannot take it as one
    /// datagram (flanneld's udp proxy, [`Peer::super_datagrams`]): cut it into segments and
    /// send those. Nothing was written to the buffer.
    Split,
}

/// What to do with a datagram received from the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Write these inner IPv4 or IPv6 bytes into the TUN.
    Deliver(Range<usize>),
    /// Drop it.
    Drop(DropReason),
}

/// The wire format and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// VXLAN, as the kernel's `flannel.1` sends and accepts it.
    Vxlan {
        /// Our VNI.
        vni: u32,
        /// Destination (and listening) UDP port.
        port: u16,
        /// Our VTEP MAC.
        mac: MacAddr,
        /// Where outer source ports come from.
        src_ports: SrcPorts,
    },
    /// flannel's udp backend: the raw inner packet in UDP, same port both ways.
    Udp {
        /// The port.
        port: u16,
    },
}

impl Format {
    /// Bytes this format prepends.
    pub fn overhead(&self) -> usize {
        match self {
            Format::Vxlan { .. } => VXLAN_OVERHEAD,
            Format::Udp { .. } => UDP_OVERHEAD,
        }
    }

    /// The peer backend kind this format talks to.
    pub fn backend(&self) -> BackendKind {
        match self {
            Format::Vxlan { .. } => BackendKind::Vxlan,
            Format::Udp { .. } => BackendKind::Udp,
        }
    }

    /// The UDP port.
    pub fn port(&self) -> u16 {
        match *self {
            Format::Vxlan { port, .. } | Format::Udp { port } => port,
        }
    }

    /// The same format with vxlan source ports drawn from `ports` (the ports of the
    /// sockets the I/O layer bound); flannel's udp format always sends from its one port.
    pub fn with_bound_ports(self, ports: &[u16]) -> Format {
        match self {
            Format::Vxlan { vni, port, mac, .. } if !ports.is_empty() => Format::Vxlan {
                vni,
                port,
                mac,
                src_ports: SrcPorts::Bound(PortSet::new(ports)),
            },
            f => f,
        }
    }
}

/// This node: everything the core needs to encapsulate, decapsulate and police.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// Our underlay address (outer source).
    pub public_ip: Ipv4Addr,
    /// Our pod subnet (inbound destinations must lie in it); its network address is the
    /// TUN address. `None` on an IPv6-only node: every IPv4 packet is dropped.
    pub subnet: Option<Ipv4Net>,
    /// The inner MTU budget: underlay MTU minus overhead (1450 for vxlan on 1500).
    pub mtu: usize,
    /// The wire format.
    pub format: Format,
    /// How the outer UDP checksum is filled (a UDP socket fills it itself).
    pub udp_checksum: ChecksumMode,
    /// Seed of the flow hash that picks vxlan source ports.
    pub hash_seed: u64,
    /// The IPv6 side, in a dual-stack cluster (vxlan only): IPv6 pod packets travel over
    /// the IPv6 underlay. `None`: IPv6 pod packets are dropped ([`DropReason::InnerIpv6`]).
    pub v6: Option<NodeV6>,
}

impl Node {
    /// Decides what to do with the inner packet at `buf[start..start + len]`, read from the
    /// TUN, and rewrites the buffer in place for it. `ip_id` is the identification for the
    /// datagram this emits (the caller's per-worker counter).
    pub fn outbound(
        &self,
        table: &Snapshot,
        buf: &mut [u8],
        start: usize,
        len: usize,
        ip_id: u16,
    ) -> Outbound {
        self.outbound_segmented(table, buf, start, len, ip_id, None)
    }

    /// [`outbound`](Self::outbound) for a TSO super-packet that leaves whole, for the
    /// kernel to cut into segments of at most `segment` bytes (headers included) after
    /// encapsulation: the MTU budget applies to each segment, not to the super-packet.
    /// [`Outbound::Split`] when the peer cannot take it whole: on a veth or bridge underlay
    /// it would arrive as one datagram of up to 64 KB.
    pub fn outbound_super(
        &self,
        table: &Snapshot,
        buf: &mut [u8],
        start: usize,
        len: usize,
        ip_id: u16,
        segment: usize,
    ) -> Outbound {
        self.outbound_segmented(table, buf, start, len, ip_id, Some(segment))
    }

    fn outbound_segmented(
        &self,
        table: &Snapshot,
        buf: &mut [u8],
        start: usize,
        len: usize,
        ip_id: u16,
        segment: Option<usize>,
    ) -> Outbound {
        let overhead = self.format.overhead();
        let Some(end) = start
            .checked_add(len)
            .filter(|&e| e <= buf.len() && start >= overhead)
        else {
            return Outbound::Drop(DropReason::NoRoom);
        };
        let inner = &buf[start..end];
        let Some(&first) = inner.first() else {
            return Outbound::Drop(DropReason::Truncated);
        };
        if first >> 4 == 6 {
            return self.outbound6(table, buf, start, len, segment);
        }
        let Ok(ip) = ipv4::Packet::new_checked(inner) else {
            return Outbound::Drop(DropReason::MalformedInner);
        };
        let (dst, df, tot) = (ip.dst(), ip.dont_frag(), ip.total_len() as usize);
        let peer = match table.lookup(dst) {
            Some(p) if p.backend == self.format.backend() => *p,
            _ => {
                return self.icmp_error(
                    buf,
                    start,
                    tot,
                    icmpv4::CODE_NET_UNREACHABLE,
                    0,
                    ip_id,
                    DropReason::NoLease,
                )
            }
        };
        if peer.public_ip == self.public_ip || self.subnet.is_some_and(|s| s.contains(&dst)) {
            return Outbound::Drop(DropReason::Loop);
        }
        if segment.is_some() && !peer.super_datagrams {
            return Outbound::Split;
        }
        if segment.unwrap_or(tot) > self.mtu && df {
            let mtu = self.mtu.min(u16::MAX as usize) as u16;
            return self.icmp_error(
                buf,
                start,
                tot,
                icmpv4::CODE_FRAG_NEEDED,
                mtu,
                ip_id,
                DropReason::TooBig,
            );
        }
        // Without DF, an oversized packet is sent whole; the underlay fragments the outer
        // datagram, as kernel vxlan (whose outer DF is clear) lets it.
        if tot + overhead > u16::MAX as usize {
            return Outbound::Drop(DropReason::TooBig);
        }
        self.encap(buf, start, tot, &peer, ip_id)
    }

    /// Encapsulates `buf[start..start + len]` (a checked inner IPv4 packet with headroom)
    /// for `peer`.
    pub fn encap(
        &self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        peer: &Peer,
        ip_id: u16,
    ) -> Outbound {
        let Some(end) = start.checked_add(len).filter(|&e| e <= buf.len()) else {
            return Outbound::Drop(DropReason::NoRoom);
        };
        let Some(outer) = start.checked_sub(self.format.overhead()) else {
            return Outbound::Drop(DropReason::NoRoom);
        };
        let tos = buf.get(start + 1).map_or(0, |&t| ecn_encapsulate(t));
        let (src_port, dst_port) = match self.format {
            Format::Vxlan {
                vni,
                port,
                mac,
                src_ports,
            } => {
                let sp = flow_src_port(&buf[start..end], self.hash_seed, src_ports);
                let h = vxlan::Headers {
                    vni,
                    src_mac: mac,
                    dst_mac: peer.vtep_mac,
                    src_port: sp,
                    dst_port: port,
                };
                h.emit(
                    &mut buf[outer..end],
                    self.public_ip,
                    peer.public_ip,
                    ip_id,
                    self.udp_checksum,
                );
                (sp, port)
            }
            Format::Udp { port } => {
                udp::emit(
                    &mut buf[outer..end],
                    self.public_ip,
                    peer.public_ip,
                    port,
                    ip_id,
                    self.udp_checksum,
                );
                (port, port)
            }
        };
        Outbound::Send(Transmit {
            datagram: outer..end,
            dst: SocketAddr::V4(SocketAddrV4::new(peer.public_ip, dst_port)),
            src_port,
            tos,
        })
    }

    /// Builds an ICMP destination-unreachable for the packet at `buf[start..start+len]`
    /// in place, unless RFC 1122/1812 forbid answering it; then it is a plain drop.
    #[allow(clippy::too_many_arguments)]
    fn icmp_error(
        &self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        code: u8,
        mtu: u16,
        ip_id: u16,
        reason: DropReason,
    ) -> Outbound {
        if !may_answer_with_error(&buf[start..start + len])
            || start < icmpv4::DestUnreachable::QUOTE_OFFSET
        {
            return Outbound::Drop(reason);
        }
        let offender = ipv4::Packet::new_unchecked(&buf[start..start + len]);
        let (src_of_offender, dst_of_offender) = (offender.src(), offender.dst());
        let q = icmpv4::DestUnreachable::quote_len(len);
        let msg = start - icmpv4::DestUnreachable::QUOTE_OFFSET..start + q;
        // The error's source is the offender's destination, not our TUN address: a packet
        // that enters the node from the TUN with one of the node's own addresses as source
        // is a martian and the kernel drops it (flannel's udp proxy has that bug). The
        // destination is routed through the TUN and not local, so it passes rp_filter.
        icmpv4::DestUnreachable {
            src: dst_of_offender,
            dst: src_of_offender,
            code,
            next_hop_mtu: mtu,
            ident: ip_id,
        }
        .emit(&mut buf[msg.clone()]);
        Outbound::Reply {
            packet: msg,
            reason,
        }
    }

    /// Validates a datagram's UDP payload at `buf[start..start + len]`, received from
    /// `from` with outer ECN bits `outer_ecn`, against the wire format and the lease table,
    /// and returns the inner packet to deliver. May rewrite the inner ECN field (RFC 6040).
    ///
    /// Policy, on top of format checks: the sender must be the public IP of a lease of our
    /// backend (and VNI); the inner source must lie in that sender's own subnet; the inner
    /// destination must lie in our subnet. So a packet cannot reach a pod from a host
    /// without a lease, nor with a source address another node owns. IPv4 pods arrive
    /// over the IPv4 underlay, IPv6 pods over IPv6 ([`v6`]), as flannel sends them.
    pub fn inbound(
        &self,
        table: &Snapshot,
        from: SocketAddr,
        buf: &mut [u8],
        start: usize,
        len: usize,
        outer_ecn: u8,
    ) -> Inbound {
        let Some(payload) = start.checked_add(len).and_then(|end| buf.get(start..end)) else {
            return Inbound::Drop(DropReason::NoRoom);
        };
        let inner = match self.decap(payload) {
            Ok(r) => start + r.start..start + r.end,
            Err(reason) => return Inbound::Drop(reason),
        };
        let v6_inner = buf[inner.start] >> 4 == 6;
        let from = match (from, v6_inner) {
            (SocketAddr::V4(f), false) => *f.ip(),
            (SocketAddr::V6(f), true) => {
                return self.inbound6(table, *f.ip(), buf, inner, outer_ecn)
            }
            (_, true) if self.v6.is_none() => return Inbound::Drop(DropReason::InnerIpv6),
            _ => return Inbound::Drop(DropReason::FamilyMismatch),
        };
        let ip = ipv4::Packet::new_unchecked(&buf[inner.clone()]);
        let (src, dst) = (ip.src(), ip.dst());
        // A node never tunnels to itself; a datagram claiming our own address is forged.
        if from == self.public_ip {
            return Inbound::Drop(DropReason::Loop);
        }
        let Some(sender) = table.by_public_ip(from) else {
            return Inbound::Drop(DropReason::UnknownSender);
        };
        if sender.backend != self.format.backend() || !self.vni_matches(sender) {
            return Inbound::Drop(DropReason::WrongBackend);
        }
        match table.lookup(src) {
            Some(owner) if owner.public_ip == from => {}
            _ => return Inbound::Drop(DropReason::SpoofedSource),
        }
        if !self.subnet.is_some_and(|s| s.contains(&dst)) {
            return Inbound::Drop(DropReason::NotLocal);
        }
        if let Err(r) = ecn_decapsulate(outer_ecn, &mut buf[inner.clone()]) {
            return Inbound::Drop(r);
        }
        Inbound::Deliver(inner)
    }

    /// Like [`inbound`](Self::inbound) for a whole outer IPv4 or IPv6 datagram in `buf`
    /// (from a raw socket or a capture): checks the outer IP header (and IPv4's checksum),
    /// UDP, and the port.
    ///
    /// The outer UDP checksum is not verified: a kernel peer on a veth with default offloads
    /// leaves it partial (only the pseudo-header sum), and a UDP socket has verified it
    /// already where it matters.
    pub fn inbound_datagram(&self, table: &Snapshot, buf: &mut [u8]) -> Inbound {
        let outer = match buf.first() {
            Some(b) if b >> 4 == 6 => parse_outer6(buf, self.format.port()),
            _ => parse_outer(buf, self.format.port()).map(|(f, p, e)| (SocketAddr::V4(f), p, e)),
        };
        let (from, payload, ecn) = match outer {
            Ok(v) => v,
            Err(r) => return Inbound::Drop(r),
        };
        self.inbound(table, from, buf, payload.start, payload.len(), ecn)
    }

    /// Format-only decapsulation of a UDP payload: the inner packet's range within it.
    pub fn decap(&self, payload: &[u8]) -> Result<Range<usize>, DropReason> {
        match self.format {
            Format::Vxlan { vni, mac, .. } => {
                let mac6 = self.v6.map_or(mac, |v6| v6.mac);
                vxlan::decap_dual(payload, vni, mac, mac6)
            }
            Format::Udp { .. } => udp::decap(payload),
        }
    }

    fn vni_matches(&self, peer: &Peer) -> bool {
        match self.format {
            Format::Vxlan { vni, .. } => peer.vni == vni,
            Format::Udp { .. } => true,
        }
    }
}

/// Checks an outer IPv4+UDP datagram and returns the sender, the UDP payload range and
/// the outer ECN bits.
pub fn parse_outer(buf: &[u8], port: u16) -> Result<(SocketAddrV4, Range<usize>, u8), DropReason> {
    let ip = ipv4::Packet::new_checked(buf).map_err(|e| match e {
        crate::wire::Error::Truncated => DropReason::Truncated,
        crate::wire::Error::Malformed => DropReason::MalformedOuter,
    })?;
    if !ip.verify_checksum() {
        return Err(DropReason::MalformedOuter);
    }
    if ip.protocol() != ipv4::PROTO_UDP {
        return Err(DropReason::NotUdp);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(DropReason::OuterFragment);
    }
    let hl = ip.header_len();
    let udp = crate::wire::udp::Packet::new_checked(ip.payload()).map_err(|e| match e {
        crate::wire::Error::Truncated => DropReason::Truncated,
        crate::wire::Error::Malformed => DropReason::MalformedOuter,
    })?;
    if udp.dst_port() != port {
        return Err(DropReason::WrongPort);
    }
    let start = hl + crate::wire::udp::HEADER_LEN;
    let end = hl + udp.len() as usize;
    Ok((
        SocketAddrV4::new(ip.src(), udp.src_port()),
        start..end,
        ip.tos() & 0x03,
    ))
}

/// Whether an ICMP error may be sent about `pkt` (a checked IPv4 packet): not about an ICMP
/// error (RFC 1122 3.2.2), a non-initial fragment, or a packet whose source is not a unicast
/// host or whose destination is broadcast or multicast (RFC 1812 4.3.2.7).
pub fn may_answer_with_error(pkt: &[u8]) -> bool {
    let Ok(ip) = ipv4::Packet::new_checked(pkt) else {
        return false;
    };
    let (src, dst) = (ip.src(), ip.dst());
    if ip.frag_offset() != 0
        || src.is_unspecified()
        || src.is_broadcast()
        || src.is_multicast()
        || src.is_loopback()
        || dst.is_broadcast()
        || dst.is_multicast()
    {
        return false;
    }
    if ip.protocol() == ipv4::PROTO_ICMP {
        match ip.payload().first() {
            Some(&t) => return !icmpv4::is_error_type(t),
            None => return false,
        }
    }
    true
}

/// Writes the outer IPv4 header of an encapsulated datagram (the whole of `frame`): UDP,
/// TTL 64, DF clear, and the ECN bits of the inner packet's TOS, as kernel vxlan does.
pub(crate) fn emit_outer_ipv4(
    frame: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ip_id: u16,
    inner_tos: u8,
) {
    ipv4::Repr {
        src,
        dst,
        protocol: ipv4::PROTO_UDP,
        payload_len: frame.len() - ipv4::HEADER_LEN,
        ttl: OUTER_TTL,
        tos: ecn_encapsulate(inner_tos),
        ident: ip_id,
        dont_frag: false,
    }
    .emit(frame);
}

/// The outer ECN bits for an inner TOS byte (RFC 6040 normal mode, as Linux's
/// `INET_ECN_encapsulate`): copy ECT, and turn CE into ECT(0).
#[inline]
pub fn ecn_encapsulate(inner_tos: u8) -> u8 {
    match inner_tos & 0x03 {
        0x03 => 0x02,
        e => e,
    }
}

/// RFC 6040 decapsulation: outer CE sets CE on an ECN-capable inner packet (fixing its
/// header checksum) and condemns a not-ECT one.
pub fn ecn_decapsulate(outer_ecn: u8, inner: &mut [u8]) -> Result<(), DropReason> {
    if outer_ecn & 0x03 != 0x03 || inner.len() < ipv4::HEADER_LEN {
        return Ok(());
    }
    match inner[1] & 0x03 {
        0x00 => Err(DropReason::EcnCeNotEct),
        0x03 => Ok(()),
        _ => {
            let old = u16::from_be_bytes([inner[0], inner[1]]);
            inner[1] |= 0x03;
            let new = u16::from_be_bytes([inner[0], inner[1]]);
            let c = checksum::update_word(u16::from_be_bytes([inner[10], inner[11]]), old, new);
            inner[10..12].copy_from_slice(&c.to_be_bytes());
            Ok(())
        }
    }
}

/// A symmetric hash of the inner flow (addresses, protocol and, for the first fragment of
/// TCP/UDP/SCTP/UDP-Lite, ports), so both directions of a flow share an outer source port,
/// as the kernel's flow dissector hash does.
pub fn flow_hash(inner: &[u8], seed: u64) -> u64 {
    if inner.first().is_some_and(|b| b >> 4 == 6) {
        return flow_hash6(inner, seed);
    }
    let Ok(ip) = ipv4::Packet::new_checked(inner) else {
        return mix(seed);
    };
    let proto = ip.protocol();
    let (mut a, mut b) = (u32::from(ip.src()) as u64, u32::from(ip.dst()) as u64);
    let p = ip.payload();
    if matches!(proto, 6 | 17 | 132 | 136) && ip.frag_offset() == 0 && p.len() >= 4 {
        a = a << 16 | u16::from_be_bytes([p[0], p[1]]) as u64;
        b = b << 16 | u16::from_be_bytes([p[2], p[3]]) as u64;
    }
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    mix(mix(seed ^ lo).wrapping_add(hi) ^ (proto as u64) << 56)
}

/// [`flow_hash`] of an IPv6 packet: its addresses, next header and, for TCP, UDP, SCTP and
/// UDP-Lite right after the fixed header, its ports. Symmetric, so both directions share a
/// port (the kernel also hashes the flow label, which differs per direction).
fn flow_hash6(inner: &[u8], seed: u64) -> u64 {
    let Ok(ip) = crate::wire::ipv6::Packet::new_checked(inner) else {
        return mix(seed);
    };
    let fold = |a: std::net::Ipv6Addr| {
        let x = u128::from(a);
        mix(x as u64 ^ mix((x >> 64) as u64))
    };
    let next = ip.next_header();
    let (mut a, mut b) = (fold(ip.src()), fold(ip.dst()));
    let p = ip.payload();
    if matches!(next, 6 | 17 | 132 | 136) && p.len() >= 4 {
        a ^= u16::from_be_bytes([p[0], p[1]]) as u64;
        b ^= u16::from_be_bytes([p[2], p[3]]) as u64;
    }
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    mix(mix(seed ^ lo).wrapping_add(hi) ^ (next as u64) << 56)
}

/// The vxlan outer source port for `inner`: its flow hash scaled onto `ports`, as Linux's
/// `udp_flow_src_port` scales it onto the local port range.
pub fn flow_src_port(inner: &[u8], seed: u64, ports: SrcPorts) -> u16 {
    let h = flow_hash(inner, seed) >> 32;
    let pick = |span: u64| (h * span) >> 32;
    match ports {
        SrcPorts::Range(a, b) => {
            let (min, max) = if a <= b { (a, b) } else { (b, a) };
            min + pick((max - min) as u64 + 1) as u16
        }
        SrcPorts::Bound(set) => match set.as_slice() {
            [] => LINUX_SRC_PORTS_MIN,
            ports => ports[pick(ports.len() as u64) as usize],
        },
    }
}

/// splitmix64's finalizer: a fast, well-mixed 64-bit permutation.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const LINUX_SRC_PORTS_MIN: u16 = 32768;

/// Linux's default `net.ipv4.ip_local_port_range`, the kernel vxlan source port range.
pub const LINUX_SRC_PORTS: SrcPorts = SrcPorts::Range(LINUX_SRC_PORTS_MIN, 60999);

/// The most ports a [`PortSet`] holds.
pub const MAX_BOUND_PORTS: usize = 32;

/// Where a vxlan datagram's outer source port comes from. Either way one flow keeps one
/// port (so the receiver's RSS and every ECMP hop keep its packets in order) and different
/// flows spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrcPorts {
    /// Any port of this inclusive range, by flow hash, exactly as kernel vxlan picks it: for
    /// a sender that writes whole datagrams (a raw socket, a capture, the kernel vectors).
    Range(u16, u16),
    /// One of these ports, by flow hash: the ports of the sockets the I/O layer has bound
    /// (the kernel gave each one from its local port range), so the port the core writes
    /// is the port that goes on the wire.
    Bound(PortSet),
}

/// A small fixed set of ports (Copy, no allocation: it lives inside [`Node`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSet {
    ports: [u16; MAX_BOUND_PORTS],
    len: u8,
}

impl PortSet {
    /// The first [`MAX_BOUND_PORTS`] of `ports`.
    pub fn new(ports: &[u16]) -> PortSet {
        let mut s = PortSet {
            ports: [0; MAX_BOUND_PORTS],
            len: ports.len().min(MAX_BOUND_PORTS) as u8,
        };
        s.ports[..s.len as usize].copy_from_slice(&ports[..s.len as usize]);
        s
    }

    /// The ports.
    pub fn as_slice(&self) -> &[u16] {
        &self.ports[..self.len as usize]
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests6;
