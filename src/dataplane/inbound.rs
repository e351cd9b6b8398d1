//! The UDP side of a worker: receive datagrams (`recvmmsg`, each message possibly a
//! `UDP_GRO` batch), decapsulate and police each in place through the core, and hand what
//! may be delivered to the [`TunWriter`], which knows how this TUN takes packets.

use std::io::ErrorKind;
use std::net::SocketAddr;

use super::tun::TunQueue;
use tun_rs::VIRTIO_NET_HDR_LEN;

use super::counters::WorkerCounters;
use super::sys;
use super::worker::{Drained, Worker, MAX_PACKET, READS_PER_ROUND};
use crate::encap::{DropReason, Inbound, HEADROOM};
use crate::lease::Snapshot;
use crate::offload::gro::{self, Coalescer};
use crate::offload::gso;
use crate::offload::v6::Coalescer6;
use crate::wire::ipv4;

/// The UDP side's buffers, allocated once.
pub(super) struct RxBuffers {
    /// One `recvmmsg`'s buffers (each message possibly a GRO batch of many datagrams).
    rxs: Vec<Vec<u8>>,
    meta: Vec<sys::RecvMeta>,
    writer: TunWriter,
}

impl RxBuffers {
    /// Buffers for a TUN with (`offload`) or without a virtio-net header, merging UDP
    /// datagrams into one write when `merge_udp`.
    pub(super) fn new(offload: bool, merge_udp: bool) -> RxBuffers {
        RxBuffers {
            rxs: (0..sys::RECV_BATCH)
                .map(|_| vec![0; HEADROOM + MAX_PACKET])
                .collect(),
            meta: vec![
                sys::RecvMeta {
                    len: 0,
                    from: SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
                    stride: 0,
                    truncated: false,
                    tos: 0,
                };
                sys::RECV_BATCH
            ],
            writer: TunWriter::new(offload, merge_udp),
        }
    }
}

impl Worker {
    /// Receives and delivers until the socket (the IPv6 one when `v6`) is drained or the
    /// round ends, then writes what the TUN writer still holds.
    pub(super) fn underlay_to_tun(&mut self, b: &mut RxBuffers, v6: bool) -> Drained {
        let c = &*self.counters;
        let sock = match (v6, &self.sock6) {
            (false, _) => &self.sock,
            (true, Some(s)) => s,
            (true, None) => return true,
        };
        let mut drained = false;
        for _ in 0..READS_PER_ROUND {
            let got = match sys::recv_many(sock, &mut b.rxs, HEADROOM, &mut b.meta) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.drop(DropReason::Truncated);
                    continue;
                }
            };
            let snap = self.table.load();
            for (rx, meta) in b.rxs.iter_mut().zip(&b.meta).take(got) {
                self.deliver_message(&snap, rx, meta, &mut b.writer);
            }
        }
        b.writer.flush(&self.tun, c);
        drained
    }

    /// Polices each datagram of one received message (a GRO batch is cut by its stride)
    /// and delivers the accepted inner packets.
    fn deliver_message(
        &self,
        snap: &Snapshot,
        rx: &mut [u8],
        meta: &sys::RecvMeta,
        writer: &mut TunWriter,
    ) {
        let c = &*self.counters;
        if meta.truncated {
            c.drop(DropReason::Truncated);
            return;
        }
        for d in gro::datagrams(meta.len, meta.stride) {
            let outer_ecn = meta.tos & 0x03;
            match self
                .node
                .inbound(snap, meta.from, rx, HEADROOM + d.start, d.len(), outer_ecn)
            {
                // The TUN's MTU for both families: the underlay - 70 of the IPv6 side
                // bounds what we send, not what a peer with a larger underlay may.
                Inbound::Deliver(r) if rx[r.start] >> 4 == 6 => {
                    writer.deliver6(&self.tun, c, self.node.mtu, rx, r)
                }
                Inbound::Deliver(r) => writer.deliver(&self.tun, c, self.node.mtu, rx, r),
                Inbound::Drop(reason) => c.drop(reason),
            }
        }
    }
}

/// How delivered inner packets reach the TUN, chosen once per worker.
pub(super) enum TunWriter {
    /// A TUN with a virtio-net header: consecutive TCP segments of a flow are coalesced
    /// into one super-packet write (one copy, no checksum pass: the kernel finishes partial
    /// checksums if it must), and a peer's oversized TSO segment is handed to the kernel's
    /// GSO at our MSS.
    /// IPv6 pods' TCP segments are coalesced apart, in the second coalescer.
    Coalescing(Box<Coalescer>, Box<Coalescer6>),
    /// A plain TUN: one write per packet, with checksums completed (it cannot say
    /// "partial") and oversized TCP split as GSO would.
    Plain {
        /// Segments of an oversized inner packet.
        scratch: Vec<u8>,
    },
}

impl TunWriter {
    fn new(offload: bool, merge_udp: bool) -> TunWriter {
        if offload {
            TunWriter::Coalescing(
                Box::new(Coalescer::new().merging_udp(merge_udp)),
                Box::new(Coalescer6::new().merging_udp(merge_udp)),
            )
        } else {
            TunWriter::Plain {
                scratch: vec![0; MAX_PACKET],
            }
        }
    }

    /// Delivers the inner packet at `rx[r]`, in place in its receive buffer (the bytes
    /// before it, the decapsulated headers, may be overwritten).
    fn deliver(
        &mut self,
        tun: &TunQueue,
        c: &WorkerCounters,
        mtu: usize,
        rx: &mut [u8],
        r: std::ops::Range<usize>,
    ) {
        let pkt = &mut rx[r.clone()];
        match self {
            TunWriter::Coalescing(co, _) => {
                WorkerCounters::add(&c.rx_bytes, pkt.len() as u64);
                if pkt.len() > mtu {
                    // A peer's TSO super-packet: the kernel segments it at our MSS, written
                    // straight from the receive buffer with its header in the headroom.
                    // Counted as the segments it stands for, as the sender counts them, so
                    // packets sent = packets delivered + drops across nodes.
                    write_pending(tun, c, co);
                    let mss = gso::mss_for(pkt, mtu);
                    let segments = mss.map_or(1, |m| (pkt.len() - (mtu - m)).div_ceil(m));
                    WorkerCounters::add(&c.rx_packets, segments as u64);
                    let at = mss.and_then(|mss| gro::oversized_in_place(rx, r.clone(), mss));
                    match at {
                        Some(s) => {
                            if tun.send(&rx[s..r.end]).is_err() {
                                WorkerCounters::add(&c.tun_write_errors, 1);
                            }
                        }
                        None => c.drop(DropReason::TooBig),
                    }
                } else {
                    WorkerCounters::add(&c.rx_packets, 1);
                    if !co.push(pkt) {
                        write_pending(tun, c, co);
                        co.push(pkt);
                    }
                }
            }
            TunWriter::Plain { scratch } if pkt.len() > mtu => {
                // A TSO super-packet from a kernel vxlan peer: segment it as GSO would.
                let res = gso::mss_for(pkt, mtu)
                    .ok_or(DropReason::TooBig)
                    .and_then(|mss| gso::split_tcp4(pkt, mss, scratch, |seg| write(tun, c, seg)));
                if let Err(reason) = res {
                    c.drop(reason);
                }
            }
            TunWriter::Plain { .. } => {
                // A kernel peer on a veth leaves inner TCP/UDP checksums partial
                // (CHECKSUM_PARTIAL); complete them.
                ipv4::fill_transport_checksum(pkt);
                write(tun, c, pkt);
            }
        }
    }

    /// Delivers the IPv6 pod packet at `rx[r]`: a TCP segment that fits is coalesced with
    /// its flow's neighbours ([`Coalescer6`]); anything else is written alone, with a
    /// virtio-net header written into the headroom before it (the kernel finishes a
    /// partial checksum, and cuts a peer's TCP super-packet at our MSS), or on a plain TUN
    /// with checksums completed here (a super-packet cut here first). Oversized packets
    /// that cannot be cut are dropped, counted.
    fn deliver6(
        &mut self,
        tun: &TunQueue,
        c: &WorkerCounters,
        mtu: usize,
        rx: &mut [u8],
        r: std::ops::Range<usize>,
    ) {
        let pkt = &mut rx[r.clone()];
        let hdr = match self {
            TunWriter::Coalescing(_, co6) => 'alone: {
                let fits = pkt.len() <= mtu;
                if !(fits && co6.push(pkt)) {
                    // What is pending is older: it goes first, then this joins a new one
                    // or goes alone.
                    write_pending6(tun, c, co6);
                    if !(fits && co6.push(pkt)) {
                        break 'alone crate::offload::v6::tun_header(pkt, mtu);
                    }
                }
                WorkerCounters::add(&c.rx_packets, 1);
                WorkerCounters::add(&c.rx_bytes, pkt.len() as u64);
                return;
            }
            TunWriter::Plain { scratch } if pkt.len() > mtu => {
                // A peer's TSO super-packet: segmented as GSO would, as IPv4's are.
                let res = gso::mss_for(pkt, mtu)
                    .ok_or(DropReason::TooBig)
                    .and_then(|mss| gso::split_tcp6(pkt, mss, scratch, |seg| write(tun, c, seg)));
                if let Err(reason) = res {
                    c.drop(reason);
                }
                return;
            }
            TunWriter::Plain { .. } => {
                crate::wire::ipv6::fill_transport_checksum(pkt);
                return write(tun, c, pkt);
            }
        };
        let (Some(hdr), Some(at)) = (hdr, r.start.checked_sub(VIRTIO_NET_HDR_LEN)) else {
            return c.drop(DropReason::TooBig);
        };
        let segments = match hdr.gso_size as usize {
            0 => 1,
            m => (pkt.len() - hdr.hdr_len as usize).div_ceil(m),
        };
        WorkerCounters::add(&c.rx_packets, segments as u64);
        WorkerCounters::add(&c.rx_bytes, pkt.len() as u64);
        hdr.emit(&mut rx[at..r.start]);
        if tun.send(&rx[at..r.end]).is_err() {
            WorkerCounters::add(&c.tun_write_errors, 1);
        }
    }

    /// Writes whatever is still held (the coalescer's pending super-packet).
    fn flush(&mut self, tun: &TunQueue, c: &WorkerCounters) {
        if let TunWriter::Coalescing(co, co6) = self {
            write_pending(tun, c, co);
            write_pending6(tun, c, co6);
        }
    }
}

/// Writes one packet to a plain TUN, counting it.
fn write(tun: &TunQueue, c: &WorkerCounters, pkt: &[u8]) {
    WorkerCounters::add(&c.rx_packets, 1);
    WorkerCounters::add(&c.rx_bytes, pkt.len() as u64);
    if tun.send(pkt).is_err() {
        WorkerCounters::add(&c.tun_write_errors, 1);
    }
}

/// Writes the IPv6 coalescer's pending super-packet, if any.
fn write_pending6(tun: &TunQueue, c: &WorkerCounters, co: &mut Coalescer6) {
    if let Some(bytes) = co.flush() {
        if tun.send(bytes).is_err() {
            WorkerCounters::add(&c.tun_write_errors, 1);
        }
    }
}

/// Writes the coalescer's pending super-packet, if any.
fn write_pending(tun: &TunQueue, c: &WorkerCounters, co: &mut Coalescer) {
    if let Some(bytes) = co.flush() {
        if tun.send(bytes).is_err() {
            WorkerCounters::add(&c.tun_write_errors, 1);
        }
    }
}
