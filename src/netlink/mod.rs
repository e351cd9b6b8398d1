//! Link, address and route programming through rtnetlink (never by running `ip`).
//!
//! rtnetlink is asynchronous; weft drives it from a private current-thread tokio runtime
//! on the control thread (start-up, lease changes, the backend's checks every second,
//! shutdown), so the packet path never sees it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::wire::MacAddr;

pub(crate) mod events;

/// The route protocol number marking weft's fail-closed guard routes (`ip route` shows
/// `proto 87`), so weft and `weft cleanup` find their own and nobody else's.
pub(crate) const GUARD_PROTO: u8 = 87;

/// The protocol of the peer routes weft's kernel backends install (host-gw, DirectRouting,
/// kernel vxlan): weft's number, as for the guard, but unicast. A restart after a crash
/// finds the ones a previous weft left by it and adopts or removes them; nobody else's
/// routes are touched.
pub(crate) const PEER_PROTO: u8 = GUARD_PROTO;

/// The guard's metric: far above the TUN's route to the same network (metric 0), which
/// wins while it exists; the guard only answers once that route is gone.
pub(crate) const GUARD_METRIC: u32 = 4_000_000_000;

/// A netlink connection with its runtime.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

/// What an interface the kernel forwards from needs (`IPV4_DEVCONF_*` numbers, from
/// `include/uapi/linux/ip.h`): `forwarding` 1, `accept_local` 1 (frames whose source is
/// this node's address), `rp_filter` 0.
pub(crate) const FORWARD_LOCAL: [(u16, u32); 3] = [(1, 1), (23, 1), (8, 0)];

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Kernel index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Its hardware address, if it has a 6-byte one.
    pub mac: Option<MacAddr>,
    /// Its kind (`vxlan`, `veth`, `tun`, ...), if the kernel says.
    pub kind: Option<String>,
    /// A vxlan device's settings, read back.
    pub vxlan: Option<VxlanInfo>,
}

/// What a vxlan device was made with, as the kernel reports it (`ip -d link show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VxlanInfo {
    /// VNI.
    pub vni: u32,
    /// Destination UDP port.
    pub port: u16,
    /// Local (source) address (`local`, or `local6` for a device over an IPv6 underlay).
    pub local: Option<IpAddr>,
    /// The underlay device's index.
    pub underlay: u32,
}

impl VxlanInfo {
    fn read(attrs: &[InfoVxlan]) -> VxlanInfo {
        let mut v = VxlanInfo::default();
        for a in attrs {
            match *a {
                InfoVxlan::Id(id) => v.vni = id,
                InfoVxlan::Port(p) => v.port = p,
                InfoVxlan::Local(ip) => v.local = Some(IpAddr::V4(ip)),
                InfoVxlan::Local6(ip) => v.local = Some(IpAddr::V6(ip)),
                InfoVxlan::Link(i) => v.underlay = i,
                _ => {}
            }
        }
        v
    }
}

/// A route to a peer's pod subnet, as the kernel backends install it: `dst via gateway dev
/// oif [onlink] proto 87`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    /// The peer's subnet (IPv4 or IPv6).
    pub dst: IpNet,
    /// The next hop, of `dst`'s family: the peer's public IP (host-gw, DirectRouting) or
    /// its subnet's first address (vxlan, with `onlink`).
    pub gateway: IpAddr,
    /// The outgoing interface.
    pub oif: u32,
    /// `onlink`: the gateway is reachable on `oif` without a connected subnet.
    pub onlink: bool,
}

impl std::fmt::Display for PeerRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {} (if {})", self.dst, self.gateway, self.oif)?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

/// A kernel vxlan device, as flanneld's vxlan backend creates `flannel.<VNI>`.
#[derive(Debug, Clone)]
pub struct VxlanSpec {
    /// Its name (`flannel.<VNI>`).
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// Destination (and listening) UDP port.
    pub port: u16,
    /// The underlay interface it sends through.
    pub underlay: u32,
    /// Its local (source) address: an IPv4 one for `flannel.<VNI>`, an IPv6 one for
    /// `flannel-v6.<VNI>` (the family of the underlay it tunnels over).
    pub local: IpAddr,
    /// Its MAC: the VTEP MAC the lease publishes.
    pub mac: MacAddr,
    /// Its MTU.
    pub mtu: u32,
}

/// A route to `dst` out of interface `index`, no gateway.
fn device_route(dst: IpNet, index: u32) -> rtnetlink::packet_route::route::RouteMessage {
    match dst {
        IpNet::V4(d) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix_len())
            .output_interface(index)
            .build(),
        IpNet::V6(d) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix_len())
            .output_interface(index)
            .build(),
    }
}

fn nl_err(what: &str, e: rtnetlink::Error) -> io::Error {
    io::Error::other(format!("netlink: {what}: {e}"))
}

impl Netlink {
    /// Opens a netlink socket in the current network namespace.
    pub fn new() -> io::Result<Netlink> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            Ok::<_, io::Error>(handle)
        })?;
        Ok(Netlink { rt, handle })
    }

    pub(crate) fn links(&self) -> io::Result<Vec<Link>> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut s = self.handle.link().get().execute();
            while let Some(m) = s.try_next().await.map_err(|e| nl_err("list links", e))? {
                let mut l = Link {
                    index: m.header.index,
                    name: String::new(),
                    mtu: 0,
                    up: m.header.flags.contains(LinkFlags::Up),
                    mac: None,
                    kind: None,
                    vxlan: None,
                };
                for a in m.attributes {
                    match a {
                        LinkAttribute::IfName(n) => l.name = n,
                        LinkAttribute::Mtu(v) => l.mtu = v,
                        LinkAttribute::Address(b) => {
                            l.mac = <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr)
                        }
                        LinkAttribute::LinkInfo(infos) => {
                            for i in infos {
                                match i {
                                    LinkInfo::Kind(k) => {
                                        l.kind = Some(match k {
                                            InfoKind::Vxlan => "vxlan".to_string(),
                                            other => other.to_string(),
                                        })
                                    }
                                    LinkInfo::Data(InfoData::Vxlan(v)) => {
                                        l.vxlan = Some(VxlanInfo::read(&v))
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                out.push(l);
            }
            Ok(out)
        })
    }

    /// The interface called `name`.
    pub fn link_by_name(&self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// The interface with index `index`.
    pub fn link_by_index(&self, index: u32) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.index == index))
    }

    /// Every IPv4 address with the index of its interface.
    pub fn ipv4_addrs(&self) -> io::Result<Vec<(u32, Ipv4Addr)>> {
        Ok(self
            .addrs()?
            .into_iter()
            .filter_map(|(i, a, _)| match a {
                IpAddr::V4(v) => Some((i, v)),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// Every global IPv6 address (no link-local, loopback or host-scope one) with the index
    /// of its interface: the addresses a node's IPv6 underlay may use, as flanneld's
    /// `GetIfaceIP6Addr` chooses among them.
    pub fn ipv6_addrs(&self) -> io::Result<Vec<(u32, Ipv6Addr)>> {
        use rtnetlink::packet_route::address::AddressScope;
        Ok(self
            .addrs()?
            .into_iter()
            .filter_map(|(i, a, scope)| match a {
                IpAddr::V6(v) if scope == AddressScope::Universe => Some((i, v)),
                _ => None,
            })
            .collect())
    }

    /// Every address, both families, with its interface and scope.
    fn addrs(
        &self,
    ) -> io::Result<Vec<(u32, IpAddr, rtnetlink::packet_route::address::AddressScope)>> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut s = self.handle.address().get().execute();
            while let Some(m) = s
                .try_next()
                .await
                .map_err(|e| nl_err("list addresses", e))?
            {
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(v) => Some(*v),
                    _ => None,
                });
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(v) => Some(*v),
                    _ => None,
                });
                if let Some(a) = local.or(addr) {
                    out.push((m.header.index, a, m.header.scope));
                }
            }
            Ok(out)
        })
    }

    /// The interface of the IPv4 default route (the lowest-metric one), if any.
    pub fn default_route_link(&self) -> io::Result<Option<u32>> {
        self.default_link_of(RouteMessageBuilder::<Ipv4Addr>::new().build())
    }

    /// The interface of the IPv6 default route (the lowest-metric one), if any.
    pub fn default_route_link_v6(&self) -> io::Result<Option<u32>> {
        self.default_link_of(RouteMessageBuilder::<Ipv6Addr>::new().build())
    }

    fn default_link_of(
        &self,
        req: rtnetlink::packet_route::route::RouteMessage,
    ) -> io::Result<Option<u32>> {
        self.rt.block_on(async {
            let mut best: Option<(u32, u32)> = None;
            let mut s = self.handle.route().get(req).execute();
            while let Some(m) = s.try_next().await.map_err(|e| nl_err("list routes", e))? {
                if m.header.destination_prefix_length != 0
                    || m.header.table != 254
                    || m.header.kind != RouteType::Unicast
                {
                    continue;
                }
                let oif = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                let prio = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Priority(p) => Some(*p),
                        _ => None,
                    })
                    .unwrap_or(0);
                if let Some(i) = oif {
                    if best.is_none_or(|(_, p)| prio < p) {
                        best = Some((i, prio));
                    }
                }
            }
            Ok(best.map(|(i, _)| i))
        })
    }

    /// Sets an interface's MTU and transmit queue length and brings it up.
    pub fn set_mtu_up(&self, index: u32, mtu: u32, txqueuelen: u32) -> io::Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .mtu(mtu)
            .txqueuelen(txqueuelen)
            .up()
            .build();
        self.set_link(msg, "set link mtu/up")
    }

    /// Sets interface `index`'s IPv4 settings (`/proc/sys/net/ipv4/conf/<name>/...`) over
    /// netlink (`IFLA_AF_SPEC` / `AF_INET` / `IFLA_INET_CONF`): CAP_NET_ADMIN is enough, and
    /// it works where `/proc/sys` is mounted read-only (a container). Each pair is an
    /// `IPV4_DEVCONF_*` number and its value.
    pub fn set_ipv4_conf(&self, index: u32, conf: &[(u16, u32)]) -> io::Result<()> {
        use rtnetlink::packet_core::{DefaultNla, NLA_F_NESTED};
        use rtnetlink::packet_route::link::{AfSpecInet, AfSpecUnspec};
        /// `IFLA_INET_CONF`.
        const INET_CONF: u16 = 1;
        let mut values = Vec::with_capacity(conf.len() * 8);
        for &(id, v) in conf {
            // One attribute each: length 8, type id, the value (no padding needed).
            values.extend_from_slice(&8u16.to_ne_bytes());
            values.extend_from_slice(&id.to_ne_bytes());
            values.extend_from_slice(&v.to_ne_bytes());
        }
        let nested = DefaultNla::new(INET_CONF | NLA_F_NESTED, values);
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::Other(nested),
            ])]));
        self.set_link(msg, "set IPv4 interface settings")
    }

    fn set_link(
        &self,
        msg: rtnetlink::packet_route::link::LinkMessage,
        what: &str,
    ) -> io::Result<()> {
        self.rt.block_on(async {
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| nl_err(what, e))
        })
    }

    /// Adds (or replaces) an address with a prefix length. An IPv6 one is added without
    /// duplicate address detection (`nodad`): the devices weft addresses are its own, the
    /// address is the node's own subnet's, and a tentative address could not source the
    /// node's own packets for the second DAD takes.
    pub fn add_addr(&self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        use rtnetlink::packet_route::address::{AddressFlags, AddressHeaderFlags};
        self.rt.block_on(async {
            let mut req = self.handle.address().add(index, addr, prefix).replace();
            if addr.is_ipv6() {
                let m = req.message_mut();
                m.header.flags |= AddressHeaderFlags::Nodad;
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute().await.map_err(|e| nl_err("add address", e))
        })
    }

    /// Adds (or replaces) a route to `dst` out of interface `index`.
    pub fn replace_route(&self, dst: IpNet, index: u32) -> io::Result<()> {
        self.rt.block_on(async {
            let msg = device_route(dst, index);
            self.handle
                .route()
                .add(msg)
                .replace()
                .execute()
                .await
                .map_err(|e| nl_err("add route", e))
        })
    }

    /// Deletes the route to `dst` out of interface `index`, if present.
    pub fn del_route(&self, dst: IpNet, index: u32) -> io::Result<()> {
        self.rt.block_on(async {
            let msg = device_route(dst, index);
            match self.handle.route().del(msg).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
                Err(e) => Err(nl_err("delete route", e)),
            }
        })
    }

    /// Deletes an interface.
    pub fn del_link(&self, index: u32) -> io::Result<()> {
        self.rt.block_on(async {
            match self.handle.link().del(index).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
                Err(e) => Err(nl_err("delete link", e)),
            }
        })
    }

    /// True when a route to exactly `dst` out of interface `index` exists (for checks after
    /// start-up; the guard route to the same network does not count).
    pub fn has_route(&self, dst: IpNet, index: u32) -> io::Result<bool> {
        let routes = match dst {
            IpNet::V4(_) => self.list_v4_routes()?,
            IpNet::V6(_) => self.list_family(RouteMessageBuilder::<Ipv6Addr>::new().build())?,
        };
        Ok(routes.iter().any(|r| r.dst == dst && r.oif == Some(index)))
    }

    /// Every route of the main table, IPv4 and IPv6, as far as weft needs to know it.
    fn list_routes(&self) -> io::Result<Vec<RouteInfo>> {
        let mut out = self.list_v4_routes()?;
        out.extend(self.list_family(RouteMessageBuilder::<Ipv6Addr>::new().build())?);
        Ok(out)
    }

    /// The main table's IPv4 routes only: what the checks of IPv4-only state (the TUN's
    /// route, the guards) read every second, without an IPv6 dump they would discard.
    fn list_v4_routes(&self) -> io::Result<Vec<RouteInfo>> {
        self.list_family(RouteMessageBuilder::<Ipv4Addr>::new().build())
    }

    /// The main table's routes of the family `req` asks for.
    fn list_family(
        &self,
        req: rtnetlink::packet_route::route::RouteMessage,
    ) -> io::Result<Vec<RouteInfo>> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut s = self.handle.route().get(req).execute();
            while let Some(m) = s.try_next().await.map_err(|e| nl_err("list routes", e))? {
                if m.header.table == 254 {
                    out.extend(RouteInfo::read(&m));
                }
            }
            Ok(out)
        })
    }

    /// The message for a peer route.
    fn peer_message(r: &PeerRoute) -> io::Result<rtnetlink::packet_route::route::RouteMessage> {
        let bad = |e| io::Error::other(format!("route {r}: {e}"));
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix_len())
            .map_err(bad)?
            .gateway(r.gateway)
            .map_err(bad)?
            .output_interface(r.oif)
            .protocol(RouteProtocol::Other(PEER_PROTO));
        Ok(if r.onlink { b.onlink() } else { b }.build())
    }

    /// Adds or replaces a peer route (any route to the same destination at metric 0 is
    /// replaced, as flanneld replaces a stale one).
    pub fn replace_peer_route(&self, r: &PeerRoute) -> io::Result<()> {
        self.rt.block_on(async {
            self.handle
                .route()
                .add(Self::peer_message(r)?)
                .replace()
                .execute()
                .await
                .map_err(|e| nl_err(&format!("add route {r}"), e))
        })
    }

    /// Deletes a peer route, if present.
    pub fn del_peer_route(&self, r: &PeerRoute) -> io::Result<()> {
        self.rt.block_on(async {
            match self
                .handle
                .route()
                .del(Self::peer_message(r)?)
                .execute()
                .await
            {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
                Err(e) => Err(nl_err(&format!("delete route {r}"), e)),
            }
        })
    }

    /// The peer routes weft installed (unicast, weft's protocol, the main table), this run's
    /// or a crashed one's.
    pub fn peer_routes(&self) -> io::Result<Vec<PeerRoute>> {
        Ok(self
            .list_routes()?
            .iter()
            .filter_map(RouteInfo::as_peer)
            .collect())
    }

    /// How the main table reaches `ip`: (gateway, interface) of the longest-prefix unicast
    /// route, lowest metric first, weft's own peer routes left out; `None` if no route.
    /// flanneld's `ip.DirectRouting` asks the kernel the same question (`RouteGet`): a route
    /// without a gateway means the address is on a connected subnet.
    pub fn route_to(&self, ip: IpAddr) -> io::Result<Option<(Option<IpAddr>, Option<u32>)>> {
        Ok(self.routing()?.route_to(ip))
    }

    /// The kernel's own answer for `ip` (`RTM_GETROUTE`, flanneld's `RouteGet`): the
    /// (gateway, interface) of the route it would take; `None` if it has none. One lookup,
    /// not a dump: what a change of a few peers asks, whatever the table's size.
    pub fn route_get(&self, ip: IpAddr) -> io::Result<Option<(Option<IpAddr>, Option<u32>)>> {
        let req = match ip {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        self.rt.block_on(async {
            let mut s = self.handle.route().get(req).execute();
            match s.try_next().await {
                Ok(m) => Ok(m
                    .and_then(|m| RouteInfo::read(&m))
                    .map(|r| (r.gateway, r.oif))),
                Err(rtnetlink::Error::NetlinkError(e))
                    if [-libc::ENETUNREACH, -libc::EHOSTUNREACH].contains(&e.raw_code()) =>
                {
                    Ok(None)
                }
                Err(e) => Err(nl_err(&format!("route to {ip}"), e)),
            }
        })
    }

    /// The main table's unicast routes (weft's own peer routes left out), read once, to
    /// answer [`Routing::route_to`] for many addresses without a dump each.
    pub fn routing(&self) -> io::Result<Routing> {
        Ok(Routing(
            self.list_routes()?
                .into_iter()
                .filter(|r| r.unicast && !r.peer)
                .collect(),
        ))
    }

    /// Creates a vxlan device as flanneld does (`ip link add flannel.1 address <mac> mtu <mtu>
    /// type vxlan id 1 local <ip> dev <underlay> dstport 8472 nolearning`); returns its index.
    pub fn add_vxlan(&self, v: &VxlanSpec) -> io::Result<u32> {
        self.rt.block_on(async {
            let b = LinkVxlan::new(&v.name, v.vni).dev(v.underlay);
            let b = match v.local {
                IpAddr::V4(a) => b.local(a),
                IpAddr::V6(a) => b.local6(a),
            };
            let msg = b
                .port(v.port)
                .learning(false)
                .address(v.mac.0.to_vec())
                .mtu(v.mtu)
                .build();
            self.handle
                .link()
                .add(msg)
                .execute()
                .await
                .map_err(|e| nl_err(&format!("create vxlan device {}", v.name), e))
        })?;
        self.link_by_name(&v.name)?
            .map(|l| l.index)
            .ok_or_else(|| io::Error::other(format!("{} vanished after creation", v.name)))
    }

    /// Sets an interface's hardware address.
    pub fn set_mac(&self, index: u32, mac: MacAddr) -> io::Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.0.to_vec())
            .build();
        self.set_link(msg, "set link address")
    }

    /// `ip neigh replace <ip> dev <index> lladdr <mac> nud permanent`.
    pub fn replace_neigh(&self, index: u32, ip: IpAddr, mac: MacAddr) -> io::Result<()> {
        self.rt.block_on(async {
            self.handle
                .neighbours()
                .add(index, ip)
                .link_layer_address(&mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| nl_err(&format!("add neighbour {ip}"), e))
        })
    }

    /// `bridge fdb replace <mac> dev <index> self dst <dst> permanent`.
    pub fn replace_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> io::Result<()> {
        self.rt.block_on(async {
            self.handle
                .neighbours()
                .add_bridge(index, &mac.0)
                .destination(dst)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| nl_err(&format!("add fdb entry {mac} dst {dst}"), e))
        })
    }

    /// Deletes `ip`'s neighbour entry on `index`, if present.
    pub fn del_neigh(&self, index: u32, ip: IpAddr) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        self.del_neighbour(m, &format!("delete neighbour {ip}"))
    }

    /// Deletes the fdb entry `mac dst dst` on `index`, if present.
    pub fn del_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
        self.del_neighbour(m, &format!("delete fdb entry {mac}"))
    }

    fn del_neighbour(&self, m: NeighbourMessage, what: &str) -> io::Result<()> {
        self.rt.block_on(async {
            match self.handle.neighbours().del(m).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
                Err(e) => Err(nl_err(what, e)),
            }
        })
    }

    /// The permanent entries on interface `index`: neighbours (`(ip, mac)`, ARP and IPv6
    /// ND) with `bridge = false`, fdb entries (`(dst, mac)`) with `bridge = true`.
    pub fn neighbours(&self, index: u32, bridge: bool) -> io::Result<Vec<(IpAddr, MacAddr)>> {
        let families: &[AddressFamily] = if bridge {
            &[AddressFamily::Bridge]
        } else {
            &[AddressFamily::Inet, AddressFamily::Inet6]
        };
        let mut out = Vec::new();
        for &family in families {
            out.extend(self.neighbours_of(index, family)?);
        }
        Ok(out)
    }

    fn neighbours_of(
        &self,
        index: u32,
        family: AddressFamily,
    ) -> io::Result<Vec<(IpAddr, MacAddr)>> {
        self.rt.block_on(async {
            let mut s = self
                .handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute();
            let mut out = Vec::new();
            while let Some(m) = s
                .try_next()
                .await
                .map_err(|e| nl_err("list neighbours", e))?
            {
                if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
                    continue;
                }
                if let (Some(ip), Some(mac)) = neighbour_of(&m) {
                    out.push((ip, mac));
                }
            }
            Ok(out)
        })
    }

    /// The guard message for `dst` (either family): unreachable, weft's protocol, the
    /// guard metric.
    fn guard_message(dst: IpNet) -> io::Result<rtnetlink::packet_route::route::RouteMessage> {
        Ok(RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .map_err(|e| io::Error::other(format!("guard route {dst}: {e}")))?
            .kind(RouteType::Unreachable)
            .protocol(RouteProtocol::Other(GUARD_PROTO))
            .priority(GUARD_METRIC)
            .build())
    }

    /// Adds (or keeps) the fail-closed guard for `dst`: `unreachable dst proto 87 metric
    /// 4000000000`. It outlives weft on purpose: while no weft runs, pods' packets for
    /// `dst` get "net unreachable" instead of following the default route unencapsulated.
    pub fn replace_guard(&self, dst: IpNet) -> io::Result<()> {
        let msg = Self::guard_message(dst)?;
        self.rt.block_on(async {
            self.handle
                .route()
                .add(msg)
                .replace()
                .execute()
                .await
                .map_err(|e| nl_err("add guard route", e))
        })
    }

    /// Adds `blackhole dst` to the main table unless a blackhole route to `dst` is there
    /// (flanneld's `--ip-blackhole-route`, as its `AddBlackholeV4Route` and
    /// `AddBlackholeV6Route`); true when added.
    pub fn ensure_blackhole(&self, dst: IpNet) -> io::Result<bool> {
        if self
            .list_routes()?
            .iter()
            .any(|r| r.blackhole && r.dst == dst)
        {
            return Ok(false);
        }
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .map_err(|e| io::Error::other(format!("blackhole route {dst}: {e}")))?
            .kind(RouteType::BlackHole)
            .build();
        self.rt.block_on(async {
            self.handle
                .route()
                .add(msg)
                .execute()
                .await
                .map(|()| true)
                .map_err(|e| nl_err("add blackhole route", e))
        })
    }

    /// The destinations of weft's guard routes, both families.
    pub fn guards(&self) -> io::Result<Vec<IpNet>> {
        Ok(self
            .list_routes()?
            .into_iter()
            .filter(|r| r.guard)
            .map(|r| r.dst)
            .collect())
    }

    /// Deletes the guard for `dst`, if present.
    pub fn del_guard(&self, dst: IpNet) -> io::Result<()> {
        let msg = Self::guard_message(dst)?;
        self.rt.block_on(async {
            match self.handle.route().del(msg).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
                Err(e) => Err(nl_err("delete guard route", e)),
            }
        })
    }
}

/// A neighbour (or FDB) entry's destination and link-layer address, where it has them.
fn neighbour_of(m: &NeighbourMessage) -> (Option<IpAddr>, Option<MacAddr>) {
    let ip = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some((*v).into()),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some((*v).into()),
        // An FDB entry's (AF_BRIDGE) destination: the parser leaves it as bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    });
    let mac = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => {
            <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr)
        }
        _ => None,
    });
    (ip, mac)
}

/// A snapshot of the main table, from [`Netlink::routing`].
pub struct Routing(Vec<RouteInfo>);

impl Routing {
    /// (gateway, interface) of the longest-prefix route to `ip`, lowest metric first.
    pub fn route_to(&self, ip: IpAddr) -> Option<(Option<IpAddr>, Option<u32>)> {
        self.0
            .iter()
            .filter(|r| r.dst.contains(&ip))
            .min_by_key(|r| (std::cmp::Reverse(r.dst.prefix_len()), r.metric))
            .map(|r| (r.gateway, r.oif))
    }
}

/// One route, as [`Netlink::list_routes`] reports it.
struct RouteInfo {
    dst: IpNet,
    oif: Option<u32>,
    gateway: Option<IpAddr>,
    metric: u32,
    unicast: bool,
    guard: bool,
    peer: bool,
    onlink: bool,
    blackhole: bool,
}

impl RouteInfo {
    /// The route as weft's peer route, if it is one.
    fn as_peer(&self) -> Option<PeerRoute> {
        self.peer.then_some(())?;
        Some(PeerRoute {
            dst: self.dst,
            gateway: self.gateway?,
            oif: self.oif?,
            onlink: self.onlink,
        })
    }

    /// The route `m` describes; `None` for one weft cannot read (an unknown family).
    fn read(m: &rtnetlink::packet_route::route::RouteMessage) -> Option<RouteInfo> {
        let h = &m.header;
        let plen = h.destination_prefix_length;
        let ours = h.protocol == RouteProtocol::Other(GUARD_PROTO);
        let mut r = RouteInfo {
            dst: match h.address_family {
                AddressFamily::Inet => IpNet::new(Ipv4Addr::UNSPECIFIED.into(), plen).ok()?,
                AddressFamily::Inet6 => IpNet::new(Ipv6Addr::UNSPECIFIED.into(), plen).ok()?,
                _ => return None,
            },
            oif: None,
            gateway: None,
            metric: 0,
            unicast: h.kind == RouteType::Unicast,
            guard: h.kind == RouteType::Unreachable && ours,
            peer: h.kind == RouteType::Unicast && h.protocol == RouteProtocol::Other(PEER_PROTO),
            onlink: h.flags.contains(RouteFlags::Onlink),
            blackhole: h.kind == RouteType::BlackHole,
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                    r.dst = IpNet::new((*d).into(), plen).ok()?
                }
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => {
                    r.dst = IpNet::new((*d).into(), plen).ok()?
                }
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some((*g).into()),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => r.gateway = Some((*g).into()),
                RouteAttribute::Priority(p) => r.metric = *p,
                _ => {}
            }
        }
        Some(r)
    }
}

/// What weft installed on one interface, undone when dropped: its routes, then the
/// interface itself if weft created it. Start-up steps return one instead of relying on
/// teardown calls on every exit path, so an error anywhere after them, or a clean stop,
/// leaves nothing behind.
pub(crate) struct LinkGuard {
    nl: std::sync::Arc<Netlink>,
    index: u32,
    routes: Vec<IpNet>,
    owns_link: bool,
}

impl LinkGuard {
    /// Guards interface `index`; `owns_link`: delete it on drop (weft created it).
    pub(crate) fn new(nl: std::sync::Arc<Netlink>, index: u32, owns_link: bool) -> LinkGuard {
        LinkGuard {
            nl,
            index,
            routes: Vec::new(),
            owns_link,
        }
    }

    /// The guarded interface's index.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The routes it holds.
    pub(crate) fn routes(&self) -> &[IpNet] {
        &self.routes
    }

    /// Adds (or replaces) a route to `dst` out of this interface, removed on drop.
    pub(crate) fn route(&mut self, dst: IpNet) -> io::Result<()> {
        self.nl.replace_route(dst, self.index)?;
        self.routes.push(dst);
        Ok(())
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if crate::teardown::keeping() {
            return;
        }
        for r in self.routes.drain(..).rev() {
            if let Err(e) = self.nl.del_route(r, self.index) {
                tracing::warn!("cannot remove route {r}: {e}");
            }
        }
        if self.owns_link {
            if let Err(e) = self.nl.del_link(self.index) {
                tracing::warn!("cannot remove interface {}: {e}", self.index);
            }
        }
    }
}
