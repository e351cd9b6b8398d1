//! flanneld's traffic rules in nftables mode (`"EnableNFTables": true`), against flanneld's
//! own: the table its nftables manager makes, as `../shared/flannel-notes.md` transcribes
//! it from flanneld v0.28's source (`pkg/trafficmngr/nftables`), not as weft renders it.
//! Pods reach each other, egress is masqueraded, rules flushed or deleted by hand come
//! back, and a node switched between modes keeps no rule of the other. A dual-stack node's
//! IPv6 rules (ip6tables chains, `table ip6 flannel-ipv6`) are checked against flanneld's
//! source the same way, installed by weft's rule runners in a namespace of their own.
//! Root only.

#[path = "harness.rs"]
mod harness;

use std::time::Duration;

use harness::{ns_run, ns_sh, sh, weft, Cluster, Kind};
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

/// Runs `f` on a thread that has entered namespace `ns`: the rule runners it calls start
/// iptables, ip6tables and nft there, as in a node's namespace.
fn inside<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = std::fs::File::open(&path).unwrap();
            // SAFETY: setns with a namespace fd we own; it moves this thread only.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

const NET6: &str = "fd00:10:244::/56";
const SUB6: &str = "fd00:10:244:1::/64";
/// The injection TAP weft adds to the forward accepts.
const TAP: &str = "weft0-tx";

/// A dual-stack node's plan: `--ip-masq`, forward rules, the TAP's accept.
fn dual_stack() -> weft::masq::Plan {
    weft::masq::Plan {
        ipv4: Some(weft::masq::V4Plan {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
        }),
        ipv6: Some(weft::masq::V6Plan {
            network: NET6.parse().unwrap(),
            subnet: SUB6.parse().unwrap(),
        }),
        masq: true,
        random_fully: true,
        forward: true,
        forward_from: vec![TAP.to_string()],
    }
}

/// flanneld's IPv6 rules as `ip6tables-save` prints them: `masqIP6Rules` and
/// `forwardRules` of flannel's `pkg/trafficmngr/iptables/iptables.go` (NET = IPv6Network,
/// SUB = the lease's IPv6 subnet), each chain's jump first.
const FLANNELD_IP6TABLES: &str = r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s SUB -d NET -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s NET -d SUB -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s NET -d SUB -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s NET ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s NET -d NET -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s NET -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d NET -m comment --comment "flanneld forward" -j ACCEPT"#;

/// flanneld's lines (and the TAP's accept, weft's own) in `ip6tables-save`, in order
/// within each table, the nat table's (masquerade) first.
fn ip6_flannel_lines(ns: &str) -> Vec<String> {
    let save = String::from_utf8_lossy(&ns_run(ns, &["ip6tables-save"]).stdout).into_owned();
    let (mut nat, mut filter): (Vec<String>, Vec<String>) = save
        .lines()
        .filter(|l| l.contains("FLANNEL") && !l.starts_with(':'))
        .map(str::to_string)
        .partition(|l| l.contains("FLANNEL-POSTRTG"));
    nat.append(&mut filter);
    nat
}

fn flanneld_ip6tables() -> Vec<String> {
    let mut want: Vec<String> = FLANNELD_IP6TABLES
        .replace("SUB", SUB6)
        .replace("NET", NET6)
        .lines()
        .map(str::to_string)
        .collect();
    want.push(format!(
        "-A FLANNEL-FWD -i {TAP} -m comment --comment \"flanneld forward\" -j ACCEPT"
    ));
    want
}

/// Feeds `input` to `ip6tables-restore --noflush` in `ns`.
fn ip6tables_restore(ns: &str, input: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ip6tables-restore", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "ip6tables-restore of\n{input}"
    );
}

/// A dual-stack node in iptables mode: flanneld's IPv6 chains in ip6tables beside the IPv4
/// ones, repaired in one resync whatever is done to them, removed on stop; leftovers of
/// both families are removed at start.
#[test]
fn dual_stack_ip6tables_rules_are_flanneds_and_kept() {
    let mut c = Cluster::new(weft(), IPT);
    let ns = c.add_ns("r6");
    let want = flanneld_ip6tables();
    inside(&ns, || {
        let plan = dual_stack();
        let (rules, first) = weft::masq::InstalledRules::install(&plan, weft::masq::Mode::Iptables);
        first.unwrap();
        assert_eq!(ip6_flannel_lines(&ns), want);
        let v4 = iptables_save(&ns);
        assert!(
            v4.contains("-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 "),
            "{v4}"
        );
        assert!(!v4.contains("fd00"), "{v4}");
        // Each damage is repaired by one resync, the rules in flanneld's order again.
        for damage in [
            "ip6tables -t nat -F FLANNEL-POSTRTG",
            "ip6tables -t nat -D POSTROUTING -m comment --comment flanneld\\ masq -j FLANNEL-POSTRTG",
            "ip6tables -t filter -D FLANNEL-FWD -s fd00:10:244::/56 -m comment --comment flanneld\\ forward -j ACCEPT",
            "ip6tables -t filter -I FLANNEL-FWD -s 2001:db8::/32 -j ACCEPT",
            "ip6tables -t filter -A FORWARD -m comment --comment flanneld\\ forward -j FLANNEL-FWD",
        ] {
            ns_sh(&ns, &["sh", "-c", damage]);
            assert_ne!(ip6_flannel_lines(&ns), want, "{damage} changed nothing");
            rules.resync();
            assert_eq!(ip6_flannel_lines(&ns), want, "after {damage}");
        }
        drop(rules);
        assert_eq!(ip6_flannel_lines(&ns), Vec::<String>::new());
        assert!(!iptables_save(&ns).contains("FLANNEL"));
        // Leftovers of a killed dual-stack run: both families' chains go.
        let leftover = |family| {
            let chains = match family {
                4 => {
                    let v4 = plan.ipv4.unwrap();
                    weft::masq::flannel_rules(v4.network, v4.subnet, true, true, true)
                }
                _ => {
                    let v6 = plan.ipv6.unwrap();
                    weft::masq::flannel_rules(v6.network, v6.subnet, true, true, true)
                }
            };
            weft::masq::restore_input("", &chains)
        };
        harness::iptables_restore(&ns, &leftover(4));
        ip6tables_restore(&ns, &leftover(6));
        assert!(ip6_flannel_lines(&ns).len() > 5);
        weft::masq::remove_leftovers(weft::masq::Mode::Iptables).unwrap();
        assert_eq!(ip6_flannel_lines(&ns), Vec::<String>::new());
        assert!(!iptables_save(&ns).contains("FLANNEL"));
    });
}

/// `nft list table ip6 flannel-ipv6` on a dual-stack flanneld node with `--ip-masq`:
/// flannel's `pkg/trafficmngr/nftables/nftables.go` (`addMasqRules` for
/// `knftables.IPv6Family`, the IPv6 half of `SetupAndEnsureForwardRules`), as nft lists it.
const FLANNELD_TABLE_V6: &str = r#"table ip6 flannel-ipv6 {
    comment "rules for flannel-ipv6"
    chain forward {
        comment "chain to accept flannel traffic"
        type filter hook forward priority filter; policy accept;
        ip6 saddr NET accept
        ip6 daddr NET accept
    }
    chain postrtg {
        comment "chain to manage traffic masquerading by flannel"
        type nat hook postrouting priority srcnat; policy accept;
        meta mark 0x00004000 return
        ip6 saddr SUB ip6 daddr NET return
        ip6 saddr NET ip6 daddr SUB return
        ip6 saddr != SUB ip6 daddr NET return
        ip6 saddr NET ip6 daddr != ff00::/8 masquerade fully-random
        ip6 saddr != NET ip6 daddr NET masquerade fully-random
    }
}"#;

fn nft_table(ns: &str, family: &str, name: &str) -> String {
    String::from_utf8_lossy(&ns_run(ns, &["nft", "list", "table", family, name]).stdout)
        .into_owned()
}

/// `ip6 flannel-ipv6` in `ns` against flanneld's, plus the TAP's accept (weft's own).
fn v6_table_matches(ns: &str) -> Result<(), String> {
    let have = nft_table(ns, "ip6", "flannel-ipv6");
    let want = FLANNELD_TABLE_V6.replace("SUB", SUB6).replace("NET", NET6);
    let (want_table, mut want_chains) = parse(&want);
    if let Some(fwd) = want_chains.get_mut("forward") {
        fwd.push(format!("iifname \"{TAP}\" accept"));
    }
    if parse(&have) == (want_table, want_chains) {
        Ok(())
    } else {
        Err(format!("ip6 flannel-ipv6:\n{have}\nflanneld's:\n{want}"))
    }
}

/// A dual-stack node in nftables mode: `ip6 flannel-ipv6` filled as flanneld fills it,
/// repaired in one resync, and removed on stop with `ip flannel-ipv4`.
#[test]
fn dual_stack_nftables_table_is_flanneds_and_kept() {
    let mut c = Cluster::new(weft(), NFT);
    let ns = c.add_ns("n6");
    inside(&ns, || {
        let plan = dual_stack();
        let (rules, first) = weft::masq::InstalledRules::install(&plan, weft::masq::Mode::Nftables);
        first.unwrap();
        v6_table_matches(&ns).unwrap();
        let v4 = nft_table(&ns, "ip", "flannel-ipv4");
        assert!(
            v4.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"),
            "{v4}"
        );
        assert!(!v4.contains("fd00"), "{v4}");
        for damage in [
            "flush chain ip6 flannel-ipv6 postrtg",
            "delete chain ip6 flannel-ipv6 forward",
            "delete table ip6 flannel-ipv6",
            "add rule ip6 flannel-ipv6 postrtg ip6 saddr 2001:db8::/32 accept",
        ] {
            ns_sh(&ns, &["nft", damage]);
            assert!(v6_table_matches(&ns).is_err(), "{damage} changed nothing");
            rules.resync();
            v6_table_matches(&ns).unwrap_or_else(|e| panic!("after {damage}: {e}"));
        }
        drop(rules);
        assert!(!has_nft_table(&ns, "ip6", "flannel-ipv6"));
        assert!(!has_nft_table(&ns, "ip", "flannel-ipv4"));
    });
}

/// An IPv4-only node never needs ip6tables: `weft cleanup` (leftover removal of both
/// families) removes the IPv4 chains and succeeds where ip6tables is not installed, and
/// where its ip6tables cannot list its tables (a kernel without IPv6 netfilter).
#[test]
fn leftover_removal_does_not_need_ip6tables() {
    let mut c = Cluster::new(weft(), IPT);
    let ns = c.add_ns("no6");
    let bin = c.lease_dir().with_file_name("no6-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["iptables-save", "iptables-restore", "nft"] {
        let real = sh(&["sh", "-c", &format!("command -v {tool}")]);
        std::os::unix::fs::symlink(real.trim(), bin.join(tool)).unwrap();
    }
    let chains = weft::masq::flannel_rules(
        c.network,
        "10.244.9.0/24".parse().unwrap(),
        true,
        true,
        true,
    );
    let broken = bin.join("ip6tables-save");
    for ip6tables in ["absent", "broken"] {
        if ip6tables == "broken" {
            std::fs::write(
                &broken,
                "#!/bin/sh\necho \"can't initialize ip6tables table 'filter'\" >&2\nexit 1\n",
            )
            .unwrap();
            std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        harness::iptables_restore(&ns, &weft::masq::restore_input("", &chains));
        assert!(iptables_save(&ns).contains("FLANNEL-POSTRTG"));
        let path = format!("PATH={}", bin.display());
        let weft = weft().to_str().unwrap();
        let o = ns_run(&ns, &["env", &path, weft, "cleanup"]);
        let out = harness::output_text(&o);
        assert!(o.status.success(), "ip6tables {ip6tables}: {out}");
        assert!(
            out.contains("removed flanneld's iptables rules"),
            "ip6tables {ip6tables}: {out}"
        );
        assert!(
            !iptables_save(&ns).contains("FLANNEL"),
            "ip6tables {ip6tables}"
        );
    }
}
