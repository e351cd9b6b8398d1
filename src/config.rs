//! `net-conf.json`: flannel's network configuration, parsed and checked with flannel's
//! rules (`pkg/subnet/config.go`), with errors that name the field, the value and the rule.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::gojson;
use crate::wire::vxlan;

pub mod wireguard;
pub use wireguard::{Mode as WireguardMode, WireguardConfig};

/// The backend weft runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendConfig {
    /// Userspace VXLAN, wire-compatible with the kernel's `flannel.1`.
    Vxlan {
        /// VXLAN network identifier (flannel default 1).
        vni: u32,
        /// Destination UDP port (flannel leaves 0, so the kernel's 8472).
        port: u16,
        /// Underlay MTU override (flannel's `MTU` key), if set.
        mtu: Option<u32>,
        /// flannel's `DirectRouting`: peers on the node's own underlay subnet get a plain
        /// route (`subnet via public-ip`) instead of the tunnel.
        direct_routing: bool,
    },
    /// flannel's host-gw: a plain route to each peer's subnet via its public IP, no
    /// encapsulation (nodes must share a layer-2 network).
    HostGw,
    /// flannel's udp backend format.
    Udp {
        /// UDP port, both ends (default 8285).
        port: u16,
    },
    /// flannel's wireguard backend: pod packets encrypted between nodes.
    Wireguard(WireguardConfig),
}

impl BackendConfig {
    /// flannel's type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan { .. } => crate::lease::backend_type::VXLAN,
            BackendConfig::Udp { .. } => crate::lease::backend_type::UDP,
            BackendConfig::HostGw => crate::lease::backend_type::HOST_GW,
            BackendConfig::Wireguard(_) => crate::lease::backend_type::WIREGUARD,
        }
    }

    /// Bytes of encapsulation in front of each inner packet.
    pub fn overhead(&self) -> u32 {
        match self {
            BackendConfig::Vxlan { .. } => crate::encap::VXLAN_OVERHEAD as u32,
            BackendConfig::Udp { .. } => crate::encap::UDP_OVERHEAD as u32,
            BackendConfig::HostGw => 0,
            BackendConfig::Wireguard(_) => wireguard::OVERHEAD,
        }
    }

    /// The UDP port the backend listens and sends on (none for host-gw).
    pub fn port(&self) -> Option<u16> {
        match *self {
            BackendConfig::Vxlan { port, .. } | BackendConfig::Udp { port } => Some(port),
            BackendConfig::Wireguard(ref w) => Some(w.listen_port),
            BackendConfig::HostGw => None,
        }
    }

    /// The pod MTU for an underlay of `underlay_mtu` bytes (flannel's `FLANNEL_MTU`).
    /// The vxlan `MTU` key, when set, replaces the underlay MTU, as in flannel.
    pub fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        let base = match *self {
            BackendConfig::Vxlan { mtu: Some(m), .. } => m,
            BackendConfig::Wireguard(WireguardConfig { mtu: Some(m), .. }) => m,
            _ => underlay_mtu,
        };
        base.saturating_sub(self.overhead())
    }
}

/// A checked network configuration, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The IPv4 side, unless `EnableIPv4` is false (an IPv6-only network).
    pub ipv4: Option<Ipv4Config>,
    /// The IPv6 side, when `EnableIPv6` is true.
    pub ipv6: Option<Ipv6Config>,
    /// The backend.
    pub backend: BackendConfig,
    /// flannel's `EnableNFTables`: flanneld's nftables rules instead of its iptables ones.
    pub enable_nftables: bool,
    /// Non-fatal notes about the input (normalised values), for the log.
    pub warnings: Vec<String>,
}

/// The IPv4 side of a network (every network but an IPv6-only one): flannel's `Network`,
/// `SubnetLen`, `SubnetMin` and `SubnetMax`, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Config {
    /// The cluster network.
    pub network: Ipv4Net,
    /// Prefix length of each node's subnet.
    pub subnet_len: u8,
    /// The lowest subnet address handed out.
    pub subnet_min: Ipv4Addr,
    /// The highest subnet address handed out.
    pub subnet_max: Ipv4Addr,
}

/// The IPv6 side of a dual-stack (or IPv6-only) network: flannel's `IPv6Network`,
/// `IPv6SubnetLen`, `IPv6SubnetMin` and `IPv6SubnetMax`, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    /// The cluster's IPv6 network.
    pub network: Ipv6Net,
    /// Prefix length of each node's IPv6 subnet.
    pub subnet_len: u8,
    /// The lowest IPv6 subnet address handed out.
    pub subnet_min: Ipv6Addr,
    /// The highest IPv6 subnet address handed out.
    pub subnet_max: Ipv6Addr,
}

/// A refused configuration. The message names the field, the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("net-conf.json: {0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// An example IPv6Network for messages: a unique local range, as kube's dual-stack docs use.
const IPV6_NETWORK_EXAMPLE: &str = "fd00:10:244::/56";

/// Ranges an IPv6Network must not touch: pods need unicast, globally routable or unique
/// local addresses (RFC 4291 section 2.4), and none of these is one.
const IPV6_NOT_UNICAST: [(&str, &str); 4] = [
    ("ff00::/8", "the multicast range"),
    ("fe80::/10", "the link-local range"),
    ("::1/128", "the loopback address"),
    ("::ffff:0:0/96", "the IPv4-mapped range"),
];

/// flanneld's `subnet.Config` fields (pkg/subnet/config.go), as Go matches keys to them.
const CONFIG_FIELDS: &[&str] = &[
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "SubnetLen",
    "IPv6SubnetLen",
    "Backend",
];

/// The Backend keys flanneld reads: `Type` (parseBackendType) and the vxlan backend's
/// `VXLANConfig` (json tags `vni`, `port`, `mtu`, `gbp`, `learning`, `directRouting`;
/// udp's `Port` is among them).
const BACKEND_FIELDS: &[&str] = &[
    "Type",
    "VNI",
    "Port",
    "MTU",
    "GBP",
    "Learning",
    "DirectRouting",
    "ListenPort",
    "ListenPortV6",
    "PSK",
    "PersistentKeepaliveInterval",
    "Mode",
];

/// net-conf.json as flanneld's `json.Unmarshal` fills its struct: keys in any case, `null`
/// per field type, the last of repeated keys.
struct RawConfig {
    network: Option<String>,
    enable_ipv4: Option<bool>,
    enable_ipv6: Option<bool>,
    ipv6_network: Option<String>,
    enable_nftables: Option<bool>,
    subnet_len: Option<i64>,
    subnet_min: Option<String>,
    subnet_max: Option<String>,
    /// flanneld's `*ip.IP6` fields: `null` leaves them unset; any string must parse.
    ipv6_subnet_min: Option<String>,
    ipv6_subnet_max: Option<String>,
    ipv6_subnet_len: Option<i64>,
    /// `None`: no Backend key; `Some(None)`: `"Backend": null`, which flanneld reads as a
    /// backend without a type.
    backend: Option<Option<RawBackend>>,
    /// Keys flanneld would ignore: reported, so a typo is never silent.
    unknown: Vec<String>,
}

struct RawBackend {
    backend_type: Option<String>,
    vni: Option<i64>,
    port: Option<i64>,
    mtu: Option<i64>,
    gbp: Option<bool>,
    direct_routing: Option<bool>,
    learning: Option<bool>,
    listen_port: Option<i64>,
    listen_port_v6: Option<i64>,
    psk: Option<String>,
    /// Seconds: flanneld reads a `time.Duration` (an integer) and multiplies it by a second.
    keepalive: Option<i64>,
    mode: Option<String>,
    unknown: Vec<String>,
}

impl RawConfig {
    /// Reads the document and checks the IPv6 fields' syntax (which flanneld parses even
    /// with EnableIPv6 false).
    fn read_checked(json: &str) -> Result<RawConfig, ConfigError> {
        let raw = RawConfig::read(json).or_else(|e| {
            err(format!("not valid JSON for a flannel network config ({e}); expected e.g. {{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}"))
        })?;
        raw.check_ipv6_fields()?;
        Ok(raw)
    }

    fn read(json: &str) -> Result<RawConfig, String> {
        let o = gojson::Object::parse(json).map_err(|e| e.to_string())?;
        let f = |name: &str| o.field(name, CONFIG_FIELDS);
        let uint = u32::MAX as i64;
        let backend = match f("Backend") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(v @ Value::Object(_)) => Some(Some(RawBackend::read(v)?)),
            Some(v) => {
                return Err(format!(
                    "Backend is a JSON {}, not an object",
                    gojson::kind(v)
                ))
            }
        };
        Ok(RawConfig {
            network: gojson::address_text("Network", f("Network"))?,
            enable_ipv4: gojson::boolean("EnableIPv4", f("EnableIPv4"))?,
            enable_ipv6: gojson::boolean("EnableIPv6", f("EnableIPv6"))?,
            ipv6_network: gojson::address_text("IPv6Network", f("IPv6Network"))?,
            enable_nftables: gojson::boolean("EnableNFTables", f("EnableNFTables"))?,
            subnet_len: gojson::integer("SubnetLen", f("SubnetLen"), 0, uint)?,
            subnet_min: gojson::address_text("SubnetMin", f("SubnetMin"))?,
            subnet_max: gojson::address_text("SubnetMax", f("SubnetMax"))?,
            ipv6_subnet_min: ipv6_pointer("IPv6SubnetMin", f("IPv6SubnetMin"))?,
            ipv6_subnet_max: ipv6_pointer("IPv6SubnetMax", f("IPv6SubnetMax"))?,
            ipv6_subnet_len: gojson::integer("IPv6SubnetLen", f("IPv6SubnetLen"), 0, uint)?,
            backend,
            unknown: o.unknown(CONFIG_FIELDS),
        })
    }

    /// One warning for each key flanneld would ignore, top-level keys first, then the
    /// Backend's.
    fn unknown_key_warnings(&self) -> Vec<String> {
        let backend_unknown = self.backend.iter().flatten().flat_map(|b| b.unknown.iter());
        self.unknown
            .iter()
            .chain(backend_unknown)
            .map(|k| {
                format!("unknown key {k:?} ignored, as flanneld ignores it: check its spelling")
            })
            .collect()
    }

    /// Checks the IPv6 fields: flanneld parses them whatever EnableIPv6 says, so garbage
    /// there fails even when IPv6 is off.
    fn check_ipv6_fields(&self) -> Result<(), ConfigError> {
        if let Some(v6) = &self.ipv6_network {
            if v6.parse::<ipnet::Ipv6Net>().is_err() {
                return err(format!("IPv6Network {v6:?} is not an IPv6 CIDR (e.g. \"fd00:10:244::/56\"), which flanneld refuses even with EnableIPv6 false"));
            }
        }
        for (field, v) in [
            ("IPv6SubnetMin", &self.ipv6_subnet_min),
            ("IPv6SubnetMax", &self.ipv6_subnet_max),
        ] {
            if let Some(a) = v {
                if a.parse::<std::net::Ipv6Addr>().is_err() {
                    return err(format!("{field} {a:?} is not an IPv6 address, which flanneld refuses even with EnableIPv6 false"));
                }
            }
        }
        Ok(())
    }

    /// Checks EnableIPv4 and EnableIPv6: at least one family, as flanneld requires.
    fn check_address_families(&self) -> Result<(), ConfigError> {
        if self.enable_ipv4 == Some(false) && self.enable_ipv6 != Some(true) {
            return err("EnableIPv4 is false and EnableIPv6 is not true: no address family is left (flanneld: \"none defined stack\"); remove EnableIPv4 or set it to true");
        }
        Ok(())
    }
}

/// A Go pointer to an address type: `null` is nil; anything else goes to the parser.
fn ipv6_pointer(field: &str, v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        Some(Value::Null) => Ok(None),
        other => gojson::address_text(field, other),
    }
}

impl RawBackend {
    fn read(v: &Value) -> Result<RawBackend, String> {
        let o = gojson::Object::from_value(v).unwrap_or_default();
        let f = |name: &str| o.field(name, BACKEND_FIELDS);
        let int =
            |name: &str| gojson::integer(&format!("Backend.{name}"), f(name), i64::MIN, i64::MAX);
        Ok(RawBackend {
            backend_type: gojson::string("Backend.Type", f("Type"))?,
            vni: int("VNI")?,
            port: int("Port")?,
            mtu: int("MTU")?,
            gbp: gojson::boolean("Backend.GBP", f("GBP"))?,
            direct_routing: gojson::boolean("Backend.DirectRouting", f("DirectRouting"))?,
            learning: gojson::boolean("Backend.Learning", f("Learning"))?,
            listen_port: int("ListenPort")?,
            listen_port_v6: int("ListenPortV6")?,
            psk: gojson::string("Backend.PSK", f("PSK"))?,
            keepalive: int("PersistentKeepaliveInterval")?,
            mode: gojson::string("Backend.Mode", f("Mode"))?,
            unknown: o.unknown(BACKEND_FIELDS),
        })
    }
}

fn parse_addr(field: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.parse().or_else(|_| {
        err(format!(
            "{field} {s:?} is not an IPv4 address (e.g. \"10.244.1.0\")"
        ))
    })
}

/// Reads `SubnetMin` or `SubnetMax` (`field`): unset, empty or `0.0.0.0` gives `default`;
/// an address must lie inside `network` on a `subnet_len` boundary.
fn subnet_bound(
    field: &str,
    v: Option<&str>,
    default: u64,
    network: Ipv4Net,
    subnet_len: u8,
) -> Result<Ipv4Addr, ConfigError> {
    let mask = u32::MAX << (32 - subnet_len);
    match v {
        None | Some("") | Some("0.0.0.0") => Ok(Ipv4Addr::from(default as u32)),
        Some(s) => {
            let a = parse_addr(field, s)?;
            if !network.contains(&a) {
                return err(format!("{field} {a} is outside Network {network}: it must be a subnet address inside it"));
            }
            if u32::from(a) & mask != u32::from(a) {
                return err(format!(
                    "{field} {a} is not on a SubnetLen (/{subnet_len}) boundary: use {}",
                    Ipv4Addr::from(u32::from(a) & mask)
                ));
            }
            Ok(a)
        }
    }
}

/// Reads `Backend.Port`: unset or 0 gives the backend's `default`, else a UDP port.
fn backend_port(port: Option<i64>, default: u16) -> Result<u16, ConfigError> {
    match port {
        None | Some(0) => Ok(default),
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Some(p) => err(format!(
            "Backend.Port {p} is not a UDP port (1-65535, or 0 for the default {default})"
        )),
    }
}

impl NetConfig {
    /// Parses and checks a `net-conf.json` document.
    ///
    /// The steps run in this order and each stops at the first rule broken, so a document
    /// with several faults always reports the same one: the JSON, the IPv6 fields' syntax,
    /// the address families, the IPv4 side, the IPv6 side, the backend.
    pub fn parse(json: &str) -> Result<NetConfig, ConfigError> {
        let raw = RawConfig::read_checked(json)?;
        let mut warnings = raw.unknown_key_warnings();
        raw.check_address_families()?;
        let ipv4 = match raw.enable_ipv4 {
            Some(false) => None,
            _ => Some(Ipv4Config::from_raw(&raw, &mut warnings)?),
        };
        let ipv6 = match raw.enable_ipv6 {
            Some(true) => Some(Ipv6Config::from_raw(&raw, &mut warnings)?),
            _ => None,
        };
        let families = (ipv4.is_some(), ipv6.is_some());
        let backend = Self::backend_section(raw.backend, families, &mut warnings)?;
        if ipv6.is_some() && matches!(backend, BackendConfig::Udp { .. }) {
            return err("Backend.Type is udp with EnableIPv6 true: flannel's udp backend carries IPv4 only, so IPv6 pods would get addresses but no path; use \"vxlan\" or \"host-gw\" for a dual-stack or IPv6-only network, or set EnableIPv6 to false");
        }
        Ok(NetConfig {
            ipv4,
            ipv6,
            backend,
            enable_nftables: raw.enable_nftables.unwrap_or(false),
            warnings,
        })
    }

    /// The IPv4 network, if the network has an IPv4 side.
    pub fn network(&self) -> Option<Ipv4Net> {
        self.ipv4.as_ref().map(|c| c.network)
    }

    /// The network of the first family: the IPv4 one, or an IPv6-only network's.
    pub fn first_network(&self) -> Option<ipnet::IpNet> {
        let v6 = self.ipv6.as_ref().map(|c| ipnet::IpNet::V6(c.network));
        self.network().map(ipnet::IpNet::V4).or(v6)
    }

    /// The networks, IPv4 first.
    pub fn networks(&self) -> Vec<ipnet::IpNet> {
        let v6 = self.ipv6.as_ref().map(|c| ipnet::IpNet::V6(c.network));
        self.network()
            .map(ipnet::IpNet::V4)
            .into_iter()
            .chain(v6)
            .collect()
    }

    /// The networks, IPv4 first, for messages: `10.244.0.0/16`, `fd00::/56` or both.
    pub fn networks_text(&self) -> String {
        let v4 = self.ipv4.as_ref().map(|c| c.network.to_string());
        let v6 = self.ipv6.as_ref().map(|c| c.network.to_string());
        v4.into_iter().chain(v6).collect::<Vec<_>>().join(" and ")
    }
    /// Reads the `Backend` section: absent means udp (with a warning), `null` is refused,
    /// an object goes to [`NetConfig::backend`].
    fn backend_section(
        raw: Option<Option<RawBackend>>,
        families: (bool, bool),
        warnings: &mut Vec<String>,
    ) -> Result<BackendConfig, ConfigError> {
        if raw.is_none() {
            warnings.push("no Backend in the network config: weft uses udp, the default in flanneld's code (pkg/subnet/config.go; its documentation says vxlan), so that it agrees with stock flanneld nodes; set \"Backend\":{\"Type\":\"vxlan\"} for the vxlan backend".to_string());
        }
        match raw {
            // "Backend": null: flanneld reads a backend without a type.
            Some(None) => err("Backend is null: set \"Backend\":{\"Type\":\"vxlan\"} (recommended), \"host-gw\" or \"udp\""),
            Some(Some(b)) => Self::backend(Some(b), families),
            None => Self::backend(None, families),
        }
    }

    /// Reads a backend object; `families` is (IPv4, IPv6): which the network has.
    fn backend(
        raw: Option<RawBackend>,
        (ipv4, ipv6): (bool, bool),
    ) -> Result<BackendConfig, ConfigError> {
        let Some(b) = raw else {
            // flannel's documentation says vxlan, but flanneld's code (parseBackendType)
            // picks udp when Backend is absent: a mixed cluster agrees only if weft does what
            // stock flanneld does. The caller warns.
            return Ok(BackendConfig::Udp {
                port: crate::encap::udp::PORT_FLANNEL,
            });
        };
        // flanneld lower-cases the type (pkg/backend/manager.go).
        match b.backend_type.as_deref().unwrap_or("").to_ascii_lowercase().as_str() {
            // flanneld fails too ("backend type  not supported"): say so, and how to fix it.
            "" => err("Backend.Type is missing: set \"vxlan\" (recommended), \"host-gw\" or \"udp\""),
            "vxlan" => Self::vxlan_backend(&b),
            "host-gw" => Ok(BackendConfig::HostGw),
            "udp" => Ok(BackendConfig::Udp {
                port: backend_port(b.port, crate::encap::udp::PORT_FLANNEL)?,
            }),
            "wireguard" => Ok(BackendConfig::Wireguard(wireguard::read(&b, ipv4, ipv6)?)),
            other => err(format!(
                "Backend.Type {other:?} is not supported by weft: use \"vxlan\", \"host-gw\" or \"udp\""
            )),
        }
    }

    /// Reads the vxlan backend's keys: `VNI`, `GBP`, `Learning`, `MTU`, `Port` and
    /// `DirectRouting`, in that order.
    fn vxlan_backend(b: &RawBackend) -> Result<BackendConfig, ConfigError> {
        let vni = match b.vni {
            None | Some(0) => 1,
            Some(v) if (1..=vxlan::VNI_MAX as i64).contains(&v) => v as u32,
            Some(v) => {
                return err(format!(
                    "Backend.VNI {v} is out of range: a VNI is 24 bits (1-16777215)"
                ))
            }
        };
        if b.gbp == Some(true) {
            return err("Backend.GBP is true: VXLAN group-based policy is not supported by weft; remove it or set it to false");
        }
        if b.learning == Some(true) {
            return err("Backend.Learning is true: weft's VTEP has no MAC learning; set it to false (flannel's default)");
        }
        let mtu = match b.mtu {
            None | Some(0) => None,
            Some(m) if (68 + 50..=65535).contains(&m) => Some(m as u32),
            Some(m) => {
                return err(format!(
                    "Backend.MTU {m} is out of range: it is the underlay MTU, 118-65535"
                ))
            }
        };
        Ok(BackendConfig::Vxlan {
            vni,
            port: backend_port(b.port, vxlan::PORT_LINUX)?,
            mtu,
            direct_routing: b.direct_routing == Some(true),
        })
    }
}

impl Ipv4Config {
    /// Reads `Network`, `SubnetLen`, `SubnetMin` and `SubnetMax`, in that order.
    fn from_raw(raw: &RawConfig, warnings: &mut Vec<String>) -> Result<Ipv4Config, ConfigError> {
        let network = Self::network(raw.network.as_deref(), warnings)?;
        let subnet_len = Self::subnet_len(raw.subnet_len, network)?;
        let (subnet_min, subnet_max) = Self::subnet_bounds(raw, network, subnet_len)?;
        Ok(Ipv4Config {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
        })
    }

    /// Reads `Network`: it must be a non-empty IPv4 CIDR that is not `0.0.0.0/0`. Host bits
    /// are masked off, as flannel does, with a warning.
    fn network(given: Option<&str>, warnings: &mut Vec<String>) -> Result<Ipv4Net, ConfigError> {
        let net_s = match given {
            None | Some("") => return err("Network is missing: set it to the cluster CIDR, e.g. \"Network\": \"10.244.0.0/16\""),
            Some(s) => s,
        };
        let given: Ipv4Net = gojson::parse_ipv4_cidr(net_s).map_or_else(
            || {
                err(format!(
                    "Network {net_s:?} is not an IPv4 CIDR (e.g. \"10.244.0.0/16\"; no leading zeros)"
                ))
            },
            Ok,
        )?;
        if given.prefix_len() == 0 {
            // flanneld's CheckNetworkConfig takes 0.0.0.0/0 for an unset Network.
            return err(format!("Network {net_s:?} is the whole address space: set the cluster CIDR, e.g. \"10.244.0.0/16\""));
        }
        let network = given.trunc();
        if network != given {
            // flannel's IP4Net parsing masks host bits silently; keep its behaviour but say so.
            warnings.push(format!(
                "Network {net_s:?} has host bits set; using {network}"
            ));
        }
        Ok(network)
    }

    /// Reads `SubnetLen` with flanneld's CheckNetworkConfig rules: a given length must be at
    /// most 30 and leave room for four subnets; an unset (or 0) length defaults to /24, or
    /// to the network's prefix + 2 for networks smaller than a /22 (down to a /28).
    fn subnet_len(given: Option<i64>, network: Ipv4Net) -> Result<u8, ConfigError> {
        let plen = network.prefix_len();
        match given {
            Some(l) if l != 0 => {
                if !(0..=32).contains(&l) {
                    return err(format!("SubnetLen {l} is not a prefix length (0-32)"));
                }
                let l = l as u8;
                if l > 30 {
                    return err(format!(
                        "SubnetLen {l} is too long: it must be at most 30, so each node has room for its bridge and pods"
                    ));
                }
                if l < plen + 2 {
                    return err(format!(
                        "SubnetLen {l} is too short for Network {network}: it must be at least {} so the network holds four subnets",
                        plen + 2
                    ));
                }
                Ok(l)
            }
            _ => {
                if plen > 28 {
                    err(format!(
                        "Network {network} is too small: the smallest useful flannel network is a /28"
                    ))
                } else if plen <= 22 {
                    Ok(24)
                } else {
                    Ok(plen + 2)
                }
            }
        }
    }

    /// Reads `SubnetMin` and `SubnetMax`, by default the second and the last subnet of the
    /// network, and checks that the range is not empty.
    fn subnet_bounds(
        raw: &RawConfig,
        network: Ipv4Net,
        subnet_len: u8,
    ) -> Result<(Ipv4Addr, Ipv4Addr), ConfigError> {
        let size = 1u64 << (32 - subnet_len);
        let net_lo = u32::from(network.network()) as u64;
        let net_hi = net_lo + (1u64 << (32 - network.prefix_len())); // exclusive
        let bound = |field: &str, v: &Option<String>, default: u64| {
            subnet_bound(field, v.as_deref(), default, network, subnet_len)
        };
        let subnet_min = bound("SubnetMin", &raw.subnet_min, net_lo + size)?;
        let subnet_max = bound("SubnetMax", &raw.subnet_max, net_hi - size)?;
        if subnet_min > subnet_max {
            return err(format!("SubnetMin {subnet_min} is above SubnetMax {subnet_max}: no subnet could be allocated"));
        }
        Ok((subnet_min, subnet_max))
    }

    /// The number of subnets between SubnetMin and SubnetMax.
    pub fn subnet_count(&self) -> u64 {
        ((u32::from(self.subnet_max) - u32::from(self.subnet_min)) as u64 >> (32 - self.subnet_len))
            + 1
    }

    /// True if `sn` may be a node subnet under this config (flannel's `isSubnetConfigCompat`).
    pub fn is_compatible(&self, sn: Ipv4Net) -> bool {
        sn.prefix_len() == self.subnet_len
            && sn.network() == sn.addr()
            && sn.addr() >= self.subnet_min
            && sn.addr() <= self.subnet_max
    }
}

impl Ipv6Config {
    /// The IPv6 side of a `net-conf.json` document, checked as flanneld's
    /// CheckNetworkConfig checks it (`None` when EnableIPv6 is not true), whatever
    /// EnableIPv4 and the backend say (flannel's own config tests read IPv6-only documents
    /// without a Backend, which [`NetConfig::parse`] refuses as udp). Warnings (host bits masked) are dropped; `NetConfig::parse` keeps them.
    pub fn parse(json: &str) -> Result<Option<Ipv6Config>, ConfigError> {
        let raw = RawConfig::read_checked(json)?;
        match raw.enable_ipv6 {
            Some(true) => Self::from_raw(&raw, &mut Vec::new()).map(Some),
            _ => Ok(None),
        }
    }

    /// Reads `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin` and `IPv6SubnetMax`, in that
    /// order, with the same rules as their IPv4 counterparts.
    fn from_raw(raw: &RawConfig, warnings: &mut Vec<String>) -> Result<Ipv6Config, ConfigError> {
        let network = Self::network(raw.ipv6_network.as_deref(), warnings)?;
        let subnet_len = Self::subnet_len(raw.ipv6_subnet_len, network)?;
        let size = 1u128 << (128 - subnet_len);
        let net_lo = u128::from(network.network());
        let net_last = u128::from(network.broadcast());
        let bound = |field: &str, v: &Option<String>, default: u128| {
            ipv6_subnet_bound(field, v.as_deref(), default, network, subnet_len)
        };
        let subnet_min = bound("IPv6SubnetMin", &raw.ipv6_subnet_min, net_lo + size)?;
        let subnet_max = bound("IPv6SubnetMax", &raw.ipv6_subnet_max, net_last - size + 1)?;
        if subnet_min > subnet_max {
            return err(format!("IPv6SubnetMin {subnet_min} is above IPv6SubnetMax {subnet_max}: no IPv6 subnet could be allocated"));
        }
        Ok(Ipv6Config {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
        })
    }

    /// Reads `IPv6Network`: required with EnableIPv6, not `::/0` (flanneld's "empty"
    /// network), clear of every non-unicast range; host bits are masked with a warning.
    fn network(given: Option<&str>, warnings: &mut Vec<String>) -> Result<Ipv6Net, ConfigError> {
        let Some(net_s) = given else {
            return err(format!("EnableIPv6 is true but IPv6Network is missing (flanneld: \"please define a correct IPv6Network parameter\"): set it to the cluster's IPv6 CIDR, e.g. \"IPv6Network\": \"{IPV6_NETWORK_EXAMPLE}\""));
        };
        // check_ipv6_fields has parsed it already.
        let given: Ipv6Net = net_s.parse().or_else(|_| {
            err(format!(
                "IPv6Network {net_s:?} is not an IPv6 CIDR (e.g. \"{IPV6_NETWORK_EXAMPLE}\")"
            ))
        })?;
        if given.prefix_len() == 0 {
            // flanneld's CheckNetworkConfig takes ::/0 for an unset IPv6Network.
            return err(format!("IPv6Network {net_s:?} is the whole address space: set the cluster's IPv6 CIDR, e.g. \"{IPV6_NETWORK_EXAMPLE}\""));
        }
        let network = given.trunc();
        for (range, what) in IPV6_NOT_UNICAST {
            let range: Ipv6Net = range.parse().expect("a valid constant");
            if range.contains(&network) || network.contains(&range) {
                return err(format!("IPv6Network {network} overlaps {what} {range}: pods need unicast addresses; use a unique local range such as \"{IPV6_NETWORK_EXAMPLE}\" or a global prefix the cluster owns"));
            }
        }
        if network != given {
            // Go's net.ParseCIDR masks host bits silently; keep its behaviour but say so.
            warnings.push(format!(
                "IPv6Network {net_s:?} has host bits set; using {network}"
            ));
        }
        Ok(network)
    }

    /// Reads `IPv6SubnetLen` with flanneld's rules: a given length must be at most 126 and
    /// leave room for four subnets; unset (or 0) gives /64, or the network's prefix + 2 for
    /// networks smaller than a /62 (down to a /124).
    fn subnet_len(given: Option<i64>, network: Ipv6Net) -> Result<u8, ConfigError> {
        let plen = network.prefix_len();
        match given {
            Some(l) if l != 0 => {
                if l > 126 {
                    return err(format!("IPv6SubnetLen {l} is too long: it must be at most 126, so each node has room for its bridge and pods"));
                }
                if l < i64::from(plen) + 2 {
                    return err(format!("IPv6SubnetLen {l} is too short for IPv6Network {network}: it must be at least {} so the network holds four subnets", plen + 2));
                }
                Ok(l as u8)
            }
            _ if plen > 124 => err(format!(
                "IPv6Network {network} is too small: the smallest useful flannel IPv6 network is a /124"
            )),
            _ if plen <= 62 => Ok(64),
            _ => Ok(plen + 2),
        }
    }

    /// The number of IPv6 subnets between IPv6SubnetMin and IPv6SubnetMax.
    pub fn subnet_count(&self) -> u128 {
        ((u128::from(self.subnet_max) - u128::from(self.subnet_min)) >> (128 - self.subnet_len)) + 1
    }

    /// True if `sn` may be a node's IPv6 subnet under this config (flannel's
    /// `isSubnetConfigCompat`, IPv6 half).
    pub fn is_compatible(&self, sn: Ipv6Net) -> bool {
        sn.prefix_len() == self.subnet_len
            && sn.network() == sn.addr()
            && sn.addr() >= self.subnet_min
            && sn.addr() <= self.subnet_max
    }
}

/// Reads `IPv6SubnetMin` or `IPv6SubnetMax` (`field`): unset or `::` gives `default` (Go's
/// `ip.IsEmpty`); an address must lie inside `network` on a `subnet_len` boundary.
fn ipv6_subnet_bound(
    field: &str,
    v: Option<&str>,
    default: u128,
    network: Ipv6Net,
    subnet_len: u8,
) -> Result<Ipv6Addr, ConfigError> {
    let a = match v.map(str::parse::<Ipv6Addr>) {
        None => return Ok(Ipv6Addr::from(default)),
        Some(Ok(a)) if a.is_unspecified() => return Ok(Ipv6Addr::from(default)),
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            return err(format!(
                "{field} {:?} is not an IPv6 address (e.g. \"fd00:10:244:1::\")",
                v.unwrap_or_default()
            ))
        }
    };
    if !network.contains(&a) {
        return err(format!(
            "{field} {a} is outside IPv6Network {network}: it must be a subnet address inside it"
        ));
    }
    let mask = u128::MAX << (128 - subnet_len);
    if u128::from(a) & mask != u128::from(a) {
        return err(format!(
            "{field} {a} is not on an IPv6SubnetLen (/{subnet_len}) boundary: use {}",
            Ipv6Addr::from(u128::from(a) & mask)
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConfig, ConfigError> {
        NetConfig::parse(s)
    }

    fn v4(c: &NetConfig) -> &Ipv4Config {
        c.ipv4.as_ref().expect("an IPv4 side")
    }

    #[test]
    fn defaults_like_flannel() {
        let c = parse(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(v4(&c).subnet_len, 24);
        assert_eq!(v4(&c).subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(v4(&c).subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan {
                vni: 1,
                port: 8472,
                mtu: None,
                direct_routing: false,
            }
        );
        assert_eq!(c.backend.pod_mtu(1500), 1450);
        assert_eq!(v4(&c).subnet_count(), 255);

        // Smaller than /22: prefix + 2.
        let c = parse(r#"{"Network":"10.10.0.0/24"}"#).unwrap();
        assert_eq!(v4(&c).subnet_len, 26);
        assert_eq!(v4(&c).subnet_min, Ipv4Addr::new(10, 10, 0, 64));
        assert_eq!(v4(&c).subnet_max, Ipv4Addr::new(10, 10, 0, 192));
        // /22 itself gets /24.
        assert_eq!(
            v4(&parse(r#"{"Network":"10.10.0.0/22"}"#).unwrap()).subnet_len,
            24
        );
        // No Backend: udp, as flanneld's code (parseBackendType) picks, with a warning.
        assert_eq!(c.backend, BackendConfig::Udp { port: 8285 });
        assert!(
            c.warnings.iter().any(|w| w.contains("flanneld's code")),
            "{:?}",
            c.warnings
        );
        // Backend without a Type: refused, as flanneld refuses it.
        let e = parse(r#"{"Network":"10.10.0.0/24","Backend":{}}"#).unwrap_err();
        assert!(e.to_string().contains("Backend.Type is missing"), "{e}");
        // EnableNFTables: flanneld's nftables rules.
        let n =
            parse(r#"{"Network":"10.10.0.0/24","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#)
                .unwrap();
        assert!(n.enable_nftables);

        let u = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#).unwrap();
        assert_eq!(u.backend, BackendConfig::Udp { port: 8285 });
        assert_eq!(u.backend.pod_mtu(1500), 1472);
        let v = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"MTU":9000}}"#).unwrap();
        assert_eq!(
            v.backend,
            BackendConfig::Vxlan {
                vni: 42,
                port: 4789,
                mtu: Some(9000),
                direct_routing: false,
            }
        );
        assert_eq!(v.backend.pod_mtu(1500), 8950);
        let d =
            parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#)
                .unwrap();
        assert!(matches!(
            d.backend,
            BackendConfig::Vxlan {
                direct_routing: true,
                ..
            }
        ));
        // host-gw: no encapsulation, so pods get the underlay MTU, as flanneld writes it.
        let h = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#).unwrap();
        assert_eq!(h.backend, BackendConfig::HostGw);
        assert_eq!(h.backend.pod_mtu(1500), 1500);
        assert_eq!(h.backend.type_name(), "host-gw");
    }

    #[test]
    fn explicit_bounds() {
        let c = parse(r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.16.0.0","SubnetMax":"10.32.0.0"}"#).unwrap();
        assert_eq!(v4(&c).subnet_len, 20);
        assert_eq!(v4(&c).subnet_count(), 257); // 10.16.0.0 ..= 10.32.0.0 in /20 steps
        assert!(v4(&c).is_compatible("10.16.0.0/20".parse().unwrap()));
        assert!(!v4(&c).is_compatible("10.16.0.0/24".parse().unwrap()));
        assert!(!v4(&c).is_compatible("10.48.0.0/20".parse().unwrap()));
    }

    #[test]
    fn host_bits_are_masked_with_a_warning() {
        let c = parse(r#"{"Network":"10.244.3.7/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.network(), Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn errors_name_field_value_and_rule() {
        let cases = [
            ("", "JSON"),
            ("{}", "Network is missing"),
            (
                r#"{"Network":"10.244.0.0/33"}"#,
                "Network \"10.244.0.0/33\"",
            ),
            (r#"{"Network":"fd00::/64"}"#, "not an IPv4 CIDR"),
            (
                r#"{"Network":"10.244.0.0/29"}"#,
                "smallest useful flannel network is a /28",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#,
                "SubnetLen 31 is too long",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#,
                "SubnetLen 17 is too short",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#,
                "SubnetMin 10.245.0.0 is outside Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.5"}"#,
                "SubnetMax 10.244.3.5 is not on a SubnetLen (/24) boundary: use 10.244.3.0",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"banana"}"#,
                "SubnetMin \"banana\" is not an IPv4 address",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.8.0"}"#,
                "SubnetMin 10.244.9.0 is above SubnetMax",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipip"}}"#,
                "Backend.Type \"ipip\" is not supported by weft: use \"vxlan\", \"host-gw\"",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
                "Backend.VNI 16777216",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":70000}}"#,
                "Backend.Port 70000",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","GBP":true}}"#,
                "Backend.GBP",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56"}"#,
                "udp backend carries IPv4 only",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv4":false}"#,
                "EnableIPv4",
            ),
            (r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#, "JSON"),
        ];
        for (input, want) in cases {
            let e = parse(input).expect_err(input).to_string();
            assert!(e.contains(want), "{input}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn ipv6_disabled_is_accepted() {
        assert!(parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":false,"IPv6Network":"fd00::/56"}"#
        )
        .is_ok());
    }

    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

    /// A config with DUAL's IPv6 fields replaced by `v6` (a JSON fragment).
    fn dual(v6: &str) -> String {
        format!(
            r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,{v6},"Backend":{{"Type":"vxlan"}}}}"#
        )
    }

    fn v6(c: &NetConfig) -> &Ipv6Config {
        c.ipv6.as_ref().expect("an IPv6 side")
    }

    #[test]
    fn dual_stack_defaults_like_flannel() {
        let c = parse(DUAL).unwrap();
        assert_eq!(c.network(), Some("10.244.0.0/16".parse().unwrap()));
        let s = v6(&c);
        assert_eq!(s.network, "fd00:10:244::/56".parse().unwrap());
        assert_eq!(s.subnet_len, 64);
        assert_eq!(s.subnet_min, "fd00:10:244:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            s.subnet_max,
            "fd00:10:244:ff::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(s.subnet_count(), 255);
        assert!(s.is_compatible("fd00:10:244:7::/64".parse().unwrap()));
        assert!(
            !s.is_compatible("fd00:10:244::/64".parse().unwrap()),
            "the first subnet is skipped"
        );
        assert!(!s.is_compatible("fd00:10:244:7::/80".parse().unwrap()));
        assert!(!s.is_compatible("fd00:10:244:7::1/64".parse().unwrap()));
        assert!(!s.is_compatible("fd00:10:245::/64".parse().unwrap()));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // EnableIPv6 false (or absent): no IPv6 side, whatever IPv6Network says.
        let off = parse(&DUAL.replace("\"EnableIPv6\":true", "\"EnableIPv6\":false")).unwrap();
        assert_eq!(off.ipv6, None);
        assert_eq!(
            Ipv6Config::parse(r#"{"Network":"10.244.0.0/16"}"#),
            Ok(None)
        );
        // host-gw runs both families; an explicit EnableIPv4 true is the default.
        assert!(parse(
            &DUAL
                .replace("vxlan", "host-gw")
                .replace("{\"Network\"", "{\"EnableIPv4\":true,\"Network\"")
        )
        .unwrap()
        .ipv6
        .is_some());
    }

    /// IPv6SubnetLen: 0 or unset gives /64 up to a /62 network, then prefix + 2, to a /124.
    #[test]
    fn ipv6_subnet_len_defaults() {
        for (net, len, min, max, count) in [
            ("fd00::/48", 64, "fd00:0:0:1::", "fd00:0:0:ffff::", 65535),
            ("fd00::/62", 64, "fd00:0:0:1::", "fd00:0:0:3::", 3),
            ("fd00::/63", 65, "fd00::8000:0:0:0", "fd00:0:0:1:8000::", 3),
            ("fd00::/124", 126, "fd00::4", "fd00::c", 3),
        ] {
            for len_field in ["", r#""IPv6SubnetLen":0,"#, r#""IPv6SubnetLen":null,"#] {
                let c = parse(&dual(&format!(r#"{len_field}"IPv6Network":"{net}""#))).unwrap();
                let s = v6(&c);
                assert_eq!(s.subnet_len, len, "{net}");
                assert_eq!(s.subnet_min.to_string(), min, "{net}");
                assert_eq!(s.subnet_max.to_string(), max, "{net}");
                assert_eq!(s.subnet_count(), count, "{net}");
            }
        }
        let c = parse(&dual(r#""IPv6Network":"fd00::/48","IPv6SubnetLen":126"#)).unwrap();
        assert_eq!(v6(&c).subnet_len, 126);
        assert_eq!(v6(&c).subnet_count(), (1u128 << 78) - 1);
        // "::" is Go's empty IP6: the default bound.
        let c = parse(&dual(
            r#""IPv6Network":"fd00::/48","IPv6SubnetMin":"::","IPv6SubnetMax":"fd00:0:0:9::""#,
        ))
        .unwrap();
        assert_eq!(v6(&c).subnet_min.to_string(), "fd00:0:0:1::");
        assert_eq!(v6(&c).subnet_count(), 9);
    }

    #[test]
    fn ipv6_host_bits_are_masked_with_a_warning() {
        let c = parse(&dual(r#""IPv6Network":"fd00:10:244::1/56""#)).unwrap();
        assert_eq!(v6(&c).network, "fd00:10:244::/56".parse().unwrap());
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("using fd00:10:244::/56"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn ipv6_errors_name_field_value_and_rule() {
        let cases = [
            (r#""EnableIPv4":true"#, "IPv6Network is missing"),
            (r#""IPv6Network":"::/0""#, "IPv6Network \"::/0\" is the whole address space"),
            (r#""IPv6Network":"8000::/0""#, "whole address space"),
            (r#""IPv6Network":"10.244.0.0/16""#, "IPv6Network \"10.244.0.0/16\" is not an IPv6 CIDR"),
            (r#""IPv6Network":"ff05::/16""#, "overlaps the multicast range ff00::/8"),
            (r#""IPv6Network":"fe80::/9""#, "overlaps the link-local range fe80::/10"),
            (r#""IPv6Network":"fe80::/64""#, "use a unique local range such as \"fd00:10:244::/56\""),
            (r#""IPv6Network":"::/64""#, "overlaps the loopback address ::1/128"),
            (r#""IPv6Network":"::ffff:10.0.0.0/104""#, "IPv4-mapped range"),
            (r#""IPv6Network":"fd00::/125""#, "IPv6Network fd00::/125 is too small: the smallest useful flannel IPv6 network is a /124"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetLen":127"#, "IPv6SubnetLen 127 is too long"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetLen":49"#, "IPv6SubnetLen 49 is too short for IPv6Network fd00::/48: it must be at least 50"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetLen":-1"#, "IPv6SubnetLen"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetMin":"fd01::""#, "IPv6SubnetMin fd01:: is outside IPv6Network fd00::/48"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetMax":"fd00:0:0:5::1""#, "IPv6SubnetMax fd00:0:0:5::1 is not on an IPv6SubnetLen (/64) boundary: use fd00:0:0:5::"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:8::""#, "IPv6SubnetMin fd00:0:0:9:: is above IPv6SubnetMax"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetMin":"""#, "IPv6SubnetMin"),
        ];
        for (fields, want) in cases {
            let input = dual(fields);
            let e = parse(&input).expect_err(&input).to_string();
            assert!(e.contains(want), "{input}: {e:?} lacks {want:?}");
            if !fields.contains("-1") {
                let e = Ipv6Config::parse(&input).expect_err(&input).to_string();
                assert!(e.contains(want), "{input}: {e:?} lacks {want:?}");
            }
        }
        let udp = parse(&DUAL.replace("vxlan", "udp"))
            .unwrap_err()
            .to_string();
        assert!(udp.contains("udp backend carries IPv4 only"), "{udp}");
        // No Backend means udp: refused the same way.
        let e = parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("udp"), "{e}");
        // An IPv6-only network's faults are named.
        let e = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}"#).unwrap_err();
        assert!(e.to_string().contains("IPv6SubnetLen 127"), "{e}");
    }

    /// flannel's pkg/subnet/config_test.go:51 TestIPv6ConfigDefaults (flannel cdf76059),
    /// its input and expectations: an IPv6-only network flanneld takes. Its input has no
    /// Backend, which is udp (IPv4 only), so weft's whole parse refuses it by name.
    #[test]
    fn flannel_test_ipv6_config_defaults() {
        let input = r#"{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false }"#;
        let c = Ipv6Config::parse(input).unwrap().unwrap();
        assert_eq!(c.network.to_string(), "fc00::/48");
        assert_eq!(c.subnet_min.to_string(), "fc00:0:0:1::");
        assert_eq!(c.subnet_max.to_string(), "fc00:0:0:ffff::");
        assert_eq!(c.subnet_len, 64);
        let e = parse(input).unwrap_err().to_string();
        assert!(e.contains("udp backend carries IPv4 only"), "{e}");
        let vxlan = input.replace(" }", r#", "Backend": {"Type": "vxlan"} }"#);
        let c = parse(&vxlan).unwrap();
        assert_eq!(c.ipv4, None);
        assert_eq!(c.networks_text(), "fc00::/48");
        assert_eq!(v6(&c).subnet_max.to_string(), "fc00:0:0:ffff::");
    }

    /// flannel's pkg/subnet/config_test.go:107 TestIPv6ConfigOverrides (flannel cdf76059).
    #[test]
    fn flannel_test_ipv6_config_overrides() {
        let input = r#"{ "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::", "IPv6SubnetMax": "fc00:0:0:f::", "IPv6SubnetLen": 124, "enableIPv4": false }"#;
        let c = Ipv6Config::parse(input).unwrap().unwrap();
        assert_eq!(c.network.to_string(), "fc00::/48");
        assert_eq!(c.subnet_min.to_string(), "fc00:0:0:1::");
        assert_eq!(c.subnet_max.to_string(), "fc00:0:0:f::");
        assert_eq!(c.subnet_len, 124);
        assert!(parse(input).is_err());
    }
}
