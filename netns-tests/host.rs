//! What weft needs from its host, taken away for real in a private mount namespace around
//! weft alone: without br_netfilter (an empty tmpfs over /proc/sys/net/bridge) a node in
//! iptables mode stops at start with the fix named, as flanneld stops, and takes no lease;
//! nftables mode and `--br-netfilter-check=false` carry on. Without /dev/net/tun (a tmpfs
//! over /dev/net) the userspace dataplane stops with `mknod` named. Root only.

#[path = "harness.rs"]
mod harness;

use std::time::Duration;

use harness::{weft, Cluster, Kind};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const NFT: &str = r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;

/// Runs weft with an empty tmpfs mounted over `dir` first, in a mount namespace of its own.
fn without(dir: &str) -> Vec<String> {
    harness::after_private_mount(&format!("mount -t tmpfs none {dir}"))
}

/// Starts weft on node 0 and waits for it to exit by itself: its log.
fn refused(c: &mut Cluster, extra: &[&str]) -> String {
    c.spawn_weft_env(0, extra, &[]);
    let (ok, log) = c.wait_exit(0, Duration::from_secs(20));
    assert!(!ok, "weft started:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    log
}

fn leases(c: &Cluster) -> usize {
    std::fs::read_dir(c.lease_dir().join("subnets"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn without_br_netfilter_iptables_mode_stops_with_the_fix_named() {
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_node(Kind::Weft);
    c.launcher = without("/proc/sys/net/bridge");
    let log = refused(&mut c, &[]);
    assert!(log.contains("br_netfilter is not loaded"), "{log}");
    assert!(log.contains("modprobe br_netfilter"), "{log}");
    assert_eq!(leases(&c), 0, "a lease was taken:\n{log}");
    // The flag carries on without it.
    c.start_weft(0, &["--br-netfilter-check=false"]);
    assert_eq!(leases(&c), 1);
}

#[test]
fn nftables_mode_needs_no_br_netfilter() {
    let mut c = Cluster::new(weft(), NFT);
    c.add_node(Kind::Weft);
    c.launcher = without("/proc/sys/net/bridge");
    let env = c.start_weft(0, &[]);
    assert!(env
        .subnet
        .expect("an IPv4 subnet")
        .to_string()
        .starts_with("10.244."));
}

#[test]
fn without_a_tun_device_the_userspace_dataplane_stops_with_mknod_named() {
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_node(Kind::Weft);
    c.launcher = without("/dev/net");
    let log = refused(&mut c, &[]);
    assert!(
        log.contains("/dev/net/tun is missing: mkdir -p /dev/net && mknod /dev/net/tun c 10 200"),
        "{log}"
    );
    assert_eq!(leases(&c), 0, "a lease was taken:\n{log}");
}
