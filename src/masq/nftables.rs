//! flanneld's nftables rules (`"EnableNFTables": true`, flanneld's
//! `pkg/trafficmngr/nftables`), rule for rule: tables `ip flannel-ipv4` and `ip6
//! flannel-ipv6`, each created at start with flanneld's comment; in the IPv4 one, chain
//! `postrtg` (nat, hook postrouting, priority srcnat) with the kube-proxy mark return, the
//! three returns and the two masquerades (`--ip-masq`), and chain `forward` (filter, hook
//! forward, priority filter) with the two accepts (`--iptables-forward-rules`), both with
//! policy accept and flanneld's chain comments. A dual-stack node gets the same two chains
//! in the IPv6 table, with `ip6` matches on its IPv6 network and subnet and `ff00::/8` for
//! multicast, as flanneld's `addMasqRules` writes them for `knftables.IPv6Family`.
//!
//! Applied as flanneld's knftables applies them, through the `nft` program, but as one
//! `nft -f` transaction that recreates both tables (nothing of ours is ever half there).
//! What the kernel then lists is kept as the reference, so a resync compares the listing
//! with it (any rule added, deleted or changed by someone else, a table deleted) and
//! re-applies on a difference. flanneld checks once whether the kernel takes `masquerade
//! fully-random` and falls back to plain `masquerade`; so does [`Nftables::new`].

use std::sync::Mutex;

use super::tool::{self, ToolError};
use super::{Family, FamilyNet, Plan};

/// flanneld's table names.
pub const TABLES: [(&str, &str); 2] = [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")];

/// The `nft -f` script that recreates both tables as `plan` wants them, in one transaction
/// (`table` then `delete table`: the delete never fails for a table that was missing).
/// The IPv6 table gets its chains only from a dual-stack plan; flanneld creates it anyway.
pub fn ruleset(plan: &Plan, random_fully: bool) -> String {
    let mut s = String::new();
    for (family, name) in TABLES {
        s.push_str(&format!(
            "table {family} {name}\ndelete table {family} {name}\ntable {family} {name} {{\n\tcomment \"rules for {name}\"\n"
        ));
        if let Some(side) = Side::of(plan, family) {
            if plan.masq {
                s.push_str(&postrtg(&side, random_fully));
            }
            if plan.forward {
                s.push_str(&forward(&side, &plan.forward_from));
            }
        }
        s.push_str("}\n");
    }
    s
}

/// One table's family and addresses, as text.
struct Side {
    /// `ip` or `ip6`: the address keyword.
    ip: &'static str,
    multicast: &'static str,
    net: String,
    sub: String,
}

impl Side {
    /// The side of `plan` in the table of `family` (`ip`, `ip6`), if the plan has it.
    fn of(plan: &Plan, family: &str) -> Option<Side> {
        if family == Family::Ipv4.nft() {
            plan.ipv4.map(|v4| Side::new(v4.network, v4.subnet))
        } else {
            plan.ipv6.map(|v6| Side::new(v6.network, v6.subnet))
        }
    }

    fn new<N: FamilyNet>(net: N, sub: N) -> Side {
        Side {
            ip: N::FAMILY.nft(),
            multicast: N::FAMILY.multicast(),
            net: net.to_string(),
            sub: sub.to_string(),
        }
    }
}

fn postrtg(side: &Side, random_fully: bool) -> String {
    let Side {
        ip,
        multicast,
        net,
        sub,
    } = side;
    let masquerade = if random_fully {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let rules = [
        // Packets kube-proxy marked for masquerading: it does that itself.
        "meta mark 0x4000 return".to_string(),
        // Pod to pod, either way: no NAT.
        format!("{ip} saddr {sub} {ip} daddr {net} return"),
        format!("{ip} saddr {net} {ip} daddr {sub} return"),
        // From outside to our pods: no NAT.
        format!("{ip} saddr != {sub} {ip} daddr {net} return"),
        // Pods to the outside world (not multicast), and the host to other nodes' pods.
        format!("{ip} saddr {net} {ip} daddr != {multicast} {masquerade}"),
        format!("{ip} saddr != {net} {ip} daddr {net} {masquerade}"),
    ];
    chain(
        "postrtg",
        "chain to manage traffic masquerading by flannel",
        "type nat hook postrouting priority srcnat; policy accept;",
        &rules,
    )
}

fn forward(side: &Side, forward_from: &[String]) -> String {
    let (ip, net) = (side.ip, &side.net);
    let mut rules = vec![
        format!("{ip} saddr {net} accept"),
        format!("{ip} daddr {net} accept"),
    ];
    for dev in forward_from {
        rules.push(format!("iifname \"{dev}\" accept"));
    }
    chain(
        "forward",
        "chain to accept flannel traffic",
        "type filter hook forward priority filter; policy accept;",
        &rules,
    )
}

fn chain(name: &str, comment: &str, hook: &str, rules: &[String]) -> String {
    let mut s = format!("\tchain {name} {{\n\t\tcomment \"{comment}\"\n\t\t{hook}\n");
    for r in rules {
        s.push_str(&format!("\t\t{r}\n"));
    }
    s.push_str("\t}\n");
    s
}

/// Our tables' blocks in `nft list ruleset` output (a top-level block starts with `table
/// <family> <name> {` and ends with a `}` line of its own), in [`TABLES`] order.
pub fn our_tables(listing: &str) -> String {
    let mut out = String::new();
    for (family, name) in TABLES {
        let head = format!("table {family} {name} {{");
        let mut inside = false;
        for line in listing.lines() {
            if line == head {
                inside = true;
            }
            if inside {
                out.push_str(line);
                out.push('\n');
                if line == "}" {
                    break;
                }
            }
        }
    }
    out
}

/// What differs between the reference listing and `now`, one entry per line missing or
/// added (empty: intact).
pub fn drift(reference: &str, now: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let (r, n): (Vec<&str>, Vec<&str>) = (reference.lines().collect(), now.lines().collect());
    for (family, name) in TABLES {
        let head = format!("table {family} {name} {{");
        if r.contains(&head.as_str()) && !n.contains(&head.as_str()) {
            problems.push(format!("table {family} {name} is gone"));
        }
    }
    if problems.is_empty() {
        for l in r.iter().filter(|l| !n.contains(l)) {
            problems.push(format!("missing: {}", l.trim()));
        }
        for l in n.iter().filter(|l| !r.contains(l)) {
            problems.push(format!("added: {}", l.trim()));
        }
        if problems.is_empty() && r != n {
            problems.push("rules reordered".to_string());
        }
    }
    problems
}

/// Runs `nft` with `args`, feeding it `stdin`; returns its output.
fn nft(args: &[&str], stdin: &str) -> Result<String, ToolError> {
    tool::run("nft", args, stdin, "nftables")
}

/// The rules of one node, applied with `nft` and kept as the kernel listed them.
pub struct Nftables {
    script: String,
    reference: Mutex<Option<String>>,
}

impl Nftables {
    /// For `plan`; masquerades fully-random only where the kernel takes it (checked with
    /// `nft --check`, as flanneld checks), and never with random-fully disabled.
    pub fn new(plan: &Plan) -> Nftables {
        let mut script = ruleset(plan, plan.random_fully);
        if plan.masq && plan.random_fully && nft(&["--check", "-f", "-"], &script).is_err() {
            let plain = ruleset(plan, false);
            if nft(&["--check", "-f", "-"], &plain).is_ok() {
                tracing::warn!("nftables: masquerade fully-random is not supported here; masquerading without it, as flanneld does");
                script = plain;
            }
        }
        Nftables {
            script,
            reference: Mutex::new(None),
        }
    }

    /// The script applied.
    pub fn script(&self) -> &str {
        &self.script
    }

    fn listing() -> Result<String, String> {
        Ok(our_tables(&nft(&["list", "ruleset"], "")?))
    }

    /// Applies the script unless the kernel's listing is still the one it left; returns
    /// what had drifted (empty: intact, or applied for the first time).
    pub fn ensure(&self) -> Result<Vec<String>, String> {
        let mut reference = self.reference.lock().unwrap_or_else(|e| e.into_inner());
        let problems = match reference.as_deref() {
            Some(r) => {
                let p = drift(r, &Self::listing()?);
                if p.is_empty() {
                    return Ok(p);
                }
                p
            }
            None => Vec::new(),
        };
        nft(&["-f", "-"], &self.script)?;
        *reference = Some(Self::listing()?);
        Ok(problems)
    }

    /// Deletes both tables.
    pub fn remove(&self) -> Result<(), String> {
        Self::remove_tables()
    }

    /// Deletes flanneld's tables if present (`nft` missing: nothing to delete).
    pub fn remove_tables() -> Result<(), String> {
        let mut script = String::new();
        for (family, name) in TABLES {
            script.push_str(&format!(
                "table {family} {name}\ndelete table {family} {name}\n"
            ));
        }
        match nft(&["-f", "-"], &script) {
            Err(ToolError::Missing(_)) => Ok(()),
            r => r.map(|_| ()).map_err(String::from),
        }
    }
}

#[cfg(test)]
mod tests;
