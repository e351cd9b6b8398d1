//! Per-worker counters: each worker bumps its own cache line with relaxed atomics (no lock,
//! no sharing); readers sum them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::encap::DropReason;
use crate::wg::Drop as WgDrop;

/// One worker's counters, alone on its cache lines.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Inner packets read from the TUN and sent to a peer, in wire packets (a TSO
    /// super-packet counts as the segments it is cut into).
    pub tx_packets: AtomicU64,
    /// Their inner bytes.
    pub tx_bytes: AtomicU64,
    /// Inner packets received from a peer and written to the TUN, in wire packets (a
    /// peer's super-packet counts as the segments it stands for).
    pub rx_packets: AtomicU64,
    /// Their inner bytes.
    pub rx_bytes: AtomicU64,
    /// ICMP errors written back to the TUN.
    pub icmp_sent: AtomicU64,
    /// ICMP errors not sent: the kernel's rate limits said no.
    pub icmp_ratelimited: AtomicU64,
    /// Datagrams the kernel dropped for this worker's socket (the sender filter, or a full
    /// receive buffer): the socket's own counter, added up as read once a second.
    pub socket_drops: AtomicU64,
    /// Underlay sends that failed (buffer full, no route).
    pub send_errors: AtomicU64,
    /// TUN writes that failed.
    pub tun_write_errors: AtomicU64,
    /// TSO super-packets encapsulated once and handed whole to the kernel's UDP-tunnel GSO.
    pub tunnel_gso_frames: AtomicU64,
    /// Drops by reason, indexed by [`DropReason::index`].
    pub drops: [AtomicU64; DropReason::COUNT],
    /// WireGuard datagrams dropped, by reason, indexed by [`WgDrop::index`].
    pub wg_drops: [AtomicU64; WgDrop::COUNT],
    /// Cookie replies sent to handshake initiations while under load.
    pub wg_cookie_replies: AtomicU64,
    /// WireGuard sessions established (the first with a peer, then every rekey).
    pub wg_handshakes: AtomicU64,
}

impl WorkerCounters {
    /// Counts one drop.
    #[inline]
    pub fn drop(&self, r: DropReason) {
        self.drops[r.index()].fetch_add(1, Relaxed);
    }

    /// Adds `n` to a counter.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}

/// Summed values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// See [`WorkerCounters::tx_packets`].
    pub tx_packets: u64,
    /// See [`WorkerCounters::tx_bytes`].
    pub tx_bytes: u64,
    /// See [`WorkerCounters::rx_packets`].
    pub rx_packets: u64,
    /// See [`WorkerCounters::rx_bytes`].
    pub rx_bytes: u64,
    /// See [`WorkerCounters::icmp_sent`].
    pub icmp_sent: u64,
    /// See [`WorkerCounters::icmp_ratelimited`].
    pub icmp_ratelimited: u64,
    /// See [`WorkerCounters::socket_drops`].
    pub socket_drops: u64,
    /// See [`WorkerCounters::send_errors`].
    pub send_errors: u64,
    /// See [`WorkerCounters::tun_write_errors`].
    pub tun_write_errors: u64,
    /// See [`WorkerCounters::tunnel_gso_frames`].
    pub tunnel_gso_frames: u64,
    /// Drops by reason.
    pub drops: [u64; DropReason::COUNT],
    /// See [`WorkerCounters::wg_drops`].
    pub wg_drops: [u64; WgDrop::COUNT],
    /// See [`WorkerCounters::wg_cookie_replies`].
    pub wg_cookie_replies: u64,
    /// See [`WorkerCounters::wg_handshakes`].
    pub wg_handshakes: u64,
}

/// All workers' counters.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    workers: Vec<Arc<WorkerCounters>>,
}

impl Counters {
    /// Counters for `n` workers. Clones share them, so a dataplane recreated with the same
    /// set (after its TUN was deleted, say) keeps counting where the last one stopped.
    pub fn with_workers(n: usize) -> Counters {
        Counters {
            workers: (0..n).map(|_| Arc::default()).collect(),
        }
    }

    /// Worker `i`'s counters (a fresh, unshared set past the end).
    pub fn worker(&self, i: usize) -> Arc<WorkerCounters> {
        self.workers.get(i).cloned().unwrap_or_default()
    }

    /// The sum over workers.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for w in &self.workers {
            t.tx_packets += w.tx_packets.load(Relaxed);
            t.tx_bytes += w.tx_bytes.load(Relaxed);
            t.rx_packets += w.rx_packets.load(Relaxed);
            t.rx_bytes += w.rx_bytes.load(Relaxed);
            t.icmp_sent += w.icmp_sent.load(Relaxed);
            t.icmp_ratelimited += w.icmp_ratelimited.load(Relaxed);
            t.socket_drops += w.socket_drops.load(Relaxed);
            t.send_errors += w.send_errors.load(Relaxed);
            t.tun_write_errors += w.tun_write_errors.load(Relaxed);
            t.tunnel_gso_frames += w.tunnel_gso_frames.load(Relaxed);
            for (d, s) in t.drops.iter_mut().zip(&w.drops) {
                *d += s.load(Relaxed);
            }
            for (d, s) in t.wg_drops.iter_mut().zip(&w.wg_drops) {
                *d += s.load(Relaxed);
            }
            t.wg_cookie_replies += w.wg_cookie_replies.load(Relaxed);
            t.wg_handshakes += w.wg_handshakes.load(Relaxed);
        }
        t
    }
}

impl Totals {
    /// Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self, leases: usize) -> String {
        let mut s = String::new();
        let dir = |d: &str| format!("{{direction=\"{d}\"}}");
        metric(
            &mut s,
            ("weft_packets_total", "counter"),
            "Inner packets forwarded: tx = TUN to underlay, rx = underlay to TUN.",
            &[(dir("tx"), self.tx_packets), (dir("rx"), self.rx_packets)],
        );
        metric(
            &mut s,
            ("weft_bytes_total", "counter"),
            "Inner bytes forwarded.",
            &[(dir("tx"), self.tx_bytes), (dir("rx"), self.rx_bytes)],
        );
        let drops = by_reason(DropReason::ALL.map(|r| (r.as_str(), self.drops[r.index()])));
        metric(
            &mut s,
            ("weft_drops_total", "counter"),
            "Packets dropped, by reason.",
            &drops,
        );
        let singles = [
            ("weft_icmp_sent_total", "ICMP errors sent back to pods.", self.icmp_sent),
            ("weft_icmp_ratelimited_total", "ICMP errors not sent: the per-destination or node-wide rate limit (the kernel's icmp_ratelimit and icmp_msgs_per_sec) said no.", self.icmp_ratelimited),
            ("weft_socket_drops_total", "Datagrams the kernel dropped before weft read them: from senders that hold no lease (the sender filter), or for a full receive buffer.", self.socket_drops),
            ("weft_send_errors_total", "Failed underlay sends.", self.send_errors),
            ("weft_tun_write_errors_total", "Failed TUN writes.", self.tun_write_errors),
            ("weft_tunnel_gso_frames_total", "TSO super-packets sent whole, for the kernel's UDP-tunnel GSO to segment.", self.tunnel_gso_frames),
        ];
        for (name, help, v) in singles {
            metric(&mut s, (name, "counter"), help, &[(String::new(), v)]);
        }
        self.wireguard(&mut s);
        metric(
            &mut s,
            ("weft_leases", "gauge"),
            "Leases in the forwarding table.",
            &[(String::new(), leases as u64)],
        );
        s
    }

    /// The wireguard backend's own counters.
    fn wireguard(&self, s: &mut String) {
        let drops = by_reason(WgDrop::ALL.map(|r| (r.as_str(), self.wg_drops[r.index()])));
        metric(
            s,
            ("weft_wireguard_drops_total", "counter"),
            "WireGuard datagrams dropped, by reason (the wireguard backend).",
            &drops,
        );
        metric(
            s,
            ("weft_wireguard_cookie_replies_total", "counter"),
            "Handshake initiations answered with a cookie reply: over the rate limit, without a valid cookie.",
            &[(String::new(), self.wg_cookie_replies)],
        );
        metric(
            s,
            ("weft_wireguard_handshakes_total", "counter"),
            "WireGuard sessions established with peers (the first, then one per rekey).",
            &[(String::new(), self.wg_handshakes)],
        );
    }
}

/// Appends one metric: its help, its type, a line per label set.
fn metric(s: &mut String, (name, kind): (&str, &str), help: &str, lines: &[(String, u64)]) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in lines {
        let _ = writeln!(s, "{name}{labels} {v}");
    }
}

/// `{reason="…"}` label sets.
fn by_reason<const N: usize>(values: [(&str, u64); N]) -> Vec<(String, u64)> {
    values
        .iter()
        .map(|(r, v)| (format!("{{reason=\"{r}\"}}"), *v))
        .collect()
}
