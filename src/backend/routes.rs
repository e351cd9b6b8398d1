//! Peer routes in the kernel, kept in step with the lease table: what host-gw,
//! DirectRouting and the kernel vxlan dataplane share.
//!
//! A [`RouteSet`] holds the routes a backend wants and makes the kernel's set of weft peer
//! routes (unicast, `proto 87`) exactly that: missing ones are added, changed ones replaced,
//! ones for leases that went away, or left by a crashed weft, removed. `check` does the
//! same against what is there now, so a route someone deleted comes back (flanneld's route
//! check loop, here within a second of a notification instead of every ten). Dropping the set removes its routes.
//!
//! [`Reach`] is flanneld's `ip.DirectRouting`: a peer is on our layer-2 network
//! when the kernel's route to its public IP has no gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::Health;
use crate::netlink::{Netlink, PeerRoute};
use crate::quiet::Quiet;

/// The routes a backend wants, and the kernel made to match.
pub(crate) struct RouteSet {
    nl: Arc<Netlink>,
    want: BTreeMap<IpNet, PeerRoute>,
    failing: Quiet<String>,
}

impl RouteSet {
    /// An empty set; the first [`RouteSet::set`] removes peer routes a previous weft left.
    pub(crate) fn new(nl: Arc<Netlink>) -> RouteSet {
        RouteSet {
            nl,
            want: BTreeMap::new(),
            failing: Quiet::new(),
        }
    }

    /// Wants exactly `routes` (one per destination; a later one wins) and makes the kernel
    /// hold them. Returns a line per change, or the first netlink error.
    pub(crate) fn set(
        &mut self,
        routes: impl IntoIterator<Item = PeerRoute>,
    ) -> Result<Vec<String>, String> {
        self.want = routes.into_iter().map(|r| (r.dst, r)).collect();
        self.sync()
    }

    /// Wants, for the destinations in `touched` only, exactly `routes` (all of them in
    /// `touched`), and programs what that changes, without reading the kernel's table: a
    /// change of a few peers costs a few requests. Returns a line per change, or the first
    /// netlink error (the next [`check`](Self::check) retries).
    pub(crate) fn patch(
        &mut self,
        touched: &BTreeSet<IpNet>,
        routes: impl IntoIterator<Item = PeerRoute>,
    ) -> Result<Vec<String>, String> {
        let mut new: BTreeMap<IpNet, PeerRoute> = routes.into_iter().map(|r| (r.dst, r)).collect();
        let mut changed = Vec::new();
        let mut first_err = None;
        for dst in touched {
            let (old, want) = (self.want.remove(dst), new.remove(dst));
            let done = match (&old, &want) {
                (Some(o), Some(w)) if o == w => Ok(None),
                (_, Some(w)) => self
                    .nl
                    .replace_peer_route(w)
                    .map(|()| Some(format!("route {w}"))),
                (Some(o), None) => self
                    .nl
                    .del_peer_route(o)
                    .map(|()| Some(format!("removed route {o}"))),
                (None, None) => Ok(None),
            };
            match done {
                Ok(line) => changed.extend(line),
                Err(e) => {
                    first_err.get_or_insert(e.to_string());
                }
            }
            self.want.extend(want.map(|w| (w.dst, w)));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// The route wanted to `dst`, if any.
    pub(crate) fn wanted(&self, dst: &IpNet) -> Option<&PeerRoute> {
        self.want.get(dst)
    }

    /// Whether the last attempt to program or restore the routes failed.
    pub(crate) fn failing(&self) -> bool {
        self.failing.holds()
    }

    /// For [`Running::check`](super::Running::check): puts back what someone removed or
    /// changed. An error (the underlay down for a moment, say) is logged when it first
    /// appears and retried on the next check, not logged every second.
    pub(crate) fn check(&mut self, label: &str) -> Health {
        match self.sync() {
            Ok(c) => {
                if self.failing.clear() {
                    tracing::info!("{label}: peer routes programmable again");
                }
                if c.is_empty() {
                    Health::Fine
                } else {
                    Health::Repaired(format!("{label}: {}", c.join("; ")))
                }
            }
            Err(e) => {
                if self.failing.report(e.clone()) {
                    tracing::warn!(error = %e, "{label}: cannot restore the peer routes (retrying)");
                }
                Health::Fine
            }
        }
    }

    /// Makes the kernel's weft peer routes equal to the wanted ones: a line per change.
    pub(crate) fn sync(&self) -> Result<Vec<String>, String> {
        let have: BTreeSet<PeerRoute> = self
            .nl
            .peer_routes()
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let mut changed = Vec::new();
        let mut first_err = None;
        for r in &have {
            if self.want.get(&r.dst) != Some(r) {
                match self.nl.del_peer_route(r) {
                    Ok(()) => changed.push(format!("removed route {r}")),
                    Err(e) => {
                        first_err.get_or_insert(e.to_string());
                    }
                }
            }
        }
        for r in self.want.values() {
            if !have.contains(r) {
                match self.nl.replace_peer_route(r) {
                    Ok(()) => changed.push(format!("route {r}")),
                    Err(e) => {
                        first_err.get_or_insert(e.to_string());
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }
}

impl Drop for RouteSet {
    fn drop(&mut self) {
        if crate::teardown::keeping() {
            return;
        }
        for r in self.want.values() {
            if let Err(e) = self.nl.del_peer_route(r) {
                tracing::warn!("cannot remove route {r}: {e}");
            }
        }
    }
}

/// Whether the kernel reaches an address without a gateway out of the underlay: the peer shares
/// our layer-2 network, so a plain route via its address works (flanneld's
/// `ip.DirectRouting`, which host-gw needs for every peer and DirectRouting tests per peer).
///
/// For all the peers at once, one route dump answers every one ([`Reach::read`]); for a
/// change of a few, the kernel is asked per address ([`Reach::ask`]), so a change costs
/// what it changed, not a dump of every peer's route.
pub(crate) enum Reach<'a> {
    /// The main table, read once (`None`: unreadable, so no peer is reached directly: the
    /// tunnel, or no route, until the next update).
    Table(Option<crate::netlink::Routing>),
    /// The kernel, asked per address (an error counts as not direct).
    Ask(&'a Netlink),
}

impl Reach<'_> {
    /// Reads the main table once.
    pub(crate) fn read(nl: &Netlink) -> Reach<'static> {
        Reach::Table(nl.routing().ok())
    }

    /// Asks the kernel for each address.
    pub(crate) fn ask(nl: &Netlink) -> Reach<'_> {
        Reach::Ask(nl)
    }

    /// True when `ip` is reached without a gateway out of `underlay`.
    pub(crate) fn direct(&self, ip: IpAddr, underlay: u32) -> bool {
        let route = match self {
            Reach::Table(t) => t.as_ref().and_then(|r| r.route_to(ip)),
            Reach::Ask(nl) => nl.route_get(ip).ok().flatten(),
        };
        matches!(route, Some((None, Some(oif))) if oif == underlay)
    }
}
