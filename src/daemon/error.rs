//! Why `weft run` stopped or refused to start, each with what to do about it.

use std::path::PathBuf;

use crate::store::StoreError;

/// A start-up or runtime failure of the node agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Signal handlers could not be installed.
    #[error("cannot install signal handler: {0}")]
    Signals(std::io::Error),
    /// No netlink socket (not root, or no network namespace).
    #[error("cannot open netlink (are you root?): {0}")]
    Netlink(std::io::Error),
    /// A netlink query failed while looking for the underlay.
    #[error("cannot read interfaces: {0}")]
    Interfaces(std::io::Error),
    /// No interface matches the selection flags; every attempt, then the interfaces.
    #[error("no underlay interface: {0}")]
    NoUnderlay(String),
    /// The underlay MTU leaves too little for pods.
    #[error("underlay {name} MTU {mtu} leaves only {pod_mtu} for pods; IPv4 needs 576")]
    MtuTooSmall {
        /// The underlay interface.
        name: String,
        /// Its MTU.
        mtu: u32,
        /// What would be left.
        pod_mtu: u32,
    },
    /// The store could not be opened or read.
    #[error("{0}")]
    Store(StoreError),
    /// The embedded store has no usable network config.
    #[error("{source}\n  (the embedded store reads the network config from {dir}/config; write flannel's net-conf.json there)")]
    FileConfig {
        /// The cause.
        source: StoreError,
        /// The store directory.
        dir: PathBuf,
    },
    /// `--lease-dir` could not be opened.
    #[error("--lease-dir: {0}")]
    LeaseDir(StoreError),
    /// No lease could be acquired.
    #[error("cannot acquire a lease: {0}")]
    Acquire(StoreError),
    /// The fail-closed guard route could not be installed.
    #[error("cannot install the fail-closed route for {network} (pods' packets would leave unencapsulated while weft is down): {source}")]
    Guard {
        /// The cluster network (of either family).
        network: ipnet::IpNet,
        /// Why.
        source: std::io::Error,
    },
    /// `--ip-masq` rules could not be installed.
    #[error("--ip-masq: {0}")]
    Masq(String),
    /// subnet.env could not be written.
    #[error("cannot write --subnet-file {path}: {source}")]
    SubnetFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The host lacks what weft needs (br_netfilter, the TUN device): what, and the fix.
    #[error("{0}")]
    Host(String),
    /// The backend could not start.
    #[error(transparent)]
    Backend(#[from] crate::backend::Error),
    /// The health endpoint could not listen.
    #[error("{0}")]
    Healthz(std::io::Error),
    /// A weft already runs on this node and the node cannot be handed over.
    #[error(transparent)]
    Handover(#[from] crate::handover::Error),
    /// Our lease was deleted or taken over: stop, as flanneld does.
    #[error(
        "lease {key} has been revoked (deleted from {store}): shutting down, as flanneld does"
    )]
    Revoked {
        /// The lease key.
        key: String,
        /// Where it was.
        store: String,
    },
}
