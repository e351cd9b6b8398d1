//! The TUN side of a worker: read the TUN (one read may be a 64 KB TSO packet, split into
//! segments by tun-rs), encapsulate each segment in place, and send the datagrams in
//! `UDP_SEGMENT` runs ([`super::tx::gso_runs`]), each from the socket bound to the source
//! port the core chose and with the TOS it chose.

use std::io::{self, ErrorKind, IoSlice};
use std::ops::Range;

use tun_rs::VIRTIO_NET_HDR_LEN;

use super::counters::WorkerCounters;
use super::sys;
use super::tx::{gso_runs, Pending, MAX_GSO_SEGMENTS};
use super::worker::{Drained, Worker, MAX_PACKET, READS_PER_ROUND};
use crate::encap::{DropReason, Outbound, HEADROOM};

/// Segments per TUN read batch (tun-rs's IDEAL_BATCH_SIZE).
const BATCH: usize = 128;
/// Segment buffers one TUN read may fill (64 KB at the smallest useful MSS, with margin).
const SEGMENTS_PER_READ: usize = 64;

/// The TUN side's buffers, allocated once.
pub(super) struct TxBuffers {
    /// Raw TUN reads (virtio-net header + up to 64 KB).
    tun_read: Vec<u8>,
    /// Segments from TUN reads, each at HEADROOM.
    tx: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Encapsulated datagrams waiting to be sent.
    sends: Vec<Pending>,
}

impl TxBuffers {
    pub(super) fn new() -> TxBuffers {
        TxBuffers {
            tun_read: vec![0; VIRTIO_NET_HDR_LEN + MAX_PACKET],
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
            let n = match self.tun.recv_multiple(
                &mut b.tun_read,
                &mut b.tx[used..],
                &mut b.sizes[used..],
                HEADROOM,
            ) {
                Ok(n) => n,
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
                        match self.write_tun_one(&mut b.tx[i], packet) {
                            Ok(_) => WorkerCounters::add(&c.icmp_sent, 1),
                            Err(_) => WorkerCounters::add(&c.tun_write_errors, 1),
                        }
                    }
                    Outbound::Drop(r) => c.drop(r),
                }
            }
            used += n;
        }
        self.flush_sends(b);
        drained
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
            let sock = self.src_ports.socket(first.src_port).unwrap_or(&self.sock);
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
                    if !self.send_error_logged {
                        self.send_error_logged = true;
                        tracing::warn!("underlay send to {dst} failed: {e} (counted in weft_send_errors_total; logged once)");
                    }
                    WorkerCounters::add(&c.send_errors, group.len() as u64)
                }
            }
        }
        b.sends.clear();
    }
}
