//! One forwarding worker: a mio poll loop over its own TUN queue and its own UDP socket,
//! with its own buffer. Reads are drained in bounded batches (mio is edge-triggered); the
//! loop takes no lock and allocates nothing per packet.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tun_rs::SyncDevice;

use super::counters::WorkerCounters;
use crate::encap::{gso, DropReason, Inbound, Node, Outbound, HEADROOM};
use crate::lease::LeaseTable;
use crate::wire::ipv4;

const TUN: Token = Token(0);
const UDP: Token = Token(1);
/// Packets handled per source before looking at the other one.
const BATCH: usize = 64;
/// How long a poll waits before re-checking the stop flag.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
/// Room for the largest IPv4 packet after the headroom.
const BUF_LEN: usize = HEADROOM + 65536;

/// What a worker owns.
pub struct Worker {
    /// This worker's TUN queue.
    pub tun: SyncDevice,
    /// This worker's UDP socket (SO_REUSEPORT with its siblings).
    pub sock: UdpSocket,
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
}

impl Worker {
    /// Runs until `stop` is set. Returns an error only if polling itself fails.
    pub fn run(mut self) -> io::Result<()> {
        let mut poll = Poll::new()?;
        let tun_fd = self.tun.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
        poll.registry()
            .register(&mut self.sock, UDP, Interest::READABLE)?;
        let mut events = Events::with_capacity(8);
        let mut buf = vec![0u8; BUF_LEN];
        let mut scratch = vec![0u8; BUF_LEN];
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = poll.poll(&mut events, Some(POLL_TIMEOUT)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // Drain both sides until neither has anything left (edge-triggered).
            loop {
                let a = self.tun_to_underlay(&mut buf);
                let b = self.underlay_to_tun(&mut buf, &mut scratch);
                if a < BATCH && b < BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Handles up to BATCH packets from the TUN; returns how many were read.
    fn tun_to_underlay(&mut self, buf: &mut [u8]) -> usize {
        let c = &*self.counters;
        for n in 0..BATCH {
            let len = match self.tun.recv(&mut buf[HEADROOM..]) {
                Ok(l) => l,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return n,
            };
            self.ip_id = self.ip_id.wrapping_add(1);
            let snap = self.table.load();
            match self.node.outbound(&snap, buf, HEADROOM, len, self.ip_id) {
                Outbound::Send(t) => {
                    let dst = SocketAddr::V4(t.dst);
                    match self.sock.send_to(&buf[t.udp_payload()], dst) {
                        Ok(_) => {
                            WorkerCounters::add(&c.tx_packets, 1);
                            WorkerCounters::add(&c.tx_bytes, len as u64);
                        }
                        Err(_) => WorkerCounters::add(&c.send_errors, 1),
                    }
                }
                Outbound::Reply { packet, reason } => {
                    c.drop(reason);
                    match self.tun.send(&buf[packet]) {
                        Ok(_) => WorkerCounters::add(&c.icmp_sent, 1),
                        Err(_) => WorkerCounters::add(&c.tun_write_errors, 1),
                    }
                }
                Outbound::Drop(r) => c.drop(r),
            }
        }
        BATCH
    }

    /// Handles up to BATCH datagrams from the underlay; returns how many were read.
    fn underlay_to_tun(&mut self, buf: &mut [u8], scratch: &mut [u8]) -> usize {
        let c = &*self.counters;
        for n in 0..BATCH {
            let (len, from) = match self.sock.recv_from(&mut buf[HEADROOM..]) {
                Ok(v) => v,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return n,
            };
            let SocketAddr::V4(from) = from else {
                c.drop(DropReason::UnknownSender);
                continue;
            };
            let snap = self.table.load();
            // The outer ECN bits are not read from the socket yet (IP_RECVTOS): 0.
            match self.node.inbound(&snap, from, buf, HEADROOM, len, 0) {
                Inbound::Deliver(r) if r.len() > self.node.mtu => {
                    // A TSO super-packet from a kernel vxlan peer on a veth: segment it.
                    let inner = &buf[r];
                    let tun = &self.tun;
                    let split = gso::mss_for(inner, self.node.mtu)
                        .ok_or(DropReason::TooBig)
                        .and_then(|mss| {
                            gso::split_tcp4(inner, mss, scratch, |seg| match tun.send(seg) {
                                Ok(_) => {
                                    WorkerCounters::add(&c.rx_packets, 1);
                                    WorkerCounters::add(&c.rx_bytes, seg.len() as u64);
                                }
                                Err(_) => WorkerCounters::add(&c.tun_write_errors, 1),
                            })
                        });
                    if split.is_err() {
                        c.drop(DropReason::TooBig);
                    }
                }
                Inbound::Deliver(r) => {
                    // A kernel peer on a veth leaves inner TCP/UDP checksums partial
                    // (CHECKSUM_PARTIAL); a TUN without a virtio-net header cannot say so,
                    // and the pod would drop them. Complete them here.
                    ipv4::fill_transport_checksum(&mut buf[r.clone()]);
                    let l = r.len() as u64;
                    match self.tun.send(&buf[r]) {
                        Ok(_) => {
                            WorkerCounters::add(&c.rx_packets, 1);
                            WorkerCounters::add(&c.rx_bytes, l);
                        }
                        Err(_) => WorkerCounters::add(&c.tun_write_errors, 1),
                    }
                }
                Inbound::Drop(r) => c.drop(r),
            }
        }
        BATCH
    }
}
