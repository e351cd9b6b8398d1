//! The control loop driven step by step with an in-memory store and a stand-in backend:
//! what reaches the table and the backend as leases come and go, the store goes away and
//! comes back, renewals fail and recover, and the backend breaks.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;

use super::policy::{Now, Policy, RENEW_RETRY};
use super::{ControlLoop, Error, Kept, BACKEND_CHECK};
use crate::backend::{Health, Running};
use crate::config::NetConfig;
use crate::health::Status;
use crate::lease::{Lease, LeaseTable, Peer};
use crate::store::{LeaseChanges, LeaseRead, LeaseStore, StoreError, Stored, LEASE_TTL};

const HOUR: Duration = Duration::from_secs(3600);

fn lease(n: u8, expiration: SystemTime) -> Lease {
    let subnet = format!("10.244.{n}.0/24");
    super::policy::tests::lease(&subnet, n, Some(expiration))
}

/// Leases in memory; `down` makes every call fail as an unreachable server would,
/// `renewals_fail` only the writes.
#[derive(Default)]
struct MemStore {
    leases: Vec<Stored>,
    down: bool,
    renewals_fail: bool,
    /// What `generation` answers (`None`: a store that cannot tell).
    generation: Option<u64>,
    /// How many times `leases` was called.
    reads: usize,
    /// A change log of one entry: the changes since that generation (a store that keeps
    /// a log answers `read` with them).
    log: Option<(u64, LeaseChanges)>,
}

impl MemStore {
    fn outage(&self) -> Result<(), StoreError> {
        if self.down {
            return Err(StoreError::Remote {
                what: "memory".into(),
                detail: "switched off".into(),
            });
        }
        Ok(())
    }
}

impl LeaseStore for MemStore {
    fn config(&self) -> Result<NetConfig, StoreError> {
        unreachable!("the control loop never reads the config")
    }

    fn generation(&self) -> Option<u64> {
        self.generation
    }

    fn read(&mut self, since: Option<u64>) -> Result<(LeaseRead, Option<u64>), StoreError> {
        match &self.log {
            Some((from, ch)) if since == Some(*from) => {
                Ok((LeaseRead::Changed(ch.clone()), self.generation))
            }
            _ => Ok((LeaseRead::All(self.leases()?), self.generation)),
        }
    }

    fn leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        self.reads += 1;
        self.outage()?;
        Ok(self.leases.iter().map(|s| s.lease.clone()).collect())
    }

    fn list(&mut self) -> Result<Vec<Stored>, StoreError> {
        self.outage()?;
        Ok(self.leases.clone())
    }

    fn create(&mut self, _lease: &Lease) -> Result<Option<Stored>, StoreError> {
        unreachable!("the control loop never creates a lease")
    }

    fn update(&mut self, lease: &Lease, expect: &str) -> Result<Option<Stored>, StoreError> {
        self.outage()?;
        if self.renewals_fail {
            return Err(StoreError::Remote {
                what: "memory".into(),
                detail: "read-only".into(),
            });
        }
        let Some(s) = self
            .leases
            .iter_mut()
            .find(|s| s.lease.subnet == lease.subnet)
        else {
            return Ok(None);
        };
        if s.raw != expect {
            return Ok(None);
        }
        *s = Stored::ours(lease.clone());
        Ok(Some(s.clone()))
    }

    fn remove(&mut self, lease: &Lease) -> Result<(), StoreError> {
        self.leases.retain(|s| s.lease.key() != lease.key());
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// What the stand-in backend was told, and what its next check finds.
#[derive(Default)]
struct Seen {
    /// The peer subnets of every `peers_changed`.
    updates: Vec<Vec<Ipv4Net>>,
    /// What `check` answers.
    health: Option<Health>,
    /// Backends started after the first.
    restarts: usize,
}

struct StandIn(Rc<RefCell<Seen>>);

impl Running for StandIn {
    fn describe(&self) -> String {
        "stand-in".into()
    }

    fn peers_changed(&mut self, peers: &[Peer]) {
        let subnets = peers.iter().filter_map(|p| p.subnet).collect();
        self.0.borrow_mut().updates.push(subnets);
    }

    fn check(&mut self) -> Health {
        self.0.borrow_mut().health.take().unwrap_or(Health::Fine)
    }
}

/// A node with lease 1 in a store holding it, and a fake clock.
struct Rig {
    store: MemStore,
    policy: Policy,
    running: Option<Box<dyn Running>>,
    table: LeaseTable,
    status: std::sync::Arc<Status>,
    seen: Rc<RefCell<Seen>>,
    now: Now,
    last_read: Option<super::LastRead>,
}

impl Rig {
    fn new() -> Rig {
        let now = Now {
            mono: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000),
        };
        let ours = Stored::ours(lease(1, now.wall + LEASE_TTL));
        let network = "10.244.0.0/16".parse().unwrap();
        let seen = Rc::new(RefCell::new(Seen::default()));
        Rig {
            store: MemStore {
                leases: vec![ours.clone()],
                ..MemStore::default()
            },
            policy: Policy::new(ours, network, HOUR, None, BACKEND_CHECK, now),
            running: Some(Box::new(StandIn(seen.clone()))),
            table: LeaseTable::new(network),
            status: Status::starting("test"),
            seen,
            now,
            last_read: None,
        }
    }

    /// One round of the loop, `d` after the last.
    fn step(&mut self, d: Duration) -> Result<(), Error> {
        self.now = self.now.after(d);
        let seen = self.seen.clone();
        let start = move || -> Result<Box<dyn Running>, Error> {
            seen.borrow_mut().restarts += 1;
            Ok(Box::new(StandIn(seen.clone())))
        };
        let mut control = ControlLoop {
            store: &mut self.store,
            policy: &mut self.policy,
            running: &mut self.running,
            start: &start,
            kept: Kept {
                table: &self.table,
                rules: None,
                blackhole: None,
                status: &self.status,
            },
            backend_problem: None,
            last_read: self.last_read,
        };
        let r = control.step(self.now);
        self.last_read = control.last_read;
        r
    }

    fn table(&self) -> Vec<Ipv4Net> {
        self.table
            .load()
            .peers()
            .iter()
            .filter_map(|p| p.subnet)
            .collect()
    }

    fn last_update(&self) -> Vec<Ipv4Net> {
        self.seen
            .borrow()
            .updates
            .last()
            .cloned()
            .unwrap_or_default()
    }

    fn healthz(&self) -> String {
        self.status.respond("/healthz").1
    }

    fn put(&mut self, l: Lease) {
        self.store.remove(&l).unwrap();
        self.store.leases.push(Stored::ours(l));
    }
}

fn subnets(ns: &[u8]) -> Vec<Ipv4Net> {
    ns.iter()
        .map(|n| format!("10.244.{n}.0/24").parse().unwrap())
        .collect()
}

#[test]
fn a_lease_added_changed_and_removed_reaches_the_table_and_the_backend() {
    let mut r = Rig::new();
    r.step(Duration::ZERO).unwrap();
    assert_eq!(r.table(), subnets(&[1]));
    let expires = r.now.wall + HOUR;
    r.put(lease(2, expires));
    r.step(Duration::from_millis(250)).unwrap();
    assert_eq!(
        (r.table(), r.last_update()),
        (subnets(&[1, 2]), subnets(&[1, 2]))
    );
    // Changed: node 2 moved to another address; the table carries the new one.
    let mut moved = lease(2, expires);
    moved.attrs.public_ip = Ipv4Addr::new(192, 0, 2, 22);
    r.put(moved);
    r.step(Duration::from_millis(250)).unwrap();
    let peer = r.table.load().lookup(Ipv4Addr::new(10, 244, 2, 9)).copied();
    assert_eq!(peer.unwrap().public_ip, Ipv4Addr::new(192, 0, 2, 22));
    assert_eq!(r.seen.borrow().updates.len(), 3);
    // Nothing changed: nothing published.
    r.step(Duration::from_millis(250)).unwrap();
    assert_eq!(r.seen.borrow().updates.len(), 3);
    r.store.remove(&lease(2, expires)).unwrap();
    r.step(Duration::from_millis(250)).unwrap();
    assert_eq!((r.table(), r.last_update()), (subnets(&[1]), subnets(&[1])));
}

#[test]
fn a_store_outage_keeps_the_last_leases_and_healthz_tells_past_the_margin() {
    let mut r = Rig::new();
    r.put(lease(2, r.now.wall + 10 * HOUR));
    r.step(Duration::ZERO).unwrap();
    r.store.down = true;
    r.step(Duration::from_secs(60)).unwrap();
    assert_eq!(r.table(), subnets(&[1, 2]), "forwarding on the last leases");
    assert_eq!(
        r.healthz(),
        "starting: test\n",
        "an outage shorter than the margin"
    );
    r.step(HOUR + Duration::from_secs(1)).unwrap();
    assert!(
        r.healthz().contains("unreachable for 3601 s"),
        "{}",
        r.healthz()
    );
    assert_eq!(r.table(), subnets(&[1, 2]));
    // Back, with node 2 gone meanwhile: the table follows, /healthz clears.
    r.store.down = false;
    r.store.remove(&lease(2, r.now.wall)).unwrap();
    r.step(Duration::from_secs(1)).unwrap();
    assert_eq!(r.table(), subnets(&[1]));
    assert_eq!(r.healthz(), "starting: test\n");
}

#[test]
fn a_failing_renewal_is_retried_until_it_succeeds_and_a_revoked_lease_stops_the_node() {
    let mut r = Rig::new();
    r.step(Duration::ZERO).unwrap();
    let first = r.store.leases[0].lease.expiration.unwrap();
    r.store.renewals_fail = true;
    // Inside the renew margin: a renewal is tried, fails, and is retried a minute later.
    r.step(LEASE_TTL - HOUR + Duration::from_secs(1)).unwrap();
    assert_eq!(r.store.leases[0].lease.expiration, Some(first));
    r.step(RENEW_RETRY).unwrap();
    assert_eq!(r.store.leases[0].lease.expiration, Some(first));
    r.store.renewals_fail = false;
    r.step(RENEW_RETRY).unwrap();
    let renewed = r.store.leases[0].lease.expiration.unwrap();
    assert_eq!(renewed, r.now.wall + LEASE_TTL);
    assert_eq!(r.policy.lease().lease.expiration, Some(renewed));
    // Someone deletes our lease: the next renewal finds it gone and the node stops.
    r.store.leases.clear();
    let e = r
        .step(LEASE_TTL - HOUR + Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(e, Error::Revoked { .. }), "{e}");
}

#[test]
fn a_broken_backend_is_restarted_with_the_current_peers() {
    let mut r = Rig::new();
    r.put(lease(2, r.now.wall + HOUR));
    r.step(Duration::ZERO).unwrap();
    r.seen.borrow_mut().health = Some(Health::Repaired("a route put back".into()));
    r.step(BACKEND_CHECK).unwrap();
    assert_eq!(r.seen.borrow().restarts, 0);
    r.seen.borrow_mut().health = Some(Health::Broken("the TUN was deleted".into()));
    r.step(BACKEND_CHECK).unwrap();
    assert_eq!(r.seen.borrow().restarts, 1);
    assert_eq!(
        r.last_update(),
        subnets(&[1, 2]),
        "the new one gets the peers"
    );
}

/// `--iface-can-reach` asks the kernel: the loopback reaches itself in either family, from
/// the address it holds (an IPv6 target through an IPv6 socket), and an address of no
/// interface here is the route's source of none.
#[test]
fn iface_can_reach_asks_the_kernels_routing_in_either_family() {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v4 = [(1, Ipv4Addr::LOCALHOST)];
    let v6 = [(1, Ipv6Addr::LOCALHOST)];
    let lo4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(super::underlay::route_to(&v4, &v6, lo4), Some((1, lo4)));
    assert_eq!(super::underlay::route_to(&[], &v6, lo4), None);
    let lo6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    if std::net::UdpSocket::bind("[::1]:0").is_ok() {
        assert_eq!(super::underlay::route_to(&v4, &v6, lo6), Some((1, lo6)));
    }
}

#[test]
fn leases_are_read_again_only_when_the_store_changed_or_one_expired() {
    let mut r = Rig::new();
    r.store.generation = Some(1);
    r.step(Duration::ZERO).unwrap();
    assert_eq!((r.store.reads, r.table()), (1, subnets(&[1])));
    // Nothing changes: nothing is read, however long.
    for _ in 0..20 {
        r.step(Duration::from_millis(250)).unwrap();
    }
    assert_eq!(r.store.reads, 1);
    // A change the store counts is read at the next round.
    let expires = r.now.wall + HOUR;
    r.put(lease(2, expires));
    r.store.generation = Some(2);
    r.step(Duration::from_millis(250)).unwrap();
    assert_eq!((r.store.reads, r.table()), (2, subnets(&[1, 2])));
    r.step(Duration::from_millis(250)).unwrap();
    assert_eq!(r.store.reads, 2);
    // Lease 2 expiring changes what the table holds though the store did not change.
    r.step(HOUR).unwrap();
    assert_eq!((r.store.reads, r.table()), (3, subnets(&[1])));
    // A store that cannot tell is read every round.
    r.store.generation = None;
    r.step(Duration::from_millis(250)).unwrap();
    r.step(Duration::from_millis(250)).unwrap();
    assert_eq!(r.store.reads, 5);
}

#[test]
fn a_store_that_logs_changes_patches_the_table_and_reads_all_only_when_it_must() {
    let mut r = Rig::new();
    r.store.generation = Some(1);
    r.step(Duration::ZERO).unwrap();
    assert_eq!((r.store.reads, r.table()), (1, subnets(&[1])));
    // Node 2 appears: read as a change, not a full read.
    let two = lease(2, r.now.wall + HOUR);
    r.put(two.clone());
    r.store.log = Some((
        1,
        LeaseChanges {
            put: vec![two.clone()],
            gone: vec![],
        },
    ));
    r.store.generation = Some(2);
    r.step(Duration::from_millis(250)).unwrap();
    assert_eq!((r.store.reads, r.table()), (1, subnets(&[1, 2])));
    assert_eq!(r.last_update(), subnets(&[1, 2]), "the backend hears it");
    // Node 2 gone.
    r.store.remove(&two).unwrap();
    let gone = vec![(two.subnet, two.ipv6_subnet)];
    r.store.log = Some((2, LeaseChanges { put: vec![], gone }));
    r.store.generation = Some(3);
    r.step(Duration::from_millis(250)).unwrap();
    assert_eq!((r.store.reads, r.table()), (1, subnets(&[1])));
    // A change the log no longer reaches is a full read.
    let three = lease(3, r.now.wall + HOUR);
    r.put(three.clone());
    r.store.log = None;
    r.store.generation = Some(4);
    r.step(Duration::from_millis(250)).unwrap();
    assert_eq!((r.store.reads, r.table()), (2, subnets(&[1, 3])));
    // A lease put by a change expires: a full read drops it.
    r.store.log = Some((
        4,
        LeaseChanges {
            put: vec![three],
            gone: vec![],
        },
    ));
    r.store.generation = Some(5);
    r.step(Duration::from_millis(250)).unwrap();
    assert_eq!(r.store.reads, 2);
    r.step(HOUR).unwrap();
    assert_eq!((r.store.reads, r.table()), (3, subnets(&[1])));
}
