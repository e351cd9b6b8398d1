//! flanneld's traffic rules: masquerading for traffic leaving the cluster network
//! (`--ip-masq`) and the forward accepts (`--iptables-forward-rules`), in either of
//! flanneld's two modes: [`iptables`] (chains FLANNEL-POSTRTG and FLANNEL-FWD, the default)
//! or [`nftables`] (`"EnableNFTables": true`: tables `ip flannel-ipv4` and `ip6
//! flannel-ipv6`).
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

use ipnet::Ipv4Net;

pub use iptables::{
    accept_forwarded_from, drift, flannel_rules, removal_input, restore_input, ChainRules, Iptables,
};
pub use nftables::Nftables;

/// What flanneld's traffic manager installs for this node, whichever mode renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The cluster network.
    pub network: Ipv4Net,
    /// This node's subnet.
    pub subnet: Ipv4Net,
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

impl Rules for Iptables {
    fn ensure(&self) -> Result<Vec<String>, String> {
        Iptables::ensure(self)
    }
    fn remove(&self) -> Result<(), String> {
        Iptables::remove(self)
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

/// Removes what `mode` left on this host (its chains or tables), whatever its flags were.
/// A host without the mode's tools has nothing of it to remove.
pub fn remove_leftovers(mode: Mode) -> Result<(), String> {
    match mode {
        Mode::Iptables => Iptables::new(iptables::all_chains()).remove(),
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
            Mode::Iptables => {
                let mut chains = flannel_rules(
                    plan.network,
                    plan.subnet,
                    plan.masq,
                    plan.random_fully,
                    plan.forward,
                );
                for dev in &plan.forward_from {
                    accept_forwarded_from(&mut chains, dev);
                }
                Box::new(Iptables::new(chains))
            }
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
