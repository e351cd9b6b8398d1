//! Lease stores. The daemon talks to one through [`LeaseStore`]; the embedded
//! [`file::FileStore`] is the default, laid out like flannel's etcd keys.

pub mod etcd;
pub mod file;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;

use crate::config::{ConfigError, NetConfig};
use crate::lease::alloc::AllocError;
use crate::lease::{Lease, LeaseAttrs};

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
    /// A remote store (etcd) failed or could not be reached.
    #[error("etcd {what}: {detail}")]
    Remote {
        /// The operation.
        what: String,
        /// The cause, as the client reported it.
        detail: String,
    },
    /// A key the store needs is absent.
    #[error("{0}")]
    Missing(String),
    /// Another node kept winning the race for a subnet.
    #[error(
        "could not create a lease after {0} attempts: other nodes kept taking the chosen subnet"
    )]
    Contention(usize),
}

/// What `acquire` settled on.
#[derive(Debug, Clone, PartialEq)]
pub struct Acquired {
    /// Our lease as written.
    pub lease: Lease,
    /// How the subnet was chosen.
    pub source: crate::lease::alloc::Source,
    /// Allocation rounds it took (more than 1: another node won a race for a subnet).
    pub attempts: usize,
}

/// A place where leases live and are watched.
pub trait LeaseStore: Send {
    /// The network config (`<prefix>/config`).
    fn config(&self) -> Result<NetConfig, StoreError>;

    /// Every readable lease, expired or not (corrupt entries are skipped with a warning).
    fn leases(&mut self) -> Result<Vec<Lease>, StoreError>;

    /// Acquires (or reuses) this node's lease, race-free against other nodes. `attrs` is
    /// given our existing lease, if one carries our public IP, so backend data such as the
    /// VTEP MAC can be kept.
    fn acquire(
        &mut self,
        cfg: &NetConfig,
        public_ip: Ipv4Addr,
        previous: Option<Ipv4Net>,
        now: SystemTime,
        random: u64,
        attrs: &dyn Fn(Option<&Lease>) -> LeaseAttrs,
    ) -> Result<Acquired, StoreError>;

    /// Renews `lease` to expire `LEASE_TTL` from `now` (a reservation stays one). Returns
    /// `Ok(None)` if the lease no longer exists: it was revoked.
    fn renew(&mut self, lease: &Lease, now: SystemTime) -> Result<Option<Lease>, StoreError>;

    /// Waits up to `timeout` for the leases to change (the daemon calls `leases` after).
    /// Stores that cannot tell just sleep.
    fn wait_change(&mut self, timeout: Duration) {
        std::thread::sleep(timeout);
    }

    /// Where the store lives, for messages.
    fn describe(&self) -> String;
}

impl StoreError {
    /// True for failures that may go away by themselves (an unreachable etcd, a missing
    /// config key someone has yet to write); false for ones that need a person.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Remote { .. } | StoreError::Missing(_))
    }
}
