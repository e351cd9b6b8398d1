//! Backends: what differs per net-conf `Backend.Type`. A backend says what this node
//! publishes in its lease, what MTU pods get, and what it programs to forward (today the
//! userspace dataplane on a TUN for `vxlan` and `udp`; routes for host-gw and a kernel
//! vxlan device are next). The daemon sees one only through [`Backend`] and [`Running`];
//! [`for_config`] is the one place a backend is chosen.

pub mod userspace;

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::config::BackendConfig;
use crate::daemon::Error;
use crate::dataplane::counters::Counters;
use crate::dataplane::Offloads;
use crate::lease::{Lease, LeaseAttrs, LeaseTable, Peer};
use crate::netlink::Netlink;

/// What a backend is given to start forwarding.
pub struct Setup<'a> {
    /// Netlink, for links and routes.
    pub nl: &'a Arc<Netlink>,
    /// The underlay interface's name.
    pub underlay: &'a str,
    /// The underlay interface's address, which the sockets bind.
    pub local_ip: Ipv4Addr,
    /// This node's public address, as the lease advertises it (differs from `local_ip`
    /// behind NAT).
    pub public_ip: Ipv4Addr,
    /// The cluster network.
    pub network: Ipv4Net,
    /// Our lease, as stored.
    pub lease: &'a Lease,
    /// The pod MTU ([`Backend::pod_mtu`] of the underlay's).
    pub pod_mtu: u32,
    /// The forwarding table, kept current by the daemon.
    pub table: Arc<LeaseTable>,
    /// The dataplane's settings (TUN name, workers, offloads, seeds).
    pub dataplane: DataplaneSettings,
}

/// The userspace dataplane's settings, from the command line.
#[derive(Debug, Clone)]
pub struct DataplaneSettings {
    /// Packet counters (shared: `/metrics` reads them across restarts of the dataplane).
    pub counters: Counters,
    /// TUN device name.
    pub tun_name: String,
    /// Worker threads.
    pub workers: usize,
    /// Offloads to try.
    pub offloads: Offloads,
}

/// A kind of backend.
pub trait Backend {
    /// flannel's type name.
    fn name(&self) -> &'static str;

    /// The pod MTU for an underlay MTU.
    fn pod_mtu(&self, underlay_mtu: u32) -> u32;

    /// The attributes this node publishes in its lease. `ours` is our existing lease, if
    /// the store has one, so data such as the VTEP MAC survive a restart.
    fn lease_attrs(&self, public_ip: Ipv4Addr, ours: Option<&Lease>) -> LeaseAttrs;

    /// Programs the node and starts forwarding. Dropping the result stops forwarding and
    /// removes everything it installed.
    fn start(&self, setup: Setup<'_>) -> Result<Box<dyn Running>, Error>;
}

/// A started backend.
pub trait Running {
    /// One line for the start-up log: what forwards, and how.
    fn describe(&self) -> String;

    /// The live peers changed (already published to the table).
    fn peers_changed(&mut self, _peers: &[Peer]) {}

    /// Checks that what the backend installed is still there (someone may delete or set
    /// down a device, or flush a route), repairing what it can in place.
    fn check(&mut self) -> Health {
        Health::Fine
    }
}

/// What [`Running::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// All in place.
    Fine,
    /// Something was undone by someone else and has been put back (what, for the log).
    Repaired(String),
    /// Broken beyond repair in place (what, for the log): stop it and start again.
    Broken(String),
}

/// The backend for a net-conf.json's `Backend`.
pub fn for_config(cfg: &BackendConfig) -> Box<dyn Backend> {
    match cfg {
        BackendConfig::Vxlan { .. } | BackendConfig::Udp { .. } => {
            Box::new(userspace::Userspace::new(*cfg))
        }
    }
}
