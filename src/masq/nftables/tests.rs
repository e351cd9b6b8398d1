use super::*;

fn plan(masq: bool, forward: bool) -> Plan {
    Plan {
        ipv4: Some(super::super::V4Plan {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
        }),
        ipv6: None,
        masq,
        random_fully: true,
        forward,
        forward_from: Vec::new(),
    }
}

/// flanneld's rules as its nftables manager adds them (`addMasqRules`,
/// `SetupAndEnsureForwardRules`), with NET and SUB filled in.
const FLANNEL_MASQ: [&str; 6] = [
    "meta mark 0x4000 return",
    "ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return",
    "ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
    "ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return",
    "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
    "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
];

#[test]
fn the_ruleset_is_flanneds_rule_for_rule() {
    let s = ruleset(&plan(true, true), true);
    let lines: Vec<&str> = s.lines().map(str::trim).collect();
    let at = |l: &str| {
        lines
            .iter()
            .position(|x| *x == l)
            .unwrap_or_else(|| panic!("{l} not in\n{s}"))
    };
    // postrtg's rules in flanneld's order, right after its hook line.
    let hook = at("type nat hook postrouting priority srcnat; policy accept;");
    assert_eq!(&lines[hook + 1..hook + 7], &FLANNEL_MASQ);
    assert_eq!(
        lines[hook - 1],
        "comment \"chain to manage traffic masquerading by flannel\""
    );
    let fwd = at("type filter hook forward priority filter; policy accept;");
    assert_eq!(
        &lines[fwd + 1..fwd + 3],
        &[
            "ip saddr 10.244.0.0/16 accept",
            "ip daddr 10.244.0.0/16 accept"
        ]
    );
    assert_eq!(
        lines[fwd - 1],
        "comment \"chain to accept flannel traffic\""
    );
    // Both tables, each recreated, with flanneld's comments; the IPv6 one empty.
    for (family, name) in TABLES {
        at(&format!("delete table {family} {name}"));
        at(&format!("comment \"rules for {name}\""));
    }
    let v6 = s.split("table ip6 flannel-ipv6 {").nth(1).unwrap();
    assert!(!v6.contains("chain"), "{v6}");
}

/// flanneld's IPv6 rules as its nftables manager adds them to `flannel-ipv6`
/// (`addMasqRules` with `knftables.IPv6Family`, whose multicast is `ff00::/8`, and the IPv6
/// half of `SetupAndEnsureForwardRules`), with the cluster's and the node's IPv6 networks.
const FLANNEL_MASQ_V6: [&str; 6] = [
    "meta mark 0x4000 return",
    "ip6 saddr fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return",
    "ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return",
    "ip6 saddr != fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return",
    "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random",
    "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random",
];
const FLANNEL_FWD_V6: [&str; 2] = [
    "ip6 saddr fd00:10:244::/56 accept",
    "ip6 daddr fd00:10:244::/56 accept",
];

fn dual_stack(masq: bool, forward: bool) -> Plan {
    Plan {
        ipv6: Some(crate::masq::V6Plan {
            network: "fd00:10:244::/56".parse().unwrap(),
            subnet: "fd00:10:244:1::/64".parse().unwrap(),
        }),
        ..plan(masq, forward)
    }
}

/// One table's block of `script`, lines trimmed.
fn table<'a>(script: &'a str, head: &str) -> Vec<&'a str> {
    let block = script.split(head).nth(1).unwrap();
    let end = block.find("\n}\n").unwrap();
    block[..end].lines().map(str::trim).collect()
}

#[test]
fn a_dual_stack_plan_fills_the_ipv6_table_as_flanneld() {
    let mut p = dual_stack(true, true);
    p.forward_from.push("weft0-tx".into());
    let s = ruleset(&p, true);
    let v6 = table(&s, "table ip6 flannel-ipv6 {");
    let at = |l: &str| {
        v6.iter()
            .position(|x| *x == l)
            .unwrap_or_else(|| panic!("{l} not in\n{s}"))
    };
    let hook = at("type nat hook postrouting priority srcnat; policy accept;");
    assert_eq!(&v6[hook + 1..hook + 7], &FLANNEL_MASQ_V6);
    let fwd = at("type filter hook forward priority filter; policy accept;");
    assert_eq!(&v6[fwd + 1..fwd + 3], &FLANNEL_FWD_V6);
    // The injection TAP's frames may be outer IPv6: accepted in both tables.
    assert_eq!(v6[fwd + 3], "iifname \"weft0-tx\" accept");
    // The IPv4 table is as it was, and names nothing IPv6.
    let v4 = table(&s, "table ip flannel-ipv4 {");
    let hook = v4.iter().position(|l| l.starts_with("type nat")).unwrap();
    assert_eq!(&v4[hook + 1..hook + 7], &FLANNEL_MASQ);
    assert!(v4.contains(&"iifname \"weft0-tx\" accept"));
    assert!(
        !v4.iter().any(|l| l.contains("ip6") || l.contains("ff00")),
        "{s}"
    );
    // Flags choose the IPv6 chains as they choose the IPv4 ones.
    let s = ruleset(&dual_stack(false, true), false);
    let v6 = table(&s, "table ip6 flannel-ipv6 {");
    assert!(
        v6.contains(&"chain forward {") && !v6.contains(&"chain postrtg {"),
        "{s}"
    );
    let s = ruleset(&dual_stack(true, false), false);
    assert!(s.contains("ip6 daddr != ff00::/8 masquerade\n"), "{s}");
}

#[test]
fn flags_choose_the_chains_and_the_masquerade() {
    let s = ruleset(&plan(true, false), false);
    assert!(
        s.contains("chain postrtg") && !s.contains("chain forward"),
        "{s}"
    );
    assert!(
        s.contains(" masquerade\n") && !s.contains("fully-random"),
        "{s}"
    );
    let s = ruleset(&plan(false, true), true);
    assert!(
        !s.contains("chain postrtg") && s.contains("chain forward"),
        "{s}"
    );
    // Neither: the two tables alone, as flanneld creates them.
    let s = ruleset(&plan(false, false), true);
    assert_eq!(s.matches("table ip flannel-ipv4 {").count(), 1);
    assert!(!s.contains("chain"), "{s}");
    // The GSO TAP's frames are accepted in the forward chain.
    let mut p = plan(false, true);
    p.forward_from.push("weft0-tx".into());
    assert!(ruleset(&p, true).contains("\t\tiifname \"weft0-tx\" accept\n"));
}

/// What `nft list ruleset` printed with flanneld's table and another tool's (nft 1.0.6).
const LISTING: &str = "table ip nat {\n\tchain POSTROUTING {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n}\ntable ip flannel-ipv4 {\n\tcomment \"rules for flannel-ipv4\"\n\tchain postrtg {\n\t\tcomment \"chain to manage traffic masquerading by flannel\"\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmeta mark 0x00004000 return\n\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\t}\n}\ntable ip6 flannel-ipv6 {\n\tcomment \"rules for flannel-ipv6\"\n}\n";

#[test]
fn our_tables_are_cut_out_of_the_listing() {
    let ours = our_tables(LISTING);
    assert!(ours.starts_with("table ip flannel-ipv4 {\n"), "{ours}");
    assert!(ours.ends_with("table ip6 flannel-ipv6 {\n\tcomment \"rules for flannel-ipv6\"\n}\n"));
    assert!(!ours.contains("table ip nat"), "{ours}");
    assert_eq!(our_tables("table ip nat {\n}\n"), "");
}

#[test]
fn drift_names_what_changed() {
    let r = our_tables(LISTING);
    assert!(drift(&r, &r).is_empty());
    let deleted = r.replace("\t\tmeta mark 0x00004000 return\n", "");
    assert_eq!(
        drift(&r, &deleted),
        ["missing: meta mark 0x00004000 return"]
    );
    let added = r.replace(
        "\t\tmeta mark 0x00004000 return\n",
        "\t\tmeta mark 0x00004000 return\n\t\tip saddr 1.2.3.4 accept\n",
    );
    assert_eq!(drift(&r, &added), ["added: ip saddr 1.2.3.4 accept"]);
    let gone = our_tables(&LISTING.replace("table ip6 flannel-ipv6", "table ip6 other"));
    assert_eq!(drift(&r, &gone), ["table ip6 flannel-ipv6 is gone"]);
    let swapped = r.replace(
        "\t\tmeta mark 0x00004000 return\n\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n",
        "\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\t\tmeta mark 0x00004000 return\n",
    );
    assert_eq!(drift(&r, &swapped), ["rules reordered"]);
}
