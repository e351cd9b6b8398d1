//! The one reconciler: makes the kernel hold what a backend's plan wants, and keeps it so.
//!
//! Every backend hands its [`PeerRule`] and, where it forwards through a device, the device
//! and its [`LinkPlan`] to a [`Reconciler`]. On each lease change [`Reconciler::update`]
//! plans and applies (tunnel entries first, so the kernel never ARPs for an onlink gateway,
//! then the routes); [`Reconciler::check`], every second, puts back what someone undid: a
//! device set down, its MAC rewritten, its routes, entries or peer routes removed. A device
//! deleted or replaced is beyond repair in place: the backend is restarted. Dropping the
//! reconciler removes the peer routes, then the device (the kernel takes its entries along).
//!
//! A dual-stack backend gives it one rule per family and, for the kernel's vxlan, one
//! device per family: one route set holds both families' peer routes, so a start's first
//! update adopts or removes what an earlier run left of either.

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::IpNet;

use super::plan::{subnet_address, Entry, LinkPlan, PeerPlan, PeerRule};
use super::routes::{Reach, RouteSet};
use super::{Error, Health, Running};
use crate::lease::Peer;
use crate::netlink::{LinkGuard, Netlink};
use crate::quiet::{Quiet, QuietSet};

/// A device weft made and the state it wants on it.
struct Device {
    guard: LinkGuard,
    plan: LinkPlan,
}

/// Applies a backend's plans and repairs what it installed. Fields drop in order: the peer
/// routes go first, then the device.
pub(crate) struct Reconciler {
    routes: RouteSet,
    devices: Vec<Device>,
    nl: Arc<Netlink>,
    rules: Vec<PeerRule>,
    label: String,
    entries: BTreeMap<IpNet, Entry>,
    skipped: QuietSet<IpNet>,
    /// Peer routes that could not be programmed, logged once until they can.
    failing: Quiet<String>,
}

impl Reconciler {
    /// For a backend forwarding by `rules` (one per address family); `label` prefixes its
    /// log lines. The first [`update`](Self::update) removes peer routes an earlier run
    /// left that it does not want.
    pub(crate) fn new(nl: &Arc<Netlink>, rules: Vec<PeerRule>, label: &str) -> Reconciler {
        Reconciler {
            routes: RouteSet::new(nl.clone()),
            devices: Vec::new(),
            nl: nl.clone(),
            rules,
            label: label.to_string(),
            entries: BTreeMap::new(),
            skipped: QuietSet::default(),
            failing: Quiet::new(),
        }
    }

    /// Takes the device `index` (just created: deleted when the reconciler drops) and
    /// configures it as `plan` says: address, MTU, up, MAC, routes.
    pub(crate) fn adopt_device(&mut self, index: u32, plan: LinkPlan) -> Result<(), Error> {
        let configure = |source| Error::Configure {
            name: plan.name.clone(),
            source,
        };
        let mut guard = LinkGuard::new(self.nl.clone(), index, true);
        for &a in &plan.addresses {
            let host = if a.is_ipv4() { 32 } else { 128 };
            self.nl.add_addr(index, a, host).map_err(configure)?;
        }
        self.nl
            .set_mtu_up(index, plan.mtu, plan.txqueuelen)
            .map_err(configure)?;
        for &r in &plan.routes {
            guard.route(r).map_err(configure)?;
        }
        self.devices.push(Device { guard, plan });
        // As flanneld (#1795): the MAC after link-up must be the one the lease publishes
        // (systemd's MACAddressPolicy may rewrite it).
        for fixed in self.fix_macs() {
            tracing::warn!("{fixed}");
        }
        Ok(())
    }

    /// Plans for the live `peers` and makes the kernel match.
    pub(crate) fn update(&mut self, peers: &[Peer]) {
        let needs_reach = self.rules.iter().any(PeerRule::needs_reach);
        let reach = needs_reach.then(|| Reach::read(&self.nl));
        let mut plan = PeerPlan::default();
        for rule in &self.rules {
            let underlay = rule.underlay;
            let on_link = |ip| reach.as_ref().is_some_and(|r| r.direct(ip, underlay));
            plan.merge(rule.plan(peers, &on_link));
        }
        self.apply(plan);
    }

    fn apply(&mut self, plan: PeerPlan) {
        for (subnet, why) in self.skipped.news(plan.skipped.iter()) {
            tracing::warn!(%subnet, "{why}");
        }
        let label = &self.label;
        for (sn, e) in &self.entries {
            if plan.entries.get(sn) != Some(e) {
                remove_entry(&self.nl, *sn, e, label);
            }
        }
        for (sn, e) in &plan.entries {
            if self.entries.get(sn) == Some(e) {
                continue;
            }
            if let Err(err) = program_entry(&self.nl, *sn, e) {
                tracing::warn!(%sn, error = %err, "{label}: cannot program the tunnel entries (retried by the check)");
            }
        }
        self.entries = plan.entries;
        match self.routes.set(plan.routes) {
            Ok(changes) => {
                self.failing.clear();
                for c in changes {
                    tracing::info!("{label}: {c}");
                }
            }
            Err(e) => {
                if self.failing.report(e.clone()) {
                    tracing::warn!(error = %e, "{label}: cannot program the peer routes (retried on each change and check; a tunnelled backend's packets for those peers take the tunnel meanwhile)");
                }
            }
        }
    }

    /// Puts back what someone undid; a device deleted, replaced, or that cannot be set up
    /// again is [`Health::Broken`].
    pub(crate) fn check(&mut self) -> Health {
        let mut fixed = Vec::new();
        for device in &self.devices {
            match self.check_device(device) {
                Ok(Some(f)) => fixed.extend(f),
                // Netlink itself failing says nothing about the device: look again later.
                Ok(None) => return Health::Fine,
                Err(broken) => return Health::Broken(broken),
            }
        }
        fixed.extend(self.fix_macs());
        fixed.extend(self.restore_entries());
        if let Health::Repaired(r) = self.routes.check(&self.label) {
            fixed.push(r);
        }
        if fixed.is_empty() {
            Health::Fine
        } else {
            Health::Repaired(fixed.join("; "))
        }
    }

    /// The device still there under its name, up, with its routes: what was repaired
    /// (`None`: netlink could not say), or why it cannot be.
    fn check_device(&self, device: &Device) -> Result<Option<Vec<String>>, String> {
        let Device { guard, plan } = device;
        let name = &plan.name;
        let link = match self.nl.link_by_name(name) {
            Ok(Some(l)) => l,
            Ok(None) => return Err(format!("{name} was deleted")),
            Err(_) => return Ok(None),
        };
        if link.index != guard.index() {
            return Err(format!("{name} was replaced by another device"));
        }
        let mut fixed = Vec::new();
        if !link.up {
            // The kernel drops a down device's routes with it; they are put back below.
            self.nl
                .set_mtu_up(link.index, plan.mtu, plan.txqueuelen)
                .map_err(|e| format!("{name} was set down and cannot be set up: {e}"))?;
            fixed.push(format!("{name} was set down: set it up"));
        }
        for &r in guard.routes() {
            if !self.nl.has_route(r, link.index).unwrap_or(true) {
                self.nl.replace_route(r, link.index).map_err(|e| {
                    format!("the route to {r} via {name} was removed and cannot be restored: {e}")
                })?;
                fixed.push(format!("restored the route to {r} via {name}"));
            }
        }
        Ok(Some(fixed))
    }

    /// Puts the plans' MACs back where something changed them: what was done.
    fn fix_macs(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter_map(|d| self.fix_mac(d))
            .collect()
    }

    /// Puts `d`'s planned MAC back if something changed it: what was done, if anything.
    fn fix_mac(&self, d: &Device) -> Option<String> {
        let (index, name, mac) = (d.guard.index(), &d.plan.name, d.plan.mac?);
        let link = self.nl.link_by_index(index).ok()??;
        if link.mac == Some(mac) {
            return None;
        }
        let got = link.mac.map(|m| m.to_string()).unwrap_or_default();
        Some(match self.nl.set_mac(index, mac) {
            Ok(()) => format!("{name}'s MAC was {got}, not the lease's VtepMAC {mac}: set it back"),
            Err(e) => format!(
                "{name}'s MAC is {got}, not the lease's VtepMAC {mac}, and cannot be set: {e}"
            ),
        })
    }

    /// Tunnel entries someone deleted or changed, put back: a line per repair.
    fn restore_entries(&self) -> Vec<String> {
        let mut fixed = Vec::new();
        for d in &self.devices {
            let index = d.guard.index();
            let mut mine = self
                .entries
                .iter()
                .filter(|(_, e)| e.device == index)
                .peekable();
            if mine.peek().is_none() {
                continue;
            }
            let (Ok(neigh), Ok(fdb)) = (
                self.nl.neighbours(index, false),
                self.nl.neighbours(index, true),
            ) else {
                continue;
            };
            for (sn, e) in mine {
                let address = subnet_address(*sn);
                if neigh.contains(&(address, e.mac)) && fdb.contains(&(e.public_ip, e.mac)) {
                    continue;
                }
                match program_entry(&self.nl, *sn, e) {
                    Ok(()) => fixed.push(format!("restored the neighbour/FDB entries for {sn}")),
                    // Retried on the next check; said once a second at debug, not warn.
                    Err(err) => {
                        tracing::debug!(%sn, error = %err, "cannot restore the entries yet")
                    }
                }
            }
        }
        fixed
    }
}

/// A backend whose forwarding is all in its reconciled plan (host-gw, the kernel's vxlan).
pub(crate) struct Reconciled {
    /// [`Running::describe`]'s line.
    pub(crate) describe: String,
    /// What it installed, and keeps.
    pub(crate) reconciler: Reconciler,
}

impl Running for Reconciled {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn peers_changed(&mut self, peers: &[Peer]) {
        self.reconciler.update(peers);
    }

    fn check(&mut self) -> Health {
        self.reconciler.check()
    }

    fn outlives_process(&self) -> bool {
        true
    }
}

/// The neighbour and FDB entry of one tunnelled peer.
fn program_entry(nl: &Netlink, sn: IpNet, e: &Entry) -> std::io::Result<()> {
    nl.replace_neigh(e.device, subnet_address(sn), e.mac)?;
    nl.replace_fdb(e.device, e.mac, e.public_ip)
}

fn remove_entry(nl: &Netlink, sn: IpNet, e: &Entry, label: &str) {
    if let Err(err) = nl.del_neigh(e.device, subnet_address(sn)) {
        tracing::warn!(%sn, error = %err, "{label}: cannot remove the neighbour entry");
    }
    if let Err(err) = nl.del_fdb(e.device, e.mac, e.public_ip) {
        tracing::warn!(%sn, error = %err, "{label}: cannot remove the FDB entry");
    }
}

/// The index of interface `name` (the underlay, or a device just made).
pub(crate) fn link_index(nl: &Netlink, name: &str) -> Result<u32, Error> {
    let configure = |source| Error::Configure {
        name: name.to_string(),
        source,
    };
    Ok(nl
        .link_by_name(name)
        .map_err(configure)?
        .ok_or_else(|| configure(std::io::Error::other("no such interface")))?
        .index)
}
