//! `--healthz-port` and `--metrics-port`: `/healthz` and `/readyz` (as flanneld serves
//! them), `/metrics` (Prometheus text: weft's counters and the standard `process_*`
//! metrics), `/leases` (the forwarding table, one lease per line) and `/leases/<address>`
//! (the one lease a packet to that pod address would use). What each path
//! answers is decided here, without I/O; [`server`] serves it.

use std::sync::{Arc, Mutex};

use crate::dataplane::counters::Counters;
use crate::lease::table::BackendKind;
use crate::lease::LeaseTable;

mod process;
pub(crate) mod server;

pub(crate) use server::{serve, Limits};

const OK: u16 = 200;
const UNAVAILABLE: u16 = 503;

/// What the endpoints report, shared by the agent (which updates it) and the server thread.
///
/// - `/healthz` (liveness, as flanneld's): 200 while weft is starting (`starting: <step>`,
///   served before the config is read, as flanneld serves it) or forwarding (`ok`); 503
///   with the reason while something is wrong: a worker thread died and the dataplane could
///   not be recreated, or the store has been unreachable longer than the renew margin.
/// - `/readyz`: 200 `ok` only while forwarding with nothing wrong; else 503 with why.
/// - `/metrics`, `/leases`, `/leases/<address>`: once forwarding (503 before); the last
///   answers 404 when no lease holds the address.
#[derive(Default)]
pub(crate) struct Status {
    inner: Mutex<Inner>,
    /// Lease renewals that succeeded and that failed.
    renewals: [std::sync::atomic::AtomicU64; 2],
}

#[derive(Default)]
struct Inner {
    starting: Option<String>,
    problem: Option<String>,
    forwarding: Option<(Counters, Arc<LeaseTable>)>,
}

impl Status {
    /// A status for an agent at start-up step `what`.
    pub(crate) fn starting(what: &str) -> Arc<Status> {
        let s = Arc::new(Status::default());
        s.step(what);
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The start-up step weft is at.
    pub(crate) fn step(&self, what: &str) {
        self.lock().starting = Some(what.to_string());
    }

    /// Start-up is over: forwarding with these counters and this table.
    pub(crate) fn forwarding(&self, counters: Counters, table: Arc<LeaseTable>) {
        let mut i = self.lock();
        i.starting = None;
        i.forwarding = Some((counters, table));
    }

    /// Counts one renewal of our lease, as `weft_lease_renewals_total{result}`.
    pub(crate) fn renewed(&self, ok: bool) {
        self.renewals[usize::from(!ok)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn renewals_text(&self) -> String {
        let n = |i: usize| self.renewals[i].load(std::sync::atomic::Ordering::Relaxed);
        format!(
            "# HELP weft_lease_renewals_total Renewals of this node's lease, by result.\n# TYPE weft_lease_renewals_total counter\nweft_lease_renewals_total{{result=\"ok\"}} {}\nweft_lease_renewals_total{{result=\"error\"}} {}\n",
            n(0),
            n(1)
        )
    }

    /// What is wrong now, if anything (`None` clears it).
    pub(crate) fn set_problem(&self, problem: Option<String>) {
        self.lock().problem = problem;
    }

    /// The status code and body for `path`.
    pub(crate) fn respond(&self, path: &str) -> (u16, String) {
        if path == "/leases" || path.starts_with("/leases/") {
            // The table is read outside the lock: the control loop reports through it.
            let table = self.lock().forwarding.as_ref().map(|(_, t)| t.clone());
            return match (table, path.strip_prefix("/leases/")) {
                (None, _) => (UNAVAILABLE, "starting\n".to_string()),
                (Some(t), None) => (OK, leases_text(&t)),
                (Some(t), Some(addr)) => lease_for(&t, addr),
            };
        }
        let i = self.lock();
        match path {
            "/healthz" | "/readyz" => match (&i.problem, &i.starting) {
                (Some(p), _) => (UNAVAILABLE, format!("unhealthy: {p}\n")),
                (None, Some(s)) if path == "/healthz" => (OK, format!("starting: {s}\n")),
                (None, Some(s)) => (UNAVAILABLE, format!("not ready: starting: {s}\n")),
                (None, None) => (OK, "ok\n".to_string()),
            },
            "/metrics" => match &i.forwarding {
                Some((counters, table)) => {
                    let mut text = counters.totals().prometheus(table.load().len());
                    text.push_str(&self.renewals_text());
                    text.push_str(&process::prometheus());
                    (OK, text)
                }
                None => (UNAVAILABLE, "starting\n".to_string()),
            },
            _ => (
                404,
                "not found; try /healthz, /readyz, /metrics, /leases or /leases/<pod address>\n"
                    .to_string(),
            ),
        }
    }
}

/// Read-only: GET (and HEAD) are answered, anything else is refused with 405, so nothing
/// reaching the port can change or trigger anything.
fn respond_to(status: &Status, method: &str, path: &str) -> (u16, String) {
    match method {
        "GET" | "HEAD" => status.respond(path),
        _ => (405, "read-only: only GET and HEAD are served\n".to_string()),
    }
}

/// The table as text: `subnet public-ip backend [vni mac]`, a peer by its IPv4 side (its
/// IPv6 side when it has no other).
pub(crate) fn leases_text(table: &LeaseTable) -> String {
    let snap = table.load();
    let mut s = String::new();
    for line in snap.peers().iter().filter_map(|p| lease_line(p, false)) {
        s.push_str(&line);
    }
    s
}

/// `/leases/<address>`: the line of the peer a packet to that pod address goes to (its
/// IPv6 side for an IPv6 address), 404 when none holds it: one lookup, whatever the
/// table's size.
fn lease_for(table: &LeaseTable, addr: &str) -> (u16, String) {
    let snap = table.load();
    let peer = match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => snap.lookup(a).map(|p| (p, false)),
        Ok(std::net::IpAddr::V6(a)) => snap.lookup6(a).map(|p| (p, true)),
        Err(_) => return (400, format!("{addr:?} is not an IP address\n")),
    };
    match peer.and_then(|(p, v6)| lease_line(p, v6)) {
        Some(line) => (OK, line),
        None => (404, format!("no lease holds {addr}\n")),
    }
}

/// One peer as a `/leases` line: its IPv4 side (its IPv6 side when `v6` or when it has no
/// other).
fn lease_line(p: &crate::lease::Peer, v6: bool) -> Option<String> {
    let (subnet, public, vni, mac) = match (p.subnet, p.v6) {
        (Some(sn), _) if !v6 => (sn.to_string(), p.public_ip.to_string(), p.vni, p.vtep_mac),
        (_, Some(v6)) => (
            v6.subnet.to_string(),
            v6.public_ip.to_string(),
            v6.vni,
            v6.vtep_mac,
        ),
        _ => return None,
    };
    let backend = match p.backend {
        BackendKind::Vxlan => format!("vxlan vni={vni} mac={mac}"),
        BackendKind::Udp => "udp".to_string(),
        BackendKind::HostGw => "host-gw".to_string(),
        BackendKind::Wireguard => "wireguard".to_string(),
        BackendKind::Other => "other".to_string(),
    };
    Some(format!("{subnet} {public} {backend}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_served() {
        let s = Status::starting("x");
        assert_eq!(respond_to(&s, "GET", "/healthz").0, OK);
        assert_eq!(respond_to(&s, "HEAD", "/healthz").0, OK);
        for m in ["POST", "PUT", "DELETE", "PATCH", ""] {
            assert_eq!(respond_to(&s, m, "/healthz").0, 405, "{m}");
        }
    }

    #[test]
    fn healthz_is_live_while_starting_and_503_with_the_reason_when_something_is_wrong() {
        let s = Status::starting("waiting for the network config");
        assert_eq!(
            s.respond("/healthz"),
            (OK, "starting: waiting for the network config\n".into())
        );
        assert_eq!(s.respond("/readyz").0, UNAVAILABLE);
        assert_eq!(s.respond("/metrics").0, UNAVAILABLE);
        let table = Arc::new(LeaseTable::new("10.244.0.0/16".parse().unwrap()));
        s.forwarding(Counters::with_workers(1), table);
        assert_eq!(s.respond("/healthz"), (OK, "ok\n".into()));
        assert_eq!(s.respond("/readyz"), (OK, "ok\n".into()));
        assert_eq!(s.respond("/metrics").0, OK);
        s.set_problem(Some("worker thread(s) [0] died".into()));
        for p in ["/healthz", "/readyz"] {
            assert_eq!(
                s.respond(p),
                (UNAVAILABLE, "unhealthy: worker thread(s) [0] died\n".into())
            );
        }
        s.set_problem(None);
        assert_eq!(s.respond("/healthz").0, OK);
        assert_eq!(s.respond("/nope").0, 404);
    }

    #[test]
    fn renewals_are_counted_by_result() {
        let s = Status::starting("x");
        let table = Arc::new(LeaseTable::new("10.244.0.0/16".parse().unwrap()));
        s.forwarding(Counters::with_workers(1), table);
        s.renewed(false);
        s.renewed(false);
        s.renewed(true);
        let (_, text) = s.respond("/metrics");
        assert!(
            text.contains("weft_lease_renewals_total{result=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_lease_renewals_total{result=\"error\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn one_lease_is_found_by_pod_address_in_either_family() {
        use crate::testkit::peer;
        let s = Status::starting("x");
        assert_eq!(s.respond("/leases/10.244.3.7").0, UNAVAILABLE);
        let table = Arc::new(LeaseTable::new("10.244.0.0/16".parse().unwrap()));
        table.replace_all([peer(3, BackendKind::Vxlan, 1), peer(4, BackendKind::Udp, 0)]);
        s.forwarding(Counters::with_workers(1), table);
        assert_eq!(
            s.respond("/leases/10.244.3.7"),
            (
                OK,
                "10.244.3.0/24 192.0.2.3 vxlan vni=1 mac=0e:00:00:00:03:01\n".into()
            )
        );
        assert_eq!(
            s.respond("/leases/fd00:10:244:3::9"),
            (
                OK,
                "fd00:10:244:3::/64 2001:db8::3 vxlan vni=1 mac=0e:00:00:00:03:01\n".into()
            )
        );
        assert_eq!(
            s.respond("/leases/10.244.4.1").1,
            "10.244.4.0/24 192.0.2.4 udp\n"
        );
        assert_eq!(s.respond("/leases/10.244.5.1").0, 404);
        assert_eq!(
            s.respond("/leases/fd00:10:244:4::1").0,
            404,
            "udp peer has no v6 side"
        );
        assert_eq!(s.respond("/leases/nonsense").0, 400);
        assert_eq!(s.respond("/leases").1.lines().count(), 2);
    }
}
