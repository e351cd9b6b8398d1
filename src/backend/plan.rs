//! A backend's plan: the kernel state it wants, worked out without touching the kernel.
//!
//! Every backend forwards to a peer in one of three ways: a plain route via the peer's
//! public IP (host-gw, and DirectRouting for a peer on our layer-2 network), a tunnel entry
//! (the kernel vxlan device's neighbour, FDB entry and onlink route), or nothing per peer
//! (the userspace dataplane's TUN route covers the whole network and its table decides). A
//! [`PeerRule`] says which, per backend; [`PeerRule::plan`] turns the live peers into a
//! [`PeerPlan`] (routes, entries, and the peers skipped with the reason), and
//! [`LinkPlan`] is the device it wants. The reconciler (`super::reconcile`) applies both.
//!
//! A rule is for one address family, that of its own subnet: a dual-stack backend has one
//! rule per family (the kernel vxlan dataplane's `flannel.<VNI>` and `flannel-v6.<VNI>`,
//! host-gw's routes via each peer's `PublicIP` and `PublicIPv6`), and a peer is planned
//! by the side of its lease of that family; the reconciler applies their plans as one.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

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
    /// The addresses it holds, each as a host route (`<subnet>.0/32`, the IPv6 subnet's
    /// first address as a /128, as flanneld gives its devices; a device carrying both
    /// families, as WireGuard's one device outside separate mode, holds both).
    pub addresses: Vec<IpAddr>,
    /// The MAC it must keep (the lease's VTEP MAC), if it has one.
    pub mac: Option<MacAddr>,
    /// Routes out of it (the userspace dataplane's routes for the whole network, of each
    /// family).
    pub routes: Vec<IpNet>,
}

/// How a backend reaches the peers it accepts, past the direct routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// Nothing per peer: the TUN's route covers the network and the userspace table
    /// decides (peers of another kind are its to refuse, not the plan's).
    Tun,
    /// The kernel vxlan device `index`: per peer a permanent neighbour `<subnet>.0 ->
    /// VtepMAC`, an FDB entry `VtepMAC -> PublicIP` and a route `<subnet> via <subnet>.0
    /// onlink` (in IPv6: the subnet's first address, the MAC of the peer's IPv6 device and
    /// its `PublicIPv6`).
    Device {
        /// The device's interface index.
        index: u32,
    },
    /// No tunnel (host-gw): a peer that no plain route reaches is skipped.
    None,
}

/// One tunnelled peer's neighbour and FDB entry on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The device they are on.
    pub device: u32,
    /// Its public IP of the subnet's family (the FDB destination).
    pub public_ip: IpAddr,
    /// Its VTEP MAC.
    pub mac: MacAddr,
}

/// What a backend accepts of a peer and how it reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRule {
    /// Our own subnet (never a peer); its family is the rule's.
    pub ours: IpNet,
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
    pub entries: BTreeMap<IpNet, Entry>,
    /// Peers not forwarded to, with the reason (logged once per change).
    pub skipped: BTreeMap<IpNet, String>,
}

impl PeerPlan {
    /// Adds `other`'s routes, entries and skips (another family's plan) to this one.
    pub fn merge(&mut self, other: PeerPlan) {
        self.routes.extend(other.routes);
        self.entries.extend(other.entries);
        for (subnet, why) in other.skipped {
            // A peer skipped in both families keeps the first family's reason.
            self.skipped.entry(subnet).or_insert(why);
        }
    }
}

/// A peer as one rule sees it: the side of its lease of the rule's family.
struct Side {
    subnet: IpNet,
    public_ip: IpAddr,
    vni: u32,
    mac: MacAddr,
}

impl Side {
    /// `p`'s side in `family` (v4 when `v4`); `None` if its lease has none.
    fn of(p: &Peer, v4: bool) -> Option<Side> {
        if v4 {
            return Some(Side {
                subnet: IpNet::V4(p.subnet?),
                public_ip: IpAddr::V4(p.public_ip),
                vni: p.vni,
                mac: p.vtep_mac,
            });
        }
        p.v6.map(|v| Side {
            subnet: IpNet::V6(v.subnet),
            public_ip: IpAddr::V6(v.public_ip),
            vni: v.vni,
            mac: v.vtep_mac,
        })
    }
}

/// The first address of `subnet` (`<subnet>.0`, or the IPv6 subnet's `::`): the gateway
/// of a tunnelled peer's onlink route, and the address of its neighbour entry.
pub fn subnet_address(subnet: IpNet) -> IpAddr {
    subnet.network()
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
    /// whether the kernel reaches `ip` without a gateway out of the underlay. An IPv6 rule
    /// passes over peers whose lease has no IPv6 side (a node of an IPv4-only past), naming
    /// them.
    pub fn plan(&self, peers: &[Peer], on_link: &dyn Fn(IpAddr) -> bool) -> PeerPlan {
        let v4 = matches!(self.ours, IpNet::V4(_));
        let mut plan = PeerPlan::default();
        for p in peers {
            let Some(side) = Side::of(p, v4) else {
                // A peer of the other family only: named under the subnet it has.
                let (subnet, why) = match (p.subnet, p.v6) {
                    (Some(sn), _) => (IpNet::V4(sn), format!("no IPv6 route to {sn} at {}: its lease has no IPv6 subnet and PublicIPv6 (is its node dual-stack?)", p.public_ip)),
                    (None, Some(v6)) => (IpNet::V6(v6.subnet), format!("no IPv4 route to {} at {}: its lease has no IPv4 subnet (an IPv6-only node)", v6.subnet, v6.public_ip)),
                    (None, None) => continue,
                };
                plan.skipped.insert(subnet, why);
                continue;
            };
            if side.subnet == self.ours {
                continue;
            }
            match self.verdict(p.backend, &side, on_link) {
                Verdict::Skip(why) => {
                    plan.skipped.insert(side.subnet, why);
                }
                Verdict::Direct => plan.routes.push(PeerRoute {
                    dst: side.subnet,
                    gateway: side.public_ip,
                    oif: self.underlay,
                    onlink: false,
                }),
                Verdict::Tunnel(device) => {
                    let entry = Entry {
                        device,
                        public_ip: side.public_ip,
                        mac: side.mac,
                    };
                    plan.entries.insert(side.subnet, entry);
                    plan.routes.push(PeerRoute {
                        dst: side.subnet,
                        gateway: subnet_address(side.subnet),
                        oif: device,
                        onlink: true,
                    });
                }
                Verdict::Leave => {}
            }
        }
        plan
    }

    fn verdict(&self, backend: BackendKind, p: &Side, on_link: &dyn Fn(IpAddr) -> bool) -> Verdict {
        let (sn, ip) = (p.subnet, p.public_ip);
        if backend != self.kind {
            // As flanneld: "ignoring non-vxlan v4Subnet", "Ignoring non-host-gw subnet".
            return match self.tunnel {
                Tunnel::Tun => Verdict::Leave,
                _ => Verdict::Skip(format!(
                    "ignoring {sn} at {ip}: its node is not {} ({backend:?})",
                    kind_name(self.kind),
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
        BackendKind::Wireguard => backend_type::WIREGUARD,
        BackendKind::Other => "known",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const UNDERLAY: u32 = 2;
    const DEVICE: u32 = 9;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn peer(n: u8, backend: BackendKind, vni: u32) -> Peer {
        Peer {
            subnet: format!("10.244.{n}.0/24").parse().ok(),
            public_ip: Ipv4Addr::new(192, 0, 2, n),
            backend,
            vni,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, n]),
            super_datagrams: true,
            v6: None,
            wg: None,
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

    fn on_link(ip: IpAddr) -> bool {
        !matches!(ip, IpAddr::V4(v) if v.octets()[3] == 4)
    }

    fn direct(n: u8) -> PeerRoute {
        let p = peer(n, BackendKind::Vxlan, 1);
        PeerRoute {
            dst: p.subnet.unwrap().into(),
            gateway: p.public_ip.into(),
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

    #[test]
    fn an_ipv6_rule_plans_each_peers_ipv6_side_and_names_those_without_one() {
        use crate::lease::table::PeerV6;
        let v6 = |n: u8| PeerV6 {
            subnet: format!("fd00:10:244:{n}::/64").parse().unwrap(),
            public_ip: format!("2001:db8::{n}").parse().unwrap(),
            vni: 1,
            vtep_mac: MacAddr([6, 0, 0, 0, 0, n]),
        };
        let mut all = peers();
        for p in all.iter_mut().take(3) {
            p.v6 = Some(v6(p.public_ip.octets()[3]));
        }
        let device = PeerRule {
            ours: net("fd00:10:244:1::/64"),
            ..rule(
                BackendKind::Vxlan,
                Tunnel::Device { index: DEVICE + 1 },
                false,
            )
        };
        let plan = device.plan(&all, &on_link);
        let tunnelled: Vec<_> = plan.entries.keys().map(|s| s.to_string()).collect();
        assert_eq!(tunnelled, ["fd00:10:244:2::/64", "fd00:10:244:3::/64"]);
        let e = plan.entries[&net("fd00:10:244:2::/64")];
        assert_eq!(e.device, DEVICE + 1);
        assert_eq!(e.public_ip, "2001:db8::2".parse::<IpAddr>().unwrap());
        assert_eq!(e.mac, MacAddr([6, 0, 0, 0, 0, 2]), "the IPv6 device's MAC");
        let r = plan.routes[0];
        assert_eq!(r.dst, net("fd00:10:244:2::/64"));
        assert_eq!(r.gateway, "fd00:10:244:2::".parse::<IpAddr>().unwrap());
        assert!(r.onlink);
        // Peers 4-6 have no IPv6 side: named, by their IPv4 subnet.
        assert!(plan.skipped[&net("10.244.4.0/24")].contains("no IPv6"));
        assert_eq!(plan.skipped.len(), 3);
        // host-gw in IPv6: a route via the PublicIPv6.
        let hostgw = PeerRule {
            ours: net("fd00:10:244:1::/64"),
            ..rule(BackendKind::Vxlan, Tunnel::None, false)
        };
        let plan = hostgw.plan(&all, &|_| true);
        assert_eq!(
            plan.routes[0].gateway,
            "2001:db8::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(plan.routes[0].oif, UNDERLAY);
    }
}
