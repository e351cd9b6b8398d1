//! flannel's udp backend format (`pkg/backend/udp/proxy_amd64.c`): the UDP payload is the
//! raw inner IPv4 packet, no header of its own; source and destination port are both the
//! backend port (8285).

use std::net::Ipv4Addr;
use std::ops::Range;

use super::{emit_outer_ipv4, DropReason, UDP_OVERHEAD};
use crate::wire::udp::ChecksumMode;
use crate::wire::{ipv4, udp};

/// flannel's default udp backend port.
pub const PORT_FLANNEL: u16 = 8285;

/// Writes outer IPv4 + UDP into `frame[..28]`; the inner packet (at least 2 bytes) must
/// already be at `frame[28..]`.
///
/// # Panics
/// If `frame` is shorter than 30 bytes or longer than 65535 (caller bugs, never wire input).
pub fn emit(
    frame: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    ip_id: u16,
    csum: ChecksumMode,
) {
    let inner_tos = frame[UDP_OVERHEAD + 1];
    udp::Repr {
        src_port: port,
        dst_port: port,
    }
    .emit(&mut frame[ipv4::HEADER_LEN..], src, dst, csum);
    emit_outer_ipv4(frame, src, dst, ip_id, inner_tos);
}

/// Validates a udp-backend payload: exactly one well-formed IPv4 packet (flannel's proxy
/// writes anything of 20 bytes or more into the TUN; weft checks the header, its checksum,
/// and that the packet fills the datagram).
pub fn decap(payload: &[u8]) -> Result<Range<usize>, DropReason> {
    match payload.first() {
        None => return Err(DropReason::Truncated),
        Some(b) if b >> 4 == 6 => return Err(DropReason::InnerIpv6),
        _ => {}
    }
    let ip = ipv4::Packet::new_checked(payload).map_err(|e| match e {
        crate::wire::Error::Truncated => DropReason::Truncated,
        crate::wire::Error::Malformed => DropReason::MalformedInner,
    })?;
    if ip.total_len() as usize != payload.len() {
        return Err(DropReason::MalformedInner);
    }
    if !ip.verify_checksum() {
        return Err(DropReason::InnerChecksum);
    }
    Ok(0..payload.len())
}
