//! Namespaces, veths and the underlay: the topology a cluster is built from.

use std::net::Ipv4Addr;
use std::path::Path;

use super::cluster::{Cluster, Kind, Node};
use super::command::{in_ns, ip, run, sh};

/// Deletes namespaces left behind by runs whose process has died.
pub(super) fn reap_stale() {
    let list = sh(&["ip", "netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("wt") else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if pid.is_empty() || !rest[pid.len()..].starts_with('x') {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_ns_processes(name);
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// Kills every process inside namespace `ns`.
pub(super) fn kill_ns_processes(ns: &str) {
    let pids = run(&["ip", "netns", "pids", ns]);
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = run(&["kill", "-9", pid]);
    }
}

impl Cluster {
    /// Adds an empty namespace `<prefix>-<suffix>` (deleted with the cluster).
    pub fn add_ns(&mut self, suffix: &str) -> String {
        let ns = format!("{}-{suffix}", self.prefix);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&ns, "link set lo up");
        ns
    }

    /// Adds a namespace on the underlay bridge with address 192.0.2.`host`/24 and returns it.
    pub fn add_host(&mut self, name: &str, host: u8) -> String {
        let ns = self.add_ns(name);
        let u = format!("{}-u", self.prefix);
        ip(
            &ns,
            &format!("link add eth0 type veth peer name u{host} netns {u}"),
        );
        ip(&u, &format!("link set u{host} master br0 up"));
        ip(&ns, &format!("addr add 192.0.2.{host}/24 dev eth0"));
        ip(&ns, "link set eth0 up");
        ns
    }

    /// Adds node namespace number `nodes.len() + 1`, not yet running anything.
    pub fn add_node(&mut self, kind: Kind) -> usize {
        let i = self.nodes.len() + 1;
        let ns = self.add_host(&format!("n{i}"), i as u8);
        self.push_node(ns, Ipv4Addr::new(192, 0, 2, i as u8), kind)
    }

    fn push_node(&mut self, ns: String, ip: Ipv4Addr, kind: Kind) -> usize {
        let i = self.nodes.len() + 1;
        in_ns(&ns, "sysctl -qw net.ipv4.ip_forward=1");
        self.nodes.push(Node {
            ns,
            ip,
            kind,
            child: None,
            log: self.dir.join(format!("n{i}.log")),
            subnet_file: self.dir.join(format!("n{i}/subnet.env")),
            pods: Vec::new(),
            containers: Vec::new(),
            healthz: 9100,
        });
        i - 1
    }

    /// Adds a weft node behind a NAT router, as a cloud VM with a floating IP: the router
    /// sits on the underlay as 192.0.2.`public`, the node's eth0 is 192.168.`public`.2/24 on
    /// a private link to it (its default route), and the router forwards UDP `port` to the
    /// node and masquerades everything the node sends. The node's `ip` is its public
    /// address, which its lease must advertise (start weft with `--public-ip`).
    pub fn add_node_behind_nat(&mut self, public: u8, port: u16) -> usize {
        let i = self.nodes.len() + 1;
        let nat = self.add_host(&format!("nat{i}"), public);
        let ns = self.add_ns(&format!("n{i}"));
        let (inside, gw) = (format!("192.168.{public}.2"), format!("192.168.{public}.1"));
        ip(
            &nat,
            &format!("link add lan0 type veth peer name eth0 netns {ns}"),
        );
        ip(&nat, &format!("addr add {gw}/24 dev lan0"));
        ip(&nat, "link set lan0 up");
        ip(&ns, &format!("addr add {inside}/24 dev eth0"));
        ip(&ns, "link set eth0 up");
        ip(&ns, &format!("route add default via {gw}"));
        in_ns(&nat, "sysctl -qw net.ipv4.ip_forward=1");
        in_ns(
            &nat,
            &format!(
                "iptables -t nat -A PREROUTING -i eth0 -p udp --dport {port} -j DNAT --to-destination {inside}"
            ),
        );
        in_ns(
            &nat,
            &format!(
                "iptables -t nat -A POSTROUTING -o eth0 -s 192.168.{public}.0/24 -j MASQUERADE"
            ),
        );
        self.push_node(ns, Ipv4Addr::new(192, 0, 2, public), Kind::Weft)
    }

    /// Adds a weft node on another underlay subnet, behind a router: the router sits on the
    /// underlay bridge as 192.0.2.254 and on a link to the node as 198.51.100.1; the node's
    /// eth0 is 198.51.100.`i`/24 with its default route via the router, and every node
    /// already on the bridge gets a route to 198.51.100.0/24 via 192.0.2.254. The node
    /// reaches the others only through a gateway, as a node in another rack would.
    pub fn add_node_behind_router(&mut self) -> usize {
        let i = self.nodes.len() + 1;
        let r = self.add_host("rtr", 254);
        in_ns(&r, "sysctl -qw net.ipv4.ip_forward=1");
        let ns = self.add_ns(&format!("n{i}"));
        ip(
            &r,
            &format!("link add lan0 type veth peer name eth0 netns {ns}"),
        );
        ip(&r, "addr add 198.51.100.1/24 dev lan0");
        ip(&r, "link set lan0 up");
        ip(&ns, &format!("addr add 198.51.100.{i}/24 dev eth0"));
        ip(&ns, "link set eth0 up");
        ip(&ns, "route add default via 198.51.100.1");
        for n in &self.nodes {
            ip(&n.ns, "route replace 198.51.100.0/24 via 192.0.2.254");
        }
        self.push_node(ns, Ipv4Addr::new(198, 51, 100, i as u8), Kind::Weft)
    }

    /// Adds a router on the underlay (192.0.2.254, forwarding on) and makes it node `i`'s
    /// default route, so whatever node `i` sends that is not for the underlay itself goes
    /// there; returns its namespace.
    pub fn add_router(&mut self, i: usize) -> String {
        let r = self.add_host("router", 254);
        in_ns(&r, "sysctl -qw net.ipv4.ip_forward=1");
        ip(&self.nodes[i].ns, "route replace default via 192.0.2.254");
        r
    }
}
