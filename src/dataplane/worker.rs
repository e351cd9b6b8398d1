//! One forwarding worker: a mio poll loop over its own TUN queue and its own UDP socket,
//! with its own buffers. Reads are drained in bounded batches (mio is edge-triggered); the
//! loop takes no lock and allocates nothing per packet. The two directions live apart:
//! [`super::outbound`] is the TUN side (TUN read, encapsulate, send), [`super::inbound`]
//! the UDP side (receive, decapsulate and police, write to the TUN).
//!
//! With offloads (the default) a unit of work is a super-packet, not a packet:
//! - TUN -> underlay: one TUN read returns up to 64 KB of TCP (TSO, virtio-net header), which
//!   tun-rs splits into MTU-sized segments with complete checksums, each in its own buffer
//!   with headroom; each is encapsulated in place and the equal-sized datagrams to one peer
//!   leave in one `sendmsg` with `UDP_SEGMENT` (scatter-gather: no copy).
//! - underlay -> TUN: one `recvmsg` with `UDP_GRO` returns a flow's datagrams back to back
//!   with their stride; each is decapsulated and checked in place and coalesced with the
//!   flow's other TCP segments into one TUN write with a GSO header.
//!
//! Without them every step is one packet, one syscall.

use std::io::{self, ErrorKind};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tun::TunQueue;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::counters::WorkerCounters;
use super::inbound::RxBuffers;
use super::outbound::TxBuffers;
use super::poll::{Last, Moved, Poller, SpinPolicy};
use super::SourceSockets;
use crate::encap::Node;
use crate::lease::LeaseTable;

const TUN: Token = Token(0);
const UDP: Token = Token(1);
const UDP6: Token = Token(2);
/// Reads per source before looking at the other one.
pub(super) const READS_PER_ROUND: usize = 16;
/// How long a poll waits before re-checking the stop flag.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
/// The largest IPv4 packet.
pub(super) const MAX_PACKET: usize = 65536;

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
    /// Hand TSO super-packets to the kernel whole, for its UDP-tunnel GSO (with
    /// `tun`, where the kernel has it).
    pub tunnel_gso: bool,
    /// Merge consecutive UDP datagrams of a flow into one `UDP_L4` GSO write to the TUN
    /// (with `tun`).
    pub udp_coalesce: bool,
}

/// How the workers run, beside the offloads: from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Pin worker i to CPU i.
    pub pin: bool,
    /// Each worker's sockets take the datagrams the kernel receives on its CPU
    /// (`SO_INCOMING_CPU`), so the wake-up is local.
    pub incoming_cpu: bool,
    /// The TUN hands each packet to queue `cpu mod queues`, where `cpu` sent it (an eBPF
    /// steering program), instead of by flow hash.
    pub tun_cpu_steering: bool,
    /// The time slice a worker asks the scheduler for, in microseconds (0: the kernel's).
    pub slice_us: u32,
    /// How long to keep polling after a burst before sleeping ([`super::poll`]).
    pub poll: SpinPolicy,
    /// Underlay socket buffer size, each way, in bytes.
    pub socket_buffer: u32,
    /// Drop datagrams from senders that hold no lease in the kernel, before they reach a
    /// worker (a BPF socket filter, [`super::filter`]).
    pub sender_filter: bool,
}

/// What a worker owns. Its socket closes before its TUN queue (fields drop in order): a
/// TUN queue's close waits out an RCU grace period (milliseconds), and a socket left open
/// and unread that long would drop what reached it, where closed the kernel hands it to a
/// sibling (or, in a hand-over, a successor) instead.
pub(crate) struct Worker {
    /// This worker's UDP socket (SO_REUSEPORT with its siblings), non-blocking: it
    /// receives, and sends what leaves from the backend port (flannel's udp format).
    pub(crate) sock: UdpSocket,
    /// Its socket on the IPv6 underlay address, in a dual-stack cluster: it receives
    /// IPv6 pods' datagrams, and sends those whose source port has no socket.
    pub(crate) sock6: Option<UdpSocket>,
    /// This worker's TUN queue.
    pub(crate) tun: TunQueue,
    /// The sockets vxlan datagrams leave from, one per source port (shared by workers).
    pub(crate) src_ports: Arc<SourceSockets>,
    /// This node.
    pub(crate) node: Node,
    /// The shared lease table.
    pub(crate) table: Arc<LeaseTable>,
    /// This worker's counters.
    pub(crate) counters: Arc<WorkerCounters>,
    /// Set to stop.
    pub(crate) stop: Arc<AtomicBool>,
    /// First outer IP identification.
    pub(crate) ip_id: u16,
    /// Offloads in use; `gso` is turned off at run time if the kernel refuses it.
    pub(crate) offloads: Offloads,
    /// How it runs.
    pub(crate) tuning: Tuning,
    /// Send errors logged (they are counted, and logged once per kind).
    pub(crate) send_errors: crate::quiet::QuietSet<io::ErrorKind>,
    /// Set when the TUN device is gone (shared by the workers; the daemon recreates it).
    pub(crate) tun_dead: Arc<AtomicBool>,
    /// This worker's queue of the injection TAP, when TSO super-packets leave whole
    /// (`--tunnel-gso`, Linux 6.17+).
    pub(crate) inject: Option<super::inject::Injector>,
    /// The node's ICMP error rate limit (shared by the workers; locked only for errors).
    pub(crate) icmp_limit: Arc<std::sync::Mutex<crate::encap::ratelimit::IcmpLimiter>>,
    /// The clock the limiter counts in (the dataplane's start).
    pub(crate) clock: std::time::Instant,
}

impl Worker {
    /// What the kernel has dropped for this worker's sockets, in all.
    fn socket_drops(&self) -> u32 {
        std::iter::once(&self.sock)
            .chain(&self.sock6)
            .filter_map(|s| super::sys::socket_drops(s).ok())
            .fold(0u32, u32::wrapping_add)
    }

    /// Worker `index`'s CPU (the `index`th of those it may use): pinned to it with
    /// `pin`, and with `incoming_cpu` its sockets take what the kernel receives on it.
    fn place(&self, index: usize) {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let Some(core) = cores.get(index % cores.len().max(1)) else {
            return;
        };
        if self.tuning.pin && !core_affinity::set_for_current(*core) {
            tracing::warn!("cannot pin worker {index} to CPU {}", core.id);
        }
        if self.tuning.incoming_cpu {
            for s in std::iter::once(&self.sock).chain(&self.sock6) {
                if let Err(e) = super::sys::set_incoming_cpu(s, core.id) {
                    tracing::warn!(error = %e, "cannot set SO_INCOMING_CPU on worker {index}'s socket");
                }
            }
        }
    }
}

/// Was the source drained (it said WouldBlock)?
pub(super) type Drained = bool;

/// What the kernel has dropped for a worker's sockets (its sender filter, a full buffer),
/// read once a second for /metrics. The socket's counter starts at 0 with the socket; the
/// shared counter outlives recreated dataplanes, so it gets the differences (from what the
/// socket counted before: a predecessor's, when it passed us the socket).
struct DropsRead {
    at: Instant,
    seen: u32,
}

impl DropsRead {
    fn new(seen: u32) -> DropsRead {
        DropsRead {
            at: Instant::now(),
            seen,
        }
    }

    fn maybe_read(&mut self, w: &Worker) {
        if self.at.elapsed() >= Duration::from_secs(1) {
            self.at = Instant::now();
            let d = w.socket_drops();
            WorkerCounters::add(&w.counters.socket_drops, d.wrapping_sub(self.seen) as u64);
            self.seen = d;
        }
    }
}

impl Worker {
    /// Drains both sides until each has said WouldBlock (edge-triggered). Returns what the
    /// burst ended with and what it moved, or `None` if it moved nothing.
    fn drain(&mut self, tx: &mut TxBuffers, rx: &mut RxBuffers) -> Option<(Last, Moved)> {
        let moved = |w: &Worker| {
            let c = &w.counters;
            (
                c.tx_packets.load(Ordering::Relaxed),
                c.rx_packets.load(Ordering::Relaxed),
            )
        };
        let bytes = |w: &Worker| {
            let c = &w.counters;
            c.tx_bytes.load(Ordering::Relaxed) + c.rx_bytes.load(Ordering::Relaxed)
        };
        let (start, packets0) = (bytes(self), moved(self));
        let mut last = None;
        loop {
            let before = moved(self);
            let tun_done = self.tun_to_underlay(tx);
            let mut udp_done = self.underlay_to_tun(rx, false);
            if self.sock6.is_some() {
                udp_done &= self.underlay_to_tun(rx, true);
            }
            let after = moved(self);
            if after.1 != before.1 {
                last = Some(Last::Delivered);
            } else if after.0 != before.0 {
                last = Some(Last::Sent);
            }
            if tun_done && udp_done {
                let m = Moved {
                    bytes: bytes(self).wrapping_sub(start),
                    packets: after.0.wrapping_sub(packets0.0) + after.1.wrapping_sub(packets0.1),
                };
                return last.map(|l| (l, m));
            }
        }
    }
}

impl Worker {
    /// Runs until `stop` is set. Returns an error only if polling itself fails.
    pub(super) fn run(mut self, index: usize) -> io::Result<()> {
        if self.tuning.slice_us > 0 {
            let slice = Duration::from_micros(self.tuning.slice_us.into());
            if let Err(e) = super::sys::set_thread_slice(slice) {
                tracing::warn!(error = %e, "cannot set the worker's time slice");
            }
        }
        // A worker only reads and writes the descriptors it was handed.
        crate::privilege::drop_all_in_this_thread();
        self.place(index);
        let mut poll = Poll::new()?;
        let (tun_fd, sock_fd) = (self.tun.as_raw_fd(), self.sock.as_raw_fd());
        poll.registry()
            .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&sock_fd), UDP, Interest::READABLE)?;
        if let Some(s6) = &self.sock6 {
            poll.registry()
                .register(&mut SourceFd(&s6.as_raw_fd()), UDP6, Interest::READABLE)?;
        }
        let mut events = Events::with_capacity(8);
        let mut tx = TxBuffers::new();
        let mut rx = RxBuffers::new(self.offloads.tun, self.offloads.udp_coalesce);
        let mut poller = Poller::new(self.tuning.poll);
        let mut spin_until: Option<Instant> = None;
        let mut drops = DropsRead::new(self.socket_drops());
        while !self.stop.load(Ordering::Relaxed) && !self.tun_dead.load(Ordering::Relaxed) {
            drops.maybe_read(&self);
            // Spin (non-blocking polls) until the policy's deadline, then sleep: a sleeping
            // worker costs a wake-up per packet that finds it asleep ([`super::poll`]).
            let spinning = spin_until.is_some_and(|t| Instant::now() < t);
            let timeout = if spinning {
                Duration::ZERO
            } else {
                POLL_TIMEOUT
            };
            if let Err(e) = poll.poll(&mut events, Some(timeout)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if events.is_empty() {
                if spinning && poller.yields() {
                    std::thread::yield_now();
                } else if spinning {
                    std::hint::spin_loop();
                }
                continue;
            }
            poller.woke(Instant::now());
            if let Some((last, m)) = self.drain(&mut tx, &mut rx) {
                let now = Instant::now();
                spin_until = Some(now + poller.burst_ended(now, last, m));
            }
        }
        Ok(())
    }
}
