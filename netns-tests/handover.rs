//! Upgrades without an outage: a second `weft run` on a node hands the node over while a
//! pod pings another every 10 ms and streams TCP to it; a kernel dataplane's stop leaves it
//! forwarding and the restart adopts it; and the figures for each way a node restarts (a
//! hand-over, SIGTERM + start, kill -9 + start) under the same traffic. Bad hand-overs (other
//! flags, another Network, a stale socket, a weft that does not answer) are refused with a
//! message and lose nothing. Root only, like the rest.

#[path = "harness.rs"]
mod harness;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use harness::{iperf3_json, ns_sh, weft, Cluster, Pod};
use weft::store::file::FileStore;

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// How long the traffic runs around each restart; the restart happens [`LEAD`] in.
const TRAFFIC_SECS: u32 = 8;
const LEAD: Duration = Duration::from_secs(2);

/// Ping every 10 ms and a TCP stream, from a pod on node 2 to one on node 1 (the node
/// restarted), and back the stream's ACKs.
struct Probe {
    ping: Child,
    stream: JoinHandle<Result<serde_json::Value, String>>,
}

/// What the traffic saw.
#[derive(Debug)]
struct Seen {
    sent: u64,
    received: u64,
    /// The longest time between two replies.
    gap_ms: f64,
    /// The slowest half second of the stream.
    slowest_mbps: f64,
}

impl Probe {
    fn start(from: &Pod, to: &Pod) -> Probe {
        let secs = TRAFFIC_SECS.to_string();
        let count = (TRAFFIC_SECS * 100).to_string();
        let ping = Command::new("ip")
            .args(["netns", "exec", &from.ns, "ping", "-D", "-n", "-i", "0.01"])
            .args(["-c", &count, "-W", "1", &to.ip.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        let (from, to) = (from.clone(), to.clone());
        let stream =
            std::thread::spawn(move || iperf3_json(&from, &to, &["-t", &secs, "-i", "0.5"]));
        std::thread::sleep(LEAD);
        Probe { ping, stream }
    }

    fn finish(self) -> Seen {
        let out = self.ping.wait_with_output().expect("ping output");
        let text = String::from_utf8_lossy(&out.stdout);
        let v = self
            .stream
            .join()
            .expect("iperf3 thread")
            .unwrap_or_else(|e| panic!("{e}"));
        let slowest = harness::iperf3_per_second(&v)
            .into_iter()
            .fold(f64::INFINITY, f64::min);
        let (sent, received) = ping_counts(&text);
        Seen {
            sent,
            received,
            gap_ms: longest_gap_ms(&text),
            slowest_mbps: slowest / 1e6,
        }
    }
}

/// `N packets transmitted, M received` from ping's summary.
fn ping_counts(text: &str) -> (u64, u64) {
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in:\n{text}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

/// The longest time between two replies, from `ping -D`'s `[seconds.micros]` stamps.
fn longest_gap_ms(text: &str) -> f64 {
    let stamps: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    stamps
        .windows(2)
        .map(|w| (w[1] - w[0]) * 1000.0)
        .fold(0.0, f64::max)
}

/// Two weft nodes with `extra` on node 1, one pod each, converged.
fn two_nodes(conf: &str, extra: &[&str]) -> (Cluster, Pod, Pod) {
    let mut c = Cluster::new(weft(), conf);
    for extra in [extra, &[]] {
        let i = c.add_node(harness::Kind::Weft);
        c.start_weft(i, extra);
        c.add_pod(i, None);
    }
    c.wait_converged();
    let (p1, p2) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    (c, p1, p2)
}

fn report(what: &str, s: &Seen) {
    harness::figure(&format!(
        "{what}: {} of {} pings lost, longest gap {:.0} ms, slowest 0.5 s of TCP {:.0} Mbit/s",
        s.sent - s.received,
        s.sent,
        s.gap_ms,
        s.slowest_mbps
    ));
}

/// Hands node 1 over under traffic; the old weft exits 0 by itself, nothing is lost.
fn hand_over_losslessly(c: &mut Cluster, p1: &Pod, p2: &Pod, extra: &[&str], what: &str) {
    let subnet = c.subnet(0);
    let probe = Probe::start(p2, p1);
    let (clean, took) = c.hand_over(0, extra);
    let seen = probe.finish();
    report(
        &format!("hand-over, {what} (took {} ms)", took.as_millis()),
        &seen,
    );
    assert!(clean, "the old weft did not exit 0:\n{}", log(c));
    // The old weft has exited: the successor still listens at the hand-over socket, for
    // the next one (the old one's exit once removed it, its inode number reused).
    assert!(
        std::os::unix::net::UnixStream::connect(socket_of(c, 0)).is_ok(),
        "the successor's hand-over socket is gone:\n{}",
        log(c)
    );
    assert_eq!(seen.sent, seen.received, "pings lost: {seen:?}\n{}", log(c));
    assert!(
        seen.gap_ms <= 100.0,
        "a gap of {} ms: {seen:?}",
        seen.gap_ms
    );
    assert!(seen.slowest_mbps > 0.0, "an empty half second: {seen:?}");
    // The same lease and subnet.env, and the new weft serves /healthz and forwards.
    assert_eq!(c.subnet(0), subnet);
    assert_eq!(c.http(0, "/healthz").as_deref(), Some("ok\n"));
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "after the hand-over:\n{}",
        failed.join("\n")
    );
}

fn log(c: &Cluster) -> String {
    std::fs::read_to_string(&c.nodes[0].log).unwrap_or_default()
}

#[test]
fn a_userspace_node_is_handed_over_without_losing_a_packet() {
    let (mut c, p1, p2) = two_nodes(VXLAN, &[]);
    hand_over_losslessly(&mut c, &p1, &p2, &[], "userspace vxlan");
    // And again: the successor is itself handed over.
    hand_over_losslessly(&mut c, &p1, &p2, &[], "userspace vxlan, second time");
    let l = log(&c);
    assert!(l.contains("took the node over"), "{l}");
    assert!(l.contains("handed over"), "{l}");
    // Both times on the very queues and sockets the old weft read: none is detached.
    let adopted = "forwarding on the predecessor's TUN queues and sockets";
    assert_eq!(l.matches(adopted).count(), 2, "{l}");
}

#[test]
fn kernel_dataplanes_are_handed_over_and_restarted_without_losing_a_packet() {
    for (conf, extra, what) in [
        (VXLAN, &["--dataplane", "kernel"][..], "kernel vxlan"),
        (HOST_GW, &[][..], "host-gw"),
    ] {
        let (mut c, p1, p2) = two_nodes(conf, extra);
        hand_over_losslessly(&mut c, &p1, &p2, extra, what);
        for (how, kill) in [("SIGTERM + start", false), ("kill -9 + start", true)] {
            let probe = Probe::start(&p2, &p1);
            if kill {
                c.kill_weft(0);
            } else {
                assert!(c.stop_weft(0), "SIGTERM: not a clean exit\n{}", log(&c));
            }
            c.start_weft(0, extra);
            let seen = probe.finish();
            report(&format!("{how}, {what}"), &seen);
            assert_eq!(seen.sent, seen.received, "{how}: pings lost: {seen:?}");
            assert!(seen.gap_ms <= 100.0, "{how}: a gap of {} ms", seen.gap_ms);
        }
    }
}

#[test]
fn a_userspace_restart_is_measured_and_forwards_again() {
    let (mut c, p1, p2) = two_nodes(VXLAN, &[]);
    for (how, kill) in [("SIGTERM + start", false), ("kill -9 + start", true)] {
        let probe = Probe::start(&p2, &p1);
        if kill {
            c.kill_weft(0);
        } else {
            assert!(c.stop_weft(0));
        }
        c.start_weft(0, &[]);
        let seen = probe.finish();
        // An outage (the TUN dies with its process; the fail-closed route answers
        // meanwhile), measured, not asserted: the stream must come back.
        report(&format!("{how}, userspace vxlan"), &seen);
        assert!(seen.received > 0, "{how}: {seen:?}");
        let failed = c.ping_all();
        assert!(failed.is_empty(), "{how}:\n{}", failed.join("\n"));
    }
}

/// The hand-over socket of node `i` in the harness's state directory.
fn socket_of(c: &Cluster, i: usize) -> PathBuf {
    let inode = ns_sh(
        &c.nodes[i].ns,
        &["stat", "-L", "-c", "%i", "/proc/self/ns/net"],
    );
    c.dir
        .join("state")
        .join(format!("weft-netns-{}.sock", inode.trim()))
}

/// Starts a second weft on node 1 that must refuse; returns its output.
fn refused(c: &mut Cluster, extra: &[&str]) -> String {
    let old = c.nodes[0].child.take();
    let before = std::fs::metadata(&c.nodes[0].log).map_or(0, |m| m.len() as usize);
    let out = c.spawn_weft_and_wait(0, extra, Duration::from_secs(20));
    c.nodes[0].child = old;
    assert!(!out.0, "the second weft did not refuse");
    log(c)[before..].to_string()
}

#[test]
fn bad_hand_overs_are_refused_and_lose_nothing() {
    let (mut c, p1, p2) = two_nodes(VXLAN, &[]);
    // Other flags: refused, naming the flag; the running weft forwards on.
    let out = refused(&mut c, &["--workers", "1"]);
    assert!(out.contains("--workers (1, running: 2)"), "{out}");
    // Another Network in the store: refused, naming both.
    let store = FileStore::open(c.lease_dir()).unwrap();
    store
        .write_config(r#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan"}}"#)
        .unwrap();
    let out = refused(&mut c, &[]);
    store.write_config(VXLAN).unwrap();
    assert!(
        out.contains("10.245.0.0/16") && out.contains("10.244.0.0/16"),
        "{out}"
    );
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "after the refusals:\n{}",
        failed.join("\n")
    );
    assert!(c.nodes[0]
        .child
        .as_mut()
        .unwrap()
        .try_wait()
        .unwrap()
        .is_none());

    // A weft that accepts and never answers: refused within seconds, left alone.
    assert!(c.stop_weft(0));
    let path = socket_of(&c, 0);
    let silent = UnixListener::bind(&path).unwrap();
    let out = refused(&mut c, &[]);
    assert!(out.contains("did not answer"), "{out}");
    assert!(path.exists());
    // A stale socket (its listener gone, as after kill -9): removed, and weft starts.
    drop(silent);
    c.start_weft(0, &[]);
    c.wait_converged();
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "after the stale socket:\n{}",
        failed.join("\n")
    );
    let _ = (p1, p2);
}
