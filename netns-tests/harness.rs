//! A cluster of network namespaces on one host, for weft's integration tests and demo.
//!
//! ```text
//!  <p>-u            underlay namespace: bridge br0 (192.0.2.0/24, no address)
//!   |- u<i>  <->  eth0 in <p>-n<i>   node i: 192.0.2.<i>/24, weft (or kernel vxlan),
//!                                     cni0 bridge at FLANNEL_SUBNET with FLANNEL_MTU
//!                   vp<j> <-> eth0 in <p>-n<i>p<j>   pod j: FLANNEL_SUBNET + 10 + j
//! ```
//! Every name starts with `wt<pid>x<seq>` so parallel runs never collide, and namespaces left
//! by a run that died (its pid is gone) are deleted by the next one. `Drop` stops every
//! process and deletes every namespace and file, on success, failure or panic. The
//! harness itself uses `ip` and friends; only weft is forbidden that.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use weft::lease::{Lease, LeaseAttrs, VxlanBackendData};
use weft::store::file::FileStore;
use weft::store::LeaseStore;
use weft::subnet_env::SubnetEnv;
use weft::wire::MacAddr;

#[path = "preflight.rs"]
pub mod preflight;

/// One cluster at a time on this host: clusters are cheap to build but iperf3 on two cores
/// is not, and figures from overlapping runs would mean nothing.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command, returning its output whatever the exit status.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `args` inside namespace `ns`.
pub fn ns_run(ns: &str, args: &[&str]) -> Output {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

/// Runs `args` inside `ns`; it must succeed.
pub fn ns_sh(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Resident memory of process `pid` in KiB (`VmRSS` in /proc; 0 if it is gone).
pub fn rss_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Busy CPU seconds of the whole machine so far, all CPUs together, from /proc/stat: user,
/// nice, system, irq, softirq and steal (everything but idle and iowait).
pub fn machine_busy_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .take(6)
        .map(|(_, x)| x)
        .sum();
    busy / 100.0
}

/// The median of the finite values in `v` (NaN if there are none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Polls `f` until it returns `Some` or `limit` passes. Deadlines are generous: they bound
/// a hang, they do not measure speed.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

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

/// Deletes namespaces left behind by runs whose process has died.
fn reap_stale() {
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

fn kill_ns_processes(ns: &str) {
    let pids = run(&["ip", "netns", "pids", ns]);
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = run(&["kill", "-9", pid]);
    }
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
}

/// A pod: a namespace behind a node's cni0.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
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
    namespaces: Vec<String>,
    /// The etcd server, if the cluster keeps its leases there.
    pub etcd: Option<Etcd>,
    /// The cluster network.
    pub network: Ipv4Net,
    /// Helper processes (the kube API stand-in), killed with the cluster.
    helpers: Vec<Child>,
    /// A command weft is started through inside its namespace (e.g. `setpriv` with a
    /// reduced capability set, as a systemd unit would start it); empty by default.
    pub launcher: Vec<String>,
    _one: MutexGuard<'static, ()>,
}

/// The etcd key prefix the tests use (flanneld's default).
pub const ETCD_PREFIX: &str = "/coreos.com/network";

/// A real etcd server in its own namespace on the underlay (192.0.2.250:2379).
pub struct Etcd {
    /// Its namespace.
    pub ns: String,
    /// Its client URL.
    pub url: String,
    /// Extra flags for etcd itself (TLS files, `--client-cert-auth`).
    pub server_args: Vec<String>,
    /// Extra flags for etcdctl (`--cacert`, `--cert`, `--key`, `--user`).
    pub ctl_args: Vec<String>,
    /// Extra flags for the weft nodes (`--etcd-cafile` and so on).
    pub weft_args: Vec<String>,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts (or restarts, on the same data) the server and waits until it answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "etcd already runs");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let peer = "http://192.0.2.250:2380";
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcd", "--name", "weft-test"])
            .args(["--data-dir", &self.data.display().to_string()])
            .args([
                "--listen-client-urls",
                &self.url,
                "--advertise-client-urls",
                &self.url,
            ])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .args(["--initial-cluster", &format!("weft-test={peer}")])
            .args(&self.server_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd (apt-get install etcd-server)");
        self.child = Some(child);
        wait_for("etcd to answer", Duration::from_secs(20), || {
            self.try_ctl(&["endpoint", "health"]).ok()
        });
    }

    /// Stops the server (SIGTERM, as systemd would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = run(&["kill", "-TERM", &c.id().to_string()]);
            if wait_for_exit(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Runs etcdctl (API v3) against the server; Err(stderr) on failure.
    pub fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "etcdctl",
                "--endpoints",
                &self.url,
            ])
            .args(["--command-timeout", "5s"])
            .args(&self.ctl_args)
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// Runs etcdctl and panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?} failed: {e}"))
    }

    /// Key -> value under `prefix`, as etcdctl prints them.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    /// The etcd lease a key is attached to (0: none), from `etcdctl get -w json`.
    pub fn lease_of(&self, key: &str) -> i64 {
        let out = self.ctl(&["get", key, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["kvs"][0]["lease"].as_i64().unwrap_or(0)
    }

    /// Writes a lease as flanneld does: under a fresh etcd lease with `ttl` seconds, or
    /// without one (a reservation).
    pub fn put_lease(&self, lease: &Lease, ttl: Option<u64>) {
        let key = format!("{ETCD_PREFIX}/subnets/{}", lease.key());
        let json = lease.attrs.to_json();
        match ttl {
            Some(t) => {
                // "lease 694d7d4a1f3c2b0e granted with TTL(86400s)"
                let out = self.ctl(&["lease", "grant", &t.to_string()]);
                let id = out.split_whitespace().nth(1).unwrap().to_string();
                self.ctl(&["put", &format!("--lease={id}"), &key, &json]);
            }
            None => {
                self.ctl(&["put", &key, &json]);
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits up to `limit` for a child to exit.
pub fn wait_for_exit(c: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
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
        sh(&["ip", "-n", &u, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &u, "link", "set", "br0", "up"]);
        c
    }

    /// As `new`, but the leases live in a real etcd server started on the underlay (its
    /// own namespace, 192.0.2.250) with `net_conf` at `<prefix>/config`.
    pub fn with_etcd(weft: &Path, net_conf: &str) -> Cluster {
        Cluster::with_etcd_args(weft, net_conf, "http", &[], &[], &[])
    }

    /// As `with_etcd`, with the client URL's `scheme` and extra flags for etcd, etcdctl
    /// and weft (for TLS: the files the test made; see [`Etcd`]).
    pub fn with_etcd_args(
        weft: &Path,
        net_conf: &str,
        scheme: &str,
        server: &[String],
        ctl: &[String],
        weft_args: &[String],
    ) -> Cluster {
        let mut c = Cluster::new(weft, net_conf);
        assert!(
            run(&["sh", "-c", "command -v etcd && command -v etcdctl"])
                .status
                .success(),
            "etcd is not installed: run ./scripts/test, which installs etcd-server and etcd-client"
        );
        let ns = c.add_host("etcd", 250);
        let mut etcd = Etcd {
            ns,
            url: format!("{scheme}://192.0.2.250:2379"),
            server_args: server.to_vec(),
            ctl_args: ctl.to_vec(),
            weft_args: weft_args.to_vec(),
            data: c.dir.join("etcd-data"),
            log: c.dir.join("etcd.log"),
            child: None,
        };
        etcd.start();
        etcd.ctl(&["put", &format!("{ETCD_PREFIX}/config"), net_conf]);
        c.etcd = Some(etcd);
        c
    }

    /// The etcd server (panics for a directory-store cluster).
    pub fn etcd(&mut self) -> &mut Etcd {
        self.etcd.as_mut().expect("this cluster has no etcd")
    }

    /// The shared lease directory.
    pub fn lease_dir(&self) -> PathBuf {
        self.dir.join("leases")
    }

    /// Adds an empty namespace `<prefix>-<suffix>` (deleted with the cluster).
    pub fn add_ns(&mut self, suffix: &str) -> String {
        let ns = format!("{}-{suffix}", self.prefix);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Adds a namespace on the underlay bridge with address 192.0.2.`host`/24 and returns it.
    pub fn add_host(&mut self, name: &str, host: u8) -> String {
        let ns = self.add_ns(name);
        let u = format!("{}-u", self.prefix);
        let port = format!("u{host}");
        sh(&[
            "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
            &u,
        ]);
        sh(&["ip", "-n", &u, "link", "set", &port, "master", "br0", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("192.0.2.{host}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
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
        ns_sh(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
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
        sh(&[
            "ip", "-n", &nat, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        sh(&[
            "ip",
            "-n",
            &nat,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            "lan0",
        ]);
        sh(&["ip", "-n", &nat, "link", "set", "lan0", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{inside}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "route", "add", "default", "via", &gw]);
        ns_sh(&nat, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let port = port.to_string();
        ns_sh(
            &nat,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                "eth0",
                "-p",
                "udp",
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &inside,
            ],
        );
        ns_sh(
            &nat,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "eth0",
                "-s",
                &format!("192.168.{public}.0/24"),
                "-j",
                "MASQUERADE",
            ],
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
        ns_sh(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let ns = self.add_ns(&format!("n{i}"));
        sh(&[
            "ip", "-n", &r, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        sh(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "lan0",
        ]);
        sh(&["ip", "-n", &r, "link", "set", "lan0", "up"]);
        let own = format!("198.51.100.{i}/24");
        sh(&["ip", "-n", &ns, "addr", "add", &own, "dev", "eth0"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
        ]);
        for n in &self.nodes {
            sh(&[
                "ip",
                "-n",
                &n.ns,
                "route",
                "replace",
                "198.51.100.0/24",
                "via",
                "192.0.2.254",
            ]);
        }
        self.push_node(ns, Ipv4Addr::new(198, 51, 100, i as u8), Kind::Weft)
    }

    /// Starts weft on node `i` with extra flags and waits for its subnet.env and /healthz.
    pub fn start_weft(&mut self, i: usize, extra: &[&str]) -> SubnetEnv {
        self.spawn_weft(i, extra);
        self.finish_start(i)
    }

    /// Adds `n` weft nodes, each started with `extra` and given one pod, and waits until
    /// every table holds every lease.
    pub fn add_weft_nodes(&mut self, n: usize, extra: &[&str]) {
        for _ in 0..n {
            let i = self.add_node(Kind::Weft);
            self.start_weft(i, extra);
            self.add_pod(i, None);
        }
        self.wait_converged();
    }

    /// Starts weft on nodes 0 and 1 at the same instant; returns their subnets.
    pub fn start_weft_pair(&mut self) -> (Ipv4Net, Ipv4Net) {
        self.spawn_weft(0, &[]);
        self.spawn_weft(1, &[]);
        (self.finish_start(0).subnet, self.finish_start(1).subnet)
    }

    /// As `start_weft`, with `env` added to weft's environment.
    pub fn start_weft_env(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) -> SubnetEnv {
        self.spawn(i, extra, env);
        self.finish_start(i)
    }

    /// Starts the kube-apiserver stand-in (the `kube-api-standin` example) in its own
    /// namespace on the underlay, at 192.0.2.250:6443, with a bookmark every second on idle
    /// watches; returns its URL. Talk to it with [`Cluster::kube`].
    pub fn start_kube_api(&mut self) -> String {
        let exe = self
            .weft
            .parent()
            .expect("weft's directory")
            .join("examples/kube-api-standin");
        assert!(
            exe.exists(),
            "{} is missing: build with --all-targets (cargo test --all-targets builds it)",
            exe.display()
        );
        let ns = self.add_host("api", 250);
        let log = self.dir.join("kube-api.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&exe)
            .args(["192.0.2.250:6443", "1"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the kube-apiserver stand-in");
        self.helpers.push(child);
        wait_for("the kube API stand-in", Duration::from_secs(10), || {
            fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("listening on"))
        });
        "http://192.0.2.250:6443".into()
    }

    /// One request to the kube API stand-in, from its namespace, as kubectl or
    /// kube-controller-manager would send it: (status code, JSON body).
    pub fn kube(
        &self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let code = "import sys,urllib.request\nb=sys.argv[3].encode() if sys.argv[3] else None\nr=urllib.request.Request('http://192.0.2.250:6443'+sys.argv[2],data=b,method=sys.argv[1],headers={'Content-Type':sys.argv[4]})\ntry:\n  resp=urllib.request.urlopen(r,timeout=5)\nexcept urllib.error.HTTPError as e:\n  resp=e\nsys.stdout.write(str(resp.status)+'\\n'+resp.read().decode())";
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let ns = format!("{}-api", self.prefix);
        let o = ns_run(&ns, &["python3", "-c", code, method, path, &body, ctype]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let (status, json) = out.split_once('\n').unwrap_or_else(|| {
            panic!(
                "kube API call failed: {out}{}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (
            status.parse().unwrap(),
            serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Starts weft on node `i` and returns at once (no waiting for anything); `env` adds
    /// variables to its environment.
    pub fn spawn_weft_env(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) {
        self.spawn(i, extra, env);
    }

    fn spawn_weft(&mut self, i: usize, extra: &[&str]) {
        self.spawn(i, extra, &[]);
    }

    fn spawn(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "weft already runs on node {}", i + 1);
        let _ = fs::remove_file(&n.subnet_file);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let port = n.healthz.to_string();
        let store = match &self.etcd {
            Some(e) => {
                let mut v = vec!["--etcd-endpoints".to_string(), e.url.clone()];
                v.extend(e.weft_args.iter().cloned());
                v
            }
            None => vec![
                "--lease-dir".to_string(),
                self.dir.join("leases").display().to_string(),
            ],
        };
        let mut args = vec!["netns".to_string(), "exec".into(), n.ns.clone()];
        args.extend(self.launcher.iter().cloned());
        args.extend([self.weft.display().to_string(), "run".into()]);
        // eth0 unless the test chooses the underlay itself.
        if !extra.iter().any(|a| a.starts_with("--iface")) {
            args.extend(["--iface".into(), "eth0".into()]);
        }
        args.extend(store);
        args.extend([
            "--subnet-file".into(),
            n.subnet_file.display().to_string(),
            "--healthz-port".into(),
            port,
        ]);
        // As kube-flannel.yml runs flanneld: with --ip-masq, so subnet.env says
        // FLANNEL_IPMASQ=true and the CNI bridge leaves pod-to-pod traffic un-NATed.
        if !extra.iter().any(|a| a.starts_with("--ip-masq")) {
            args.push("--ip-masq".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("ip")
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start weft");
        n.child = Some(child);
    }

    /// Waits for weft on node `i`, spawned by `spawn_weft_env`, to write subnet.env and answer
    /// `/healthz` with ok.
    pub fn finish_start(&mut self, i: usize) -> SubnetEnv {
        let n = &self.nodes[i];
        let (file, logp) = (n.subnet_file.clone(), n.log.clone());
        let env = wait_for(
            &format!("weft on node {} to write subnet.env", i + 1),
            Duration::from_secs(20),
            || {
                if let Some(Ok(Some(st))) = self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                    panic!(
                        "weft on node {} exited ({st}):\n{}",
                        i + 1,
                        fs::read_to_string(&logp).unwrap_or_default()
                    );
                }
                SubnetEnv::read(&file).ok()
            },
        );
        wait_for("the healthz endpoint", Duration::from_secs(10), || {
            self.http(i, "/healthz").filter(|b| b == "ok\n")
        });
        env
    }

    /// Stops weft on node `i` with SIGTERM and returns whether it exited cleanly.
    pub fn stop_weft(&mut self, i: usize) -> bool {
        let Some(mut child) = self.nodes[i].child.take() else {
            return true;
        };
        // `ip netns exec` execs weft, so the child's pid is weft's.
        let _ = run(&["kill", "-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills weft on node `i` with SIGKILL, as a crash or an OOM kill would: none of its
    /// clean-up runs (the kernel still deletes the TUN when its last descriptor closes).
    pub fn kill_weft(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            // `ip netns exec` execs weft, so this is weft's pid.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Adds a router on the underlay (192.0.2.254, forwarding on) and makes it node `i`'s
    /// default route, so whatever node `i` sends that is not for the underlay itself goes
    /// there; returns its namespace.
    pub fn add_router(&mut self, i: usize) -> String {
        let r = self.add_host("router", 254);
        ns_sh(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        sh(&[
            "ip",
            "-n",
            &self.nodes[i].ns,
            "route",
            "replace",
            "default",
            "via",
            "192.0.2.254",
        ]);
        r
    }

    /// Waits for weft on node `i` to exit by itself and returns (success, log).
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> (bool, String) {
        let mut child = self.nodes[i].child.take().expect("weft is not running");
        let st = wait_for("weft to exit", limit, || child.try_wait().ok().flatten());
        (
            st.success(),
            fs::read_to_string(&self.nodes[i].log).unwrap_or_default(),
        )
    }

    /// The node's current subnet (from its subnet.env, or its kernel lease).
    pub fn subnet(&self, i: usize) -> Ipv4Net {
        SubnetEnv::read(&self.nodes[i].subnet_file)
            .expect("no subnet.env")
            .subnet
    }

    /// Adds a pod to node `i` as a container runtime does: a namespace, then CNI ADD through
    /// kube-flannel.yml's conflist (weft-cni as `flannel`, Debian's bridge, host-local and
    /// portmap), so cni0, the veth, the address and the routes are the plugins' work. `mtu`
    /// overrides FLANNEL_MTU through the delegate's own `mtu` key, as flannel's plugin allows.
    pub fn add_pod(&mut self, i: usize, mtu: Option<u32>) -> Pod {
        let mut rt = CniRuntime::kube_flannel(self, i);
        if let Some(mtu) = mtu {
            rt.conflist["plugins"][0]["delegate"]["mtu"] = mtu.into();
        }
        let j = self.nodes[i].pods.len() + 1;
        let ns = self.add_ns(&format!("n{}p{j}", i + 1));
        let container = format!("{}-n{}p{j}", self.prefix, i + 1);
        let result = rt
            .add(&container, &ns)
            .unwrap_or_else(|e| panic!("CNI ADD of a pod on node {} failed: {e}", i + 1));
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.parse::<Ipv4Net>().ok())
            .unwrap_or_else(|| panic!("CNI ADD result has no IPv4 address: {result}"))
            .addr();
        let pod = Pod { ns, ip };
        self.nodes[i].pods.push(pod.clone());
        self.nodes[i].containers.push(container);
        pod
    }

    /// Removes pod `pod` of node `i` as a runtime does: CNI DEL through the conflist in
    /// reverse, then its namespace. Returns DEL's error, if any.
    pub fn remove_pod(&mut self, i: usize, pod: &Pod) -> Result<(), String> {
        let k = self.nodes[i]
            .pods
            .iter()
            .position(|p| p.ns == pod.ns)
            .expect("no such pod");
        let rt = CniRuntime::kube_flannel(self, i);
        let container = self.nodes[i].containers[k].clone();
        rt.del(&container, &pod.ns)?;
        self.nodes[i].pods.remove(k);
        self.nodes[i].containers.remove(k);
        kill_ns_processes(&pod.ns);
        let _ = run(&["ip", "netns", "del", &pod.ns]);
        self.namespaces.retain(|n| n != &pod.ns);
        Ok(())
    }

    /// GET `path` from node `i`'s healthz port, from inside its namespace.
    pub fn http(&self, i: usize, path: &str) -> Option<String> {
        let code = format!(
            "import urllib.request,sys\ntry:\n  sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{}{path}', timeout=2).read().decode())\nexcept Exception as e:\n  sys.exit(1)",
            self.nodes[i].healthz
        );
        let o = ns_run(&self.nodes[i].ns, &["python3", "-c", &code]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Node `i`'s metrics, as `name{labels}` -> value.
    pub fn metrics(&self, i: usize) -> HashMap<String, u64> {
        let text = self.http(i, "/metrics").expect("no /metrics");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            })
            .collect()
    }

    /// The subnets in node `i`'s forwarding table.
    pub fn table(&self, i: usize) -> Vec<Ipv4Net> {
        let text = self.http(i, "/leases").unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// Waits until every weft node's table lists exactly the leases in the directory.
    pub fn wait_converged(&self) {
        let want: Vec<Ipv4Net> = self.leases().iter().map(|l| l.subnet).collect();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.kind == Kind::Weft && n.child.is_some() {
                wait_for(
                    &format!("node {} to see leases {want:?}", i + 1),
                    Duration::from_secs(10),
                    || (self.table(i) == want).then_some(()),
                );
            }
        }
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

    /// Sets node `i` up as "stock flannel": a kernel vxlan `flannel.1` configured as
    /// flanneld configures it, its lease (`subnet`) written as flanneld writes it, cni0.
    pub fn start_kernel_node(&mut self, i: usize, subnet: Ipv4Net) {
        let n = &self.nodes[i];
        let mac = MacAddr([0x0e, 0, 0, 0, n.ip.octets()[3], 1]);
        let lease = Lease {
            subnet,
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(
                n.ip,
                VxlanBackendData {
                    vni: 1,
                    vtep_mac: mac,
                },
            ),
            expiration: Some(SystemTime::now() + Duration::from_secs(86400)),
        };
        self.put_lease(&lease);
        let ns = self.nodes[i].ns.clone();
        let n = &self.nodes[i];
        let ip = n.ip.to_string();
        sh(&[
            "ip",
            "-n",
            &ns,
            "link",
            "add",
            "flannel.1",
            "address",
            &mac.to_string(),
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &ip,
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "flannel.1", "mtu", "1450"]);
        // flanneld sets accept_ra=0 (an IPv6 setting: absent where IPv6 is off).
        let _ = ns_run(
            &ns,
            &["sysctl", "-qw", "net.ipv6.conf.flannel/1.accept_ra=0"],
        );
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/32", subnet.network()),
            "dev",
            "flannel.1",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "flannel.1", "up"]);
        self.publish_static(i, subnet, 1450);
    }

    /// Sets node `i` up as a host-gw node: no encapsulation, the pod subnet on cni0 at the
    /// underlay MTU, its lease recorded (BackendType host-gw) so peers can route to it.
    pub fn start_hostgw_node(&mut self, i: usize, subnet: Ipv4Net) {
        let n = &self.nodes[i];
        let lease = Lease {
            subnet,
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                backend_type: "host-gw".into(),
                ..LeaseAttrs::udp(n.ip)
            },
            expiration: Some(SystemTime::now() + Duration::from_secs(86400)),
        };
        self.put_lease(&lease);
        self.publish_static(i, subnet, 1500);
    }

    /// For a node without weft: its subnet.env and flanneld's masquerading and FORWARD rules,
    /// as flanneld run with `--ip-masq` (kube-flannel.yml) writes and installs them, so its pods
    /// come up through the CNI plugin like every other node's.
    fn publish_static(&mut self, i: usize, subnet: Ipv4Net, mtu: u32) {
        let network = self.network;
        let env = SubnetEnv {
            network,
            subnet,
            mtu,
            ipmasq: true,
        };
        env.write(&self.nodes[i].subnet_file).unwrap();
        // flanneld's defaults: --ip-masq as kube-flannel.yml passes it, --random-fully
        // where iptables has it, and --iptables-forward-rules (on by default), as weft's
        // nodes install them, so every mode of the bench crosses the same netfilter rules.
        let rules = weft::masq::flannel_rules(network, subnet, true, true, true);
        iptables_restore(&self.nodes[i].ns, &weft::masq::restore_input("", &rules));
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

    /// host-gw routing on node `i`: each other lease's subnet via that node's address.
    pub fn program_hostgw_routes(&self, i: usize) {
        let ns = &self.nodes[i].ns;
        for l in self.leases() {
            if l.attrs.public_ip != self.nodes[i].ip {
                let via = l.attrs.public_ip.to_string();
                sh(&[
                    "ip",
                    "-n",
                    ns,
                    "route",
                    "replace",
                    &l.subnet.to_string(),
                    "via",
                    &via,
                ]);
            }
        }
    }

    /// Programs the kernel node `i` for every other lease, as flanneld's vxlan backend does
    /// for each remote lease: ARP entry, FDB entry, then the onlink route.
    pub fn program_kernel_peers(&self, i: usize) {
        self.program_kernel_peers_for(i, &self.leases());
    }

    /// As `program_kernel_peers`, for the leases given (a kube cluster's, read from the
    /// nodes' annotations as flanneld reads them).
    pub fn program_kernel_peers_for(&self, i: usize, leases: &[Lease]) {
        let ns = &self.nodes[i].ns;
        for l in leases.iter().cloned() {
            if l.attrs.public_ip == self.nodes[i].ip {
                continue;
            }
            let mac = l
                .attrs
                .vxlan_data()
                .expect("vxlan lease")
                .vtep_mac
                .to_string();
            let gw = l.subnet.network().to_string();
            sh(&[
                "ip",
                "-n",
                ns,
                "neigh",
                "replace",
                &gw,
                "dev",
                "flannel.1",
                "lladdr",
                &mac,
                "nud",
                "permanent",
            ]);
            sh(&[
                "bridge",
                "-n",
                ns,
                "fdb",
                "append",
                &mac,
                "dev",
                "flannel.1",
                "dst",
                &l.attrs.public_ip.to_string(),
                "self",
                "permanent",
            ]);
            sh(&[
                "ip",
                "-n",
                ns,
                "route",
                "replace",
                &l.subnet.to_string(),
                "via",
                &gw,
                "dev",
                "flannel.1",
                "onlink",
            ]);
        }
    }

    /// Builds two weft nodes and a "stock flannel" kernel vxlan node (lease `kernel_subnet`,
    /// written first, as a running flanneld would have it), a pod on each, programs the
    /// kernel node from the stored leases as flanneld does, checks that every pod pings every
    /// other, and returns 3 s iperf3 TCP from weft node `w`'s pod to the kernel node's pod and
    /// back.
    pub fn mixed_with_kernel_node(&mut self, kernel_subnet: &str, w: usize) -> (Iperf, Iperf) {
        self.add_node(Kind::Weft);
        self.add_node(Kind::Weft);
        let k = self.add_node(Kind::KernelVxlan);
        self.start_kernel_node(k, kernel_subnet.parse().unwrap());
        for i in 0..2 {
            self.start_weft(i, &[]);
            self.add_pod(i, None);
        }
        self.add_pod(k, None);
        self.wait_converged();
        // flanneld programs flannel.1 from the leases it reads: ARP, FDB, route per lease.
        self.program_kernel_peers(k);
        let failed = self.ping_all();
        assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));
        let (wp, kp) = (self.nodes[w].pods[0].clone(), self.nodes[k].pods[0].clone());
        let to_kernel = iperf3(&wp, &kp, 3, None);
        let from_kernel = iperf3(&kp, &wp, 3, None);
        assert!(to_kernel.bytes > 0.0 && from_kernel.bytes > 0.0);
        (to_kernel, from_kernel)
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
                    let o = ns_run(
                        &a.ns,
                        &["ping", "-c", "2", "-i", "0.2", "-W", "2", &b.ip.to_string()],
                    );
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

/// The weft binary next to the running example (target/<profile>/examples/x -> ../weft).
pub fn weft_next_to_exe() -> PathBuf {
    let weft = preflight::profile_dir().join("weft");
    assert!(weft.exists(), "build weft first: cargo build --release");
    weft
}

/// `iptables-restore --noflush` of `input` in namespace `ns`; it must succeed.
pub fn iptables_restore(ns: &str, input: &str) {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("cannot run iptables-restore");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    assert!(
        child.wait().unwrap().success(),
        "iptables-restore of\n{input}"
    );
}

/// A command prefix that runs the rest in a mount namespace of its own where `mount` (a
/// shell command) ran first: what a host without some file looks like to one process.
pub fn after_private_mount(mount: &str) -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!("{mount} && exec \"$0\" \"$@\""),
    ]
    .map(String::from)
    .to_vec()
}

/// The source address a UDP listener in `listener` (port 7000) sees on datagrams that
/// `sender` sends to `to`: where masquerading shows.
pub fn udp_source_seen(listener: &str, sender: &str, to: &str) -> String {
    let listen = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7000))\ns.settimeout(10)\nd,a=s.recvfrom(100)\nprint(a[0])";
    let listener = listener.to_string();
    let h = std::thread::spawn(move || ns_run(&listener, &["python3", "-c", listen]));
    std::thread::sleep(Duration::from_millis(300));
    let send = format!("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor _ in range(20):\n  s.sendto(b'x',('{to}',7000)); time.sleep(0.1)");
    ns_run(sender, &["python3", "-c", &send]);
    let o = h.join().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Prints a measured figure and appends it to `target/tmp/figures.txt`, which
/// `scripts/test` prints at the end (cargo hides a passing test's output).
pub fn figure(line: &str) {
    // scripts/test runs the suite a second time with every offload off, through weft's env.
    let off = std::env::var("WEFT_TUN_OFFLOAD").is_ok_and(|v| v == "false");
    let line = format!("{}{line}", if off { "[offloads off] " } else { "" });
    eprintln!("[figures] {line}");
    // Integration tests have CARGO_TARGET_TMPDIR; the demo example does not.
    let Some(dir) = option_env!("CARGO_TARGET_TMPDIR") else {
        return;
    };
    if let Ok(mut f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(dir).join("figures.txt"))
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}

/// The received rate of each interval of an `iperf3 -J -i 1` run, in bits per second.
pub fn iperf3_per_second(v: &serde_json::Value) -> Vec<f64> {
    v["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default()
}

/// iperf3's summary of one run.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    /// Received bits per second.
    pub bps: f64,
    /// Bytes received.
    pub bytes: f64,
    /// Retransmits (TCP) or lost percent (UDP).
    pub loss: f64,
}

/// Runs iperf3 from pod `from` to pod `to` with client `args` (plus `-J`), and returns its
/// JSON report, or why it failed.
pub fn iperf3_json(from: &Pod, to: &Pod, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &to.ns,
            "iperf3",
            "-s",
            "-1",
            "-B",
            &to.ip.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start iperf3 -s: {e}"))?;
    let ready = (0..200).any(|_| {
        let o = ns_run(&to.ns, &["ss", "-Hltn", "sport = :5201"]);
        let up = !o.stdout.is_empty();
        if !up {
            std::thread::sleep(Duration::from_millis(50));
        }
        up
    });
    let dst = to.ip.to_string();
    let mut argv = vec!["iperf3", "-c", dst.as_str(), "-J"];
    argv.extend_from_slice(args);
    let out = ready.then(|| ns_run(&from.ns, &argv));
    let _ = server.kill();
    let _ = server.wait();
    let out = out.ok_or("iperf3 server did not start")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("iperf3 {} -> {} failed: {text}", from.ip, to.ip));
    }
    serde_json::from_str(&text).map_err(|e| format!("iperf3 -J output: {e}"))
}

/// Runs iperf3 from pod `from` to pod `to` for `secs` seconds; `udp` is (bitrate, length).
pub fn iperf3(from: &Pod, to: &Pod, secs: u32, udp: Option<(&str, u32)>) -> Iperf {
    let t = secs.to_string();
    let mut args = vec!["-t".to_string(), t];
    if let Some((rate, len)) = udp {
        args.extend([
            "-u".into(),
            "-b".into(),
            rate.into(),
            "-l".into(),
            len.to_string(),
        ]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = iperf3_json(from, to, &argv).unwrap_or_else(|e| panic!("{e}"));
    Iperf::from_json(&v, udp.is_some())
}

impl Iperf {
    /// The summary of an iperf3 `-J` report.
    pub fn from_json(v: &serde_json::Value, udp: bool) -> Iperf {
        let end = &v["end"];
        if udp {
            let s = &end["sum"];
            Iperf {
                bps: s["bits_per_second"].as_f64().unwrap_or(0.0),
                bytes: s["bytes"].as_f64().unwrap_or(0.0),
                loss: s["lost_percent"].as_f64().unwrap_or(100.0),
            }
        } else {
            Iperf {
                bps: end["sum_received"]["bits_per_second"]
                    .as_f64()
                    .unwrap_or(0.0),
                bytes: end["sum_received"]["bytes"].as_f64().unwrap_or(0.0),
                loss: end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
            }
        }
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

/// A tcpdump capture inside a namespace, written to a pcap file.
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i dev -w file filter` in `ns`, keeping the first 192 bytes of each
    /// frame (the headers: whole frames of an iperf3 run are more than tcpdump can write),
    /// in immediate mode (so a few sparse packets are written before the capture stops),
    /// and waits until it is listening.
    pub fn start(ns: &str, dev: &str, filter: &str, file: &Path) -> Capture {
        Capture::start_with(ns, dev, filter, file, 192, None)
    }

    /// [`start`](Self::start) keeping `snaplen` bytes of each frame (0: all of it) and
    /// stopping by itself after `count` frames, if given.
    pub fn start_with(
        ns: &str,
        dev: &str,
        filter: &str,
        file: &Path,
        snaplen: u32,
        count: Option<u32>,
    ) -> Capture {
        assert!(
            run(&["sh", "-c", "command -v tcpdump"]).status.success(),
            "tcpdump is not installed: run ./scripts/test, which installs it"
        );
        let log = file.with_extension("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-i",
                dev,
                "-U",
                "--immediate-mode",
                "-n",
                "-s",
                &snaplen.to_string(),
                "-Z",
                "root",
            ])
            .args(
                count
                    .map(|n| vec!["-c".to_string(), n.to_string()])
                    .unwrap_or_default(),
            )
            .arg("-w")
            .arg(file)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start tcpdump");
        wait_for("tcpdump to listen", Duration::from_secs(10), || {
            fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("listening on"))
        });
        Capture {
            child,
            file: file.to_path_buf(),
        }
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and returns the captured frames.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        let _ = run(&["kill", "-INT", &self.child.id().to_string()]);
        if wait_for_exit(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        read_pcap(&fs::read(&self.file).expect("no capture file"))
    }
}

/// The frames of a classic little-endian pcap file (what tcpdump -w writes here).
pub fn read_pcap(data: &[u8]) -> Vec<Vec<u8>> {
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    assert!(data.len() >= 24, "pcap file too short");
    assert!(
        matches!(u32_at(0), 0xa1b2_c3d4 | 0xa1b2_3c4d),
        "not a little-endian pcap file"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32_at(at + 8) as usize;
        let end = (at + 16 + len).min(data.len());
        frames.push(data[at + 16..end].to_vec());
        at += 16 + len;
    }
    frames
}

/// The conflist kube-flannel.yml ships (flannel's Documentation/kube-flannel.yml,
/// `cni-conf.json`), byte for byte.
pub const KUBE_FLANNEL_CONFLIST: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

/// A container runtime's side of CNI, as containerd or CRI-O runs a conflist: every plugin
/// in order, each given the previous one's result as `prevResult`; DEL in reverse order.
/// Plugins run inside the node's namespace with the `CNI_*` variables the spec defines.
pub struct CniRuntime {
    /// The network configuration list.
    pub conflist: serde_json::Value,
    /// `CNI_PATH`.
    pub path: String,
    /// The node's namespace.
    pub node_ns: String,
}

impl CniRuntime {
    /// kube-flannel.yml's conflist for node `i` of `c`, with `weft-cni` installed as the
    /// `flannel` plugin beside Debian's plugins. One host plays several nodes here, so the
    /// flannel plugin gets flannel's own `subnetFile` and `dataDir` keys, and host-local its
    /// `dataDir`, per node; everything else is the manifest's.
    pub fn kube_flannel(c: &Cluster, i: usize) -> CniRuntime {
        let node_dir = c.dir.join(format!("n{}", i + 1));
        let bin = node_dir.join("cni-bin");
        fs::create_dir_all(&bin).unwrap();
        let cni = c.weft.with_file_name("weft-cni");
        assert!(
            cni.exists(),
            "{} is missing: build with --all-targets",
            cni.display()
        );
        let link = bin.join("flannel");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&cni, &link).unwrap();
        let mut conflist: serde_json::Value = serde_json::from_str(KUBE_FLANNEL_CONFLIST).unwrap();
        let flannel = &mut conflist["plugins"][0];
        flannel["subnetFile"] = c.nodes[i].subnet_file.display().to_string().into();
        flannel["dataDir"] = node_dir.join("cni-flannel").display().to_string().into();
        flannel["ipam"] =
            serde_json::json!({"dataDir": node_dir.join("ipam").display().to_string()});
        CniRuntime {
            conflist,
            path: format!("{}:/usr/lib/cni", bin.display()),
            node_ns: c.nodes[i].ns.clone(),
        }
    }

    /// Runs one plugin: returns its stdout, or (exit failed) its stdout and stderr.
    pub fn exec(
        &self,
        plugin: &str,
        command: &str,
        container: &str,
        pod_ns: &str,
        conf: &serde_json::Value,
    ) -> Result<String, String> {
        let netns = format!("/var/run/netns/{pod_ns}");
        self.exec_as(plugin, command, [container, &netns, "eth0"], conf)
    }

    /// Runs one plugin with CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME set to `attachment`
    /// (libcni sets all three empty for GC and STATUS).
    fn exec_as(
        &self,
        plugin: &str,
        command: &str,
        attachment: [&str; 3],
        conf: &serde_json::Value,
    ) -> Result<String, String> {
        let [container, netns, ifname] = attachment;
        let exe = self
            .path
            .split(':')
            .map(|d| Path::new(d).join(plugin))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {plugin} not on {}", self.path));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns])
            .arg(&exe)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run a CNI plugin");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            Ok(out)
        } else {
            Err(format!("{out}{}", String::from_utf8_lossy(&o.stderr)))
        }
    }

    fn plugin_conf(&self, k: usize, prev: Option<&serde_json::Value>) -> serde_json::Value {
        let mut conf = self.conflist["plugins"][k].clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn plugins(&self) -> usize {
        self.conflist["plugins"].as_array().map_or(0, Vec::len)
    }

    /// ADD through the whole list; the last plugin's result.
    pub fn add(&self, container: &str, pod_ns: &str) -> Result<serde_json::Value, String> {
        let mut prev: Option<serde_json::Value> = None;
        for k in 0..self.plugins() {
            let conf = self.plugin_conf(k, prev.as_ref());
            let plugin = conf["type"].as_str().unwrap().to_string();
            let out = self.exec(&plugin, "ADD", container, pod_ns, &conf)?;
            prev = Some(
                serde_json::from_str(&out)
                    .map_err(|e| format!("{plugin} ADD result: {e}: {out}"))?,
            );
        }
        prev.ok_or_else(|| "empty plugin list".into())
    }

    /// libcni's `GetStatusNetworkList`: nothing for a list below 1.1.0; else STATUS to each
    /// plugin in order, the first error returned.
    pub fn status(&self) -> Result<(), String> {
        let version = self.conflist["cniVersion"].as_str().unwrap_or("");
        if !weft::cni::at_least(version, "1.1.0") {
            return Ok(());
        }
        for k in 0..self.plugins() {
            let conf = self.plugin_conf(k, None);
            let plugin = conf["type"].as_str().unwrap().to_string();
            self.exec_as(&plugin, "STATUS", ["", "", ""], &conf)?;
        }
        Ok(())
    }

    /// libcni's `GCNetworkList`: DEL through the list for each attachment the runtime has
    /// cached (container, pod namespace) that is not `valid`; then, for a 1.1.0 list, GC to
    /// every plugin with the valid attachments injected under both of libcni's keys. Every
    /// error is kept.
    pub fn gc(&self, valid: &[&str], cached: &[(&str, &str)]) -> Result<(), String> {
        let mut errors = Vec::new();
        for (container, pod_ns) in cached.iter().filter(|(c, _)| !valid.contains(c)) {
            if let Err(e) = self.del(container, pod_ns) {
                errors.push(e);
            }
        }
        let version = self.conflist["cniVersion"].as_str().unwrap_or("");
        if weft::cni::at_least(version, "1.1.0") {
            let attachments: Vec<serde_json::Value> = valid
                .iter()
                .map(|c| serde_json::json!({"containerID": c, "ifname": "eth0"}))
                .collect();
            for k in 0..self.plugins() {
                let mut conf = self.plugin_conf(k, None);
                conf["cni.dev/valid-attachments"] = attachments.clone().into();
                conf["cni.dev/attachments"] = attachments.clone().into();
                let plugin = conf["type"].as_str().unwrap().to_string();
                if let Err(e) = self.exec_as(&plugin, "GC", ["", "", ""], &conf) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    /// DEL through the list in reverse (cniVersion 0.3.1 passes no prevResult to DEL).
    pub fn del(&self, container: &str, pod_ns: &str) -> Result<(), String> {
        for k in (0..self.plugins()).rev() {
            let conf = self.plugin_conf(k, None);
            let plugin = conf["type"].as_str().unwrap().to_string();
            self.exec(&plugin, "DEL", container, pod_ns, &conf)?;
        }
        Ok(())
    }
}
