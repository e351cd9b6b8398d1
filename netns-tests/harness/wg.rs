//! Stock userspace WireGuard nodes (wireguard-go from Debian, boringtun-cli from crates.io),
//! each with wireguard-tools' `wg`, set up as flanneld v0.28 sets up `flannel-wg`
//! (`pkg/backend/wireguard`): the device holding `<subnet>.0/32`, MTU 1500 - 80, a
//! scope-link route for the whole Network, a peer per other node (its subnet as allowed
//! IPs, PublicIP:51820 as endpoint).

use std::path::Path;
use std::process::Command;

use super::command::{in_ns, ip, sh};

/// A key pair from `wg genkey | wg pubkey`: (private, public), base64.
pub fn wg_keys() -> (String, String) {
    let private = sh(&["wg", "genkey"]).trim().to_string();
    let out = Command::new("sh")
        .args(["-c", &format!("echo {private} | wg pubkey")])
        .output()
        .expect("wg pubkey");
    (
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Which stock implementation runs the device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stock {
    /// Debian's wireguard-go.
    WireguardGo,
    /// boringtun-cli (`cargo install boringtun-cli`), in the foreground of its own process.
    Boringtun,
}

/// Starts `stock` as device `dev` in `ns` with private key `private` (written to `key`),
/// listening on 51820, holding `address` (flanneld's `<subnet>.0/32`) with MTU 1420 and a
/// scope-link route for 10.244.0.0/16. wireguard-go daemonizes; boringtun is left running
/// in the background and killed with the namespace's processes.
pub fn stock_wg_device(
    stock: Stock,
    ns: &str,
    dev: &str,
    (private, key): (&str, &Path),
    address: &str,
) {
    let plan = StockDevice {
        port: 51820,
        addresses: &[address],
        routes: &["10.244.0.0/16"],
    };
    stock_wg_device_as(stock, ns, dev, (private, key), &plan);
}

/// What flanneld's `createWGDev` and `Configure`/`ConfigureV6` give a device: its port,
/// its addresses (`<subnet>.0/32`, `<v6 subnet>/128`) and a scope-link route per Network.
pub struct StockDevice<'a> {
    /// `ListenPort` (or `ListenPortV6`).
    pub port: u16,
    /// Its addresses, with their prefix lengths.
    pub addresses: &'a [&'a str],
    /// The Networks it routes.
    pub routes: &'a [&'a str],
}

/// [`stock_wg_device`] with the port, addresses and routes of `plan`.
pub fn stock_wg_device_as(
    stock: Stock,
    ns: &str,
    dev: &str,
    (private, key): (&str, &Path),
    plan: &StockDevice<'_>,
) {
    std::fs::write(key, private).unwrap();
    let mut cmd = Command::new("ip");
    match stock {
        Stock::WireguardGo => cmd.args(["netns", "exec", ns, "wireguard-go", dev]),
        Stock::Boringtun => cmd
            .args(["netns", "exec", ns, "boringtun-cli", dev])
            .args(["--disable-drop-privileges"])
            .env("WG_LOG_LEVEL", "error"),
    };
    let status = cmd
        .status()
        .expect("wireguard-go, or boringtun-cli (cargo install boringtun-cli)");
    assert!(status.success(), "{stock:?} did not start");
    let set = format!(
        "wg set {dev} private-key {} listen-port {}",
        key.display(),
        plan.port
    );
    in_ns(ns, &set);
    for a in plan.addresses {
        ip(ns, &format!("addr add {a} dev {dev}"));
    }
    ip(ns, &format!("link set {dev} mtu 1420 up"));
    for r in plan.routes {
        ip(ns, &format!("route add {r} dev {dev} scope link"));
    }
}

/// flanneld's `addPeer`: on device `dev` in `ns`, the peer with `public` key, `subnet` as
/// its allowed IPs, reached at `endpoint`.
pub fn stock_wg_peer(ns: &str, dev: &str, public: &str, subnet: &str, endpoint: &str) {
    in_ns(
        ns,
        &format!("wg set {dev} peer {public} allowed-ips {subnet} endpoint {endpoint}"),
    );
}

/// The control sockets the stock devices leave in /var/run/wireguard (they outlive the
/// processes the cluster kills): removed on every exit path.
pub struct UapiSockets(pub Vec<String>);

impl Drop for UapiSockets {
    fn drop(&mut self) {
        for dev in &self.0 {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{dev}.sock"));
        }
    }
}

impl super::Cluster {
    /// Sets node `i` up as a stock WireGuard node of subnet `subnet`: device `dev` as
    /// [`stock_wg_device`] makes it (its key in the cluster's directory), cni0 and
    /// subnet.env at MTU 1420. Returns its public key; program its peers with
    /// [`stock_wg_peer`].
    pub fn start_stock_wg_node(
        &mut self,
        i: usize,
        subnet: ipnet::Ipv4Net,
        (stock, dev): (Stock, &str),
    ) -> String {
        let (private, public) = wg_keys();
        let key = self.dir.join(format!("wgkey-{}", i + 1));
        let address = format!("{}/32", subnet.network());
        let ns = self.nodes[i].ns.clone();
        stock_wg_device(stock, &ns, dev, (&private, &key), &address);
        self.publish_static(i, subnet, 1420);
        public
    }
}
