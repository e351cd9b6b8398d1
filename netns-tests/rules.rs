//! flanneld's traffic rules in nftables mode (`"EnableNFTables": true`), against flanneld's
//! own: the table its nftables manager makes, as `../shared/flannel-notes.md` transcribes
//! it from flanneld v0.28's source (`pkg/trafficmngr/nftables`), not as weft renders it.
//! Pods reach each other, egress is masqueraded, rules flushed or deleted by hand come
//! back, and a node switched between modes keeps no rule of the other. Root only.

#[path = "harness.rs"]
mod harness;

use std::time::Duration;

use harness::{ns_run, ns_sh, weft, Cluster, Kind};
use weft::store::file::FileStore;

const NFT: &str = r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
const IPT: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// `nft list table ip flannel-ipv4` on a flanneld node with `--ip-masq`, from
/// flannel-notes.md (NET = Network, SUB = the node's subnet).
const FLANNELD_TABLE: &str = r#"table ip flannel-ipv4 {
    comment "rules for flannel-ipv4"
    chain forward {
        comment "chain to accept flannel traffic"
        type filter hook forward priority filter; policy accept;
        ip saddr NET accept
        ip daddr NET accept
    }
    chain postrtg {
        comment "chain to manage traffic masquerading by flannel"
        type nat hook postrouting priority srcnat; policy accept;
        meta mark 0x00004000 return
        ip saddr SUB ip daddr NET return
        ip saddr NET ip daddr SUB return
        ip saddr != SUB ip daddr NET return
        ip saddr NET ip daddr != 224.0.0.0/4 masquerade fully-random
        ip saddr != NET ip daddr NET masquerade fully-random
    }
}"#;

/// A listing as (the table's own lines, each chain's lines), indentation and blank lines
/// dropped, chains by name: flanneld creates postrtg before forward, so the order of the
/// chains is the listing's, not a rule's.
fn parse(listing: &str) -> (Vec<String>, std::collections::BTreeMap<String, Vec<String>>) {
    let mut table = Vec::new();
    let mut chains = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for l in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(name) = l.strip_prefix("chain ").and_then(|r| r.strip_suffix(" {")) {
            current = Some(name.to_string());
            chains.insert(name.to_string(), Vec::new());
        } else if l == "}" && current.is_some() {
            current = None;
        } else if let Some(c) = &current {
            chains.get_mut(c).unwrap().push(l.to_string());
        } else {
            table.push(l.to_string());
        }
    }
    (table, chains)
}

/// Checks node `i`'s `ip flannel-ipv4` against flanneld's: every line of flanneld's, in
/// order, and nothing more but an accept for the tunnel GSO TAP (weft's own encapsulated
/// frames, which the kernel forwards), named by a link that exists on the node.
fn matches_flanneld(c: &Cluster, i: usize) -> Result<(), String> {
    let ns = &c.nodes[i].ns;
    let o = ns_run(ns, &["nft", "list", "table", "ip", "flannel-ipv4"]);
    let have = String::from_utf8_lossy(&o.stdout).into_owned();
    let want = FLANNELD_TABLE
        .replace("SUB", &c.subnet(i).to_string())
        .replace("NET", &c.network.to_string());
    let (want_table, want_chains) = parse(&want);
    let (have_table, mut have_chains) = parse(&have);
    if let Some(fwd) = have_chains.get_mut("forward") {
        let links = ns_sh(ns, &["ip", "-o", "link", "show"]);
        fwd.retain(|l| {
            let tap = l
                .strip_prefix("iifname \"")
                .and_then(|r| r.strip_suffix("\" accept"));
            !tap.is_some_and(|t| links.contains(&format!(": {t}:")))
        });
    }
    if (have_table, have_chains) == (want_table, want_chains) {
        Ok(())
    } else {
        Err(format!("node {i}'s table:\n{have}\nflanneld's:\n{want}"))
    }
}

fn iptables_save(ns: &str) -> String {
    String::from_utf8_lossy(&ns_run(ns, &["iptables-save"]).stdout).into_owned()
}

fn has_nft_table(ns: &str, family: &str, name: &str) -> bool {
    ns_run(ns, &["nft", "list", "table", family, name])
        .status
        .success()
}

fn until(what: &str, f: impl Fn() -> bool) {
    harness::wait_for(what, Duration::from_secs(15), || f().then_some(()));
}

#[test]
fn nftables_mode_installs_flanneds_tables_and_keeps_them() {
    let mut c = Cluster::new(weft(), NFT);
    c.add_node(Kind::Weft);
    c.add_node(Kind::Weft);
    // Node 1 ran in iptables mode before and was killed: its chains are still there.
    let leftover = weft::masq::restore_input(
        "",
        &weft::masq::flannel_rules(
            c.network,
            "10.244.9.0/24".parse().unwrap(),
            true,
            true,
            true,
        ),
    );
    let ns = c.nodes[0].ns.clone();
    harness::iptables_restore(&ns, &leftover);
    assert!(iptables_save(&ns).contains("FLANNEL-POSTRTG"));
    for i in 0..2 {
        c.start_weft(i, &[]);
        c.add_pod(i, None);
    }
    c.wait_converged();

    for i in 0..2 {
        matches_flanneld(&c, i).unwrap();
        assert!(has_nft_table(&c.nodes[i].ns, "ip6", "flannel-ipv6"));
        let save = iptables_save(&c.nodes[i].ns);
        assert!(
            !save.contains("FLANNEL"),
            "iptables rules in nftables mode:\n{save}"
        );
    }
    assert_eq!(c.ping_all(), Vec::<String>::new());

    // Egress leaves with the node's address; pod to pod keeps the pod's.
    let host = c.add_host("ext", 200);
    let (pod, other) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    assert_eq!(
        harness::udp_source_seen(&host, &pod.ns, "192.0.2.200"),
        "192.0.2.1"
    );
    let to = other.ip.to_string();
    assert_eq!(
        harness::udp_source_seen(&other.ns, &pod.ns, &to),
        pod.ip.to_string()
    );

    // Flushed, a chain deleted, the table deleted, a rule added: each comes back as it was.
    for damage in [
        "flush table ip flannel-ipv4",
        "delete chain ip flannel-ipv4 postrtg",
        "delete table ip flannel-ipv4",
        "add rule ip flannel-ipv4 postrtg ip saddr 192.0.2.0/24 accept",
    ] {
        ns_sh(&ns, &["nft", damage]);
        assert!(matches_flanneld(&c, 0).is_err(), "{damage} changed nothing");
        until(&format!("weft to repair `{damage}`"), || {
            matches_flanneld(&c, 0).is_ok()
        });
    }
    // A clean stop removes both tables.
    assert!(c.stop_weft(0));
    assert!(!has_nft_table(&ns, "ip", "flannel-ipv4"));
    assert!(!has_nft_table(&ns, "ip6", "flannel-ipv6"));
}

#[test]
fn switching_modes_leaves_no_rule_of_the_other() {
    let mut c = Cluster::new(weft(), NFT);
    c.add_node(Kind::Weft);
    c.start_weft(0, &[]);
    let ns = c.nodes[0].ns.clone();
    matches_flanneld(&c, 0).unwrap();
    // Killed in nftables mode, restarted in iptables mode: the tables go, the chains come.
    c.kill_weft(0);
    assert!(has_nft_table(&ns, "ip", "flannel-ipv4"));
    FileStore::open(c.lease_dir())
        .unwrap()
        .write_config(IPT)
        .unwrap();
    c.start_weft(0, &[]);
    until("the iptables rules", || {
        iptables_save(&ns).contains("-A FLANNEL-POSTRTG")
    });
    for (family, name) in [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")] {
        assert!(!has_nft_table(&ns, family, name), "{family} {name} left");
    }
    // And back: killed in iptables mode, restarted in nftables mode.
    c.kill_weft(0);
    FileStore::open(c.lease_dir())
        .unwrap()
        .write_config(NFT)
        .unwrap();
    c.start_weft(0, &[]);
    matches_flanneld(&c, 0).unwrap();
    let save = iptables_save(&ns);
    assert!(!save.contains("FLANNEL"), "iptables rules left:\n{save}");
}

/// `--ip-blackhole-route` (flanneld's, for CNI setups without a bridge, such as Canal's
/// per-pod /32 routes): a blackhole route for the node's subnet, there from the start and
/// back within a resync when deleted, so an unused address of the subnet goes nowhere
/// instead of out through the cluster route.
#[test]
fn ip_blackhole_route_keeps_a_blackhole_for_the_subnet() {
    let mut c = Cluster::new(weft(), IPT);
    c.add_node(Kind::Weft);
    c.add_node(Kind::Weft);
    c.start_weft(0, &["--ip-blackhole-route"]);
    c.start_weft(1, &[]);
    let ns = c.nodes[0].ns.clone();
    let subnet = c.subnet(0).to_string();
    let blackholes = || ns_sh(&ns, &["ip", "route", "show", "type", "blackhole"]);
    until("the blackhole route", || blackholes().contains(&subnet));
    let unused = c.subnet(0).hosts().nth(100).unwrap().to_string();
    let o = ns_run(&ns, &["ip", "route", "get", &unused]);
    assert!(!o.status.success(), "{unused} is routed somewhere");
    // Another node's subnet still goes through the cluster route.
    let elsewhere = c.subnet(1).hosts().nth(100).unwrap().to_string();
    assert!(ns_run(&ns, &["ip", "route", "get", &elsewhere])
        .status
        .success());
    ns_sh(&ns, &["ip", "route", "del", "blackhole", &subnet]);
    assert!(!blackholes().contains(&subnet));
    until("the blackhole route back", || {
        blackholes().contains(&subnet)
    });
    // Node 2 was not asked for one.
    let other = ns_sh(
        &c.nodes[1].ns,
        &["ip", "route", "show", "type", "blackhole"],
    );
    assert!(other.trim().is_empty(), "{other}");
}
