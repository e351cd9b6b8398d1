//! End-to-end tests on real TUN devices, veths, bridges and kernel vxlan peers, in network
//! namespaces built by the harness. They need root (CI runs them as root).

#[path = "harness.rs"]
mod harness;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use harness::{
    flood_mbit, in_ns, iperf3, ns_run, output_text as out, try_in_ns, weft, words, Cluster, Flood,
    FloodCounts, Kind, Pod,
};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const UDP: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#;

/// Three weft nodes with two pods each; node 2 runs one worker (a single-queue TUN), the
/// others the default two (a multi-queue TUN and two SO_REUSEPORT sockets).
fn three_nodes(conf: &str) -> Cluster {
    let mut c = Cluster::new(weft(), conf);
    for i in 0..3 {
        c.add_node(Kind::Weft);
        c.start_weft(i, if i == 1 { &["--workers", "1"] } else { &[] });
        c.add_pod(i, None);
        c.add_pod(i, None);
    }
    c.wait_converged();
    c
}

/// Two weft nodes with one pod each, converged.
fn two_nodes(conf: &str) -> Cluster {
    let mut c = Cluster::new(weft(), conf);
    c.add_weft_nodes(2, &[]);
    c
}

/// Pings at the budget with DF succeed; one byte more gets "frag needed" with the budget as
/// MTU. The pod gets an MTU of 1500 so the oversized packet can leave it; the node's route
/// into the TUN (whose MTU is the budget) is what refuses it, as with flannel.
fn check_mtu_budget(c: &mut Cluster, budget: u32) {
    let big = c.add_pod(0, Some(1500));
    let dst = c.nodes[1].pods[0].ip.to_string();
    let ping = |size: u32| {
        try_in_ns(
            &big.ns,
            &format!("ping -M do -c 2 -i 0.2 -W 2 -s {size} {dst}"),
        )
    };
    let o = ping(budget - 28);
    assert!(
        o.status.success(),
        "DF ping of {budget} bytes failed: {}",
        out(&o)
    );
    let o = ping(budget - 27);
    assert!(
        !o.status.success(),
        "DF ping of {} bytes went through",
        budget + 1
    );
    let text = out(&o);
    let want = [format!("mtu = {budget}"), format!("mtu={budget}")];
    assert!(
        want.iter().any(|w| text.contains(w)),
        "no frag-needed with mtu {budget}: {text}"
    );
}

fn forwarding_cluster(conf: &str, budget: u32, label: &str) {
    let mut c = three_nodes(conf);
    let failed = c.ping_all();
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));
    let (a, b) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let tcp = iperf3(&a, &b, 3, None);
    assert!(tcp.bytes > 0.0);
    let udp = iperf3(&a, &b, 3, Some(("300M", 1400)));
    assert!(udp.bytes > 0.0);
    harness::figure(&format!(
        "{label}: iperf3 TCP {:.2} Gbit/s ({} retransmits); UDP 1400 B at 300 Mbit/s offered: {:.2} Gbit/s, {:.2}% lost",
        tcp.bps / 1e9,
        tcp.loss,
        udp.bps / 1e9,
        udp.loss
    ));
    let m = c.metrics(0);
    assert!(
        m["weft_packets_total{direction=\"tx\"}"] > 0
            && m["weft_packets_total{direction=\"rx\"}"] > 0,
        "{m:?}"
    );
    check_mtu_budget(&mut c, budget);
}

#[test]
fn vxlan_cluster_pings_all_pairs_carries_iperf3_and_keeps_the_mtu_budget() {
    forwarding_cluster(VXLAN, 1450, "weft vxlan");
}

#[test]
fn udp_cluster_pings_all_pairs_carries_iperf3_and_keeps_the_mtu_budget() {
    forwarding_cluster(UDP, 1472, "weft udp");
}

#[test]
fn restart_keeps_subnet_and_vtep_mac_and_removes_the_tun() {
    let mut c = two_nodes(VXLAN);
    let before = c
        .leases()
        .into_iter()
        .find(|l| l.attrs.public_ip == c.nodes[0].ip)
        .unwrap();
    assert!(c.stop_weft(0), "weft did not exit cleanly on SIGTERM");
    assert!(
        !ns_run(&c.nodes[0].ns, &["ip", "link", "show", "weft0"])
            .status
            .success(),
        "weft0 left behind"
    );
    let route =
        String::from_utf8_lossy(&ns_run(&c.nodes[0].ns, &["ip", "route"]).stdout).into_owned();
    // Only the fail-closed guard may stay: no route into a TUN.
    let left: Vec<&str> = route
        .lines()
        .filter(|l| l.contains("10.244.0.0/16"))
        .collect();
    assert!(
        left.len() == 1 && left[0].starts_with("unreachable 10.244.0.0/16 proto 87"),
        "cluster routes left behind: {route}"
    );
    assert!(
        c.leases().iter().any(|l| l == &before),
        "lease not left in place"
    );
    c.start_weft(0, &[]);
    let after = c
        .leases()
        .into_iter()
        .find(|l| l.attrs.public_ip == c.nodes[0].ip)
        .unwrap();
    assert_eq!(after.subnet, before.subnet);
    assert_eq!(
        after.attrs.vxlan_data().unwrap().vtep_mac,
        before.attrs.vxlan_data().unwrap().vtep_mac
    );
    c.wait_converged();
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "pings after restart failed:\n{}",
        failed.join("\n")
    );
}

/// Waits until nodes 1 and 2 agree that `pred` holds for their tables; returns how long.
fn until_tables(c: &Cluster, what: &str, pred: impl Fn(&str) -> bool) -> Duration {
    let start = Instant::now();
    for i in 0..2 {
        harness::wait_for(what, Duration::from_secs(10), || {
            pred(&c.http(i, "/leases").unwrap_or_default()).then_some(())
        });
    }
    start.elapsed()
}

#[test]
fn lease_changes_reach_every_table_and_a_revoked_node_stops() {
    let mut c = three_nodes(VXLAN);
    let store = weft::store::file::FileStore::open(c.lease_dir()).unwrap();
    let subnets = c.lease_dir().join("subnets");

    // Addition, change and deletion of a lease written by someone else (a reservation).
    reservation_reaches_every_table(&c, &store, &subnets);

    // A corrupt lease file is skipped with a warning naming it; nothing crashes.
    corrupt_lease_file_is_skipped(&mut c, &subnets);

    // A store outage (the directory unreadable) leaves forwarding on the last leases.
    store_outage_keeps_forwarding(&c, &subnets);

    // Deleting node 3's lease: the others drop it and answer with net unreachable, and
    // node 3 stops, as flanneld does when its lease is revoked.
    revoked_node_is_unreachable_and_stops(&mut c, &subnets);
}

/// Adds, changes and deletes a reservation in `store` and times each reaching the tables.
fn reservation_reaches_every_table(
    c: &Cluster,
    store: &weft::store::file::FileStore,
    subnets: &std::path::Path,
) {
    let mut extra = weft::lease::Lease {
        subnet: Some("10.244.250.0/24".parse().unwrap()),
        ipv6_subnet: None,
        attrs: weft::lease::LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 0, 2, 99),
            weft::lease::VxlanBackendData {
                vni: 1,
                vtep_mac: "0e:00:00:00:63:01".parse().unwrap(),
            },
        ),
        expiration: None,
    };
    store.put(&extra).unwrap();
    let added = until_tables(c, "an added lease", |t| {
        t.contains("10.244.250.0/24 192.0.2.99 vxlan vni=1 mac=0e:00:00:00:63:01")
    });
    extra.attrs = weft::lease::LeaseAttrs::vxlan(
        Ipv4Addr::new(192, 0, 2, 99),
        weft::lease::VxlanBackendData {
            vni: 1,
            vtep_mac: "0e:00:00:00:63:02".parse().unwrap(),
        },
    );
    store.put(&extra).unwrap();
    let changed = until_tables(c, "a changed lease", |t| {
        t.contains("mac=0e:00:00:00:63:02")
    });
    std::fs::remove_file(subnets.join(extra.key())).unwrap();
    let deleted = until_tables(c, "a deleted lease", |t| !t.contains("10.244.250.0/24"));
    harness::figure(&format!(
        "lease directory to every table: added in {added:?}, changed in {changed:?}, deleted in {deleted:?}"
    ));
}

/// Writes a corrupt lease file; node 1 warns naming it and every node keeps running.
fn corrupt_lease_file_is_skipped(c: &mut Cluster, subnets: &std::path::Path) {
    std::fs::write(subnets.join("10.244.251.0-24"), "{not json").unwrap();
    harness::wait_for(
        "a warning about the corrupt file",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&c.nodes[0].log)
                .ok()
                .filter(|l| l.contains("10.244.251.0-24"))
                .map(|_| ())
        },
    );
    assert!(
        c.nodes
            .iter_mut()
            .all(|n| matches!(n.child.as_mut().map(|ch| ch.try_wait()), Some(Ok(None)))),
        "a node died"
    );
}

/// Pings across a store outage, then removes the corrupt file and waits for convergence.
fn store_outage_keeps_forwarding(c: &Cluster, subnets: &std::path::Path) {
    let aside = c.lease_dir().join("subnets.away");
    std::fs::rename(subnets, &aside).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let during = c.ping_all();
    std::fs::rename(&aside, subnets).unwrap();
    assert!(
        during.is_empty(),
        "pings failed during the store outage:\n{}",
        during.join("\n")
    );
    std::fs::remove_file(subnets.join("10.244.251.0-24")).unwrap();
    c.wait_converged();
}

/// Deletes node 3's lease: node 1 answers net unreachable for it and node 3 exits.
fn revoked_node_is_unreachable_and_stops(c: &mut Cluster, subnets: &std::path::Path) {
    let victim = c
        .leases()
        .into_iter()
        .find(|l| l.attrs.public_ip == c.nodes[2].ip)
        .unwrap();
    let gone = victim.subnet.expect("an IPv4 lease").to_string();
    let target = c.nodes[2].pods[0].ip.to_string();
    std::fs::remove_file(subnets.join(victim.key())).unwrap();
    until_tables(c, "the revoked lease to leave the tables", |t| {
        !t.contains(&gone)
    });
    let o = try_in_ns(&c.nodes[0].pods[0].ns, &format!("ping -c 1 -W 2 {target}"));
    assert!(
        out(&o).contains("Destination Net Unreachable"),
        "expected ICMP net unreachable: {}",
        out(&o)
    );
    assert!(c.metrics(0)["weft_icmp_sent_total"] >= 1);
    let (ok, log) = c.wait_exit(2, Duration::from_secs(10));
    assert!(
        !ok && log.contains("revoked"),
        "node 3 should stop on revocation: {log}"
    );
}

/// Inner IPv4/UDP to `dst:7` (no listener: the pod's kernel counts it in Udp NoPorts).
fn inner_udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .udp(4000, 7)
        .write(&mut v, b"weft-inject")
        .unwrap();
    v
}

fn vxlan_payload(vni: u32, dst_mac: weft::wire::MacAddr, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 22];
    weft::wire::vxlan::Repr { vni }.emit(&mut v);
    weft::wire::ethernet::Repr {
        dst: dst_mac,
        src: weft::wire::MacAddr([2, 0, 0, 0, 0, 9]),
        ethertype: 0x0800,
    }
    .emit(&mut v[8..]);
    v.extend_from_slice(inner);
    v
}

fn udp_no_ports(ns: &str) -> u64 {
    let snmp = String::from_utf8_lossy(&ns_run(ns, &["cat", "/proc/net/snmp"]).stdout).into_owned();
    let rows: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let names: Vec<&str> = rows[0].split_whitespace().collect();
    let vals: Vec<&str> = rows[1].split_whitespace().collect();
    let i = names.iter().position(|n| *n == "NoPorts").unwrap();
    vals[i].parse().unwrap()
}

fn inject(ns: &str, payload: &[u8], dst: Ipv4Addr) {
    inject_tos(ns, payload, dst, 0);
}

/// Two weft nodes with a pod each and a host without a lease, converged.
fn two_nodes_and_a_stranger() -> (Cluster, String) {
    let mut c = Cluster::new(weft(), VXLAN);
    for i in 0..2 {
        c.add_node(Kind::Weft);
        c.start_weft(i, &[]);
        c.add_pod(i, None);
    }
    let stranger = c.add_host("x", 77);
    c.wait_converged();
    (c, stranger)
}

/// Node 2's drops for `r`; "unknown_sender" adds the kernel sender filter's socket drops.
fn node2_drops(c: &Cluster, r: &str) -> u64 {
    let m = c.metrics(1);
    let own = m[&format!("weft_drops_total{{reason=\"{r}\"}}")];
    if r == "unknown_sender" {
        own + m["weft_socket_drops_total"]
    } else {
        own
    }
}

#[test]
fn injected_and_spoofed_packets_never_reach_a_pod() {
    let (c, stranger) = two_nodes_and_a_stranger();
    let (pod1, pod2) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let n2 = c
        .leases()
        .into_iter()
        .find(|l| l.attrs.public_ip == c.nodes[1].ip)
        .unwrap();
    let mac2 = n2.attrs.vxlan_data().unwrap().vtep_mac;
    let node2 = c.nodes[1].ip;
    // A datagram from a host without a lease is dropped by the kernel (the sender filter,
    // counted on the socket) or, with --udp-sender-filter=false, by weft as unknown_sender:
    // "unknown_sender" here counts both (node2_drops).
    let n1ns = c.nodes[0].ns.clone();

    // Control: a well-formed frame from node 1 reaches the pod, so the counter can move.
    let before = udp_no_ports(&pod2.ns);
    inject(
        &n1ns,
        &vxlan_payload(1, mac2, &inner_udp(pod1.ip, pod2.ip)),
        node2,
    );
    harness::wait_for(
        "the control packet to reach the pod",
        Duration::from_secs(5),
        || (udp_no_ports(&pod2.ns) == before + 1).then_some(()),
    );

    let base = ["unknown_sender", "wrong_vni", "spoofed_source"].map(|r| node2_drops(&c, r));
    // From a host with no lease; with a wrong VNI; with an inner source node 1 does not own.
    inject(
        &stranger,
        &vxlan_payload(1, mac2, &inner_udp(pod1.ip, pod2.ip)),
        node2,
    );
    inject(
        &n1ns,
        &vxlan_payload(2, mac2, &inner_udp(pod1.ip, pod2.ip)),
        node2,
    );
    inject(
        &n1ns,
        &vxlan_payload(
            1,
            mac2,
            &inner_udp(
                Ipv4Addr::from(u32::from(n2.subnet.expect("an IPv4 lease").network()) + 99),
                pod2.ip,
            ),
        ),
        node2,
    );
    inject(
        &n1ns,
        &vxlan_payload(1, mac2, &inner_udp(Ipv4Addr::new(172, 16, 0, 1), pod2.ip)),
        node2,
    );
    let after = harness::wait_for("the drop counters", Duration::from_secs(5), || {
        let now = ["unknown_sender", "wrong_vni", "spoofed_source"].map(|r| node2_drops(&c, r));
        (now[0] > base[0] && now[1] > base[1] && now[2] >= base[2] + 2).then_some(now)
    });
    // Give any stray delivery time to land, then check none did.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        udp_no_ports(&pod2.ns),
        before + 1,
        "an injected packet reached the pod"
    );
    harness::figure(&format!(
        "injection drops on node 2: unknown_sender +{}, wrong_vni +{}, spoofed_source +{}",
        after[0] - base[0],
        after[1] - base[1],
        after[2] - base[2]
    ));
}

#[test]
fn interop_with_a_kernel_vxlan_node_configured_as_flanneld_does() {
    let mut c = Cluster::new(weft(), VXLAN);
    let (to_kernel, from_kernel) = c.mixed_with_kernel_node("10.244.200.0/24", 0);
    // Kernel vxlan to kernel vxlan is not part of this cluster; weft to weft is above.
    harness::figure(&format!(
        "interop iperf3 TCP: weft pod -> kernel-vxlan pod {:.2} Gbit/s ({} retr), kernel-vxlan pod -> weft pod {:.2} Gbit/s ({} retr)",
        to_kernel.bps / 1e9,
        to_kernel.loss,
        from_kernel.bps / 1e9,
        from_kernel.loss
    ));
}

#[test]
fn bad_flags_and_configs_are_refused_with_a_reason() {
    let mut c = Cluster::new(weft(), r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#);
    c.add_node(Kind::Weft);
    let ns = c.nodes[0].ns.clone();
    let dir = c.lease_dir().display().to_string();
    let w = weft().display().to_string();
    // The underlay is chosen after the config is read (it says which families), as
    // flanneld chooses it: a bad --iface shows with a good config.
    let good = c.dir.join("good-leases");
    let store = weft::store::file::FileStore::open(&good).unwrap();
    store
        .write_config(r#"{"Network":"10.244.0.0/16"}"#)
        .unwrap();
    let good = good.display().to_string();
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["run", "--lease-dir", &dir, "--iface", "eth0"],
            "SubnetLen 31 is too long",
        ),
        (
            vec!["run", "--lease-dir", &good, "--iface", "nosuch0"],
            "--iface nosuch0: no such interface",
        ),
        (
            vec!["run", "--lease-dir", &dir, "--workers", "0"],
            "--workers",
        ),
        (
            vec![
                "run",
                "--lease-dir",
                &dir,
                "--tun-name",
                "a-very-long-tun-name",
            ],
            "not a valid interface name",
        ),
    ];
    for (args, want) in cases {
        let mut v = vec![w.as_str()];
        v.extend(args.iter());
        let o = ns_run(&ns, &v);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(
            out(&o).contains(want),
            "{args:?}: {} lacks {want:?}",
            out(&o)
        );
    }
    // The same through the environment, as WEFT_<FLAG>.
    let lease_dir = format!("WEFT_LEASE_DIR={good}");
    let o = ns_run(&ns, &["env", "WEFT_IFACE=nosuch1", &lease_dir, &w, "run"]);
    assert!(out(&o).contains("--iface nosuch1"), "{}", out(&o));
    // And as flanneld's FLANNELD_<FLAG>, which a flanneld unit file sets.
    let o = ns_run(
        &ns,
        &["env", "FLANNELD_IFACE=nosuch2", &lease_dir, &w, "run"],
    );
    assert!(out(&o).contains("--iface nosuch2"), "{}", out(&o));
    // Nothing was created.
    assert!(!ns_run(&ns, &["ip", "link", "show", "weft0"])
        .status
        .success());
}

/// An inner IPv4/UDP packet with ECN bits `ecn`, built by etherparse.
fn inner_udp_ecn(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, ecn: u8, data: &[u8]) -> Vec<u8> {
    let mut ip =
        etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, src.octets(), dst.octets())
            .unwrap();
    ip.ecn = etherparse::IpEcn::try_new(ecn).unwrap();
    let mut v = Vec::new();
    etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .udp(4000, dport)
        .write(&mut v, data)
        .unwrap();
    v
}

/// Sends `payload` to `dst:8472` from `ns` with the outer TOS byte `tos` (a congested
/// router's CE mark, say).
fn inject_tos(ns: &str, payload: &[u8], dst: Ipv4Addr, tos: u8) {
    send_datagram(ns, payload, (dst, 8472), 0, tos);
}

/// Sends one UDP datagram from `ns` (from port `sport`, 0: any) to `to`, with IP_TOS `tos`.
fn send_datagram(ns: &str, payload: &[u8], to: (Ipv4Addr, u16), sport: u16, tos: u8) {
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    let code = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.IPPROTO_IP,socket.IP_TOS,int(sys.argv[4]))\ns.bind(('',int(sys.argv[5])))\ns.sendto(bytes.fromhex(sys.argv[1]),(sys.argv[2],int(sys.argv[3])))";
    let (ip, port, tos, sport) = (
        to.0.to_string(),
        to.1.to_string(),
        tos.to_string(),
        sport.to_string(),
    );
    let o = ns_run(ns, &["python3", "-c", code, &hex, &ip, &port, &tos, &sport]);
    assert!(o.status.success(), "send failed: {}", out(&o));
}

/// flanneld's udp backend stores its lease with only the public IP (BackendType and
/// BackendData are omitempty): weft used to file that as another backend's lease, answer
/// the node's pods with net unreachable and drop its datagrams as wrong_backend. Node 2
/// here is such a node: its lease written as flanneld writes it (the literal value, not
/// through weft), and its side of the wire spoken as flannel's proxy speaks it (raw IPv4
/// in UDP from port 8285 to 8285).
#[test]
fn a_stock_flanneld_udp_lease_is_a_udp_peer_both_ways() {
    const FLANNELD_UDP_LEASE: &str = r#"{"PublicIP":"192.0.2.2","PublicIPv6":null}"#;
    let mut c = Cluster::new(weft(), UDP);
    c.add_node(Kind::Weft);
    c.start_weft(0, &[]);
    let pod1 = c.add_pod(0, None);
    c.add_node(Kind::Weft); // a namespace at 192.0.2.2; weft is not started there
    let n2 = c.nodes[1].ns.clone();
    let subnet2: ipnet::Ipv4Net = "10.244.200.0/24".parse().unwrap();
    let expires =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600));
    std::fs::write(
        c.lease_dir().join("subnets/10.244.200.0-24"),
        format!("{FLANNELD_UDP_LEASE}\nexpiration={expires}\n"),
    )
    .unwrap();
    harness::wait_for(
        "node 1 to see the flanneld lease",
        Duration::from_secs(5),
        || c.table(0).contains(&subnet2).then_some(()),
    );

    // Outbound: a pod's datagram for node 2's subnet leaves in flannel's udp format.
    let cap = harness::Capture::start(
        &n2,
        "eth0",
        "udp dst port 8285",
        &c.dir.join("capture-n2.pcap"),
    );
    let code = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(3): s.sendto(b'to-flanneld',(sys.argv[1],9999))";
    let o = ns_run(&pod1.ns, &["python3", "-c", code, "10.244.200.5"]);
    assert!(o.status.success(), "{}", out(&o));
    std::thread::sleep(Duration::from_millis(300));
    let frames = cap.stop();
    let carried = frames
        .iter()
        .filter(|f| {
            f.len() > 14 + 28 + 20
                && f[14 + 12..14 + 16] == [192, 0, 2, 1]
                && f[14 + 20..14 + 24] == [0x20, 0x5d, 0x20, 0x5d] // 8285 -> 8285
                && f[14 + 28 + 16..14 + 28 + 20] == [10, 244, 200, 5]
                && f.windows(11).any(|w| w == b"to-flanneld")
        })
        .count();
    assert!(
        carried >= 1,
        "no udp-format datagram reached node 2 ({} frames; tcpdump: {}); node 1's counters: {:?}",
        frames.len(),
        std::fs::read_to_string(c.dir.join("capture-n2.log")).unwrap_or_default(),
        c.metrics(0)
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect::<Vec<_>>()
    );

    // Inbound: what flannel's proxy sends (raw IPv4, 8285 -> 8285) reaches the pod.
    let before = udp_no_ports(&pod1.ns);
    let inner = inner_udp(Ipv4Addr::new(10, 244, 200, 5), pod1.ip);
    send_datagram(&n2, &inner, (c.nodes[0].ip, 8285), 8285, 0);
    harness::wait_for(
        "the flanneld node's packet to reach the pod",
        Duration::from_secs(5),
        || (udp_no_ports(&pod1.ns) == before + 1).then_some(()),
    );
    harness::figure(&format!(
        "flanneld udp lease {FLANNELD_UDP_LEASE}: {carried} datagram(s) carried to it, its packet delivered"
    ));
}

/// The bug this guards against: every datagram left 8472 -> 8472 with TOS 0, so a
/// receiving NIC's RSS and every ECMP hop saw one flow per node pair, and ECN marks were
/// lost at the tunnel. Captured on the underlay, as a person would check it.
#[test]
fn outer_headers_carry_flow_source_ports_and_ecn_both_ways() {
    let c = two_nodes(VXLAN);
    let (pod1, pod2) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let n1 = (c.nodes[0].ns.clone(), c.nodes[0].ip);
    let n2 = (c.nodes[1].ns.clone(), c.nodes[1].ip);

    // Outbound: a few ECT(0) datagrams and 8 TCP flows from pod 1, captured on node 1.
    let frames = capture_ect0_and_tcp_flows(&c, &pod1, &pod2, &n1.0);
    let (datagrams, ports) = check_outbound_ports_and_ecn(&c, &frames, &n1, &n2);

    // Inbound: CE outside reaches the pod as CE inside (ECT(0) inner), and condemns a
    // not-ECT inner packet (RFC 6040), which is counted.
    check_inbound_ce(&c, &pod1, &pod2, &n1, &n2);
    harness::figure(&format!(
        "underlay capture: {datagrams} frames (GSO batches count once) of 9 TCP flows and 1 UDP flow left node 1 from {} source ports ({}-{}), none 8472; ECT(0) kept outside, CE delivered inside",
        ports.len(),
        ports.first().unwrap(),
        ports.last().unwrap()
    ));
}

/// Captures on node 1's underlay while pod 1 sends 5 ECT(0) datagrams and 8 TCP flows.
fn capture_ect0_and_tcp_flows(c: &Cluster, pod1: &Pod, pod2: &Pod, n1ns: &str) -> Vec<Vec<u8>> {
    let cap = harness::Capture::start(
        n1ns,
        "eth0",
        "udp dst port 8472",
        &c.dir.join("capture-n1.pcap"),
    );
    let code = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.IPPROTO_IP,socket.IP_TOS,2)\nfor i in range(5): s.sendto(b'weft-ect0',(sys.argv[1],9))";
    let o = ns_run(&pod1.ns, &["python3", "-c", code, &pod2.ip.to_string()]);
    assert!(o.status.success(), "ECT(0) sender failed: {}", out(&o));
    // After the marked datagrams, so tcpdump's backlog at the end cannot hide them.
    harness::iperf3_json(pod1, pod2, &["-t", "2", "-P", "8"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cap.stop()
}

/// Checks the captured frames' source ports and outer ECN; returns (datagrams, ports).
fn check_outbound_ports_and_ecn(
    c: &Cluster,
    frames: &[Vec<u8>],
    n1: &(String, Ipv4Addr),
    n2: &(String, Ipv4Addr),
) -> (i32, std::collections::BTreeSet<u16>) {
    let range = harness::ns_sh(&n1.0, &["sysctl", "-n", "net.ipv4.ip_local_port_range"]);
    let r: Vec<u16> = range
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let mut ports = std::collections::BTreeSet::new();
    let (mut ect0, mut datagrams) = (0, 0);
    for f in frames {
        // Ethernet, outer IPv4 (no options from a UDP socket), UDP.
        if f.len() < 14 + 20 + 8 + 8 + 14 + 20 || f[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &f[14..];
        if ip[12..16] != n1.1.octets() || ip[16..20] != n2.1.octets() || ip[9] != 17 {
            continue;
        }
        datagrams += 1;
        let sport = u16::from_be_bytes([ip[20], ip[21]]);
        ports.insert(sport);
        let inner = &ip[20 + 8 + 8 + 14..];
        if f.windows(9).any(|w| w == b"weft-ect0") {
            assert_eq!(inner[1] & 3, 2, "the pod's packet was not ECT(0) inside");
            assert_eq!(
                ip[1] & 3,
                2,
                "a pod's ECT(0) packet left with outer TOS {:#x}",
                ip[1]
            );
            // A veth carries a UDP GSO send whole: one IP and UDP header, then the
            // datagrams' payloads (vxlan 8 + ethernet 14 + IPv4 20 + UDP 8 + 9 bytes each).
            let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            ect0 += (tot - 28) / (8 + 14 + 20 + 8 + 9);
        }
    }
    assert!(datagrams > 100, "captured only {datagrams} datagrams");
    assert_eq!(
        ect0,
        5,
        "captured {ect0} of the 5 ECT(0) datagrams; node 1 log: {}",
        std::fs::read_to_string(&c.nodes[0].log).unwrap_or_default()
    );
    assert!(
        !ports.contains(&8472),
        "datagrams left from port 8472: {ports:?}"
    );
    assert!(
        ports.iter().all(|p| (r[0]..=r[1]).contains(p)),
        "source ports outside the local port range {r:?}: {ports:?}"
    );
    assert!(
        ports.len() >= 3,
        "9 TCP flows used only source ports {ports:?}"
    );
    (datagrams, ports)
}

/// Injects CE-marked frames from node 2: CE reaches pod 1 on ECT(0), not-ECT is dropped.
fn check_inbound_ce(
    c: &Cluster,
    pod1: &Pod,
    pod2: &Pod,
    n1: &(String, Ipv4Addr),
    n2: &(String, Ipv4Addr),
) {
    let mac1 = c
        .leases()
        .into_iter()
        .find(|l| l.attrs.public_ip == n1.1)
        .unwrap()
        .attrs
        .vxlan_data()
        .unwrap()
        .vtep_mac;
    let recv = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.IPPROTO_IP,13,1)\ns.bind(('0.0.0.0',9999))\ns.settimeout(10)\nwhile True:\n  d,anc,_,_=s.recvmsg(2048,socket.CMSG_SPACE(4))\n  t=[a[2][0] for a in anc if a[0]==socket.IPPROTO_IP and a[1]==socket.IP_TOS]\n  print(d.decode(),t[0] if t else -1,flush=True)\n  if d==b'end': break";
    let receiver = std::process::Command::new("ip")
        .args(["netns", "exec", &pod1.ns, "python3", "-c", recv])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    harness::wait_for("the receiver", Duration::from_secs(5), || {
        (!ns_run(&pod1.ns, &["ss", "-Hlun", "sport = :9999"])
            .stdout
            .is_empty())
        .then_some(())
    });
    let drops = |c: &Cluster| c.metrics(0)["weft_drops_total{reason=\"ecn_ce_not_ect\"}"];
    let before = drops(c);
    for (ecn, tos, what) in [(0, 3, "not-ect-ce"), (2, 3, "ect0-ce"), (0, 0, "end")] {
        let pkt = inner_udp_ecn(pod2.ip, pod1.ip, 9999, ecn, what.as_bytes());
        inject_tos(&n2.0, &vxlan_payload(1, mac1, &pkt), n1.1, tos);
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = receiver.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&got.stdout).into_owned();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        ["ect0-ce 3", "end 0"],
        "pod 1 received (payload, TOS): {lines}{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(
        drops(c),
        before + 1,
        "the CE-marked not-ECT packet was not counted"
    );
}

/// Someone deletes weft's TUN, or sets it down: weft notices, says so, and forwards again.
/// (It used to spin on the dead descriptor at ~98 % CPU, log nothing and never forward
/// again.) The issue asks for traffic back within 5 s; the deadline here is that bound.
#[test]
fn a_deleted_or_downed_tun_is_noticed_and_traffic_comes_back() {
    let mut c = two_nodes(VXLAN);
    let (p1, p2) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let n1 = c.nodes[0].ns.clone();
    let dst = p2.ip.to_string();
    let ping = || {
        ns_run(&p1.ns, &["ping", "-c", "1", "-W", "1", &dst])
            .status
            .success()
    };
    assert!(ping(), "no traffic before the test");
    for (what, cmd) in [
        ("deleted", "link del weft0"),
        ("set down", "link set weft0 down"),
    ] {
        harness::ip(&n1, cmd);
        let t = Instant::now();
        harness::wait_for(
            &format!("pod traffic after weft0 was {what}"),
            Duration::from_secs(5),
            || ping().then_some(()),
        );
        harness::figure(&format!(
            "weft0 {what}: pod-to-pod ping answered again after {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    assert!(log.contains("recreating the dataplane"), "{log}");
    assert!(log.contains("was set down: set it up"), "{log}");
    assert!(
        c.stop_weft(0),
        "weft did not stop cleanly after the repairs:\n{log}"
    );
}

/// flanneld's interface selection and a node behind NAT. Node 1's eth0 has two addresses
/// and weft is told `--iface nosuch0 --iface 192.0.2.51`: the first that exists wins and an
/// IP is what the lease advertises, not the link's first address. Node 2 sits behind a NAT
/// router (private 192.168.102.2, public 192.0.2.102) and runs with `--public-ip
/// 192.0.2.102`, an address no interface of its has: the lease advertises it while the
/// sockets bind the private one, and pods on both nodes reach each other through the NAT.
#[test]
fn iface_by_ip_and_a_public_ip_behind_nat_are_what_leases_advertise() {
    let mut c = Cluster::new(weft(), VXLAN);
    let a = c.add_node(Kind::Weft);
    harness::ip(&c.nodes[a].ns, "addr add 192.0.2.51/24 dev eth0");
    c.nodes[a].ip = Ipv4Addr::new(192, 0, 2, 51);
    c.start_weft(a, &["--iface", "nosuch0", "--iface", "192.0.2.51"]);
    let b = c.add_node_behind_nat(102, 8472);
    c.start_weft(b, &["--iface", "eth0", "--public-ip", "192.0.2.102"]);
    c.add_pod(a, None);
    c.add_pod(b, None);
    c.wait_converged();
    let advertised: Vec<Ipv4Addr> = c.leases().iter().map(|l| l.attrs.public_ip).collect();
    assert!(
        advertised.contains(&Ipv4Addr::new(192, 0, 2, 51))
            && advertised.contains(&Ipv4Addr::new(192, 0, 2, 102)),
        "leases advertise {advertised:?}"
    );
    let failed = c.ping_all();
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));
    let (pa, pb) = (c.nodes[a].pods[0].clone(), c.nodes[b].pods[0].clone());
    let there = iperf3(&pa, &pb, 1, None);
    let back = iperf3(&pb, &pa, 1, None);
    // Both ways must carry a real stream, not a trickle: with tunnel GSO through the NAT
    // the NATed node's stream was once 0.00 Gbit/s (a few KB in a second).
    assert!(
        there.bytes > 10e6 && back.bytes > 10e6,
        "in {} B, out {} B",
        there.bytes,
        back.bytes
    );
    harness::figure(&format!(
        "node behind NAT (--public-ip): iperf3 TCP {:.2} Gbit/s in, {:.2} Gbit/s out",
        there.bps / 1e9,
        back.bps / 1e9
    ));
}

/// Checks one captured frame (Ethernet onwards) as a wire would see it: outer IPv4 with
/// TTL 64, DF clear and a valid checksum, a complete outer UDP checksum, and a valid inner
/// IPv4 and (for TCP) TCP checksum, the inner packet starting at `inner` (64 for VXLAN, 42
/// for flannel's udp format). Returns the outer IPv4 total length.
fn check_wire_frame(f: &[u8], inner: usize) -> Result<usize, String> {
    use weft::wire::checksum::{fold, pseudo_header_v4, sum};
    let be = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
    let ip4 = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
    if f.len() < inner + 20 {
        return Err(format!("short frame of {} bytes", f.len()));
    }
    let tot = be(16) as usize;
    if f[14] != 0x45 || tot != f.len() - 14 {
        return Err(format!("outer IPv4 header {:02x}, total {tot}", f[14]));
    }
    if f[22] != 64 || be(20) & 0x4000 != 0 {
        return Err(format!("outer TTL {} / flags {:#x}", f[22], be(20)));
    }
    if weft::wire::checksum::checksum(&f[14..34]) != 0 {
        return Err("outer IPv4 checksum".into());
    }
    let udp = &f[34..];
    let ulen = be(38);
    if be(40) == 0 || !fold(sum(udp, pseudo_header_v4(ip4(26), ip4(30), 17, ulen))) != 0 {
        return Err(format!("outer UDP checksum {:#06x}", be(40)));
    }
    let ihl = (f[inner] & 0x0f) as usize * 4;
    if weft::wire::checksum::checksum(&f[inner..inner + ihl]) != 0 {
        return Err("inner IPv4 checksum".into());
    }
    if f[inner + 9] == 6 {
        let l4 = &f[inner + ihl..];
        let s = pseudo_header_v4(ip4(inner + 12), ip4(inner + 16), 6, l4.len() as u16);
        if !fold(sum(l4, s)) != 0 {
            return Err("inner TCP checksum".into());
        }
    }
    Ok(tot)
}

#[test]
fn tunnel_gso_leaves_segmenting_to_the_kernel_and_the_wire_is_kernel_vxlans() {
    tunnel_gso_case(VXLAN, 64, "vxlan", "8472");
}

#[test]
fn tunnel_gso_carries_flannels_udp_format_too() {
    tunnel_gso_case(UDP, 42, "udp", "8285");
}

/// Checks every captured frame with [`check_wire_frame`]; returns how many are 1500 bytes.
fn check_wire_frames(frames: &[Vec<u8>], inner: usize) -> usize {
    let mut full = 0;
    for (i, f) in frames.iter().enumerate() {
        match check_wire_frame(f, inner) {
            Ok(tot) => {
                assert!(
                    tot <= 1500,
                    "frame {i}: {tot} bytes on a 1500-byte underlay"
                );
                full += usize::from(tot == 1500);
            }
            Err(e) => panic!("frame {i} of {}: {e}", frames.len()),
        }
    }
    assert!(
        full > 100,
        "only {full} full-size frames among {}",
        frames.len()
    );
    full
}

/// Tunnel GSO on a two-node cluster of `conf` (inner packets at `inner` in each frame,
/// the backend port `port`): node 1 hands super-packets to the kernel and its wire is
/// checked; node 2, with rp_filter set, falls back to splitting and says why.
fn tunnel_gso_case(conf: &str, inner: usize, label: &str, port: &str) {
    let mut c = Cluster::new(weft(), conf);
    c.add_node(Kind::Weft);
    c.add_node(Kind::Weft);
    // Node 2 filters reverse paths: frames injected with its own address as source would be
    // dropped there, so it must split in userspace instead, and say why.
    in_ns(&c.nodes[1].ns, "sysctl -qw net.ipv4.conf.all.rp_filter=1");
    for i in 0..2 {
        c.start_weft(i, &[]);
        c.add_pod(i, None);
    }
    c.wait_converged();
    // Node 1 drops what FORWARD does not accept, as Docker leaves a node: the injected
    // frames are forwarded, so they leave only through weft's accept for the TAP.
    in_ns(&c.nodes[0].ns, "iptables -P FORWARD DROP");
    // Node 1's underlay as a NIC without tunnel offloads: the kernel segments in software
    // and puts final checksums on the wire, where a veth would leave them partial.
    in_ns(
        &c.nodes[0].ns,
        "ethtool -K eth0 tx off tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off",
    );
    let file = c.dir.join(format!("tunnel-gso-{label}.pcap"));
    let cap = harness::Capture::start_with(
        &c.nodes[0].ns,
        "eth0",
        &format!("udp dst port {port} and src host 192.0.2.1"),
        &file,
        0,
        Some(3000),
    );
    let (a, b) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let there = iperf3(&a, &b, 2, None);
    let frames = cap.stop();
    let back = iperf3(&b, &a, 2, None);
    assert!(there.bytes > 0.0 && back.bytes > 0.0);

    let (m1, m2) = (c.metrics(0), c.metrics(1));
    let whole = m1["weft_tunnel_gso_frames_total"];
    assert_eq!(
        m2["weft_tunnel_gso_frames_total"], 0,
        "node 2 injected despite rp_filter"
    );
    // The offloads-off run (./scripts/test's second pass) has no TSO reads to hand over:
    // then only the wire is checked, as the userspace split and UDP GSO leave it.
    if std::env::var("WEFT_TUN_OFFLOAD").is_ok_and(|v| v == "false") {
        assert_eq!(whole, 0, "super-packets handed over with TUN offloads off");
    } else {
        assert!(
            whole > 0,
            "node 1 never handed a super-packet to the kernel: {m1:?}"
        );
        let log2 = std::fs::read_to_string(&c.nodes[1].log).unwrap_or_default();
        assert!(
            log2.contains("tunnel GSO unavailable") && log2.contains("rp_filter"),
            "node 2 did not say why it splits: {log2}"
        );
    }
    let full = check_wire_frames(&frames, inner);
    harness::figure(&format!(
        "tunnel GSO ({label}): {whole} super-packets handed whole to the kernel; {} captured frames ({full} of 1500 bytes) all with TTL 64, DF clear and complete checksums; iperf3 {:.2} Gbit/s whole, {:.2} Gbit/s split (rp_filter node)",
        frames.len(),
        there.bps / 1e9,
        back.bps / 1e9
    ));
}

#[test]
fn a_storm_to_a_leaseless_subnet_gets_icmp_errors_at_the_kernels_rate() {
    use weft::encap::ratelimit::PER_DEST_BURST;
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_node(Kind::Weft);
    c.start_weft(0, &[]);
    let pod = c.add_pod(0, None);
    let cap = harness::Capture::start(
        &pod.ns,
        "eth0",
        "icmp[icmptype] == icmp-unreach",
        &c.dir.join("storm.pcap"),
    );
    let before = c.metrics(0);
    // 20,000 datagrams to an address in the cluster network that no lease holds (weft
    // leases among the first 100 /24s): each one an ICMP net unreachable without a limit.
    let storm = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(20000):\n  try: s.sendto(b'x'*32,('10.244.250.1',9))\n  except OSError: pass";
    let t = Instant::now();
    assert!(ns_run(&pod.ns, &["python3", "-c", storm]).status.success());
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let seen = cap.stop().len() as u64;
    let after = c.metrics(0);
    let delta = |k: &str| after[k] - before.get(k).copied().unwrap_or(0);
    let (sent, limited, no_lease) = (
        delta("weft_icmp_sent_total"),
        delta("weft_icmp_ratelimited_total"),
        delta("weft_drops_total{reason=\"no_lease\"}"),
    );
    // One destination (the pod): its burst, then one a second, as the kernel's
    // icmp_ratelimit allows; every other packet is counted, not answered.
    let limit = PER_DEST_BURST + secs.ceil() as u64 + 1;
    assert!(no_lease > 1000, "only {no_lease} packets reached weft");
    assert_eq!(
        sent + limited,
        no_lease,
        "every no-lease drop is answered or limited"
    );
    assert!(
        sent >= PER_DEST_BURST && sent <= limit,
        "{sent} errors sent in {secs:.2} s (limit {limit})"
    );
    assert!(
        seen <= limit && seen >= PER_DEST_BURST,
        "the pod saw {seen} net unreachables (weft counted {sent})"
    );
    harness::figure(&format!(
        "ICMP storm: {no_lease} packets to a leaseless subnet in {secs:.2} s -> {sent} net unreachables ({limited} rate-limited)"
    ));
}

/// `CapEff`, `CapPrm`, `CapBnd`, `CapInh`, `CapAmb` and `NoNewPrivs` of one thread, from
/// `/proc/<pid>/task/<tid>/status` (the kernel's view, not weft's).
fn thread_caps(pid: u32, tid: &str) -> std::collections::HashMap<String, u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
    s.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim();
            match k {
                "CapEff" | "CapPrm" | "CapBnd" | "CapInh" | "CapAmb" => {
                    Some((k.to_string(), u64::from_str_radix(v, 16).ok()?))
                }
                "NoNewPrivs" => Some((k.to_string(), v.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// CAP_NET_ADMIN and CAP_NET_RAW, as a capability mask.
const NET_ADMIN_RAW: u64 = (1 << 12) | (1 << 13);

#[test]
fn a_running_node_keeps_only_net_admin_and_net_raw_and_still_repairs_itself() {
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_node(Kind::Weft);
    c.add_node(Kind::Weft);
    // Node 1 starts as deploy/weft.service starts it: root, but with only CAP_NET_ADMIN and
    // CAP_NET_RAW in its bounding set (CapabilityBoundingSet=), so set-up itself must
    // need no more. `setpriv` then execs weft: its pid is weft's.
    c.launcher = words("setpriv --bounding-set -all,+net_admin,+net_raw --inh-caps -all --")
        .into_iter()
        .map(String::from)
        .collect();
    c.start_weft(0, &[]);
    c.launcher.clear();
    c.start_weft(1, &[]);
    for i in 0..2 {
        c.add_pod(i, None);
    }
    c.wait_converged();
    let pid = c.nodes[0].child.as_ref().unwrap().id();
    only_the_main_thread_keeps_net_admin_and_net_raw(pid);
    let failed = c.ping_all();
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));

    // What it kept is what its repairs need: a TUN recreated (CAP_NET_ADMIN) and
    // flanneld's rules restored by iptables-restore (run with CAP_NET_ADMIN and CAP_NET_RAW).
    repairs_succeed_and_new_workers_hold_nothing(&c, pid);
}

/// Waits for weft (`pid`) to drop its capabilities, then checks every thread's set.
fn only_the_main_thread_keeps_net_admin_and_net_raw(pid: u32) {
    // The drop happens right after the ready line; give it a moment.
    harness::wait_for("the capabilities to drop", Duration::from_secs(5), || {
        (thread_caps(pid, &pid.to_string()).get("CapEff") == Some(&NET_ADMIN_RAW)).then_some(())
    });
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(
        tids.len() >= 3,
        "expected the control thread and two workers: {tids:?}"
    );
    for tid in &tids {
        let t = thread_caps(pid, tid);
        let want = if *tid == pid.to_string() {
            NET_ADMIN_RAW
        } else {
            0
        };
        for k in ["CapEff", "CapPrm"] {
            assert_eq!(t[k], want, "thread {tid} {k}: {t:?}");
        }
        assert_eq!(t["CapInh"], 0, "thread {tid}: {t:?}");
        assert_eq!(t["CapAmb"], 0, "thread {tid}: {t:?}");
        assert_eq!(t["NoNewPrivs"], 1, "thread {tid}: {t:?}");
        assert_eq!(
            t["CapBnd"] & !NET_ADMIN_RAW,
            0,
            "thread {tid} may regain more: {t:?}"
        );
    }
}

/// Deletes the TUN and flushes flanneld's rules: both come back, new workers hold nothing.
fn repairs_succeed_and_new_workers_hold_nothing(c: &Cluster, pid: u32) {
    let ns = c.nodes[0].ns.clone();
    in_ns(&ns, "ip link del weft0");
    in_ns(&ns, "iptables -t nat -F FLANNEL-POSTRTG");
    harness::wait_for(
        "the TUN and the rules repaired",
        Duration::from_secs(15),
        || {
            let nat = in_ns(&ns, "iptables-save -t nat");
            let rules = nat
                .lines()
                .filter(|l| l.starts_with("-A FLANNEL-POSTRTG"))
                .count();
            let tun = try_in_ns(&ns, "ip link show weft0").status.success();
            (tun && rules == 6).then_some(())
        },
    );
    harness::wait_for("pings after the repairs", Duration::from_secs(10), || {
        c.ping_all().is_empty().then_some(())
    });
    // The recreated workers hold nothing either.
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid = e.file_name().to_string_lossy().into_owned();
        if tid != pid.to_string() {
            assert_eq!(thread_caps(pid, &tid)["CapEff"], 0, "thread {tid}");
        }
    }
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    assert!(!log.contains("cannot drop capabilities"), "{log}");
}

/// An example binary built beside weft (`cargo build --all-targets`).
fn example(name: &str) -> std::path::PathBuf {
    harness::example_beside(weft(), name)
}

/// A host that holds no lease floods node 2 (random 1400-byte datagrams at 1.6 Gbit/s, or
/// `WEFT_TEST_FLOOD_MBIT`) while node 1's pod streams to node 2's, on both backends: the
/// stream goes on, nothing of the flood is delivered, all of it is counted, and none of it
/// is logged. What the flood costs the stream, against kernel vxlan under the same flood,
/// is measured by the bench: `netns-tests/bench --flood`.
#[test]
fn a_garbage_flood_from_a_leaseless_host_is_counted_and_never_delivered() {
    let vxlan = weft_under_flood("weft vxlan", VXLAN, 8472);
    let udp = weft_under_flood("weft udp", UDP, 8285);
    harness::figure(&format!(
        "garbage flood (random 1400 B datagrams, {} Mbit/s offered) from a leaseless host at a node under iperf3 TCP: {vxlan}; {udp}",
        flood_mbit()
    ));
}

/// Two weft nodes on `conf`, a pod each, and the flood at node 2's `port` during their
/// stream: the stream carries on, nothing of the flood is delivered, all of it is counted,
/// no log line. Returns what was counted, for the figure.
fn weft_under_flood(name: &str, conf: &str, port: u16) -> String {
    let mut c = Cluster::new(weft(), conf);
    c.add_weft_nodes(2, &[]);
    let host = c.add_host("flood", 200);
    let (a, b) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let before = c.metrics(1);
    let log_before = std::fs::metadata(&c.nodes[1].log).unwrap().len() as usize;
    // From 0.5 s before the stream (3 s, and iperf3's start) to after its end.
    let to = format!("{}:{port}", c.nodes[1].ip);
    let flood = Flood::start(&example("flood"), &host, &to, 5.0, &flood_mbit());
    std::thread::sleep(Duration::from_millis(500));
    let stream = iperf3(&a, &b, 3, None);
    let sent = flood.sent();
    std::thread::sleep(Duration::from_millis(300));
    let n = FloodCounts::between(&before, &c.metrics(1));
    assert!(
        stream.bytes > 0.0,
        "{name}: the pods' stream carried nothing under the flood"
    );
    // Nothing of it reached a pod: every received datagram was dropped, by weft (every
    // reason: random bytes mostly fail the VXLAN header checks before the sender is looked
    // at) or in the kernel, before weft, by its sender filter or a full buffer.
    assert!(
        n.counted() > sent / 2 && n.counted() <= sent,
        "{name}: sent {sent}, counted {} drops in weft ({} unknown sender) and {} in the kernel",
        n.dropped,
        n.unknown_sender,
        n.socket
    );
    let log = std::fs::read_to_string(&c.nodes[1].log).unwrap();
    let new_lines = log[log_before..].lines().count();
    assert!(
        new_lines < 5,
        "{name}: the flood was logged:\n{}",
        &log[log_before..]
    );
    format!(
        "{name} (port {port}, {sent} sent): pod stream {:.2} Gbit/s under it; {} dropped by the kernel for the socket, {} by weft ({} unknown_sender), {} inner packets delivered (the stream's)",
        stream.bps / 1e9,
        n.socket,
        n.dropped,
        n.unknown_sender,
        n.rx
    )
}

/// `Icmp: InEchos` of namespace `ns`: echo requests its kernel received.
fn in_echos(ns: &str) -> u64 {
    let o = ns_run(ns, &["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let icmp: Vec<&str> = text.lines().filter(|l| l.starts_with("Icmp:")).collect();
    let (names, values) = (icmp[0].split_whitespace(), icmp[1].split_whitespace());
    names
        .zip(values)
        .find(|(n, _)| *n == "InEchos")
        .and_then(|(_, v)| v.parse().ok())
        .expect("Icmp InEchos in /proc/net/snmp")
}

/// Frames sent for each forged case, and for the control.
const FRAMES_PER_CASE: u64 = 200;

#[test]
fn forged_vxlan_from_a_spoofed_known_peer_reaches_no_pod() {
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_weft_nodes(3, &[]);
    let host = c.add_host("forge", 200);
    let leases = c.leases();
    let lease = |i: usize| {
        leases
            .iter()
            .find(|l| l.attrs.public_ip == c.nodes[i].ip)
            .expect("every node holds a lease")
            .clone()
    };
    let mac = |i: usize| lease(i).attrs.vxlan_data().unwrap().vtep_mac.to_string();
    let pod = |i: usize| c.nodes[i].pods[0].ip.to_string();
    let (a_ip, b_ip) = (c.nodes[0].ip.to_string(), c.nodes[1].ip.to_string());
    let own = lease(0)
        .subnet
        .expect("an IPv4 lease")
        .hosts()
        .nth(8)
        .unwrap()
        .to_string();
    let forge_exe = example("forge").display().to_string();
    let forge = |outer: &str, vni: &str, dst_mac: &str, src: &str, dst: &str| {
        let args = format!(
            "{outer} {a_ip} {vni} {dst_mac} 0e:00:00:00:02:01 {src} {dst} {FRAMES_PER_CASE}"
        );
        let mut argv = vec![forge_exe.as_str()];
        argv.extend(words(&args));
        let o = ns_run(&host, &argv);
        assert!(o.status.success(), "forge: {}", out(&o));
        assert_eq!(out(&o).trim(), format!("sent {FRAMES_PER_CASE} frames"));
    };
    let pods: Vec<String> = (0..3).map(|i| c.nodes[i].pods[0].ns.clone()).collect();
    let echos = || pods.iter().map(|p| in_echos(p)).collect::<Vec<u64>>();
    // Every frame claims node 2's address (a peer node 1 knows, so the sender filter lets
    // it through) and is a well-formed VXLAN frame; each lies in one other way.
    let cases = forged_cases(&mac, &pod, &own);
    let start = echos();
    forged_frames_are_counted_by_reason(&c, &cases, &forge, &b_ip);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(echos(), start, "a forged frame reached a pod");
    // The control: a frame exactly like node 2's own (its pod to node 1's pod) cannot be
    // told from the real thing (VXLAN carries no authentication; neither kernel vxlan nor
    // weft can), and is delivered. It shows the count above would have seen a delivery.
    let rx = "weft_packets_total{direction=\"rx\"}";
    let before = c.metrics(0).get(rx).copied().unwrap_or(0);
    forge(&b_ip, "1", &mac(0), &pod(1), &pod(0));
    let delivered = harness::wait_for(
        "the control frames to arrive",
        Duration::from_secs(10),
        || {
            let e = echos()[0] - start[0];
            (e >= FRAMES_PER_CASE * 9 / 10).then_some(e)
        },
    );
    let rx_delta = c.metrics(0).get(rx).copied().unwrap_or(0) - before;
    assert!(
        rx_delta >= delivered,
        "weft delivered {rx_delta}, pod saw {delivered}"
    );
    harness::figure(&format!(
        "forged VXLAN from a spoofed known peer: {} kinds x {FRAMES_PER_CASE} frames, 0 reached a pod, each counted by reason; the control (a frame like the peer's own) {delivered}/{FRAMES_PER_CASE} delivered",
        cases.len()
    ));
}

/// One forged case: what it is, its VNI, MAC, inner source and destination, drop reason.
type ForgedCase = (
    &'static str,
    &'static str,
    String,
    String,
    String,
    &'static str,
);

/// The forged cases, each a well-formed VXLAN frame from node 2's address with one lie.
fn forged_cases(
    mac: &dyn Fn(usize) -> String,
    pod: &dyn Fn(usize) -> String,
    own: &str,
) -> [ForgedCase; 6] {
    [
        (
            "an inner source in a third node's subnet",
            "1",
            mac(0),
            pod(2),
            pod(0),
            "spoofed_source",
        ),
        (
            "an inner source in the receiver's own subnet",
            "1",
            mac(0),
            own.to_string(),
            pod(0),
            "spoofed_source",
        ),
        (
            "an inner source outside the cluster",
            "1",
            mac(0),
            "198.51.100.7".into(),
            pod(0),
            "spoofed_source",
        ),
        (
            "a relay to a third node's pod",
            "1",
            mac(0),
            pod(1),
            pod(2),
            "not_local",
        ),
        ("another VNI", "2", mac(0), pod(1), pod(0), "wrong_vni"),
        (
            "another VTEP's MAC",
            "1",
            mac(2),
            pod(1),
            pod(0),
            "wrong_dst_mac",
        ),
    ]
}

/// Sends each case's frames and checks node 1 counts all of them under its reason.
fn forged_frames_are_counted_by_reason(
    c: &Cluster,
    cases: &[ForgedCase],
    forge: &dyn Fn(&str, &str, &str, &str, &str),
    b_ip: &str,
) {
    for (what, vni, dmac, src, dst, reason) in cases {
        let key = format!("weft_drops_total{{reason=\"{reason}\"}}");
        let before = c.metrics(0).get(&key).copied().unwrap_or(0);
        forge(b_ip, vni, dmac, src, dst);
        let counted = harness::wait_for(
            "the forged frames to be counted",
            Duration::from_secs(10),
            || {
                let n = c.metrics(0).get(&key).copied().unwrap_or(0) - before;
                (n >= FRAMES_PER_CASE).then_some(n)
            },
        );
        assert_eq!(
            counted, FRAMES_PER_CASE,
            "{what}: counted {counted} as {reason}, sent {FRAMES_PER_CASE}"
        );
    }
}
