//! The TUN side of a worker: read the TUN (one read may be a 64 KB TSO packet), and either
//! - hand a TSO super-packet to the kernel whole: encapsulated once, in
//!   place, and written to the injection TAP for the kernel's UDP-tunnel GSO
//!   ([`crate::offload::tunnel`], [`super::inject`]), when its peer takes super-datagrams
//!   ([`crate::lease::Peer::super_datagrams`]: a veth or bridge underlay delivers the
//!   frame as one datagram, which flanneld's udp proxy would truncate); or
//! - split it into segments ([`crate::offload::gso::split_read`], tun-rs's split),
//!   encapsulate each in place, and send the datagrams in `UDP_SEGMENT` runs
//!   ([`super::tx::gso_runs`]), each from the socket bound to the source port the core
//!   chose and with the TOS it chose.

use std::io::{self, ErrorKind, IoSlice};
use std::ops::Range;

use tun_rs::VIRTIO_NET_HDR_LEN;

use super::counters::WorkerCounters;
use super::sys;
use super::tx::{gso_runs, Pending, MAX_GSO_SEGMENTS};
use super::worker::{Drained, Worker, MAX_PACKET, READS_PER_ROUND};
use crate::encap::{DropReason, Outbound, HEADROOM, VXLAN_OVERHEAD};
use crate::offload::{gso, tunnel};

/// Segments per TUN read batch (tun-rs's IDEAL_BATCH_SIZE).
const BATCH: usize = 128;
/// Segment buffers one TUN read may fill (64 KB at the smallest useful MSS, with margin).
const SEGMENTS_PER_READ: usize = 64;
/// Where a raw TUN read puts its packet: room before it for the virtio-net header it comes
/// with, and for the tunnel header, Ethernet and outer headers a whole super-packet gets.
const RAW_AT: usize = 128;
const _: () = assert!(
    RAW_AT >= tunnel::PREFIX + VXLAN_OVERHEAD
        && RAW_AT >= tunnel::PREFIX + crate::encap::VXLAN6_OVERHEAD
        && RAW_AT >= VIRTIO_NET_HDR_LEN
);

/// What one TUN read gave.
enum Read {
    /// This many packets, cut into the segment buffers.
    Segments(usize),
    /// A TSO super-packet that can leave whole, in the raw buffer up to this end.
    Whole(tunnel::Tso, usize),
}

/// The TUN side's buffers, allocated once.
pub(super) struct TxBuffers {
    /// Raw TUN reads: the virtio-net header ends and the packet starts at [`RAW_AT`].
    raw: Vec<u8>,
    /// Segments from TUN reads, each at HEADROOM.
    tx: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Encapsulated datagrams waiting to be sent.
    sends: Vec<Pending>,
}

impl TxBuffers {
    pub(super) fn new() -> TxBuffers {
        TxBuffers {
            raw: vec![0; RAW_AT + MAX_PACKET],
            tx: (0..BATCH).map(|_| vec![0; HEADROOM + MAX_PACKET]).collect(),
            sizes: vec![0; BATCH],
            sends: Vec::with_capacity(BATCH),
        }
    }
}

/// Errors that mean the TUN device no longer exists (its queue was detached).
fn tun_is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::EIO)
    )
}

impl Worker {
    /// Reads from the TUN into the free segment buffers, encapsulating as it goes, and sends
    /// what it gathered when the buffers run low, the TUN is drained, or the round ends: so
    /// datagrams from several reads (a UDP flood, say) still leave in one GSO send.
    pub(super) fn tun_to_underlay(&mut self, b: &mut TxBuffers) -> Drained {
        let counters = self.counters.clone();
        let c = &*counters;
        let mut used = 0;
        let mut drained = false;
        for _ in 0..READS_PER_ROUND {
            if BATCH - used < SEGMENTS_PER_READ {
                self.flush_sends(b);
                used = 0;
            }
            let n = match self.read_tun(b, used) {
                Ok(Read::Segments(n)) => n,
                Ok(Read::Whole(tso, end)) => {
                    // What is waiting may belong to the same flow: it leaves first.
                    self.flush_sends(b);
                    used = 0;
                    if self.send_whole(b, end, &tso) {
                        continue;
                    }
                    match self.split_raw(b, end, used) {
                        Ok(n) => n,
                        Err(_) => {
                            c.drop(DropReason::MalformedInner);
                            continue;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // The device is gone (deleted under us): stop reading it, say so once,
                // and let the daemon recreate it. Reading on would spin: every read fails
                // at once and poll keeps reporting the descriptor.
                Err(e) if tun_is_gone(&e) => {
                    if !self
                        .tun_dead
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!("TUN read failed ({e}): the device is gone");
                    }
                    drained = true;
                    break;
                }
                // A super-packet tun-rs could not split (bad virtio-net header): drop it.
                Err(_) => {
                    c.drop(DropReason::MalformedInner);
                    continue;
                }
            };
            let snap = self.table.load();
            for i in used..used + n {
                self.ip_id = self.ip_id.wrapping_add(1);
                let len = b.sizes[i];
                match self
                    .node
                    .outbound(&snap, &mut b.tx[i], HEADROOM, len, self.ip_id)
                {
                    Outbound::Send(t) => {
                        WorkerCounters::add(&c.tx_packets, 1);
                        WorkerCounters::add(&c.tx_bytes, len as u64);
                        b.sends.push(Pending::new(i, &t));
                    }
                    Outbound::Reply { packet, reason } => {
                        c.drop(reason);
                        self.reply(&mut b.tx[i], packet, c);
                    }
                    Outbound::Drop(r) => c.drop(r),
                    // Only outbound_super splits; a segment never gets here.
                    Outbound::Split => c.drop(DropReason::MalformedInner),
                }
            }
            used += n;
        }
        self.flush_sends(b);
        drained
    }

    /// One TUN read into the raw buffer (with offloads) or straight into the next segment
    /// buffer (without). A TSO super-packet that the injection TAP can take whole, and
    /// whose segments fit the MTU, comes back as [`Read::Whole`]; the rest is cut.
    fn read_tun(&mut self, b: &mut TxBuffers, used: usize) -> io::Result<Read> {
        if !self.offloads.tun {
            let n = self.tun.recv(&mut b.tx[used][HEADROOM..])?;
            b.sizes[used] = n;
            return Ok(Read::Segments(1));
        }
        let n = self.tun.recv(&mut b.raw[RAW_AT - VIRTIO_NET_HDR_LEN..])?;
        let end = RAW_AT - VIRTIO_NET_HDR_LEN + n;
        if n <= VIRTIO_NET_HDR_LEN {
            return Err(io::Error::new(ErrorKind::InvalidData, "short TUN read"));
        }
        if let Some(inj) = &self.inject {
            let v6_ok = inj.v6.load(std::sync::atomic::Ordering::Relaxed);
            let (vh, pkt) = (
                &b.raw[RAW_AT - VIRTIO_NET_HDR_LEN..RAW_AT],
                &b.raw[RAW_AT..end],
            );
            if let Some(tso) = tunnel::tso_read(vh, pkt) {
                let mtu = match (tso.v6, self.node.v6) {
                    (true, Some(v6)) if v6_ok => v6.mtu,
                    (true, _) => 0,
                    (false, _) => self.node.mtu,
                };
                if tso.segment_len() <= mtu {
                    return Ok(Read::Whole(tso, end));
                }
            }
        }
        self.split_raw(b, end, used).map(Read::Segments)
    }

    /// Cuts the raw read ending at `end` into the segment buffers from `used` on.
    fn split_raw(&self, b: &mut TxBuffers, end: usize, used: usize) -> io::Result<usize> {
        let (vh, pkt) = b.raw[RAW_AT - VIRTIO_NET_HDR_LEN..end].split_at_mut(VIRTIO_NET_HDR_LEN);
        gso::split_read(vh, pkt, &mut b.tx[used..], &mut b.sizes[used..], HEADROOM)
    }

    /// Encapsulates the super-packet in the raw buffer once and writes it to the injection
    /// TAP for the kernel to segment. True when it is dealt with (sent, answered or
    /// dropped); false when the caller must split it: its peer cannot take it whole
    /// ([`Outbound::Split`]), or the TAP refused it, and from then on this worker splits in
    /// userspace again. Either way the raw buffer holds the read as it came, virtio-net
    /// header included.
    fn send_whole(&mut self, b: &mut TxBuffers, end: usize, tso: &tunnel::Tso) -> bool {
        let counters = self.counters.clone();
        let c = &*counters;
        let len = end - RAW_AT;
        let ip_id = self.ip_id.wrapping_add(1);
        let snap = self.table.load();
        // The outer headers and the tunnel header overwrite the read's virtio-net header,
        // which a split after all still needs.
        let mut vh = [0u8; VIRTIO_NET_HDR_LEN];
        vh.copy_from_slice(&b.raw[RAW_AT - VIRTIO_NET_HDR_LEN..RAW_AT]);
        let outcome =
            self.node
                .outbound_super(&snap, &mut b.raw, RAW_AT, len, ip_id, tso.segment_len());
        let sent = match outcome {
            Outbound::Send(t) => self.inject_whole(b, t.datagram, len, ip_id, tso),
            Outbound::Split => false,
            Outbound::Reply { packet, reason } => {
                self.ip_id = ip_id;
                c.drop(reason);
                self.reply(&mut b.raw, packet, c);
                true
            }
            Outbound::Drop(r) => {
                c.drop(r);
                true
            }
        };
        if !sent {
            b.raw[RAW_AT - VIRTIO_NET_HDR_LEN..RAW_AT].copy_from_slice(&vh);
        }
        sent
    }

    /// Writes the encapsulated super-packet (`datagram` in the raw buffer, `len` inner
    /// bytes) to the injection TAP behind its tunnel header. False when it did not go.
    fn inject_whole(
        &mut self,
        b: &mut TxBuffers,
        datagram: Range<usize>,
        len: usize,
        ip_id: u16,
        tso: &tunnel::Tso,
    ) -> bool {
        let c = &*self.counters;
        let Some(inj) = self.inject.as_mut() else {
            return false;
        };
        let Some(frame) = tunnel::frame(&mut b.raw, datagram, RAW_AT, tso, inj.mac) else {
            return false;
        };
        match inj.write(&b.raw[frame]) {
            Ok(_) => {
                // The kernel numbers the segments' outer IP IDs from ours on.
                self.ip_id = ip_id.wrapping_add(tso.segments as u16 - 1);
                WorkerCounters::add(&c.tx_packets, tso.segments as u64);
                WorkerCounters::add(&c.tx_bytes, len as u64);
                WorkerCounters::add(&c.tunnel_gso_frames, 1);
                true
            }
            Err(e) => {
                tracing::warn!(
                    "the injection TAP refused a tunnel GSO frame ({e}); this worker \
                             splits super-packets in userspace from now on"
                );
                self.inject = None;
                false
            }
        }
    }

    /// Writes the ICMP error the core built at `buf[packet]` back to the TUN, unless the
    /// node's ICMP rate limit (the kernel's, [`crate::encap::ratelimit`]) says no: a storm
    /// of packets to a subnet nobody leases gets a few errors a second, not one each.
    fn reply(&mut self, buf: &mut [u8], packet: Range<usize>, c: &WorkerCounters) {
        let (to, frag_needed) = error_destination(&buf[packet.clone()]);
        let now = self.clock.elapsed().as_nanos() as u64;
        let allowed = frag_needed
            || self
                .icmp_limit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .allow(to, now);
        if !allowed {
            WorkerCounters::add(&c.icmp_ratelimited, 1);
            return;
        }
        match self.write_tun_one(buf, packet) {
            Ok(_) => WorkerCounters::add(&c.icmp_sent, 1),
            Err(_) => WorkerCounters::add(&c.tun_write_errors, 1),
        }
    }

    /// Writes one packet at `buf[r]` to the TUN, with a zero virtio-net header in front of
    /// it when the TUN has one (the headroom always leaves room for it).
    fn write_tun_one(&self, buf: &mut [u8], r: Range<usize>) -> io::Result<usize> {
        if self.offloads.tun && r.start >= VIRTIO_NET_HDR_LEN {
            let s = r.start - VIRTIO_NET_HDR_LEN;
            buf[s..r.start].fill(0);
            self.tun.send(&buf[s..r.end])
        } else {
            self.tun.send(&buf[r])
        }
    }

    /// Sends the encapsulated datagrams, one `sendmsg` per run that [`gso_runs`] finds
    /// (with `UDP_SEGMENT` when a run has more than one), each from the socket bound to
    /// the source port the core chose and with the TOS byte it chose.
    fn flush_sends(&mut self, b: &mut TxBuffers) {
        let counters = self.counters.clone();
        let c = &*counters;
        let mut iov = [IoSlice::new(&[]); MAX_GSO_SEGMENTS];
        let mut runs = gso_runs(&b.sends, self.offloads.gso);
        while let Some(run) = runs.next() {
            let first = &b.sends[run.start];
            let (dst, tos) = (first.dst, first.tos);
            let v6 = dst.is_ipv6();
            let own = match (&self.sock6, v6) {
                (Some(s6), true) => s6,
                _ => &self.sock,
            };
            let sock = self.src_ports.socket(first.src_port, v6).unwrap_or(own);
            for (slot, p) in iov.iter_mut().zip(&b.sends[run.clone()]) {
                *slot = IoSlice::new(&b.tx[p.buf][p.payload.clone()]);
            }
            let group = &iov[..run.len()];
            let gso = (group.len() > 1).then_some(first.payload.len() as u16);
            match sys::send_segments(sock, dst, group, gso, tos) {
                Ok(_) => {}
                Err(e)
                    if gso.is_some()
                        && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
                {
                    // No checksum offload on the route, or a kernel that refuses: fall back
                    // to one datagram per send for good, and say so once.
                    tracing::warn!(
                        "UDP GSO refused by the kernel ({e}); sending one datagram per syscall"
                    );
                    self.offloads.gso = false;
                    runs = gso_runs(&b.sends, false);
                    runs.skip_to(run.start);
                }
                Err(e) => {
                    if self.send_errors.first(e.kind()) {
                        tracing::warn!(%dst, error = %e, "underlay send failed (counted in weft_send_errors_total; logged once per kind of error)");
                    }
                    WorkerCounters::add(&c.send_errors, group.len() as u64)
                }
            }
        }
        b.sends.clear();
    }
}

/// The destination of the ICMP error `msg` the core built (IPv4 or IPv6), and whether it
/// is exempt from the rate limit: as the kernel (`icmpv4_mask_allow`, `icmpv6_mask_allow`),
/// "fragmentation needed" and Packet Too Big never are limited, or path MTU discovery would
/// stall for every destination past the burst.
fn error_destination(msg: &[u8]) -> (std::net::IpAddr, bool) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v6 = msg.first().is_some_and(|b| b >> 4 == 6);
    let to = if v6 {
        msg.get(24..40)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(|a| IpAddr::V6(Ipv6Addr::from(a)))
    } else {
        msg.get(16..20)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|a| IpAddr::V4(Ipv4Addr::from(a)))
    };
    let exempt = if v6 {
        msg.get(40) == Some(&crate::wire::icmpv6::TYPE_PACKET_TOO_BIG)
    } else {
        msg.get(20..22) == Some(&[3, crate::wire::icmpv4::CODE_FRAG_NEEDED][..])
    };
    (to.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), exempt)
}
