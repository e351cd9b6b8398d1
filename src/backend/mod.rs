//! Backends: what differs per net-conf `Backend.Type` and `--dataplane`. A backend says
//! what this node publishes in its lease, what MTU pods get, and what it programs to
//! forward:
//!
//! | `Backend.Type` | `--dataplane userspace` | `--dataplane kernel` |
//! |---|---|---|
//! | `vxlan` | [`userspace`]: weft's TUN dataplane | [`kernel_vxlan`]: `flannel.<VNI>` |
//! | `vxlan` + `DirectRouting` | the same, plus a route for each peer on our L2 | the same |
//! | `udp` | [`userspace`] | refused: flanneld's udp is userspace too |
//! | `host-gw` | [`hostgw`]: routes only, whatever `--dataplane` says | |
//!
//! `--dataplane auto` is kernel vxlan where the kernel can make the device, else
//! userspace.
//!
//! Each backend says what it wants of the kernel as a plan ([`plan`]: a [`plan::PeerRule`]
//! for the peers, a [`plan::LinkPlan`] for its device), and one reconciler (`reconcile`)
//! applies it, checks it and repairs it, for every backend alike. The daemon sees a backend only through [`Backend`] and [`Running`];
//! [`for_config`] is the one place one is chosen.

mod error;
pub mod hostgw;
pub mod kernel_vxlan;
pub mod plan;
pub(crate) mod reconcile;
pub(crate) mod routes;
mod senders;
pub mod userspace;
pub mod wg_plan;
pub mod wireguard;

pub use error::Error;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::config::BackendConfig;
use crate::dataplane::counters::Counters;
use crate::dataplane::{Offloads, Tuning};
use crate::lease::{Lease, LeaseAttrs, LeaseTable, Peer, PeerChanges};
use crate::netlink::Netlink;
use crate::wire::MacAddr;

/// `--dataplane`: where a vxlan node encapsulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataplaneChoice {
    /// weft's userspace dataplane on a TUN.
    Userspace,
    /// The kernel's vxlan device, programmed by weft.
    Kernel,
    /// Kernel when the vxlan module is there, else userspace.
    Auto,
}

/// The underlay: the interface pods' traffic is tunnelled over, and our addresses on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// Interface name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// The interface's IPv4 address the sockets bind; `0.0.0.0` on an IPv6-only node.
    pub local_ip: Ipv4Addr,
    /// This node's public IP: what the lease advertises (`--public-ip`, else `local_ip`);
    /// `0.0.0.0` on an IPv6-only node, flanneld's PublicIP for such a node.
    pub public_ip: Ipv4Addr,
    /// Its IPv6 side, when the network has IPv6 enabled.
    pub v6: Option<UnderlayV6>,
}

/// The IPv6 addresses of the underlay, as flanneld chooses them with IPv6 enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayV6 {
    /// The interface's global IPv6 address (the IPv6 device's `local`).
    pub local_ip: Ipv6Addr,
    /// What the lease advertises as `PublicIPv6` (`--public-ipv6`, else `local_ip`).
    pub public_ip: Ipv6Addr,
}

/// What a backend is given to start forwarding.
#[derive(Clone)]
pub struct Setup<'a> {
    /// Netlink, for links and routes.
    pub nl: &'a Arc<Netlink>,
    /// The underlay interface's name.
    pub underlay: &'a str,
    /// The underlay interface's IPv4 address, which the IPv4 sockets bind (`0.0.0.0` on an
    /// IPv6-only node: it has none).
    pub local_ip: Ipv4Addr,
    /// This node's public address, as the lease advertises it (differs from `local_ip`
    /// behind NAT; `0.0.0.0` on an IPv6-only node, as flanneld advertises it then).
    pub public_ip: Ipv4Addr,
    /// The cluster's IPv4 network (`None`: an IPv6-only network).
    pub network: Option<Ipv4Net>,
    /// The IPv6 side, in a dual-stack cluster: the interface's IPv6 address and the
    /// cluster's IPv6 network (our IPv6 subnet is the lease's).
    pub v6: Option<(Ipv6Addr, Ipv6Net)>,
    /// Our lease, as stored.
    pub lease: &'a Lease,
    /// Its IPv4 subnet (`None`: an IPv6-only network).
    pub subnet: Option<Ipv4Net>,
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
    /// How the workers run.
    pub tuning: Tuning,
    /// The queues and sockets passed from a predecessor, and offered to a successor.
    pub handoff: Arc<crate::handover::Handoff>,
}

/// A kind of backend.
pub trait Backend {
    /// flannel's type name.
    fn name(&self) -> &'static str;

    /// The pod MTU for an underlay MTU.
    fn pod_mtu(&self, underlay_mtu: u32) -> u32;

    /// The attributes this node publishes in its lease, with `public_ipv6` in a
    /// dual-stack cluster. `ours` is our existing lease, if the store has one, so data
    /// such as the VTEP MACs survive a restart.
    fn lease_attrs(
        &self,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
        ours: Option<&Lease>,
    ) -> LeaseAttrs;

    /// Programs the node and starts forwarding. Dropping the result stops forwarding and
    /// removes everything it installed.
    fn start(&self, setup: Setup<'_>) -> Result<Box<dyn Running>, Error>;

    /// Whether it forwards through a TUN device (checked at start, before a lease is taken).
    fn needs_tun(&self) -> bool {
        false
    }

    /// The kernel devices it forwards through, one per address family the network has
    /// (`ipv4`, `ipv6`), and adopts from an earlier run (the start-up removal of what
    /// earlier runs left spares them, and only them).
    fn kernel_devices(&self, ipv4: bool, ipv6: bool) -> Vec<String> {
        let _ = (ipv4, ipv6);
        Vec::new()
    }
}

/// A started backend.
pub trait Running {
    /// One line for the start-up log: what forwards, and how.
    fn describe(&self) -> String;

    /// The live peers changed (already published to the table; our own lease among them).
    fn peers_changed(&mut self, _peers: &[Peer]) {}

    /// The live peers changed by `changes` alone (already applied to the table); `peers`
    /// gives all of them, for a backend that needs the whole set. By default that whole set
    /// goes to [`peers_changed`](Self::peers_changed); a backend that can apply the change
    /// alone does, so a change costs what it changed, not the cluster's size.
    fn peers_patched(&mut self, changes: &PeerChanges, peers: &dyn Fn() -> Vec<Peer>) {
        let _ = changes;
        self.peers_changed(&peers());
    }

    /// Devices whose traffic the kernel forwards on weft's behalf (the userspace
    /// dataplane's injection TAP), for flanneld's FORWARD accepts.
    fn forwarded_from(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether the kernel forwards for it with no weft process running (kernel vxlan,
    /// host-gw): then a stop leaves what it installed, as flanneld's does, for the next
    /// start to adopt ([`crate::teardown`]). A userspace dataplane's TUN dies with its
    /// process; its stop removes the rest and the fail-closed guard answers.
    fn outlives_process(&self) -> bool {
        false
    }

    /// Called before it is dropped at a hand-over: let the successor take the traffic
    /// first, so that nothing is left in what this process closes.
    fn yield_to_successor(&mut self) {}

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

/// The backend for a net-conf.json's `Backend`, the `--dataplane` flag and the underlay
/// chosen (with its IPv6 side when the network is dual-stack); refused with the reason
/// and the fix where they cannot go together.
pub fn for_config(
    cfg: &BackendConfig,
    dataplane: DataplaneChoice,
    underlay: &Underlay,
) -> Result<Box<dyn Backend>, Error> {
    if let BackendConfig::Wireguard(w) = *cfg {
        return wireguard_backend(w, dataplane);
    }
    if underlay.v6.is_some() {
        return dual_stack(cfg, dataplane, underlay);
    }
    let dataplane = match (*cfg, dataplane) {
        (BackendConfig::HostGw, _) => {
            if underlay.public_ip != underlay.local_ip {
                // As flanneld's hostgw.New refuses it.
                return Err(Error::Unsupported(format!(
                    "host-gw: the public IP {} differs from {}'s address {} (a node behind NAT); host-gw routes straight to each node's address, which NAT hides: use Backend.Type vxlan",
                    underlay.public_ip, underlay.name, underlay.local_ip
                )));
            }
            return Ok(Box::new(hostgw::HostGw));
        }
        (BackendConfig::Udp { .. }, DataplaneChoice::Kernel) => {
            return Err(Error::Unsupported(
                "--dataplane kernel: the udp backend has no kernel dataplane (flanneld's is a userspace proxy too); use --dataplane userspace, or Backend.Type vxlan".into(),
            ))
        }
        (BackendConfig::Udp { .. }, _) => DataplaneChoice::Userspace,
        (BackendConfig::Vxlan { .. }, d) => d,
        (BackendConfig::Wireguard(w), _) => return wireguard_backend(w, dataplane),
    };
    Ok(Box::new(Encap::new(cfg, dataplane)))
}

/// [`for_config`] for wireguard, in either family or both: userspace; the kernel's
/// wireguard device is refused by name.
fn wireguard_backend(
    w: crate::config::WireguardConfig,
    dataplane: DataplaneChoice,
) -> Result<Box<dyn Backend>, Error> {
    if dataplane == DataplaneChoice::Kernel {
        return Err(Error::Unsupported("--dataplane kernel with Backend.Type wireguard: weft does not program the kernel's wireguard device (and this kernel may have no module); use --dataplane userspace or auto".into()));
    }
    Ok(Box::new(wireguard::Wireguard::new(w)?))
}

/// [`for_config`] for a dual-stack network: host-gw, and vxlan in the kernel (flanneld's
/// two devices) or in userspace (IPv6 pods over the IPv6 underlay from weft's workers).
/// flanneld's udp backend has no IPv6.
fn dual_stack(
    cfg: &BackendConfig,
    dataplane: DataplaneChoice,
    underlay: &Underlay,
) -> Result<Box<dyn Backend>, Error> {
    match (*cfg, dataplane) {
        (BackendConfig::HostGw, _) => {
            let v4 = Underlay { v6: None, ..underlay.clone() };
            for_config(cfg, dataplane, &v4)?;
            match underlay.v6 {
                Some(v6) if v6.public_ip != v6.local_ip => Err(Error::Unsupported(format!(
                    "host-gw: the public IPv6 {} differs from {}'s address {} (a node behind NAT); host-gw routes straight to each node's address: use Backend.Type vxlan",
                    v6.public_ip, underlay.name, v6.local_ip
                ))),
                _ => Ok(Box::new(hostgw::HostGw)),
            }
        }
        (BackendConfig::Udp { .. }, _) => Err(Error::Unsupported(
            "EnableIPv6 with Backend.Type udp: flanneld's udp backend carries IPv4 only (dual-stack works with vxlan and host-gw); use Backend.Type vxlan, or set EnableIPv6 to false".into(),
        )),
        (BackendConfig::Vxlan { .. }, _) => Ok(Box::new(Encap::new(cfg, dataplane))),
        (BackendConfig::Wireguard(w), _) => wireguard_backend(w, dataplane),
    }
}

/// vxlan and udp: encapsulation, in the kernel's vxlan device ([`kernel_vxlan`]) or weft's
/// userspace dataplane ([`userspace`]). With `--dataplane auto`, the kernel's device where
/// the kernel can make one (the vxlan module loads on the first request for one), else
/// userspace. Both read the VTEP MAC from the lease, so they publish the same lease.
struct Encap {
    cfg: BackendConfig,
    /// The VTEP MACs of a new lease, IPv4's and IPv6's (a restart keeps the lease's).
    new_macs: [MacAddr; 2],
    /// Kernel, userspace or auto (udp: always userspace).
    dataplane: DataplaneChoice,
}

impl Encap {
    fn new(cfg: &BackendConfig, dataplane: DataplaneChoice) -> Encap {
        Encap {
            cfg: *cfg,
            new_macs: [
                MacAddr::local_unicast(rand::random()),
                MacAddr::local_unicast(rand::random()),
            ],
            dataplane,
        }
    }
}

impl Backend for Encap {
    fn name(&self) -> &'static str {
        self.cfg.type_name()
    }

    fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        self.cfg.pod_mtu(underlay_mtu)
    }

    fn lease_attrs(
        &self,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
        ours: Option<&Lease>,
    ) -> LeaseAttrs {
        userspace::lease_attrs(&self.cfg, (public_ip, public_ipv6), ours, self.new_macs)
    }

    fn needs_tun(&self) -> bool {
        self.dataplane == DataplaneChoice::Userspace
    }

    fn kernel_devices(&self, ipv4: bool, ipv6: bool) -> Vec<String> {
        match (self.cfg, self.dataplane) {
            (_, DataplaneChoice::Userspace) => Vec::new(),
            (BackendConfig::Vxlan { vni, .. }, _) => [
                ipv4.then(|| kernel_vxlan::device_name(vni)),
                ipv6.then(|| kernel_vxlan::device_name_v6(vni)),
            ]
            .into_iter()
            .flatten()
            .collect(),
            _ => Vec::new(),
        }
    }

    fn start(&self, setup: Setup<'_>) -> Result<Box<dyn Running>, Error> {
        match self.dataplane {
            DataplaneChoice::Userspace => userspace::start(&self.cfg, setup),
            DataplaneChoice::Kernel => kernel_vxlan::start(&self.cfg, setup),
            DataplaneChoice::Auto => {
                kernel_vxlan::start(&self.cfg, setup.clone()).or_else(|e| {
                    tracing::warn!(
                        error = %e,
                        "--dataplane auto: the kernel's vxlan is unavailable; using weft's userspace dataplane"
                    );
                    userspace::start(&self.cfg, setup)
                })
            }
        }
    }
}

/// Removes the `flannel.*` (and `flannel-v6.*`) vxlan devices an earlier run left (weft's after a crash, or a
/// flanneld's this node ran before): their routes to peers' subnets would shadow the TUN's
/// route for the whole cluster network, and a device holds the VXLAN port. Called once at
/// start, before any backend programs anything, sparing `spare` (the kernel dataplane's
/// own devices, which it adopts when they are made as it would make them: a family the
/// network no longer has loses its device); returns a line per removal. Peer routes are
/// not touched here: every backend's [`routes::RouteSet`] adopts those of an earlier run
/// that it still wants and removes the rest, so host-gw pods keep forwarding across a
/// crash and restart.
pub fn remove_leftover_devices(nl: &Netlink, spare: &[String]) -> std::io::Result<Vec<String>> {
    let mut done = Vec::new();
    for l in nl.links()? {
        let ours = l.name.starts_with("flannel.") || l.name.starts_with("flannel-v6.");
        if ours && l.kind.as_deref() == Some("vxlan") && !spare.contains(&l.name) {
            nl.del_link(l.index)?;
            done.push(format!("vxlan device {}", l.name));
        }
    }
    Ok(done)
}

/// For `weft cleanup`: every peer route weft added and every `flannel.*` vxlan device.
pub fn remove_leftovers(nl: &Netlink) -> std::io::Result<Vec<String>> {
    let mut done = Vec::new();
    for r in nl.peer_routes()? {
        nl.del_peer_route(&r)?;
        done.push(format!("route {r}"));
    }
    done.extend(remove_leftover_devices(nl, &[])?);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay(public: [u8; 4]) -> Underlay {
        Underlay {
            name: "eth0".into(),
            mtu: 1500,
            local_ip: Ipv4Addr::new(192, 0, 2, 1),
            public_ip: public.into(),
            v6: None,
        }
    }

    fn refusal(cfg: BackendConfig, dp: DataplaneChoice, u: &Underlay) -> String {
        match for_config(&cfg, dp, u) {
            Err(e) => e.to_string(),
            Ok(b) => panic!("{} accepted", b.name()),
        }
    }

    #[test]
    fn each_backend_and_dataplane_is_chosen_in_one_place() {
        let vxlan = BackendConfig::Vxlan {
            vni: 1,
            port: 8472,
            mtu: None,
            direct_routing: false,
        };
        let u = underlay([192, 0, 2, 1]);
        for dp in [
            DataplaneChoice::Userspace,
            DataplaneChoice::Kernel,
            DataplaneChoice::Auto,
        ] {
            let b = for_config(&vxlan, dp, &u).unwrap();
            assert_eq!(b.name(), "vxlan");
            assert_eq!(b.pod_mtu(1500), 1450);
            let h = for_config(&BackendConfig::HostGw, dp, &u).unwrap();
            assert_eq!(h.name(), "host-gw");
            assert_eq!(h.pod_mtu(1500), 1500);
            let a = h.lease_attrs(u.public_ip, None, None);
            assert_eq!(
                a.to_json(),
                r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"host-gw"}"#
            );
        }
        let udp = BackendConfig::Udp { port: 8285 };
        assert_eq!(
            for_config(&udp, DataplaneChoice::Auto, &u).unwrap().name(),
            "udp"
        );
        let e = refusal(udp, DataplaneChoice::Kernel, &u);
        assert!(e.contains("--dataplane userspace"), "{e}");
        // host-gw behind NAT, refused as flanneld's hostgw.New refuses it.
        let e = refusal(
            BackendConfig::HostGw,
            DataplaneChoice::Userspace,
            &underlay([203, 0, 113, 7]),
        );
        assert!(e.contains("NAT") && e.contains("vxlan"), "{e}");
    }

    /// wireguard runs in userspace over IPv4; the kernel's device and IPv6 are refused by
    /// name (before any key file is touched).
    #[test]
    fn wireguard_refuses_the_kernel_dataplane_by_name_in_either_family() {
        let cfg = crate::config::NetConfig::parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#,
        )
        .unwrap();
        let mut u = underlay([192, 0, 2, 1]);
        let e = refusal(cfg.backend, DataplaneChoice::Kernel, &u);
        assert!(
            e.contains("--dataplane kernel") && e.contains("userspace"),
            "{e}"
        );
        u.v6 = Some(UnderlayV6 {
            local_ip: "2001:db8::1".parse().unwrap(),
            public_ip: "2001:db8::1".parse().unwrap(),
        });
        // Dual-stack goes the same way (userspace is accepted: it would make the key file,
        // so the netns tests start it).
        let e = refusal(cfg.backend, DataplaneChoice::Kernel, &u);
        assert!(e.contains("--dataplane kernel"), "{e}");
    }
}
