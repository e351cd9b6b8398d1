//! flannel's other backends and the kernel dataplane, on real namespaces: host-gw routes as
//! flanneld makes them, vxlan with DirectRouting across a router, weft's kernel vxlan
//! dataplane (`--dataplane kernel`) in one cluster with weft's userspace dataplane and a
//! flanneld-style node, and weft's udp backend with flannel's own udp proxy. What weft
//! programs is read back with `ip` and `bridge`, never with weft. Root only, like the rest.

#[path = "harness.rs"]
mod harness;

use std::time::Duration;

use harness::kernel_nodes::{flanneld_udp_lease, FLANNEL_UDP_MTU};
use harness::{
    iperf3, ns_run, ns_sh, try_in_ns, wait_for, weft, Capture, Cluster, Kind, Pod, ETCD_PREFIX,
};

/// weft's nodes take subnets below 10.244.100.0 (flanneld's `SubnetMax`), so the leases
/// this file writes by hand above it, after they start, never land on one of theirs.
const HOST_GW: &str =
    r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.99.0","Backend":{"Type":"host-gw"}}"#;
const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const UDP: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#;
const DIRECT: &str =
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;

/// `ip route show <dst>` on node `i`'s namespace, as one line ("" when there is none).
fn route(c: &Cluster, i: usize, dst: &str) -> String {
    ns_sh(&c.nodes[i].ns, &["ip", "route", "show", dst])
        .trim()
        .to_string()
}

/// Waits until node `i`'s route to `dst` satisfies `ok`; returns it.
fn wait_route(c: &Cluster, i: usize, dst: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    wait_for(
        &format!("node {}: route to {dst} {what}", i + 1),
        Duration::from_secs(10),
        || {
            let r = route(c, i, dst);
            ok(&r).then_some(r)
        },
    )
}

/// The unicast routes with weft's protocol on node `i` (the guard is `unreachable`).
fn weft_peer_routes(c: &Cluster, i: usize) -> Vec<String> {
    ns_sh(&c.nodes[i].ns, &["ip", "route", "show", "proto", "87"])
        .lines()
        .filter(|l| !l.starts_with("unreachable"))
        .map(str::to_string)
        .collect()
}

/// iperf3 TCP both ways between the first pods of nodes `a` and `b`: each must carry data.
fn iperf_both_ways(c: &Cluster, a: usize, b: usize) -> (f64, f64) {
    let (pa, pb) = (c.nodes[a].pods[0].clone(), c.nodes[b].pods[0].clone());
    let there = iperf3(&pa, &pb, 2, None);
    let back = iperf3(&pb, &pa, 2, None);
    assert!(
        there.bytes > 0.0 && back.bytes > 0.0,
        "iperf3 between nodes {} and {} carried nothing",
        a + 1,
        b + 1
    );
    (there.bps / 1e9, back.bps / 1e9)
}

/// Checks that weft's own leases say host-gw as flanneld's do, with no BackendData.
fn check_weft_leases_say_host_gw(c: &mut Cluster) {
    for (k, v) in c.etcd().get_prefix(&format!("{ETCD_PREFIX}/subnets/")) {
        if v.contains("192.0.2.1\"") || v.contains("192.0.2.2\"") {
            assert!(v.contains(r#""BackendType":"host-gw""#), "{k}: {v}");
            assert!(!v.contains("BackendData"), "{k}: {v}");
        }
    }
}

/// Waits for the routes as flanneld's RouteNetwork makes them: subnet via the peer's public
/// IP on eth0, between nodes 1 and 2 (subnets `s1`, `s2`) and to the flanneld node's `fsub`.
fn wait_host_gw_routes(c: &Cluster, s1: &str, s2: &str, fsub: &str) {
    for (i, dst, via) in [
        (0, s2, "192.0.2.2"),
        (1, s1, "192.0.2.1"),
        (0, fsub, "192.0.2.3"),
    ] {
        wait_route(c, i, dst, &format!("via {via}"), |r| {
            r.starts_with(&format!("{dst} via {via} dev eth0"))
        });
    }
}

/// Checks that node 1 has no TUN, no route to the peer no route reaches directly, and a
/// log line naming that skipped peer.
fn check_no_tun_and_far_peer_skipped(c: &Cluster) {
    // No TUN: host-gw has no dataplane of weft's.
    assert!(!ns_run(&c.nodes[0].ns, &["ip", "link", "show", "weft0"])
        .status
        .success());
    assert_eq!(
        route(c, 0, "10.244.199.0/24"),
        "",
        "an unreachable peer got a route"
    );
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    assert!(
        log.contains("10.244.199.0/24 via 203.0.113.9") && log.contains("layer-2"),
        "the skipped peer is not named:\n{log}"
    );
}

/// A crash leaves the routes (traffic keeps flowing); the restart adopts them and drops
/// the one whose lease (etcd `key`, subnet `fsub`) went away meanwhile.
fn crash_then_restart_adopts_host_gw_routes(c: &mut Cluster, key: &str, fsub: &str, s2: &str) {
    c.etcd().ctl(&[
        "put",
        key,
        r#"{"PublicIP":"192.0.2.3","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    wait_route(c, 0, fsub, "back", |r| r.contains("via 192.0.2.3"));
    c.kill_weft(0);
    assert!(route(c, 0, s2).contains("via 192.0.2.2"));
    c.etcd().ctl(&["del", key]);
    let logged = std::fs::metadata(&c.nodes[0].log).unwrap().len() as usize;
    c.start_weft(0, &[]);
    wait_route(c, 0, fsub, "removed after the restart", str::is_empty);
    wait_route(c, 0, s2, "kept after the restart", |r| {
        r.contains("via 192.0.2.2")
    });
    // Adopted, not removed and added again: the restarted weft never touched that route.
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    let after = &log[logged..];
    assert!(after.contains(&format!("removed route {fsub}")), "{after}");
    assert!(!after.contains(&format!("{s2} via 192.0.2.2")), "{after}");
}

/// A clean stop leaves node 1's routes forwarding, as flanneld v0.27+ leaves them, for the
/// next start to adopt; `weft cleanup` removes them, and the fail-closed guard.
fn clean_stop_keeps_host_gw_routes_until_cleanup(c: &mut Cluster) {
    let routes = weft_peer_routes(c, 0);
    assert!(c.stop_weft(0));
    assert_eq!(weft_peer_routes(c, 0), routes);
    let (p1, p2) = (&c.nodes[0].pods[0], &c.nodes[1].pods[0]);
    let ping = format!("ping -c 2 -W 2 {}", p2.ip);
    assert!(
        harness::try_in_ns(&p1.ns, &ping).status.success(),
        "pods lost each other with weft stopped"
    );
    ns_sh(&c.nodes[0].ns, &[&c.weft.display().to_string(), "cleanup"]);
    assert_eq!(weft_peer_routes(c, 0), Vec::<String>::new());
    assert!(
        !ns_sh(&c.nodes[0].ns, &["ip", "route", "show", "proto", "87"])
            .contains("unreachable 10.244.0.0/16")
    );
}

/// The far node's lease (`key`, skipped: no route reaches 203.0.113.9 directly) moves to
/// 192.0.2.3, on our layer-2 network: a route appears; moved back, it goes, skipped
/// again. The kernel is asked about the one address that changed, not every peer's.
fn far_lease_moves_onto_our_subnet_and_away(c: &mut Cluster, key: &str) {
    let dst = "10.244.199.0/24";
    let lease =
        |ip: &str| format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#);
    c.etcd().ctl(&["put", key, &lease("192.0.2.3")]);
    wait_route(c, 0, dst, "via the moved node", |r| {
        r.starts_with(&format!("{dst} via 192.0.2.3 dev eth0"))
    });
    c.etcd().ctl(&["put", key, &lease("203.0.113.9")]);
    wait_route(c, 0, dst, "gone with the move back", str::is_empty);
}

#[test]
fn host_gw_routes_follow_the_leases_as_flanneld_makes_them() {
    let mut c = Cluster::with_etcd(weft(), HOST_GW);
    for _ in 0..2 {
        c.add_node(Kind::Weft);
    }
    let f = c.add_node(Kind::HostGw);
    for i in 0..2 {
        c.start_weft(i, &[]);
    }
    // A stock flanneld host-gw node: its lease exactly as flanneld's hostgw backend stores
    // it (BackendType, no BackendData), written with etcdctl.
    let fsub = "10.244.177.0/24";
    c.start_hostgw_node(f, fsub.parse().unwrap());
    let key = format!("{ETCD_PREFIX}/subnets/10.244.177.0-24");
    c.etcd().ctl(&[
        "put",
        &key,
        r#"{"PublicIP":"192.0.2.3","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    c.wait_converged();
    check_weft_leases_say_host_gw(&mut c);
    for i in 0..3 {
        c.add_pod(i, None);
    }
    c.program_hostgw_routes(f);
    // And a host-gw lease of a node no route reaches directly: skipped, and named.
    let far_key = format!("{ETCD_PREFIX}/subnets/10.244.199.0-24");
    c.etcd().ctl(&[
        "put",
        &far_key,
        r#"{"PublicIP":"203.0.113.9","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    c.wait_converged();
    let (s1, s2) = (c.subnet(0).to_string(), c.subnet(1).to_string());
    wait_host_gw_routes(&c, &s1, &s2, fsub);
    check_no_tun_and_far_peer_skipped(&c);
    let failed = c.ping_all();
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));
    let (there, back) = iperf_both_ways(&c, 0, 1);
    harness::figure(&format!(
        "weft host-gw pod to pod, 2 s TCP: {there:.2} / {back:.2} Gbit/s"
    ));
    iperf_both_ways(&c, 0, f);

    // A deleted route comes back (flanneld's route check).
    ns_sh(&c.nodes[0].ns, &["ip", "route", "del", &s2]);
    wait_route(&c, 0, &s2, "restored", |r| r.contains("via 192.0.2.2"));
    // A lease removed takes its route with it.
    c.etcd().ctl(&["del", &key]);
    wait_route(&c, 0, fsub, "gone", str::is_empty);
    far_lease_moves_onto_our_subnet_and_away(&mut c, &far_key);

    crash_then_restart_adopts_host_gw_routes(&mut c, &key, fsub, &s2);
    clean_stop_keeps_host_gw_routes_until_cleanup(&mut c);
}

#[test]
fn direct_routing_routes_peers_on_the_underlay_and_tunnels_the_rest() {
    let mut c = Cluster::new(weft(), DIRECT);
    c.add_node(Kind::Weft);
    c.add_node(Kind::Weft);
    let far = c.add_node_behind_router();
    // Node 1 with the kernel dataplane, nodes 2 and 3 with weft's userspace one.
    c.start_weft(0, &["--dataplane", "kernel"]);
    c.start_weft(1, &[]);
    c.start_weft(far, &[]);
    for i in 0..3 {
        c.add_pod(i, None);
    }
    c.wait_converged();
    let (s1, s2, s3) = (
        c.subnet(0).to_string(),
        c.subnet(1).to_string(),
        c.subnet(far).to_string(),
    );
    // Same underlay subnet: a plain route, as flanneld's DirectRouting installs it.
    wait_route(&c, 0, &s2, "direct", |r| {
        r.starts_with(&format!("{s2} via 192.0.2.2 dev eth0"))
    });
    wait_route(&c, 1, &s1, "direct", |r| {
        r.starts_with(&format!("{s1} via 192.0.2.1 dev eth0"))
    });
    // Behind the router: through vxlan (node 1's flannel.1; node 2's TUN route for the
    // whole network, so no route of its own).
    let gw3 = c.subnet(far).network().to_string();
    wait_route(&c, 0, &s3, "via flannel.1", |r| {
        r.starts_with(&format!("{s3} via {gw3} dev flannel.1")) && r.contains("onlink")
    });
    assert_eq!(route(&c, 1, &s3), "");
    let failed = c.ping_all();
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));

    // Pods on nodes 1 and 2 talk without vxlan: nothing on port 8472 and nothing through
    // node 2's TUN; pods on nodes 1 and 3 through vxlan.
    let before = c.metrics(1);
    let cap = Capture::start(
        &c.nodes[0].ns,
        "eth0",
        "udp port 8472",
        &c.dir.join("direct.pcap"),
    );
    iperf_both_ways(&c, 0, 1);
    let tunnelled = cap.stop();
    assert!(
        tunnelled.is_empty(),
        "{} vxlan frames between nodes on one subnet",
        tunnelled.len()
    );
    let after = c.metrics(1);
    for k in [
        "weft_packets_total{direction=\"tx\"}",
        "weft_packets_total{direction=\"rx\"}",
    ] {
        assert_eq!(
            before[k], after[k],
            "{k}: node 2's TUN carried direct traffic"
        );
    }
    let cap = Capture::start(
        &c.nodes[0].ns,
        "eth0",
        "udp port 8472",
        &c.dir.join("tunnel.pcap"),
    );
    iperf_both_ways(&c, 0, far);
    iperf_both_ways(&c, 1, far);
    assert!(!cap.stop().is_empty(), "no vxlan frames to the routed node");
}

/// The VTEP MAC in lease `l`'s vxlan backend data.
fn vtep_mac(l: &weft::lease::Lease) -> String {
    l.attrs.vxlan_data().unwrap().vtep_mac.to_string()
}

/// Checks flannel.1 in namespace `ns` as flanneld creates it, for the node of lease `l1`.
fn check_flannel_1_as_flanneld_makes_it(ns: &str, l1: &weft::lease::Lease) {
    let link = ns_sh(ns, &["ip", "-d", "link", "show", "flannel.1"]);
    for want in [
        "mtu 1450",
        &format!("link/ether {}", vtep_mac(l1)),
        "vxlan id 1 local 192.0.2.1 dev eth0",
        "dstport 8472",
        "nolearning",
    ] {
        assert!(link.contains(want), "flannel.1 lacks {want:?}:\n{link}");
    }
    let addr = ns_sh(ns, &["ip", "-4", "addr", "show", "dev", "flannel.1"]);
    assert!(
        addr.contains(&format!(
            "inet {}/32",
            l1.subnet.expect("an IPv4 lease").network()
        )),
        "{addr}"
    );
}

/// Checks node 1's permanent ARP and FDB entries for the peer of lease `l` (gateway `gw`),
/// then waits for its onlink route.
fn check_kernel_peer_entries(c: &Cluster, ns: &str, l: &weft::lease::Lease, gw: &str) {
    let arp = ns_sh(ns, &["ip", "neigh", "show", "dev", "flannel.1", gw]);
    assert!(
        arp.contains(&format!("lladdr {}", vtep_mac(l))) && arp.contains("PERMANENT"),
        "ARP for {gw}: {arp}"
    );
    let fdb = ns_sh(ns, &["bridge", "fdb", "show", "dev", "flannel.1"]);
    assert!(
        fdb.contains(&format!(
            "{} dst {} self permanent",
            vtep_mac(l),
            l.attrs.public_ip
        )),
        "FDB for {}: {fdb}",
        l.attrs.public_ip
    );
    let dst = l.subnet.expect("an IPv4 lease").to_string();
    wait_route(c, 0, &dst, "onlink", |r| {
        r.starts_with(&format!("{dst} via {gw} dev flannel.1")) && r.contains("onlink")
    });
}

/// What someone removes or changes on node 1 comes back: the route to `s2` (deleted, or
/// replaced by another), the ARP entry for `gw2` (deleted, or made dynamic), the device
/// itself; a stray peer route goes; the pods reach each other again. Each is seen through
/// the kernel's notifications, not a dump every second.
fn removed_kernel_state_comes_back(c: &Cluster, ns: &str, s2: &str, gw2: &str) {
    ns_sh(ns, &["ip", "route", "del", s2]);
    wait_route(c, 0, s2, "restored", |r| r.contains("dev flannel.1"));
    // Replaced in place (one RTM_NEWROUTE, no deletion): weft's comes back.
    let onlink = ["dev", "flannel.1", "onlink", "proto", "static"];
    let mut replace = vec!["ip", "route", "replace", s2, "via", gw2];
    replace.extend(onlink);
    ns_sh(ns, &replace);
    wait_route(c, 0, s2, "weft's again", |r| r.contains("proto 87"));
    // A peer route weft does not want (an earlier weft's, say) goes.
    let stray = "10.244.250.0/24";
    let mut add = vec!["ip", "route", "add", stray, "via", "10.244.250.0"];
    add.extend(&onlink[..3]);
    add.extend(["proto", "87"]);
    ns_sh(ns, &add);
    wait_route(c, 0, stray, "removed", str::is_empty);
    ns_sh(ns, &["ip", "neigh", "del", gw2, "dev", "flannel.1"]);
    wait_for("the ARP entry restored", Duration::from_secs(10), || {
        ns_sh(ns, &["ip", "neigh", "show", "dev", "flannel.1", gw2])
            .contains("PERMANENT")
            .then_some(())
    });
    // Made dynamic, same MAC: permanent again.
    let arp = ns_sh(ns, &["ip", "neigh", "show", "dev", "flannel.1", gw2]);
    let mac = arp
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap()
        .to_string();
    ns_sh(
        ns,
        &[
            "ip",
            "neigh",
            "replace",
            gw2,
            "lladdr",
            &mac,
            "dev",
            "flannel.1",
            "nud",
            "reachable",
        ],
    );
    wait_for(
        "the ARP entry permanent again",
        Duration::from_secs(10),
        || {
            ns_sh(ns, &["ip", "neigh", "show", "dev", "flannel.1", gw2])
                .contains("PERMANENT")
                .then_some(())
        },
    );
    ns_sh(ns, &["ip", "link", "del", "flannel.1"]);
    wait_route(c, 0, s2, "back after the device was deleted", |r| {
        r.contains("dev flannel.1")
    });
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "pings failed after the repair:\n{}",
        failed.join("\n")
    );
}

/// The flanneld node's lease `l` changed in place (its VTEP MAC, as a re-made flannel.1
/// gets) replaces node 1's ARP and FDB entries for it, the old MAC's FDB entry gone; the
/// lease removed takes its route and entries; written back, they return. Each is one
/// peer's change, applied without re-planning the others.
fn kernel_entries_follow_the_lease(c: &Cluster, ns: &str, l: &weft::lease::Lease) {
    let subnet = l.subnet.expect("an IPv4 lease");
    let (dst, gw) = (subnet.to_string(), subnet.network().to_string());
    let (old_mac, new_mac) = (vtep_mac(l), "0e:00:00:00:77:01");
    let mut moved = l.clone();
    moved.attrs.backend_data["VtepMAC"] = new_mac.into();
    c.put_lease(&moved);
    let entries = || {
        let arp = ns_sh(ns, &["ip", "neigh", "show", "dev", "flannel.1", &gw]);
        let fdb = ns_sh(ns, &["bridge", "fdb", "show", "dev", "flannel.1"]);
        (arp, fdb)
    };
    wait_for(
        "the new VTEP MAC's entries",
        Duration::from_secs(10),
        || {
            let (arp, fdb) = entries();
            let fdb_new = fdb.contains(&format!("{new_mac} dst 192.0.2.3 self permanent"));
            (arp.contains(new_mac) && fdb_new && !fdb.contains(&old_mac)).then_some(())
        },
    );
    let store = weft::store::file::FileStore::open(c.lease_dir()).unwrap();
    std::fs::remove_file(store.lease_path(&moved)).unwrap();
    wait_route(c, 0, &dst, "gone with its lease", str::is_empty);
    wait_for("its entries gone", Duration::from_secs(10), || {
        let (arp, fdb) = entries();
        (arp.is_empty() && !fdb.contains(new_mac)).then_some(())
    });
    c.put_lease(l);
    // Entries go in before the route: once it is back, both are there.
    wait_route(c, 0, &dst, "back with its lease", |r| !r.is_empty());
    check_kernel_peer_entries(c, ns, l, &gw);
}

/// kill -9 on node 1: the device outlives weft; the restart adopts it (the same device,
/// not a new one), forwards on, and keeps lease `l1`'s VTEP MAC.
fn kill_9_restart_adopts_flannel_1(c: &mut Cluster, ns: &str, s2: &str, l1: &weft::lease::Lease) {
    c.kill_weft(0);
    let index = ns_sh(ns, &["cat", "/sys/class/net/flannel.1/ifindex"]);
    let logged = std::fs::metadata(&c.nodes[0].log).unwrap().len() as usize;
    c.start_weft(0, &["--dataplane", "kernel"]);
    assert_eq!(
        ns_sh(ns, &["cat", "/sys/class/net/flannel.1/ifindex"]),
        index
    );
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    assert!(
        log[logged..].contains("adopting the existing flannel.1"),
        "{}",
        &log[logged..]
    );
    c.wait_converged();
    wait_route(c, 0, s2, "after the restart", |r| {
        r.contains("dev flannel.1")
    });
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "pings failed after the restart:\n{}",
        failed.join("\n")
    );
    // The VTEP MAC survived the restart (the lease's).
    let link = ns_sh(ns, &["ip", "link", "show", "flannel.1"]);
    assert!(link.contains(&vtep_mac(l1)), "{link}");
}

/// A clean stop on node 1 leaves the device, its entries and routes forwarding (flanneld
/// v0.27+); `weft cleanup` takes them.
fn clean_stop_keeps_flannel_1_until_cleanup(c: &mut Cluster, ns: &str) {
    assert!(c.stop_weft(0));
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "pings failed with weft stopped:\n{}",
        failed.join("\n")
    );
    ns_sh(ns, &[&c.weft.display().to_string(), "cleanup"]);
    assert!(!ns_run(ns, &["ip", "link", "show", "flannel.1"])
        .status
        .success());
    assert_eq!(weft_peer_routes(c, 0), Vec::<String>::new());
}

#[test]
fn kernel_dataplane_joins_userspace_and_flanneld_nodes() {
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_node(Kind::Weft);
    c.add_node(Kind::Weft);
    let k = c.add_node(Kind::KernelVxlan);
    c.start_kernel_node(k, "10.244.50.0/24".parse().unwrap());
    c.start_weft(0, &["--dataplane", "kernel"]);
    c.start_weft(1, &[]);
    for i in 0..3 {
        c.add_pod(i, None);
    }
    c.wait_converged();
    c.program_kernel_peers(k);
    let ns = c.nodes[0].ns.clone();
    let leases = c.leases();
    let lease = |ip: &str| {
        leases
            .iter()
            .find(|l| l.attrs.public_ip.to_string() == ip)
            .unwrap_or_else(|| panic!("no lease for {ip}"))
            .clone()
    };
    let (l1, l2) = (lease("192.0.2.1"), lease("192.0.2.2"));

    check_flannel_1_as_flanneld_makes_it(&ns, &l1);
    // Per peer: permanent ARP and FDB entries, then the onlink route.
    for (l, gw) in [
        (&l2, l2.subnet.expect("an IPv4 lease").network().to_string()),
        (&lease("192.0.2.3"), "10.244.50.0".to_string()),
    ] {
        check_kernel_peer_entries(&c, &ns, l, &gw);
    }
    let failed = c.ping_all();
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));
    let (there, back) = iperf_both_ways(&c, 0, 1);
    harness::figure(&format!(
        "weft kernel vxlan <-> weft userspace vxlan, 2 s TCP: {there:.2} / {back:.2} Gbit/s"
    ));
    iperf_both_ways(&c, 0, k);
    iperf_both_ways(&c, 1, k);

    let s2 = l2.subnet.expect("an IPv4 lease").to_string();
    let gw2 = l2.subnet.expect("an IPv4 lease").network().to_string();
    removed_kernel_state_comes_back(&c, &ns, &s2, &gw2);
    kernel_entries_follow_the_lease(&c, &ns, &lease("192.0.2.3"));
    kill_9_restart_adopts_flannel_1(&mut c, &ns, &s2, &l1);
    clean_stop_keeps_flannel_1_until_cleanup(&mut c, &ns);
}

/// A weft udp node with its default flags and a stock flanneld udp node: flannel's own
/// proxy (`proxy_amd64.c`, built from flannel's source and driven as flanneld drives it),
/// its lease flanneld's literal value, over a veth and bridge underlay. The bug this guards
/// against (issue 25): weft handed the kernel whole TSO super-packets (tunnel GSO), the
/// veth carried each across as one ~64 KB datagram, and flannel's proxy, reading into a
/// buffer of one MTU, wrote truncated garbage into its TUN: TCP to it moved 0 bytes. A udp
/// peer whose lease lacks weft's `SuperDatagrams` mark now gets segments.
#[test]
fn flannels_own_udp_proxy_and_a_weft_udp_node_carry_tcp_both_ways() {
    let mut c = Cluster::new(weft(), UDP);
    let w = c.add_node(Kind::Weft);
    let f = c.add_node(Kind::FlannelUdp);
    c.start_flannel_udp_node(f, "10.244.200.0/24".parse().unwrap());
    c.start_weft(w, &[]);
    c.wait_converged();
    c.program_flannel_udp_peers(f);
    let (pw, pf) = (c.add_pod(w, None), c.add_pod(f, None));
    // Small, 1400-byte and the largest unfragmented pings (the pod MTU, DF set), both ways.
    let largest = (FLANNEL_UDP_MTU - 28).to_string();
    for (a, b) in [(&pw, &pf), (&pf, &pw)] {
        for size in ["56", "1400", &largest] {
            ping_df(a, b, size);
        }
    }
    let there = iperf3(&pw, &pf, 3, None);
    let back = iperf3(&pf, &pw, 3, None);
    assert!(
        there.bps > 10e6 && back.bps > 10e6,
        "TCP between weft's udp node and flannel's proxy: {:.1} Mbit/s there ({} bytes), \
         {:.1} Mbit/s back ({} bytes); weft's counters: {:?}",
        there.bps / 1e6,
        there.bytes,
        back.bps / 1e6,
        back.bytes,
        c.metrics(w)
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect::<Vec<_>>()
    );
    // flanneld's lease is its literal value; weft's carries the mark flanneld ignores.
    let stored = |ip: [u8; 4]| {
        let l = c
            .leases()
            .into_iter()
            .find(|l| l.attrs.public_ip.octets() == ip);
        l.expect("a lease per node").attrs
    };
    assert_eq!(
        stored([192, 0, 2, 2]).to_json(),
        flanneld_udp_lease([192, 0, 2, 2].into())
    );
    assert!(stored([192, 0, 2, 1]).takes_super_datagrams());
    assert!(!stored([192, 0, 2, 2]).takes_super_datagrams());
    assert_eq!(
        c.metrics(w)["weft_tunnel_gso_frames_total"],
        0,
        "weft handed flannel's proxy whole super-packets"
    );
    harness::figure(&format!(
        "weft udp <-> flannel's own udp proxy: pings of 56, 1400 and {largest} B (DF) both \
         ways; TCP {:.2} Gbit/s to flannel, {:.2} Gbit/s back",
        there.bps / 1e9,
        back.bps / 1e9
    ));
}

/// Pings `to` from `from` with `size` bytes of payload and DF set; it must answer.
fn ping_df(from: &Pod, to: &Pod, size: &str) {
    let o = try_in_ns(
        &from.ns,
        &format!("ping -c 3 -i 0.2 -W 2 -M do -s {size} {}", to.ip),
    );
    assert!(
        o.status.success(),
        "ping -s {size} {} -> {} failed: {}",
        from.ip,
        to.ip,
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn refusals_name_the_flag_and_the_fix() {
    let mut c = Cluster::new(weft(), UDP);
    c.add_node(Kind::Weft);
    c.spawn_weft_env(0, &["--dataplane", "kernel"], &[]);
    let (ok, log) = c.wait_exit(0, Duration::from_secs(10));
    assert!(!ok);
    assert!(
        log.contains("--dataplane kernel") && log.contains("--dataplane userspace"),
        "{log}"
    );
}
