//! The kernel dataplane for vxlan (`--dataplane kernel`): a `flannel.<VNI>` vxlan device
//! created and programmed over netlink exactly as flanneld's vxlan backend programs it
//! (`pkg/backend/vxlan/{device.go,vxlan_network.go}`):
//!
//! - the device: VNI, destination port, local IP, the underlay as its device,
//!   `nolearning`, the lease's VTEP MAC, MTU = underlay (or `Backend.MTU`) − 50, a
//!   `<subnet>.0/32` address, `accept_ra=0`, up; its MAC checked after it is up (systemd's
//!   MACAddressPolicy may rewrite it, flannel issue #1155);
//! - per remote vxlan lease, in flanneld's order: the permanent ARP entry `<subnet>.0 ->
//!   VtepMAC`, the permanent FDB entry `VtepMAC -> PublicIP`, then the route `<subnet> via
//!   <subnet>.0 dev flannel.<VNI> onlink`; with `DirectRouting`, a peer on our layer-2
//!   network gets `<subnet> via <PublicIP>` instead, and no entries.
//!
//! The wire is the kernel's own, so weft's userspace nodes and stock flanneld nodes talk
//! to it as to any `flannel.1`. On a clean stop the device goes (and the kernel takes its
//! entries and routes with it); after a crash the next start finds the device by name and
//! recreates it, and adopts or removes the routes by weft's route protocol.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::hostgw::underlay_index;
use super::routes::{OnceLog, Reach, RouteSet};
use super::{userspace, Backend, Health, Running, Setup};
use crate::config::BackendConfig;
use crate::daemon::Error;
use crate::lease::table::BackendKind;
use crate::lease::{Lease, LeaseAttrs, Peer};
use crate::netlink::{LinkGuard, Netlink, PeerRoute, VxlanSpec};
use crate::wire::MacAddr;

/// The vxlan device's transmit queue (what `ip link add ... type vxlan` gives it).
const TXQUEUELEN: u32 = 1000;

/// flanneld's name for the vxlan device of `vni`.
pub fn device_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// The kernel vxlan dataplane.
pub struct KernelVxlan {
    cfg: BackendConfig,
    new_mac: MacAddr,
}

impl KernelVxlan {
    /// For a vxlan backend config, with a fresh VTEP MAC for a new lease.
    pub fn new(cfg: BackendConfig) -> KernelVxlan {
        KernelVxlan {
            cfg,
            new_mac: MacAddr::local_unicast(rand::random()),
        }
    }
}

impl Backend for KernelVxlan {
    fn name(&self) -> &'static str {
        self.cfg.type_name()
    }

    fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        self.cfg.pod_mtu(underlay_mtu)
    }

    fn lease_attrs(&self, public_ip: Ipv4Addr, ours: Option<&Lease>) -> LeaseAttrs {
        userspace::lease_attrs(&self.cfg, public_ip, ours, self.new_mac)
    }

    fn start(&self, s: Setup<'_>) -> Result<Box<dyn Running>, Error> {
        let BackendConfig::Vxlan {
            vni,
            port,
            direct_routing,
            ..
        } = self.cfg
        else {
            return Err(Error::Backend(
                "the kernel dataplane exists for vxlan only".into(),
            ));
        };
        let name = device_name(vni);
        let configure = |source| Error::Configure {
            name: name.clone(),
            source,
        };
        let underlay = underlay_index(s.nl, s.underlay)?;
        let mac = s
            .lease
            .attrs
            .vxlan_data()
            .map_err(|e| Error::OwnLease {
                key: s.lease.key(),
                detail: e.to_string(),
            })?
            .vtep_mac;
        // One left by a crashed weft (or by flanneld) may have another VNI, port, address
        // or MAC: start from a device we made.
        if let Some(old) = s.nl.link_by_name(&name).map_err(configure)? {
            tracing::info!("replacing the existing {name} (left by an earlier run)");
            s.nl.del_link(old.index).map_err(configure)?;
        }
        let spec = VxlanSpec {
            name: name.clone(),
            vni,
            port,
            underlay,
            local: s.local_ip,
            mac,
            mtu: s.pod_mtu,
        };
        let index = s.nl.add_vxlan(&spec).map_err(configure)?;
        // From here on, dropping `dev` deletes the device.
        let dev = LinkGuard::new(s.nl.clone(), index, true);
        // flanneld sets accept_ra=0; best effort (absent where IPv6 is off).
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"), "0");
        s.nl.add_addr(index, s.lease.subnet.network(), 32)
            .map_err(configure)?;
        s.nl.set_mtu_up(index, s.pod_mtu, TXQUEUELEN)
            .map_err(configure)?;
        let mut running = Device {
            routes: RouteSet::new(s.nl.clone()),
            dev,
            nl: s.nl.clone(),
            name,
            index,
            mac,
            pod_mtu: s.pod_mtu,
            vni,
            ours: s.lease.subnet,
            underlay,
            underlay_name: s.underlay.to_string(),
            direct_routing,
            entries: BTreeMap::new(),
            skipped: OnceLog::default(),
        };
        // As flanneld (#1795): the MAC after link-up must be the one the lease publishes.
        if let Some(fixed) = running.fix_mac() {
            tracing::warn!("{fixed}");
        }
        Ok(Box::new(running))
    }
}

/// The running device and what weft programmed on it. Fields drop in order: the direct
/// routes go first, then the device (which takes its entries and onlink routes along).
struct Device {
    routes: RouteSet,
    dev: LinkGuard,
    nl: Arc<Netlink>,
    name: String,
    index: u32,
    mac: MacAddr,
    pod_mtu: u32,
    vni: u32,
    ours: Ipv4Net,
    underlay: u32,
    underlay_name: String,
    direct_routing: bool,
    /// Peers reached through the device: subnet -> (public IP, VTEP MAC).
    entries: BTreeMap<Ipv4Net, (Ipv4Addr, MacAddr)>,
    skipped: OnceLog,
}

impl Device {
    /// Puts the lease's MAC back if something (systemd's MACAddressPolicy) changed it.
    fn fix_mac(&mut self) -> Option<String> {
        let link = self.nl.link_by_index(self.index).ok()??;
        if link.mac == Some(self.mac) {
            return None;
        }
        let got = link.mac.map(|m| m.to_string()).unwrap_or_default();
        Some(match self.nl.set_mac(self.index, self.mac) {
            Ok(()) => format!(
                "{}'s MAC was {got}, not the lease's VtepMAC {}: set it back",
                self.name, self.mac
            ),
            Err(e) => format!(
                "{}'s MAC is {got}, not the lease's VtepMAC {}, and cannot be set: {e}",
                self.name, self.mac
            ),
        })
    }

    /// The ARP and FDB entry of one tunnelled peer.
    fn program_entry(
        &self,
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        mac: MacAddr,
    ) -> std::io::Result<()> {
        self.nl.replace_neigh(self.index, subnet.network(), mac)?;
        self.nl.replace_fdb(self.index, mac, public_ip)
    }

    fn remove_entry(&self, subnet: Ipv4Net, public_ip: Ipv4Addr, mac: MacAddr) {
        if let Err(e) = self.nl.del_neigh(self.index, subnet.network()) {
            tracing::warn!("{}: {e}", self.name);
        }
        if let Err(e) = self.nl.del_fdb(self.index, mac, public_ip) {
            tracing::warn!("{}: {e}", self.name);
        }
    }

    /// Entries someone deleted or changed, put back: a line per repair.
    fn restore_entries(&self) -> Vec<String> {
        let (Ok(arp), Ok(fdb)) = (
            self.nl.neighbours(self.index, false),
            self.nl.neighbours(self.index, true),
        ) else {
            return Vec::new();
        };
        let mut fixed = Vec::new();
        for (sn, &(ip, mac)) in &self.entries {
            let has_arp = arp.contains(&(sn.network(), mac));
            let has_fdb = fdb.contains(&(ip, mac));
            if !(has_arp && has_fdb) {
                match self.program_entry(*sn, ip, mac) {
                    Ok(()) => fixed.push(format!("restored the ARP/FDB entries for {sn}")),
                    // Retried on the next check; said once a second at debug, not warn.
                    Err(e) => tracing::debug!("cannot restore the entries for {sn} yet: {e}"),
                }
            }
        }
        fixed
    }
}

impl Running for Device {
    fn describe(&self) -> String {
        format!(
            "vxlan backend in the kernel: {} (VNI {}, MTU {}, on {}{})",
            self.name,
            self.vni,
            self.pod_mtu,
            self.underlay_name,
            if self.direct_routing {
                ", DirectRouting"
            } else {
                ""
            }
        )
    }

    fn peers_changed(&mut self, peers: &[Peer]) {
        let mut want_routes = Vec::new();
        let mut want_entries = BTreeMap::new();
        let mut skipped = BTreeMap::new();
        let reach = self.direct_routing.then(|| Reach::read(&self.nl));
        for p in peers.iter().filter(|p| p.subnet != self.ours) {
            if p.backend != BackendKind::Vxlan {
                // flanneld: "ignoring non-vxlan v4Subnet".
                skipped.insert(
                    p.subnet,
                    format!(
                        "ignoring {} at {}: its node is not vxlan ({:?})",
                        p.subnet, p.public_ip, p.backend
                    ),
                );
            } else if p.vni != self.vni {
                skipped.insert(
                    p.subnet,
                    format!(
                        "ignoring {} at {}: its VNI {} is not ours ({})",
                        p.subnet, p.public_ip, p.vni, self.vni
                    ),
                );
            } else if reach
                .as_ref()
                .is_some_and(|r| r.direct(p.public_ip, self.underlay))
            {
                want_routes.push(PeerRoute {
                    dst: p.subnet,
                    gateway: p.public_ip,
                    oif: self.underlay,
                    onlink: false,
                });
            } else {
                want_entries.insert(p.subnet, (p.public_ip, p.vtep_mac));
                want_routes.push(PeerRoute {
                    dst: p.subnet,
                    gateway: p.subnet.network(),
                    oif: self.index,
                    onlink: true,
                });
            }
        }
        self.skipped.note(skipped);
        // Entries first: the kernel would ARP for the gateway if the route came first.
        for (sn, &(ip, mac)) in &self.entries {
            if want_entries.get(sn) != Some(&(ip, mac)) {
                self.remove_entry(*sn, ip, mac);
            }
        }
        for (sn, &(ip, mac)) in &want_entries {
            if self.entries.get(sn) != Some(&(ip, mac)) {
                if let Err(e) = self.program_entry(*sn, ip, mac) {
                    tracing::warn!(
                        "{}: cannot program {sn} (retried by the check): {e}",
                        self.name
                    );
                }
            }
        }
        self.entries = want_entries;
        match self.routes.set(want_routes) {
            Ok(changes) => {
                for c in changes {
                    tracing::info!("{}: {c}", self.name);
                }
            }
            Err(e) => tracing::warn!(
                "{}: cannot program the peer routes (retrying): {e}",
                self.name
            ),
        }
    }

    fn check(&mut self) -> Health {
        let name = self.name.clone();
        let link = match self.nl.link_by_name(&name) {
            Ok(l) => l,
            Err(_) => return Health::Fine,
        };
        let mut fixed = Vec::new();
        match link {
            None => return Health::Broken(format!("{name} was deleted")),
            Some(l) if l.index != self.dev.index() => {
                return Health::Broken(format!("{name} was replaced by another device"))
            }
            Some(l) if !l.up => {
                // The kernel drops a down device's routes with it; the route check below
                // puts them back.
                if let Err(e) = self.nl.set_mtu_up(l.index, self.pod_mtu, TXQUEUELEN) {
                    return Health::Broken(format!(
                        "{name} was set down and cannot be set up: {e}"
                    ));
                }
                fixed.push(format!("{name} was set down: set it up"));
            }
            Some(_) => {}
        }
        fixed.extend(self.fix_mac());
        fixed.extend(self.restore_entries());
        if let Health::Repaired(r) = self.routes.check(&name) {
            fixed.push(r);
        }
        if fixed.is_empty() {
            Health::Fine
        } else {
            Health::Repaired(fixed.join("; "))
        }
    }
}
