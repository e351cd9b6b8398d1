//! Nodes without weft, set up as stock flannel sets them up: kernel vxlan `flannel.1`,
//! host-gw routes and flannel's own udp proxy, their leases and subnet.env written as
//! flanneld writes them.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use weft::lease::{Lease, LeaseAttrs, VxlanBackendData};
use weft::subnet_env::SubnetEnv;
use weft::wire::MacAddr;

use super::cluster::{Cluster, Kind};
use super::command::{ip, iptables_restore, run, sh, try_in_ns, wait_for, words};
use super::traffic::{iperf3, Iperf};

/// flannel's udp pod MTU on a 1500-byte underlay (`encapOverhead = 28`).
pub const FLANNEL_UDP_MTU: u32 = 1500 - 28;

/// The lease flanneld's udp backend stores for a node at `ip`, as flannel's source writes
/// it (`udp_amd64.go` acquires with `LeaseAttrs{PublicIP}`, the rest is omitempty): no
/// BackendType, no BackendData.
pub fn flanneld_udp_lease(ip: Ipv4Addr) -> String {
    format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null}}"#)
}

/// flannel's udp proxy and its driver (`driver.c`, `upstream/proxy_amd64.c`):
/// `WEFT_FLANNEL_UDP_SRC`, else `../shared/flannel-udp` beside the checkout.
fn flannel_udp_src() -> PathBuf {
    std::env::var_os("WEFT_FLANNEL_UDP_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/flannel-udp"))
}

/// Builds flannel's proxy with its driver into `dir` (`dir/flannel-udp`), as its README
/// says: `gcc -O2 -pthread -I upstream -o flannel-udp driver.c upstream/proxy_amd64.c`.
pub fn build_flannel_udp(dir: &Path) -> PathBuf {
    let src = flannel_udp_src();
    assert!(
        src.join("driver.c").exists(),
        "flannel's udp proxy is not at {} (set WEFT_FLANNEL_UDP_SRC to its directory)",
        src.display()
    );
    let bin = dir.join("flannel-udp");
    let o = Command::new("gcc")
        .args(["-O2", "-pthread", "-I"])
        .arg(src.join("upstream"))
        .arg("-o")
        .arg(&bin)
        .arg(src.join("driver.c"))
        .arg(src.join("upstream/proxy_amd64.c"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc (apt-get install gcc): {e}"));
    assert!(
        o.status.success(),
        "gcc could not build flannel's udp proxy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    bin
}

impl Cluster {
    /// Sets node `i` up as "stock flannel": a kernel vxlan `flannel.1` configured as
    /// flanneld configures it, its lease (`subnet`) written as flanneld writes it, cni0.
    pub fn start_kernel_node(&mut self, i: usize, subnet: Ipv4Net) {
        let n = &self.nodes[i];
        let mac = MacAddr([0x0e, 0, 0, 0, n.ip.octets()[3], 1]);
        let lease = Lease {
            subnet: Some(subnet),
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
        let (ns, local) = (self.nodes[i].ns.clone(), self.nodes[i].ip);
        ip(
            &ns,
            &format!(
                "link add flannel.1 address {mac} type vxlan id 1 local {local} dev eth0 dstport 8472 nolearning"
            ),
        );
        ip(&ns, "link set flannel.1 mtu 1450");
        // flanneld sets accept_ra=0 (an IPv6 setting: absent where IPv6 is off).
        let _ = try_in_ns(&ns, "sysctl -qw net.ipv6.conf.flannel/1.accept_ra=0");
        ip(
            &ns,
            &format!("addr add {}/32 dev flannel.1", subnet.network()),
        );
        ip(&ns, "link set flannel.1 up");
        self.publish_static(i, subnet, 1450);
    }

    /// Sets node `i` up as a host-gw node: no encapsulation, the pod subnet on cni0 at the
    /// underlay MTU, its lease recorded (BackendType host-gw) so peers can route to it.
    pub fn start_hostgw_node(&mut self, i: usize, subnet: Ipv4Net) {
        let n = &self.nodes[i];
        let lease = Lease {
            subnet: Some(subnet),
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

    /// Sets node `i` up as a stock flanneld udp node: its lease (`subnet`) as flanneld
    /// writes it, flannel's own proxy (built here from its C source) on `flannel0`,
    /// configured as flanneld's `configureIface` configures it (the lease IP /32, MTU
    /// underlay − 28, up, a route for the whole network), and cni0. It forwards to no one
    /// until [`program_flannel_udp_peers`](Self::program_flannel_udp_peers).
    pub fn start_flannel_udp_node(&mut self, i: usize, subnet: Ipv4Net) {
        let (ns, at) = (self.nodes[i].ns.clone(), self.nodes[i].ip);
        let attrs = LeaseAttrs::from_json(&flanneld_udp_lease(at)).unwrap();
        self.put_lease(&Lease {
            subnet: Some(subnet),
            ipv6_subnet: None,
            attrs,
            expiration: Some(SystemTime::now() + Duration::from_secs(86400)),
        });
        let bin = build_flannel_udp(&self.dir);
        let routes = self.flannel_routes(i);
        fs::write(&routes, "").unwrap();
        let log = self.nodes[i].log.clone();
        let out = fs::File::create(&log).unwrap();
        let (lease_ip, mtu) = (subnet.network().to_string(), FLANNEL_UDP_MTU.to_string());
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&bin)
            .args(["-a", &at.to_string(), "-s", &lease_ip, "-m", &mtu])
            .args(["-t", "flannel0", "-f"])
            .arg(&routes)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cannot start flannel's udp proxy");
        // `ip netns exec` execs the driver: the child is it (stop_weft's SIGTERM stops it).
        self.nodes[i].child = Some(child);
        let logged = |what: &str| fs::read_to_string(&log).unwrap_or_default().contains(what);
        wait_for(
            "flannel's proxy to open flannel0",
            Duration::from_secs(10),
            || logged("tun flannel0").then_some(()),
        );
        ip(&ns, &format!("addr add {lease_ip}/32 dev flannel0"));
        ip(&ns, &format!("link set flannel0 mtu {mtu} up"));
        ip(&ns, &format!("route add {} dev flannel0", self.network));
        wait_for("flannel's proxy to run", Duration::from_secs(10), || {
            logged("ready").then_some(())
        });
        self.publish_static(i, subnet, FLANNEL_UDP_MTU);
    }

    /// Programs flannel's proxy on node `i` for every other lease, as flanneld's udp
    /// backend does on each lease event (`setRoute`: subnet via public IP, port 8285): the
    /// driver's route file, then SIGHUP; waits until the proxy has every route.
    pub fn program_flannel_udp_peers(&self, i: usize) {
        let n = &self.nodes[i];
        let peers: Vec<Lease> = self
            .leases()
            .into_iter()
            .filter(|l| l.attrs.public_ip != n.ip)
            .collect();
        let lines: String = peers
            .iter()
            .map(|l| {
                format!(
                    "{} {}\n",
                    l.subnet.expect("an IPv4 lease"),
                    l.attrs.public_ip
                )
            })
            .collect();
        fs::write(self.flannel_routes(i), lines).unwrap();
        let pid = n.child.as_ref().expect("flannel's proxy runs").id();
        run(&["kill", "-HUP", &pid.to_string()]);
        wait_for(
            "flannel's proxy to take its routes",
            Duration::from_secs(10),
            || {
                let log = fs::read_to_string(&n.log).unwrap_or_default();
                peers
                    .iter()
                    .all(|l| {
                        log.contains(&format!(
                            "set route {} via",
                            l.subnet.expect("an IPv4 lease")
                        ))
                    })
                    .then_some(())
            },
        );
    }

    /// The route file of flannel's proxy on node `i`.
    fn flannel_routes(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}-flannel-routes", i + 1))
    }

    /// For a node without weft: its subnet.env and flanneld's masquerading and FORWARD rules,
    /// as flanneld run with `--ip-masq` (kube-flannel.yml) writes and installs them, so its pods
    /// come up through the CNI plugin like every other node's.
    pub fn publish_static(&mut self, i: usize, subnet: Ipv4Net, mtu: u32) {
        let network = self.network;
        let env = SubnetEnv {
            network: Some(network),
            subnet: Some(subnet),
            ipv6_network: None,
            ipv6_subnet: None,
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

    /// host-gw routing on node `i`: each other lease's subnet via that node's address.
    pub fn program_hostgw_routes(&self, i: usize) {
        let ns = &self.nodes[i].ns;
        for l in self.leases() {
            if l.attrs.public_ip != self.nodes[i].ip {
                let via = l.attrs.public_ip;
                ip(
                    ns,
                    &format!(
                        "route replace {} via {via}",
                        l.subnet.expect("an IPv4 lease")
                    ),
                );
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
            let mac = l.attrs.vxlan_data().expect("vxlan lease").vtep_mac;
            let (gw, dst) = (
                l.subnet.expect("an IPv4 lease").network(),
                l.attrs.public_ip,
            );
            ip(
                ns,
                &format!("neigh replace {gw} dev flannel.1 lladdr {mac} nud permanent"),
            );
            sh(&words(&format!(
                "bridge -n {ns} fdb append {mac} dev flannel.1 dst {dst} self permanent"
            )));
            ip(
                ns,
                &format!(
                    "route replace {} via {gw} dev flannel.1 onlink",
                    l.subnet.expect("an IPv4 lease")
                ),
            );
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
}
