//! The userspace dataplane behind `vxlan` and `udp`: a TUN device holding a route for the
//! whole cluster network, and workers that encapsulate in userspace (see
//! [`crate::dataplane`]). This file is also the one place that maps a [`BackendConfig`]
//! to the wire [`Format`] and to the lease attributes a node publishes.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::plan::{LinkPlan, PeerRule, Tunnel};
use super::reconcile::{link_index, Reconciler};
use super::senders::Senders;
use super::{Backend, DataplaneSettings, Error, Health, Running, Setup};
use crate::config::BackendConfig;
use crate::dataplane::inject::{self, Injector};
use crate::dataplane::{open_tun, Dataplane, Descriptors, Offloads, TunQueue};
use crate::encap::{Format, Node, NodeV6, LINUX_SRC_PORTS, VXLAN6_OVERHEAD, VXLAN_OVERHEAD};
use crate::lease::table::BackendKind;
use crate::lease::{Lease, LeaseAttrs, Peer, PeerChanges, VxlanBackendData};
use crate::wire::udp::ChecksumMode;
use crate::wire::MacAddr;

/// The TUN's transmit queue: the default 500 overflows (and TCP retransmits) when the
/// kernel outpaces a worker for a moment; measured with iperf3, 5000 removes those drops.
pub const TUN_TXQUEUELEN: u32 = 5000;

/// The lease attributes for `backend`: vxlan keeps the VTEP MAC of `ours` (our existing
/// lease) or uses `new_mac`; udp is flanneld's (the public IP alone) plus the mark saying
/// this node takes super-datagrams ([`crate::lease::SUPER_DATAGRAMS`]). An IPv6-only
/// node (public IP `0.0.0.0`) publishes no IPv4 `BackendData`, as flanneld's vxlan.
pub fn lease_attrs(
    backend: &BackendConfig,
    (public_ip, public_ipv6): (Ipv4Addr, Option<Ipv6Addr>),
    ours: Option<&Lease>,
    [new_mac, new_mac_v6]: [MacAddr; 2],
) -> LeaseAttrs {
    match *backend {
        BackendConfig::Vxlan { vni, .. } => {
            let vtep_mac = ours
                .and_then(|l| l.attrs.vxlan_data().ok())
                .map_or(new_mac, |d| d.vtep_mac);
            let mut attrs = LeaseAttrs::vxlan(public_ip, VxlanBackendData { vni, vtep_mac });
            if let Some(v6) = public_ipv6 {
                // flanneld's IPv6 device has its own MAC, published in BackendV6Data.
                let vtep_mac = ours
                    .and_then(|l| l.attrs.vxlan_v6_data().ok())
                    .map_or(new_mac_v6, |d| d.vtep_mac);
                attrs.public_ipv6 = Some(v6);
                attrs.backend_v6_data =
                    serde_json::to_value(VxlanBackendData { vni, vtep_mac }).unwrap_or_default();
                if public_ip.is_unspecified() {
                    attrs.backend_data = serde_json::Value::Null;
                }
            }
            attrs
        }
        BackendConfig::Udp { .. } => LeaseAttrs::weft_udp(public_ip),
        BackendConfig::HostGw => super::hostgw::HostGw.lease_attrs(public_ip, public_ipv6, ours),
        // Never asked: `for_config` gives wireguard no encapsulation backend.
        BackendConfig::Wireguard(_) => LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type: crate::lease::backend_type::WIREGUARD.into(),
            backend_data: serde_json::Value::Null,
            backend_v6_data: serde_json::Value::Null,
        },
    }
}

/// The wire format for `backend`, with the VTEP MAC our `lease` publishes. Source ports
/// span Linux's range; the dataplane narrows them to the sockets it binds.
pub fn format(backend: &BackendConfig, lease: &Lease) -> Result<Format, Error> {
    Ok(match *backend {
        BackendConfig::Vxlan { vni, port, .. } => Format::Vxlan {
            vni,
            port,
            // An IPv6-only lease has no IPv4 data; its IPv6 MAC stands in (no IPv4 frame
            // is ever built with it).
            mac: match lease.subnet {
                Some(_) => lease.attrs.vxlan_data(),
                None => lease.attrs.vxlan_v6_data(),
            }
            .map_err(|e| Error::OwnLease {
                key: lease.key(),
                detail: e.to_string(),
            })?
            .vtep_mac,
            src_ports: LINUX_SRC_PORTS,
        },
        BackendConfig::Udp { port } => Format::Udp { port },
        BackendConfig::HostGw => {
            return Err(Error::Unsupported(
                "host-gw has no userspace dataplane: it forwards by kernel routes".into(),
            ))
        }
        BackendConfig::Wireguard(_) => {
            return Err(Error::Unsupported(
                "wireguard has no encapsulation format: it encrypts".into(),
            ))
        }
    })
}

/// Opens the TUN, programs it and starts the workers for a vxlan or udp backend config.
pub(crate) fn start(cfg: &BackendConfig, s: Setup<'_>) -> Result<Box<dyn Running>, Error> {
    let d = &s.dataplane;
    let mut offloads = d.offloads;
    let v6 = node_v6(cfg, &s)?;
    let io = descriptors(
        &s,
        format(cfg, s.lease)?.port(),
        v6.is_some(),
        &mut offloads,
    )?;
    let index = link_index(s.nl, &d.tun_name)?;
    tun_ipv6(&d.tun_name, v6.is_some());
    let rules = peer_rules(cfg, &s)?;
    let direct_routing = rules.iter().any(|r| r.direct_routing);
    let mut reconciler = Reconciler::new(s.nl, rules, "DirectRouting");
    // One route for the whole cluster network (of each family), as flannel's udp backend
    // has. From here on, dropping the reconciler removes the routes and the device.
    reconciler.adopt_device(index, link_plan(&s, v6.as_ref())?)?;
    if let Some(v6) = v6.as_ref().filter(|_| s.subnet.is_some()) {
        add_v6_address(&s, index, v6)?;
    }
    let injectors = tunnel_gso(&s, &mut offloads);
    let ipv6_gate = v6
        .is_some()
        .then(|| inject::Ipv6Gate::new(&inject::tap_name(&d.tun_name), &injectors))
        .flatten();
    if let Some(g) = &ipv6_gate {
        g.refresh();
    }
    let node = Node {
        public_ip: s.public_ip,
        subnet: s.subnet,
        mtu: s.pod_mtu as usize,
        format: format(cfg, s.lease)?,
        // The UDP socket sends only the payload; the kernel writes the outer headers.
        udp_checksum: ChecksumMode::Zero,
        hash_seed: rand::random(),
        v6,
    };
    let (local, table, seed) = (s.local_ip, s.table.clone(), rand::random());
    let dp = Dataplane::start(
        node,
        local,
        s.v6.map(|(local6, _)| local6),
        io,
        injectors,
        table,
        seed,
        offloads,
        d.tuning,
        &d.counters,
    )
    .map_err(Error::Dataplane)?;
    let routing = if direct_routing {
        "; DirectRouting"
    } else {
        ""
    };
    Ok(Box::new(Forwarding {
        describe: format!(
            "{} backend via {} (MTU {}, {} worker(s), offloads {offloads:?}{routing})",
            cfg.type_name(),
            d.tun_name,
            s.pod_mtu,
            d.workers,
        ),
        forwarded_from: if offloads.tunnel_gso {
            vec![inject::tap_name(&d.tun_name)]
        } else {
            Vec::new()
        },
        tun_name: d.tun_name.clone(),
        dp,
        reconciler,
        senders: Senders::default(),
        ipv6_gate,
    }))
}

/// The IPv6 subnet's first address on the TUN, as flanneld gives flannel-v6.<VNI>: the
/// source of what the node itself sends to other nodes' IPv6 pods.
fn add_v6_address(s: &Setup<'_>, index: u32, v6: &NodeV6) -> Result<(), Error> {
    let addr = v6.subnet.network().into();
    s.nl.add_addr(index, addr, 128)
        .map_err(|source| Error::Configure {
            name: s.dataplane.tun_name.clone(),
            source,
        })
}

/// IPv6 on the TUN only in a dual-stack cluster, and then without router solicitations or
/// advertisements (nothing answers them; they would only be counted as drops). Best
/// effort: the kernel may have IPv6 off altogether.
fn tun_ipv6(tun: &str, on: bool) {
    let conf = |key: &str, value: &str| {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{tun}/{key}"), value);
    };
    if on {
        // No link-local address: the kernel's own MLD and router solicitations from it
        // would only be counted as drops (the injection TAP is set up the same way).
        conf("addr_gen_mode", "1");
        conf("accept_ra", "0");
        conf("router_solicitations", "0");
        conf("disable_ipv6", "0");
    } else {
        conf("disable_ipv6", "1");
    }
}

/// The TUN as the plan wants it: the pod MTU, our subnet's first address (the IPv6
/// subnet's on an IPv6-only node), a route for the cluster network of each family.
fn link_plan(s: &Setup<'_>, v6: Option<&NodeV6>) -> Result<LinkPlan, Error> {
    let mut routes: Vec<IpNet> = s.network.map(IpNet::V4).into_iter().collect();
    if let (Some((_, network6)), Some(_)) = (s.v6, v6) {
        routes.push(IpNet::V6(network6));
    }
    let address = match (s.subnet, v6) {
        (Some(sn), _) => sn.network().into(),
        (None, Some(v6)) => v6.subnet.network().into(),
        (None, None) => {
            return Err(Error::Unsupported(format!(
                "our lease {} has neither an IPv4 subnet nor an IPv6 side to forward",
                s.lease.key()
            )))
        }
    };
    Ok(LinkPlan {
        name: s.dataplane.tun_name.clone(),
        mtu: s.pod_mtu,
        txqueuelen: TUN_TXQUEUELEN,
        addresses: vec![address],
        mac: None,
        routes,
    })
}

/// Our IPv6 side in a dual-stack cluster (vxlan only: a dual-stack udp config is refused
/// before this): the lease's IPv6 subnet, `PublicIPv6` and `BackendV6Data` MAC, and the
/// MTU flannel-v6.<VNI> would have, the underlay's less 70.
fn node_v6(cfg: &BackendConfig, s: &Setup<'_>) -> Result<Option<NodeV6>, Error> {
    let (Some(_), Some(subnet), Some(public_ip), BackendConfig::Vxlan { .. }) =
        (s.v6, s.lease.ipv6_subnet, s.lease.attrs.public_ipv6, cfg)
    else {
        return Ok(None);
    };
    let own = |detail: String| Error::OwnLease {
        key: s.lease.key(),
        detail,
    };
    let mac = s
        .lease
        .attrs
        .vxlan_v6_data()
        .map_err(|e| own(e.to_string()))?
        .vtep_mac;
    let underlay_mtu =
        s.nl.link_by_name(s.underlay)
            .ok()
            .flatten()
            .map_or(s.pod_mtu as usize + VXLAN_OVERHEAD, |l| l.mtu as usize);
    let mtu = (s.pod_mtu as usize).min(underlay_mtu.saturating_sub(VXLAN6_OVERHEAD));
    if mtu < crate::wire::ipv6::MIN_MTU {
        return Err(Error::Unsupported(format!(
            "EnableIPv6: {} has MTU {underlay_mtu}, which leaves {mtu} bytes for IPv6 pods over the IPv6 underlay (VXLAN over IPv6 costs {VXLAN6_OVERHEAD}), below IPv6's minimum of {}; raise its MTU to at least {} or set EnableIPv6 to false",
            s.underlay,
            crate::wire::ipv6::MIN_MTU,
            crate::wire::ipv6::MIN_MTU + VXLAN6_OVERHEAD
        )));
    }
    Ok(Some(NodeV6 {
        public_ip,
        subnet,
        mtu,
        mac,
    }))
}

/// DirectRouting's routes beside the TUN, for each family. Always a rule, so always a
/// reconciler for the peer routes: without DirectRouting it wants none, and its first
/// update removes those an earlier run (host-gw, DirectRouting) left, which would shadow
/// the TUN's route.
fn peer_rules(cfg: &BackendConfig, s: &Setup<'_>) -> Result<Vec<PeerRule>, Error> {
    let v6 = s.v6.and(s.lease.ipv6_subnet);
    let ours = (s.subnet.map(IpNet::V4).into_iter()).chain(v6.map(IpNet::V6));
    let underlay = link_index(s.nl, s.underlay)?;
    let direct_routing = matches!(
        cfg,
        BackendConfig::Vxlan {
            direct_routing: true,
            ..
        }
    );
    Ok(ours
        .map(|ours| PeerRule {
            ours,
            kind: BackendKind::Vxlan,
            vni: None,
            direct_routing,
            tunnel: Tunnel::Tun,
            underlay,
            underlay_name: s.underlay.to_string(),
        })
        .collect())
}

/// The predecessor's queues and sockets ([`adopt`]), else our own TUN queues (and the
/// sockets are bound with the workers); `offloads.tun` as the queues have it.
fn descriptors(
    s: &Setup<'_>,
    port: u16,
    v6: bool,
    offloads: &mut Offloads,
) -> Result<Descriptors, Error> {
    let d = &s.dataplane;
    if let Some((io, tun_offload)) = adopt(s, port, v6) {
        offloads.tun = tun_offload;
        return Ok(io);
    }
    Ok(Descriptors {
        tun_name: d.tun_name.clone(),
        tun: open_queues(d, offloads)?,
        udp: Vec::new(),
        udp6: Vec::new(),
        handoff: d.handoff.clone(),
    })
}

/// The TUN queues and sockets a predecessor passed ([`crate::handover`]), where they are
/// what this start would open: queues of our TUN and sockets bound to our addresses and
/// `port`, one of each per worker (and per family, `v6`), as the kernel describes them;
/// with whether the queues carry the virtio-net header. Otherwise `None`: they are closed (the predecessor still holds
/// them) and this start opens its own.
fn adopt(s: &Setup<'_>, port: u16, v6: bool) -> Option<(Descriptors, bool)> {
    let d = &s.dataplane;
    let shared = d.handoff.take_inherited()?;
    let h = shared.header.clone();
    if h.tun == 0 {
        return None;
    }
    let bound = |socks: &[std::net::UdpSocket], ip: Option<std::net::IpAddr>| {
        let want = ip.map(|ip| std::net::SocketAddr::new(ip, port));
        socks
            .iter()
            .all(|s| s.local_addr().ok() == want && s.set_nonblocking(true).is_ok())
    };
    let why = match shared.split() {
        _ if h.tun_name != d.tun_name => format!("their TUN is {}", h.tun_name),
        _ if h.tun != d.workers
            || h.udp != d.workers
            || h.udp6 != if v6 { d.workers } else { 0 } =>
        {
            format!(
                "{} queue(s), {} and {} socket(s) for {} worker(s)",
                h.tun, h.udp, h.udp6, d.workers
            )
        }
        None => "the descriptors are not what the header says".into(),
        Some([tun, udp, udp6]) => {
            let tun: Vec<TunQueue> = tun.into_iter().map(TunQueue::from).collect();
            let udp: Vec<std::net::UdpSocket> = udp.into_iter().map(Into::into).collect();
            let udp6: Vec<std::net::UdpSocket> = udp6.into_iter().map(Into::into).collect();
            let local6 = s.v6.map(|(ip, _)| ip.into());
            match queues_of(&tun, &d.tun_name) {
                Err(e) => e,
                Ok(_) if !(bound(&udp, Some(s.local_ip.into())) && bound(&udp6, local6)) => {
                    "their sockets are bound elsewhere".into()
                }
                Ok(vnet_hdr) => {
                    tracing::info!(
                        queues = h.tun,
                        "forwarding on the predecessor's TUN queues and sockets"
                    );
                    d.handoff.mark_adopted();
                    let io = Descriptors {
                        tun_name: h.tun_name,
                        tun,
                        udp,
                        udp6,
                        handoff: d.handoff.clone(),
                    };
                    return Some((io, vnet_hdr));
                }
            }
        }
    };
    tracing::info!(%why, "not using the predecessor's queues and sockets: opening our own beside them");
    None
}

/// Whether `queues` are non-blocking queues of the multi-queue TUN `name`, all with the
/// virtio-net header or all without (which, returned), as the kernel says.
fn queues_of(queues: &[TunQueue], name: &str) -> Result<bool, String> {
    let mut vnet = None;
    for q in queues {
        let (dev, has) = q.device().map_err(|e| e.to_string())?;
        if dev != name {
            return Err(format!("a queue of {dev}, not of {name}"));
        }
        if *vnet.get_or_insert(has) != has {
            return Err("queues with and without the virtio-net header".into());
        }
    }
    Ok(vnet.unwrap_or(false))
}

/// The TUN's queues, one per worker, with offloads if the kernel has them (a kernel
/// without gets a working, slower dataplane).
fn open_queues(d: &DataplaneSettings, offloads: &mut Offloads) -> Result<Vec<TunQueue>, Error> {
    match open_tun(&d.tun_name, d.workers, offloads.tun) {
        Err(e) if offloads.tun => {
            tracing::warn!(error = %e, "TUN offloads unavailable; continuing without them");
            offloads.tun = false;
            open_tun(&d.tun_name, d.workers, false)
        }
        r => r,
    }
    .map_err(|source| Error::Tun {
        name: d.tun_name.clone(),
        source,
    })
}

/// Tunnel GSO's injection TAP, where it can be had: both formats can use it (for flannel's
/// udp one the "tunnel header" is just the outer UDP header, and the kernel's UDP-tunnel
/// GSO replicates it all the same). Turned off in `offloads` where it cannot. Which peers
/// get super-packets whole is decided per packet ([`crate::lease::Peer::super_datagrams`]):
/// flanneld's udp proxy gets them split.
fn tunnel_gso(s: &Setup<'_>, offloads: &mut Offloads) -> Vec<Injector> {
    // Behind NAT (--public-ip or --public-ipv6 is not the interface's address) a NAT router rewrites the
    // outer headers of every frame, and the super-frames tunnel GSO hands the kernel do
    // not survive it: measured, a NATed node's pod TCP out fell to 0.00 Gbit/s with it
    // and ran at 5 Gbit/s without (iface_by_ip_and_a_public_ip_behind_nat_...).
    let nat6 =
        (s.v6.zip(s.lease.attrs.public_ipv6)).is_some_and(|((local, _), public)| local != public);
    if offloads.tunnel_gso && (s.public_ip != s.local_ip || nat6) {
        tracing::info!(
            public_ip = %s.public_ip,
            local_ip = %s.local_ip,
            "behind NAT: tunnel GSO off, TSO super-packets are split in userspace"
        );
        offloads.tunnel_gso = false;
    }
    if !(offloads.tunnel_gso && offloads.tun) {
        offloads.tunnel_gso = false;
        return Vec::new();
    }
    let d = &s.dataplane;
    open_injectors(s, &d.tun_name, d.workers).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "tunnel GSO unavailable; TSO super-packets are split in userspace");
        offloads.tunnel_gso = false;
        Vec::new()
    })
}

/// Opens the injection TAP ([`inject`]) with one queue per worker and brings it up.
fn open_injectors(s: &Setup<'_>, tun: &str, workers: usize) -> std::io::Result<Vec<Injector>> {
    let name = inject::tap_name(tun);
    let index = |name: &str| {
        Ok::<_, std::io::Error>(
            s.nl.link_by_name(name)?
                .ok_or_else(|| std::io::Error::other(format!("{name} vanished after creation")))?
                .index,
        )
    };
    let forward = |name: &str| {
        s.nl.set_ipv4_conf(index(name)?, &crate::netlink::FORWARD_LOCAL)
    };
    let taps = inject::open(&name, workers, &forward)?;
    s.nl.set_mtu_up(index(&name)?, 1500, 1000)?;
    Ok(taps)
}

/// The running userspace dataplane. Fields drop in order: the workers stop and are
/// joined, then the reconciler removes the direct routes, the TUN's route and the TUN.
struct Forwarding {
    describe: String,
    tun_name: String,
    forwarded_from: Vec<String>,
    dp: Dataplane,
    reconciler: Reconciler,
    /// The peers' public addresses, for the sender filter.
    senders: Senders,
    /// Whether IPv6 super-packets may use tunnel GSO, kept with the node's IPv6 forwarding.
    ipv6_gate: Option<inject::Ipv6Gate>,
}

impl Running for Forwarding {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn forwarded_from(&self) -> Vec<String> {
        self.forwarded_from.clone()
    }

    fn peers_changed(&mut self, peers: &[Peer]) {
        self.reconciler.update(peers);
        self.senders.reset(peers);
        self.dp.set_senders(&self.senders.v4(), &self.senders.v6());
    }

    fn peers_patched(&mut self, changes: &PeerChanges, _peers: &dyn Fn() -> Vec<Peer>) {
        self.reconciler.patch(changes);
        if self.senders.patch(changes) {
            self.dp.set_senders(&self.senders.v4(), &self.senders.v6());
        }
    }

    fn yield_to_successor(&mut self) {
        self.dp.yield_to_successor();
    }

    fn check(&mut self) -> Health {
        if let Some(g) = &self.ipv6_gate {
            g.refresh();
        }
        if self.dp.tun_gone() {
            return Health::Broken(format!("TUN {} is gone (its reads fail)", self.tun_name));
        }
        let dead = self.dp.dead_workers();
        if !dead.is_empty() {
            return Health::Broken(format!("worker thread(s) {dead:?} died"));
        }
        self.reconciler.check()
    }
}
