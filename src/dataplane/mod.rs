//! The I/O layer: the TUN device, the UDP sockets and the worker threads that move packets
//! between them through the sans-IO core ([`crate::encap`]).
//!
//! TUN crate: `tun-rs`, not `tun-tap`. The performance issue needs multi-queue TUN (one
//! queue per worker, paired with `SO_REUSEPORT` sockets) and the virtio-net header offloads
//! (`IFF_VNET_HDR`, `TUNSETOFFLOAD`), which tun-rs has and tun-tap lacks; tun-tap's default
//! features also pull tokio-core 0.1. Only device creation goes through tun-rs: the MTU,
//! address, link state and route are set over netlink ([`crate::netlink`]).

pub(crate) mod counters;
pub(crate) mod filter;
mod inbound;
pub(crate) mod inject;
mod outbound;
pub(crate) mod poll;
mod sys;
mod tun;
mod tx;
pub(crate) mod wg;
pub(crate) mod wg_batch;
pub(crate) mod wg_uapi;
mod worker;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tun_rs::DeviceBuilder;

use crate::encap::Node;
use crate::handover::{Handoff, Shared, SharedHeader};
use crate::lease::LeaseTable;
use counters::Counters;
pub(crate) use tun::TunQueue;
use worker::Worker;
pub(crate) use worker::{Offloads, Tuning};

/// Creates the TUN device `name` with `queues` queues, non-blocking, with the virtio-net
/// header and TSO/checksum offloads when `offload`. Returns one handle per queue. Always
/// multi-queue: where `name` exists (a predecessor forwards on it, [`crate::handover`]),
/// the queues are attached to it beside the predecessor's, and the device lives on when
/// the predecessor's go.
pub(crate) fn open_tun(name: &str, queues: usize, offload: bool) -> io::Result<Vec<TunQueue>> {
    let first = DeviceBuilder::new()
        .name(name)
        .multi_queue(true)
        .offload(offload)
        .build_sync()?;
    let mut out = Vec::with_capacity(queues);
    for _ in 1..queues {
        out.push(first.try_clone()?);
    }
    out.insert(0, first);
    for q in &out {
        q.set_nonblocking(true)?;
    }
    out.into_iter().map(TunQueue::try_from).collect()
}

/// What the workers read and write: a TUN queue each, and their receiving sockets where a
/// predecessor passed them ([`crate::handover`]; empty: bound here). `handoff` is where
/// the running dataplane offers them all to a successor.
pub(crate) struct Descriptors {
    /// The TUN device's name.
    pub(crate) tun_name: String,
    /// One queue per worker.
    pub(crate) tun: Vec<TunQueue>,
    /// The predecessor's IPv4 sockets, one per worker, or none.
    pub(crate) udp: Vec<std::net::UdpSocket>,
    /// The predecessor's IPv6 sockets, one per worker, or none.
    pub(crate) udp6: Vec<std::net::UdpSocket>,
    /// Where a successor finds them.
    pub(crate) handoff: Arc<Handoff>,
}

/// Second descriptors of the queues and sockets, for a successor; `None` (logged) if the
/// process is out of descriptors.
fn offer(
    tun_name: &str,
    tun_offload: bool,
    tun: &[TunQueue],
    [udp, udp6]: [&[std::net::UdpSocket]; 2],
) -> Option<Shared> {
    let dup = |s: &std::net::UdpSocket| s.try_clone().map(std::os::fd::OwnedFd::from);
    let fds = tun
        .iter()
        .map(TunQueue::duplicate)
        .chain(udp.iter().chain(udp6).map(dup))
        .collect::<io::Result<Vec<_>>>()
        .inspect_err(|e| tracing::warn!(error = %e, "nothing to pass to a successor: a hand-over will attach new queues"))
        .ok()?;
    Some(Shared {
        header: SharedHeader {
            tun_name: tun_name.to_string(),
            tun_offload,
            tun: tun.len(),
            udp: udp.len(),
            udp6: udp6.len(),
        },
        fds,
    })
}

/// A UDP socket of `addr`'s family, non-blocking, DF clear on sends (IPv4) or fragmenting
/// at the source (IPv6); an IPv6 one takes only IPv6 and sends flow label 0, as kernel
/// vxlan does.
fn udp_socket(addr: IpAddr) -> io::Result<Socket> {
    let v6 = addr.is_ipv6();
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    sys::set_pmtudisc_dont(&s, v6)?;
    if v6 {
        s.set_only_v6(true)?;
        if let Err(e) = sys::disable_auto_flowlabel(&s) {
            tracing::debug!("cannot clear IPV6_AUTOFLOWLABEL: {e}");
        }
    }
    Ok(s)
}

/// A non-blocking UDP socket bound to `addr` (IPv4 or IPv6) with `SO_REUSEPORT` (so each
/// worker has one), DF clear on sends, large buffers, and `UDP_GRO` when `gro`.
pub(crate) fn open_socket(
    addr: SocketAddr,
    gro: bool,
    buffer: u32,
) -> io::Result<std::net::UdpSocket> {
    let s = udp_socket(addr.ip())?;
    s.set_reuse_port(true)?;
    if let Err(e) = sys::force_buffers(&s, buffer.min(i32::MAX as u32) as i32) {
        tracing::warn!("cannot size socket buffers: {e}");
    }
    if let Err(e) = sys::enable_recv_tos(&s, addr.is_ipv6()) {
        tracing::warn!("no IP_RECVTOS ({e}); outer ECN marks are not propagated");
    }
    if gro {
        // Probe: without UDP_GRO (Linux < 5.0) reads simply carry one datagram each.
        if let Err(e) = sys::enable_udp_gro(&s) {
            tracing::warn!("UDP GRO unavailable ({e}); receiving one datagram per read");
        }
    }
    s.bind(&addr.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind UDP {addr}: {e} (is another flannel or weft using the port?)"),
        )
    })?;
    Ok(s.into())
}

/// How many sockets vxlan datagrams leave from, each bound to its own port: the flows to
/// one peer spread over this many outer source ports (the receiving NIC's RSS and every
/// ECMP hop hash on them). Kernel vxlan spreads over the whole local port range; a UDP
/// socket cannot choose its source port per send, so weft binds a small set instead.
pub(crate) const SOURCE_PORT_SOCKETS: usize = 16;

/// The sockets vxlan datagrams leave from: [`SOURCE_PORT_SOCKETS`] sockets bound to port 0
/// on the public IP, so the kernel gives each a port from its local port range (the range
/// kernel vxlan draws from, never the vxlan port). They only send: their receive buffers
/// are the smallest the kernel allows, and nothing reads them.
pub(crate) struct SourceSockets {
    socks: Vec<(u16, std::net::UdpSocket)>,
    /// The same ports on the IPv6 underlay address, in a dual-stack cluster.
    socks6: Vec<(u16, std::net::UdpSocket)>,
}

impl SourceSockets {
    /// No sockets: everything leaves from the workers' own sockets.
    pub(crate) fn none() -> SourceSockets {
        SourceSockets {
            socks: Vec::new(),
            socks6: Vec::new(),
        }
    }

    /// A send-only socket bound to `ip`, `port` (0: the kernel chooses), and its port.
    fn bind_one(ip: IpAddr, port: u16, buffer: u32) -> io::Result<(u16, std::net::UdpSocket)> {
        let s = udp_socket(ip)?;
        let _ = sys::force_buffers(&s, buffer.min(i32::MAX as u32) as i32);
        let _ = s.set_recv_buffer_size(0); // the kernel rounds up to its minimum
        s.bind(&SocketAddr::new(ip, port).into())?;
        let port = s
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| io::Error::other("send socket has no IP address"))?;
        Ok((port, s.into()))
    }

    /// Binds `n` send-only sockets on `ip`, port chosen by the kernel, and with `ip6` the
    /// same ports on that IPv6 address (a port taken there is left out: IPv6 datagrams of
    /// its flows leave from the workers' sockets).
    pub(crate) fn open(
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
        n: usize,
        buffer: u32,
    ) -> io::Result<SourceSockets> {
        let socks = (0..n)
            .map(|_| Self::bind_one(IpAddr::V4(ip), 0, buffer))
            .collect::<io::Result<Vec<_>>>()?;
        let socks6 = ip6.map_or_else(Vec::new, |ip6| {
            socks
                .iter()
                .filter_map(|(p, _)| Self::bind_one(IpAddr::V6(ip6), *p, buffer).ok())
                .collect()
        });
        Ok(SourceSockets { socks, socks6 })
    }

    /// The bound ports, in order.
    pub(crate) fn ports(&self) -> Vec<u16> {
        self.socks.iter().map(|(p, _)| *p).collect()
    }

    /// The socket bound to `port` (on the IPv6 address when `v6`), if one is.
    #[inline]
    pub(crate) fn socket(&self, port: u16, v6: bool) -> Option<&std::net::UdpSocket> {
        let socks = if v6 { &self.socks6 } else { &self.socks };
        socks.iter().find(|(p, _)| *p == port).map(|(_, s)| s)
    }
}

/// The running workers; dropping it stops and joins them.
pub(crate) struct Dataplane {
    threads: Vec<JoinHandle<io::Result<()>>>,
    stop: Arc<AtomicBool>,
    tun_dead: Arc<AtomicBool>,
    /// The workers' receiving sockets (duplicated descriptors), for the sender filter;
    /// empty when `--udp-sender-filter` is off.
    filtered: Vec<std::net::UdpSocket>,
    /// The same for their IPv6 sockets.
    filtered6: Vec<std::net::UdpSocket>,
    /// Whether the last update could not list every sender (logged once per change).
    unfiltered: crate::quiet::Quiet<()>,
    /// Duplicates of the first worker's sockets (IPv4, then IPv6 if any): their
    /// `SO_REUSEPORT` groups are steered to a successor at a hand-over
    /// ([`Dataplane::yield_to_successor`]).
    groups: Vec<std::net::UdpSocket>,
    /// Where the queues and sockets are offered to a successor (withdrawn at the drop).
    handoff: Arc<Handoff>,
}

/// Duplicates of `socks`' descriptors (empty unless `keep`).
fn duplicates(socks: &[std::net::UdpSocket], keep: bool) -> io::Result<Vec<std::net::UdpSocket>> {
    if !keep {
        return Ok(Vec::new());
    }
    socks.iter().map(|s| s.try_clone()).collect()
}

impl Descriptors {
    /// The workers' receiving sockets on `local` (IPv4) and `local6` (IPv6): those passed,
    /// or one per TUN queue bound to `port` here.
    fn sockets(
        &mut self,
        port: u16,
        local: IpAddr,
        local6: Option<Ipv6Addr>,
        gro: bool,
        buffer: u32,
    ) -> io::Result<[Vec<std::net::UdpSocket>; 2]> {
        let queues = self.tun.len();
        let open_all = |ip: IpAddr, passed: Vec<std::net::UdpSocket>| {
            if !passed.is_empty() {
                return Ok(passed);
            }
            let bind = SocketAddr::new(ip, port);
            (0..queues)
                .map(|_| open_socket(bind, gro, buffer))
                .collect::<io::Result<Vec<_>>>()
        };
        let socks = open_all(local, std::mem::take(&mut self.udp))?;
        let socks6 = match local6 {
            Some(ip) => open_all(ip.into(), std::mem::take(&mut self.udp6))?,
            None => Vec::new(),
        };
        Ok([socks, socks6])
    }
}

impl Dataplane {
    /// No workers yet; the sender filter's and the steering's duplicates of `socks`
    /// (IPv4, IPv6).
    fn new(
        [socks, socks6]: [&[std::net::UdpSocket]; 2],
        sender_filter: bool,
        handoff: Arc<Handoff>,
    ) -> io::Result<Dataplane> {
        Ok(Dataplane {
            threads: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            tun_dead: Arc::new(AtomicBool::new(false)),
            filtered: duplicates(socks, sender_filter)?,
            filtered6: duplicates(socks6, sender_filter)?,
            unfiltered: crate::quiet::Quiet::new(),
            groups: [socks.first(), socks6.first()]
                .into_iter()
                .flatten()
                .filter_map(|s| s.try_clone().ok())
                .collect(),
            handoff,
        })
    }

    /// Starts one worker per TUN queue, each with its own socket on `local`, `node`'s port,
    /// and with `local6` (a dual-stack node) another on that IPv6 address. For vxlan it
    /// also binds the [`SourceSockets`] and draws `node`'s source ports from them. Worker i
    /// gets `injectors[i]`, if there is one (see [`inject`]). `local` is the underlay
    /// interface's address: `node.public_ip` (what peers send to) differs from it behind
    /// NAT. The sockets a predecessor passed in `io` are used rather than bound.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        mut node: Node,
        local: Ipv4Addr,
        local6: Option<Ipv6Addr>,
        io: Descriptors,
        injectors: Vec<inject::Injector>,
        table: Arc<LeaseTable>,
        seed: u64,
        offloads: Offloads,
        tuning: Tuning,
        counters: &Counters,
    ) -> io::Result<Dataplane> {
        let local6 = local6.filter(|_| node.v6.is_some());
        let mut io = io;
        // Bind every socket before starting any worker, so a port clash fails start-up.
        let [socks, socks6] = io.sockets(
            node.format.port(),
            local.into(),
            local6,
            offloads.gro,
            tuning.socket_buffer,
        )?;
        if tuning.tun_cpu_steering {
            if let Some(Err(e)) = io.tun.first().map(sys::steer_tun_by_cpu) {
                tracing::warn!(error = %e, "cannot steer the TUN's queues by CPU; its flow hash chooses");
            }
        }
        // Offered once every worker runs: a start that fails half-way offers nothing.
        let offered = offer(&io.tun_name, offloads.tun, &io.tun, [&socks, &socks6]);
        let src_ports = Arc::new(match node.format {
            crate::encap::Format::Vxlan { .. } => {
                SourceSockets::open(local, local6, SOURCE_PORT_SOCKETS, tuning.socket_buffer)?
            }
            crate::encap::Format::Udp { .. } => SourceSockets::none(),
        });
        node.format = node.format.with_bound_ports(&src_ports.ports());
        // Built first, so that a failure to spawn a later worker stops the earlier ones.
        let mut dp = Dataplane::new([&socks, &socks6], tuning.sender_filter, io.handoff)?;
        let mut socks6 = socks6.into_iter();
        let mut injectors = injectors.into_iter();
        let icmp_limit = Arc::new(std::sync::Mutex::new(
            crate::encap::ratelimit::IcmpLimiter::default(),
        ));
        let clock = std::time::Instant::now();
        for (i, (tun, sock)) in io.tun.into_iter().zip(socks).enumerate() {
            let w = Worker {
                tun,
                sock,
                sock6: socks6.next(),
                src_ports: src_ports.clone(),
                node,
                table: table.clone(),
                counters: counters.worker(i),
                stop: dp.stop.clone(),
                tun_dead: dp.tun_dead.clone(),
                ip_id: (seed >> (i * 16 % 48)) as u16,
                offloads,
                tuning,
                send_errors: crate::quiet::QuietSet::default(),
                inject: injectors.next(),
                icmp_limit: icmp_limit.clone(),
                clock,
            };
            let t = std::thread::Builder::new()
                .name(format!("weft-worker-{i}"))
                .spawn(move || w.run(i))?;
            dp.threads.push(t);
        }
        dp.handoff.offer(offered);
        Ok(dp)
    }
}

impl Dataplane {
    /// Lets only datagrams from `senders` (the leases' public IPs) into the workers'
    /// sockets, and from `senders6` (their `PublicIPv6`) into their IPv6 sockets
    /// ([`filter`]); past [`filter::MAX_SENDERS`] the filter is lifted and every datagram
    /// reaches the userspace check, which holds the same rule.
    pub(crate) fn set_senders(&self, senders: &[Ipv4Addr], senders6: &[Ipv6Addr]) {
        if self.filtered.is_empty() {
            return;
        }
        let prog = filter::program(senders);
        let prog6 = (!self.filtered6.is_empty()).then(|| filter::program6(senders6));
        let lifted = prog.is_none() || prog6.as_ref().is_some_and(|p| p.is_none());
        if !lifted {
            self.unfiltered.clear();
        } else if self.unfiltered.report(()) {
            tracing::info!(
                "{} peers: more than the sender filter lists ({}); datagrams from unknown senders are dropped in userspace instead",
                senders.len(),
                filter::MAX_SENDERS
            );
        }
        let prog = prog.unwrap_or_default();
        let prog6 = prog6.flatten().unwrap_or_default();
        // Every socket, even past a failure, so they do not differ more than they must.
        let mut failed = None;
        let each = self.filtered.iter().map(|s| (s, &prog));
        for (s, p) in each.chain(self.filtered6.iter().map(|s| (s, &prog6))) {
            if let Err(e) = sys::attach_filter(s, p) {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            tracing::warn!("cannot set the sender filter: {e}");
        }
    }

    /// Whether a worker found the TUN device gone.
    pub(crate) fn tun_gone(&self) -> bool {
        self.tun_dead.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The workers whose threads have ended although nobody asked them to stop (a panic or
    /// a fatal error): their TUN queue and socket are no longer served.
    pub(crate) fn dead_workers(&self) -> Vec<usize> {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Vec::new();
        }
        self.threads
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_finished())
            .map(|(i, _)| i)
            .collect()
    }
}

/// How long a node handed over keeps draining its sockets and TUN queues after steering
/// new datagrams to its successor, before it closes them.
const DRAIN: std::time::Duration = std::time::Duration::from_millis(100);

impl Dataplane {
    /// At a hand-over to a successor that opened its own queues and sockets (one that
    /// reads ours needs nothing: this dataplane just stops), before this dataplane stops:
    /// every datagram from now on goes to the successor's sockets
    /// ([`filter::successor_steering`]), and the TUN's flows follow as the successor
    /// writes them; the workers drain what is already theirs for [`DRAIN`]. Closing
    /// sockets and queues still holding packets would drop those.
    pub(crate) fn yield_to_successor(&mut self) {
        // A successor that reads our queues and sockets needs neither.
        if self.groups.is_empty() || self.handoff.successor_shares() {
            return;
        }
        let prog = filter::successor_steering(self.threads.len() as u32);
        for sock in &self.groups {
            if let Err(e) = sys::attach_reuseport_filter(sock, &prog) {
                tracing::warn!(error = %e, "cannot steer the port to the successor");
            }
        }
        std::thread::sleep(DRAIN);
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        // Our duplicates of the workers' sockets first: each worker then closes its own
        // socket and TUN queue the moment it stops, rather than leaving them open and
        // unread (their queues filling, then dropped) until the slowest worker has seen
        // the stop. In a hand-over the kernel sends what they would have read to the
        // successor's sockets and queues instead.
        self.handoff.offer(None);
        self.filtered.clear();
        self.filtered6.clear();
        self.groups.clear();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("worker failed: {e}"),
                Err(_) => tracing::error!("worker panicked"),
            }
        }
    }
}
