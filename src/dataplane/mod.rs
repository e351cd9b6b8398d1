//! The I/O layer: the TUN device, the UDP sockets and the worker threads that move packets
//! between them through the sans-IO core ([`crate::encap`]).
//!
//! TUN crate: `tun-rs`, not `tun-tap`. The performance issue needs multi-queue TUN (one
//! queue per worker, paired with `SO_REUSEPORT` sockets) and the virtio-net header offloads
//! (`IFF_VNET_HDR`, `TUNSETOFFLOAD`), which tun-rs has and tun-tap lacks; tun-tap's default
//! features also pull tokio-core 0.1. Only device creation goes through tun-rs: the MTU,
//! address, link state and route are set over netlink ([`crate::netlink`]).

pub mod counters;
mod sys;
pub mod worker;

use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tun_rs::{DeviceBuilder, SyncDevice};

use crate::encap::Node;
use crate::lease::LeaseTable;
use counters::Counters;
pub use worker::Offloads;
use worker::Worker;

/// Creates the TUN device `name` with `queues` queues (multi-queue when more than one),
/// non-blocking, with the virtio-net header and TSO/checksum offloads when `offload`.
/// Returns one handle per queue.
pub fn open_tun(name: &str, queues: usize, offload: bool) -> io::Result<Vec<SyncDevice>> {
    let first = DeviceBuilder::new()
        .name(name)
        .multi_queue(queues > 1)
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
    Ok(out)
}

/// A non-blocking UDP socket bound to `addr` with `SO_REUSEPORT` (so each worker has one),
/// DF clear on sends, large buffers, and `UDP_GRO` when `gro`.
pub fn open_socket(addr: SocketAddrV4, gro: bool, buffer: u32) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    sys::set_pmtudisc_dont(&s)?;
    if let Err(e) = sys::force_buffers(&s, buffer.min(i32::MAX as u32) as i32) {
        eprintln!("weft: warning: cannot size socket buffers: {e}");
    }
    if let Err(e) = sys::enable_recv_tos(&s) {
        eprintln!("weft: warning: no IP_RECVTOS ({e}); outer ECN marks are not propagated");
    }
    if gro {
        // Probe: without UDP_GRO (Linux < 5.0) reads simply carry one datagram each.
        if let Err(e) = sys::enable_udp_gro(&s) {
            eprintln!("weft: warning: UDP GRO unavailable ({e}); receiving one datagram per read");
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

/// The running workers.
pub struct Dataplane {
    threads: Vec<JoinHandle<io::Result<()>>>,
    /// Their counters.
    pub counters: Counters,
}

impl Dataplane {
    /// Starts one worker per TUN queue, each with its own socket on `node`'s port.
    pub fn start(
        node: Node,
        tun_queues: Vec<SyncDevice>,
        table: Arc<LeaseTable>,
        stop: Arc<AtomicBool>,
        seed: u64,
        offloads: Offloads,
    ) -> io::Result<Dataplane> {
        let mut counters = Counters::default();
        let mut threads = Vec::new();
        let bind = SocketAddrV4::new(node.public_ip, node.format.port());
        // Bind every socket before starting any worker, so a port clash fails start-up.
        let socks = tun_queues
            .iter()
            .map(|_| open_socket(bind, offloads.gro, offloads.socket_buffer))
            .collect::<io::Result<Vec<_>>>()?;
        for (i, (tun, sock)) in tun_queues.into_iter().zip(socks).enumerate() {
            let w = Worker {
                tun,
                sock,
                node,
                table: table.clone(),
                counters: counters.add_worker(),
                stop: stop.clone(),
                ip_id: (seed >> (i * 16 % 48)) as u16,
                offloads,
                send_error_logged: false,
            };
            let t = std::thread::Builder::new()
                .name(format!("weft-worker-{i}"))
                .spawn(move || w.run(i))?;
            threads.push(t);
        }
        Ok(Dataplane { threads, counters })
    }

    /// Waits for every worker to stop (after the stop flag is set).
    pub fn join(self) {
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("weft: worker failed: {e}"),
                Err(_) => eprintln!("weft: worker panicked"),
            }
        }
    }
}

/// The bind address a node's sockets use.
pub fn bind_addr(node: &Node) -> SocketAddrV4 {
    SocketAddrV4::new(node.public_ip, node.format.port())
}
