//! The WireGuard dataplane's I/O: one thread per device moving packets between its TUN
//! (`flannel-wg`, and `flannel-wg-v6` in separate mode) and its UDP sockets (one per
//! underlay family it uses) through the sans-IO [`Node`]. Outbound, a packet's destination
//! is looked up in the lock-free lease table, as the VXLAN workers look it up, and its
//! peer's key names the tunnel; inbound, a decrypted packet reaches the TUN only if its
//! source lies in a subnet of the peer it came from (WireGuard's allowed IPs, which
//! boringtun's `Tunn` leaves to its caller). Which families a device carries and where it
//! reaches each peer is its [`DevicePlan`]'s. Timers run every quarter second; the
//! handshake rate limit restarts every second. The peers come from the store
//! ([`WgPeers`]), applied between polls.
//!
//! With the TUN's offloads a TSO super-packet is read whole, cut, and
//! its encrypted segments leave in one `UDP_SEGMENT` send; decrypted TCP segments are
//! merged into one TUN write ([`super::wg_batch`]); with `UDP_GRO` one read returns a
//! flow's datagrams back to back. Several workers come next.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::counters::WorkerCounters;
use super::sys;
use super::wg_batch::{Batch, Sockets, TunSide};
use super::wg_uapi::Published;
use super::TunQueue;
use crate::backend::wg_plan::{Allowed, DevicePlan, Local};
use crate::encap::DropReason;
use crate::lease::{LeaseTable, Peer};
use crate::offload::gro;
use crate::wg::uapi::{Device, PeerState};
use crate::wg::{Action, Drop as WgDrop, Key, Node, PeerId};

const TUN: Token = Token(0);
const UDP4: Token = Token(1);
const UDP6: Token = Token(2);
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

/// What every peer shares: the PSK and keepalive of the config; and this device's plan
/// and our public addresses, from which each peer's endpoint and allowed IPs follow.
#[derive(Clone, Copy)]
pub(crate) struct PeerSettings {
    /// The network's preshared key.
    pub(crate) psk: Option<Key>,
    /// Seconds between keepalives.
    pub(crate) keepalive: Option<u16>,
    /// The device.
    pub(crate) plan: DevicePlan,
    /// Our public addresses (auto mode weighs them).
    pub(crate) local: Local,
}

/// The thread's state.
pub(crate) struct WgLoop {
    tun: TunQueue,
    socks: Sockets,
    node: Node,
    settings: PeerSettings,
    peers: WgPeers,
    /// Per peer key: the endpoint its lease gave (a lease change re-sets the peer; a
    /// roam does not) and its subnets.
    configured: HashMap<[u8; 32], (SocketAddr, Allowed, PeerId)>,
    /// Per peer key: why it could not be configured, last said (said again on a change).
    refused: HashMap<[u8; 32], String>,
    /// The forwarding table, for outbound lookups.
    table: Arc<LeaseTable>,
    /// Each peer's subnets, by its id, for the inbound source check.
    allowed: Vec<Option<Allowed>>,
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
    /// A loop over `tun` and `socks` for the node with key `private`.
    pub(crate) fn new(
        tun: TunQueue,
        socks: Sockets,
        private: &Key,
        settings: PeerSettings,
        (peers, table, published): (WgPeers, Arc<LeaseTable>, Published),
        (counters, offloads): (Arc<WorkerCounters>, WgOffloads),
    ) -> io::Result<WgLoop> {
        for sock in socks.each() {
            prepare(sock, &offloads)?;
        }
        Ok(WgLoop {
            tun,
            socks,
            node: Node::new(private),
            settings,
            peers,
            configured: HashMap::new(),
            refused: HashMap::new(),
            table,
            allowed: Vec::new(),
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
        let tun_fd = self.tun.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
        for (sock, token) in [(&self.socks.v4, UDP4), (&self.socks.v6, UDP6)] {
            if let Some(sock) = sock {
                let fd = sock.as_raw_fd();
                poll.registry()
                    .register(&mut SourceFd(&fd), token, Interest::READABLE)?;
            }
        }
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

    /// Makes the node's peers the wireguard leases of `peers` this device carries, but
    /// ours.
    fn apply(&mut self, peers: &[Peer]) {
        let ours = self.node.public_key();
        let mut seen = HashSet::new();
        for p in peers {
            let Some(wg) = p.wg.filter(|w| w.public_key != ours) else {
                continue;
            };
            let key = wg.public_key;
            let route = match self.settings.plan.route(p, self.settings.local) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(why) => {
                    self.refuse(&key, why);
                    continue;
                }
            };
            self.refused.remove(&key.0);
            seen.insert(key.0);
            match self.configured.get(&key.0) {
                Some((e, a, _)) if *e == route.endpoint && *a == route.allowed => continue,
                _ => {}
            }
            let s = self.settings;
            let id = self
                .node
                .set_peer(&key, s.psk, s.keepalive, Some(route.endpoint));
            let (dev, endpoint) = (s.plan.name, route.endpoint);
            tracing::info!(allowed = ?route.allowed.nets(), %endpoint, "wireguard: {dev}: peer {}", key.to_base64());
            self.configured
                .insert(key.0, (route.endpoint, route.allowed, id));
        }
        self.forget_all_but(&seen);
    }

    /// Says once (until the reason changes) why the peer with `key` is left out.
    fn refuse(&mut self, key: &Key, why: String) {
        if self.refused.get(&key.0) != Some(&why) {
            let dev = self.settings.plan.name;
            tracing::warn!("wireguard: {dev}: no peer for {}: {why}", key.to_base64());
            self.refused.insert(key.0, why);
        }
    }

    /// Removes the peers whose keys are not in `seen`, and indexes the rest's subnets.
    fn forget_all_but(&mut self, seen: &HashSet<[u8; 32]>) {
        let gone: Vec<[u8; 32]> = self
            .configured
            .keys()
            .filter(|k| !seen.contains(*k))
            .copied()
            .collect();
        for k in gone {
            self.node.remove_peer(&Key(k));
            if let Some((_, allowed, _)) = self.configured.remove(&k) {
                tracing::info!(allowed = ?allowed.nets(), "wireguard: peer removed");
            }
        }
        self.allowed.clear();
        for (_, allowed, id) in self.configured.values() {
            if self.allowed.len() <= *id {
                self.allowed.resize(*id + 1, None);
            }
            self.allowed[*id] = Some(*allowed);
        }
    }

    /// The tunnel for packet `p`: the table's peer for its destination, by its key, if
    /// this device carries its family.
    fn peer_for(&self, p: &[u8]) -> Option<PeerId> {
        let plan = &self.settings.plan;
        let table = self.table.load();
        let peer = match destination(p)? {
            IpAddr::V4(d) if plan.v4 => table.lookup(d),
            IpAddr::V6(d) if plan.v6 => table.lookup6(d),
            _ => None,
        }?;
        self.node.peer(&peer.wg?.public_key)
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
        self.batch.flush(&self.socks, &self.counters);
        more
    }

    /// Encrypts segment `i` of the last TUN read into the batch.
    fn encrypt(&mut self, i: usize) {
        let p = &self.tun_side.segs[i][..self.tun_side.sizes[i]];
        let Some(id) = self.peer_for(p) else {
            WorkerCounters::drop(&self.counters, DropReason::NoLease);
            return;
        };
        let len = p.len();
        let mut data = None;
        match self.node.send(id, p, self.batch.slot()) {
            // Transport data joins the batch; a handshake message leaves now.
            Action::Send(to, d) if d.first() == Some(&4) => data = Some((to, d.len())),
            other => send(&self.socks, &self.counters, other),
        }
        if let Some((to, n)) = data {
            WorkerCounters::add(&self.counters.tx_packets, 1);
            WorkerCounters::add(&self.counters.tx_bytes, len as u64);
            self.batch.commit(&self.socks, &self.counters, to, n);
        }
    }

    /// Receives and decrypts what the sockets hold; true if they may hold more.
    fn drain_udp(&mut self, rx: &mut RxBufs) -> bool {
        let mut more = false;
        for v6 in [false, true] {
            more |= self.drain_socket(v6, rx);
        }
        self.tun_side.flush(&self.tun, &self.counters);
        more
    }

    /// [`Self::drain_udp`] for the socket of one family, if there is one.
    fn drain_socket(&mut self, v6: bool, rx: &mut RxBufs) -> bool {
        for _ in 0..READS_PER_ROUND {
            let sock = if v6 { &self.socks.v6 } else { &self.socks.v4 };
            let Some(sock) = sock else { return false };
            let got = match sys::recv_many(sock, &mut rx.bufs, 0, &mut rx.meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
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
        true
    }

    /// Handles one datagram from `from`: delivers what it decrypts to, answers what it
    /// asks, and sends what a completed handshake released.
    fn receive(&mut self, from: SocketAddr, datagram: &[u8]) {
        let (id, act) = self.node.receive(from, datagram, &mut self.out);
        let c = &self.counters;
        match (id, act) {
            (Some(id), Action::Deliver(p)) if allowed(&self.allowed, id, p) => {
                self.tun_side.deliver(&self.tun, c, p)
            }
            (Some(_), Action::Deliver(_)) => WorkerCounters::drop(c, DropReason::SpoofedSource),
            (None, Action::Send(to, m)) => {
                WorkerCounters::add(&c.wg_cookie_replies, 1);
                let _ = self.socks.send_to(m, to);
            }
            (_, other) => send(&self.socks, c, other),
        }
        let Some(id) = id else { return };
        loop {
            match self.node.flush(id, &mut self.out) {
                Action::Nothing | Action::Dropped(_) => break,
                other => send(&self.socks, &self.counters, other),
            }
        }
    }

    fn tick(&mut self) {
        let ids: Vec<PeerId> = self.configured.values().map(|(_, _, id)| *id).collect();
        for id in ids {
            let act = self.node.tick(id, &mut self.out);
            send(&self.socks, &self.counters, act);
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
            .map(|(key, (_, allowed, id))| {
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
                    allowed_ips: allowed.nets(),
                }
            })
            .collect();
        let dev = Device {
            private_key: Some(self.private),
            listen_port: self.settings.plan.port,
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

/// Makes `sock` non-blocking with the buffers and GRO of `offloads`.
fn prepare(sock: &UdpSocket, offloads: &WgOffloads) -> io::Result<()> {
    sock.set_nonblocking(true)?;
    if let Err(e) = sys::force_buffers(sock, offloads.socket_buffer.min(i32::MAX as u32) as i32) {
        tracing::warn!("wireguard: cannot size socket buffers: {e}");
    }
    if offloads.gro {
        if let Err(e) = sys::enable_udp_gro(sock) {
            tracing::warn!("wireguard: UDP GRO unavailable ({e}); one datagram per read");
        }
    }
    Ok(())
}

/// Does what `act` says with the sockets, counting a drop.
fn send(socks: &Sockets, c: &WorkerCounters, act: Action<'_>) {
    match act {
        Action::Send(to, d) => {
            if socks.send_to(d, to).is_err() {
                WorkerCounters::add(&c.send_errors, 1);
            }
        }
        Action::Dropped(r) => WorkerCounters::add(&c.wg_drops[r.index()], 1),
        Action::Deliver(_) | Action::Nothing => {}
    }
}

/// The destination of IP packet `p`, if its header holds one.
fn destination(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(p.get(16..20)?).ok()?,
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(p.get(24..40)?).ok()?,
        ))),
        _ => None,
    }
}

/// The source of IP packet `p`, if its header holds one.
fn source(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&p[12..16]).ok()?,
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(p.get(8..24)?).ok()?,
        ))),
        _ => None,
    }
}

/// Whether decrypted packet `p` from peer `id` comes from an address that peer holds.
fn allowed(allowed: &[Option<Allowed>], id: PeerId, p: &[u8]) -> bool {
    let Some(src) = source(p) else { return false };
    allowed
        .get(id)
        .copied()
        .flatten()
        .is_some_and(|a| a.contains(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_s_addresses_are_read_by_its_version_and_never_past_its_end() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 244, 1, 5]);
        v4[16..20].copy_from_slice(&[10, 244, 2, 6]);
        assert_eq!(source(&v4), Some("10.244.1.5".parse().unwrap()));
        assert_eq!(destination(&v4), Some("10.244.2.6".parse().unwrap()));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[8..24].copy_from_slice(&"fd00:10:244:1::5".parse::<Ipv6Addr>().unwrap().octets());
        v6[24..40].copy_from_slice(&"fd00:10:244:2::6".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(source(&v6), Some("fd00:10:244:1::5".parse().unwrap()));
        assert_eq!(destination(&v6), Some("fd00:10:244:2::6".parse().unwrap()));
        for short in [&v4[..19], &v6[..39], &[][..], &[0x50; 40][..]] {
            assert_eq!(destination(short), None, "{short:?}");
        }
        assert_eq!(source(&v6[..23]), None);
        // Allowed IPs by family: an IPv6 source needs the peer's IPv6 subnet.
        let only4 = Allowed {
            v4: Some("10.244.1.0/24".parse().unwrap()),
            v6: None,
        };
        assert!(allowed(&[Some(only4)], 0, &v4));
        assert!(!allowed(&[Some(only4)], 0, &v6));
        assert!(!allowed(&[Some(only4)], 1, &v4));
    }
}
