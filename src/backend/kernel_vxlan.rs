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
//! to it as to any `flannel.1`. A stop leaves the device, its entries and routes forwarding
//! (as flanneld v0.27+ leaves them; [`crate::teardown`]); the next start, after a stop, a
//! crash or in a hand-over, adopts a device made as it would make it (else replaces it),
//! and adopts or removes the routes by weft's route protocol. `weft cleanup` removes them.

use ipnet::IpNet;

use super::plan::{subnet_address, LinkPlan, PeerRule, Tunnel};
use super::reconcile::{link_index, Reconciled, Reconciler};
use super::{Error, Running, Setup};
use crate::config::BackendConfig;
use crate::lease::table::BackendKind;
use crate::netlink::{Link, Netlink, VxlanInfo, VxlanSpec};

/// The vxlan device's transmit queue (what `ip link add ... type vxlan` gives it).
const TXQUEUELEN: u32 = 1000;

/// flanneld's name for the vxlan device of `vni`.
pub fn device_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// Creates the device `spec` describes, in place of one of its name an earlier run left
/// (a crashed weft's, or flanneld's, which may have another VNI, port, address or MAC).
fn create(nl: &Netlink, spec: &VxlanSpec) -> Result<u32, Error> {
    let name = &spec.name;
    let configure = |source| Error::Configure {
        name: name.clone(),
        source,
    };
    if let Some(old) = nl.link_by_name(name).map_err(configure)? {
        if made_as(&old, spec) {
            // A stop leaves the device forwarding; the next start takes it as it is, so
            // pods on this node lose nothing across a restart or a hand-over.
            tracing::info!("adopting the existing {name} (left by an earlier run)");
            return Ok(old.index);
        }
        tracing::info!(
            "replacing the existing {name} (left by an earlier run, made otherwise: {:?})",
            old.vxlan
        );
        nl.del_link(old.index).map_err(configure)?;
    }
    let index = nl.add_vxlan(spec).map_err(configure)?;
    // flanneld sets accept_ra=0; best effort (absent where IPv6 is off).
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"), "0");
    Ok(index)
}

/// Whether `link` is a vxlan device made as `spec` says (VNI, port, local address,
/// underlay); its MTU, address, MAC and state are set again by the reconciler.
fn made_as(link: &Link, spec: &VxlanSpec) -> bool {
    link.kind.as_deref() == Some("vxlan")
        && link.vxlan
            == Some(VxlanInfo {
                vni: spec.vni,
                port: spec.port,
                local: Some(spec.local),
                underlay: spec.underlay,
            })
}

/// flanneld's name for the IPv6 vxlan device of `vni`.
pub fn device_name_v6(vni: u32) -> String {
    format!("flannel-v6.{vni}")
}

/// One family's device: what it is made as, how peers are reached through it, and how
/// it is kept.
struct Family {
    spec: VxlanSpec,
    ours: IpNet,
}

impl Family {
    /// Makes (or adopts) the device, adding its rule (`rule` for this family and device)
    /// and its link plan.
    fn start(
        self,
        nl: &Netlink,
        rule: &PeerRule,
        rules: &mut Vec<PeerRule>,
        links: &mut Vec<(u32, LinkPlan)>,
    ) -> Result<(), Error> {
        let index = create(nl, &self.spec)?;
        rules.push(PeerRule {
            ours: self.ours,
            tunnel: Tunnel::Device { index },
            ..rule.clone()
        });
        links.push((
            index,
            LinkPlan {
                name: self.spec.name,
                mtu: self.spec.mtu,
                txqueuelen: TXQUEUELEN,
                addresses: vec![subnet_address(self.ours)],
                mac: Some(self.spec.mac),
                routes: Vec::new(),
            },
        ));
        Ok(())
    }
}

/// The IPv4 device's family, unless the network is IPv6-only: `flannel.<VNI>` with the
/// IPv4 underlay address as its `local`, the MAC of the lease's `BackendData`, and the
/// subnet's first address.
fn v4_family(s: &Setup<'_>, spec: &VxlanSpec) -> Result<Option<Family>, Error> {
    let Some(subnet) = s.subnet else {
        return Ok(None);
    };
    let mac = s
        .lease
        .attrs
        .vxlan_data()
        .map_err(|e| Error::OwnLease {
            key: s.lease.key(),
            detail: e.to_string(),
        })?
        .vtep_mac;
    Ok(Some(Family {
        spec: VxlanSpec {
            mac,
            ..spec.clone()
        },
        ours: subnet.into(),
    }))
}

/// What VXLAN over IPv6 costs: outer IPv6 (40), UDP (8), VXLAN (8) and inner Ethernet
/// (14), 20 bytes more than over IPv4.
const V6_OVERHEAD: u32 = 70;

/// The IPv6 device's family, in a dual-stack or IPv6-only cluster: `flannel-v6.<VNI>` with the IPv6
/// underlay address as its `local`, the MAC of the lease's `BackendV6Data`, and the IPv6
/// subnet's first address. flanneld asks for the IPv4 device's MTU; the kernel clamps an
/// IPv6 vxlan device to its underlay's MTU − 70 at creation (and refuses more later), so
/// that is its MTU here too: a full-size IPv6 pod packet gets Packet Too Big from it, as
/// from flanneld's.
fn v6_family(s: &Setup<'_>, v4: &VxlanSpec) -> Result<Option<Family>, Error> {
    let (Some((local, _)), Some(subnet)) = (s.v6, s.lease.ipv6_subnet) else {
        return Ok(None);
    };
    let mac = s
        .lease
        .attrs
        .vxlan_v6_data()
        .map_err(|e| Error::OwnLease {
            key: s.lease.key(),
            detail: e.to_string(),
        })?
        .vtep_mac;
    let name = device_name_v6(v4.vni);
    let configure = |source| Error::Configure {
        name: name.clone(),
        source,
    };
    let underlay_mtu =
        s.nl.link_by_index(v4.underlay)
            .map_err(configure)?
            .map_or(v4.mtu + V6_OVERHEAD, |l| l.mtu);
    Ok(Some(Family {
        spec: VxlanSpec {
            local: local.into(),
            mac,
            mtu: v4.mtu.min(underlay_mtu.saturating_sub(V6_OVERHEAD)),
            name,
            ..v4.clone()
        },
        ours: subnet.into(),
    }))
}

/// Makes and programs `flannel.<VNI>` (and `flannel-v6.<VNI>` in a dual-stack cluster) for
/// a vxlan backend config, and starts keeping them.
pub(crate) fn start(cfg: &BackendConfig, s: Setup<'_>) -> Result<Box<dyn Running>, Error> {
    let BackendConfig::Vxlan {
        vni,
        port,
        direct_routing,
        ..
    } = *cfg
    else {
        return Err(Error::Unsupported(
            "the kernel dataplane exists for vxlan only".into(),
        ));
    };
    let name = device_name(vni);
    let underlay = link_index(s.nl, s.underlay)?;
    let spec = VxlanSpec {
        name: name.clone(),
        vni,
        port,
        underlay,
        local: s.local_ip.into(),
        mac: crate::wire::MacAddr([0; 6]),
        mtu: s.pod_mtu,
    };
    let v4 = v4_family(&s, &spec)?;
    let v6 = v6_family(&s, &spec)?;
    let rule = PeerRule {
        ours: IpNet::V4(Default::default()),
        kind: BackendKind::Vxlan,
        vni: Some(vni),
        direct_routing,
        tunnel: Tunnel::None,
        underlay,
        underlay_name: s.underlay.to_string(),
    };
    let (mut rules, mut links) = (Vec::new(), Vec::new());
    let names: Vec<String> = [&v4, &v6]
        .into_iter()
        .flatten()
        .map(|f| f.spec.name.clone())
        .collect();
    for family in [v4, v6].into_iter().flatten() {
        family.start(s.nl, &rule, &mut rules, &mut links)?;
    }
    // The log label: the first device's name (flannel-v6.<VNI> on an IPv6-only node).
    let label = names.first().cloned().unwrap_or(name);
    let names = names.join(" and ");
    let mtus: Vec<String> = links.iter().map(|(_, l)| l.mtu.to_string()).collect();
    let mut reconciler = Reconciler::new(s.nl, rules, &label);
    for (index, link) in links {
        // From here on, dropping the reconciler deletes the device.
        reconciler.adopt_device(index, link)?;
    }
    let routing = if direct_routing {
        ", DirectRouting"
    } else {
        ""
    };
    let describe = format!(
        "vxlan backend in the kernel: {names} (VNI {vni}, MTU {}, on {}{routing})",
        mtus.join(" and "),
        s.underlay
    );
    Ok(Box::new(Reconciled {
        describe,
        reconciler,
    }))
}
