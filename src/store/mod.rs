//! Lease stores. The daemon talks to one through [`LeaseStore`]; the embedded
//! [`file::FileStore`] is the default, laid out like flannel's etcd keys.

pub mod etcd;
pub mod file;
pub mod kube;
pub mod kube_node;
pub(crate) mod watch;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::config::{ConfigError, NetConfig};
use crate::lease::alloc::{allocate, AllocError, Owner, Previous, Source};
use crate::lease::{Lease, LeaseAttrs, SubnetPair};

/// flanneld's lease TTL (`subnetTTL`).
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// How many times `acquire` retries when another node wins a race (flanneld: 10).
pub const RACE_RETRIES: usize = 10;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O on the store failed.
    #[error("{path}: {source}")]
    Io {
        /// What was being accessed.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The network config is missing or invalid.
    #[error("{path}: {source}")]
    Config {
        /// Where the config lives.
        path: PathBuf,
        /// The cause.
        source: ConfigError,
    },
    /// No subnet could be allocated.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A remote store (etcd, the Kubernetes API) failed or could not be reached; `what`
    /// names the store and the operation.
    #[error("{what}: {detail}")]
    Remote {
        /// The operation.
        what: String,
        /// The cause, as the client reported it.
        detail: String,
    },
    /// The store refused who we are (a TLS certificate it or we do not trust, a wrong or
    /// missing password): not retried at start, as retrying cannot fix it.
    #[error("{what}: {detail}")]
    Refused {
        /// The store and the operation.
        what: String,
        /// The cause and the flag to fix.
        detail: String,
    },
    /// A key the store needs is absent.
    #[error("{0}")]
    Missing(String),
    /// The store holds something weft must not use (say a podCIDR outside the Network).
    #[error("{0}")]
    Invalid(String),
    /// Another node kept winning the race for a subnet.
    #[error(
        "could not create a lease after {0} attempts: other nodes kept taking the chosen subnet"
    )]
    Contention(usize),
}

/// A lease as a store holds it: parsed, and its value exactly as stored (the etcd value, or
/// a lease file's first line), which is what conditional updates compare against.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The lease.
    pub lease: Lease,
    /// Its value, byte for byte as stored.
    pub raw: String,
}

impl Stored {
    /// A lease as weft writes it (the value is weft's own JSON).
    pub fn ours(lease: Lease) -> Stored {
        let raw = lease.attrs.to_json();
        Stored { lease, raw }
    }
}

/// What `acquire` settled on.
#[derive(Debug, Clone, PartialEq)]
pub struct Acquired {
    /// Our lease as written.
    pub stored: Stored,
    /// How the subnet was chosen.
    pub source: crate::lease::alloc::Source,
    /// Allocation rounds it took (more than 1: another node won a race for a subnet).
    pub attempts: usize,
}

/// Held while a node allocates; stores that serialize allocation among local processes
/// (the file store's `flock`) keep their guard in it.
pub struct StoreLock(#[allow(dead_code)] Option<Box<dyn std::any::Any + Send>>);

impl StoreLock {
    /// No lock: the store's conditional writes alone keep allocation race-free.
    pub fn none() -> StoreLock {
        StoreLock(None)
    }

    /// A lock released when `guard` is dropped.
    pub fn held(guard: impl std::any::Any + Send) -> StoreLock {
        StoreLock(Some(Box::new(guard)))
    }
}

/// What changed in a store's leases between two of its generations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LeaseChanges {
    /// Leases added or changed.
    pub put: Vec<Lease>,
    /// The subnets (IPv4, IPv6, as the lease held them) of leases gone.
    pub gone: Vec<SubnetPair>,
}

/// The leases as the control loop reads them ([`LeaseStore::read`]).
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseRead {
    /// Every readable lease, as [`LeaseStore::leases`].
    All(Vec<Lease>),
    /// Only what changed since the read asked about.
    Changed(LeaseChanges),
}

/// A place where leases live and are watched. Stores provide primitives (list, create if
/// absent, update if unchanged, remove); the allocation loop over them is one function,
/// [`acquire`], and renewal is [`renew`].
pub trait LeaseStore: Send {
    /// The network config (`<prefix>/config`).
    fn config(&self) -> Result<NetConfig, StoreError>;

    /// Every readable lease, expired or not (corrupt entries are skipped with a warning):
    /// the view the forwarding table follows (a store with a watch answers from it).
    fn leases(&mut self) -> Result<Vec<Lease>, StoreError>;

    /// Every readable lease read afresh from the store itself, for allocation.
    fn list(&mut self) -> Result<Vec<Stored>, StoreError>;

    /// Writes `lease` if no lease holds its subnet or its IPv6 subnet (under any key: a
    /// v4-only key holds the IPv4 subnet of a dual-stack key with the same IPv4 part, see
    /// [`crate::lease::keys_overlap`]). A lease with an expiration is written to expire
    /// then (etcd: under an etcd lease of [`LEASE_TTL`]); without one it is a reservation.
    /// Returns what was stored, or `None` if a subnet was taken.
    fn create(&mut self, lease: &Lease) -> Result<Option<Stored>, StoreError>;

    /// Replaces the lease under `lease`'s key with `lease` (expiration as in `create`) if
    /// its stored value is still exactly `expect`. Returns what was stored, or `None` if
    /// the lease is gone or holds another value.
    fn update(&mut self, lease: &Lease, expect: &str) -> Result<Option<Stored>, StoreError>;

    /// Removes the lease under `lease`'s key (its IPv4 and IPv6 subnets), if there is one.
    fn remove(&mut self, lease: &Lease) -> Result<(), StoreError>;

    /// For stores where something else assigns the subnet (Kubernetes: the node's
    /// podCIDR), our lease, written with `attrs(our previous lease)`; `None` (the default)
    /// where weft allocates through the primitives above.
    fn assigned(
        &mut self,
        _cfg: &NetConfig,
        _attrs: &dyn Fn(Option<&Lease>) -> LeaseAttrs,
        _now: SystemTime,
    ) -> Option<Result<Acquired, StoreError>> {
        None
    }

    /// The public addresses an operator set for this node in the store (Kubernetes: the
    /// `node-public-ip` and `node-public-ipv6` annotations), which take the place of
    /// `--public-ip` and `--public-ipv6` as in flanneld; none (the default) elsewhere.
    fn stored_public_ips(
        &self,
    ) -> Result<(Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>), StoreError> {
        Ok((None, None))
    }

    /// Serializes allocation with other local nodes, where the store needs it.
    fn lock(&mut self) -> Result<StoreLock, StoreError> {
        Ok(StoreLock::none())
    }

    /// Waits up to `timeout` for the leases to change (the daemon calls `leases` after).
    /// Stores that cannot tell just sleep.
    fn wait_change(&mut self, timeout: Duration) {
        std::thread::sleep(timeout);
    }

    /// A number that changes whenever [`LeaseStore::leases`] would answer differently
    /// (but for leases expiring with time), so the daemon reads them only then; `None`
    /// (the default) where the store cannot tell: read every round.
    fn generation(&self) -> Option<u64> {
        None
    }

    /// The leases for the control loop, and the generation they are current at: what
    /// changed since `since` (a generation this method returned) where the store keeps a
    /// change log reaching back that far, else all of them (the default: `leases`).
    /// Only the control loop calls it, so a store may remember what it answered (to name
    /// the subnets of leases gone).
    fn read(&mut self, _since: Option<u64>) -> Result<(LeaseRead, Option<u64>), StoreError> {
        let generation = self.generation();
        Ok((LeaseRead::All(self.leases()?), generation))
    }

    /// Where the store lives, for messages.
    fn describe(&self) -> String;

    /// False while the store cannot be reached although `leases` still answers (from a
    /// cache): the leases are then the last known, not current.
    fn reachable(&self) -> bool {
        true
    }
}

/// Acquires (or reuses) this node's lease, race-free against other nodes, as flanneld
/// does: list, choose ([`allocate`]: our own lease, else `previous`, else a random free
/// subnet, of each family with `EnableIPv6`), then create the key only if no lease holds
/// either subnet (or update ours only if unchanged); a lost race lists again, up to
/// [`RACE_RETRIES`] times. Our own lease is found by `owner`'s public IP alone, as
/// flanneld's `findLeaseByIP` (an IPv6-only node's by its public IPv6: [`Owner`]). `attrs`
/// is given our existing lease, if one carries our public IP, so backend data such as the
/// VTEP MACs survive.
pub fn acquire(
    store: &mut dyn LeaseStore,
    cfg: &NetConfig,
    owner: impl Into<Owner>,
    previous: Previous,
    now: SystemTime,
    random: u64,
    attrs: &dyn Fn(Option<&Lease>) -> LeaseAttrs,
) -> Result<Acquired, StoreError> {
    if let Some(assigned) = store.assigned(cfg, attrs, now) {
        return assigned;
    }
    let owner = owner.into();
    let _lock = store.lock()?;
    // Subnets we failed to take (someone holds them, perhaps in a form we cannot read):
    // taken, for us, in the next rounds.
    let mut blocked: Vec<Lease> = Vec::new();
    for attempt in 0..RACE_RETRIES {
        let listed = store.list()?;
        let mut leases: Vec<Lease> = listed.iter().map(|s| s.lease.clone()).collect();
        leases.extend(blocked.iter().cloned());
        let a = allocate(
            cfg,
            &leases,
            owner,
            previous,
            now,
            random.wrapping_add(attempt as u64),
        )?;
        for stale in &a.stale {
            tracing::info!(
                "deleting our lease {}: it no longer fits the network config",
                stale.key()
            );
            store.remove(stale)?;
        }
        let current = listed
            .iter()
            .find(|s| s.lease.subnet == a.subnet && s.lease.ipv6_subnet == a.ipv6_subnet);
        // Ours, or else a stale lease of ours (a v4-only one when EnableIPv6 came): its
        // backend data (the IPv4 VTEP MAC) carries over to the new pair.
        let mine = current
            .map(|s| &s.lease)
            .filter(|l| owner.owns(l) && !l.is_expired(now))
            .or(a.stale.first());
        let lease = Lease {
            subnet: a.subnet,
            ipv6_subnet: a.ipv6_subnet,
            attrs: attrs(mine),
            expiration: match a.source {
                Source::ExistingLease { reservation: true } => None,
                _ => Some(now + LEASE_TTL),
            },
        };
        let written = match (a.source, current) {
            (Source::ExistingLease { .. }, Some(cur)) => store.update(&lease, &cur.raw)?,
            _ => create_over_expired(store, &listed, &lease, now)?,
        };
        if let Some(stored) = written {
            return Ok(Acquired {
                stored,
                source: a.source,
                attempts: attempt + 1,
            });
        }
        blocked.push(Lease {
            attrs: LeaseAttrs::udp(Ipv4Addr::UNSPECIFIED), // never ours
            expiration: None,
            ..lease
        });
    }
    Err(StoreError::Contention(RACE_RETRIES))
}

/// Creates `lease`, first removing the expired leases in its way: they still hold their
/// names and subnets (a directory store's files; etcd deletes expired keys itself).
fn create_over_expired(
    store: &mut dyn LeaseStore,
    listed: &[Stored],
    lease: &Lease,
    now: SystemTime,
) -> Result<Option<Stored>, StoreError> {
    let expired = listed
        .iter()
        .map(|s| &s.lease)
        .filter(|l| l.is_expired(now));
    for old in expired.filter(|l| l.overlaps(lease)) {
        store.remove(old)?;
    }
    store.create(lease)
}

/// Renews `ours` to expire [`LEASE_TTL`] from `now` (a reservation stays one), but only if
/// the store still holds exactly what we wrote: a lease someone deleted or took over is
/// never re-created. `Ok(None)`: it was revoked.
pub fn renew(
    store: &mut dyn LeaseStore,
    ours: &Stored,
    now: SystemTime,
) -> Result<Option<Stored>, StoreError> {
    let lease = Lease {
        expiration: ours.lease.expiration.map(|_| now + LEASE_TTL),
        ..ours.lease.clone()
    };
    store.update(&lease, &ours.raw)
}

impl StoreError {
    /// True for failures that may go away by themselves (an unreachable etcd, a missing
    /// config key someone has yet to write); false for ones that need a person.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Remote { .. } | StoreError::Missing(_))
    }
}
