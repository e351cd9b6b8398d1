//! Dual-stack clusters on real namespaces: IPv4 and IPv6 pods, an IPv4 and an IPv6
//! underlay (192.0.2.0/24 and 2001:db8::/64 on one bridge), weft beside a node set up as
//! flanneld sets up a dual-stack vxlan node (`flannel.1` and `flannel-v6.1`, its lease in
//! etcd in flanneld's own words), and host-gw in both families. Pods get both addresses
//! from weft-cni through Debian's bridge and host-local. What weft programs is read back
//! with `ip`, never with weft. Root only, like the rest.

#[path = "harness.rs"]
mod harness;

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use harness::{
    add_v6_only_pod, assert_all_reach, ip, iperf3_v6, ns_sh, pings, program_flanneld_peers,
    start_flanneld_dual_stack, try_in_ns, v6_underlay, wait_for, weft, Capture, Cluster, Kind, Pod,
    ETCD_PREFIX,
};

const VXLAN: &str = harness::DUAL_STACK_VXLAN;
const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}"#;

/// The MTU of `dev` on node `i`.
fn mtu(c: &Cluster, i: usize, dev: &str) -> u32 {
    let j = ns_sh(&c.nodes[i].ns, &["ip", "-j", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    v[0]["mtu"].as_u64().unwrap() as u32
}

/// A weft node (node 0, on `dataplane`) and a flanneld-style dual-stack node (node 1),
/// each with a dual-stack pod, the flanneld node programmed for weft's lease. Returns
/// the cluster, the pods and weft's subnet.env.
fn weft_beside_flanneld(dataplane: &str) -> (Cluster, Pod, Pod, String) {
    let mut c = Cluster::with_etcd(weft(), VXLAN);
    let w = c.add_node(Kind::Weft);
    let k = c.add_node(Kind::KernelVxlan);
    v6_underlay(&c, w);
    let k6 = v6_underlay(&c, k);
    start_flanneld_dual_stack(&mut c, k, k6);
    let env = c.start_weft(w, &["--dataplane", dataplane]);
    let (wp, kp) = (c.add_pod(w, None), c.add_pod(k, None));
    assert!(
        wp.ip6.is_some() && kp.ip6.is_some(),
        "pods without IPv6: {wp:?} {kp:?}"
    );
    program_flanneld_peers(&c, k);
    (c, wp, kp, format!("{env:?}"))
}

/// Pings from weft's pod to the flanneld node's pod over both families, capturing weft's
/// underlay: IPv6 pods' packets must travel in outer IPv6, IPv4 pods' in outer IPv4.
fn assert_outer_families(c: &Cluster, wp: &Pod, kp: &Pod) {
    let cap = Capture::start(
        &c.nodes[0].ns,
        "eth0",
        "udp port 8472",
        &c.dir.join("dual.pcap"),
    );
    assert!(pings(wp, &kp.ip6.unwrap().to_string(), 56));
    assert!(pings(wp, &kp.ip.to_string(), 56));
    let frames = cap.stop();
    let outer6 = frames
        .iter()
        .filter(|f| f.len() > 14 && f[12..14] == [0x86, 0xdd])
        .count();
    let outer4 = frames
        .iter()
        .filter(|f| f.len() > 14 && f[12..14] == [0x08, 0x00])
        .count();
    assert!(
        outer6 >= 4 && outer4 >= 4,
        "outer IPv6 {outer6}, outer IPv4 {outer4} frames"
    );
}

#[test]
fn a_weft_userspace_node_and_a_flanneld_dual_stack_node_reach_each_other_over_v4_and_v6() {
    let (c, wp, kp, env) = weft_beside_flanneld("userspace");
    // weft's TUN holds the route for the IPv6 cluster network, beside the IPv4 one.
    let r6 = ns_sh(
        &c.nodes[0].ns,
        &["ip", "-6", "route", "show", "fd00:10:244::/56"],
    );
    assert!(r6.contains("dev weft0"), "{r6}");
    // The largest don't-fragment pings both ways: IPv4 fills FLANNEL_MTU, IPv6 the
    // flanneld node's flannel-v6.1 (1500 - 70), which weft's IPv6 budget equals.
    let m6 = mtu(&c, 1, "flannel-v6.1");
    assert_eq!(m6, 1430);
    assert_all_reach(&c, 1450 - 28, m6 - 48);
    // One byte more from weft's pod: Packet Too Big from weft with the budget, and the
    // pod's kernel learns it (never a silent drop).
    assert_packet_too_big(&wp, &kp, m6);
    assert_outer_families(&c, &wp, &kp);
    // IPv6 pods' TSO super-packets leave whole by tunnel GSO once the node forwards IPv6
    // (the bridge plugin turned it on with the first dual-stack pod), split without it.
    let offloads = std::env::var("WEFT_TUN_OFFLOAD").map_or(true, |v| v != "false");
    if offloads {
        wait_for(
            "weft to see IPv6 forwarding",
            Duration::from_secs(3),
            || {
                let log = std::fs::read_to_string(&c.nodes[0].log).unwrap_or_default();
                log.contains("IPv6 forwarding on").then_some(())
            },
        );
    }
    // The flanneld node's TSO super-packets reach weft whole over the veth: weft's TUN
    // cuts them (offloads) or weft does (without), none is dropped as too big.
    let too_big = |c: &Cluster| {
        c.metrics(0)
            .get("weft_drops_total{reason=\"too_big\"}")
            .copied()
            .unwrap_or(0)
    };
    let before = too_big(&c);
    assert!(iperf3_v6(&wp, &kp) > 0.0 && iperf3_v6(&kp, &wp) > 0.0);
    assert_eq!(too_big(&c), before, "IPv6 TCP dropped as too big");
    // Full-size UDP datagrams over IPv6 both ways (merged into UDP_L4 writes to weft's
    // TUN on the way in, where offloads are on).
    assert_udp_over_v6_both_ways(&wp, &kp);
    let whole = c.metrics(0)["weft_tunnel_gso_frames_total"];
    assert_eq!(whole > 0, offloads, "{whole} IPv6 super-packets left whole");
    // The flanneld node's lease goes: within 2 s its IPv6 pods are unreachable from
    // weft's (the lease table no longer has them; weft answers "no route").
    c.etcd.as_ref().unwrap().ctl(&["del", &flanneld_key(1)]);
    let t0 = Instant::now();
    wait_for("the IPv6 peer to go", Duration::from_secs(2), || {
        (!pings(&wp, &kp.ip6.unwrap().to_string(), 56)).then_some(())
    });
    eprintln!(
        "IPv6 peer gone {:?} after the lease; subnet.env {env}",
        t0.elapsed()
    );
}

/// Pings `kp`'s IPv6 address from `wp` one byte over the budget: refused, naming 1430.
fn assert_packet_too_big(wp: &Pod, kp: &Pod, m6: u32) {
    let out = try_in_ns(
        &wp.ns,
        &format!(
            "ping -c 3 -i 0.3 -W 1 -M do -s {} {}",
            m6 - 47,
            kp.ip6.unwrap()
        ),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success() && text.contains("1430"), "{text}");
}

/// Full-size UDP datagrams over IPv6 from `wp` to `kp` and back: some arrive each way.
fn assert_udp_over_v6_both_ways(wp: &Pod, kp: &Pod) {
    for (from, to) in [(wp, kp), (kp, wp)] {
        let args = ["-t", "1", "-u", "-b", "100M", "-l", "1380"];
        let v = harness::iperf3_json_family(from, to, true, &args).unwrap();
        let got = v["end"]["sum"]["bytes"].as_f64().unwrap_or(0.0);
        let lost = v["end"]["sum"]["lost_percent"].as_f64().unwrap_or(100.0);
        assert!(
            got > 0.0 && lost < 100.0,
            "UDP over IPv6: {}",
            v["end"]["sum"]
        );
    }
}

/// The etcd key of the flanneld node `k`'s dual-stack lease.
fn flanneld_key(k: usize) -> String {
    format!(
        "{ETCD_PREFIX}/subnets/10.244.{0}.0-24&fd00:10:244:{0}::-64",
        k + 1
    )
}

#[test]
fn a_weft_kernel_node_and_a_flanneld_dual_stack_node_reach_each_other_over_v4_and_v6() {
    let (c, wp, kp, env) = weft_beside_flanneld("kernel");
    let (w, k) = (0, 1);
    // weft's devices, read back with ip: flannel-v6.1 as flanneld makes it.
    let d = ns_sh(
        &c.nodes[w].ns,
        &["ip", "-d", "link", "show", "flannel-v6.1"],
    );
    assert!(
        d.contains("vxlan id 1 local 2001:db8::1") && d.contains("dstport 8472"),
        "{d}"
    );
    let r6 = ns_sh(
        &c.nodes[w].ns,
        &[
            "ip",
            "-6",
            "route",
            "show",
            &format!("fd00:10:244:{}::/64", k + 1),
        ],
    );
    assert!(
        r6.contains("dev flannel-v6.1") && r6.contains("onlink") && r6.contains("proto 87"),
        "{r6}"
    );
    // The largest don't-fragment pings: IPv4 fills FLANNEL_MTU (1450 - 28), IPv6 the
    // kernel's IPv6 device (1500 - 70 - 48), on both nodes alike.
    let m6 = mtu(&c, w, "flannel-v6.1");
    assert_eq!(
        m6,
        mtu(&c, k, "flannel-v6.1"),
        "weft's flannel-v6.1 MTU is the kernel's"
    );
    assert_all_reach(&c, 1450 - 28, m6 - 48);
    assert_outer_families(&c, &wp, &kp);
    // TCP both ways over IPv6.
    assert!(iperf3_v6(&wp, &kp) > 0.0 && iperf3_v6(&kp, &wp) > 0.0);
    // The flanneld node's lease goes: its IPv6 route goes within 2 s.
    let t0 = Instant::now();
    c.etcd.as_ref().unwrap().ctl(&["del", &flanneld_key(k)]);
    wait_for("the IPv6 route to go", Duration::from_secs(2), || {
        let r = ns_sh(
            &c.nodes[w].ns,
            &["ip", "-6", "route", "show", "proto", "87"],
        );
        (!r.contains(&format!("fd00:10:244:{}::", k + 1))).then_some(())
    });
    eprintln!(
        "IPv6 route removed {:?} after the lease; subnet.env {env:?}",
        t0.elapsed()
    );
}

#[test]
fn host_gw_routes_both_families_between_weft_nodes() {
    let mut c = Cluster::new(weft(), HOST_GW);
    for _ in 0..2 {
        let i = c.add_node(Kind::Weft);
        v6_underlay(&c, i);
    }
    for i in 0..2 {
        c.start_weft(i, &[]);
        c.add_pod(i, None);
    }
    c.wait_converged();
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(
        env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:"),
        "{env}"
    );
    let peer6 = c.nodes[1].pods[0].ip6.expect("a dual-stack pod");
    let sub6 = format!(
        "{}/64",
        Ipv6Addr::from(u128::from(peer6) & !0xffff_ffff_ffff_ffff)
    );
    let r = wait_for(
        "node 1's IPv6 route to node 2",
        Duration::from_secs(10),
        || {
            let r = ns_sh(&c.nodes[0].ns, &["ip", "-6", "route", "show", &sub6]);
            (!r.trim().is_empty()).then_some(r)
        },
    );
    assert!(
        r.contains("via 2001:db8::2 dev eth0") && r.contains("proto 87"),
        "{r}"
    );
    assert_all_reach(&c, 1500 - 28, 1500 - 48);
    // flanneld's --ip-blackhole-route, for each family's subnet. (Last: in IPv4 a
    // blackhole for the node's subnet shadows cni0's connected route of the same length,
    // for flanneld's route as for weft's; in IPv6 its metric 1024 loses to cni0's 256.)
    assert!(c.stop_weft(0));
    c.start_weft(0, &["--ip-blackhole-route"]);
    let bh = ns_sh(
        &c.nodes[0].ns,
        &["ip", "-6", "route", "show", "type", "blackhole"],
    );
    assert!(
        bh.contains("fd00:10:244:"),
        "no IPv6 blackhole route: {bh:?}"
    );
    let to = c.nodes[0].pods[0].ip6.unwrap().to_string();
    assert!(pings(&c.nodes[1].pods[0], &to, 56));
}

#[test]
fn kernel_vxlan_direct_routing_routes_both_families_on_the_underlay() {
    let conf = VXLAN.replace(
        r#""Type":"vxlan""#,
        r#""Type":"vxlan","DirectRouting":true"#,
    );
    let mut c = Cluster::new(weft(), &conf);
    for _ in 0..2 {
        let i = c.add_node(Kind::Weft);
        v6_underlay(&c, i);
    }
    for i in 0..2 {
        c.start_weft(i, &["--dataplane", "kernel"]);
        c.add_pod(i, None);
    }
    c.wait_converged();
    // Both peers share the underlay: plain routes via the peer's address in each family,
    // out of eth0, not through the vxlan devices.
    let peer6 = c.nodes[1].pods[0].ip6.expect("a dual-stack pod");
    let sub6 = format!(
        "{}/64",
        Ipv6Addr::from(u128::from(peer6) & !0xffff_ffff_ffff_ffff)
    );
    let r6 = wait_for(
        "node 1's direct IPv6 route",
        Duration::from_secs(10),
        || {
            let r = ns_sh(&c.nodes[0].ns, &["ip", "-6", "route", "show", &sub6]);
            r.contains("via 2001:db8::2 dev eth0").then_some(r)
        },
    );
    assert!(r6.contains("proto 87"), "{r6}");
    let r4 = ns_sh(&c.nodes[0].ns, &["ip", "route", "show", "proto", "87"]);
    assert!(r4.contains("via 192.0.2.2 dev eth0"), "{r4}");
    assert_all_reach(&c, 1450 - 28, 1450 - 48);
}

/// Registers node `i` (n<i+1>) with podCIDRs 10.244.<i+1>.0/24 and fd00:10:244:<i+1>::/64, as
/// kube-controller-manager assigns a dual-stack node's, and starts weft there as flanneld's
/// kube subnet manager on the kernel dataplane. With `stored`, the node also gets the
/// second addresses 192.0.2.12<i+1> and 2001:db8::12<i+1> on its underlay, named by
/// flanneld's `node-public-ip` and `node-public-ipv6` annotations, as an operator sets them.
fn kube_dual_stack_node(c: &mut Cluster, url: &str, conf: &str, stored: bool) -> usize {
    let i = c.add_node(Kind::Weft);
    v6_underlay(c, i);
    let name = format!("n{}", i + 1);
    let (v4, v6) = (
        format!("10.244.{}.0/24", i + 1),
        format!("fd00:10:244:{}::/64", i + 1),
    );
    let mut meta = serde_json::json!({ "name": name });
    if stored {
        let (a4, a6) = (
            format!("192.0.2.12{}", i + 1),
            format!("2001:db8::12{}", i + 1),
        );
        ip(&c.nodes[i].ns, &format!("addr add {a4}/24 dev eth0"));
        ip(
            &c.nodes[i].ns,
            &format!("-6 addr add {a6}/64 dev eth0 nodad"),
        );
        meta["annotations"] = serde_json::json!({
            "flannel.alpha.coreos.com/node-public-ip": a4,
            "flannel.alpha.coreos.com/node-public-ipv6": a6,
        });
    }
    let node = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": meta,
        "spec": {"podCIDR": v4, "podCIDRs": [v4, v6]}});
    let (code, _) = c.kube("POST", "/api/v1/nodes", "application/json", &node);
    assert_eq!(code, 201);
    start_kube_weft(c, i, &name, (url, conf), "kernel");
    i
}

/// Starts weft on node `i` (Node `name`) as flanneld's kube subnet manager, with the API
/// at `url` and the net-conf.json at `conf`, on `dataplane`.
fn start_kube_weft(
    c: &mut Cluster,
    i: usize,
    name: &str,
    (url, conf): (&str, &str),
    dataplane: &str,
) {
    let args = [
        "--kube-subnet-mgr",
        "--kube-api-url",
        url,
        "--net-config-path",
        conf,
        "--dataplane",
        dataplane,
    ];
    c.start_weft_env(i, &args, &[("NODE_NAME", name)]);
}

#[test]
fn a_dual_stack_kube_cluster_takes_both_pod_cidrs_and_writes_flanneds_v6_annotations() {
    let mut c = Cluster::new(weft(), VXLAN);
    let (url, conf) = c.start_kube_api_with(VXLAN);
    let conf = conf.display().to_string();
    for k in 0..2 {
        // Node 2's operator chose its public addresses by annotation.
        let i = kube_dual_stack_node(&mut c, &url, &conf, k == 1);
        c.add_pod(i, None);
    }
    // The podCIDRs, by family, are the leases: subnet.env says so.
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(env.contains("FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"), "{env}");
    // flanneld's IPv6 annotations, beside the IPv4 ones.
    let (code, node) = c.kube("GET", "/api/v1/nodes/n1", "", &serde_json::Value::Null);
    assert_eq!(code, 200);
    let a = &node["metadata"]["annotations"];
    assert_eq!(
        a["flannel.alpha.coreos.com/public-ipv6"], "2001:db8::1",
        "{a}"
    );
    let v6data: serde_json::Value = serde_json::from_str(
        a["flannel.alpha.coreos.com/backend-v6-data"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v6data["VNI"], 1, "{a}");
    let mac6 = v6data["VtepMAC"].as_str().unwrap().to_string();
    // Node 2 advertises the addresses its node-public-ip(v6) annotations name, in place of
    // its interface's first ones, as flanneld's GetStoredPublicIP makes it.
    let (code, n2) = c.kube("GET", "/api/v1/nodes/n2", "", &serde_json::Value::Null);
    assert_eq!(code, 200);
    let a2 = &n2["metadata"]["annotations"];
    assert_eq!(
        a2["flannel.alpha.coreos.com/public-ip"], "192.0.2.122",
        "{a2}"
    );
    assert_eq!(
        a2["flannel.alpha.coreos.com/public-ipv6"], "2001:db8::122",
        "{a2}"
    );
    // ... and the IPv6 device carries that MAC.
    let d = ns_sh(&c.nodes[0].ns, &["ip", "link", "show", "flannel-v6.1"]);
    assert!(d.contains(&mac6), "{mac6} not on {d}");
    wait_v6_route(&c, 0, "fd00:10:244:2::/64", "dev flannel-v6.1");
    assert_all_reach(&c, 1450 - 28, mtu(&c, 0, "flannel-v6.1") - 48);
}

/// Waits until node `i`'s route to `subnet` (`ip -6 route show`) contains `want`.
fn wait_v6_route(c: &Cluster, i: usize, subnet: &str, want: &str) {
    wait_for(
        &format!("node {}'s route to {subnet}", i + 1),
        Duration::from_secs(10),
        || {
            let r = ns_sh(&c.nodes[i].ns, &["ip", "-6", "route", "show", subnet]);
            r.contains(want).then_some(())
        },
    );
}

/// An IPv6-only vxlan network, flanneld's `EnableIPv4: false`.
const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// Registers node `i` with the API stand-in as kube-controller-manager registers an
/// IPv6-only node (its IPv6 podCIDR alone, fd00:10:244:`i+1`::/64), with `annotations`.
fn register_v6_only(c: &Cluster, i: usize, annotations: serde_json::Value) -> String {
    let name = format!("n{}", i + 1);
    let cidr = format!("fd00:10:244:{}::/64", i + 1);
    let node = serde_json::json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    let (code, _) = c.kube("POST", "/api/v1/nodes", "application/json", &node);
    assert_eq!(code, 201);
    name
}

/// Node `k` set up as flanneld v0.28 sets up an IPv6-only vxlan node on the kube store
/// (pkg/backend/vxlan with EnableIPv4 false): `flannel-v6.1` alone (local = its IPv6
/// address, its subnet's first address as a /128), its Node annotated as `AcquireLease`
/// annotates it then (backend-type, kube-subnet-manager, backend-v6-data and public-ipv6:
/// no public-ip and no backend-data, its IPv4 BackendData being nil), and subnet.env
/// without the IPv4 pair, as `WriteSubnetFile` writes it.
fn flanneld_v6_only_kube_node(c: &mut Cluster, k: usize, v6: Ipv6Addr) {
    let n = k + 1;
    let mac6 = format!("0e:00:00:00:{n:02x}:06");
    register_v6_only(
        c,
        k,
        serde_json::json!({
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/backend-v6-data": format!(r#"{{"VNI":1,"VtepMAC":"{mac6}"}}"#),
            "flannel.alpha.coreos.com/public-ipv6": v6.to_string(),
        }),
    );
    flanneld_v6_only_device(c, k, v6, &mac6);
}

/// flanneld's vxlan programming on node `k` for every other node in the API, IPv6 only:
/// per peer the neighbour, the FDB entry and the onlink route on `flannel-v6.1`, from the
/// node's IPv6 podCIDR and the `public-ipv6` and `backend-v6-data` weft wrote.
fn program_flanneld_v6_peers(c: &Cluster, k: usize) {
    let ns = &c.nodes[k].ns;
    let (code, list) = c.kube("GET", "/api/v1/nodes", "", &serde_json::Value::Null);
    assert_eq!(code, 200);
    for node in list["items"].as_array().unwrap() {
        if node["metadata"]["name"] == format!("n{}", k + 1) {
            continue;
        }
        let a = &node["metadata"]["annotations"];
        let subnet = node["spec"]["podCIDRs"][0].as_str().unwrap();
        let public = a["flannel.alpha.coreos.com/public-ipv6"].as_str().unwrap();
        let data = a["flannel.alpha.coreos.com/backend-v6-data"]
            .as_str()
            .unwrap();
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        let mac = data["VtepMAC"].as_str().unwrap();
        program_flanneld_v6_peer(ns, subnet, mac, public);
    }
}

/// A weft node of an IPv6-only kube cluster on `dataplane`, started as flanneld's kube
/// subnet manager, its Node registered without annotations.
fn weft_v6_only_kube_node(c: &mut Cluster, url: &str, conf: &str, dataplane: &str) -> usize {
    let i = c.add_node(Kind::Weft);
    v6_underlay(c, i);
    let name = register_v6_only(c, i, serde_json::json!({}));
    start_kube_weft(c, i, &name, (url, conf), dataplane);
    i
}

/// What weft wrote for an IPv6-only node: subnet.env without the IPv4 pair, and flanneld's
/// IPv6-only annotations (no public-ip, no backend-data).
fn assert_v6_only_node_as_flanneld(c: &Cluster, i: usize) {
    let env = std::fs::read_to_string(&c.nodes[i].subnet_file).unwrap();
    let want = format!("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:{}::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", i + 1);
    assert_eq!(env, want);
    let path = format!("/api/v1/nodes/n{}", i + 1);
    let (code, node) = c.kube("GET", &path, "", &serde_json::Value::Null);
    assert_eq!(code, 200);
    let a = &node["metadata"]["annotations"];
    let key = |k: &str| format!("flannel.alpha.coreos.com/{k}");
    assert_eq!(a[key("public-ipv6")], format!("2001:db8::{}", i + 1), "{a}");
    assert_eq!(a[key("backend-type")], "vxlan", "{a}");
    assert!(
        a[key("backend-v6-data")]
            .as_str()
            .unwrap()
            .contains("VtepMAC"),
        "{a}"
    );
    assert!(
        a.get(key("public-ip")).is_none() && a.get(key("backend-data")).is_none(),
        "{a}"
    );
}

#[test]
fn an_ipv6_only_kube_cluster_runs_weft_beside_a_flanneld_node() {
    // The cluster's own (file store) config is not the kube nodes': theirs is `conf`.
    let mut c = Cluster::new(weft(), VXLAN);
    let (url, conf) = c.start_kube_api_with(V6_ONLY);
    let conf = conf.display().to_string();
    let user = weft_v6_only_kube_node(&mut c, &url, &conf, "userspace");
    let kernel = weft_v6_only_kube_node(&mut c, &url, &conf, "kernel");
    let k = c.add_node(Kind::KernelVxlan);
    let k6 = v6_underlay(&c, k);
    flanneld_v6_only_kube_node(&mut c, k, k6);
    for i in [user, kernel] {
        assert_v6_only_node_as_flanneld(&c, i);
    }
    // The fail-closed guard is the IPv6 network's; none for IPv4.
    let guards = ns_sh(
        &c.nodes[user].ns,
        &["ip", "-6", "route", "show", "proto", "87"],
    );
    assert!(guards.contains("unreachable fd00:10:244::/56"), "{guards}");
    let v4 = ns_sh(
        &c.nodes[user].ns,
        &["ip", "-4", "route", "show", "proto", "87"],
    );
    assert!(v4.trim().is_empty(), "{v4}");
    // Neither IPv4 device nor IPv4 route: the kernel dataplane has flannel-v6.1 alone.
    let links = ns_sh(&c.nodes[kernel].ns, &["ip", "-o", "link", "show"]);
    assert!(
        links.contains("flannel-v6.1") && !links.contains("flannel.1"),
        "{links}"
    );
    program_flanneld_v6_peers(&c, k);
    let pods: Vec<(String, Ipv6Addr)> = (0..3).map(|i| add_v6_only_pod(&mut c, i)).collect();
    wait_v6_route(&c, kernel, "fd00:10:244:3::/64", "dev flannel-v6.1");
    // Every pod reaches every other, with the largest DF ping the IPv6 path holds.
    let max6 = mtu(&c, k, "flannel-v6.1") - 48;
    let cap = Capture::start(
        &c.nodes[user].ns,
        "eth0",
        "udp port 8472",
        &c.dir.join("v6only.pcap"),
    );
    for (a, _) in &pods {
        for (_, b) in pods.iter().filter(|(n, _)| n != a) {
            let ok = try_in_ns(a, &format!("ping -c 2 -i 0.2 -W 2 -M do -s {max6} {b}"));
            assert!(ok.status.success(), "{a} -> {b} ({max6} bytes DF)");
        }
    }
    let frames = cap.stop();
    let outer = |t: [u8; 2]| {
        frames
            .iter()
            .filter(|f| f.len() > 14 && f[12..14] == t)
            .count()
    };
    assert!(
        outer([0x86, 0xdd]) >= 8 && outer([0x08, 0x00]) == 0,
        "{} frames",
        frames.len()
    );
    assert_tcp_both_ways_v6(&pods[user], &pods[k]);
}

/// TCP both ways between two IPv6-only pods (namespace, address): iperf3 moves data.
fn assert_tcp_both_ways_v6(a: &(String, Ipv6Addr), b: &(String, Ipv6Addr)) {
    for (from, to) in [(a, b), (b, a)] {
        let mut server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &to.0,
                "iperf3",
                "-s",
                "-1",
                "-B",
                &to.1.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let out = try_in_ns(&from.0, &format!("iperf3 -J -t 2 -c {}", to.1));
        let _ = server.kill();
        let _ = server.wait();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
        assert!(bytes > 1e6, "TCP {} -> {}: {bytes} bytes", from.1, to.1);
    }
}

#[test]
fn host_gw_runs_an_ipv6_only_kube_cluster() {
    let v6_host_gw = V6_ONLY.replace("vxlan", "host-gw");
    let mut c = Cluster::new(weft(), VXLAN);
    let (url, conf) = c.start_kube_api_with(&v6_host_gw);
    let conf = conf.display().to_string();
    for _ in 0..2 {
        weft_v6_only_kube_node(&mut c, &url, &conf, "auto");
    }
    // host-gw's IPv6-only node writes public-ip "0.0.0.0" and backend-data "null" (its
    // AcquireLease writes both for every backend but vxlan); its pods get the underlay MTU.
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(
        env.starts_with("FLANNEL_IPV6_NETWORK=") && env.contains("FLANNEL_MTU=1500"),
        "{env}"
    );
    let pods: Vec<(String, Ipv6Addr)> = (0..2).map(|i| add_v6_only_pod(&mut c, i)).collect();
    wait_v6_route(&c, 0, "fd00:10:244:2::/64", "via 2001:db8::2 dev eth0");
    let v4 = ns_sh(&c.nodes[0].ns, &["ip", "-4", "route", "show"]);
    assert!(
        !v4.contains("10.244."),
        "IPv4 pod routes on an IPv6-only node: {v4}"
    );
    for (from, to) in [(&pods[0], &pods[1]), (&pods[1], &pods[0])] {
        let ok = try_in_ns(
            &from.0,
            &format!("ping -c 2 -i 0.2 -W 2 -M do -s 1452 {}", to.1),
        );
        assert!(
            ok.status.success(),
            "{} -> {} (1452 bytes DF)",
            from.1,
            to.1
        );
    }
}

/// A lease as flanneld v0.28 writes an IPv6-only node's into etcd (pkg/subnet/etcd: the
/// key of its zero IP4Net, `0.0.0.0-0&<v6>-64`; PublicIP `0.0.0.0`, no BackendData), and
/// node `k` set up as flanneld sets up that node: `flannel-v6.1` alone, subnet.env without
/// the IPv4 pair.
fn flanneld_v6_only_etcd_node(c: &mut Cluster, k: usize, v6: Ipv6Addr) {
    let n = k + 1;
    let mac6 = format!("0e:00:00:00:{n:02x}:06");
    let key = format!("{ETCD_PREFIX}/subnets/0.0.0.0-0&fd00:10:244:{n}::-64");
    let value = format!(
        r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{v6}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
    );
    let etcd = c.etcd.as_ref().expect("an etcd cluster");
    let grant = etcd.ctl(&["lease", "grant", "86400"]);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    etcd.ctl(&["put", &format!("--lease={id}"), &key, &value]);
    flanneld_v6_only_device(c, k, v6, &mac6);
}

/// weft's leases in etcd, read raw: (key, value) of every IPv6-only one but flanneld's.
fn weft_v6_only_leases(c: &Cluster) -> Vec<(String, serde_json::Value)> {
    let prefix = format!("{ETCD_PREFIX}/subnets/");
    (c.etcd.as_ref().unwrap().get_prefix(&prefix).into_iter())
        .map(|(k, v)| {
            (
                k[prefix.len()..].to_string(),
                serde_json::from_str(&v).unwrap(),
            )
        })
        .filter(|(_, v): &(String, serde_json::Value)| v["PublicIPv6"] != "2001:db8::3")
        .collect()
}

/// Node `k`'s side of a flanneld IPv6-only vxlan node (pkg/backend/vxlan with EnableIPv4
/// false): `flannel-v6.1` alone (local = `v6`, MAC `mac6`, its subnet's first address as a
/// /128), and subnet.env without the IPv4 pair, as `WriteSubnetFile` writes it.
fn flanneld_v6_only_device(c: &Cluster, k: usize, v6: Ipv6Addr, mac6: &str) {
    let (ns, n) = (&c.nodes[k].ns, k + 1);
    ip(ns, &format!("link add flannel-v6.1 address {mac6} mtu 1450 type vxlan id 1 local {v6} dev eth0 dstport 8472 nolearning"));
    let _ = try_in_ns(ns, "sysctl -qw net.ipv6.conf.flannel-v6/1.accept_ra=0");
    ip(
        ns,
        &format!("addr add fd00:10:244:{n}::/128 dev flannel-v6.1"),
    );
    ip(ns, "link set flannel-v6.1 up");
    let env = format!("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:{n}::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
    let file = &c.nodes[k].subnet_file;
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, env).unwrap();
}

/// flanneld's vxlan programming in `ns` for one IPv6 peer: the neighbour, the FDB entry and
/// the onlink route on `flannel-v6.1`.
fn program_flanneld_v6_peer(ns: &str, subnet: &str, mac: &str, public: &str) {
    let gw = subnet.split('/').next().unwrap();
    ip(
        ns,
        &format!("neigh replace {gw} dev flannel-v6.1 lladdr {mac} nud permanent"),
    );
    let fdb = [
        "bridge",
        "fdb",
        "append",
        mac,
        "dev",
        "flannel-v6.1",
        "dst",
        public,
        "self",
        "permanent",
    ];
    ns_sh(ns, &fdb);
    ip(
        ns,
        &format!("route replace {subnet} via {gw} dev flannel-v6.1 onlink"),
    );
}

/// flanneld's vxlan programming on node `k` for every other IPv6-only lease in etcd.
fn program_flanneld_v6_etcd_peers(c: &Cluster, k: usize) {
    let ns = &c.nodes[k].ns;
    for (key, v) in weft_v6_only_leases(c) {
        let (_, v6) = key.split_once('&').expect("an IPv6-only key");
        let subnet = v6.replace('-', "/");
        let mac = v["BackendV6Data"]["VtepMAC"].as_str().unwrap();
        let public = v["PublicIPv6"].as_str().unwrap();
        program_flanneld_v6_peer(ns, &subnet, mac, public);
    }
}

#[test]
fn an_ipv6_only_etcd_cluster_keys_leases_as_flanneld_and_a_restart_keeps_its_own() {
    let mut c = Cluster::with_etcd(weft(), VXLAN);
    c.etcd()
        .ctl(&["put", &format!("{ETCD_PREFIX}/config"), V6_ONLY]);
    // flanneld's node first, so that weft's allocation steers clear of its subnet.
    for kind in [Kind::Weft, Kind::Weft, Kind::KernelVxlan] {
        let i = c.add_node(kind);
        v6_underlay(&c, i);
    }
    let k = 2;
    flanneld_v6_only_etcd_node(&mut c, k, "2001:db8::3".parse().unwrap());
    c.start_weft(0, &["--dataplane", "userspace"]);
    // The node ran dual-stack before: its flannel.1 is left over, and goes at start.
    let left = format!(
        "link add flannel.1 type vxlan id 1 local {} dev eth0 dstport 8472 nolearning",
        c.nodes[1].ip
    );
    ip(&c.nodes[1].ns, &left);
    // The underlay found by the route to an IPv6 address, as flanneld's --iface-can-reach.
    c.start_weft(
        1,
        &["--dataplane", "kernel", "--iface-can-reach", "2001:db8::3"],
    );
    let links = ns_sh(&c.nodes[1].ns, &["ip", "-o", "link", "show"]);
    assert!(
        links.contains("flannel-v6.1") && !links.contains("flannel.1"),
        "{links}"
    );
    // weft's leases in flanneld's IPv6-only words.
    let leases = weft_v6_only_leases(&c);
    assert_eq!(leases.len(), 2, "{leases:?}");
    for (key, v) in &leases {
        assert!(key.starts_with("0.0.0.0-0&fd00:10:244:"), "{key}");
        assert_eq!(v["PublicIP"], "0.0.0.0", "{v}");
        assert!(
            v.get("BackendData").is_none() && v["BackendV6Data"]["VNI"] == 1,
            "{v}"
        );
    }
    program_flanneld_v6_etcd_peers(&c, k);
    let pods: Vec<(String, Ipv6Addr)> = (0..3).map(|i| add_v6_only_pod(&mut c, i)).collect();
    let own = |c: &Cluster| {
        let leases = weft_v6_only_leases(c);
        leases
            .into_iter()
            .find(|(_, v)| v["PublicIPv6"] == "2001:db8::1")
            .unwrap()
            .0
    };
    assert!(
        leases.iter().any(|(_, v)| v["PublicIPv6"] == "2001:db8::2"),
        "--iface-can-reach 2001:db8::3 chose another address: {leases:?}"
    );
    let before = own(&c);
    // kill -9, subnet.env gone: only the lease's PublicIPv6 can say which is ours (every
    // IPv6-only lease, flanneld's too, has PublicIP 0.0.0.0).
    c.kill_weft(0);
    std::fs::remove_file(&c.nodes[0].subnet_file).unwrap();
    // Restarted choosing its underlay by the route to an IPv4 address: it names the
    // interface, whose global IPv6 address is the node's (flanneld's LookupExtIface).
    let reach = c.nodes[k].ip.to_string();
    c.start_weft(
        0,
        &["--dataplane", "userspace", "--iface-can-reach", &reach],
    );
    assert_eq!(own(&c), before, "the restart took another subnet");
    assert_eq!(weft_v6_only_leases(&c).len(), 2);
    wait_v6_route(&c, 1, "fd00:10:244:3::/64", "dev flannel-v6.1");
    for (a, _) in &pods {
        for (_, b) in pods.iter().filter(|(n, _)| n != a) {
            let ok = try_in_ns(a, &format!("ping -c 2 -i 0.2 -W 2 {b}"));
            assert!(ok.status.success(), "{a} -> {b}");
        }
    }
}
