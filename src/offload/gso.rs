//! Software segmentation of TCP super-packets over IPv4 and IPv6 (what the kernel's GSO
//! does), for the inner packets a kernel vxlan peer sends over a veth: its TSO segments
//! cross the veth whole (`SKB_GSO_UDP_TUNNEL`), a plain UDP socket hands them up as one
//! datagram, and the inner packet is then far larger than the pod MTU. Splitting it here
//! gives the pod the segments the sender meant, each with complete checksums.

use crate::encap::DropReason;
use crate::wire::{ipv4, ipv6, put16, tcp};

/// Splits the TCP/IPv4 packet `pkt` into segments carrying at most `mss` payload bytes.
/// Each segment is built in `scratch` (headers copied, then one payload slice) and passed
/// to `emit`. Per segment, as GSO does: IP total length and checksum, IP ID + index, TCP
/// sequence + offset, FIN and PSH only on the last segment, CWR only on the first, and the
/// TCP checksum computed in full. Returns the number of segments.
pub fn split_tcp4(
    pkt: &[u8],
    mss: usize,
    scratch: &mut [u8],
    emit: impl FnMut(&[u8]),
) -> Result<usize, DropReason> {
    let ip = ipv4::Packet::new_checked(pkt).map_err(|_| DropReason::MalformedInner)?;
    if ip.protocol() != ipv4::PROTO_TCP || ip.more_frags() || ip.frag_offset() != 0 {
        return Err(DropReason::MalformedInner);
    }
    let ihl = ip.header_len();
    let (src, dst, id) = (ip.src(), ip.dst(), ip.ident());
    cut(ip.payload(), &pkt[..ihl], mss, scratch, emit, |seg, i| {
        // The headers were checked in `pkt`; only lengths and counters change here.
        put16(seg, 2, seg.len() as u16); // IPv4 total length: `ipv4::Packet` has no setter
        let mut sip = ipv4::Packet::new_unchecked(&mut *seg);
        sip.set_ident(id.wrapping_add(i as u16));
        sip.fill_checksum();
        tcp::Packet::new_unchecked(&mut seg[ihl..]).fill_checksum(src, dst);
    })
}

/// [`split_tcp4`] for a TCP/IPv6 packet (TCP right after the fixed header): per segment
/// the payload length, TCP sequence and flags as GSO sets them, and the TCP checksum.
pub fn split_tcp6(
    pkt: &[u8],
    mss: usize,
    scratch: &mut [u8],
    emit: impl FnMut(&[u8]),
) -> Result<usize, DropReason> {
    let ip = ipv6::Packet::new_checked(pkt).map_err(|_| DropReason::MalformedInner)?;
    if ip.next_header() != ipv6::NEXT_TCP {
        return Err(DropReason::MalformedInner);
    }
    cut(
        ip.payload(),
        &pkt[..ipv6::HEADER_LEN],
        mss,
        scratch,
        emit,
        |seg, _| {
            put16(seg, 4, (seg.len() - ipv6::HEADER_LEN) as u16);
            ipv6::fill_transport_checksum(seg);
        },
    )
}

/// Cuts the TCP segment `l4` behind the IP header `ip` into segments of at most `mss`
/// payload bytes, each built in `scratch` with its sequence number and flags as GSO sets
/// them, then `finish(segment, index)` for the IP header and checksums, then `emit`.
fn cut(
    l4: &[u8],
    ip: &[u8],
    mss: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
    mut finish: impl FnMut(&mut [u8], usize),
) -> Result<usize, DropReason> {
    let tcp = tcp::Packet::new_checked(l4).map_err(|_| {
        // Shorter than a bare TCP header: truncated; a data offset below 20 or past the
        // segment: malformed.
        if l4.len() < tcp::HEADER_LEN {
            DropReason::Truncated
        } else {
            DropReason::MalformedInner
        }
    })?;
    let (ihl, thl) = (ip.len(), tcp.header_len());
    let hdrs = ihl + thl;
    if mss == 0 || scratch.len() < hdrs + mss {
        return Err(DropReason::NoRoom);
    }
    let (seq0, flags) = (tcp.seq_number(), tcp.flags());
    let payload = tcp.payload();
    let n = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload
        .chunks(mss)
        .chain((payload.is_empty()).then_some(&[][..]))
        .enumerate()
    {
        let seg = &mut scratch[..hdrs + chunk.len()];
        seg[..ihl].copy_from_slice(ip);
        seg[ihl..hdrs].copy_from_slice(&l4[..thl]);
        seg[hdrs..].copy_from_slice(chunk);
        let mut t = tcp::Packet::new_unchecked(&mut seg[ihl..]);
        t.set_seq_number(seq0.wrapping_add((i * mss) as u32));
        let mut f = flags;
        if i + 1 < n {
            f &= !(tcp::FLAG_FIN | tcp::FLAG_PSH);
        }
        if i > 0 {
            f &= !tcp::FLAG_CWR;
        }
        t.set_flags(f);
        finish(seg, i);
        emit(seg);
    }
    Ok(n)
}

/// Cuts one TUN read (its virtio-net header `vhdr`, then `pkt`) into the packets it holds,
/// each copied to `bufs[i][offset..]` with its length in `sizes[i]`, as tun-rs's
/// `recv_multiple` does after its own read: a plain packet is finished (its partial
/// checksum completed) and copied; a GSO super-packet is validated as tun-rs validates it
/// (the header length re-derived from the TCP header, the checksum field inside the
/// packet) and split by tun-rs's `gso_split`. Returns how many packets were written.
pub fn split_read(
    vhdr: &[u8],
    pkt: &mut [u8],
    bufs: &mut [Vec<u8>],
    sizes: &mut [usize],
    offset: usize,
) -> std::io::Result<usize> {
    use std::io::{Error, ErrorKind};
    let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_string());
    let h = crate::wire::virtio_net::Repr::parse(
        &crate::wire::virtio_net::Packet::new_checked(vhdr)
            .map_err(|_| bad("short virtio-net header"))?,
    );
    let len = pkt.len();
    if h.gso_type == crate::wire::virtio_net::VIRTIO_NET_HDR_GSO_NONE {
        if h.flags & crate::wire::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
            && !crate::offload::gro::complete_checksum(pkt, &h)
        {
            return Err(bad("checksum field outside the packet"));
        }
        let out = bufs
            .first_mut()
            .and_then(|b| b.get_mut(offset..offset + len))
            .ok_or_else(|| bad("packet larger than the buffer"))?;
        out.copy_from_slice(pkt);
        sizes[0] = len;
        return Ok(1);
    }
    if h.gso_size == 0 {
        return Err(bad("GSO size 0"));
    }
    let is_v6 = match pkt.first().map(|b| b >> 4) {
        Some(4) => false,
        Some(6) => true,
        _ => return Err(bad("GSO packet neither IPv4 nor IPv6")),
    };
    let cs = h.csum_start as usize;
    let hdr_len = match h.gso_type & !crate::wire::virtio_net::VIRTIO_NET_HDR_GSO_ECN {
        crate::wire::virtio_net::VIRTIO_NET_HDR_GSO_TCPV4
        | crate::wire::virtio_net::VIRTIO_NET_HDR_GSO_TCPV6 => {
            let thl = (*pkt.get(cs + 12).ok_or_else(|| bad("short TCP header"))? >> 4) as usize * 4;
            if !(20..=60).contains(&thl) {
                return Err(bad("bad TCP header length"));
            }
            cs + thl
        }
        crate::wire::virtio_net::VIRTIO_NET_HDR_GSO_UDP_L4 => cs + 8,
        _ => return Err(bad("unknown GSO type")),
    };
    if len < hdr_len || cs + h.csum_offset as usize + 2 > len {
        return Err(bad("GSO headers past the packet"));
    }
    let hdr = tun_rs::VirtioNetHdr {
        flags: h.flags,
        gso_type: h.gso_type,
        hdr_len: hdr_len as u16,
        gso_size: h.gso_size,
        csum_start: h.csum_start,
        csum_offset: h.csum_offset,
    };
    tun_rs::gso_split(pkt, hdr, bufs, sizes, offset, is_v6)
}

/// The MSS that makes TCP segments of `pkt` (IPv4, or IPv6 with no extension header) fit
/// `mtu`, from its own header lengths. Only the IP header and the TCP data offset are read
/// (neither the protocol nor the TCP header is validated): [`split_tcp4`] and
/// [`split_tcp6`] check the rest.
pub fn mss_for(pkt: &[u8], mtu: usize) -> Option<usize> {
    let (ihl, thl) = if pkt.first()? >> 4 == 6 {
        let ip = ipv6::Packet::new_checked(pkt).ok()?;
        (ipv6::HEADER_LEN, tcp::claimed_header_len(ip.payload())?)
    } else {
        let ip = ipv4::Packet::new_checked(pkt).ok()?;
        (ip.header_len(), tcp::claimed_header_len(ip.payload())?)
    };
    mtu.checked_sub(ihl + thl).filter(|&m| m > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_tcp(payload: usize, flags: (bool, bool, bool)) -> Vec<u8> {
        let mut b = etherparse::PacketBuilder::ipv4([10, 244, 200, 11], [10, 244, 70, 11], 64)
            .tcp(54388, 5201, 4_294_967_000, 500) // sequence wraps during the split
            .ack(77);
        if flags.0 {
            b = b.fin();
        }
        if flags.1 {
            b = b.psh();
        }
        if flags.2 {
            b = b.cwr();
        }
        let data: Vec<u8> = (0..payload).map(|i| (i * 13 + 5) as u8).collect();
        let mut v = Vec::new();
        b.write(&mut v, &data).unwrap();
        v
    }

    #[test]
    fn splits_like_gso_with_valid_checksums() {
        let pkt = big_tcp(6990, (true, true, true));
        let mss = mss_for(&pkt, 1450).unwrap();
        assert_eq!(mss, 1410);
        let mut scratch = vec![0u8; 2048];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = split_tcp4(&pkt, mss, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, 5);
        let mut data = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(s.len() <= 1450);
            let p = etherparse::SlicedPacket::from_ip(s).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                panic!()
            };
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert_eq!(
                h.identification,
                ipv4::Packet::new_checked(&pkt[..])
                    .unwrap()
                    .ident()
                    .wrapping_add(i as u16)
            );
            let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
                panic!()
            };
            let th = t.to_header();
            assert_eq!(th.checksum, th.calc_checksum_ipv4(&h, t.payload()).unwrap());
            assert_eq!(
                th.sequence_number,
                4_294_967_000u32.wrapping_add((i * mss) as u32)
            );
            let last = i == n - 1;
            assert_eq!(
                (th.fin, th.psh, th.cwr),
                (last, last, i == 0),
                "segment {i}"
            );
            assert_eq!(th.acknowledgment_number, 77);
            data.extend_from_slice(t.payload());
        }
        assert_eq!(&data[..], &pkt[40..]);
    }

    #[test]
    fn small_and_empty_packets_pass_as_one_segment() {
        for len in [0usize, 1, 1410] {
            let pkt = big_tcp(len, (false, true, false));
            let mut scratch = vec![0u8; 2048];
            let mut segs = Vec::new();
            assert_eq!(
                split_tcp4(&pkt, 1410, &mut scratch, |s| segs.push(s.to_vec())).unwrap(),
                1
            );
            assert_eq!(segs[0], pkt, "len {len}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_split() {
        let mut scratch = vec![0u8; 64];
        let pkt = big_tcp(3000, (false, false, false));
        assert_eq!(
            split_tcp4(&pkt, 1410, &mut scratch, |_| {}),
            Err(DropReason::NoRoom)
        );
        assert_eq!(
            split_tcp4(&pkt, 0, &mut [0u8; 4096], |_| {}),
            Err(DropReason::NoRoom)
        );
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 5)
            .udp(1, 2)
            .write(&mut udp, &[0; 3000])
            .unwrap();
        assert_eq!(
            split_tcp4(&udp, 1400, &mut [0u8; 4096], |_| {}),
            Err(DropReason::MalformedInner)
        );
        for cut in [0, 10, 25, 45] {
            assert!(split_tcp4(&pkt[..cut], 1400, &mut [0u8; 4096], |_| {}).is_err());
        }
    }

    /// A TCP/IPv6 super-packet, as a peer's TSO sends it on a TUN without offloads: cut as
    /// GSO cuts it, payload lengths and TCP checksums right (etherparse's reading).
    #[test]
    fn splits_tcp6_like_gso_with_valid_checksums() {
        let src = [0xfd, 0, 0, 0x10, 0x2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut dst = src;
        dst[7] = 2;
        let data: Vec<u8> = (0..5000).map(|i| (i * 7 + 3) as u8).collect();
        let mut pkt = Vec::new();
        etherparse::PacketBuilder::ipv6(src, dst, 64)
            .tcp(40000, 5201, u32::MAX - 100, 500)
            .ack(9)
            .psh()
            .write(&mut pkt, &data)
            .unwrap();
        let mss = mss_for(&pkt, 1450).unwrap();
        assert_eq!(mss, 1450 - 60);
        let (mut scratch, mut segs) = (vec![0u8; 2048], Vec::<Vec<u8>>::new());
        let n = split_tcp6(&pkt, mss, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, 4);
        let mut got = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(s.len() <= 1450);
            let p = etherparse::SlicedPacket::from_ip(s).unwrap();
            let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
                panic!()
            };
            let h = ip.header().to_header();
            assert_eq!(h.payload_length as usize, s.len() - 40);
            let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
                panic!()
            };
            let th = t.to_header();
            assert_eq!(th.checksum, th.calc_checksum_ipv6(&h, t.payload()).unwrap());
            assert_eq!(
                th.sequence_number,
                (u32::MAX - 100).wrapping_add((i * mss) as u32)
            );
            assert_eq!(th.psh, i == n - 1, "segment {i}");
            got.extend_from_slice(t.payload());
        }
        assert_eq!(got, data);
        // Not TCP right after the fixed header: refused, not cut.
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ipv6(src, dst, 64)
            .udp(1, 2)
            .write(&mut udp, &[0; 3000])
            .unwrap();
        assert_eq!(
            split_tcp6(&udp, 1400, &mut [0u8; 4096], |_| {}),
            Err(DropReason::MalformedInner)
        );
    }
}
