//! Leases as flanneld stores them, the lock-free lease table the packet path reads, and
//! subnet allocation.

pub mod alloc;
pub mod table;
pub mod wireguard;

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

pub use table::{peer_key, LeaseTable, Peer, PeerChanges, PeerV6, Snapshot};

/// flannel's backend type names.
pub mod backend_type {
    /// The vxlan backend.
    pub const VXLAN: &str = "vxlan";
    /// The udp backend.
    pub const UDP: &str = "udp";
    /// The host-gw backend (no BackendData).
    pub const HOST_GW: &str = "host-gw";
    /// The wireguard backend.
    pub const WIREGUARD: &str = "wireguard";
}

/// The mark a weft udp node puts in its lease's `BackendData`, `{"SuperDatagrams":true}`:
/// "send me TSO super-packets whole" (one UDP datagram of up to 64 KB that the kernel's
/// UDP-tunnel GSO left unsegmented, which a veth or bridge underlay carries as it is).
/// weft's receive path takes those; flannel's udp proxy reads into a buffer of one MTU and
/// would truncate them, and its udp backend ignores a peer's BackendData, so the mark
/// costs it nothing. A udp peer without the mark gets segments.
pub const SUPER_DATAGRAMS: &str = "SuperDatagrams";

/// The value flanneld stores under `<prefix>/subnets/<key>` (`pkg/lease/lease.go`
/// `LeaseAttrs`). Field names and their JSON spelling are flannel's; unknown fields are
/// ignored on read, as Go's `encoding/json` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    /// The node's underlay address.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// The node's IPv6 underlay address; flanneld writes `null` when it has none.
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    /// `vxlan`, `udp`, `host-gw`, ...; omitted when empty.
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    /// Backend-specific data, kept verbatim (for vxlan: [`VxlanBackendData`]).
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub backend_data: serde_json::Value,
    /// Backend data of the IPv6 side, kept verbatim.
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub backend_v6_data: serde_json::Value,
}

/// The vxlan backend's `BackendData` (flannel's `vxlanLeaseAttrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanBackendData {
    /// The VNI the node's VTEP uses.
    #[serde(rename = "VNI")]
    pub vni: u32,
    /// The node's VTEP MAC address.
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: MacAddr,
}

impl LeaseAttrs {
    /// Attributes of a vxlan node.
    pub fn vxlan(public_ip: Ipv4Addr, data: VxlanBackendData) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: backend_type::VXLAN.into(),
            // Serializing two plain fields into a Value cannot fail.
            backend_data: serde_json::to_value(data).unwrap_or_default(),
            backend_v6_data: serde_json::Value::Null,
        }
    }

    /// Attributes of a udp-backend node, as flanneld's udp backend writes them: it acquires
    /// its lease with only the public IP (`pkg/backend/udp/udp_amd64.go`), and BackendType
    /// and BackendData are `omitempty`, so the stored value is exactly
    /// `{"PublicIP":"192.0.2.1","PublicIPv6":null}`. A lease without a BackendType is a udp
    /// peer ([`Peer::from_lease`]); one saying `"udp"` (older weft) is one too.
    pub fn udp(public_ip: Ipv4Addr) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: serde_json::Value::Null,
            backend_v6_data: serde_json::Value::Null,
        }
    }

    /// Attributes of a weft udp-backend node: flanneld's udp lease plus the
    /// [`SUPER_DATAGRAMS`] mark, `{"PublicIP":"192.0.2.1","PublicIPv6":null,
    /// "BackendData":{"SuperDatagrams":true}}` (still no BackendType, as flanneld's).
    pub fn weft_udp(public_ip: Ipv4Addr) -> LeaseAttrs {
        LeaseAttrs {
            backend_data: serde_json::json!({ SUPER_DATAGRAMS: true }),
            ..LeaseAttrs::udp(public_ip)
        }
    }

    /// True when the node takes TSO super-packets whole, as one unsegmented datagram:
    /// every vxlan node (kernel vxlan's receive path segments them, weft's takes them), and
    /// a udp node whose lease carries the [`SUPER_DATAGRAMS`] mark (weft's). flanneld's
    /// udp proxy does not: its lease has no BackendData.
    pub fn takes_super_datagrams(&self) -> bool {
        match self.backend_type.as_str() {
            backend_type::VXLAN => true,
            "" | backend_type::UDP => self.backend_data[SUPER_DATAGRAMS] == true,
            _ => false,
        }
    }

    /// Parses the JSON value of a lease key. A malformed address is named with its field
    /// (serde's own message says only where it is).
    pub fn from_json(s: &str) -> Result<LeaseAttrs, LeaseError> {
        serde_json::from_str(s).map_err(|e| {
            let v: serde_json::Value = serde_json::from_str(s).unwrap_or_default();
            let bad = |field: &str, ok: fn(&str) -> bool| match &v[field] {
                serde_json::Value::String(a) if !ok(a) => Some(format!("{field} {a:?}")),
                _ => None,
            };
            let named = bad("PublicIP", |a| a.parse::<Ipv4Addr>().is_ok())
                .or_else(|| bad("PublicIPv6", |a| a.parse::<Ipv6Addr>().is_ok()));
            LeaseError::Json(match named {
                Some(f) => format!("{f} is not an address of its family ({e})"),
                None => e.to_string(),
            })
        })
    }

    /// The JSON value flanneld would store, e.g.
    /// `{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}`.
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The typed vxlan data, if the backend is vxlan and its data is well formed.
    pub fn vxlan_data(&self) -> Result<VxlanBackendData, LeaseError> {
        serde_json::from_value(self.backend_data.clone())
            .map_err(|e| LeaseError::BackendData(e.to_string()))
    }

    /// The typed vxlan data of the IPv6 device (`BackendV6Data`), if well formed.
    pub fn vxlan_v6_data(&self) -> Result<VxlanBackendData, LeaseError> {
        serde_json::from_value(self.backend_v6_data.clone())
            .map_err(|e| LeaseError::BackendData(format!("BackendV6Data: {e}")))
    }
}

/// One node's lease: its subnet, its attributes, and when it expires (`None` for a
/// reservation, a key without a TTL, which never expires).
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The node's IPv4 pod subnet; `None` in an IPv6-only network (flannel's key
    /// `0.0.0.0-0&fc00::-64`).
    pub subnet: Option<Ipv4Net>,
    /// The IPv6 subnet of a dual-stack key, if any.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// What the node published.
    pub attrs: LeaseAttrs,
    /// Expiry; `None` marks a reservation.
    pub expiration: Option<SystemTime>,
}

impl Lease {
    /// True if the lease has expired at `now` (reservations never do).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        matches!(self.expiration, Some(t) if t <= now)
    }

    /// The store key: `10.244.1.0-24` (or `10.244.1.0-24&fd00::-64` for dual stack).
    pub fn key(&self) -> String {
        subnet_key(self.subnet, self.ipv6_subnet)
    }

    /// True if the two leases hold a common address of either family.
    pub fn overlaps(&self, other: &Lease) -> bool {
        keys_overlap(
            (self.subnet, self.ipv6_subnet),
            (other.subnet, other.ipv6_subnet),
        )
    }
}

/// A subnet key's subnets, one per family it names (at least one), as
/// [`parse_subnet_key`] returns them.
pub type SubnetPair = (Option<Ipv4Net>, Option<Ipv6Net>);

/// True if two subnet keys (as [`parse_subnet_key`] returns them) hold a common address of
/// either family: `10.244.1.0-24` and `10.244.1.0-24&fd00::-64` hold the same IPv4 subnet,
/// and two dual-stack keys may share an IPv6 one, so a store must not take the key name
/// alone for "this subnet is free".
pub fn keys_overlap(a: SubnetPair, b: SubnetPair) -> bool {
    let v4 = match (a.0, b.0) {
        (Some(x), Some(y)) => x.contains(&y.network()) || y.contains(&x.network()),
        _ => false,
    };
    let v6 = match (a.1, b.1) {
        (Some(x), Some(y)) => x.contains(&y.network()) || y.contains(&x.network()),
        _ => false,
    };
    v4 || v6
}

/// Why a lease could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The value is not flannel's lease JSON.
    #[error("lease JSON is invalid: {0}")]
    Json(String),
    /// The key is not `a.b.c.d-len`.
    #[error("lease key {0:?} is not a subnet key like 10.244.1.0-24")]
    Key(String),
    /// BackendData does not fit the backend type.
    #[error("lease BackendData is invalid: {0}")]
    BackendData(String),
    /// A lease no peer can be reached by: no IPv4 subnet, and no IPv6 subnet with a
    /// `PublicIPv6`.
    #[error(
        "lease {0} has no IPv4 subnet and no IPv6 subnet with a PublicIPv6: nothing to route to"
    )]
    NoSide(String),
}

/// flannel's `MakeSubnetKey`: `10.244.1.0-24`, with `&<v6>-<len>` appended for dual stack;
/// an IPv6-only key has flannel's empty IPv4 subnet, `0.0.0.0-0&fc00::-64`.
pub fn subnet_key(v4: Option<Ipv4Net>, v6: Option<Ipv6Net>) -> String {
    let v4 = v4.unwrap_or_default();
    match v6 {
        None => format!("{}-{}", v4.addr(), v4.prefix_len()),
        Some(v6) => format!(
            "{}-{}&{}-{}",
            v4.addr(),
            v4.prefix_len(),
            v6.addr(),
            v6.prefix_len()
        ),
    }
}

/// Parses a subnet key (the last path element of a lease key). The address must be the
/// network address of the subnet: flannel never writes host bits.
pub fn parse_subnet_key(key: &str) -> Result<SubnetPair, LeaseError> {
    let err = || LeaseError::Key(key.to_string());
    let (v4, v6) = match key.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (key, None),
    };
    let v4 = {
        let (a, l) = v4.rsplit_once('-').ok_or_else(err)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        let len: u8 = l.parse().map_err(|_| err())?;
        let net = Ipv4Net::new(addr, len).map_err(|_| err())?;
        if net.network() != addr {
            return Err(err());
        }
        net
    };
    let v6 = match v6 {
        None => None,
        Some(s) => {
            let (a, l) = s.rsplit_once('-').ok_or_else(err)?;
            let addr: Ipv6Addr = a.parse().map_err(|_| err())?;
            let len: u8 = l.parse().map_err(|_| err())?;
            Some(Ipv6Net::new(addr, len).map_err(|_| err())?)
        }
    };
    // flannel's IPv6-only key names the empty IPv4 subnet (0.0.0.0/0), which is no subnet;
    // alone, it names nothing.
    let v4 = Some(v4).filter(|n| *n != Ipv4Net::default());
    if v4.is_none() && v6.is_none() {
        return Err(err());
    }
    Ok((v4, v6))
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.key(), self.attrs.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_json_round_trip() {
        let a = LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 0, 2, 2),
            VxlanBackendData {
                vni: 1,
                vtep_mac: "aa:bb:cc:dd:ee:ff".parse().unwrap(),
            },
        );
        let s = a.to_json();
        assert_eq!(
            s,
            r#"{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#
        );
        assert_eq!(LeaseAttrs::from_json(&s).unwrap(), a);
        assert_eq!(a.vxlan_data().unwrap().vni, 1);
    }

    #[test]
    fn reads_what_flanneld_and_older_versions_write() {
        // The issue's form (no PublicIPv6), an unknown field, and a dual-stack lease.
        let a = LeaseAttrs::from_json(
            r#"{"PublicIP":"192.0.2.2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"Extra":5}"#,
        )
        .unwrap();
        assert_eq!(a.public_ipv6, None);
        assert_eq!(
            a.vxlan_data().unwrap().vtep_mac.to_string(),
            "aa:bb:cc:dd:ee:ff"
        );
        let b = LeaseAttrs::from_json(
            r#"{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:01:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:01:02"}}"#,
        )
        .unwrap();
        assert_eq!(b.public_ipv6, Some("2001:db8::3".parse().unwrap()));
        assert!(!b.backend_v6_data.is_null());
        // flanneld's udp backend stores only the public IP (udp_amd64.go acquires with
        // LeaseAttrs{PublicIP}; BackendType and BackendData are omitempty in pkg/lease):
        // the value a stock udp node writes, taken from flannel's source, not from weft.
        const FLANNELD_UDP: &str = r#"{"PublicIP":"192.0.2.4","PublicIPv6":null}"#;
        let u = LeaseAttrs::from_json(FLANNELD_UDP).unwrap();
        assert_eq!(u, LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 4)));
        assert_eq!(
            u.to_json(),
            FLANNELD_UDP,
            "weft writes a udp lease as flanneld does"
        );
        // What weft wrote before, with a BackendType, still reads as udp (see table.rs).
        let old = LeaseAttrs::from_json(r#"{"PublicIP":"192.0.2.4","BackendType":"udp"}"#).unwrap();
        assert_eq!(old.backend_type, "udp");
    }

    #[test]
    fn only_leases_that_say_so_get_super_datagrams() {
        // flanneld's udp lease, as flannel's source writes it: its proxy truncates them.
        let flanneld = LeaseAttrs::from_json(r#"{"PublicIP":"192.0.2.4","PublicIPv6":null}"#);
        assert!(!flanneld.unwrap().takes_super_datagrams());
        // weft's udp lease: flanneld's plus the mark in BackendData, still no BackendType.
        const WEFT_UDP: &str =
            r#"{"PublicIP":"192.0.2.5","PublicIPv6":null,"BackendData":{"SuperDatagrams":true}}"#;
        let w = LeaseAttrs::weft_udp(Ipv4Addr::new(192, 0, 2, 5));
        assert_eq!(w.to_json(), WEFT_UDP);
        assert_eq!(LeaseAttrs::from_json(WEFT_UDP).unwrap(), w);
        assert!(w.takes_super_datagrams());
        // Every vxlan node (kernel vxlan or weft) takes them; anything else does not.
        let vxlan = r#"{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:02:01"}}"#;
        for (json, takes) in [
            (vxlan, true),
            (r#"{"PublicIP":"192.0.2.4","BackendType":"udp"}"#, false),
            (
                r#"{"PublicIP":"192.0.2.4","BackendData":{"SuperDatagrams":false}}"#,
                false,
            ),
            (
                r#"{"PublicIP":"192.0.2.4","BackendData":{"SuperDatagrams":"yes"}}"#,
                false,
            ),
            (r#"{"PublicIP":"192.0.2.4","BackendType":"host-gw"}"#, false),
            (
                r#"{"PublicIP":"192.0.2.4","BackendType":"wireguard","BackendData":{"SuperDatagrams":true}}"#,
                false,
            ),
        ] {
            let a = LeaseAttrs::from_json(json).unwrap();
            assert_eq!(a.takes_super_datagrams(), takes, "{json}");
        }
    }

    #[test]
    fn a_malformed_public_ipv6_is_named() {
        // flanneld's dual-stack value (pkg/subnet/etcd/fuzz_test.go's seed) with the IPv6
        // address broken, and with an IPv4 one in its place.
        for bad in ["fc00::zz", "192.168.0.1"] {
            let json = format!(r#"{{"PublicIP":"192.168.0.1","PublicIPv6":"{bad}"}}"#);
            let e = LeaseAttrs::from_json(&json).unwrap_err().to_string();
            assert!(
                e.contains(&format!("PublicIPv6 {bad:?} is not an address")),
                "{e}"
            );
        }
        let ok = LeaseAttrs::from_json(r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#);
        assert_eq!(ok.unwrap().public_ipv6, Some("fc00::1".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_json() {
        for bad in [
            "",
            "{}",
            r#"{"PublicIP":"300.0.0.1"}"#,
            r#"{"PublicIP":"fd00::1"}"#,
            r#"{"PublicIP":"192.0.2.1","BackendType":3}"#,
        ] {
            assert!(LeaseAttrs::from_json(bad).is_err(), "{bad}");
        }
        let a = LeaseAttrs::from_json(r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"bad"}}"#).unwrap();
        assert!(a.vxlan_data().is_err());
    }

    #[test]
    fn subnet_keys() {
        let (n, v6) = parse_subnet_key("10.244.1.0-24").unwrap();
        assert_eq!(n, "10.244.1.0/24".parse().ok());
        assert_eq!(v6, None);
        assert_eq!(subnet_key(n, None), "10.244.1.0-24");
        let (n, v6) = parse_subnet_key("10.5.52.0-24&fc00::-64").unwrap();
        assert_eq!(subnet_key(n, v6), "10.5.52.0-24&fc00::-64");
        // flanneld's dual-stack key, as its pkg/subnet/fuzz_test.go and
        // pkg/subnet/etcd/fuzz_test.go seed it.
        let (n, v6) = parse_subnet_key("10.5.1.0-24&fc00::-64").unwrap();
        assert_eq!(n, "10.5.1.0/24".parse().ok());
        assert_eq!(v6, Some("fc00::/64".parse().unwrap()));
        for bad in [
            "10.244.1.0",
            "10.244.1.0-33",
            "10.244.1.1-24",
            "x-24",
            "10.244.1.0-24&zz-64",
            "",
            // flannel's empty IPv4 subnet alone names no subnet at all.
            "0.0.0.0-0",
        ] {
            assert!(parse_subnet_key(bad).is_err(), "{bad}");
        }
    }

    /// flanneld's IPv6-only key: `MakeSubnetKey` of its zero `IP4Net` (`StringSep` gives
    /// `0.0.0.0-0`) and the IPv6 subnet (pkg/subnet/subnet.go).
    #[test]
    fn an_ipv6_only_key_as_flanneld_makes_it_has_no_ipv4_subnet() {
        let (n, v6) = parse_subnet_key("0.0.0.0-0&fc00::-64").unwrap();
        assert_eq!(n, None);
        assert_eq!(v6, Some("fc00::/64".parse().unwrap()));
        assert_eq!(subnet_key(n, v6), "0.0.0.0-0&fc00::-64");
        let lease = Lease {
            subnet: n,
            ipv6_subnet: v6,
            attrs: LeaseAttrs::from_json(
                // What flanneld's vxlan newSubnetAttrs writes without an IPv4 device:
                // PublicIP the zero ip.IP4, BackendData omitted (omitempty).
                r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fc00::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}}"#,
            )
            .unwrap(),
            expiration: None,
        };
        assert_eq!(lease.key(), "0.0.0.0-0&fc00::-64");
        // Its IPv4 side is no subnet: it overlaps no IPv4 lease, only its IPv6 subnet's.
        let k = |s: &str| parse_subnet_key(s).unwrap();
        assert!(!keys_overlap(k("10.244.1.0-24"), (n, v6)));
        assert!(!keys_overlap(k("0.0.0.0-0&fc00:0:0:1::-64"), (n, v6)));
        assert!(keys_overlap(k("10.244.1.0-24&fc00::-64"), (n, v6)));
        // A peer with only an IPv6 side, its VTEP from BackendV6Data.
        let p = crate::lease::table::Peer::from_lease(&lease).unwrap();
        assert_eq!(p.subnet, None);
        let v6side = p.v6.expect("an IPv6 side");
        assert_eq!(v6side.subnet, "fc00::/64".parse::<Ipv6Net>().unwrap());
        assert_eq!(v6side.public_ip, "fc00::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            (v6side.vni, v6side.vtep_mac.to_string()),
            (1, "0e:00:00:00:00:01".into())
        );
        assert_eq!(p.key(), (None, v6));
        // Without a PublicIPv6 it has no side at all: refused by name.
        let mut bare = lease.clone();
        bare.attrs.public_ipv6 = None;
        let e = crate::lease::table::Peer::from_lease(&bare).unwrap_err();
        assert_eq!(e, LeaseError::NoSide("0.0.0.0-0&fc00::-64".into()));
    }

    #[test]
    fn keys_overlap_across_families_and_key_forms() {
        let k = |s: &str| parse_subnet_key(s).unwrap();
        for (a, b, overlap) in [
            ("10.244.1.0-24", "10.244.1.0-24&fd00::-64", true),
            ("10.244.1.0-24&fd00::-64", "10.244.2.0-24&fd00::-64", true),
            ("10.244.0.0-20", "10.244.1.0-24&fd00:0:0:1::-64", true),
            (
                "10.244.1.0-24&fd00::-48",
                "10.244.2.0-24&fd00:0:0:1::-64",
                true,
            ),
            (
                "10.244.1.0-24&fd00::-64",
                "10.244.2.0-24&fd00:0:0:1::-64",
                false,
            ),
            ("10.244.1.0-24", "10.244.2.0-24&fd00::-64", false),
            ("10.244.1.0-24", "10.244.2.0-24", false),
        ] {
            assert_eq!(keys_overlap(k(a), k(b)), overlap, "{a} {b}");
            assert_eq!(keys_overlap(k(b), k(a)), overlap, "{b} {a}");
        }
    }

    #[test]
    fn a_dual_stack_lease_as_flanneld_writes_it() {
        // Key and value of flannel's pkg/subnet/etcd/fuzz_test.go seed (kvToIPLease).
        let (subnet, ipv6_subnet) = parse_subnet_key("10.5.1.0-24&fc00::-64").unwrap();
        let attrs =
            LeaseAttrs::from_json(r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#).unwrap();
        let l = Lease {
            subnet,
            ipv6_subnet,
            attrs,
            expiration: None,
        };
        assert_eq!(l.attrs.public_ipv6, Some("fc00::1".parse().unwrap()));
        assert_eq!(l.key(), "10.5.1.0-24&fc00::-64");
        // Serialized back in Go's field order (pkg/lease/lease.go LeaseAttrs).
        assert_eq!(
            l.attrs.to_json(),
            r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#
        );
    }
}
