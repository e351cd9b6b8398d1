//! weft: a flannel-compatible pod-network agent with a userspace VXLAN/UDP dataplane.
//!
//! This crate's pure core (no I/O, no root): [`wire`] header views and emitters, the
//! sans-IO [`encap`] core, flannel-compatible [`lease`]s with the lock-free lease table and
//! subnet allocation, [`config`] (net-conf.json) and [`subnet_env`].

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod atomic_file;
pub mod backend;
pub mod cni;
pub mod config;
pub mod daemon;
pub(crate) mod dataplane;
pub mod encap;
pub mod gojson;
pub mod handover;
pub(crate) mod health;
pub mod host;
pub mod lease;
pub mod masq;
pub(crate) mod netlink;
pub mod offload;
pub mod privilege;
pub mod quiet;
pub mod store;
pub mod subnet_env;
pub mod teardown;
#[doc(hidden)]
pub mod testkit;
pub mod wg;
pub mod wire;

/// weft's version, as `weft --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
