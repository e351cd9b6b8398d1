//! The cluster: its nodes and pods, the one-at-a-time lock, the lease store it shares, and
//! the clean-up that runs however a test ends.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use ipnet::Ipv4Net;
use weft::lease::Lease;
use weft::store::file::FileStore;
use weft::store::LeaseStore;

use super::command::{ip, run, try_in_ns};
use super::etcd::{Etcd, ETCD_PREFIX};
use super::netns::{kill_ns_processes, reap_stale};
use super::preflight;

/// One cluster at a time on this host: clusters are cheap to build but iperf3 on two cores
/// is not, and figures from overlapping runs would mean nothing.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Fails unless we are root with the tools, devices and binaries the tests need, naming
/// what is missing and the fix.
pub fn require_root() {
    let host = preflight::Host::here(
        &["weft", "weft-cni"],
        "cargo build --release --all-targets (./scripts/test does)",
    );
    let problems = host.problems();
    assert!(
        problems.is_empty(),
        "this host cannot run the netns tests:\n  {}",
        problems.join("\n  ")
    );
}

/// What runs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `weft run`.
    Weft,
    /// The kernel's vxlan, programmed exactly as flanneld programs `flannel.1`.
    KernelVxlan,
    /// Plain routes between nodes (flannel's host-gw).
    HostGw,
    /// flannel's own udp-backend proxy (`proxy_amd64.c`), driven as flanneld drives it.
    FlannelUdp,
}

/// A pod: a namespace behind a node's cni0.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack node.
    pub ip6: Option<std::net::Ipv6Addr>,
}

/// A node namespace.
pub struct Node {
    /// Its namespace.
    pub ns: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// What runs there.
    pub kind: Kind,
    /// The weft process, while running.
    pub child: Option<Child>,
    /// Where weft's output goes.
    pub log: PathBuf,
    /// The subnet.env weft writes.
    pub subnet_file: PathBuf,
    /// Its pods.
    pub pods: Vec<Pod>,
    /// The CNI container ID of each pod, in `pods` order (for DEL).
    pub containers: Vec<String>,
    /// Its healthz port.
    pub healthz: u16,
}

/// The cluster.
pub struct Cluster {
    /// Name prefix of everything this cluster creates.
    pub prefix: String,
    /// The lease directory (shared by all nodes) and logs.
    pub dir: PathBuf,
    /// The weft binary.
    pub weft: PathBuf,
    /// Nodes, index 0 is node 1 (192.0.2.1).
    pub nodes: Vec<Node>,
    /// Every namespace it created, deleted with it in reverse order.
    pub(super) namespaces: Vec<String>,
    /// The etcd server, if the cluster keeps its leases there.
    pub etcd: Option<Etcd>,
    /// The cluster network.
    pub network: Ipv4Net,
    /// Helper processes (the kube API stand-in), killed with the cluster.
    pub(super) helpers: Vec<Child>,
    /// A command weft is started through inside its namespace (e.g. `setpriv` with a
    /// reduced capability set, as a systemd unit would start it); empty by default.
    pub launcher: Vec<String>,
    _one: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Builds the underlay and a lease directory holding `net_conf`.
    pub fn new(weft: &Path, net_conf: &str) -> Cluster {
        let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        require_root();
        reap_stale();
        let prefix = format!(
            "wt{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&prefix);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // Read loosely: some tests hand weft a deliberately invalid config.
        let network = serde_json::from_str::<serde_json::Value>(net_conf)
            .ok()
            .and_then(|v| v["Network"].as_str()?.parse().ok())
            .expect("test net-conf.json needs a Network");
        let mut c = Cluster {
            prefix,
            dir,
            weft: weft.to_path_buf(),
            nodes: Vec::new(),
            namespaces: Vec::new(),
            etcd: None,
            network,
            helpers: Vec::new(),
            launcher: Vec::new(),
            _one: one,
        };
        FileStore::open(c.lease_dir())
            .unwrap()
            .write_config(net_conf)
            .unwrap();
        let u = c.add_ns("u");
        ip(&u, "link add br0 type bridge");
        ip(&u, "link set br0 up");
        c
    }

    /// The shared lease directory.
    pub fn lease_dir(&self) -> PathBuf {
        self.dir.join("leases")
    }

    /// The leases in the store (etcd's read with etcdctl, not weft).
    pub fn leases(&self) -> Vec<Lease> {
        if let Some(e) = &self.etcd {
            let prefix = format!("{ETCD_PREFIX}/subnets/");
            let mut v: Vec<Lease> = e
                .get_prefix(&prefix)
                .iter()
                .filter_map(|(k, val)| {
                    weft::store::etcd::decode(
                        &prefix,
                        k.as_bytes(),
                        val.as_bytes(),
                        1,
                        SystemTime::now(),
                    )
                    .ok()
                })
                .collect();
            v.sort_by_key(|l| l.subnet);
            return v;
        }
        let mut s = FileStore::open(self.lease_dir()).unwrap();
        let mut l = s.leases().unwrap();
        l.retain(|l| !l.is_expired(SystemTime::now()));
        l
    }

    /// Writes a lease as a node's agent would: in etcd as flanneld writes it (24 h etcd
    /// lease), or in the lease directory.
    pub fn put_lease(&self, lease: &Lease) {
        match &self.etcd {
            Some(e) => e.put_lease(lease, lease.expiration.map(|_| 86400)),
            None => FileStore::open(self.lease_dir())
                .unwrap()
                .put(lease)
                .unwrap(),
        }
    }

    /// Every pod in the cluster.
    pub fn pods(&self) -> Vec<Pod> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.iter().cloned())
            .collect()
    }

    /// Pings every pod from every other pod (`count` each) and returns the failures.
    pub fn ping_all(&self) -> Vec<String> {
        let pods = self.pods();
        let mut failed = Vec::new();
        for a in &pods {
            for b in &pods {
                if a.ip != b.ip {
                    let o = try_in_ns(&a.ns, &format!("ping -c 2 -i 0.2 -W 2 {}", b.ip));
                    if !o.status.success() {
                        failed.push(format!(
                            "{} -> {}: {}",
                            a.ip,
                            b.ip,
                            String::from_utf8_lossy(&o.stdout)
                        ));
                    }
                }
            }
        }
        failed
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Pods go as a runtime removes them (CNI DEL), while their nodes still exist.
        for i in 0..self.nodes.len() {
            for pod in self.nodes[i].pods.clone() {
                let _ = self.remove_pod(i, &pod);
            }
        }
        for i in 0..self.nodes.len() {
            self.stop_weft(i);
        }
        if let Some(mut e) = self.etcd.take() {
            e.stop();
        }
        for mut h in self.helpers.drain(..) {
            let _ = h.kill();
            let _ = h.wait();
        }
        for ns in self.namespaces.iter().rev() {
            kill_ns_processes(ns);
            let _ = run(&["ip", "netns", "del", ns]);
        }
        if std::env::var_os("WEFT_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
