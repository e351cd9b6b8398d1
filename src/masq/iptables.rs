//! flanneld's iptables rules (its default mode): masquerading for traffic leaving the
//! cluster network (`--ip-masq`, nat table, chain FLANNEL-POSTRTG) and the FORWARD accepts
//! (filter table, chain FLANNEL-FWD, `--iptables-forward-rules`).
//!
//! The rules are written exactly as `iptables-save` prints them, so one `iptables-save`
//! tells whether they are intact; any drift is repaired with one `iptables-restore
//! --noflush` that re-declares (and so flushes) weft's chains and refills them in a single
//! transaction per table: there is never a moment without the rules, and nothing outside
//! weft's chains is touched but the one jump rule per table. Removal on shutdown is one
//! restore too. Rule text and drift checks are pure; only [`Iptables`] runs programs.
//!
//! A dual-stack node has the same two chains in ip6tables, for its IPv6 network and
//! subnet, as flanneld installs them (`masqIP6Rules`, `forwardRules`), with `ff00::/8` in
//! place of `224.0.0.0/4`; they are checked and repaired with `ip6tables-save` and
//! `ip6tables-restore` beside the IPv4 ones.

use super::tool::{self, ToolError};
use super::{Family, FamilyNet};
use ipnet::Ipv4Net;

const MASQ_COMMENT: &str = "-m comment --comment \"flanneld masq\"";
const FWD_COMMENT: &str = "-m comment --comment \"flanneld forward\"";

/// One table's share: a chain of weft's, its rules, and the jump into it from a built-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRules {
    /// `nat` or `filter`.
    pub table: &'static str,
    /// The built-in chain jumping to ours.
    pub from: &'static str,
    /// Our chain.
    pub chain: &'static str,
    /// The jump rule, as iptables-save prints it.
    pub jump: String,
    /// Our chain's rules, in order, as iptables-save prints them.
    pub rules: Vec<String>,
}

/// The rules flanneld installs for this node in one family: `network` and `subnet` are
/// both IPv4 (iptables) or both IPv6 (ip6tables).
pub fn flannel_rules<N: FamilyNet>(
    network: N,
    subnet: N,
    masq: bool,
    random_fully: bool,
    forward: bool,
) -> Vec<ChainRules> {
    let multicast = N::FAMILY.multicast();
    let mut out = Vec::new();
    if masq {
        let c = "FLANNEL-POSTRTG";
        let m = if random_fully {
            "MASQUERADE --random-fully"
        } else {
            "MASQUERADE"
        };
        out.push(ChainRules {
            table: "nat",
            from: "POSTROUTING",
            chain: c,
            jump: format!("-A POSTROUTING {MASQ_COMMENT} -j {c}"),
            rules: vec![
                // Packets kube-proxy marked for masquerading: it does that itself.
                format!("-A {c} -m mark --mark 0x4000/0x4000 {MASQ_COMMENT} -j RETURN"),
                // Pod to pod, either way: no NAT.
                format!("-A {c} -s {subnet} -d {network} {MASQ_COMMENT} -j RETURN"),
                format!("-A {c} -s {network} -d {subnet} {MASQ_COMMENT} -j RETURN"),
                // From outside to our pods (e.g. NodePorts): no NAT.
                format!("-A {c} ! -s {network} -d {subnet} {MASQ_COMMENT} -j RETURN"),
                // Pods to the outside world (not multicast): masquerade.
                format!("-A {c} -s {network} ! -d {multicast} {MASQ_COMMENT} -j {m}"),
                // The host (or outside) to other nodes' pods: masquerade, so replies return.
                format!("-A {c} ! -s {network} -d {network} {MASQ_COMMENT} -j {m}"),
            ],
        });
    }
    if forward {
        let c = "FLANNEL-FWD";
        out.push(ChainRules {
            table: "filter",
            from: "FORWARD",
            chain: c,
            jump: format!("-A FORWARD {FWD_COMMENT} -j {c}"),
            rules: vec![
                format!("-A {c} -s {network} {FWD_COMMENT} -j ACCEPT"),
                format!("-A {c} -d {network} {FWD_COMMENT} -j ACCEPT"),
            ],
        });
    }
    out
}

/// Both of flanneld's chains with their jumps and no rules: what [`removal_input`] needs to
/// remove them whatever the flags were that installed them, in either family (the jumps
/// name no address).
pub fn all_chains() -> Vec<ChainRules> {
    let any: Ipv4Net = "0.0.0.0/0".parse().unwrap_or_default();
    let mut chains = flannel_rules(any, any, true, true, true);
    for c in &mut chains {
        c.rules.clear();
    }
    chains
}

/// Adds to flanneld's FORWARD accepts (if `rules` has them) one for frames arriving on the
/// tunnel GSO injection TAP `dev`: weft's own encapsulated super-packets, which the kernel
/// forwards out of the underlay. On a node whose FORWARD policy is DROP (Docker sets it)
/// they would otherwise never leave.
pub fn accept_forwarded_from(rules: &mut [ChainRules], dev: &str) {
    for c in rules.iter_mut().filter(|c| c.chain == "FLANNEL-FWD") {
        c.rules
            .push(format!("-A {} -i {dev} {FWD_COMMENT} -j ACCEPT", c.chain));
    }
}

/// The lines of one table in `iptables-save` output.
fn table_lines<'a>(save: &'a str, table: &str) -> Vec<&'a str> {
    let mut inside = false;
    let mut out = Vec::new();
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            inside = t == table;
        } else if inside && l != "COMMIT" {
            out.push(l);
        }
    }
    out
}

/// What is wrong with `c` in `save` (empty: intact).
pub fn drift(save: &str, c: &ChainRules) -> Vec<String> {
    let lines = table_lines(save, c.table);
    let mut problems = Vec::new();
    match lines.iter().filter(|l| **l == c.jump).count() {
        1 => {}
        0 => problems.push(format!("{} does not jump to {}", c.from, c.chain)),
        n => problems.push(format!("{} jumps to {} {n} times", c.from, c.chain)),
    }
    let prefix = format!("-A {} ", c.chain);
    let have: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with(&prefix))
        .collect();
    if have != c.rules.iter().map(String::as_str).collect::<Vec<_>>() {
        problems.push(format!(
            "{} has {} rule(s), not the {} expected",
            c.chain,
            have.len(),
            c.rules.len()
        ));
    }
    problems
}

/// The `iptables-restore --noflush` input that makes `chains` exactly right, given the
/// current `save`: each chain re-declared (created or flushed) and refilled, and the jump
/// added if missing or duplicates removed.
pub fn restore_input(save: &str, chains: &[ChainRules]) -> String {
    let mut s = String::new();
    for c in chains {
        let lines = table_lines(save, c.table);
        let jumps = lines.iter().filter(|l| **l == c.jump).count();
        s.push_str(&format!("*{}\n:{} - [0:0]\n", c.table, c.chain));
        for _ in 1..jumps {
            s.push_str(&format!("-D{}\n", &c.jump[2..]));
        }
        if jumps == 0 {
            s.push_str(&c.jump);
            s.push('\n');
        }
        for r in &c.rules {
            s.push_str(r);
            s.push('\n');
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// The `iptables-restore --noflush` input that removes `chains` (those present in `save`).
pub fn removal_input(save: &str, chains: &[ChainRules]) -> String {
    let mut s = String::new();
    for c in chains {
        let lines = table_lines(save, c.table);
        let declared = lines.iter().any(|l| *l == format!(":{} - [0:0]", c.chain))
            || lines
                .iter()
                .any(|l| l.starts_with(&format!(":{} ", c.chain)));
        let jumps = lines.iter().filter(|l| **l == c.jump).count();
        if !declared && jumps == 0 {
            continue;
        }
        s.push_str(&format!("*{}\n", c.table));
        for _ in 0..jumps {
            s.push_str(&format!("-D{}\n", &c.jump[2..]));
        }
        if declared {
            s.push_str(&format!("-F {}\n-X {}\n", c.chain, c.chain));
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// Runs `iptables-save` and `iptables-restore`, or their `ip6tables` twins (one process
/// each per check or repair).
pub struct Iptables {
    family: Family,
    chains: Vec<ChainRules>,
}

impl Iptables {
    /// For these rules of `family`.
    pub fn new(family: Family, chains: Vec<ChainRules>) -> Iptables {
        Iptables { family, chains }
    }

    /// Its family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Its rules.
    pub fn chains(&self) -> &[ChainRules] {
        &self.chains
    }

    fn save(&self) -> Result<String, ToolError> {
        let program = format!("{}-save", self.family.iptables());
        tool::run(&program, &[], "", "iptables")
    }

    fn restore(&self, input: &str) -> Result<(), String> {
        let program = format!("{}-restore", self.family.iptables());
        match tool::run(&program, &["-w", "5", "--noflush"], input, "iptables") {
            Ok(_) => Ok(()),
            Err(ToolError::Failed(e)) => Err(format!("{e}\ninput was:\n{input}")),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks the rules and repairs them if needed; returns what was wrong (empty: intact),
    /// IPv6 problems named as such.
    pub fn ensure(&self) -> Result<Vec<String>, String> {
        let save = self.save()?;
        let mut problems: Vec<String> = self.chains.iter().flat_map(|c| drift(&save, c)).collect();
        if !problems.is_empty() {
            self.restore(&restore_input(&save, &self.chains))?;
        }
        if self.family == Family::Ipv6 {
            for p in &mut problems {
                p.insert_str(0, "ip6tables: ");
            }
        }
        Ok(problems)
    }

    /// Removes the rules (iptables missing: there are none).
    pub fn remove(&self) -> Result<(), String> {
        match self.save() {
            Err(ToolError::Missing(_)) => Ok(()),
            r => self.remove_from(&r?),
        }
    }

    /// Removes what an earlier run may have left: as [`remove`](Self::remove), but a tool
    /// that cannot list its tables (a kernel without IPv6 netfilter) has none of ours.
    pub fn remove_leftovers(&self) -> Result<(), String> {
        match self.save() {
            Err(e) => {
                tracing::debug!(error = %e, "no {} rules to remove", self.family.iptables());
                Ok(())
            }
            Ok(save) => self.remove_from(&save),
        }
    }

    fn remove_from(&self, save: &str) -> Result<(), String> {
        let input = removal_input(save, &self.chains);
        if input.is_empty() {
            return Ok(());
        }
        self.restore(&input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn chains() -> Vec<ChainRules> {
        flannel_rules(net("10.244.0.0/16"), net("10.244.1.0/24"), true, true, true)
    }

    /// What iptables-save printed after restoring `restore_input("", ..)` (iptables 1.8.9).
    fn saved_after_install() -> String {
        let mut s = String::from("# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:FLANNEL-FWD - [0:0]\n");
        let c = chains();
        let chain = |s: &mut String, c: &ChainRules| {
            for line in std::iter::once(&c.jump).chain(&c.rules) {
                s.push_str(line);
                s.push('\n');
            }
        };
        chain(&mut s, &c[1]);
        s.push_str("COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING -j KUBE-POSTROUTING\n");
        chain(&mut s, &c[0]);
        s.push_str("COMMIT\n");
        s
    }

    #[test]
    fn flannels_rules() {
        let c = chains();
        assert_eq!(
            c[0].rules[1],
            "-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN"
        );
        assert_eq!(
            c[0].rules[4],
            "-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully"
        );
        let plain = flannel_rules(
            net("10.244.0.0/16"),
            net("10.244.1.0/24"),
            true,
            false,
            false,
        );
        assert_eq!(plain.len(), 1);
        assert!(plain[0].rules[5].ends_with("-j MASQUERADE"));
        let mut with_tap =
            flannel_rules(net("10.244.0.0/16"), net("10.244.1.0/24"), true, true, true);
        accept_forwarded_from(&mut with_tap, "weft0-tx");
        assert_eq!(
            with_tap[1].rules.last().unwrap(),
            "-A FLANNEL-FWD -i weft0-tx -m comment --comment \"flanneld forward\" -j ACCEPT"
        );
        assert_eq!(
            with_tap[0].rules.len(),
            plain[0].rules.len(),
            "masquerade rules unchanged"
        );
        let mut masq_only = flannel_rules(
            net("10.244.0.0/16"),
            net("10.244.1.0/24"),
            true,
            true,
            false,
        );
        accept_forwarded_from(&mut masq_only, "weft0-tx");
        assert!(
            masq_only.iter().all(|c| c.chain != "FLANNEL-FWD"),
            "no FORWARD rules asked for"
        );
        assert!(flannel_rules(
            net("10.244.0.0/16"),
            net("10.244.1.0/24"),
            false,
            true,
            false
        )
        .is_empty());
    }

    /// flanneld's IPv6 rules as `masqIP6Rules` and `forwardRules` build them (flannel's
    /// `pkg/trafficmngr/iptables/iptables.go`, random-fully supported), each `[chain,
    /// rulespec...]`, CLUSTER and POD standing for the network and the lease's IPv6 subnet.
    #[rustfmt::skip]
    const FLANNELD_V6: [&[&str]; 10] = [
        &["POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG"],
        &["FLANNEL-POSTRTG", "-m", "mark", "--mark", "0x4000/0x4000", "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"],
        &["FLANNEL-POSTRTG", "-s", "POD", "-d", "CLUSTER", "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"],
        &["FLANNEL-POSTRTG", "-s", "CLUSTER", "-d", "POD", "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"],
        &["FLANNEL-POSTRTG", "!", "-s", "CLUSTER", "-d", "POD", "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"],
        &["FLANNEL-POSTRTG", "-s", "CLUSTER", "!", "-d", "ff00::/8", "-m", "comment", "--comment", "flanneld masq", "-j", "MASQUERADE", "--random-fully"],
        &["FLANNEL-POSTRTG", "!", "-s", "CLUSTER", "-d", "CLUSTER", "-m", "comment", "--comment", "flanneld masq", "-j", "MASQUERADE", "--random-fully"],
        &["FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"],
        &["FLANNEL-FWD", "-s", "CLUSTER", "-m", "comment", "--comment", "flanneld forward", "-j", "ACCEPT"],
        &["FLANNEL-FWD", "-d", "CLUSTER", "-m", "comment", "--comment", "flanneld forward", "-j", "ACCEPT"],
    ];

    /// A flanneld rule as iptables-save prints it: `-A`, the chain, the rulespec with the
    /// comment quoted and the networks filled in.
    fn as_saved(rule: &[&str], cluster: &str, pod: &str) -> String {
        let mut out = format!("-A {}", rule[0]);
        for (i, a) in rule.iter().enumerate().skip(1) {
            let a = match *a {
                "CLUSTER" => cluster.to_string(),
                "POD" => pod.to_string(),
                a if rule[i - 1] == "--comment" => format!("\"{a}\""),
                a => a.to_string(),
            };
            out.push(' ');
            out.push_str(&a);
        }
        out
    }

    fn v6_rules(masq: bool, random_fully: bool, forward: bool) -> Vec<ChainRules> {
        let (cluster, pod): (ipnet::Ipv6Net, ipnet::Ipv6Net) = (
            "fd00:10:244::/56".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        );
        flannel_rules(cluster, pod, masq, random_fully, forward)
    }

    #[test]
    fn flannels_ipv6_rules() {
        let c = v6_rules(true, true, true);
        let mut ours = Vec::new();
        for chain in &c {
            ours.push(chain.jump.clone());
            ours.extend(chain.rules.iter().cloned());
        }
        let flanneld: Vec<String> = FLANNELD_V6
            .iter()
            .map(|r| as_saved(r, "fd00:10:244::/56", "fd00:10:244:1::/64"))
            .collect();
        assert_eq!(ours, flanneld);
        assert_eq!((c[0].table, c[1].table), ("nat", "filter"));
        // Without random-fully, plain MASQUERADE, as for IPv4; the TAP's accept as for IPv4.
        let mut plain = v6_rules(true, false, true);
        assert!(plain[0].rules[4]
            .ends_with("! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE"));
        accept_forwarded_from(&mut plain, "weft0-tx");
        assert_eq!(
            plain[1].rules.last().unwrap(),
            "-A FLANNEL-FWD -i weft0-tx -m comment --comment \"flanneld forward\" -j ACCEPT"
        );
    }

    #[test]
    fn intact_rules_need_nothing() {
        let save = saved_after_install();
        for c in chains() {
            assert_eq!(drift(&save, &c), Vec::<String>::new());
        }
    }

    #[test]
    fn drift_is_found_and_repaired_in_one_restore() {
        let c = chains();
        // A rule deleted by someone: the chain is re-declared (flushed) and refilled, and
        // the jump is not duplicated.
        let save = saved_after_install().replace(&format!("{}\n", c[0].rules[4]), "");
        assert_eq!(drift(&save, &c[0]).len(), 1);
        let input = restore_input(&save, &c);
        assert!(input.contains("*nat\n:FLANNEL-POSTRTG - [0:0]\n-A FLANNEL-POSTRTG -m mark"));
        assert!(!input.contains("-A POSTROUTING"));
        // A jump deleted: it comes back; a doubled jump: one copy goes.
        let save = saved_after_install().replace(&format!("{}\n", c[0].jump), "");
        assert!(drift(&save, &c[0])[0].contains("does not jump"));
        assert!(restore_input(&save, &c).contains(&c[0].jump));
        let doubled = saved_after_install().replace(
            &format!("{}\n", c[1].jump),
            &format!("{}\n{}\n", c[1].jump, c[1].jump),
        );
        assert!(drift(&doubled, &c[1])[0].contains("2 times"));
        assert!(restore_input(&doubled, &c).contains("-D FORWARD -m comment"));
    }

    #[test]
    fn removal_touches_only_what_exists() {
        let c = chains();
        let input = removal_input(&saved_after_install(), &c);
        assert!(input.contains("-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n-F FLANNEL-POSTRTG\n-X FLANNEL-POSTRTG"));
        assert!(!input.contains("KUBE"));
        assert_eq!(
            removal_input("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", &c),
            ""
        );
    }
}
