//! flannel's host-gw: no encapsulation, no device. Each peer's subnet is routed via its
//! public IP out of the underlay (`ip route replace 10.244.2.0/24 via 192.0.2.2 dev eth0`),
//! as flanneld's `RouteNetwork` does, kept in step with the leases and checked within a
//! second of the kernel reporting a change to one (flanneld's route check loop: a deleted
//! route comes back). The lease says
//! `"BackendType":"host-gw"` and has no BackendData; pods get the underlay's MTU.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::plan::{PeerRule, Tunnel};
use super::reconcile::{link_index, Reconciled, Reconciler};
use super::{Backend, Error, Running, Setup};
use crate::lease::table::BackendKind;
use crate::lease::{backend_type, Lease, LeaseAttrs};

/// The host-gw backend.
pub struct HostGw;

impl Backend for HostGw {
    fn name(&self) -> &'static str {
        backend_type::HOST_GW
    }

    fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        underlay_mtu
    }

    fn lease_attrs(
        &self,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
        _ours: Option<&Lease>,
    ) -> LeaseAttrs {
        LeaseAttrs {
            backend_type: backend_type::HOST_GW.into(),
            public_ipv6,
            ..LeaseAttrs::udp(public_ip)
        }
    }

    fn start(&self, s: Setup<'_>) -> Result<Box<dyn Running>, Error> {
        // `<subnet> via <PublicIP> dev <underlay>` per peer for each family we have (the
        // IPv6 one via PublicIPv6), as flanneld.
        let ours: Vec<ipnet::IpNet> = (s.subnet.map(Into::into).into_iter())
            .chain(s.lease.ipv6_subnet.map(Into::into))
            .collect();
        let underlay = link_index(s.nl, s.underlay)?;
        let rules: Vec<PeerRule> = ours
            .into_iter()
            .map(|ours| PeerRule {
                ours,
                kind: BackendKind::HostGw,
                vni: None,
                direct_routing: true,
                tunnel: Tunnel::None,
                underlay,
                underlay_name: s.underlay.to_string(),
            })
            .collect();
        let families = match (s.subnet, s.lease.ipv6_subnet) {
            (Some(_), Some(_)) => "PublicIP and PublicIPv6",
            (None, _) => "PublicIPv6",
            _ => "public IP",
        };
        Ok(Box::new(Reconciled {
            describe: format!(
                "host-gw backend: a route via each peer's {families} on {}",
                s.underlay
            ),
            reconciler: Reconciler::new(s.nl, rules, "host-gw"),
        }))
    }
}
