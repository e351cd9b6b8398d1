//! The userspace dataplane behind `vxlan` and `udp`: a TUN device holding a route for the
//! whole cluster network, and workers that encapsulate in userspace (see
//! [`crate::dataplane`]). This file is also the one place that maps a [`BackendConfig`]
//! to the wire [`Format`] and to the lease attributes a node publishes.

use std::net::Ipv4Addr;

use std::collections::BTreeMap;

use super::routes::{OnceLog, Reach, RouteSet};
use super::{Backend, Health, Running, Setup};
use crate::config::BackendConfig;
use crate::daemon::Error;
use crate::dataplane::inject::{self, Injector};
use crate::dataplane::{open_tun, Dataplane};
use crate::encap::{Format, Node, LINUX_SRC_PORTS};
use crate::lease::table::BackendKind;
use crate::lease::{Lease, LeaseAttrs, Peer, VxlanBackendData};
use crate::netlink::LinkGuard;
use crate::wire::udp::ChecksumMode;
use crate::wire::MacAddr;

/// The TUN's transmit queue: the default 500 overflows (and TCP retransmits) when the
/// kernel outpaces a worker for a moment; measured with iperf3, 5000 removes those drops.
pub const TUN_TXQUEUELEN: u32 = 5000;

/// The lease attributes for `backend`: vxlan keeps the VTEP MAC of `ours` (our existing
/// lease) or uses `new_mac`; udp has nothing but the public IP.
pub fn lease_attrs(
    backend: &BackendConfig,
    public_ip: Ipv4Addr,
    ours: Option<&Lease>,
    new_mac: MacAddr,
) -> LeaseAttrs {
    match *backend {
        BackendConfig::Vxlan { vni, .. } => {
            let vtep_mac = ours
                .and_then(|l| l.attrs.vxlan_data().ok())
                .map_or(new_mac, |d| d.vtep_mac);
            LeaseAttrs::vxlan(public_ip, VxlanBackendData { vni, vtep_mac })
        }
        BackendConfig::Udp { .. } => LeaseAttrs::udp(public_ip),
        BackendConfig::HostGw => super::hostgw::HostGw.lease_attrs(public_ip, ours),
    }
}

/// The wire format for `backend`, with the VTEP MAC our `lease` publishes. Source ports
/// span Linux's range; the dataplane narrows them to the sockets it binds.
pub fn format(backend: &BackendConfig, lease: &Lease) -> Result<Format, Error> {
    Ok(match *backend {
        BackendConfig::Vxlan { vni, port, .. } => Format::Vxlan {
            vni,
            port,
            mac: lease
                .attrs
                .vxlan_data()
                .map_err(|e| Error::OwnLease {
                    key: lease.key(),
                    detail: e.to_string(),
                })?
                .vtep_mac,
            src_ports: LINUX_SRC_PORTS,
        },
        BackendConfig::Udp { port } => Format::Udp { port },
        BackendConfig::HostGw => {
            return Err(Error::Backend(
                "host-gw has no userspace dataplane: it forwards by kernel routes".into(),
            ))
        }
    })
}

/// The userspace vxlan or udp backend.
pub struct Userspace {
    cfg: BackendConfig,
    new_mac: MacAddr,
}

impl Userspace {
    /// For this backend config (vxlan or udp), with a fresh VTEP MAC for a new lease.
    pub fn new(cfg: BackendConfig) -> Userspace {
        Userspace {
            cfg,
            new_mac: MacAddr::local_unicast(rand::random()),
        }
    }
}

impl Backend for Userspace {
    fn name(&self) -> &'static str {
        self.cfg.type_name()
    }

    fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        self.cfg.pod_mtu(underlay_mtu)
    }

    fn lease_attrs(&self, public_ip: Ipv4Addr, ours: Option<&Lease>) -> LeaseAttrs {
        lease_attrs(&self.cfg, public_ip, ours, self.new_mac)
    }

    fn needs_tun(&self) -> bool {
        true
    }

    fn start(&self, s: Setup<'_>) -> Result<Box<dyn Running>, Error> {
        let d = &s.dataplane;
        let mut offloads = d.offloads;
        let queues = match open_tun(&d.tun_name, d.workers, offloads.tun) {
            Err(e) if offloads.tun => {
                // Probe: a kernel without TUN offloads still gets a working, slower dataplane.
                tracing::warn!("TUN offloads unavailable ({e}); continuing without them");
                offloads.tun = false;
                open_tun(&d.tun_name, d.workers, false)
            }
            r => r,
        }
        .map_err(|source| Error::Tun {
            name: d.tun_name.clone(),
            source,
        })?;
        let configure = |source| Error::Configure {
            name: d.tun_name.clone(),
            source,
        };
        let index =
            s.nl.link_by_name(&d.tun_name)
                .map_err(configure)?
                .ok_or_else(|| configure(std::io::Error::other("vanished after creation")))?
                .index;
        // From here on, dropping `tun` removes the route and the device.
        let mut tun = LinkGuard::new(s.nl.clone(), index, true);
        // No IPv6 on the TUN: weft forwards IPv4 only, and router solicitations would only
        // be counted as drops. Best effort: the kernel may have IPv6 off already.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", d.tun_name),
            "1",
        );
        let nl = tun.netlink();
        nl.set_mtu_up(index, s.pod_mtu, TUN_TXQUEUELEN)
            .map_err(configure)?;
        nl.add_addr(index, s.lease.subnet.network(), 32)
            .map_err(configure)?;
        // One route for the whole cluster network, as flannel's udp backend has.
        tun.route(s.network).map_err(configure)?;

        // Both formats: for flannel's udp one the "tunnel header" is just the outer UDP
        // header, and the kernel's UDP-tunnel GSO replicates it all the same.
        // Behind NAT (--public-ip is not the interface's address) a NAT router rewrites the
        // outer headers of every frame, and the super-frames tunnel GSO hands the kernel
        // do not survive it: measured, a NATed node's pod TCP out fell to 0.00 Gbit/s with
        // it and ran at 5 Gbit/s without (iface_by_ip_and_a_public_ip_behind_nat_...).
        if offloads.tunnel_gso && s.public_ip != s.local_ip {
            tracing::info!(
                "behind NAT (public IP {} on {}): tunnel GSO off, TSO super-packets are split in userspace",
                s.public_ip,
                s.local_ip
            );
            offloads.tunnel_gso = false;
        }
        let injectors = if offloads.tunnel_gso && offloads.tun {
            match open_injectors(&s, &d.tun_name, d.workers) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(
                        "tunnel GSO unavailable ({e}); TSO super-packets are split in userspace"
                    );
                    offloads.tunnel_gso = false;
                    Vec::new()
                }
            }
        } else {
            offloads.tunnel_gso = false;
            Vec::new()
        };
        let node = Node {
            public_ip: s.public_ip,
            subnet: s.lease.subnet,
            mtu: s.pod_mtu as usize,
            format: format(&self.cfg, s.lease)?,
            // The UDP socket sends only the payload; the kernel writes the outer headers.
            udp_checksum: ChecksumMode::Zero,
            hash_seed: rand::random(),
        };
        // Always a route set: without DirectRouting it wants nothing, and its first update
        // removes peer routes an earlier run (host-gw, DirectRouting) left, which would
        // shadow the TUN's route.
        let direct = Direct {
            enabled: matches!(
                self.cfg,
                BackendConfig::Vxlan {
                    direct_routing: true,
                    ..
                }
            ),
            routes: RouteSet::new(s.nl.clone()),
            underlay: super::hostgw::underlay_index(s.nl, s.underlay)?,
            ours: s.lease.subnet,
            skipped: OnceLog::default(),
        };
        let dp = Dataplane::start(
            node,
            s.local_ip,
            queues,
            injectors,
            s.table,
            rand::random(),
            offloads,
            &d.counters,
        )
        .map_err(Error::Dataplane)?;
        Ok(Box::new(Forwarding {
            describe: format!(
                "{} backend via {} (MTU {}, {} worker(s), offloads {offloads:?}{})",
                self.name(),
                d.tun_name,
                s.pod_mtu,
                d.workers,
                if direct.enabled {
                    "; DirectRouting"
                } else {
                    ""
                }
            ),
            direct,
            forwarded_from: if offloads.tunnel_gso {
                vec![inject::tap_name(&d.tun_name)]
            } else {
                Vec::new()
            },
            tun_name: d.tun_name.clone(),
            pod_mtu: s.pod_mtu,
            dp,
            tun,
        }))
    }
}

/// Opens the injection TAP ([`inject`]) with one queue per worker and brings it up.
fn open_injectors(s: &Setup<'_>, tun: &str, workers: usize) -> std::io::Result<Vec<Injector>> {
    let name = inject::tap_name(tun);
    let taps = inject::open(&name, workers)?;
    let index =
        s.nl.link_by_name(&name)?
            .ok_or_else(|| std::io::Error::other(format!("{name} vanished after creation")))?
            .index;
    s.nl.set_mtu_up(index, 1500, 1000)?;
    Ok(taps)
}

/// `DirectRouting` beside the userspace dataplane: peers on our layer-2 network get a plain
/// route via their public IP, more specific than the TUN's route for the whole network, so
/// their packets never reach the TUN.
struct Direct {
    enabled: bool,
    routes: RouteSet,
    underlay: u32,
    ours: ipnet::Ipv4Net,
    skipped: OnceLog,
}

impl Direct {
    fn update(&mut self, nl: &crate::netlink::Netlink, peers: &[Peer]) {
        let reach = self.enabled.then(|| Reach::read(nl));
        let want = peers
            .iter()
            .filter(|p| p.subnet != self.ours && p.backend == BackendKind::Vxlan)
            .filter(|p| {
                reach
                    .as_ref()
                    .is_some_and(|r| r.direct(p.public_ip, self.underlay))
            })
            .map(|p| crate::netlink::PeerRoute {
                dst: p.subnet,
                gateway: p.public_ip,
                oif: self.underlay,
                onlink: false,
            });
        match self.routes.set(want) {
            Ok(changes) => {
                for c in changes {
                    tracing::info!("DirectRouting: {c}");
                }
                self.skipped.note(BTreeMap::new());
            }
            Err(e) => {
                let mut failed = BTreeMap::new();
                failed.insert(
                    self.ours,
                    format!("DirectRouting: cannot program the direct routes (those peers go through the tunnel meanwhile): {e}"),
                );
                self.skipped.note(failed);
            }
        }
    }
}

/// The running userspace dataplane. Fields drop in order: the direct routes go, the workers
/// stop and are joined, then the route and the TUN go.
struct Forwarding {
    direct: Direct,
    describe: String,
    forwarded_from: Vec<String>,
    tun_name: String,
    pod_mtu: u32,
    dp: Dataplane,
    tun: LinkGuard,
}

impl Running for Forwarding {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn forwarded_from(&self) -> Vec<String> {
        self.forwarded_from.clone()
    }

    fn peers_changed(&mut self, peers: &[Peer]) {
        self.direct.update(self.tun.netlink(), peers);
        let senders: Vec<std::net::Ipv4Addr> = peers.iter().map(|p| p.public_ip).collect();
        self.dp.set_senders(&senders);
    }

    fn check(&mut self) -> Health {
        if let Health::Repaired(r) = self.direct.routes.check("DirectRouting") {
            tracing::warn!("{r}");
        }
        let name = &self.tun_name;
        if self.dp.tun_gone() {
            return Health::Broken(format!("TUN {name} is gone (its reads fail)"));
        }
        let dead = self.dp.dead_workers();
        if !dead.is_empty() {
            return Health::Broken(format!("worker thread(s) {dead:?} died"));
        }
        let nl = self.tun.netlink();
        let link = match nl.link_by_name(name) {
            Ok(l) => l,
            // Netlink itself failing says nothing about the device: look again later.
            Err(_) => return Health::Fine,
        };
        match link {
            None => Health::Broken(format!("TUN {name} was deleted")),
            Some(l) if l.index != self.tun.index() => {
                Health::Broken(format!("{name} was replaced by another device"))
            }
            Some(l) => {
                let mut fixed = Vec::new();
                if !l.up {
                    // The kernel drops a down device's routes with it.
                    if let Err(e) = nl.set_mtu_up(l.index, self.pod_mtu, TUN_TXQUEUELEN) {
                        return Health::Broken(format!(
                            "{name} was set down and cannot be set up: {e}"
                        ));
                    }
                    fixed.push(format!("{name} was set down: set it up"));
                }
                for &r in self.tun.routes() {
                    if !nl.has_route(r, l.index).unwrap_or(true) {
                        if let Err(e) = nl.replace_route(r, l.index) {
                            return Health::Broken(format!("the route to {r} via {name} was removed and cannot be restored: {e}"));
                        }
                        fixed.push(format!("restored the route to {r} via {name}"));
                    }
                }
                if fixed.is_empty() {
                    Health::Fine
                } else {
                    Health::Repaired(fixed.join("; "))
                }
            }
        }
    }
}
