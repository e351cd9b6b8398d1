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

use super::plan::{LinkPlan, PeerRule, Tunnel};
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

/// Makes and programs `flannel.<VNI>` for a vxlan backend config, and starts keeping it.
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
    let mac = s
        .lease
        .attrs
        .vxlan_data()
        .map_err(|e| Error::OwnLease {
            key: s.lease.key(),
            detail: e.to_string(),
        })?
        .vtep_mac;
    let spec = VxlanSpec {
        name: name.clone(),
        vni,
        port,
        underlay,
        local: s.local_ip,
        mac,
        mtu: s.pod_mtu,
    };
    let index = create(s.nl, &spec)?;
    let rule = PeerRule {
        ours: s.lease.subnet,
        kind: BackendKind::Vxlan,
        vni: Some(vni),
        direct_routing,
        tunnel: Tunnel::Device { index },
        underlay,
        underlay_name: s.underlay.to_string(),
    };
    let mut reconciler = Reconciler::new(s.nl, rule, &name);
    let link = LinkPlan {
        name: name.clone(),
        mtu: s.pod_mtu,
        txqueuelen: TXQUEUELEN,
        address: s.lease.subnet.network(),
        mac: Some(mac),
        routes: Vec::new(),
    };
    // From here on, dropping the reconciler deletes the device.
    reconciler.adopt_device(index, link)?;
    let routing = if direct_routing {
        ", DirectRouting"
    } else {
        ""
    };
    let describe = format!(
        "vxlan backend in the kernel: {name} (VNI {vni}, MTU {}, on {}{routing})",
        s.pod_mtu, s.underlay
    );
    Ok(Box::new(Reconciled {
        describe,
        reconciler,
    }))
}
