//! flanneld's traffic rules: masquerading for traffic leaving the cluster network
//! (`--ip-masq`) and the forward accepts (`--iptables-forward-rules`), in either of
//! flanneld's two modes: [`iptables`] (chains FLANNEL-POSTRTG and FLANNEL-FWD, the default)
//! or [`nftables`] (`"EnableNFTables": true`: tables `ip flannel-ipv4` and `ip6
//! flannel-ipv6`). A dual-stack node ([`Plan::ipv6`]) gets flanneld's IPv6 rules too, the
//! IPv4 ones with its IPv6 network and subnet and `ff00::/8` for multicast: the same chains
//! in ip6tables, or the same chains in `ip6 flannel-ipv6`.
//!
//! A [`Plan`] says what the node wants; each mode renders it as its own text and applies it
//! in one transaction (`iptables-restore --noflush`, `nft -f`), checks it each resync
//! against what the kernel holds, and repairs any drift in one transaction again. At start
//! the other mode's rules are removed, as flanneld removes them, so a node switched between
//! modes keeps no rule of the one it left. Rendering and drift checks are pure; only the
//! `Iptables` and `Nftables` runners start programs.

pub mod iptables;
pub mod nftables;
mod tool;

use ipnet::{Ipv4Net, Ipv6Net};

pub use iptables::{
    accept_forwarded_from, drift, flannel_rules, removal_input, restore_input, ChainRules, Iptables,
};
pub use nftables::Nftables;

/// What flanneld's traffic manager installs for this node, whichever mode renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The IPv4 side: the cluster network and this node's subnet (iptables, or `table ip
    /// flannel-ipv4`). `None` on an IPv6-only node: nothing IPv4 is installed.
    pub ipv4: Option<V4Plan>,
    /// The IPv6 side of a dual-stack or IPv6-only node: the same rules for its IPv6
    /// network and subnet (ip6tables, or `table ip6 flannel-ipv6`). `None`: nothing IPv6
    /// is installed.
    pub ipv6: Option<V6Plan>,
    /// `--ip-masq`: the masquerade rules.
    pub masq: bool,
    /// Masquerade with random-fully ports (unless `--ip-masq-fully-random-disable`).
    pub random_fully: bool,
    /// `--iptables-forward-rules`: the forward accepts.
    pub forward: bool,
    /// Devices whose forwarded frames are accepted too: the tunnel GSO injection TAP, whose
    /// frames are weft's own encapsulated super-packets on their way out of the underlay.
    pub forward_from: Vec<String>,
}

/// The networks of one family's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidePlan<N> {
    /// The cluster's network of the family (`Network`, `IPv6Network`).
    pub network: N,
    /// This node's subnet of the family.
    pub subnet: N,
}

/// The IPv4 networks of a node's rules.
pub type V4Plan = SidePlan<Ipv4Net>;

/// The IPv6 networks of a dual-stack or IPv6-only node's rules.
pub type V6Plan = SidePlan<Ipv6Net>;

/// An address family, as each mode names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    /// The iptables programs' prefix: `iptables` or `ip6tables`.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        }
    }

    /// nftables' family and address keyword: `ip` or `ip6`.
    pub fn nft(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    /// The multicast range flanneld never masquerades traffic to (flannel's
    /// `pkg/trafficmngr/iptables/iptables.go`, `masqRules` and `masqIP6Rules`).
    pub fn multicast(self) -> &'static str {
        match self {
            Family::Ipv4 => "224.0.0.0/4",
            Family::Ipv6 => "ff00::/8",
        }
    }
}

/// A network of one family ([`Ipv4Net`] or [`Ipv6Net`]): rules for a network and a subnet
/// of the same family are rendered from its type.
pub trait FamilyNet: std::fmt::Display + Copy + sealed::Sealed {
    /// Its family.
    const FAMILY: Family;
}

impl FamilyNet for Ipv4Net {
    const FAMILY: Family = Family::Ipv4;
}

impl FamilyNet for Ipv6Net {
    const FAMILY: Family = Family::Ipv6;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for ipnet::Ipv4Net {}
    impl Sealed for ipnet::Ipv6Net {}
}

/// Which of flanneld's traffic managers a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// iptables (flanneld's default).
    Iptables,
    /// nftables (`EnableNFTables`).
    Nftables,
}

impl Mode {
    /// The mode for net-conf's `EnableNFTables`.
    pub fn from_config(enable_nftables: bool) -> Mode {
        if enable_nftables {
            Mode::Nftables
        } else {
            Mode::Iptables
        }
    }

    /// `iptables` or `nftables`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
}

/// One mode's rules on this host.
trait Rules: Send + Sync {
    /// Checks the rules and repairs any drift; returns what was wrong (empty: intact).
    fn ensure(&self) -> Result<Vec<String>, String>;
    /// Removes them.
    fn remove(&self) -> Result<(), String>;
}

/// iptables mode: one [`Iptables`] per family the node has rules in, checked, repaired
/// and removed each on its own, so one family's failure leaves the other's rules intact.
struct IptablesStack(Vec<Iptables>);

impl IptablesStack {
    /// What `plan` wants of iptables and, for a dual-stack plan, of ip6tables.
    fn new(plan: &Plan) -> IptablesStack {
        let (masq, random_fully, forward) = (plan.masq, plan.random_fully, plan.forward);
        let mut families = Vec::new();
        if let Some(v4) = plan.ipv4 {
            let chains = flannel_rules(v4.network, v4.subnet, masq, random_fully, forward);
            families.push((Family::Ipv4, chains));
        }
        if let Some(v6) = plan.ipv6 {
            let chains = flannel_rules(v6.network, v6.subnet, masq, random_fully, forward);
            families.push((Family::Ipv6, chains));
        }
        let mut stack = Vec::new();
        for (family, mut chains) in families {
            for dev in &plan.forward_from {
                accept_forwarded_from(&mut chains, dev);
            }
            if !chains.is_empty() {
                stack.push(Iptables::new(family, chains));
            }
        }
        IptablesStack(stack)
    }
}

/// `Ok` with each `Ok`'s items, or every error joined.
fn gather<T>(results: impl Iterator<Item = Result<Vec<T>, String>>) -> Result<Vec<T>, String> {
    let (mut items, mut errors) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok(i) => items.extend(i),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(items)
    } else {
        Err(errors.join("; "))
    }
}

/// `Ok` if every one is, or every error joined.
fn all_ok(results: impl IntoIterator<Item = Result<(), String>>) -> Result<(), String> {
    gather(results.into_iter().map(|r| r.map(|()| Vec::<()>::new()))).map(drop)
}

impl Rules for IptablesStack {
    fn ensure(&self) -> Result<Vec<String>, String> {
        gather(self.0.iter().map(Iptables::ensure))
    }
    fn remove(&self) -> Result<(), String> {
        all_ok(self.0.iter().map(Iptables::remove))
    }
}

impl Rules for Nftables {
    fn ensure(&self) -> Result<Vec<String>, String> {
        Nftables::ensure(self)
    }
    fn remove(&self) -> Result<(), String> {
        Nftables::remove(self)
    }
}

/// Removes what `mode` left on this host (its chains or tables, both families), whatever
/// its flags were. A host without the mode's tools has nothing of it to remove, nor has a
/// host whose ip6tables cannot list its tables (no IPv6 netfilter): an IPv4-only node
/// never needs ip6tables.
pub fn remove_leftovers(mode: Mode) -> Result<(), String> {
    match mode {
        Mode::Iptables => {
            let v4 = Iptables::new(Family::Ipv4, iptables::all_chains()).remove();
            let v6 = Iptables::new(Family::Ipv6, iptables::all_chains()).remove_leftovers();
            all_ok([v4, v6])
        }
        Mode::Nftables => Nftables::remove_tables(),
    }
}

/// Whether `plan` in `mode` installs anything: nftables mode always has its two tables, as
/// flanneld creates them at start whatever its flags.
pub fn wanted(plan: &Plan, mode: Mode) -> bool {
    mode == Mode::Nftables || plan.masq || plan.forward
}

/// flanneld's rules while weft runs: checked and repaired by [`resync`](Self::resync),
/// removed (in one transaction) when dropped.
pub struct InstalledRules {
    rules: Box<dyn Rules>,
    mode: Mode,
    /// A resync failing, logged once until it works again.
    failing: crate::quiet::Quiet<String>,
}

impl InstalledRules {
    /// Installs `plan` in `mode`. Returns the guard even when the first install failed
    /// (the next resync tries again), with the error beside it.
    pub fn install(plan: &Plan, mode: Mode) -> (InstalledRules, Result<(), String>) {
        let rules: Box<dyn Rules> = match mode {
            Mode::Iptables => Box::new(IptablesStack::new(plan)),
            Mode::Nftables => Box::new(Nftables::new(plan)),
        };
        let r = rules.ensure().map(|_| ());
        let failing = crate::quiet::Quiet::new();
        (
            InstalledRules {
                rules,
                mode,
                failing,
            },
            r,
        )
    }

    /// `iptables` or `nftables`.
    pub fn mode(&self) -> &'static str {
        self.mode.name()
    }

    /// Checks the rules, repairs any drift, and logs what it repaired.
    pub fn resync(&self) {
        let mode = self.mode.name();
        let outcome = self.rules.ensure();
        if outcome.is_ok() && self.failing.clear() {
            tracing::info!(mode, "flanneld's rules can be checked again");
        }
        match outcome {
            Ok(p) if !p.is_empty() => {
                tracing::info!(mode, repaired = %p.join("; "), "repaired flanneld's rules")
            }
            Ok(_) => {}
            Err(e) => {
                if self.failing.report(e.to_string()) {
                    tracing::warn!(mode, error = %e, "cannot check flanneld's rules (retried every resync)");
                }
            }
        }
    }
}

impl Drop for InstalledRules {
    fn drop(&mut self) {
        if crate::teardown::keeping() {
            return;
        }
        if let Err(e) = self.rules.remove() {
            tracing::warn!(mode = self.mode.name(), error = %e, "cannot remove flanneld's rules");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(masq: bool, forward: bool, ipv6: bool) -> Plan {
        Plan {
            ipv4: Some(V4Plan {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.1.0/24".parse().unwrap(),
            }),
            ipv6: ipv6.then(|| V6Plan {
                network: "fd00:10:244::/56".parse().unwrap(),
                subnet: "fd00:10:244:1::/64".parse().unwrap(),
            }),
            masq,
            random_fully: true,
            forward,
            forward_from: vec!["weft0-tx".into()],
        }
    }

    /// Each family's tool and chains.
    fn stack(p: &Plan) -> Vec<(Family, Vec<&'static str>)> {
        IptablesStack::new(p)
            .0
            .iter()
            .map(|i| (i.family(), i.chains().iter().map(|c| c.chain).collect()))
            .collect()
    }

    #[test]
    fn ip6tables_only_for_a_dual_stack_plan() {
        let both = vec!["FLANNEL-POSTRTG", "FLANNEL-FWD"];
        assert_eq!(
            stack(&plan(true, true, false)),
            [(Family::Ipv4, both.clone())]
        );
        assert_eq!(
            stack(&plan(true, true, true)),
            [(Family::Ipv4, both.clone()), (Family::Ipv6, both)]
        );
        assert_eq!(
            stack(&plan(false, true, true)),
            [
                (Family::Ipv4, vec!["FLANNEL-FWD"]),
                (Family::Ipv6, vec!["FLANNEL-FWD"])
            ]
        );
        // Nothing asked for: not even a listing.
        assert!(stack(&plan(false, false, true)).is_empty());
        // The injection TAP's accept in both FORWARD chains, its outer header being either.
        let s = IptablesStack::new(&plan(false, true, true));
        for i in &s.0 {
            let last = i.chains()[0].rules.last().unwrap();
            assert!(last.starts_with("-A FLANNEL-FWD -i weft0-tx "), "{last}");
        }
        let v6 = &s.0[1].chains()[0].rules[0];
        assert!(
            v6.starts_with("-A FLANNEL-FWD -s fd00:10:244::/56 "),
            "{v6}"
        );
    }

    #[test]
    fn errors_are_gathered_not_short_circuited() {
        let r = gather([Ok(vec![1]), Err("a".into()), Ok(vec![2]), Err("b".into())].into_iter());
        assert_eq!(r, Err("a; b".to_string()));
        assert_eq!(
            gather([Ok(vec![1]), Ok(vec![2])].into_iter()),
            Ok(vec![1, 2])
        );
        assert_eq!(all_ok([Ok(()), Ok(())]), Ok(()));
        assert_eq!(all_ok([Err("x".into()), Ok(())]), Err("x".to_string()));
    }
}
