//! weft's main job on one machine: a 3-node cluster in network namespaces with weft on
//! every node, leases shown, pings across, a short iperf3 between pods on different nodes,
//! the counters, then everything torn down. Run as root: `./scripts/demo`.

#[path = "harness.rs"]
mod harness;

use harness::{iperf3, Cluster, Kind};

fn main() {
    let backend = std::env::args().nth(1).unwrap_or_else(|| "vxlan".into());
    let conf = format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}"}}}}"#);
    let weft = harness::weft_next_to_exe();

    let mut c = Cluster::new(&weft, &conf);
    println!(
        "== a 3-node weft cluster ({backend}) in namespaces {}-*",
        c.prefix
    );
    for i in 0..3 {
        c.add_node(Kind::Weft);
        let env = c.start_weft(i, &[]);
        let pod = c.add_pod(i, None);
        println!(
            "node{} 192.0.2.{}: subnet {} MTU {}, pod {} (CNI ADD: weft-cni -> bridge, host-local)",
            i + 1,
            i + 1,
            env.subnet,
            env.mtu,
            pod.ip
        );
    }
    c.wait_converged();
    println!(
        "\n== leases in {}/subnets (flannel's etcd layout, one file per key)",
        c.lease_dir().display()
    );
    for e in std::fs::read_dir(c.lease_dir().join("subnets"))
        .unwrap()
        .flatten()
    {
        println!(
            "{}:\n  {}",
            e.file_name().to_string_lossy(),
            std::fs::read_to_string(e.path())
                .unwrap()
                .trim()
                .replace('\n', "\n  ")
        );
    }
    println!(
        "\n== node1's forwarding table (GET /leases)\n{}",
        c.http(0, "/leases").unwrap_or_default()
    );

    println!("== pings between every pair of pods on different nodes");
    let failed = c.ping_all();
    for p in c.pods() {
        print!("{} ", p.ip);
    }
    println!("\n{} pairs failed", failed.len());
    for f in &failed {
        println!("  {f}");
    }

    let (a, b) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let t = iperf3(&a, &b, 5, None);
    println!(
        "\n== iperf3 TCP {} -> {} (5 s): {:.2} Gbit/s, {} retransmits",
        a.ip,
        b.ip,
        t.bps / 1e9,
        t.loss
    );

    println!("\n== node1 counters (GET /metrics, non-zero)");
    for l in c
        .http(0, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
    {
        println!("  {l}");
    }
    println!("\n== tearing down");
    drop(c);
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
