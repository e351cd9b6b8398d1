//! The one reconciler: makes the kernel hold what a backend's plan wants, and keeps it so.
//!
//! Every backend hands its [`PeerRule`] and, where it forwards through a device, the device
//! and its [`LinkPlan`] to a [`Reconciler`]. [`Reconciler::update`] plans for all the peers
//! and applies (tunnel entries first, so the kernel never ARPs for an onlink gateway, then
//! the routes); a lease change is a patch of the peers it touches ([`Reconciler::patch`]: a
//! few requests, whatever the number of peers). [`Reconciler::check`], each second, reads
//! the kernel's notifications (`crate::netlink::events`); when one says something it keeps
//! was changed (or some were lost), it reads the kernel's tables and puts back what someone
//! undid: a device set down, its MAC rewritten, its routes, entries or peer routes removed.
//! A device deleted or replaced is beyond repair in place: the backend is restarted.
//! Dropping the reconciler removes the peer routes, then the device (the kernel takes its
//! entries along).
//!
//! A dual-stack backend gives it one rule per family and, for the kernel's vxlan, one
//! device per family: one route set holds both families' peer routes, so a start's first
//! update adopts or removes what an earlier run left of either.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::plan::{subnet_address, Entry, LinkPlan, PeerPlan, PeerRule};
use super::routes::{Reach, RouteSet};
use super::{Error, Health, Running};
use crate::lease::{Peer, PeerChanges, SubnetPair};
use crate::netlink::events::{Change, Events};
use crate::netlink::{LinkGuard, Netlink};
use crate::quiet::{Quiet, QuietSet};
use crate::wire::MacAddr;

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
    /// The planned peers by key ([`Peer::key`]): their subnets are what a patch that puts
    /// or removes one touches.
    planned: BTreeMap<SubnetPair, Peer>,
    /// The planned FDB entries, (device, MAC) -> destination, to judge notifications.
    fdb: BTreeMap<(u32, MacAddr), IpAddr>,
    /// The kernel's notifications (`None` where they could not be had: every check looks).
    events: Option<Events>,
    /// Whether the last look found everything as planned and nothing failed since.
    settled: bool,
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
            planned: BTreeMap::new(),
            fdb: BTreeMap::new(),
            events: open_events(label),
            settled: false,
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
        for fixed in self.fix_macs(&mut true) {
            tracing::warn!("{fixed}");
        }
        Ok(())
    }

    /// Plans for the live `peers` (all of them) and makes the kernel match: one dump of the
    /// peer routes, and of the main table where a rule asks which peers are direct.
    pub(crate) fn update(&mut self, peers: &[Peer]) {
        let reach = self.needs_reach().then(|| Reach::read(&self.nl));
        let plan = self.plan(peers, reach.as_ref());
        self.planned = peers.iter().map(|p| (p.key(), *p)).collect();
        self.apply(plan);
    }

    /// Plans for the peers `changes` puts and removes the state of those it says are gone,
    /// leaving every other peer's as it is: no dump, a few requests per peer changed,
    /// whatever the number of peers. (Two leases claiming one IPv6 subnet, which the
    /// table refuses, may leave it unrouted here until the next full update.)
    pub(crate) fn patch(&mut self, changes: &PeerChanges) {
        let mut touched = BTreeSet::new();
        let keys = changes.put.iter().map(Peer::key);
        for key in changes.gone.iter().copied().chain(keys) {
            touched.extend(self.planned.remove(&key).iter().flat_map(subnets_of));
        }
        for p in &changes.put {
            touched.extend(subnets_of(p));
            self.planned.insert(p.key(), *p);
        }
        let plan = {
            let reach = self.needs_reach().then(|| Reach::ask(&self.nl));
            self.plan(&changes.put, reach.as_ref())
        };
        self.apply_within(&touched, plan);
    }

    fn needs_reach(&self) -> bool {
        self.rules.iter().any(PeerRule::needs_reach)
    }

    /// Every rule's plan for `peers`, as one.
    fn plan(&self, peers: &[Peer], reach: Option<&Reach>) -> PeerPlan {
        let mut plan = PeerPlan::default();
        for rule in &self.rules {
            let underlay = rule.underlay;
            let on_link = |ip| reach.is_some_and(|r| r.direct(ip, underlay));
            plan.merge(rule.plan(peers, &on_link));
        }
        plan
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
            if self.entries.get(sn) != Some(e) && !program_entry_or_warn(&self.nl, *sn, e, label) {
                self.settled = false;
            }
        }
        self.entries = plan.entries;
        self.fdb = (self.entries.values())
            .map(|e| ((e.device, e.mac), e.public_ip))
            .collect();
        let done = self.routes.set(plan.routes);
        self.routes_done(done);
    }

    /// [`apply`](Self::apply) for the subnets in `touched` only (`plan` is theirs).
    fn apply_within(&mut self, touched: &BTreeSet<IpNet>, plan: PeerPlan) {
        for (subnet, why) in self.skipped.news_within(touched, plan.skipped.iter()) {
            tracing::warn!(%subnet, "{why}");
        }
        let label = &self.label;
        // Every removal before any programming: a node that moved to another subnet keeps
        // its MAC, and its old FDB entry is the new one's too.
        let mut programs = Vec::new();
        for sn in touched {
            let (old, new) = (self.entries.remove(sn), plan.entries.get(sn).copied());
            if old != new {
                if let Some(e) = &old {
                    remove_entry(&self.nl, *sn, e, label);
                    self.fdb.remove(&(e.device, e.mac));
                }
                programs.extend(new.map(|e| (*sn, e)));
            }
            self.entries.extend(new.map(|e| (*sn, e)));
        }
        for (sn, e) in programs {
            self.settled &= program_entry_or_warn(&self.nl, sn, &e, label);
            self.fdb.insert((e.device, e.mac), e.public_ip);
        }
        let done = self.routes.patch(touched, plan.routes);
        self.routes_done(done);
    }

    /// Logs what programming the peer routes did, or its error once until it is fixed.
    fn routes_done(&mut self, done: Result<Vec<String>, String>) {
        let label = &self.label;
        match done {
            Ok(changes) => {
                self.failing.clear();
                for c in changes {
                    tracing::info!("{label}: {c}");
                }
            }
            Err(e) => {
                self.settled = false;
                if self.failing.report(e.clone()) {
                    tracing::warn!(error = %e, "{label}: cannot program the peer routes (retried on each change and check; a tunnelled backend's packets for those peers take the tunnel meanwhile)");
                }
            }
        }
    }

    /// Puts back what someone undid; a device deleted, replaced, or that cannot be set up
    /// again is [`Health::Broken`].
    pub(crate) fn check(&mut self) -> Health {
        if !self.disturbed() {
            return Health::Fine;
        }
        if self.needs_reach() {
            // Which peers a plain route reaches may have changed with the underlay: plan
            // them all again, as a start does.
            let peers: Vec<Peer> = self.planned.values().copied().collect();
            self.update(&peers);
        }
        let (health, settled) = self.full_check();
        self.settled = settled;
        health
    }

    /// Whether the kernel's notifications since the last check say something this keeps
    /// was changed (or were lost), or the last look left something to look at again;
    /// always, where notifications could not be had.
    fn disturbed(&mut self) -> bool {
        let Some(events) = self.events.as_mut() else {
            return true;
        };
        let changes = events.drain();
        let mut disturbed = !self.settled;
        for c in &changes {
            disturbed = disturbed || self.disturbs(c);
        }
        disturbed
    }

    /// Whether `c` may have undone what this keeps: a change to one of its devices or its
    /// underlay, its route deleted or replaced by another, its entry deleted or given
    /// another address. What it did itself (its entries and routes as planned, those of
    /// peers gone) is not.
    fn disturbs(&self, c: &Change) -> bool {
        let ours = |i: u32| self.devices.iter().any(|d| d.guard.index() == i);
        let underlay = |i: u32| self.rules.iter().any(|r| r.underlay == i);
        match c {
            Change::Lost => true,
            Change::Link(i) | Change::Address(i) => ours(*i) || underlay(*i),
            Change::Route {
                gone,
                dst,
                oif,
                peer,
            } => {
                let device = self.devices.iter().find(|d| d.guard.routes().contains(dst));
                match (self.routes.wanted(dst), device) {
                    // Ours deleted, or another put in its place.
                    (Some(w), _) => (peer.as_ref() == Some(w)) == *gone,
                    (None, Some(d)) => (oif == &Some(d.guard.index())) == *gone,
                    // A peer route it does not want (an earlier weft's): to be removed.
                    (None, None) => !*gone && peer.is_some(),
                }
            }
            Change::Neighbour {
                gone,
                index,
                bridge,
                ip,
                mac,
                permanent,
            } => {
                let wanted = match bridge {
                    // An FDB entry: its MAC is the key, the destination the value.
                    true => self.fdb.get(&(*index, *mac)).map(|d| d == ip),
                    false => self.neighbour_mac(*index, *ip).map(|m| m == *mac),
                };
                // Ours deleted, re-pointed, or no longer permanent.
                let undone = |same: bool| same == *gone || (same && !permanent);
                ours(*index) && wanted.is_some_and(undone)
            }
        }
    }

    /// The MAC planned for the neighbour `ip` on device `index`, if any.
    fn neighbour_mac(&self, index: u32, ip: IpAddr) -> Option<MacAddr> {
        let (lo, hi) = (
            IpNet::new(ip, 0).ok()?,
            IpNet::new(ip, max_prefix(ip)).ok()?,
        );
        let mut at = self.entries.range(lo..=hi);
        at.find(|(_, e)| e.device == index).map(|(_, e)| e.mac)
    }

    /// Looks at everything: what was repaired, and whether all is as planned (nothing to
    /// look at again until something changes).
    fn full_check(&mut self) -> (Health, bool) {
        let mut fixed = Vec::new();
        for device in &self.devices {
            match self.check_device(device) {
                Ok(Some(f)) => fixed.extend(f),
                // Netlink itself failing says nothing about the device: look again later.
                Ok(None) => return (Health::Fine, false),
                Err(broken) => return (Health::Broken(broken), false),
            }
        }
        let mut restored = true;
        fixed.extend(self.fix_macs(&mut restored));
        fixed.extend(self.restore_entries(&mut restored));
        if let Health::Repaired(r) = self.routes.check(&self.label) {
            fixed.push(r);
        }
        // After a repair, look once more: it settles when a look finds all in place.
        let settled = restored && fixed.is_empty() && !self.routes.failing();
        if fixed.is_empty() {
            (Health::Fine, settled)
        } else {
            (Health::Repaired(fixed.join("; ")), settled)
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
            let Ok(present) = self.nl.has_route(r, link.index) else {
                return Ok(None);
            };
            if !present {
                self.nl.replace_route(r, link.index).map_err(|e| {
                    format!("the route to {r} via {name} was removed and cannot be restored: {e}")
                })?;
                fixed.push(format!("restored the route to {r} via {name}"));
            }
        }
        Ok(Some(fixed))
    }

    /// Puts the plans' MACs back where something changed them: what was done. A MAC
    /// that cannot be read clears `read`.
    fn fix_macs(&self, read: &mut bool) -> Vec<String> {
        (self.devices.iter())
            .filter_map(|d| {
                self.fix_mac(d).unwrap_or_else(|()| {
                    *read = false;
                    None
                })
            })
            .collect()
    }

    /// Puts `d`'s planned MAC back if something changed it: what was done, if anything.
    fn fix_mac(&self, d: &Device) -> Result<Option<String>, ()> {
        let (index, name) = (d.guard.index(), &d.plan.name);
        let Some(mac) = d.plan.mac else {
            return Ok(None);
        };
        let Some(link) = self.nl.link_by_index(index).map_err(|_| ())? else {
            return Ok(None);
        };
        if link.mac == Some(mac) {
            return Ok(None);
        }
        let got = link.mac.map(|m| m.to_string()).unwrap_or_default();
        Ok(Some(match self.nl.set_mac(index, mac) {
            Ok(()) => format!("{name}'s MAC was {got}, not the lease's VtepMAC {mac}: set it back"),
            Err(e) => format!(
                "{name}'s MAC is {got}, not the lease's VtepMAC {mac}, and cannot be set: {e}"
            ),
        }))
    }

    /// Tunnel entries someone deleted or changed, put back: a line per repair.
    fn restore_entries(&self, restored: &mut bool) -> Vec<String> {
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
                *restored = false;
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
                        *restored = false;
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

    fn peers_patched(&mut self, changes: &PeerChanges, _peers: &dyn Fn() -> Vec<Peer>) {
        self.reconciler.patch(changes);
    }

    fn check(&mut self) -> Health {
        self.reconciler.check()
    }

    fn outlives_process(&self) -> bool {
        true
    }
}

/// A peer's subnets, each family's: what its plan is keyed by.
fn subnets_of(p: &Peer) -> Vec<IpNet> {
    let v6 = p.v6.map(|v| IpNet::V6(v.subnet));
    p.subnet.map(IpNet::V4).into_iter().chain(v6).collect()
}

/// Programs one peer's entries: whether it could (else it is logged, and the check retries).
fn program_entry_or_warn(nl: &Netlink, sn: IpNet, e: &Entry, label: &str) -> bool {
    let done = program_entry(nl, sn, e);
    if let Err(err) = &done {
        tracing::warn!(%sn, error = %err, "{label}: cannot program the tunnel entries (retried by the check)");
    }
    done.is_ok()
}

/// The notifications the checks wait for, or `None` (then every check looks).
fn open_events(label: &str) -> Option<Events> {
    Events::open()
        .map_err(|e| tracing::info!(error = %e, "{label}: no netlink notifications; the check reads the kernel's tables every time"))
        .ok()
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
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
