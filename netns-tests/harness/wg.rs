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
    std::fs::write(key, private).unwrap();
    match stock {
        Stock::WireguardGo => {
            let status = Command::new("ip")
                .args(["netns", "exec", ns, "wireguard-go", dev])
                .status()
                .expect("wireguard-go");
            assert!(status.success(), "wireguard-go did not start");
        }
        Stock::Boringtun => {
            let status = Command::new("ip")
                .args(["netns", "exec", ns, "boringtun-cli", dev])
                .args(["--disable-drop-privileges"])
                .env("WG_LOG_LEVEL", "error")
                .status()
                .expect("boringtun-cli (cargo install boringtun-cli)");
            assert!(status.success(), "boringtun-cli did not start");
        }
    }
    let set = format!(
        "wg set {dev} private-key {} listen-port 51820",
        key.display()
    );
    in_ns(ns, &set);
    ip(ns, &format!("addr add {address} dev {dev}"));
    ip(ns, &format!("link set {dev} mtu 1420 up"));
    ip(ns, &format!("route add 10.244.0.0/16 dev {dev} scope link"));
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
