//! The virtio-net header for an IPv6 pod packet written to an offloading TUN: what lets
//! the kernel finish the L4 checksum a kernel peer left partial, and cut a peer's TCP
//! super-packet at our MSS. One packet per write: IPv6 segments are not coalesced
//! ([`super::gro::Coalescer`] merges TCP/IPv4 only).

use crate::wire::virtio_net::{
    self, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV6,
};
use crate::wire::{checksum, ipv6, put16, tcp};

/// Prepares the IPv6 packet `pkt` (a checked one, as decapsulation returns it) for a TUN
/// write and returns its header: a TCP or UDP packet right after the fixed header gets its
/// checksum set to the pseudo-header sum and `NEEDS_CSUM`; a TCP packet longer than `mtu`
/// also GSO at `mtu`'s MSS. `None` when it is longer than `mtu` and cannot be segmented
/// (not TCP, or behind extension headers): the caller drops it.
pub fn tun_header(pkt: &mut [u8], mtu: usize) -> Option<virtio_net::Repr> {
    let ip = ipv6::Packet::new_checked(&*pkt).ok()?;
    let (src, dst, next) = (ip.src(), ip.dst(), ip.next_header());
    let end = ip.packet().len();
    let l4 = &mut pkt[ipv6::HEADER_LEN..end];
    let off = match next {
        ipv6::NEXT_TCP if l4.len() >= tcp::HEADER_LEN => tcp::CHECKSUM_OFFSET,
        ipv6::NEXT_UDP if l4.len() >= 8 => 6,
        _ if end <= mtu => return Some(virtio_net::Repr::default()),
        _ => return None,
    };
    let mut hdr = virtio_net::Repr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: ipv6::HEADER_LEN as u16,
        csum_offset: off as u16,
    };
    if end > mtu {
        let thl = tcp::claimed_header_len(l4).filter(|_| next == ipv6::NEXT_TCP)?;
        let mss = mtu.checked_sub(ipv6::HEADER_LEN + thl).filter(|&m| m > 0)?;
        if thl < tcp::HEADER_LEN || thl > l4.len() || mss > u16::MAX as usize {
            return None;
        }
        hdr.gso_type = VIRTIO_NET_HDR_GSO_TCPV6;
        hdr.hdr_len = (ipv6::HEADER_LEN + thl) as u16;
        hdr.gso_size = mss as u16;
    }
    let ph = checksum::pseudo_header_v6(src, dst, next, l4.len() as u32);
    put16(l4, off, checksum::fold(ph));
    Some(hdr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::gro::complete_checksum;

    fn packet(tcp: bool, payload: usize) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv6(
            [0xfd, 0, 0x10, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            [0xfd, 0, 0x10, 0x44, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            64,
        );
        let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 3) as u8).collect();
        let mut v = Vec::new();
        if tcp {
            b.tcp(40000, 5201, 1, 500)
                .ack(9)
                .write(&mut v, &data)
                .unwrap();
        } else {
            b.udp(40000, 5201).write(&mut v, &data).unwrap();
        }
        v
    }

    #[test]
    fn a_partial_checksum_comes_out_whole_once_the_kernel_finishes_it() {
        for tcp in [true, false] {
            let good = packet(tcp, 300);
            let mut p = good.clone();
            // What a kernel peer on a veth sends: only the pseudo-header sum.
            let at = ipv6::HEADER_LEN + if tcp { 16 } else { 6 };
            p[at..at + 2].copy_from_slice(&[0x12, 0x34]);
            let h = tun_header(&mut p, 1430).unwrap();
            assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_NONE);
            assert!(complete_checksum(&mut p, &h));
            assert_eq!(p, good, "tcp={tcp}");
        }
    }

    #[test]
    fn an_oversized_tcp_packet_is_cut_at_our_mss_and_anything_else_oversized_refused() {
        let mut p = packet(true, 4000);
        let h = tun_header(&mut p, 1430).unwrap();
        assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!(h.hdr_len, 60);
        assert_eq!(h.gso_size, 1430 - 60);
        assert!(tun_header(&mut packet(false, 4000), 1430).is_none());
        let mut icmp = packet(false, 100);
        icmp[6] = ipv6::NEXT_ICMPV6;
        assert_eq!(
            tun_header(&mut icmp, 1430),
            Some(virtio_net::Repr::default())
        );
    }
}
