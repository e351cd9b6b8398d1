//! What a backend can fail at: its own error, which the daemon wraps.

/// Why a backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TUN device could not be created.
    #[error(
        "cannot create TUN device {name}: {source} (is /dev/net/tun there, and are you root?)"
    )]
    Tun {
        /// The device name.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A device could not be configured (MTU, address, route).
    #[error("cannot configure {name}: {source}")]
    Configure {
        /// The device name.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Our lease's backend data cannot be read back.
    #[error("our lease {key}: {detail}")]
    OwnLease {
        /// The lease key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The backend cannot run with these flags or this underlay (what, and the fix).
    #[error("{0}")]
    Unsupported(String),
    /// The forwarding workers could not start.
    #[error("cannot start the dataplane: {0}")]
    Dataplane(std::io::Error),
}
