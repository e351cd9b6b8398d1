//! The throughput bench: one two-node topology per mode (plain routing as flannel's host-gw,
//! kernel vxlan configured as flanneld does, weft vxlan, weft udp, weft's kernel backends:
//! weft host-gw and weft's kernel vxlan dataplane; flannel's own udp proxy on both nodes,
//! and weft udp on node 1 with flannel's proxy on node 2), measured in one run with iperf3
//! and ping, each figure the median of repeated runs, weft's as ratios to kernel vxlan and
//! host-gw from the same run; weft's kernel backends also against the plain baseline of the
//! same kernel path, which they must equal, and weft udp against flannel's proxy. Writes a
//! table, `bench …` lines, JSON and an SVG chart. Besides the bulk figures, the
//! request/response ones (`latency.rs`): TCP_RR and ping p50/p99, idle and under a stream.
//! Run as root: `netns-tests/bench` (see `--help`). `--flood` runs the garbage-flood lab
//! instead (see `flood_lab.rs`).

#[path = "flood_lab.rs"]
mod flood_lab;
#[path = "harness.rs"]
mod harness;
#[path = "latency.rs"]
mod latency;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use harness::{iperf3_json_family, ns_run, Cluster, Iperf, Kind, Pod};

const MODES: [&str; 14] = [
    "host-gw",
    "kernel-vxlan",
    "weft-vxlan",
    "weft-udp",
    "weft-host-gw",
    "weft-kernel-vxlan",
    "flannel-udp",
    "weft-flannel-udp",
    "kernel-vxlan6",
    "weft-vxlan6",
    "weft-kernel-vxlan6",
    "weft-wireguard",
    "wireguard-go",
    "boringtun",
];

/// The modes a plain run measures: all but `boringtun`, which needs boringtun-cli from
/// crates.io (`--wireguard` or `--modes` name it, and `netns-tests/bench` installs it).
fn default_modes() -> Vec<String> {
    MODES
        .iter()
        .filter(|m| **m != "boringtun")
        .map(|s| s.to_string())
        .collect()
}

/// `--wireguard`: weft's wireguard backend beside the stock userspace WireGuards set up as
/// flanneld sets up flannel-wg, and beside weft vxlan.
const WIREGUARD_MODES: [&str; 4] = ["weft-wireguard", "boringtun", "wireguard-go", "weft-vxlan"];

/// weft's wireguard against the stock userspace peers and against weft vxlan.
const WG_BASELINES: [(&str, &str); 3] = [
    ("weft-wireguard", "boringtun"),
    ("weft-wireguard", "wireguard-go"),
    ("weft-wireguard", "weft-vxlan"),
];

/// IPv6 pods over the IPv6 underlay, in a dual-stack cluster: kernel vxlan as flanneld sets
/// up `flannel-v6.1`, weft's userspace dataplane, weft's kernel dataplane; each against the
/// first. Their traffic goes to the pods' IPv6 addresses.
const V6_BASELINES: [(&str, &str); 2] = [
    ("weft-vxlan6", "kernel-vxlan6"),
    ("weft-kernel-vxlan6", "kernel-vxlan6"),
];

/// Whether `mode` measures IPv6 pods.
fn is_v6(mode: &str) -> bool {
    mode.ends_with('6')
}

/// weft's kernel backends and the plain setup of the same kernel path.
const BASELINES: [(&str, &str); 2] = [
    ("weft-host-gw", "host-gw"),
    ("weft-kernel-vxlan", "kernel-vxlan"),
];

/// weft's udp backend, alone and beside flannel's, against flannel's own udp proxy.
const UDP_BASELINES: [(&str, &str); 2] = [
    ("weft-udp", "flannel-udp"),
    ("weft-flannel-udp", "flannel-udp"),
];

/// (key, label, unit, higher is better)
const METRICS: [(&str, &str, &str, bool); 17] = [
    ("tcp1_gbps", "TCP 1 stream", "Gbit/s", true),
    ("tcp4_gbps", "TCP 4 streams", "Gbit/s", true),
    (
        "udp1400_gbps",
        "UDP 1400 B (v6 1380), full rate",
        "Gbit/s",
        true,
    ),
    ("udp1400_loss_pct", "UDP 1400 B (v6 1380) loss", "%", false),
    ("udp64_kpps", "UDP 64 B rate", "kpps", true),
    ("udp64_loss_pct", "UDP 64 B loss", "%", false),
    ("rtt_us", "ping RTT", "µs", false),
    ("rr_tps", "TCP_RR, 1 B each way", "tx/s", true),
    ("rr_p50_us", "TCP_RR p50", "µs", false),
    ("rr_p99_us", "TCP_RR p99", "µs", false),
    ("ping_p50_us", "ping p50, idle", "µs", false),
    ("ping_p99_us", "ping p99, idle", "µs", false),
    (
        "ping_cpu_pct",
        "node agents' CPU, idle pings",
        "% of a vCPU",
        false,
    ),
    (
        "ping_load_p50_us",
        "ping p50, under a TCP stream",
        "µs",
        false,
    ),
    (
        "ping_load_p99_us",
        "ping p99, under a TCP stream",
        "µs",
        false,
    ),
    ("cpu_s_per_gb", "CPU per GB (TCP 1)", "s/GB", false),
    (
        "idle_cpu_pct",
        "a node agent's CPU, no traffic",
        "% of a vCPU",
        false,
    ),
];

struct Opts {
    repeats: usize,
    seconds: u32,
    out: PathBuf,
    modes: Vec<String>,
    weft_args: Vec<String>,
    /// `--flood`: the garbage-flood lab, at `flood_mbit` Mbit/s, aimed at `flood_to` if given.
    flood: bool,
    flood_mbit: String,
    flood_to: Option<String>,
    /// `--latency-only`: only the request/response figures (for A/B runs of a lever).
    latency_only: bool,
    /// How long a weft node's CPU is measured with no traffic (30 s; 3 with `--quick`).
    idle_seconds: u64,
    /// `--halt-poll-ns`: the guest's halt polling for the run (put back after).
    halt_poll_ns: Option<u64>,
    /// `--ping-interval`: seconds between the idle pings, as `ping -i` takes it.
    ping_interval: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: netns-tests/bench [--quick] [--repeats N] [--seconds S] [--modes a,b,..|--wireguard] [--weft-args '...'] [--latency-only] [--halt-poll-ns N] [--ping-interval S] [--out DIR]\n\
         \x20      netns-tests/bench --flood [--flood-mbit M] [--flood-to ADDR:PORT] [--quick] [--repeats N] [--seconds S] [--out DIR]\n\
         modes: {}; defaults: all but boringtun, 3 repeats of 5 s, out target/bench;\n\
         --latency-only: only TCP_RR and the pings (A/B runs of a latency lever);\n\
         --halt-poll-ns N: a VM guest's idle polling (haltpoll guest_halt_poll_ns) for the run, put back after;\n\
         --ping-interval S: seconds between the 100 idle pings (default 0.01, at most 1);\n\
         --wireguard: weft-wireguard, boringtun, wireguard-go, weft-vxlan; --flood: the garbage-flood lab,\n\
         3 rounds of a quiet then a flooded 5 s stream per setup, {} Mbit/s (WEFT_TEST_FLOOD_MBIT),\n\
         aimed at the node unless --flood-to (WEFT_TEST_FLOOD_TO) names a control target",
        MODES.join(","),
        harness::flood_mbit()
    );
    std::process::exit(2)
}

fn opts() -> Opts {
    let mut o = Opts {
        repeats: 3,
        seconds: 5,
        out: PathBuf::from("target/bench"),
        modes: default_modes(),
        weft_args: Vec::new(),
        flood: false,
        flood_mbit: harness::flood_mbit(),
        flood_to: std::env::var("WEFT_TEST_FLOOD_TO").ok(),
        latency_only: false,
        idle_seconds: 30,
        halt_poll_ns: None,
        ping_interval: "0.01".into(),
    };
    let mut a = std::env::args().skip(1);
    while let Some(arg) = a.next() {
        let mut val = || a.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--quick" => {
                o.repeats = 1;
                o.seconds = 2;
                o.idle_seconds = 3;
            }
            "--repeats" => o.repeats = val().parse().unwrap_or_else(|_| usage()),
            "--seconds" => o.seconds = val().parse().unwrap_or_else(|_| usage()),
            "--out" => o.out = val().into(),
            "--modes" => o.modes = val().split(',').map(String::from).collect(),
            "--wireguard" => o.modes = WIREGUARD_MODES.map(String::from).to_vec(),
            "--weft-args" => o.weft_args = val().split_whitespace().map(String::from).collect(),
            "--flood" => o.flood = true,
            "--flood-mbit" => o.flood_mbit = val(),
            "--flood-to" => o.flood_to = Some(val()),
            "--latency-only" => o.latency_only = true,
            "--halt-poll-ns" => o.halt_poll_ns = Some(val().parse().unwrap_or_else(|_| usage())),
            "--ping-interval" => o.ping_interval = val(),
            _ => usage(),
        }
    }
    let interval = o.ping_interval.parse::<f64>().unwrap_or(0.0);
    if o.repeats == 0
        || o.seconds == 0
        || !(interval > 0.0 && interval <= 1.0)
        || o.modes.iter().any(|m| !MODES.contains(&m.as_str()))
    {
        usage();
    }
    o
}

fn build(mode: &str, weft: &std::path::Path, weft_args: &[String]) -> (Cluster, Pod, Pod) {
    if is_v6(mode) {
        return build6(mode, weft, weft_args);
    }
    let backend = match mode {
        "weft-udp" | "flannel-udp" | "weft-flannel-udp" => "udp",
        "weft-host-gw" => "host-gw",
        "weft-wireguard" => "wireguard",
        _ => "vxlan",
    };
    // weft's nodes get the subnets the hand-made modes use (10.244.1.0/24 and 10.244.2.0/24),
    // so no mode differs from another in its addresses.
    let conf = format!(
        r#"{{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0","Backend":{{"Type":"{backend}"}}}}"#
    );
    let mut c = Cluster::new(weft, &conf);
    let mut args: Vec<&str> = weft_args.iter().map(String::as_str).collect();
    if mode == "weft-kernel-vxlan" {
        args.extend(["--dataplane", "kernel"]);
    }
    match mode {
        "host-gw" => {
            for i in 0..2 {
                c.add_node(Kind::HostGw);
                c.start_hostgw_node(i, format!("10.244.{}.0/24", i + 1).parse().unwrap());
            }
            for i in 0..2 {
                c.program_hostgw_routes(i);
            }
        }
        "kernel-vxlan" => {
            for i in 0..2 {
                c.add_node(Kind::KernelVxlan);
                c.start_kernel_node(i, format!("10.244.{}.0/24", i + 1).parse().unwrap());
            }
            for i in 0..2 {
                c.program_kernel_peers(i);
            }
        }
        "flannel-udp" => {
            for i in 0..2 {
                c.add_node(Kind::FlannelUdp);
                c.start_flannel_udp_node(i, format!("10.244.{}.0/24", i + 1).parse().unwrap());
            }
            for i in 0..2 {
                c.program_flannel_udp_peers(i);
            }
        }
        "wireguard-go" | "boringtun" => stock_wireguard_nodes(&mut c, mode),
        "weft-wireguard" => weft_wireguard_nodes(&mut c, &args),
        "weft-flannel-udp" => {
            // flannel's lease first (10.244.2.0/24), so weft takes the other (10.244.1.0/24).
            c.add_node(Kind::Weft);
            c.add_node(Kind::FlannelUdp);
            c.start_flannel_udp_node(1, "10.244.2.0/24".parse().unwrap());
            c.start_weft(0, &args);
            c.wait_converged();
            c.program_flannel_udp_peers(1);
        }
        _ => {
            for i in 0..2 {
                c.add_node(Kind::Weft);
                c.start_weft(i, &args);
            }
            c.wait_converged();
        }
    }
    let a = c.add_pod(0, None);
    let b = c.add_pod(1, None);
    // Warm up ARP and the path.
    let _ = ns_run(
        &a.ns,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", &b.ip.to_string()],
    );
    (c, a, b)
}

/// Two weft wireguard nodes, each with its own key file (they share this host's
/// /run/flannel/wgkey otherwise).
fn weft_wireguard_nodes(c: &mut Cluster, args: &[&str]) {
    for i in 0..2 {
        c.add_node(Kind::Weft);
        let key = c.dir.join(format!("wgkey-{}", i + 1));
        let key = key.to_str().unwrap_or_default().to_string();
        let uapi = c.dir.join(format!("uapi-{}", i + 1));
        let uapi = uapi.to_str().unwrap_or_default().to_string();
        c.start_weft_env(
            i,
            args,
            &[("WIREGUARD_KEY_FILE", &key), ("WEFT_WG_UAPI_DIR", &uapi)],
        );
    }
    c.wait_converged();
}

/// Two nodes set up as flanneld sets up a wireguard node, with a stock userspace
/// WireGuard (`mode`: wireguard-go or boringtun-cli) for the module this kernel lacks.
/// Their devices are named `flannel-wg1` and `flannel-wg2`: both nodes share this host's
/// /var/run/wireguard, where each keeps a control socket by its device's name.
fn stock_wireguard_nodes(c: &mut Cluster, mode: &str) {
    let stock = if mode == "boringtun" {
        harness::Stock::Boringtun
    } else {
        harness::Stock::WireguardGo
    };
    let subnet = |i: usize| format!("10.244.{}.0/24", i + 1);
    let dev = |i: usize| format!("flannel-wg{}", i + 1);
    let mut keys = Vec::new();
    for i in 0..2 {
        c.add_node(Kind::HostGw);
        let s = subnet(i).parse().unwrap();
        keys.push(c.start_stock_wg_node(i, s, (stock, &dev(i))));
    }
    for i in 0..2 {
        let j = 1 - i;
        let endpoint = format!("{}:51820", c.nodes[j].ip);
        harness::stock_wg_peer(&c.nodes[i].ns, &dev(i), &keys[j], &subnet(j), &endpoint);
    }
}

/// A dual-stack two-node cluster for an IPv6 mode: both nodes set up as flanneld sets up
/// a dual-stack vxlan node (`kernel-vxlan6`), or both weft nodes (userspace or kernel
/// dataplane), with a dual-stack pod each; warmed up over IPv6.
fn build6(mode: &str, weft: &std::path::Path, weft_args: &[String]) -> (Cluster, Pod, Pod) {
    let mut c = Cluster::with_etcd(weft, harness::DUAL_STACK_VXLAN);
    let mut args: Vec<&str> = weft_args.iter().map(String::as_str).collect();
    let kind = if mode == "kernel-vxlan6" {
        Kind::KernelVxlan
    } else {
        Kind::Weft
    };
    let dataplane = if mode == "weft-kernel-vxlan6" {
        "kernel"
    } else {
        "userspace"
    };
    args.extend(["--dataplane", dataplane]);
    for i in 0..2 {
        c.add_node(kind);
        let v6 = harness::v6_underlay(&c, i);
        match kind {
            Kind::KernelVxlan => harness::start_flanneld_dual_stack(&mut c, i, v6),
            _ => {
                c.start_weft(i, &args);
            }
        }
    }
    if kind == Kind::KernelVxlan {
        for i in 0..2 {
            harness::program_flanneld_peers(&c, i);
        }
    } else {
        c.wait_converged();
    }
    let a = c.add_pod(0, None);
    let b = c.add_pod(1, None);
    let b6 = b.ip6.expect("a dual-stack pod").to_string();
    let _ = ns_run(&a.ns, &["ping", "-c", "3", "-i", "0.2", "-W", "2", &b6]);
    (c, a, b)
}

/// Every repeat's value of each metric.
type Samples = BTreeMap<&'static str, Vec<f64>>;

fn measure(mode: &str, o: &Opts, weft: &std::path::Path) -> Samples {
    let _sockets = harness::UapiSockets(vec!["flannel-wg1".to_string(), "flannel-wg2".to_string()]);
    let (c, a, b) = build(mode, weft, &o.weft_args);
    let t = o.seconds.to_string();
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut push = |k: &'static str, v: f64| samples.entry(k).or_default().push(v);
    let v6 = is_v6(mode);
    let weft_pids = weft_pids(&c);
    let dst = match (v6, b.ip6) {
        (true, Some(ip6)) => ip6.to_string(),
        _ => b.ip.to_string(),
    };
    let run = |args: &[&str]| -> Option<serde_json::Value> {
        match iperf3_json_family(&a, &b, v6, args) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("bench: {mode}: {e}");
                None
            }
        }
    };
    let plan = latency::Plan {
        seconds: o.seconds,
        ping_interval: &o.ping_interval,
    };
    for r in 0..o.repeats {
        eprintln!("bench: {mode}: run {}/{}", r + 1, o.repeats);
        if o.latency_only {
            latency::measure((&a, &b), &dst, v6, &plan, &weft_pids, &mut push);
            continue;
        }
        let cpu0 = harness::machine_busy_seconds();
        if let Some(v) = run(&["-t", &t, "-O", "1"]) {
            let cpu = harness::machine_busy_seconds() - cpu0;
            let s = Iperf::from_json(&v, false);
            push("tcp1_gbps", s.bps / 1e9);
            // All bytes moved, including the omitted first second, against all CPU time.
            let moved = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0)
                + v["intervals"].as_array().map_or(0.0, |iv| {
                    iv.iter()
                        .filter(|i| i["sum"]["omitted"].as_bool() == Some(true))
                        .filter_map(|i| i["sum"]["bytes"].as_f64())
                        .sum()
                });
            if moved > 0.0 {
                push("cpu_s_per_gb", cpu / (moved / 1e9));
            }
        }
        if let Some(v) = run(&["-t", &t, "-O", "1", "-P", "4"]) {
            push("tcp4_gbps", Iperf::from_json(&v, false).bps / 1e9);
        }
        // Full-size datagrams: 1400 bytes of payload fill IPv4's 1450-byte budget, 1380
        // IPv6's 1430 (a larger one would be fragmented by the pod after Packet Too Big).
        let full = if v6 { "1380" } else { "1400" };
        if let Some(v) = run(&["-t", &t, "-u", "-b", "0", "-l", full]) {
            let s = Iperf::from_json(&v, true);
            push("udp1400_gbps", s.bps / 1e9 * (1.0 - s.loss / 100.0));
            push("udp1400_loss_pct", s.loss);
        }
        if let Some(v) = run(&["-t", &t, "-u", "-b", "0", "-l", "64"]) {
            let s = Iperf::from_json(&v, true);
            let sent_pps = v["end"]["sum"]["packets"].as_f64().unwrap_or(0.0) / o.seconds as f64;
            push("udp64_kpps", sent_pps * (1.0 - s.loss / 100.0) / 1e3);
            push("udp64_loss_pct", s.loss);
        }
        if let Some(us) = average_rtt_us(&a, &dst) {
            push("rtt_us", us);
        }
        latency::measure((&a, &b), &dst, v6, &plan, &weft_pids, &mut push);
    }
    if let Some(pct) = (!o.latency_only)
        .then(|| idle_cpu(&c, o.idle_seconds))
        .flatten()
    {
        push("idle_cpu_pct", pct);
    }
    drop(c);
    samples
}

/// The average of 20 pings from `a` to `dst`, 50 ms apart, in µs.
fn average_rtt_us(a: &Pod, dst: &str) -> Option<f64> {
    let p = ns_run(&a.ns, &["ping", "-c", "20", "-i", "0.05", "-q", dst]);
    let text = String::from_utf8_lossy(&p.stdout);
    let avg_ms = text
        .split(" = ")
        .nth(1)?
        .split('/')
        .nth(1)?
        .parse::<f64>()
        .ok()?;
    Some(avg_ms * 1000.0)
}

/// The node agents of `c`: weft, or flanneld's udp proxy in the flannel-udp modes (none
/// where the kernel alone forwards).
fn weft_pids(c: &Cluster) -> Vec<u32> {
    c.nodes
        .iter()
        .filter_map(|n| n.child.as_ref())
        .map(|ch| ch.id())
        .collect()
}

/// The busiest node agent's CPU over `seconds` with no traffic, in % of one vCPU; `None`
/// where none runs.
fn idle_cpu(c: &Cluster, seconds: u64) -> Option<f64> {
    let pids = weft_pids(c);
    if pids.is_empty() {
        return None;
    }
    let before: Vec<u64> = pids.iter().map(|&p| harness::cpu_ns(p)).collect();
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    pids.iter()
        .zip(before)
        .map(|(&p, b)| 100.0 * harness::cpu_ns(p).saturating_sub(b) as f64 / 1e9 / seconds as f64)
        .reduce(f64::max)
}

/// Every repeat's values, per mode and metric (a failed run as null).
fn samples_json(all: &BTreeMap<String, Samples>) -> serde_json::Value {
    let num = |x: &f64| {
        if x.is_finite() {
            serde_json::json!(x)
        } else {
            serde_json::Value::Null
        }
    };
    let mut out = serde_json::Map::new();
    for (m, r) in all {
        let mut row = serde_json::Map::new();
        for (k, v) in r {
            row.insert(k.to_string(), v.iter().map(num).collect());
        }
        out.insert(m.clone(), serde_json::Value::Object(row));
    }
    serde_json::Value::Object(out)
}

/// The smallest and largest finite value.
fn range(v: &[f64]) -> Option<(f64, f64)> {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let lo = f.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = f.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (!f.is_empty()).then_some((lo, hi))
}

/// A ratio's spread over the repeats: the smallest numerator over the largest
/// denominator, and the other way round.
fn ratio_spread(num: &[f64], den: &[f64]) -> String {
    match (range(num), range(den)) {
        (Some((nl, nh)), Some((dl, dh))) if dl > 0.0 && dh > 0.0 => {
            format!("{}-{}", fmt(nl / dh), fmt(nh / dl))
        }
        _ => "-".into(),
    }
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn svg(results: &BTreeMap<String, BTreeMap<&'static str, f64>>, modes: &[String]) -> String {
    // Grouped bars for the throughput metrics, each group scaled to its own maximum.
    let groups: Vec<(&str, &str, &str)> = METRICS
        .iter()
        .filter(|m| m.3 && m.0 != "udp64_kpps")
        .map(|m| (m.0, m.1, m.2))
        .chain([("udp64_kpps", "UDP 64 B rate", "kpps")])
        .collect();
    let colors = [
        "#7f7f7f", "#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
    ];
    let (w, h, top, bottom, left) = (900.0, 420.0, 50.0, 80.0, 40.0);
    let gw = (w - left * 2.0) / groups.len() as f64;
    let bw = gw * 0.8 / modes.len() as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="24" font-size="16" text-anchor="middle">weft vs kernel vxlan vs host-gw (medians; each group scaled to its best)</text>"#,
        w / 2.0
    );
    for (gi, (key, label, unit)) in groups.iter().enumerate() {
        let max = modes
            .iter()
            .filter_map(|m| results.get(m).and_then(|r| r.get(key)))
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let x0 = left + gi as f64 * gw + gw * 0.1;
        for (mi, m) in modes.iter().enumerate() {
            let v = results
                .get(m)
                .and_then(|r| r.get(key))
                .copied()
                .unwrap_or(f64::NAN);
            let frac = if max > 0.0 && v.is_finite() {
                v / max
            } else {
                0.0
            };
            let bh = frac * (h - top - bottom);
            let x = x0 + mi as f64 * bw;
            let y = h - bottom - bh;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{}"/>"#,
                bw * 0.9,
                colors[mi % colors.len()]
            );
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + bw * 0.45,
                y - 4.0,
                fmt(v)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="gray">{unit}</text>"#,
            x0 + gw * 0.4,
            h - bottom + 18.0,
            x0 + gw * 0.4,
            h - bottom + 32.0
        );
    }
    legend(&mut s, modes, &colors, h - 40.0, left);
    s.push_str("</svg>\n");
    s
}

/// The chart's legend from (`left`, `top`): four modes a row, each in its bar colour.
fn legend(s: &mut String, modes: &[String], colors: &[&str], top: f64, left: f64) {
    for (mi, m) in modes.iter().enumerate() {
        let x = left + (mi % 4) as f64 * 200.0;
        let y = top + (mi / 4) as f64 * 18.0;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{m}</text>"#,
            colors[mi % colors.len()],
            x + 18.0,
            y + 10.0
        );
    }
}

/// The medians, a column per mode, with weft vxlan's ratios to kernel vxlan (and its
/// spread) and to host-gw.
fn median_table(
    modes: &[String],
    get: &dyn Fn(&str, &str) -> f64,
    samples: &dyn Fn(&str, &str) -> Vec<f64>,
) {
    print!("{:<24}", "metric");
    for m in modes {
        print!("{m:>18}");
    }
    println!(
        "{:>16}{:>13}{:>16}",
        "weft-vxlan/kern", "(spread)", "weft-vxlan/hgw"
    );
    for (k, label, unit, _) in METRICS {
        print!("{:<24}", format!("{label} ({unit})"));
        for m in modes {
            print!("{:>18}", fmt(get(m, k)));
        }
        println!(
            "{:>16}{:>13}{:>16}",
            fmt(get("weft-vxlan", k) / get("kernel-vxlan", k)),
            ratio_spread(&samples("weft-vxlan", k), &samples("kernel-vxlan", k)),
            fmt(get("weft-vxlan", k) / get("host-gw", k))
        );
    }
}

/// One ratio table: each pair's `w`/`b` per metric, with the spread over the repeats, for
/// the pairs whose modes both ran.
fn ratio_table(
    title: &str,
    pairs: &[(&str, &str)],
    modes: &[String],
    get: &dyn Fn(&str, &str) -> f64,
    samples: &dyn Fn(&str, &str) -> Vec<f64>,
) {
    let ran = |m: &str| modes.iter().any(|x| x == m);
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .copied()
        .filter(|(w, b)| ran(w) && ran(b))
        .collect();
    if pairs.is_empty() {
        return;
    }
    println!("\n== {title}");
    print!("{:<24}", "metric");
    for (w, b) in &pairs {
        print!("{:>40}", format!("{w}/{b} (spread)"));
    }
    println!();
    for (k, label, unit, _) in METRICS {
        print!("{:<24}", format!("{label} ({unit})"));
        for (w, b) in &pairs {
            let spread = ratio_spread(&samples(w, k), &samples(b, k));
            print!(
                "{:>40}",
                format!("{} ({spread})", fmt(get(w, k) / get(b, k)))
            );
        }
        println!();
    }
}

/// `--halt-poll-ns`: the guest's halt polling set until the guard drops; refused (exit 2)
/// where the host has no `haltpoll` cpuidle driver.
fn halt_poll(ns: Option<u64>) -> Option<harness::HaltPoll> {
    ns.map(|ns| {
        harness::HaltPoll::set(ns).unwrap_or_else(|e| {
            eprintln!("bench: --halt-poll-ns: {e}");
            std::process::exit(2)
        })
    })
}

fn main() {
    if let Ok(p) = std::env::var("WEFT_BENCH_PHASE") {
        return latency::phase(&p);
    }
    let o = opts();
    let weft = harness::weft_next_to_exe();
    let _halt_poll = halt_poll(o.halt_poll_ns);
    let idle_states = harness::idle_states();
    eprintln!("bench: {idle_states}");
    if o.flood {
        return flood(&o, &weft);
    }
    let mut results: BTreeMap<String, BTreeMap<&'static str, f64>> = BTreeMap::new();
    let mut all: BTreeMap<String, Samples> = BTreeMap::new();
    for m in &o.modes {
        let samples = measure(m, &o, &weft);
        results.insert(
            m.clone(),
            samples
                .iter()
                .map(|(k, v)| (*k, harness::median(v.clone())))
                .collect(),
        );
        all.insert(m.clone(), samples);
    }
    let samples = |m: &str, k: &str| -> Vec<f64> {
        all.get(m)
            .and_then(|r| r.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let get = |m: &str, k: &str| {
        results
            .get(m)
            .and_then(|r| r.get(k))
            .copied()
            .unwrap_or(f64::NAN)
    };

    println!(
        "\n== bench: {} repeat(s) of {} s, medians; weft args: {:?}; idle pings {} s apart; {idle_states}",
        o.repeats, o.seconds, o.weft_args, o.ping_interval
    );
    median_table(&o.modes, &get, &samples);
    ratio_table(
        "weft's kernel backends against the same kernel path set up by hand (1.00 = no cost)",
        &BASELINES,
        &o.modes,
        &get,
        &samples,
    );
    ratio_table(
        "weft's udp backend against flannel's own udp proxy (above 1.00: weft moves more)",
        &UDP_BASELINES,
        &o.modes,
        &get,
        &samples,
    );
    ratio_table(
        "weft's wireguard against stock userspace WireGuard (target 3x boringtun) and weft vxlan (target 0.5x)",
        &WG_BASELINES,
        &o.modes,
        &get,
        &samples,
    );
    ratio_table(
        "IPv6 pods over the IPv6 underlay: weft against kernel vxlan over IPv6 (flannel-v6.1)",
        &V6_BASELINES,
        &o.modes,
        &get,
        &samples,
    );
    println!();
    bench_lines(&o.modes, &get, &samples);
    write_outputs(&o, &idle_states, &results, &all);
}

/// `--flood`: the garbage-flood lab instead of the bench.
fn flood(o: &Opts, weft: &std::path::Path) {
    let lab = flood_lab::LabOpts {
        rounds: o.repeats,
        seconds: o.seconds,
        mbit: o.flood_mbit.clone(),
        to: o.flood_to.clone(),
        out: o.out.clone(),
    };
    flood_lab::run(weft, &lab);
}

/// One `bench mode=… metric=…` line per mode and metric, with the ratios to kernel vxlan
/// of the mode's family (and its spread) and to host-gw.
fn bench_lines(
    modes: &[String],
    get: &dyn Fn(&str, &str) -> f64,
    samples: &dyn Fn(&str, &str) -> Vec<f64>,
) {
    for m in modes {
        // IPv6 modes against kernel vxlan over IPv6.
        let kernel = if is_v6(m) {
            "kernel-vxlan6"
        } else {
            "kernel-vxlan"
        };
        for (k, ..) in METRICS {
            let v = get(m, k);
            println!(
                "bench mode={m} metric={k} value={} vs_kernel_vxlan={} spread={} vs_host_gw={}",
                fmt(v),
                fmt(v / get(kernel, k)),
                ratio_spread(&samples(m, k), &samples(kernel, k)),
                fmt(v / get("host-gw", k))
            );
        }
    }
}

/// Writes `bench.json` (medians and every repeat's value) and `bench.svg` into `o.out`.
fn write_outputs(
    o: &Opts,
    idle_states: &str,
    results: &BTreeMap<String, BTreeMap<&'static str, f64>>,
    all: &BTreeMap<String, Samples>,
) {
    std::fs::create_dir_all(&o.out).expect("cannot create the output directory");
    let json = serde_json::json!({
        "repeats": o.repeats,
        "seconds": o.seconds,
        "weft_args": o.weft_args,
        "idle_states": idle_states,
        "ping_interval_s": o.ping_interval.parse::<f64>().ok(),
        "samples": samples_json(all),
        "results": results
            .iter()
            .map(|(m, r)| {
                let row = r
                    .iter()
                    .map(|(k, v)| (k.to_string(), if v.is_finite() { serde_json::json!(v) } else { serde_json::Value::Null }))
                    .collect::<serde_json::Map<String, serde_json::Value>>();
                (m.clone(), serde_json::Value::Object(row))
            })
            .collect::<serde_json::Map<String, serde_json::Value>>(),
    });
    let jp = o.out.join("bench.json");
    std::fs::write(&jp, serde_json::to_string_pretty(&json).unwrap()).expect("write json");
    let sp = o.out.join("bench.svg");
    std::fs::write(&sp, svg(results, &o.modes)).expect("write svg");
    println!("wrote {} and {}", jp.display(), sp.display());
}
