//! weft's main job on one machine: a 3-node cluster in network namespaces with weft on
//! every node, leases shown, pings across, a short iperf3 between pods on different nodes,
//! the counters, then everything torn down. Run as root: `./scripts/demo [vxlan|udp]`.
//!
//! Exit status: 0 when every pair of pods reached each other and iperf3 moved data; 1 when
//! not; 2 when the host lacks something (each missing piece is printed with its fix, and
//! nothing is touched).

#[path = "harness.rs"]
mod harness;

use harness::preflight::Host;
use harness::{iperf3, Cluster, Kind};

/// What the demo runs of weft's, and the command that builds it.
const BINS: &[&str] = &["weft", "weft-cni"];
const BUILD: &str = "cargo build --release --bin weft --bin weft-cni --example cluster-demo";

fn main() {
    let backend = std::env::args().nth(1).unwrap_or_else(|| "vxlan".into());
    if !["vxlan", "udp"].contains(&backend.as_str()) {
        eprintln!("usage: cluster-demo [vxlan|udp] (not {backend:?})");
        std::process::exit(2);
    }
    let problems = Host::here(BINS, BUILD).problems();
    if !problems.is_empty() {
        eprintln!("The demo cannot run on this host:");
        for p in &problems {
            eprintln!("  - {p}");
        }
        std::process::exit(2);
    }
    quiet_panics();
    let conf = format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}"}}}}"#);
    let mut c = Cluster::new(&harness::weft_next_to_exe(), &conf);
    println!(
        "== a 3-node weft cluster ({backend}) in namespaces {}-*",
        c.prefix
    );
    start_nodes(&mut c);
    show_leases(&c);
    let failed = ping_all(&c);
    let gbps = throughput(&c);
    show_counters(&c);
    println!("\n== tearing down");
    drop(c);
    let passed = failed == 0 && gbps > 0.0;
    println!(
        "\ndemo ({backend}) {}: 3 nodes, {failed} failed pairs, iperf3 {gbps:.2} Gbit/s",
        if passed { "passed" } else { "FAILED" }
    );
    if !passed {
        std::process::exit(1);
    }
}

/// A failure past the checks (weft not starting, a timeout) is reported as one message;
/// unwinding still drops the cluster, which deletes every namespace it made.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        eprintln!("\ndemo failed: {msg}");
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        } else if let Some(l) = info.location() {
            eprintln!("(at {l}; RUST_BACKTRACE=1 for a backtrace)");
        }
    }));
}

fn start_nodes(c: &mut Cluster) {
    for i in 0..3 {
        c.add_node(Kind::Weft);
        let env = c.start_weft(i, &[]);
        let pod = c.add_pod(i, None);
        println!(
            "node{} 192.0.2.{}: subnet {} MTU {}, pod {} (CNI ADD: weft-cni -> bridge, host-local)",
            i + 1,
            i + 1,
            env.subnet.expect("an IPv4 subnet"),
            env.mtu,
            pod.ip
        );
    }
    c.wait_converged();
}

fn show_leases(c: &Cluster) {
    println!(
        "\n== leases in {}/subnets (flannel's etcd layout, one file per key)",
        c.lease_dir().display()
    );
    let dir = std::fs::read_dir(c.lease_dir().join("subnets")).expect("the lease directory");
    for e in dir.flatten() {
        let value = std::fs::read_to_string(e.path()).unwrap_or_default();
        println!(
            "{}:\n  {}",
            e.file_name().to_string_lossy(),
            value.trim().replace('\n', "\n  ")
        );
    }
    println!(
        "\n== node1's forwarding table (GET /leases)\n{}",
        c.http(0, "/leases").unwrap_or_default()
    );
}

/// Pings between every pair of pods on different nodes; returns how many failed.
fn ping_all(c: &Cluster) -> usize {
    println!("== pings between every pair of pods on different nodes");
    let failed = c.ping_all();
    for p in c.pods() {
        print!("{} ", p.ip);
    }
    println!("\n{} failed pairs", failed.len());
    for f in &failed {
        println!("  {f}");
    }
    failed.len()
}

/// A 5 s iperf3 between pods on nodes 1 and 2; returns Gbit/s.
fn throughput(c: &Cluster) -> f64 {
    let (a, b) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let t = iperf3(&a, &b, 5, None);
    println!(
        "\n== iperf3 TCP {} -> {} (5 s): {:.2} Gbit/s, {} retransmits",
        a.ip,
        b.ip,
        t.bps / 1e9,
        t.loss
    );
    t.bps / 1e9
}

fn show_counters(c: &Cluster) {
    println!("\n== node1 counters (GET /metrics, non-zero)");
    let metrics = c.http(0, "/metrics").unwrap_or_default();
    for l in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
    {
        println!("  {l}");
    }
}
