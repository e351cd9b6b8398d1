//! The WireGuard dataplane's batching, as the VXLAN workers batch: a TSO super-packet read
//! from the TUN is cut into its segments ([`gso::split_read`]), each encrypted into the
//! next slot of a [`Batch`], and the batch leaves in one `UDP_SEGMENT` sendmsg (the kernel
//! cuts it into datagrams); decrypted TCP segments are merged by the [`Coalescer`] into
//! one TUN write. Without offloads (an old kernel, `WEFT_TUN_OFFLOAD=false`,
//! `WEFT_UDP_GSO=false`) the same code moves one packet per system call.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use super::counters::WorkerCounters;
use super::sys;
use super::TunQueue;
use crate::encap::DropReason;
use crate::offload::gro::Coalescer;
use crate::offload::gso;
use crate::wire::{ipv4, ipv6};

/// The most bytes one batch carries: a UDP datagram's payload (the kernel's GSO limit).
const BATCH_BYTES: usize = 65_000;
/// The most datagrams one `UDP_SEGMENT` send may carry (the kernel's `UDP_MAX_SEGMENTS`).
const BATCH_SEGMENTS: usize = 64;
/// Room for one datagram past the batch: the largest packet and WireGuard's 32 bytes.
const SLOT: usize = 65_536 + 64;

/// A device's UDP sockets: one per underlay family it reaches peers over, on its port.
#[derive(Default)]
pub(crate) struct Sockets {
    /// The IPv4 one.
    pub(crate) v4: Option<UdpSocket>,
    /// The IPv6 one.
    pub(crate) v6: Option<UdpSocket>,
}

impl Sockets {
    /// The socket that reaches `to`.
    pub(crate) fn to(&self, to: &SocketAddr) -> Option<&UdpSocket> {
        match to {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }

    /// Sends `d` to `to` from the socket of its family.
    pub(crate) fn send_to(&self, d: &[u8], to: SocketAddr) -> io::Result<usize> {
        let no = || io::Error::from(io::ErrorKind::AddrNotAvailable);
        self.to(&to).ok_or_else(no)?.send_to(d, to)
    }

    /// Both, IPv4's first, where present.
    pub(crate) fn each(&self) -> impl Iterator<Item = &UdpSocket> {
        self.v4.iter().chain(self.v6.iter())
    }
}

/// Encrypted datagrams to one address, back to back: all of one length but the last,
/// which may be shorter, as `UDP_SEGMENT` wants them.
pub(crate) struct Batch {
    buf: Vec<u8>,
    used: usize,
    seg: usize,
    n: usize,
    to: Option<SocketAddr>,
    closed: bool,
    max: usize,
}

impl Batch {
    /// An empty batch of up to 64 datagrams with `gso`, else of one.
    pub(crate) fn new(gso: bool) -> Batch {
        Batch {
            buf: vec![0; BATCH_BYTES + SLOT],
            used: 0,
            seg: 0,
            n: 0,
            to: None,
            closed: false,
            max: if gso { BATCH_SEGMENTS } else { 1 },
        }
    }

    /// Where the next datagram is written.
    pub(crate) fn slot(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..]
    }

    /// Takes the `len` bytes just written to [`Batch::slot`] for `to`: appended, or, when
    /// they cannot join (another address, a longer datagram, a full batch), sent after
    /// what is held.
    pub(crate) fn commit(
        &mut self,
        sock: &Sockets,
        c: &WorkerCounters,
        to: SocketAddr,
        len: usize,
    ) {
        let joins = self.n > 0
            && self.to == Some(to)
            && !self.closed
            && len <= self.seg
            && self.used + len <= BATCH_BYTES;
        if self.n > 0 && !joins {
            let at = self.used;
            self.flush(sock, c);
            self.buf.copy_within(at..at + len, 0);
        }
        if self.n == 0 {
            (self.seg, self.to, self.closed) = (len, Some(to), false);
        } else if len < self.seg {
            self.closed = true;
        }
        self.used += len;
        self.n += 1;
        if self.n >= self.max {
            self.flush(sock, c);
        }
    }

    /// Sends what is held.
    pub(crate) fn flush(&mut self, socks: &Sockets, c: &WorkerCounters) {
        let Some(to) = self.to.take() else {
            return;
        };
        let segment = (self.n > 1).then_some(self.seg as u16);
        let iov = [io::IoSlice::new(&self.buf[..self.used])];
        let sent = socks
            .to(&to)
            .map(|sock| sys::send_segments(sock, to, &iov, segment, 0));
        if !matches!(sent, Some(Ok(_))) {
            WorkerCounters::add(&c.send_errors, self.n as u64);
        }
        (self.used, self.n) = (0, 0);
    }
}

/// The TUN side: how reads are cut and writes merged, by whether the device carries the
/// virtio-net header.
pub(crate) struct TunSide {
    /// Whether the TUN has the virtio-net header (and TSO).
    pub(crate) offload: bool,
    /// The segments of the last read, and their lengths.
    pub(crate) segs: Vec<Vec<u8>>,
    pub(crate) sizes: Vec<usize>,
    co: Box<Coalescer>,
}

impl TunSide {
    /// Buffers for packets of up to `mtu` bytes.
    pub(crate) fn new(offload: bool, mtu: usize) -> TunSide {
        let n = if offload { 128 } else { 1 };
        TunSide {
            offload,
            segs: (0..n).map(|_| vec![0; mtu.max(1500) + 64]).collect(),
            sizes: vec![0; n],
            co: Box::new(Coalescer::new()),
        }
    }

    /// Cuts the read `rd` into `segs`: how many packets it held (0: a read the kernel
    /// should not have made, dropped).
    pub(crate) fn split(&mut self, rd: &mut [u8]) -> usize {
        if !self.offload {
            let Some(dst) = self.segs[0].get_mut(..rd.len()) else {
                return 0;
            };
            dst.copy_from_slice(rd);
            self.sizes[0] = rd.len();
            return 1;
        }
        if rd.len() < tun_rs::VIRTIO_NET_HDR_LEN {
            return 0;
        }
        let (vh, pkt) = rd.split_at_mut(tun_rs::VIRTIO_NET_HDR_LEN);
        gso::split_read(vh, pkt, &mut self.segs, &mut self.sizes, 0).unwrap_or(0)
    }

    /// Writes decrypted packet `p` (its source already checked): merged with its flow's
    /// neighbours when the TUN takes super-packets (TCP and UDP over IPv4), else alone.
    pub(crate) fn deliver(&mut self, tun: &TunQueue, c: &WorkerCounters, p: &[u8]) {
        if let Err(reason) = check_inner(p) {
            c.drop(reason);
            return;
        }
        WorkerCounters::add(&c.rx_packets, 1);
        WorkerCounters::add(&c.rx_bytes, p.len() as u64);
        if !self.offload {
            write(tun, c, p);
        } else if !self.co.push(p) {
            self.flush(tun, c);
            self.co.push(p);
        }
    }

    /// Writes the merged packet held, if any.
    pub(crate) fn flush(&mut self, tun: &TunQueue, c: &WorkerCounters) {
        if let Some(bytes) = self.co.flush() {
            write(tun, c, bytes);
        }
    }
}

/// A decrypted packet's header: a whole IPv4 header with its checksum right, or a whole
/// IPv6 header within the packet.
fn check_inner(p: &[u8]) -> Result<(), DropReason> {
    match p.first().map(|b| b >> 4) {
        Some(4) => match ipv4::Packet::new_checked(p) {
            Ok(ip) if ip.verify_checksum() => Ok(()),
            Ok(_) => Err(DropReason::InnerChecksum),
            Err(_) => Err(DropReason::MalformedInner),
        },
        Some(6) if ipv6::Packet::new_checked(p).is_ok() => Ok(()),
        _ => Err(DropReason::MalformedInner),
    }
}

fn write(tun: &TunQueue, c: &WorkerCounters, p: &[u8]) {
    if tun.send(p).is_err() {
        WorkerCounters::add(&c.tun_write_errors, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits datagrams of `lens` (each filled with its index) to a receiver on
    /// loopback; returns what arrived, as (length, fill) per datagram.
    fn through(gso: bool, lens: &[usize]) -> Vec<(usize, u8)> {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = Sockets {
            v4: Some(UdpSocket::bind("127.0.0.1:0").unwrap()),
            v6: None,
        };
        let to = rx.local_addr().unwrap();
        let c = WorkerCounters::default();
        let mut b = Batch::new(gso);
        for (i, &len) in lens.iter().enumerate() {
            b.slot()[..len].fill(i as u8);
            b.commit(&tx, &c, to, len);
        }
        b.flush(&tx, &c);
        assert_eq!(c.send_errors.load(std::sync::atomic::Ordering::Relaxed), 0);
        rx.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..200 {
            match rx.recv(&mut buf) {
                Ok(n) => got.push((n, buf[0])),
                Err(_) if got.len() == lens.len() => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        got
    }

    #[test]
    fn a_batch_leaves_as_the_datagrams_it_was_given_in_order() {
        // Equal lengths and a shorter last one: one send; a longer one after a shorter,
        // and one past the batch's byte limit, start new sends.
        let mut lens = vec![1200, 1200, 1200, 700, 1300, 100];
        lens.extend(std::iter::repeat_n(1400, 60));
        let want: Vec<(usize, u8)> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, i as u8))
            .collect();
        for gso in [true, false] {
            assert_eq!(through(gso, &lens), want, "gso {gso}");
        }
    }
}
