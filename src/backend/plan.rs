//! A backend's plan: the kernel state it wants, worked out without touching the kernel.
//!
//! Every backend forwards to a peer in one of three ways: a plain route via the peer's
//! public IP (host-gw, and DirectRouting for a peer on our layer-2 network), a tunnel entry
//! (the kernel vxlan device's neighbour, FDB entry and onlink route), or nothing per peer
//! (the userspace dataplane's TUN route covers the whole network and its table decides). A
//! [`PeerRule`] says which, per backend; [`PeerRule::plan`] turns the live peers into a
//! [`PeerPlan`] (routes, entries, and the peers skipped with the reason), and
//! [`LinkPlan`] is the device it wants. The reconciler (`super::reconcile`) applies both.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::lease::table::BackendKind;
use crate::lease::Peer;
use crate::netlink::PeerRoute;
use crate::wire::MacAddr;

/// The device a backend forwards through, as it wants it kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// Its name.
    pub name: String,
    /// Its MTU (the pod MTU).
    pub mtu: u32,
    /// Its transmit queue length.
    pub txqueuelen: u32,
    /// The address it holds, as a /32 (`<subnet>.0`, as flanneld gives its devices).
    pub address: Ipv4Addr,
    /// The MAC it must keep (the lease's VTEP MAC), if it has one.
    pub mac: Option<MacAddr>,
    /// Routes out of it (the userspace dataplane's route for the whole network).
    pub routes: Vec<Ipv4Net>,
}

/// How a backend reaches the peers it accepts, past the direct routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// Nothing per peer: the TUN's route covers the network and the userspace table
    /// decides (peers of another kind are its to refuse, not the plan's).
    Tun,
    /// The kernel vxlan device `index`: per peer a permanent neighbour `<subnet>.0 ->
    /// VtepMAC`, an FDB entry `VtepMAC -> PublicIP` and a route `<subnet> via <subnet>.0
    /// onlink`.
    Device {
        /// The device's interface index.
        index: u32,
    },
    /// No tunnel (host-gw): a peer that no plain route reaches is skipped.
    None,
}

/// One tunnelled peer's neighbour and FDB entry on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// Its public IP (the FDB destination).
    pub public_ip: Ipv4Addr,
    /// Its VTEP MAC.
    pub mac: MacAddr,
}

/// What a backend accepts of a peer and how it reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRule {
    /// Our own subnet (never a peer).
    pub ours: Ipv4Net,
    /// The peers' backend this one forwards to.
    pub kind: BackendKind,
    /// The VNI a peer must have, where the backend checks it.
    pub vni: Option<u32>,
    /// Whether a peer on our layer-2 network gets a plain route (host-gw always does).
    pub direct_routing: bool,
    /// How the others are reached.
    pub tunnel: Tunnel,
    /// The underlay's interface index (direct routes go out of it).
    pub underlay: u32,
    /// The underlay's name, for messages.
    pub underlay_name: String,
}

/// The per-peer kernel state a backend wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPlan {
    /// weft's peer routes (`proto 87`), direct and onlink.
    pub routes: Vec<PeerRoute>,
    /// Tunnel entries by peer subnet.
    pub entries: BTreeMap<Ipv4Net, Entry>,
    /// Peers not forwarded to, with the reason (logged once per change).
    pub skipped: BTreeMap<Ipv4Net, String>,
}

/// What a rule does with one peer.
enum Verdict {
    Skip(String),
    Direct,
    Tunnel(u32),
    Leave,
}

impl PeerRule {
    /// Whether [`plan`](Self::plan) asks which peers are on our layer-2 network (one route
    /// dump per update, only where it matters).
    pub fn needs_reach(&self) -> bool {
        self.direct_routing || self.tunnel == Tunnel::None
    }

    /// The plan for `peers` (our own lease among them is left out); `on_link(ip)` says
    /// whether the kernel reaches `ip` without a gateway out of the underlay.
    pub fn plan(&self, peers: &[Peer], on_link: &dyn Fn(Ipv4Addr) -> bool) -> PeerPlan {
        let mut plan = PeerPlan::default();
        for p in peers.iter().filter(|p| p.subnet != self.ours) {
            match self.verdict(p, on_link) {
                Verdict::Skip(why) => {
                    plan.skipped.insert(p.subnet, why);
                }
                Verdict::Direct => plan.routes.push(PeerRoute {
                    dst: p.subnet,
                    gateway: p.public_ip,
                    oif: self.underlay,
                    onlink: false,
                }),
                Verdict::Tunnel(index) => {
                    let entry = Entry {
                        public_ip: p.public_ip,
                        mac: p.vtep_mac,
                    };
                    plan.entries.insert(p.subnet, entry);
                    plan.routes.push(PeerRoute {
                        dst: p.subnet,
                        gateway: p.subnet.network(),
                        oif: index,
                        onlink: true,
                    });
                }
                Verdict::Leave => {}
            }
        }
        plan
    }

    fn verdict(&self, p: &Peer, on_link: &dyn Fn(Ipv4Addr) -> bool) -> Verdict {
        let (sn, ip) = (p.subnet, p.public_ip);
        if p.backend != self.kind {
            // As flanneld: "ignoring non-vxlan v4Subnet", "Ignoring non-host-gw subnet".
            return match self.tunnel {
                Tunnel::Tun => Verdict::Leave,
                _ => Verdict::Skip(format!(
                    "ignoring {sn} at {ip}: its node is not {} ({:?})",
                    kind_name(self.kind),
                    p.backend
                )),
            };
        }
        if let Some(vni) = self.vni.filter(|v| *v != p.vni) {
            return Verdict::Skip(format!(
                "ignoring {sn} at {ip}: its VNI {} is not ours ({vni})",
                p.vni
            ));
        }
        if self.needs_reach() && on_link(ip) {
            return Verdict::Direct;
        }
        match self.tunnel {
            Tunnel::Tun => Verdict::Leave,
            Tunnel::Device { index } => Verdict::Tunnel(index),
            Tunnel::None => Verdict::Skip(format!(
                "no route to {sn} via {ip}: that node is not on {}'s layer-2 network, which host-gw needs (use vxlan, or vxlan with DirectRouting)",
                self.underlay_name
            )),
        }
    }
}

/// flannel's name for a peer kind, for messages.
fn kind_name(kind: BackendKind) -> &'static str {
    use crate::lease::backend_type;
    match kind {
        BackendKind::Vxlan => backend_type::VXLAN,
        BackendKind::Udp => "udp",
        BackendKind::HostGw => backend_type::HOST_GW,
        BackendKind::Other => "known",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNDERLAY: u32 = 2;
    const DEVICE: u32 = 9;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn peer(n: u8, backend: BackendKind, vni: u32) -> Peer {
        Peer {
            subnet: net(&format!("10.244.{n}.0/24")),
            public_ip: Ipv4Addr::new(192, 0, 2, n),
            backend,
            vni,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, n]),
            super_datagrams: true,
        }
    }

    fn rule(kind: BackendKind, tunnel: Tunnel, direct_routing: bool) -> PeerRule {
        PeerRule {
            ours: net("10.244.1.0/24"),
            kind,
            vni: (tunnel != Tunnel::None && tunnel != Tunnel::Tun).then_some(1),
            direct_routing,
            tunnel,
            underlay: UNDERLAY,
            underlay_name: "eth0".into(),
        }
    }

    /// Peers 1 (ours), 2 and 3 on our layer 2, 4 behind a router; 5 is host-gw, 6 has
    /// another VNI.
    fn peers() -> Vec<Peer> {
        let mut v: Vec<Peer> = (1..=4).map(|n| peer(n, BackendKind::Vxlan, 1)).collect();
        v.push(peer(5, BackendKind::HostGw, 0));
        v.push(peer(6, BackendKind::Vxlan, 7));
        v
    }

    fn on_link(ip: Ipv4Addr) -> bool {
        ip.octets()[3] != 4
    }

    fn direct(n: u8) -> PeerRoute {
        let p = peer(n, BackendKind::Vxlan, 1);
        PeerRoute {
            dst: p.subnet,
            gateway: p.public_ip,
            oif: UNDERLAY,
            onlink: false,
        }
    }

    #[test]
    fn kernel_vxlan_tunnels_every_vxlan_peer_of_its_vni() {
        let plan = rule(BackendKind::Vxlan, Tunnel::Device { index: DEVICE }, false)
            .plan(&peers(), &on_link);
        let tunnelled: Vec<_> = plan.entries.keys().map(|s| s.to_string()).collect();
        assert_eq!(
            tunnelled,
            ["10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"]
        );
        let r = plan.routes[0];
        assert_eq!(
            (r.gateway, r.oif, r.onlink),
            ("10.244.2.0".parse().unwrap(), DEVICE, true)
        );
        assert_eq!(
            plan.entries[&net("10.244.2.0/24")].mac,
            MacAddr([2, 0, 0, 0, 0, 2])
        );
        assert!(plan.skipped[&net("10.244.5.0/24")].contains("not vxlan (HostGw)"));
        assert!(plan.skipped[&net("10.244.6.0/24")].contains("VNI 7 is not ours (1)"));
        assert_eq!(plan.skipped.len(), 2);
    }

    #[test]
    fn direct_routing_routes_peers_on_our_layer_2_and_tunnels_the_rest() {
        let plan = rule(BackendKind::Vxlan, Tunnel::Device { index: DEVICE }, true)
            .plan(&peers(), &on_link);
        assert_eq!(plan.routes[..2], [direct(2), direct(3)]);
        assert_eq!(
            plan.entries.keys().collect::<Vec<_>>(),
            [&net("10.244.4.0/24")]
        );
        // The userspace dataplane: only the direct routes; the TUN carries the rest.
        let plan = rule(BackendKind::Vxlan, Tunnel::Tun, true).plan(&peers(), &on_link);
        assert_eq!(plan.routes, [direct(2), direct(3), direct(6)]);
        assert!(plan.entries.is_empty() && plan.skipped.is_empty());
        let plan = rule(BackendKind::Vxlan, Tunnel::Tun, false).plan(&peers(), &on_link);
        assert_eq!(plan, PeerPlan::default());
    }

    #[test]
    fn host_gw_routes_host_gw_peers_on_our_layer_2_and_names_the_others() {
        let mut all = peers();
        all.push(peer(7, BackendKind::HostGw, 0));
        all[6].public_ip = Ipv4Addr::new(192, 0, 2, 4); // behind the router too
        let plan = rule(BackendKind::HostGw, Tunnel::None, false).plan(&all, &on_link);
        let routed: Vec<_> = plan.routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(routed, ["10.244.5.0/24"]);
        assert!(plan.skipped[&net("10.244.2.0/24")].contains("not host-gw (Vxlan)"));
        assert!(plan.skipped[&net("10.244.7.0/24")].contains("not on eth0's layer-2"));
        assert_eq!(plan.skipped.len(), 5);
    }
}
