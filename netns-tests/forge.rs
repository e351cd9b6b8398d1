//! Forged VXLAN for the reliability tests, built here byte by byte (not with weft's
//! encapsulation): `forge OUTER_SRC DST VNI DST_MAC SRC_MAC INNER_SRC INNER_DST COUNT` sends
//! COUNT well-formed VXLAN frames (UDP to DST:8472, UDP checksum 0 as Linux vxlan sends
//! them) from OUTER_SRC, which may be any address (a raw socket writes the outer IPv4
//! header), each carrying an Ethernet frame from SRC_MAC to DST_MAC with an ICMP echo
//! request from INNER_SRC to INNER_DST. Prints `sent N frames`. Run it inside a test's
//! namespace (`ip netns exec`).

use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC aa:bb:cc:dd:ee:ff"))
        .collect();
    v.try_into().expect("MAC of six bytes")
}

/// The Internet checksum (RFC 1071) of `data`.
fn csum(data: &[u8]) -> u16 {
    let mut s: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 9 {
        eprintln!("usage: forge OUTER_SRC DST VNI DST_MAC SRC_MAC INNER_SRC INNER_DST COUNT");
        std::process::exit(2);
    }
    let outer_src: Ipv4Addr = a[1].parse().expect("OUTER_SRC");
    let dst: Ipv4Addr = a[2].parse().expect("DST");
    let vni: u32 = a[3].parse().expect("VNI");
    let (dmac, smac) = (mac(&a[4]), mac(&a[5]));
    let inner_src: Ipv4Addr = a[6].parse().expect("INNER_SRC");
    let inner_dst: Ipv4Addr = a[7].parse().expect("INNER_DST");
    let count: u16 = a[8].parse().expect("COUNT");
    // IPPROTO_RAW: the kernel sends the IPv4 header as written (filling in nothing but
    // the checksum and ID where they are zero).
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))
        .expect("raw socket (run as root)");
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    let mut sent = 0u32;
    for seq in 1..=count {
        let mut icmp = vec![8, 0, 0, 0, 0x77, 0x65, 0, 0];
        icmp[6..8].copy_from_slice(&seq.to_be_bytes());
        icmp.extend_from_slice(b"forged by the weft reliability test");
        let c = csum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let inner = ipv4(inner_src, inner_dst, 1, seq, &icmp);
        let mut frame = Vec::with_capacity(8 + 14 + inner.len());
        frame.extend_from_slice(&[0x08, 0, 0, 0]);
        frame.extend_from_slice(&(vni << 8).to_be_bytes());
        frame.extend_from_slice(&dmac);
        frame.extend_from_slice(&smac);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&inner);
        let mut udp = Vec::with_capacity(8 + frame.len());
        udp.extend_from_slice(&(40000 + seq % 20000).to_be_bytes());
        udp.extend_from_slice(&8472u16.to_be_bytes());
        udp.extend_from_slice(&((8 + frame.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&frame);
        let outer = ipv4(outer_src, dst, 17, seq, &udp);
        if sock.send_to(&outer, &to).is_ok() {
            sent += 1;
        }
    }
    println!("sent {sent} frames");
}
