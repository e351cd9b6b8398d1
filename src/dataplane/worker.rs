//! One forwarding worker: a mio poll loop over its own TUN queue and its own UDP socket,
//! with its own buffers. Reads are drained in bounded batches (mio is edge-triggered); the
//! loop takes no lock and allocates nothing per packet.
//!
//! With offloads (the default) a unit of work is a super-packet, not a packet:
//! - TUN -> underlay: one TUN read returns up to 64 KB of TCP (TSO, virtio-net header), which
//!   tun-rs splits into MTU-sized segments with complete checksums, each in its own buffer
//!   with headroom; each is encapsulated in place and the equal-sized datagrams to one peer
//!   leave in one `sendmsg` with `UDP_SEGMENT` (scatter-gather: no copy).
//! - underlay -> TUN: one `recvmsg` with `UDP_GRO` returns a flow's datagrams back to back
//!   with their stride; each is decapsulated and checked in place, copied into a TUN buffer,
//!   and tun-rs coalesces consecutive TCP segments into one write with a GSO header.
//!
//! Without them every step is one packet, one syscall.

use std::io::{self, ErrorKind, IoSlice};
use std::net::{SocketAddrV4, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::counters::WorkerCounters;
use super::sys;
use super::tx::{gso_runs, Pending, MAX_GSO_SEGMENTS};
use super::SourceSockets;
use crate::encap::{DropReason, Inbound, Node, Outbound, HEADROOM};
use crate::lease::LeaseTable;
use crate::offload::gro::{self, Coalescer};
use crate::offload::gso;
use crate::wire::ipv4;

const TUN: Token = Token(0);
const UDP: Token = Token(1);
/// Segments per TUN read and TUN write batch (tun-rs's IDEAL_BATCH_SIZE).
const BATCH: usize = 128;
/// Segment buffers one TUN read may fill (64 KB at the smallest useful MSS, with margin).
const SEGMENTS_PER_READ: usize = 64;
/// Reads per source before looking at the other one.
const READS_PER_ROUND: usize = 16;
/// How long a poll waits before re-checking the stop flag.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
/// The largest IPv4 packet.
const MAX_PACKET: usize = 65536;

/// Which offloads a worker uses (each can be switched off: some kernels have had
/// regressions in each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// TUN with a virtio-net header and TSO/checksum offload (TUN reads and writes of up to
    /// 64 KB).
    pub tun: bool,
    /// `UDP_SEGMENT` sends.
    pub gso: bool,
    /// `UDP_GRO` receives.
    pub gro: bool,
    /// Pin worker i to CPU i.
    pub pin: bool,
    /// Microseconds to keep polling without sleeping after the last packet (0: never spin).
    pub busy_poll_us: u32,
    /// Underlay socket buffer size, each way, in bytes.
    pub socket_buffer: u32,
}

/// What a worker owns.
pub struct Worker {
    /// This worker's TUN queue.
    pub tun: SyncDevice,
    /// This worker's UDP socket (SO_REUSEPORT with its siblings), non-blocking: it
    /// receives, and sends what leaves from the backend port (flannel's udp format).
    pub sock: UdpSocket,
    /// The sockets vxlan datagrams leave from, one per source port (shared by workers).
    pub src_ports: Arc<SourceSockets>,
    /// This node.
    pub node: Node,
    /// The shared lease table.
    pub table: Arc<LeaseTable>,
    /// This worker's counters.
    pub counters: Arc<WorkerCounters>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// First outer IP identification.
    pub ip_id: u16,
    /// Offloads in use; `gso` is turned off at run time if the kernel refuses it.
    pub offloads: Offloads,
    /// Whether a send error has been logged (they are counted, and logged once).
    pub send_error_logged: bool,
}

/// A worker's buffers, allocated once.
struct Buffers {
    /// Raw TUN reads (virtio-net header + up to 64 KB).
    tun_read: Vec<u8>,
    /// Segments from one TUN read, each at HEADROOM.
    tx: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Encapsulated datagrams waiting to be sent.
    sends: Vec<Pending>,
    /// One `recvmmsg`'s buffers (each message possibly a GRO batch of many datagrams).
    rxs: Vec<Vec<u8>>,
    meta: Vec<sys::RecvMeta>,
    /// Inner packets waiting for a TUN write, each at VIRTIO_NET_HDR_LEN.
    out: Vec<Vec<u8>>,
    n_out: usize,
    gro: GROTable,
    /// Segments of an oversized inner packet.
    scratch: Vec<u8>,
    /// The pending super-packet for a TUN with a virtio-net header.
    co: Coalescer,
}

impl Buffers {
    fn new() -> Buffers {
        Buffers {
            tun_read: vec![0; VIRTIO_NET_HDR_LEN + MAX_PACKET],
            tx: (0..BATCH).map(|_| vec![0; HEADROOM + MAX_PACKET]).collect(),
            sizes: vec![0; BATCH],
            sends: Vec::with_capacity(BATCH),
            rxs: (0..sys::RECV_BATCH)
                .map(|_| vec![0; HEADROOM + MAX_PACKET])
                .collect(),
            meta: vec![
                sys::RecvMeta {
                    len: 0,
                    from: SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
                    stride: 0,
                    truncated: false,
                    tos: 0,
                };
                sys::RECV_BATCH
            ],
            out: (0..BATCH)
                .map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + MAX_PACKET))
                .collect(),
            n_out: 0,
            gro: GROTable::default(),
            scratch: vec![0; MAX_PACKET],
            co: Coalescer::new(),
        }
    }
}

/// Was the source drained (it said WouldBlock)?
type Drained = bool;

impl Worker {
    /// Runs until `stop` is set. Returns an error only if polling itself fails.
    pub fn run(mut self, index: usize) -> io::Result<()> {
        if self.offloads.pin {
            let cores = core_affinity::get_core_ids().unwrap_or_default();
            if let Some(core) = cores.get(index % cores.len().max(1)) {
                if !core_affinity::set_for_current(*core) {
                    eprintln!(
                        "weft: warning: cannot pin worker {index} to CPU {}",
                        core.id
                    );
                }
            }
        }
        let mut poll = Poll::new()?;
        let (tun_fd, sock_fd) = (self.tun.as_raw_fd(), self.sock.as_raw_fd());
        poll.registry()
            .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&sock_fd), UDP, Interest::READABLE)?;
        let mut events = Events::with_capacity(8);
        let mut b = Buffers::new();
        let busy = Duration::from_micros(self.offloads.busy_poll_us as u64);
        let mut idle_since: Option<std::time::Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            // Optionally spin (non-blocking polls) for a while before sleeping: a sleeping
            // worker costs a wake-up (an IPI and a halt exit on a VM) per burst.
            let timeout = match idle_since {
                Some(t) if t.elapsed() < busy => Some(Duration::ZERO),
                _ => Some(POLL_TIMEOUT),
            };
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if events.is_empty() && timeout == Some(Duration::ZERO) {
                std::hint::spin_loop();
                continue;
            }
            // Drain both sides until each has said WouldBlock (edge-triggered).
            let (mut tun_done, mut udp_done) = (false, false);
            while !(tun_done && udp_done) {
                tun_done = self.tun_to_underlay(&mut b);
                udp_done = self.underlay_to_tun(&mut b);
            }
            idle_since = (!busy.is_zero()).then(std::time::Instant::now);
        }
        Ok(())
    }

    /// Reads from the TUN into the free segment buffers, encapsulating as it goes, and sends
    /// what it gathered when the buffers run low, the TUN is drained, or the round ends: so
    /// datagrams from several reads (a UDP flood, say) still leave in one GSO send.
    fn tun_to_underlay(&mut self, b: &mut Buffers) -> Drained {
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
    fn flush_sends(&mut self, b: &mut Buffers) {
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
                    eprintln!("weft: UDP GSO refused by the kernel ({e}); sending one datagram per syscall");
                    self.offloads.gso = false;
                    runs = gso_runs(&b.sends, false);
                    runs.skip_to(run.start);
                }
                Err(e) => {
                    if !self.send_error_logged {
                        self.send_error_logged = true;
                        eprintln!("weft: underlay send to {dst} failed: {e} (counted in weft_send_errors_total; logged once)");
                    }
                    WorkerCounters::add(&c.send_errors, group.len() as u64)
                }
            }
        }
        b.sends.clear();
    }

    fn underlay_to_tun(&mut self, b: &mut Buffers) -> Drained {
        let (c, tun, mtu) = (&*self.counters, &self.tun, self.node.mtu);
        let mut drained = false;
        for _ in 0..READS_PER_ROUND {
            let got = match sys::recv_many(&self.sock, &mut b.rxs, HEADROOM, &mut b.meta) {
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
            for m in 0..got {
                let sys::RecvMeta {
                    len,
                    from,
                    stride,
                    truncated,
                    tos,
                } = b.meta[m];
                if truncated {
                    c.drop(DropReason::Truncated);
                    continue;
                }
                for d in gro::datagrams(len, stride) {
                    let (at, n) = (d.start, d.len());
                    let verdict =
                        self.node
                            .inbound(&snap, from, &mut b.rxs[m], HEADROOM + at, n, tos & 0x03);
                    let Buffers {
                        rxs,
                        scratch,
                        out,
                        n_out,
                        gro,
                        co,
                        ..
                    } = &mut *b;
                    let rx = &mut rxs[m];
                    match verdict {
                        Inbound::Deliver(r) if self.offloads.tun => {
                            // Coalesce into a super-packet with a virtio-net header: one copy, no
                            // checksum pass (the kernel finishes partial checksums if it must).
                            let pkt = &rx[r];
                            WorkerCounters::add(&c.rx_packets, 1);
                            WorkerCounters::add(&c.rx_bytes, pkt.len() as u64);
                            if pkt.len() > mtu {
                                // A peer's TSO segment: the kernel segments it at our MSS.
                                write_pending(tun, c, co);
                                match gso::mss_for(pkt, mtu) {
                                    Some(mss) if co.push_oversized(pkt, mss) => {
                                        write_pending(tun, c, co)
                                    }
                                    _ => c.drop(DropReason::TooBig),
                                }
                            } else if !co.push(pkt) {
                                write_pending(tun, c, co);
                                co.push(pkt);
                            }
                        }
                        Inbound::Deliver(r) if r.len() > mtu => {
                            // A TSO super-packet from a kernel vxlan peer: segment it as GSO would.
                            let inner = &rx[r];
                            let res = gso::mss_for(inner, mtu).ok_or(DropReason::TooBig).and_then(
                                |mss| {
                                    gso::split_tcp4(inner, mss, scratch, |seg| {
                                        queue(tun, c, out, n_out, gro, seg)
                                    })
                                },
                            );
                            if let Err(reason) = res {
                                c.drop(reason);
                            }
                        }
                        Inbound::Deliver(r) => {
                            // A kernel peer on a veth leaves inner TCP/UDP checksums partial
                            // (CHECKSUM_PARTIAL). Complete them: a TUN without a virtio-net
                            // header cannot say "partial".
                            ipv4::fill_transport_checksum(&mut rx[r.clone()]);
                            queue(tun, c, out, n_out, gro, &rx[r]);
                        }
                        Inbound::Drop(reason) => c.drop(reason),
                    }
                }
            }
        }
        let Buffers {
            out,
            n_out,
            gro,
            co,
            ..
        } = b;
        write_pending(tun, c, co);
        flush(tun, c, out, n_out, gro);
        drained
    }
}

/// Writes the coalescer's pending super-packet, if any.
fn write_pending(tun: &SyncDevice, c: &WorkerCounters, co: &mut Coalescer) {
    if let Some(bytes) = co.flush() {
        if tun.send(bytes).is_err() {
            WorkerCounters::add(&c.tun_write_errors, 1);
        }
    }
}

/// Queues an inner packet for the TUN (copied after room for a virtio-net header), writing
/// the batch when it is full.
fn queue(
    tun: &SyncDevice,
    c: &WorkerCounters,
    out: &mut [Vec<u8>],
    n_out: &mut usize,
    gro: &mut GROTable,
    pkt: &[u8],
) {
    let o = &mut out[*n_out];
    o.clear();
    o.extend_from_slice(&[0u8; VIRTIO_NET_HDR_LEN]);
    o.extend_from_slice(pkt);
    *n_out += 1;
    WorkerCounters::add(&c.rx_packets, 1);
    WorkerCounters::add(&c.rx_bytes, pkt.len() as u64);
    if *n_out == out.len() {
        flush(tun, c, out, n_out, gro);
    }
}

/// Writes the queued packets; with a virtio-net header, tun-rs coalesces consecutive TCP
/// segments of a flow into one GSO write.
fn flush(
    tun: &SyncDevice,
    c: &WorkerCounters,
    out: &mut [Vec<u8>],
    n_out: &mut usize,
    gro: &mut GROTable,
) {
    if *n_out == 0 {
        return;
    }
    if tun
        .send_multiple(gro, &mut out[..*n_out], VIRTIO_NET_HDR_LEN)
        .is_err()
    {
        WorkerCounters::add(&c.tun_write_errors, 1);
    }
    *n_out = 0;
}
