//! weft's WireGuard against a stock one: the sans-IO node (`weft::wg::Node`, driven by the
//! `wg_probe` example over one UDP socket) and Debian's wireguard-go, configured with
//! wireguard-tools as flanneld configures `flannel-wg` (its `<subnet>/32` address, MTU
//! 1420, a scope-link route for the whole Network, the peer's subnet as allowed IPs and
//! PublicIP:51820 as endpoint), on a real underlay. Each side pings the other's pod
//! address through the tunnel; this kernel has no wireguard module, so wireguard-go is the
//! stock peer. Root only, like the rest.

#[path = "harness.rs"]
mod harness;

use std::process::Command;

use harness::preflight::profile_dir;
use harness::{ip, ns_sh, weft, Cluster};

/// A key pair from `wg genkey | wg pubkey`: (private, public), base64.
fn wg_keys() -> (String, String) {
    let private = harness::sh(&["wg", "genkey"]).trim().to_string();
    let out = Command::new("sh")
        .args(["-c", &format!("echo {private} | wg pubkey")])
        .output()
        .unwrap();
    (
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Starts wireguard-go on `ns` as flanneld would have `flannel-wg` there: key `private`,
/// port 51820, peer `peer` (with `psk`) for 10.244.1.0/24 at 192.0.2.1:51820, address
/// 10.244.2.0/32, MTU 1420, route 10.244.0.0/16 scope link.
fn stock_node(c: &Cluster, ns: &str, private: &str, peer: &str, psk: Option<&str>) {
    let key = c.dir.join("wgkey-b");
    std::fs::write(&key, private).unwrap();
    let mut set = format!(
        "wg set flannel-wg private-key {} listen-port 51820 peer {peer} allowed-ips 10.244.1.0/24 endpoint 192.0.2.1:51820",
        key.display()
    );
    if let Some(p) = psk {
        let f = c.dir.join("psk-b");
        std::fs::write(&f, p).unwrap();
        set += &format!(" preshared-key {}", f.display());
    }
    let status = Command::new("ip")
        .args(["netns", "exec", ns, "wireguard-go", "flannel-wg"])
        .status()
        .unwrap();
    assert!(status.success(), "wireguard-go did not start");
    harness::in_ns(ns, &set);
    ip(ns, "addr add 10.244.2.0/32 dev flannel-wg");
    ip(ns, "link set flannel-wg mtu 1420 up");
    ip(ns, "route add 10.244.0.0/16 dev flannel-wg scope link");
}

/// Runs the probe on `ns` (key `private`, the stock peer's `peer`, `psk`) while the stock
/// node pings 10.244.1.0 three times; (probe succeeded, ping output).
fn probe(
    c: &Cluster,
    ns: &[String; 2],
    private: &str,
    peer: &str,
    psk: Option<&str>,
) -> (bool, String) {
    let exe = profile_dir().join("examples/wg_probe");
    assert!(
        exe.exists(),
        "{} is missing: build with --all-targets",
        exe.display()
    );
    let pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns[1],
            "sh",
            "-c",
            "sleep 1; ping -c 3 -i 0.3 -W 2 10.244.1.0",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut args = vec![
        "netns",
        "exec",
        &ns[0],
        exe.to_str().unwrap(),
        "--private",
        private,
        "--peer",
        peer,
        "--listen",
        "192.0.2.1:51820",
        "--endpoint",
        "192.0.2.2:51820",
        "--src",
        "10.244.1.0",
        "--dst",
        "10.244.2.0",
        "--count",
        "3",
        "--answer",
        "3",
        "--seconds",
        "8",
    ];
    if let Some(p) = psk {
        args.extend(["--psk", p]);
    }
    let out = Command::new("ip").args(&args).output().unwrap();
    let ping = pinger.wait_with_output().unwrap();
    let _ = c;
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&ping.stdout).to_string(),
    )
}

/// wireguard-go's control socket, which outlives the process the cluster kills: removed
/// on every exit path.
struct UapiSocket;

impl Drop for UapiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file("/var/run/wireguard/flannel-wg.sock");
    }
}

/// Two hosts on the underlay: weft's probe on 192.0.2.1, wireguard-go on 192.0.2.2.
fn two_hosts() -> (UapiSocket, Cluster, [String; 2]) {
    let mut c = Cluster::new(weft(), harness::DUAL_STACK_VXLAN);
    let a = c.add_host("wga", 1);
    let b = c.add_host("wgb", 2);
    (UapiSocket, c, [a, b])
}

#[test]
fn weft_s_wireguard_and_a_stock_wireguard_go_reach_each_other_both_ways() {
    for psk in [
        None,
        Some(harness::sh(&["wg", "genpsk"]).trim().to_string()),
    ] {
        let (_sock, c, ns) = two_hosts();
        let ((ka, pa), (kb, pb)) = (wg_keys(), wg_keys());
        stock_node(&c, &ns[1], &kb, &pa, psk.as_deref());
        let (ok, ping) = probe(&c, &ns, &ka, &pb, psk.as_deref());
        assert!(ok, "weft's probe got no replies or no pings (psk {psk:?})");
        assert!(ping.contains("3 received"), "{ping}");
        let show = ns_sh(&ns[1], &["wg", "show", "flannel-wg", "latest-handshakes"]);
        assert!(show.contains(&pa), "{show}");
    }
}

/// The same exchange with PSKs that differ fails: nothing is accepted on either side.
#[test]
fn a_psk_that_differs_gets_nothing_through() {
    let (_sock, c, ns) = two_hosts();
    let ((ka, pa), (kb, pb)) = (wg_keys(), wg_keys());
    let (p1, p2) = (
        harness::sh(&["wg", "genpsk"]),
        harness::sh(&["wg", "genpsk"]),
    );
    stock_node(&c, &ns[1], &kb, &pa, Some(p1.trim()));
    let (ok, ping) = probe(&c, &ns, &ka, &pb, Some(p2.trim()));
    assert!(!ok);
    assert!(ping.contains(" 0 received"), "{ping}");
}
