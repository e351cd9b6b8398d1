//! flannel's host-gw: no encapsulation, no device. Each peer's subnet is routed via its
//! public IP out of the underlay (`ip route replace 10.244.2.0/24 via 192.0.2.2 dev eth0`),
//! as flanneld's `RouteNetwork` does, kept in step with the leases and checked every second
//! (flanneld's route check loop: a deleted route comes back). The lease says
//! `"BackendType":"host-gw"` and has no BackendData; pods get the underlay's MTU.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::routes::{OnceLog, Reach, RouteSet};
use super::{Backend, Health, Running, Setup};
use crate::daemon::Error;
use crate::lease::table::BackendKind;
use crate::lease::{backend_type, Lease, LeaseAttrs, Peer};
use crate::netlink::{Netlink, PeerRoute};

/// The host-gw backend.
pub struct HostGw;

impl Backend for HostGw {
    fn name(&self) -> &'static str {
        backend_type::HOST_GW
    }

    fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        underlay_mtu
    }

    fn lease_attrs(&self, public_ip: Ipv4Addr, _ours: Option<&Lease>) -> LeaseAttrs {
        LeaseAttrs {
            backend_type: backend_type::HOST_GW.into(),
            ..LeaseAttrs::udp(public_ip)
        }
    }

    fn start(&self, s: Setup<'_>) -> Result<Box<dyn Running>, Error> {
        let index = underlay_index(s.nl, s.underlay)?;
        Ok(Box::new(HostGwRoutes {
            nl: s.nl.clone(),
            underlay: index,
            underlay_name: s.underlay.to_string(),
            ours: s.lease.subnet,
            routes: RouteSet::new(s.nl.clone()),
            skipped: OnceLog::default(),
        }))
    }
}

/// The underlay's interface index.
pub(crate) fn underlay_index(nl: &Netlink, name: &str) -> Result<u32, Error> {
    let configure = |source| Error::Configure {
        name: name.to_string(),
        source,
    };
    Ok(nl
        .link_by_name(name)
        .map_err(configure)?
        .ok_or_else(|| configure(std::io::Error::other("the underlay interface is gone")))?
        .index)
}

/// host-gw forwarding: the route set.
struct HostGwRoutes {
    nl: Arc<Netlink>,
    underlay: u32,
    underlay_name: String,
    ours: Ipv4Net,
    routes: RouteSet,
    skipped: OnceLog,
}

impl Running for HostGwRoutes {
    fn describe(&self) -> String {
        format!(
            "host-gw backend: a route via each peer's public IP on {}",
            self.underlay_name
        )
    }

    fn peers_changed(&mut self, peers: &[Peer]) {
        let mut want = Vec::new();
        let mut skipped = BTreeMap::new();
        let reach = Reach::read(&self.nl);
        for p in peers.iter().filter(|p| p.subnet != self.ours) {
            if p.backend != BackendKind::HostGw {
                // As flanneld's RouteNetwork: "Ignoring non-host-gw subnet".
                skipped.insert(
                    p.subnet,
                    format!(
                        "ignoring {} at {}: its node is not host-gw ({:?})",
                        p.subnet, p.public_ip, p.backend
                    ),
                );
            } else if !reach.direct(p.public_ip, self.underlay) {
                skipped.insert(
                    p.subnet,
                    format!(
                        "no route to {} via {}: that node is not on {}'s layer-2 network, which host-gw needs (use vxlan, or vxlan with DirectRouting)",
                        p.subnet, p.public_ip, self.underlay_name
                    ),
                );
            } else {
                want.push(PeerRoute {
                    dst: p.subnet,
                    gateway: p.public_ip,
                    oif: self.underlay,
                    onlink: false,
                });
            }
        }
        self.skipped.note(skipped);
        match self.routes.set(want) {
            Ok(changes) => {
                for c in changes {
                    tracing::info!("host-gw: {c}");
                }
            }
            Err(e) => tracing::warn!("host-gw: cannot program the peer routes (retrying): {e}"),
        }
    }

    fn check(&mut self) -> Health {
        self.routes.check("host-gw")
    }
}
