//! The soak: two weft nodes (the embedded lease directory, default flags) with a pod each,
//! one iperf3 TCP stream between the pods for the whole run, and a lease added and another
//! removed every second. Samples each weft's RSS and open file descriptors every 10 s and
//! reports their least-squares slopes after a 2-minute warm-up; at the end, with the
//! stream stopped, checks that the counters agree across the nodes (inner packets one node
//! sent = packets the other delivered + the drops it counted, weft's and the kernel's for
//! its socket, each way) and counts warning and error lines in the logs. Not part of CI:
//! run as root, `netns-tests/soak [--minutes 30] [--rate 1G]`. Writes target/soak/soak.json.

#[path = "harness.rs"]
mod harness;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use harness::{iperf3_json, iperf3_per_second, Cluster};
use weft::lease::{Lease, LeaseAttrs, VxlanBackendData};
use weft::store::file::FileStore;
use weft::wire::MacAddr;

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

struct Sample {
    t: f64,
    rss_kb: [u64; 2],
    fds: [u64; 2],
    leases: [u64; 2],
}

fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Least-squares slope of `ys` against `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    sxy / sxx
}

fn churn_lease(k: u32) -> Lease {
    let host = 100 + (k % 100) as u8;
    Lease {
        subnet: format!("10.244.{host}.0/24").parse().ok(),
        ipv6_subnet: None,
        attrs: LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 0, 2, host),
            VxlanBackendData {
                vni: 1,
                vtep_mac: MacAddr([0x0e, 0, 0, 0, host, 1]),
            },
        ),
        expiration: Some(SystemTime::now() + Duration::from_secs(86400)),
    }
}

/// The non-zero drop counters, by reason (and the kernel's for the socket).
fn drop_reasons(m: &HashMap<String, u64>) -> BTreeMap<String, u64> {
    m.iter()
        .filter(|(k, v)| {
            **v > 0 && (k.starts_with("weft_drops_total{") || *k == "weft_socket_drops_total")
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn drops(m: &HashMap<String, u64>) -> u64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("weft_drops_total{"))
        .map(|(_, v)| v)
        .sum::<u64>()
        + m.get("weft_socket_drops_total").copied().unwrap_or(0)
}

/// The counter of the inner packets a node sent into the tunnel.
const TX: &str = "weft_packets_total{direction=\"tx\"}";
/// The counter of the inner packets a node delivered from the tunnel.
const RX: &str = "weft_packets_total{direction=\"rx\"}";

/// The soak's flags: its minutes and iperf3's bitrate; exits with usage on anything else.
fn parse_args() -> (f64, String) {
    let mut minutes = 30.0f64;
    let mut rate = "1G".to_string();
    let mut a = std::env::args().skip(1);
    while let Some(arg) = a.next() {
        match arg.as_str() {
            "--minutes" => minutes = a.next().and_then(|v| v.parse().ok()).expect("--minutes N"),
            "--rate" => rate = a.next().expect("--rate BITRATE (iperf3 -b; 0 = unlimited)"),
            _ => {
                eprintln!("usage: soak [--minutes 30] [--rate 1G]");
                std::process::exit(2);
            }
        }
    }
    (minutes, rate)
}

/// Adds a lease and removes the previous one in `store` every second for `secs` seconds,
/// sampling both wefts (`pids`) every 10 s; returns the samples, the seconds churned and
/// the lease changes that failed.
fn churn(c: &Cluster, store: &FileStore, secs: u64, pids: [u32; 2]) -> (Vec<Sample>, u32, u32) {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut k = 0u32;
    let mut prev: Option<Lease> = None;
    let mut churn_errors = 0u32;
    while start.elapsed() < Duration::from_secs(secs) {
        let l = churn_lease(k);
        if store.put(&l).is_err() {
            churn_errors += 1;
        }
        if let Some(p) = prev.take() {
            if std::fs::remove_file(store.lease_path(&p)).is_err() {
                churn_errors += 1;
            }
        }
        prev = Some(l);
        if k.is_multiple_of(10) {
            let leases = [0, 1].map(|i| c.metrics(i).get("weft_leases").copied().unwrap_or(0));
            samples.push(Sample {
                t: start.elapsed().as_secs_f64(),
                rss_kb: pids.map(harness::rss_kb),
                fds: pids.map(fd_count),
                leases,
            });
            if k.is_multiple_of(60) {
                let s = samples.last().unwrap();
                eprintln!(
                    "soak: {:>5.0} s  rss {:?} KiB  fds {:?}  leases {:?}",
                    s.t, s.rss_kb, s.fds, s.leases
                );
            }
        }
        k += 1;
        let next = start + Duration::from_secs(k as u64);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    if let Some(p) = prev.take() {
        let _ = std::fs::remove_file(store.lease_path(&p));
    }
    (samples, k, churn_errors)
}

/// Each node's counters now, less what they were at the start (`m0`).
fn counter_deltas(c: &Cluster, m0: &[HashMap<String, u64>; 2]) -> Vec<HashMap<String, u64>> {
    [c.metrics(0), c.metrics(1)]
        .into_iter()
        .zip(m0)
        .map(|(end, start)| {
            end.into_iter()
                .map(|(k, v)| {
                    let d = v.saturating_sub(start.get(&k).copied().unwrap_or(0));
                    (k, d)
                })
                .collect()
        })
        .collect()
}

/// The warning and error lines both nodes logged past `logs_before` bytes, each named by
/// its node.
fn warn_and_error_lines(c: &Cluster, logs_before: [u64; 2]) -> Vec<String> {
    (0..2)
        .flat_map(|i| {
            let log = std::fs::read_to_string(&c.nodes[i].log).unwrap_or_default();
            log.get(logs_before[i] as usize..)
                .unwrap_or("")
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .map(|l| format!("node {}: {l}", i + 1))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The iperf3 stream's mean and slowest-second Gbit/s, its seconds without traffic and its
/// retransmits (all 0, said on stderr, when it failed).
fn iperf_summary(result: &Result<serde_json::Value, String>) -> (f64, f64, usize, u64) {
    match result {
        Ok(v) => {
            let per = iperf3_per_second(v);
            let end = &v["end"]["sum_received"];
            (
                end["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
                per.iter().cloned().fold(f64::INFINITY, f64::min) / 1e9,
                per.iter().filter(|b| **b == 0.0).count(),
                v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            )
        }
        Err(e) => {
            eprintln!("soak: iperf3 failed: {e}");
            (0.0, 0.0, 0, 0)
        }
    }
}

/// Prints each node's RSS, descriptors and leases over the samples after the warm-up (all
/// of them when fewer than 3), with slopes, and its counters `m`; adds them to `report`.
fn report_nodes(report: &mut serde_json::Value, m: &[HashMap<String, u64>], samples: &[Sample]) {
    let get = |i: usize, k: &str| m[i].get(k).copied().unwrap_or(0);
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.t >= 120.0).collect();
    let warm = if warm.len() >= 3 {
        warm
    } else {
        samples.iter().collect()
    };
    let xs: Vec<f64> = warm.iter().map(|s| s.t / 3600.0).collect();
    let per_node = |f: &dyn Fn(&Sample) -> u64| -> (u64, u64, f64) {
        let ys: Vec<f64> = warm.iter().map(|s| f(s) as f64).collect();
        let lo = warm.iter().map(|s| f(s)).min().unwrap_or(0);
        let hi = warm.iter().map(|s| f(s)).max().unwrap_or(0);
        (lo, hi, slope(&xs, &ys))
    };
    for (i, mi) in m.iter().enumerate() {
        let (rlo, rhi, rs) = per_node(&|s: &Sample| s.rss_kb[i]);
        let (flo, fhi, fs) = per_node(&|s: &Sample| s.fds[i]);
        let (llo, lhi, _) = per_node(&|s: &Sample| s.leases[i]);
        println!(
            "soak node {}: rss {rlo}-{rhi} KiB, slope {rs:+.1} KiB/h; fds {flo}-{fhi}, slope {fs:+.2}/h; leases {llo}-{lhi}; sent {} delivered {} dropped {} {:?}",
            i + 1,
            get(i, TX),
            get(i, RX),
            drops(mi),
            drop_reasons(mi)
        );
        report["nodes"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "rss_kb": [rlo, rhi], "rss_slope_kb_per_hour": rs,
                "fds": [flo, fhi], "fd_slope_per_hour": fs,
                "leases_seen": [llo, lhi],
                "tx_packets": get(i, TX), "rx_packets": get(i, RX), "drops": drops(mi),
            "drop_reasons": drop_reasons(mi),
            }));
    }
}

/// Writes `report` to target/soak/soak.json.
fn write_report(report: &serde_json::Value) {
    let dir = std::path::Path::new("target/soak");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("soak.json"),
        serde_json::to_string_pretty(report).unwrap(),
    )
    .unwrap();
    println!("soak: wrote target/soak/soak.json");
}

fn main() {
    let (minutes, rate) = parse_args();
    let secs = (minutes * 60.0).round() as u64;
    let weft = harness::weft_next_to_exe();
    let mut c = Cluster::new(&weft, VXLAN);
    c.add_weft_nodes(2, &[]);
    let pids = [0, 1].map(|i| c.nodes[i].child.as_ref().unwrap().id());
    let logs_before = [0, 1].map(|i| std::fs::metadata(&c.nodes[i].log).map_or(0, |m| m.len()));
    // Counters from here on: what start-up counted (the kernel's IPv6 router
    // solicitation on a new TUN, dropped as inner_ipv6) is not the soak's.
    let m0 = [c.metrics(0), c.metrics(1)];
    let (pa, pb) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let t = secs.to_string();
    let stream =
        std::thread::spawn(move || iperf3_json(&pa, &pb, &["-t", &t, "-b", &rate, "-i", "1"]));
    let store = FileStore::open(c.lease_dir()).unwrap();
    let (samples, k, churn_errors) = churn(&c, &store, secs, pids);
    let result = stream.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let m = counter_deltas(&c, &m0);
    let get = |i: usize, k: &str| m[i].get(k).copied().unwrap_or(0);
    // Each way: what one node sent, against what the other delivered or counted as dropped.
    let gap = [(0usize, 1usize), (1, 0)]
        .map(|(s, r)| get(s, TX) as i64 - (get(r, RX) + drops(&m[r])) as i64);
    let bad_lines = warn_and_error_lines(&c, logs_before);
    let (gbps, min_gbps, zero_secs, retr) = iperf_summary(&result);
    let mut report = serde_json::json!({
        "minutes": minutes,
        "lease_changes": k * 2,
        "churn_errors": churn_errors,
        "iperf3": {"mean_gbps": gbps, "slowest_second_gbps": min_gbps, "seconds_without_traffic": zero_secs, "retransmits": retr, "ok": result.is_ok()},
        "counter_gap": {"node1_to_node2": gap[0], "node2_to_node1": gap[1]},
        "warn_or_error_lines": bad_lines,
        "nodes": [],
    });
    report_nodes(&mut report, &m, &samples);
    println!(
        "soak: {minutes} min, {} lease changes ({churn_errors} failed), iperf3 {gbps:.2} Gbit/s mean, slowest second {min_gbps:.2}, {zero_secs} s without traffic, {retr} retransmits; counter gap {} / {} packets; {} warning or error lines",
        k * 2,
        gap[0],
        gap[1],
        bad_lines.len()
    );
    for l in bad_lines.iter().take(20) {
        println!("  {l}");
    }
    write_report(&report);
}
