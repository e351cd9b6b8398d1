//! Nodes set up as flanneld v0.28 sets up a dual-stack vxlan node (`flannel.1` and
//! `flannel-v6.1`, its lease in etcd in flanneld's words), and the IPv6 underlay they and
//! weft's dual-stack nodes share: 2001:db8::/64 beside 192.0.2.0/24 on the same bridge.

use std::net::Ipv6Addr;

use std::time::Duration;

use super::cluster::{Cluster, Pod};
use super::command::{ip, ns_sh, try_in_ns};
use super::etcd::ETCD_PREFIX;

/// A dual-stack vxlan net-conf.json: flanneld's example networks.
pub const DUAL_STACK_VXLAN: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// Gives node `i` its IPv6 underlay address, 2001:db8::`i+1`/64 on eth0.
pub fn v6_underlay(c: &Cluster, i: usize) -> Ipv6Addr {
    let a: Ipv6Addr = format!("2001:db8::{}", i + 1).parse().unwrap();
    ip(
        &c.nodes[i].ns,
        &format!("-6 addr add {a}/64 dev eth0 nodad"),
    );
    a
}

/// Node `k` set up as flanneld v0.28 sets up a dual-stack vxlan node: its lease in etcd as
/// flanneld writes it (key `<v4>-24&<v6>-64`, value with PublicIPv6 and BackendV6Data, the
/// format of flannel's `pkg/lease/lease.go` and `pkg/subnet/subnet.go MakeSubnetKey`),
/// `flannel.1` and `flannel-v6.1` as its `device.go` makes them, and subnet.env in
/// `WriteSubnetFile`'s words and order.
pub fn start_flanneld_dual_stack(c: &mut Cluster, k: usize, v6: Ipv6Addr) {
    let (ns, v4) = (c.nodes[k].ns.clone(), c.nodes[k].ip);
    let n = v4.octets()[3];
    let (mac, mac6) = (
        format!("0e:00:00:00:{n:02x}:01"),
        format!("0e:00:00:00:{n:02x}:06"),
    );
    let key = format!("{ETCD_PREFIX}/subnets/10.244.{n}.0-24&fd00:10:244:{n}::-64");
    let value = format!(
        r#"{{"PublicIP":"{v4}","PublicIPv6":"{v6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
    );
    let etcd = c.etcd.as_ref().expect("an etcd cluster");
    let grant = etcd.ctl(&["lease", "grant", "86400"]);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    etcd.ctl(&["put", &format!("--lease={id}"), &key, &value]);
    for (dev, m, local, addr) in [
        (
            "flannel.1",
            &mac,
            v4.to_string(),
            format!("10.244.{n}.0/32"),
        ),
        (
            "flannel-v6.1",
            &mac6,
            v6.to_string(),
            format!("fd00:10:244:{n}::/128"),
        ),
    ] {
        ip(&ns, &format!("link add {dev} address {m} mtu 1450 type vxlan id 1 local {local} dev eth0 dstport 8472 nolearning"));
        let _ = try_in_ns(
            &ns,
            &format!(
                "sysctl -qw net.ipv6.conf.{}.accept_ra=0",
                dev.replace('.', "/")
            ),
        );
        ip(&ns, &format!("addr add {addr} dev {dev}"));
        ip(&ns, &format!("link set {dev} up"));
    }
    let env = format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.{n}.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:{n}::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
    let file = c.nodes[k].subnet_file.clone();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, env).unwrap();
}

/// flanneld's vxlan programming on node `k` for every other lease in etcd, both families:
/// per peer the neighbour, the FDB entry and the onlink route on each device. The leases
/// are weft's, read raw from etcd; the v6 half parsed from flanneld's key format.
pub fn program_flanneld_peers(c: &Cluster, k: usize) {
    let ns = &c.nodes[k].ns;
    let prefix = format!("{ETCD_PREFIX}/subnets/");
    for (key, value) in c.etcd.as_ref().unwrap().get_prefix(&prefix) {
        let v: serde_json::Value = serde_json::from_str(&value).unwrap();
        if v["PublicIP"] == c.nodes[k].ip.to_string() {
            continue;
        }
        let (v4, v6) = key[prefix.len()..]
            .split_once('&')
            .expect("a dual-stack key");
        let sides = [
            (
                "flannel.1",
                v4.replace('-', "/"),
                &v["PublicIP"],
                &v["BackendData"],
            ),
            (
                "flannel-v6.1",
                v6.replace('-', "/"),
                &v["PublicIPv6"],
                &v["BackendV6Data"],
            ),
        ];
        for (dev, subnet, public, data) in sides {
            let gw = subnet.split('/').next().unwrap();
            let mac = data["VtepMAC"].as_str().expect("a VtepMAC");
            let public = public.as_str().expect("a public address");
            ip(
                ns,
                &format!("neigh replace {gw} dev {dev} lladdr {mac} nud permanent"),
            );
            ns_sh(
                ns,
                &[
                    "bridge",
                    "fdb",
                    "append",
                    mac,
                    "dev",
                    dev,
                    "dst",
                    public,
                    "self",
                    "permanent",
                ],
            );
            ip(
                ns,
                &format!("route replace {subnet} via {gw} dev {dev} onlink"),
            );
        }
    }
}

/// Bytes of a 3 s iperf3 TCP stream from `from` to `to`'s IPv6 address.
pub fn iperf3_v6(from: &Pod, to: &Pod) -> f64 {
    let to6 = to.ip6.unwrap().to_string();
    let mut server = std::process::Command::new("ip")
        .args(["netns", "exec", &to.ns, "iperf3", "-s", "-1", "-B", &to6])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let out = try_in_ns(&from.ns, &format!("iperf3 -J -t 3 -c {to6}"));
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0)
}

/// One ping from `from` to `to` (an address of either family), `size` bytes of payload
/// with don't-fragment set; whether it was answered.
pub fn pings(from: &Pod, to: &str, size: u32) -> bool {
    try_in_ns(
        &from.ns,
        &format!("ping -c 2 -i 0.2 -W 2 -M do -s {size} {to}"),
    )
    .status
    .success()
}

/// Checks that every pod reaches every other over IPv4 and IPv6, with the largest
/// don't-fragment ping that fits each family's path (`max4`, `max6` payload bytes).
pub fn assert_all_reach(c: &Cluster, max4: u32, max6: u32) {
    let pods = c.pods();
    for a in &pods {
        for b in pods.iter().filter(|b| b.ip != a.ip) {
            assert!(
                pings(a, &b.ip.to_string(), max4),
                "{} -> {} (IPv4, {max4} bytes DF)",
                a.ip,
                b.ip
            );
            let b6 = b.ip6.expect("a dual-stack pod").to_string();
            assert!(
                pings(a, &b6, max6),
                "{:?} -> {b6} (IPv6, {max6} bytes DF)",
                a.ip6
            );
        }
    }
}

/// An IPv6-only pod on node `i`, through kube-flannel.yml's conflist: its namespace and
/// IPv6 address (an IPv4 one would be a fault).
pub fn add_v6_only_pod(c: &mut Cluster, i: usize) -> (String, Ipv6Addr) {
    let rt = super::CniRuntime::kube_flannel(c, i);
    let ns = c.add_ns(&format!("n{}p6", i + 1));
    let result = rt
        .add(&format!("{}-n{}p6", c.prefix, i + 1), &ns)
        .unwrap_or_else(|e| panic!("CNI ADD on node {} failed: {e}", i + 1));
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 1, "an IPv6-only pod has one address: {result}");
    let a = ips[0]["address"].as_str().unwrap();
    let a: ipnet::Ipv6Net = a.parse().unwrap_or_else(|_| panic!("not IPv6: {result}"));
    (ns, a.addr())
}
