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
use std::time::Duration;

use super::tun::TunQueue;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::counters::WorkerCounters;
use super::inbound::RxBuffers;
use super::outbound::TxBuffers;
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
    /// Microseconds to keep polling without sleeping after the last packet (0: never spin).
    pub busy_poll_us: u32,
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
}

/// Was the source drained (it said WouldBlock)?
pub(super) type Drained = bool;

impl Worker {
    /// Runs until `stop` is set. Returns an error only if polling itself fails.
    pub(super) fn run(mut self, index: usize) -> io::Result<()> {
        // A worker only reads and writes the descriptors it was handed.
        crate::privilege::drop_all_in_this_thread();
        if self.tuning.pin {
            let cores = core_affinity::get_core_ids().unwrap_or_default();
            if let Some(core) = cores.get(index % cores.len().max(1)) {
                if !core_affinity::set_for_current(*core) {
                    tracing::warn!("cannot pin worker {index} to CPU {}", core.id);
                }
            }
        }
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
        let busy = Duration::from_micros(self.tuning.busy_poll_us as u64);
        let mut idle_since: Option<std::time::Instant> = None;
        let mut drops_read = std::time::Instant::now();
        // The socket's counter starts at 0 with the socket; the shared counter outlives
        // recreated dataplanes, so it gets the differences (from what the socket counted
        // before: a predecessor's, when it passed us the socket).
        let mut drops_seen: u32 = self.socket_drops();
        while !self.stop.load(Ordering::Relaxed) && !self.tun_dead.load(Ordering::Relaxed) {
            // What the kernel dropped for this socket (its sender filter, a full buffer),
            // read once a second for /metrics.
            if drops_read.elapsed() >= Duration::from_secs(1) {
                drops_read = std::time::Instant::now();
                let d = self.socket_drops();
                WorkerCounters::add(
                    &self.counters.socket_drops,
                    d.wrapping_sub(drops_seen) as u64,
                );
                drops_seen = d;
            }
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
            let mut udp6_done = self.sock6.is_none();
            while !(tun_done && udp_done && udp6_done) {
                tun_done = self.tun_to_underlay(&mut tx);
                udp_done = self.underlay_to_tun(&mut rx, false);
                if self.sock6.is_some() {
                    udp6_done = self.underlay_to_tun(&mut rx, true);
                }
            }
            idle_since = (!busy.is_zero()).then(std::time::Instant::now);
        }
        Ok(())
    }
}
