//! Nodes without weft, set up as stock flannel sets them up: kernel vxlan `flannel.1` and
//! host-gw routes, their leases and subnet.env written as flanneld writes them.

use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use weft::lease::{Lease, LeaseAttrs, VxlanBackendData};
use weft::subnet_env::SubnetEnv;
use weft::wire::MacAddr;

use super::cluster::{Cluster, Kind};
use super::command::{ip, iptables_restore, sh, try_in_ns, words};
use super::traffic::{iperf3, Iperf};

impl Cluster {
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

    /// host-gw routing on node `i`: each other lease's subnet via that node's address.
    pub fn program_hostgw_routes(&self, i: usize) {
        let ns = &self.nodes[i].ns;
        for l in self.leases() {
            if l.attrs.public_ip != self.nodes[i].ip {
                let via = l.attrs.public_ip;
                ip(ns, &format!("route replace {} via {via}", l.subnet));
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
            let (gw, dst) = (l.subnet.network(), l.attrs.public_ip);
            ip(
                ns,
                &format!("neigh replace {gw} dev flannel.1 lladdr {mac} nud permanent"),
            );
            sh(&words(&format!(
                "bridge -n {ns} fdb append {mac} dev flannel.1 dst {dst} self permanent"
            )));
            ip(
                ns,
                &format!("route replace {} via {gw} dev flannel.1 onlink", l.subnet),
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
