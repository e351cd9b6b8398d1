//! The WireGuard dataplane's I/O: one thread moving packets between the `flannel-wg` TUN
//! and one UDP socket through the sans-IO [`Node`]. Outbound, a packet's destination is
//! looked up in the lock-free lease table, as the VXLAN workers look it up, and its peer's
//! key names the tunnel; inbound, a decrypted packet reaches the TUN only if its source
//! lies in the subnet of the peer it came from (WireGuard's allowed IPs, which
//! boringtun's `Tunn` leaves to its caller). Timers run every quarter second; the
//! handshake rate limit restarts every second. The peers come from the store
//! ([`WgPeers`]), applied between polls.
//!
//! One thread, IPv4. With the TUN's offloads a TSO super-packet is read whole, cut, and
//! its encrypted segments leave in one `UDP_SEGMENT` send; decrypted TCP segments are
//! merged into one TUN write ([`super::wg_batch`]); with `UDP_GRO` one read returns a
//! flow's datagrams back to back. Several workers come next.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ipnet::{IpNet, Ipv4Net};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::counters::WorkerCounters;
use super::sys;
use super::wg_batch::{Batch, TunSide};
use super::wg_uapi::Published;
use super::TunQueue;
use crate::encap::DropReason;
use crate::lease::{LeaseTable, Peer};
use crate::offload::gro;
use crate::wg::uapi::{Device, PeerState};
use crate::wg::{Action, Drop as WgDrop, Key, Node, PeerId};

const TUN: Token = Token(0);
const UDP: Token = Token(1);
const TICK: Duration = Duration::from_millis(250);
/// Reads from either side before the other gets its turn.
const READS_PER_ROUND: usize = 64;

/// The live peers, handed from the store's thread to the dataplane's: the newest list
/// replaces any the dataplane has not taken yet.
#[derive(Default, Clone)]
pub(crate) struct WgPeers(Arc<Mutex<Option<Vec<Peer>>>>);

impl WgPeers {
    /// Offers `peers` (our own lease may be among them: it is left out by key).
    pub(crate) fn offer(&self, peers: &[Peer]) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(peers.to_vec());
        }
    }

    fn take(&self) -> Option<Vec<Peer>> {
        self.0.lock().ok()?.take()
    }
}

/// What every peer shares: the PSK and keepalive of the config, and our port (a peer's
/// lease without one means ours, as flanneld reads it).
#[derive(Clone, Copy)]
pub(crate) struct PeerSettings {
    /// The network's preshared key.
    pub(crate) psk: Option<Key>,
    /// Seconds between keepalives.
    pub(crate) keepalive: Option<u16>,
    /// Our listening port.
    pub(crate) port: u16,
}

/// The thread's state.
pub(crate) struct WgLoop {
    tun: TunQueue,
    sock: UdpSocket,
    node: Node,
    settings: PeerSettings,
    peers: WgPeers,
    /// Per peer key: the endpoint its lease gave (a lease change re-sets the peer; a
    /// roam does not) and its subnet.
    configured: HashMap<[u8; 32], (SocketAddr, Ipv4Net, PeerId)>,
    /// The forwarding table, for outbound lookups.
    table: Arc<LeaseTable>,
    /// Each peer's subnet, by its id, for the inbound source check.
    subnets: Vec<Option<Ipv4Net>>,
    /// Per peer id: how long ago its session was established, at the last tick (a
    /// smaller figure now is a new session).
    sessions: Vec<Option<Duration>>,
    counters: Arc<WorkerCounters>,
    out: Vec<u8>,
    batch: Batch,
    tun_side: TunSide,
    /// Our key, for the UAPI socket.
    private: Key,
    /// What the UAPI socket answers from, refreshed every tick.
    published: Published,
}

/// The offloads the loop uses, from the dataplane's settings.
#[derive(Clone, Copy)]
pub(crate) struct WgOffloads {
    /// The TUN has the virtio-net header and TSO.
    pub(crate) tun: bool,
    /// `UDP_SEGMENT` sends.
    pub(crate) gso: bool,
    /// `UDP_GRO` receives.
    pub(crate) gro: bool,
    /// The pods' MTU.
    pub(crate) mtu: usize,
    /// The socket's buffers, each way, in bytes.
    pub(crate) socket_buffer: u32,
}

/// One `recvmmsg`'s buffers (each message possibly a GRO batch), allocated once.
struct RxBufs {
    bufs: Vec<Vec<u8>>,
    meta: Vec<sys::RecvMeta>,
}

impl RxBufs {
    fn new() -> RxBufs {
        let none = sys::RecvMeta {
            len: 0,
            from: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            stride: 0,
            truncated: false,
            tos: 0,
        };
        RxBufs {
            bufs: (0..sys::RECV_BATCH).map(|_| vec![0; 65536]).collect(),
            meta: vec![none; sys::RECV_BATCH],
        }
    }
}

impl WgLoop {
    /// A loop over `tun` and `sock` for the node with key `private`.
    pub(crate) fn new(
        tun: TunQueue,
        sock: UdpSocket,
        private: &Key,
        settings: PeerSettings,
        (peers, table, published): (WgPeers, Arc<LeaseTable>, Published),
        (counters, offloads): (Arc<WorkerCounters>, WgOffloads),
    ) -> io::Result<WgLoop> {
        sock.set_nonblocking(true)?;
        if let Err(e) =
            sys::force_buffers(&sock, offloads.socket_buffer.min(i32::MAX as u32) as i32)
        {
            tracing::warn!("wireguard: cannot size socket buffers: {e}");
        }
        if offloads.gro {
            if let Err(e) = sys::enable_udp_gro(&sock) {
                tracing::warn!("wireguard: UDP GRO unavailable ({e}); one datagram per read");
            }
        }
        Ok(WgLoop {
            tun,
            sock,
            node: Node::new(private),
            settings,
            peers,
            configured: HashMap::new(),
            table,
            subnets: Vec::new(),
            sessions: Vec::new(),
            counters,
            out: vec![0u8; 65536 + 64],
            private: *private,
            published,
            batch: Batch::new(offloads.gso),
            tun_side: TunSide::new(offloads.tun, offloads.mtu),
        })
    }

    /// Runs until `stop` is set.
    pub(crate) fn run(mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut poll = Poll::new()?;
        let (tun_fd, sock_fd) = (self.tun.as_raw_fd(), self.sock.as_raw_fd());
        poll.registry()
            .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&sock_fd), UDP, Interest::READABLE)?;
        let mut events = Events::with_capacity(8);
        let mut buf = vec![0u8; 65536 + 64];
        let mut rx = RxBufs::new();
        let (mut last_tick, mut last_reset) = (Instant::now(), Instant::now());
        let mut busy = false;
        while !stop.load(Ordering::Relaxed) {
            if let Some(p) = self.peers.take() {
                self.apply(&p);
            }
            // Events are edge-triggered: a side left with more to read is read again
            // without waiting.
            let wait = if busy { Duration::ZERO } else { TICK };
            match poll.poll(&mut events, Some(wait)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => r?,
            }
            busy = self.drain_tun(&mut buf) | self.drain_udp(&mut rx);
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick();
            }
            if last_reset.elapsed() >= Duration::from_secs(1) {
                last_reset = Instant::now();
                self.node.reset_rate_limit();
            }
        }
        Ok(())
    }

    /// Makes the node's peers the wireguard leases of `peers`, but ours.
    fn apply(&mut self, peers: &[Peer]) {
        let ours = self.node.public_key();
        let mut seen = HashSet::new();
        for p in peers {
            let (Some(wg), Some(subnet)) = (p.wg, p.subnet) else {
                continue;
            };
            if wg.public_key == ours {
                continue;
            }
            let port = wg.port.unwrap_or(self.settings.port);
            let endpoint = SocketAddr::new(IpAddr::V4(p.public_ip), port);
            seen.insert(wg.public_key.0);
            match self.configured.get(&wg.public_key.0) {
                Some((e, s, _)) if *e == endpoint && *s == subnet => continue,
                _ => {}
            }
            let s = self.settings;
            let id = self
                .node
                .set_peer(&wg.public_key, s.psk, s.keepalive, Some(endpoint));
            tracing::info!(%subnet, %endpoint, "wireguard: peer {}", wg.public_key.to_base64());
            self.configured
                .insert(wg.public_key.0, (endpoint, subnet, id));
        }
        let gone: Vec<[u8; 32]> = self
            .configured
            .keys()
            .filter(|k| !seen.contains(*k))
            .copied()
            .collect();
        for k in gone {
            self.node.remove_peer(&Key(k));
            if let Some((_, subnet, _)) = self.configured.remove(&k) {
                tracing::info!(%subnet, "wireguard: peer removed");
            }
        }
        self.subnets.clear();
        for (_, subnet, id) in self.configured.values() {
            if self.subnets.len() <= *id {
                self.subnets.resize(*id + 1, None);
            }
            self.subnets[*id] = Some(*subnet);
        }
    }

    /// The tunnel to `dst`: the table's peer for it, by its key.
    fn peer_for(&self, dst: Ipv4Addr) -> Option<PeerId> {
        let key = self.table.load().lookup(dst)?.wg?.public_key;
        self.node.peer(&key)
    }

    /// Reads and encrypts what the TUN holds; true if it may hold more (the round's
    /// reads ran out first).
    fn drain_tun(&mut self, buf: &mut [u8]) -> bool {
        let mut more = true;
        for _ in 0..READS_PER_ROUND {
            let Ok(n) = self.tun.recv(buf) else {
                more = false;
                break;
            };
            let k = self.tun_side.split(&mut buf[..n]);
            for i in 0..k {
                self.encrypt(i);
            }
        }
        self.batch.flush(&self.sock, &self.counters);
        more
    }

    /// Encrypts segment `i` of the last TUN read into the batch.
    fn encrypt(&mut self, i: usize) {
        let p = &self.tun_side.segs[i][..self.tun_side.sizes[i]];
        if p.len() < 20 || p[0] >> 4 != 4 {
            return;
        }
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let Some(id) = self.peer_for(dst) else {
            WorkerCounters::drop(&self.counters, DropReason::NoLease);
            return;
        };
        let len = p.len();
        let mut data = None;
        match self.node.send(id, p, self.batch.slot()) {
            // Transport data joins the batch; a handshake message leaves now.
            Action::Send(to, d) if d.first() == Some(&4) => data = Some((to, d.len())),
            other => send(&self.sock, &self.counters, other),
        }
        if let Some((to, n)) = data {
            WorkerCounters::add(&self.counters.tx_packets, 1);
            WorkerCounters::add(&self.counters.tx_bytes, len as u64);
            self.batch.commit(&self.sock, &self.counters, to, n);
        }
    }

    /// Receives and decrypts what the socket holds; true if it may hold more.
    fn drain_udp(&mut self, rx: &mut RxBufs) -> bool {
        let mut more = true;
        for _ in 0..READS_PER_ROUND {
            let got = match sys::recv_many(&self.sock, &mut rx.bufs, 0, &mut rx.meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    more = false;
                    break;
                }
            };
            for (buf, meta) in rx.bufs.iter().zip(&rx.meta).take(got) {
                if meta.truncated {
                    WorkerCounters::add(&self.counters.wg_drops[WgDrop::Malformed.index()], 1);
                    continue;
                }
                for d in gro::datagrams(meta.len, meta.stride) {
                    self.receive(meta.from, &buf[d]);
                }
            }
        }
        self.tun_side.flush(&self.tun, &self.counters);
        more
    }

    /// Handles one datagram from `from`: delivers what it decrypts to, answers what it
    /// asks, and sends what a completed handshake released.
    fn receive(&mut self, from: SocketAddr, datagram: &[u8]) {
        let (id, act) = self.node.receive(from, datagram, &mut self.out);
        let c = &self.counters;
        match (id, act) {
            (Some(id), Action::Deliver(p)) if allowed(&self.subnets, id, p) => {
                self.tun_side.deliver(&self.tun, c, p)
            }
            (Some(_), Action::Deliver(_)) => WorkerCounters::drop(c, DropReason::SpoofedSource),
            (None, Action::Send(to, m)) => {
                WorkerCounters::add(&c.wg_cookie_replies, 1);
                let _ = self.sock.send_to(m, to);
            }
            (_, other) => send(&self.sock, c, other),
        }
        let Some(id) = id else { return };
        loop {
            match self.node.flush(id, &mut self.out) {
                Action::Nothing | Action::Dropped(_) => break,
                other => send(&self.sock, &self.counters, other),
            }
        }
    }

    fn tick(&mut self) {
        let ids: Vec<PeerId> = self.configured.values().map(|(_, _, id)| *id).collect();
        for id in ids {
            let act = self.node.tick(id, &mut self.out);
            send(&self.sock, &self.counters, act);
            self.count_session(id);
        }
        self.publish();
    }

    /// Refreshes what the UAPI socket answers (`wg show`).
    fn publish(&self) {
        let now = SystemTime::now();
        let peers = self
            .configured
            .iter()
            .map(|(key, (_, subnet, id))| {
                let (tx_bytes, rx_bytes) = self.node.traffic(*id);
                PeerState {
                    public_key: Key(*key),
                    psk: self.settings.psk,
                    endpoint: self.node.endpoint(*id),
                    last_handshake: self
                        .node
                        .last_handshake(*id)
                        .and_then(|d| now.checked_sub(d)),
                    tx_bytes,
                    rx_bytes,
                    keepalive: self.settings.keepalive,
                    allowed_ips: vec![IpNet::V4(*subnet)],
                }
            })
            .collect();
        let dev = Device {
            private_key: Some(self.private),
            listen_port: self.settings.port,
            peers,
        };
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = dev;
    }

    /// Counts a session established with peer `id` since the last tick.
    fn count_session(&mut self, id: PeerId) {
        if self.sessions.len() <= id {
            self.sessions.resize(id + 1, None);
        }
        let now = self.node.last_handshake(id);
        let new = match (self.sessions[id], now) {
            (None, Some(_)) => true,
            (Some(before), Some(now)) => now < before,
            (_, None) => false,
        };
        if new {
            WorkerCounters::add(&self.counters.wg_handshakes, 1);
        }
        self.sessions[id] = now;
    }
}

/// Does what `act` says with the socket, counting a drop.
fn send(sock: &UdpSocket, c: &WorkerCounters, act: Action<'_>) {
    match act {
        Action::Send(to, d) => {
            if sock.send_to(d, to).is_err() {
                WorkerCounters::add(&c.send_errors, 1);
            }
        }
        Action::Dropped(r) => WorkerCounters::add(&c.wg_drops[r.index()], 1),
        Action::Deliver(_) | Action::Nothing => {}
    }
}

/// Whether decrypted packet `p` from peer `id` comes from an address that peer holds.
fn allowed(subnets: &[Option<Ipv4Net>], id: PeerId, p: &[u8]) -> bool {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return false;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    subnets
        .get(id)
        .copied()
        .flatten()
        .is_some_and(|s| s.contains(&src))
}
