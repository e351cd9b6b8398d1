//! Software segmentation of TCP/IPv4 super-packets (what the kernel's GSO does), for the
//! inner packets a kernel vxlan peer sends over a veth: its TSO segments cross the veth
//! whole (`SKB_GSO_UDP_TUNNEL`), a plain UDP socket hands them up as one datagram, and the
//! inner packet is then far larger than the pod MTU. Splitting it here gives the pod the
//! segments the sender meant, each with complete checksums.

use crate::encap::DropReason;
use crate::wire::{ipv4, put16, tcp};

/// Splits the TCP/IPv4 packet `pkt` into segments carrying at most `mss` payload bytes.
/// Each segment is built in `scratch` (headers copied, then one payload slice) and passed
/// to `emit`. Per segment, as GSO does: IP total length and checksum, IP ID + index, TCP
/// sequence + offset, FIN and PSH only on the last segment, CWR only on the first, and the
/// TCP checksum computed in full. Returns the number of segments.
pub fn split_tcp4(
    pkt: &[u8],
    mss: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, DropReason> {
    let ip = ipv4::Packet::new_checked(pkt).map_err(|_| DropReason::MalformedInner)?;
    if ip.protocol() != ipv4::PROTO_TCP || ip.more_frags() || ip.frag_offset() != 0 {
        return Err(DropReason::MalformedInner);
    }
    let ihl = ip.header_len();
    let l4 = ip.payload();
    let tcp = tcp::Packet::new_checked(l4).map_err(|_| {
        // Shorter than a bare TCP header: truncated; a data offset below 20 or past the
        // segment: malformed.
        if l4.len() < tcp::HEADER_LEN {
            DropReason::Truncated
        } else {
            DropReason::MalformedInner
        }
    })?;
    let thl = tcp.header_len();
    let hdrs = ihl + thl;
    if mss == 0 || scratch.len() < hdrs + mss {
        return Err(DropReason::NoRoom);
    }
    let (src, dst) = (ip.src(), ip.dst());
    let (id, seq0, flags) = (ip.ident(), tcp.seq_number(), tcp.flags());
    let payload = tcp.payload();
    let n = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload
        .chunks(mss)
        .chain((payload.is_empty()).then_some(&[][..]))
        .enumerate()
    {
        let len = hdrs + chunk.len();
        let seg = &mut scratch[..len];
        seg[..hdrs].copy_from_slice(&pkt[..hdrs]);
        seg[hdrs..].copy_from_slice(chunk);
        // The headers were checked in `pkt`; only lengths and counters change below.
        put16(seg, 2, len as u16); // IPv4 total length: `ipv4::Packet` has no setter
        let mut sip = ipv4::Packet::new_unchecked(&mut *seg);
        sip.set_ident(id.wrapping_add(i as u16));
        sip.fill_checksum();
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
        t.fill_checksum(src, dst);
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

/// The MSS that makes TCP/IPv4 segments of `pkt` fit `mtu`, from its own header lengths.
/// Only the IPv4 header and the TCP data offset are read (neither the protocol nor the TCP
/// header is validated): [`split_tcp4`] checks the rest.
pub fn mss_for(pkt: &[u8], mtu: usize) -> Option<usize> {
    let ip = ipv4::Packet::new_checked(pkt).ok()?;
    let thl = tcp::claimed_header_len(ip.payload())?;
    mtu.checked_sub(ip.header_len() + thl).filter(|&m| m > 0)
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
}
