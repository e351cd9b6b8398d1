//! The garbage-flood lab, run by `netns-tests/bench --flood`: what a flood from a host that
//! holds no lease costs the pods' TCP stream, on kernel vxlan (configured as flanneld does:
//! the yardstick), weft vxlan and weft udp. Rounds of a quiet stream then a flooded one,
//! medians compared: single streams on a small VM differ by up to a fifth from one to the
//! next, so one pair cannot tell 0.8 from 0.7. It also records where the machine's CPU
//! went. That the flood is dropped, counted and never logged is `cargo test`'s to check
//! (`netns a_garbage_flood_from_a_leaseless_host_is_counted_and_never_delivered`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::harness::{self, Cluster, Flood, FloodCounts, Iperf, Kind};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const UDP: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#;

/// How the lab runs.
pub struct LabOpts {
    /// Rounds of a quiet stream followed by a flooded one.
    pub rounds: usize,
    /// Each stream's length in seconds (its first second left out of its rate).
    pub seconds: u32,
    /// The flood's rate in Mbit/s.
    pub mbit: String,
    /// Where the flood goes instead of the node (ADDR:PORT): a control run that loads the
    /// machine as much and reaches no node (the flooder's own address, 192.0.2.200:9).
    pub to: Option<String>,
    /// Where `flood.txt` is written.
    pub out: PathBuf,
}

/// One flood measurement: the pods' stream without and with the flood, alternated, and
/// where the machine's CPU went (in vCPUs: busy CPU seconds of all CPUs per second, from
/// /proc/stat, averaged over the rounds).
#[derive(Default)]
struct FloodRun {
    quiet: Vec<Iperf>,
    flooded: Vec<Iperf>,
    /// Datagrams the flooder sent, all rounds.
    sent: u64,
    /// The machine busy during the quiet streams.
    busy_quiet: f64,
    /// The machine busy during the flood alone (before the first flooded stream).
    busy_flood: f64,
    /// The machine busy during the flooded streams.
    busy_flooded: f64,
}

impl FloodRun {
    /// Median quiet and flooded rates (bit/s).
    fn rates(&self) -> (f64, f64) {
        (
            harness::median(self.quiet.iter().map(|r| r.bps).collect()),
            harness::median(self.flooded.iter().map(|r| r.bps).collect()),
        )
    }

    /// The stream's median flooded rate over its median quiet one.
    fn kept(&self) -> f64 {
        let (q, f) = self.rates();
        f / q
    }

    /// What the stream could keep if it is CPU-bound: the vCPUs the flood leaves over the
    /// vCPUs the quiet stream used (at most 1).
    fn cpu_bound(&self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        ((cpus - self.busy_flood) / self.busy_quiet).min(1.0)
    }

    /// The stream part of a figure.
    fn stream_figure(&self) -> String {
        let (q, f) = self.rates();
        let each: Vec<String> = self
            .quiet
            .iter()
            .zip(&self.flooded)
            .map(|(q, f)| format!("{:.2}", f.bps / q.bps))
            .collect();
        let retx = |v: &[Iperf]| v.iter().map(|r| r.loss).sum::<f64>();
        format!(
            "pod stream {:.2} -> {:.2} Gbit/s (medians of {}; {:.2} kept, each round {}), {} -> {} retransmits",
            q / 1e9,
            f / 1e9,
            self.quiet.len(),
            self.kept(),
            each.join("/"),
            retx(&self.quiet),
            retx(&self.flooded)
        )
    }

    /// The CPU part of a figure.
    fn cpu_figure(&self) -> String {
        format!(
            "machine busy {:.2} vCPUs quiet, {:.2} with the flood alone, {:.2} flooded; the flood leaves room for {:.2} of the quiet stream's CPU",
            self.busy_quiet,
            self.busy_flood,
            self.busy_flooded,
            self.cpu_bound()
        )
    }
}

/// CPU seconds (user + system) process `pid` has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name's closing parenthesis: utime and stime are 12 and 13.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    f.get(11)
        .zip(f.get(12))
        .map_or(0.0, |(u, s)| (u + s) / 100.0)
}

/// The vCPUs the machine was busy while `f` ran, and what `f` returned.
fn busy_during<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let (b0, t0) = (harness::machine_busy_seconds(), Instant::now());
    let r = f();
    let busy = (harness::machine_busy_seconds() - b0) / t0.elapsed().as_secs_f64();
    (busy, r)
}

/// `o.rounds` times: the pods' TCP stream from node 1 to node 2 with no flood, then with
/// the host `flooder` sending random 1400-byte datagrams to node 2's `port` (or `o.to`)
/// from 0.5 s before the stream to its end (the first time from 2.5 s before, to measure
/// the flood alone).
fn flood_during_iperf3(c: &Cluster, flooder: &str, port: u16, o: &LabOpts) -> FloodRun {
    let (a, b) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let secs = o.seconds.to_string();
    // Each stream's first second (slow start, a cold path) is left out of its rate.
    let stream = || {
        let v = harness::iperf3_json(&a, &b, &["-t", &secs, "-O", "1"])
            .unwrap_or_else(|e| panic!("{e}"));
        Iperf::from_json(&v, false)
    };
    let to = o.to.clone().unwrap_or(format!("{}:{port}", c.nodes[1].ip));
    let exe = harness::example_beside(&c.weft, "flood");
    let mut run = FloodRun::default();
    for round in 0..o.rounds {
        let (busy, quiet) = busy_during(stream);
        run.busy_quiet += busy / o.rounds as f64;
        run.quiet.push(quiet);
        let alone = if round == 0 { 2.0 } else { 0.0 };
        // The flood outlasts the stream (and iperf3's start) and stops by itself.
        let length = alone + f64::from(o.seconds) + 2.0;
        let flood = Flood::start(&exe, flooder, &to, length, &o.mbit);
        std::thread::sleep(Duration::from_millis(500));
        if round == 0 {
            let (busy, ()) = busy_during(|| std::thread::sleep(Duration::from_secs(2)));
            run.busy_flood = busy;
        }
        let (busy, flooded) = busy_during(stream);
        run.busy_flooded += busy / o.rounds as f64;
        run.flooded.push(flooded);
        run.sent += flood.sent();
    }
    run
}

/// Kernel vxlan, configured as flanneld does, under the same flood: the yardstick.
fn kernel_under_flood(weft: &Path, o: &LabOpts) -> String {
    let mut k = Cluster::new(weft, VXLAN);
    for i in 0..2 {
        k.add_node(Kind::KernelVxlan);
        let subnet = format!("10.244.{}.0/24", i + 1).parse().unwrap();
        k.start_kernel_node(i, subnet);
    }
    for i in 0..2 {
        k.program_kernel_peers(i);
        k.add_pod(i, None);
    }
    let host = k.add_host("flood", 200);
    let run = flood_during_iperf3(&k, &host, 8472, o);
    assert!(
        run.quiet.iter().all(|r| r.bps > 0.0),
        "kernel vxlan pods did not reach each other"
    );
    format!(
        "kernel vxlan: {}; {}",
        run.stream_figure(),
        run.cpu_figure()
    )
}

/// Two weft nodes on `conf`, a pod each, and the flood at node 2's `port` during their
/// streams: the figure, with what the receiving weft used and counted.
fn weft_under_flood(weft: &Path, name: &str, conf: &str, port: u16, o: &LabOpts) -> String {
    let mut c = Cluster::new(weft, conf);
    c.add_weft_nodes(2, &[]);
    let host = c.add_host("flood", 200);
    let before = c.metrics(1);
    let pid = c.nodes[1].child.as_ref().unwrap().id();
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let run = flood_during_iperf3(&c, &host, port, o);
    // Node 2's weft over all the rounds: quiet streams, the flood alone, flooded streams.
    let cpu = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let n = FloodCounts::between(&before, &c.metrics(1));
    if o.to.is_some() {
        // A control run: the flood went elsewhere, so there is nothing to count.
        return format!("{name}: {}; {}", run.stream_figure(), run.cpu_figure());
    }
    format!(
        "{name} (port {port}, {} sent): {}; {}; receiving weft used {cpu:.2} CPU; {} dropped by the kernel for the socket, {} by weft ({} unknown_sender), {} inner packets delivered (the stream's)",
        run.sent,
        run.stream_figure(),
        run.cpu_figure(),
        n.socket,
        n.dropped,
        n.unknown_sender,
        n.rx
    )
}

/// Runs the lab: kernel vxlan, weft vxlan and weft udp under the flood, one after the
/// other; prints the figure and writes it to `<out>/flood.txt`.
pub fn run(weft: &Path, o: &LabOpts) {
    let kernel = kernel_under_flood(weft, o);
    let vxlan = weft_under_flood(weft, "weft vxlan", VXLAN, 8472, o);
    let udp = weft_under_flood(weft, "weft udp", UDP, 8285, o);
    let aimed = o.to.as_ref().map_or("at a node".to_string(), |t| {
        format!("aimed at {t} (a control: no node receives it)")
    });
    let line = format!(
        "garbage flood (random 1400 B datagrams, {} Mbit/s offered) from a leaseless host {aimed} under iperf3 TCP: {kernel}; {vxlan}; {udp}",
        o.mbit
    );
    println!(
        "\n== bench --flood: {} round(s) of {} s\n{line}",
        o.rounds, o.seconds
    );
    std::fs::create_dir_all(&o.out).expect("cannot create the output directory");
    let path = o.out.join("flood.txt");
    std::fs::write(&path, format!("{line}\n")).expect("write flood.txt");
    println!("wrote {}", path.display());
}
