//! The node's lease policy as a sans-IO state machine: fed the time and what the store
//! said, it answers with actions (publish a table, renew, repair the rules, warn, stop).
//! The control loop performs them; the decisions are unit-tested here with a fake clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use crate::lease::{peer_key, Lease, Peer, PeerChanges, SubnetPair};
use crate::store::{LeaseChanges, Stored};

/// flanneld retries a failed renewal every minute.
pub const RENEW_RETRY: Duration = Duration::from_secs(60);

/// The two clocks: monotonic for intervals, wall for lease expirations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Wall-clock time.
    pub wall: SystemTime,
}

impl Now {
    /// The current time.
    pub fn read() -> Now {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// `d` later on both clocks (for tests and simulations).
    pub fn after(self, d: Duration) -> Now {
        Now {
            mono: self.mono + d,
            wall: self.wall + d,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed (the control loop's wake-up).
    Tick,
    /// The store listed these leases, or could not be read.
    Leases(Result<Vec<Lease>, String>),
    /// These leases changed since the last read (the rest are as they were).
    LeaseChanges(LeaseChanges),
    /// A renewal finished: the lease as stored now, `None` if it was revoked, or why it
    /// failed.
    Renewed(Result<Option<Stored>, String>),
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish these peers (sorted) to the forwarding table: the live set changed.
    Publish(Vec<Peer>),
    /// Apply this change to the forwarding table: some peers changed, the rest did not.
    Patch(PeerChanges),
    /// Renew [`Policy::lease`] in the store.
    Renew,
    /// Check (and repair) the iptables rules.
    ResyncRules,
    /// Check that what the backend installed (device, routes) is still there.
    CheckBackend,
    /// Log a warning (rate-limited by the policy: once per outage, not per tick).
    Warn(String),
    /// Log a notice.
    Info(String),
    /// Our lease is gone: stop.
    Revoked,
}

/// A lease's place in the table ([`peer_key`] of its subnets).
fn lease_key(l: &Lease) -> SubnetPair {
    peer_key((l.subnet, l.ipv6_subnet))
}

/// What changed from the live peers `old` to `new`: those added or changed, and the
/// places of those gone (one pass over both, in key order).
fn difference(old: &BTreeMap<SubnetPair, Peer>, new: &BTreeMap<SubnetPair, Peer>) -> PeerChanges {
    let put = (new.iter())
        .filter(|(k, p)| old.get(k) != Some(p))
        .map(|(_, p)| *p)
        .collect();
    let gone = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .copied()
        .collect();
    PeerChanges { put, gone }
}

/// The lease policy of a running node.
#[derive(Debug)]
pub struct Policy {
    ours: Stored,
    network: IpNet,
    margin: Duration,
    resync: Option<Duration>,
    next_resync: Option<Instant>,
    check_every: Duration,
    next_check: Instant,
    next_renew: Instant,
    /// The live peers last published, by [`Peer::key`].
    peers: Option<BTreeMap<SubnetPair, Peer>>,
    present: bool,
    store_down_since: Option<Instant>,
    /// When renewals began to fail (reads may still work: a read-only or full lease
    /// directory), and how many have failed since.
    renew_failing: Option<(Instant, u32)>,
}

impl Policy {
    /// Whether our lease is among `leases`, live: the same subnet and public IP (an
    /// IPv6-only lease, whose IPv4 side is none and 0.0.0.0 for every node, by its IPv6
    /// subnet and public IPv6).
    fn finds_ours(&self, leases: &[Lease], now: Now) -> bool {
        leases.iter().any(|l| self.is_ours(l, now))
    }

    /// Whether `l` is our lease, live (see [`Policy::finds_ours`]).
    fn is_ours(&self, l: &Lease, now: Now) -> bool {
        let me = &self.ours.lease;
        let owner = crate::lease::alloc::Owner {
            public_ip: me.attrs.public_ip,
            public_ipv6: me.attrs.public_ipv6,
        };
        !l.is_expired(now.wall) && self.our_key() == lease_key(l) && owner.owns(l)
    }

    /// Our lease's place in the table.
    fn our_key(&self) -> SubnetPair {
        lease_key(&self.ours.lease)
    }

    /// The peer `lease` makes, if it is live, in our network and readable.
    fn live_peer(&self, lease: &Lease, now: Now) -> Option<Peer> {
        (!lease.is_expired(now.wall) && self.in_network(lease))
            .then(|| Peer::from_lease(lease).ok())
            .flatten()
    }

    /// Notes that a read worked: the end of an outage, if one was on.
    fn readable_again(&mut self, out: &mut Vec<Action>) {
        if self.store_down_since.take().is_some() {
            out.push(Action::Info("leases readable again".into()));
        }
    }

    /// Applies `ch` to the live peers: what changed in them (nothing when every changed
    /// lease makes the peer it made before).
    fn apply(&mut self, ch: &LeaseChanges, now: Now) -> PeerChanges {
        let mut peers = self.peers.take().unwrap_or_default();
        let mut out = PeerChanges::default();
        let ours = self.our_key();
        for k in ch.gone.iter().map(|pair| peer_key(*pair)) {
            self.present &= k != ours;
            if peers.remove(&k).is_some() {
                out.gone.push(k);
            }
        }
        for l in &ch.put {
            let k = lease_key(l);
            if k == ours {
                self.present = self.is_ours(l, now);
            }
            match self.live_peer(l, now) {
                Some(p) if peers.get(&k) == Some(&p) => {}
                Some(p) => {
                    peers.insert(k, p);
                    out.put.push(p);
                }
                None if peers.remove(&k).is_some() => out.gone.push(k),
                None => {}
            }
        }
        self.peers = Some(peers);
        out
    }

    /// Whether `lease` is a peer of our network: its IPv4 subnet inside it (its IPv6 one in
    /// an IPv6-only network).
    fn in_network(&self, lease: &Lease) -> bool {
        match self.network {
            IpNet::V4(n) => lease.subnet.is_some_and(|s| n.contains(&s)),
            IpNet::V6(n) => lease.ipv6_subnet.is_some_and(|s| n.contains(&s)),
        }
    }

    /// A policy for our lease `ours` in `network` (the IPv4 one, or the IPv6 one of an
    /// IPv6-only network): renew `margin` before expiry, check the
    /// rules every `resync` (if there are rules) and the backend every `check_every`.
    pub fn new(
        ours: Stored,
        network: impl Into<IpNet>,
        margin: Duration,
        resync: Option<Duration>,
        check_every: Duration,
        now: Now,
    ) -> Policy {
        Policy {
            ours,
            network: network.into(),
            margin,
            resync,
            next_resync: resync.map(|r| now.mono + r),
            check_every,
            next_check: now.mono + check_every,
            next_renew: now.mono,
            peers: None,
            present: true,
            store_down_since: None,
            renew_failing: None,
        }
    }

    /// Our lease as last stored.
    pub fn lease(&self) -> &Stored {
        &self.ours
    }

    /// The live peers last published, sorted by [`Peer::key`].
    pub fn peers(&self) -> Vec<Peer> {
        self.peers
            .iter()
            .flat_map(|m| m.values().copied())
            .collect()
    }

    /// What is wrong, for `/healthz`: the store unreachable (reads or renewals failing)
    /// for longer than the renew margin, the window in which our lease must be renewed.
    pub fn problem(&self, now: Now) -> Option<String> {
        let failing = self.renew_failing.map(|(t, _)| t);
        let since = match (self.store_down_since, failing) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let down = now.mono.saturating_duration_since(since);
        (down > self.margin).then(|| {
            format!(
                "the lease store has been unreachable for {} s, longer than the renew margin ({} s): lease {} may expire",
                down.as_secs(),
                self.margin.as_secs(),
                self.ours.lease.key()
            )
        })
    }

    /// Every lease, read: the first read publishes the live peers; later ones (a store
    /// without a change log, a watch that fell behind, a lease expiring) only what they
    /// changed.
    fn read_all(&mut self, leases: &[Lease], now: Now) -> Option<Action> {
        let peers: BTreeMap<SubnetPair, Peer> = (leases.iter())
            .filter_map(|l| self.live_peer(l, now))
            .map(|p| (p.key(), p))
            .collect();
        self.present = self.finds_ours(leases, now);
        let action = match &self.peers {
            None => Some(Action::Publish(peers.values().copied().collect())),
            Some(old) if old != &peers => Some(Action::Patch(difference(old, &peers))),
            Some(_) => None,
        };
        self.peers = Some(peers);
        action
    }

    /// Feeds one event; returns what to do, in order.
    pub fn on(&mut self, now: Now, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            Event::Tick => {
                if self.next_resync.is_some_and(|t| now.mono >= t) {
                    out.push(Action::ResyncRules);
                    self.next_resync = self.resync.map(|r| now.mono + r);
                }
                if now.mono >= self.next_check {
                    out.push(Action::CheckBackend);
                    self.next_check = now.mono + self.check_every;
                }
                let due = self
                    .ours
                    .lease
                    .expiration
                    .is_some_and(|t| now.wall + self.margin >= t);
                if (due || !self.present) && now.mono >= self.next_renew {
                    out.push(Action::Renew);
                }
            }
            Event::Leases(Err(e)) => {
                // A store outage leaves the dataplane forwarding on the last leases.
                if self.store_down_since.is_none() {
                    self.store_down_since = Some(now.mono);
                    out.push(Action::Warn(format!(
                        "cannot read leases (forwarding on the last ones; retrying): {e}"
                    )));
                }
            }
            Event::Leases(Ok(leases)) => {
                self.readable_again(&mut out);
                out.extend(self.read_all(&leases, now));
            }
            Event::LeaseChanges(ch) => {
                self.readable_again(&mut out);
                let changes = self.apply(&ch, now);
                if !changes.is_empty() {
                    out.push(Action::Patch(changes));
                }
            }
            Event::Renewed(Ok(Some(l))) => {
                self.ours = l;
                self.present = true;
                self.store_down_since = None;
                if let Some((_, failed)) = self.renew_failing.take() {
                    out.push(Action::Info(format!(
                        "renewed lease {} after {failed} failed attempt(s)",
                        self.ours.lease.key()
                    )));
                }
            }
            Event::Renewed(Ok(None)) => out.push(Action::Revoked),
            Event::Renewed(Err(e)) => {
                self.next_renew = now.mono + RENEW_RETRY;
                // Once per failing streak: the retries every minute stay quiet until one
                // succeeds (the lease store's own outage is logged by the reads).
                match &mut self.renew_failing {
                    Some((_, n)) => *n += 1,
                    None => {
                        self.renew_failing = Some((now.mono, 1));
                        out.push(Action::Warn(format!(
                            "cannot renew lease {} (forwarding on; retrying every minute, logged once): {e}",
                            self.ours.lease.key()
                        )));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod health_tests {
    use super::tests::start;
    use super::*;

    #[test]
    fn a_store_unreachable_past_the_renew_margin_is_a_problem_until_it_answers() {
        let (t0, mut p, ours) = start();
        assert_eq!(p.problem(t0), None);
        p.on(t0, Event::Leases(Err("connection refused".into())));
        // Within the margin (1 h): forwarding on the last leases is fine.
        let t1 = t0.after(Duration::from_secs(3599));
        p.on(t1, Event::Leases(Err("connection refused".into())));
        assert_eq!(p.problem(t1), None);
        let t2 = t0.after(Duration::from_secs(3601));
        let why = p.problem(t2).expect("unreachable past the margin");
        assert!(why.contains("3601 s") && why.contains("3600 s"), "{why}");
        // Answering again clears it.
        p.on(t2, Event::Leases(Ok(vec![ours.clone()])));
        assert_eq!(p.problem(t2.after(Duration::from_secs(7200))), None);
        // A failed renewal starts the clock too.
        p.on(t2, Event::Renewed(Err("timeout".into())));
        assert!(p.problem(t2.after(Duration::from_secs(3601))).is_some());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lease::{LeaseAttrs, VxlanBackendData};
    use crate::store::LEASE_TTL;
    use crate::wire::MacAddr;

    const HOUR: Duration = Duration::from_secs(3600);

    pub(crate) fn lease(subnet: &str, ip: u8, expiration: Option<SystemTime>) -> Lease {
        Lease {
            subnet: Some(subnet.parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(
                Ipv4Addr::new(192, 0, 2, ip),
                VxlanBackendData {
                    vni: 1,
                    vtep_mac: MacAddr([0x0e, 0, 0, 0, ip, 1]),
                },
            ),
            expiration,
        }
    }

    pub(super) fn start() -> (Now, Policy, Lease) {
        let now = Now {
            mono: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000),
        };
        let ours = lease("10.244.1.0/24", 1, Some(now.wall + LEASE_TTL));
        let p = Policy::new(
            Stored::ours(ours.clone()),
            "10.244.0.0/16".parse::<ipnet::Ipv4Net>().unwrap(),
            HOUR,
            Some(Duration::from_secs(5)),
            Duration::from_secs(1),
            now,
        );
        (now, p, ours)
    }

    #[test]
    fn a_change_patches_only_the_peers_it_changes() {
        let (now, mut p, ours) = start();
        let two = lease("10.244.2.0/24", 2, None);
        let three = lease("10.244.3.0/24", 3, None);
        p.on(now, Event::Leases(Ok(vec![ours.clone(), two.clone()])));
        let peer = |l: &Lease| Peer::from_lease(l).unwrap();
        let change = |put: Vec<Lease>, gone: Vec<&Lease>| {
            Event::LeaseChanges(LeaseChanges {
                put,
                gone: gone.iter().map(|l| (l.subnet, l.ipv6_subnet)).collect(),
            })
        };
        // A new node, and one whose lease moved to another public IP.
        let moved = lease("10.244.2.0/24", 9, None);
        let a = p.on(now, change(vec![three.clone(), moved.clone()], vec![]));
        let put = vec![peer(&three), peer(&moved)];
        assert_eq!(a, vec![Action::Patch(PeerChanges { put, gone: vec![] })]);
        // The same lease again, and one outside the network: nothing to do.
        let outside = lease("10.9.0.0/24", 4, None);
        assert_eq!(
            p.on(now, change(vec![three.clone(), outside], vec![])),
            vec![]
        );
        // A lease turned unreadable (an unknown backend's lease with bad data) is gone.
        let mut broken = three.clone();
        broken.attrs.backend_data = serde_json::json!({"VNI": "x"});
        let gone3 = vec![peer(&three).key()];
        let a = p.on(now, change(vec![broken], vec![]));
        assert_eq!(
            a,
            vec![Action::Patch(PeerChanges {
                put: vec![],
                gone: gone3
            })]
        );
        // A deletion; the peers stay sorted by subnet.
        let a = p.on(now, change(vec![], vec![&moved]));
        let gone2 = vec![peer(&moved).key()];
        assert_eq!(
            a,
            vec![Action::Patch(PeerChanges {
                put: vec![],
                gone: gone2
            })]
        );
        assert_eq!(p.peers(), vec![peer(&ours)]);
        // Our own lease deleted: renewed at once (it is missing), as after a full read.
        let a = p.on(now, change(vec![], vec![&ours]));
        let gone1 = vec![peer(&ours).key()];
        assert_eq!(
            a,
            vec![Action::Patch(PeerChanges {
                put: vec![],
                gone: gone1
            })]
        );
        assert!(p.on(now, Event::Tick).contains(&Action::Renew));
    }

    #[test]
    fn publishes_live_peers_first_then_only_what_changed() {
        let (now, mut p, ours) = start();
        let other = lease("10.244.2.0/24", 2, Some(now.wall + HOUR));
        let expired = lease("10.244.3.0/24", 3, Some(now.wall - HOUR));
        let outside = lease("10.9.0.0/24", 4, None);
        let all = vec![ours.clone(), other.clone(), expired, outside];
        let a = p.on(now, Event::Leases(Ok(all.clone())));
        let want: Vec<Peer> = [&ours, &other]
            .iter()
            .map(|l| Peer::from_lease(l).unwrap())
            .collect();
        assert_eq!(a, vec![Action::Publish(want)]);
        assert_eq!(p.on(now, Event::Leases(Ok(all))), vec![]);
        // The other node's lease expires: a new table without it.
        let later = now.after(2 * HOUR);
        let a = p.on(later, Event::Leases(Ok(vec![ours.clone(), other.clone()])));
        let gone = vec![Peer::from_lease(&other).unwrap().key()];
        assert_eq!(a, vec![Action::Patch(PeerChanges { put: vec![], gone })]);
        // It is renewed, and another node's changes: only those two are put.
        let mut moved = lease("10.244.5.0/24", 5, None);
        let a = p.on(later, Event::Leases(Ok(vec![ours.clone(), moved.clone()])));
        assert_eq!(a.len(), 1);
        moved.attrs.public_ip = "192.0.2.55".parse().unwrap();
        let renewed = lease("10.244.2.0/24", 2, Some(later.wall + HOUR));
        let all = vec![ours, moved.clone(), renewed.clone()];
        let put = vec![
            Peer::from_lease(&renewed).unwrap(),
            Peer::from_lease(&moved).unwrap(),
        ];
        let a = p.on(later, Event::Leases(Ok(all)));
        assert_eq!(a, vec![Action::Patch(PeerChanges { put, gone: vec![] })]);
    }

    #[test]
    fn renews_within_the_margin_and_retries_a_failure_after_a_minute() {
        let (now, mut p, ours) = start();
        p.on(now, Event::Leases(Ok(vec![ours.clone()])));
        // 22 h 59 min in: not yet due (expiry 24 h, margin 1 h).
        let early = now.after(LEASE_TTL - HOUR - Duration::from_secs(60));
        assert!(!p.on(early, Event::Tick).contains(&Action::Renew));
        let due = now.after(LEASE_TTL - HOUR);
        assert!(p.on(due, Event::Tick).contains(&Action::Renew));
        let a = p.on(due, Event::Renewed(Err("etcd unreachable".into())));
        assert!(matches!(&a[..], [Action::Warn(w)] if w.contains("retrying every minute")));
        assert!(!p
            .on(due.after(Duration::from_secs(59)), Event::Tick)
            .contains(&Action::Renew));
        let retry = due.after(RENEW_RETRY);
        assert!(p.on(retry, Event::Tick).contains(&Action::Renew));
        // The second failure of the streak is not logged again; reads that work (a
        // read-only lease directory) neither end the streak nor log anything.
        assert_eq!(p.on(retry, Event::Renewed(Err("read-only".into()))), vec![]);
        assert_eq!(p.on(retry, Event::Leases(Ok(vec![ours.clone()]))), vec![]);
        assert!(p.problem(retry).is_none(), "within the margin");
        assert!(p
            .problem(due.after(HOUR + Duration::from_secs(1)))
            .is_some());
        let retry = retry.after(RENEW_RETRY);
        assert!(p.on(retry, Event::Tick).contains(&Action::Renew));
        // Success moves the expiry 24 h on: nothing due for 23 h.
        let renewed = Lease {
            expiration: Some(retry.wall + LEASE_TTL),
            ..ours
        };
        let a = p.on(
            retry,
            Event::Renewed(Ok(Some(Stored::ours(renewed.clone())))),
        );
        assert!(
            matches!(&a[..], [Action::Info(m)] if m.contains("after 2 failed")),
            "{a:?}"
        );
        assert!(p.problem(retry.after(2 * HOUR)).is_none());
        assert_eq!(p.lease().lease, renewed);
        assert!(!p
            .on(retry.after(HOUR), Event::Tick)
            .contains(&Action::Renew));
    }

    #[test]
    fn a_missing_lease_is_renewed_at_once_and_a_refused_renewal_revokes() {
        let (now, mut p, ours) = start();
        p.on(now, Event::Leases(Ok(vec![ours.clone()])));
        assert!(!p.on(now, Event::Tick).contains(&Action::Renew));
        // Someone deleted our lease: try to renew (the store refuses to re-create it).
        p.on(now, Event::Leases(Ok(vec![])));
        assert!(p.on(now, Event::Tick).contains(&Action::Renew));
        assert_eq!(p.on(now, Event::Renewed(Ok(None))), vec![Action::Revoked]);
    }

    /// An IPv6-only lease: every one has no IPv4 subnet and PublicIP 0.0.0.0, so ours is
    /// told from another node's by its IPv6 subnet and PublicIPv6.
    #[test]
    fn a_missing_ipv6_only_lease_is_missed_though_other_ipv6_only_nodes_remain() {
        let (now, _, _) = start();
        let v6only = |n: u8| {
            let mut l = lease("10.244.1.0/24", n, Some(now.wall + LEASE_TTL));
            l.subnet = None;
            l.ipv6_subnet = format!("fd00:10:244:{n}::/64").parse().ok();
            l.attrs.public_ip = Ipv4Addr::UNSPECIFIED;
            l.attrs.public_ipv6 = format!("2001:db8::{n}").parse().ok();
            l.attrs.backend_v6_data = std::mem::take(&mut l.attrs.backend_data);
            l
        };
        let ours = v6only(1);
        let network: ipnet::IpNet = "fd00:10:244::/56".parse().unwrap();
        let mut p = Policy::new(Stored::ours(ours.clone()), network, HOUR, None, HOUR, now);
        let peers = p.on(now, Event::Leases(Ok(vec![ours, v6only(2)])));
        assert!(
            matches!(&peers[..], [Action::Publish(p)] if p.len() == 2),
            "{peers:?}"
        );
        assert!(!p.on(now, Event::Tick).contains(&Action::Renew));
        // Ours deleted, another IPv6-only node's left: ours is missed.
        p.on(now, Event::Leases(Ok(vec![v6only(2)])));
        assert!(p.on(now, Event::Tick).contains(&Action::Renew));
    }

    #[test]
    fn reservations_are_never_renewed_for_expiry() {
        let (now, _, _) = start();
        let res = lease("10.244.1.0/24", 1, None);
        let mut p = Policy::new(
            Stored::ours(res.clone()),
            "10.244.0.0/16".parse::<ipnet::Ipv4Net>().unwrap(),
            HOUR,
            None,
            Duration::from_secs(1),
            now,
        );
        p.on(now, Event::Leases(Ok(vec![res])));
        let years = now.after(Duration::from_secs(10 * 365 * 86400));
        assert_eq!(p.on(years, Event::Tick), vec![Action::CheckBackend]);
    }

    #[test]
    fn rules_are_checked_every_resync_interval() {
        let (now, mut p, _) = start();
        let count = |p: &mut Policy, secs: u64| {
            p.on(now.after(Duration::from_secs(secs)), Event::Tick)
                .contains(&Action::ResyncRules)
        };
        assert!(!count(&mut p, 0));
        assert!(!count(&mut p, 4));
        assert!(count(&mut p, 5));
        assert!(!count(&mut p, 6));
        assert!(count(&mut p, 10));
        // After a long stall, one check, then the regular interval from there.
        assert!(count(&mut p, 100));
        assert!(!count(&mut p, 101));
        assert!(count(&mut p, 105));
    }

    #[test]
    fn the_backend_is_checked_every_interval() {
        let (now, mut p, _) = start();
        let checks = (0..40)
            .filter(|i| {
                p.on(now.after(Duration::from_millis(250 * i)), Event::Tick)
                    .contains(&Action::CheckBackend)
            })
            .count();
        assert_eq!(
            checks, 9,
            "ticks every 250 ms for 9.75 s, a check every second"
        );
    }

    #[test]
    fn a_store_outage_warns_once_and_keeps_the_table() {
        let (now, mut p, ours) = start();
        p.on(now, Event::Leases(Ok(vec![ours.clone()])));
        let a = p.on(now, Event::Leases(Err("connection refused".into())));
        assert!(matches!(&a[..], [Action::Warn(w)] if w.contains("forwarding on the last")));
        for _ in 0..10 {
            assert_eq!(
                p.on(now, Event::Leases(Err("connection refused".into()))),
                vec![]
            );
        }
        // Back, with the same leases: a notice, no new table; and our lease counts as
        // present throughout (an outage is not a revocation).
        let a = p.on(now, Event::Leases(Ok(vec![ours])));
        assert!(matches!(&a[..], [Action::Info(_)]));
        assert!(!p.on(now, Event::Tick).contains(&Action::Renew));
    }
}
