//! Which WireGuard devices a node runs and how each reaches each peer, as flanneld v0.28
//! decides it from `Mode` (`pkg/backend/wireguard`: `RegisterNetwork` makes the devices,
//! `handleSubnetEvents` the peers, `selectMode` the family in auto mode). Pure: the
//! backend turns the plans into TUNs and sockets, the dataplane into peers.
//!
//! - `separate` (the default): `flannel-wg` carries IPv4 pods to each peer's
//!   PublicIP:Port, `flannel-wg-v6` IPv6 pods to its [PublicIPv6]:Port of `BackendV6Data`.
//! - `auto`, `ipv4`, `ipv6`: one device, `flannel-wg` on `ListenPort`, carries both
//!   families to one endpoint per peer: its IPv4 or IPv6 address, by the mode (auto:
//!   IPv4 unless the peer's IPv4 is private and both IPv6 addresses are public).
//!
//! One departure, deliberate: the one device listens on `ListenPort` in both families, and
//! flanneld's lease gives `ListenPortV6` as the IPv6 port even then (PR #2200 made peers
//! dial it), so two flanneld nodes in `ipv6` mode with the default ports miss each other.
//! weft publishes the port it listens on, and dials a peer's one device at its
//! `BackendData` port first (where flanneld's device listens), so weft reaches flanneld and
//! flanneld reaches weft whatever ListenPortV6 says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::{WireguardConfig, WireguardMode as Mode};
use crate::lease::Peer;

/// flanneld's device names.
pub const DEVICE: &str = "flannel-wg";
/// The IPv6 device of separate mode.
pub const DEVICE_V6: &str = "flannel-wg-v6";

/// Which underlay family a device reaches its peers over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Each peer's PublicIP.
    V4,
    /// Each peer's PublicIPv6.
    V6,
    /// Per peer, as flanneld's `selectMode` chooses.
    Auto,
}

/// One WireGuard device: its name and port, the pod families it carries, how it reaches
/// peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePlan {
    /// The device's name.
    pub name: &'static str,
    /// The UDP port it listens on (in each underlay family it uses).
    pub port: u16,
    /// It carries IPv4 pods.
    pub v4: bool,
    /// It carries IPv6 pods.
    pub v6: bool,
    /// How it reaches its peers.
    pub reach: Reach,
}

/// The devices for `cfg` in a network with IPv4 and/or IPv6 pods.
pub fn devices(cfg: &WireguardConfig, ipv4: bool, ipv6: bool) -> Vec<DevicePlan> {
    let one = |reach| DevicePlan {
        name: DEVICE,
        port: cfg.listen_port,
        v4: ipv4,
        v6: ipv6,
        reach,
    };
    match cfg.mode {
        Mode::Separate => {
            let mut d = Vec::new();
            if ipv4 {
                d.push(DevicePlan {
                    v6: false,
                    ..one(Reach::V4)
                });
            }
            if ipv6 {
                d.push(DevicePlan {
                    name: DEVICE_V6,
                    port: cfg.listen_port_v6,
                    v4: false,
                    v6: true,
                    reach: Reach::V6,
                });
            }
            d
        }
        Mode::Auto => vec![one(Reach::Auto)],
        Mode::Ipv4 => vec![one(Reach::V4)],
        Mode::Ipv6 => vec![one(Reach::V6)],
    }
}

/// The ports a lease publishes, `BackendData`'s and `BackendV6Data`'s: each device's port
/// (one device: its one port in both).
pub fn lease_ports(cfg: &WireguardConfig) -> (u16, u16) {
    match cfg.mode {
        Mode::Separate => (cfg.listen_port, cfg.listen_port_v6),
        _ => (cfg.listen_port, cfg.listen_port),
    }
}

/// The pod subnets a peer's packets may come from (its allowed IPs on one device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allowed {
    /// Its IPv4 subnet, if the device carries IPv4.
    pub v4: Option<Ipv4Net>,
    /// Its IPv6 subnet, if the device carries IPv6.
    pub v6: Option<Ipv6Net>,
}

impl Allowed {
    /// Whether `src` lies in one of them.
    pub fn contains(&self, src: IpAddr) -> bool {
        match src {
            IpAddr::V4(a) => self.v4.is_some_and(|n| n.contains(&a)),
            IpAddr::V6(a) => self.v6.is_some_and(|n| n.contains(&a)),
        }
    }

    /// As `wg show` lists them.
    pub fn nets(&self) -> Vec<IpNet> {
        let v4 = self.v4.map(IpNet::V4);
        v4.into_iter().chain(self.v6.map(IpNet::V6)).collect()
    }
}

/// This node's public addresses, which auto mode weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// Its PublicIP (`None` on an IPv6-only node).
    pub v4: Option<Ipv4Addr>,
    /// Its PublicIPv6, if it has one.
    pub v6: Option<Ipv6Addr>,
}

/// A peer as one device configures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoute {
    /// Where its handshakes go first (roaming may move it).
    pub endpoint: SocketAddr,
    /// What it may send.
    pub allowed: Allowed,
}

impl DevicePlan {
    /// How this device configures `peer` (a wireguard lease's): `Ok(None)` when the peer
    /// has nothing this device carries (an IPv6-only peer on separate mode's IPv4
    /// device), an error naming what is missing when it cannot be reached.
    pub fn route(&self, peer: &Peer, local: Local) -> Result<Option<PeerRoute>, String> {
        let Some(wg) = peer.wg else {
            return Err("its lease carries no WireGuard key".into());
        };
        let allowed = Allowed {
            v4: peer.subnet.filter(|_| self.v4),
            v6: peer.v6.map(|v| v.subnet).filter(|_| self.v6),
        };
        if allowed.v4.is_none() && allowed.v6.is_none() {
            return Ok(None);
        }
        let v6_public = peer.v6.map(|v| v.public_ip);
        let reach = match self.reach {
            Reach::Auto => select(peer.public_ip, v6_public, local),
            r => r,
        };
        let endpoint = match reach {
            Reach::V6 => {
                let ip = v6_public.ok_or("its lease has no PublicIPv6 to reach it over IPv6")?;
                // One device listens on one port: BackendData's, where flanneld's listens.
                let port = match self.name {
                    DEVICE_V6 => wg.port_v6,
                    _ => wg.port.or(wg.port_v6),
                };
                SocketAddr::new(IpAddr::V6(ip), port.unwrap_or(self.port))
            }
            _ if peer.public_ip.is_unspecified() => {
                return Err("its lease has no PublicIP to reach it over IPv4".into())
            }
            _ => SocketAddr::new(peer.public_ip.into(), wg.port.unwrap_or(self.port)),
        };
        Ok(Some(PeerRoute { endpoint, allowed }))
    }
}

/// flanneld's `selectMode`: IPv4 unless the peer has a PublicIPv6 and IPv4 looks unlikely
/// to connect (its PublicIP private, or ours missing) while IPv6 looks likely (both
/// PublicIPv6 public).
fn select(peer4: Ipv4Addr, peer6: Option<Ipv6Addr>, local: Local) -> Reach {
    let Some(peer6) = peer6 else {
        return Reach::V4;
    };
    if !private4(peer4) && local.v4.is_some() {
        return Reach::V4;
    }
    match local.v6 {
        Some(ours) if !private6(peer6) && !private6(ours) => Reach::V6,
        _ => Reach::V4,
    }
}

/// flannel's `IP4.IsPrivate`: RFC 1918.
fn private4(a: Ipv4Addr) -> bool {
    let [a, b, ..] = a.octets();
    a == 10 || (a == 172 && b & 0xf0 == 16) || (a == 192 && b == 168)
}

/// flannel's `IP6.IsPrivate`: RFC 4193's fc00::/7.
fn private6(a: Ipv6Addr) -> bool {
    a.octets()[0] & 0xfe == 0xfc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, NetConfig};
    use crate::lease::{parse_subnet_key, Lease, LeaseAttrs};

    const KEY: &str = "ZqtbOkJ3Vfs5pbIl3MV3tFV0pBKGS9WyPnMSuYbiZV8=";

    fn cfg(mode: &str) -> WireguardConfig {
        let json = format!(
            r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{{"Type":"wireguard","Mode":"{mode}"}}}}"#
        );
        match NetConfig::parse(&json).unwrap().backend {
            BackendConfig::Wireguard(w) => w,
            other => panic!("{other:?}"),
        }
    }

    /// A peer from a lease in flanneld's words (`newSubnetAttrs`, `MakeSubnetKey`).
    fn peer(key: &str, public4: &str, public6: &str, ports: (u16, u16)) -> Peer {
        let (subnet, ipv6_subnet) = parse_subnet_key(key).unwrap();
        let v6 = if public6.is_empty() {
            "null".to_string()
        } else {
            format!("{public6:?}")
        };
        let value = format!(
            r#"{{"PublicIP":"{public4}","PublicIPv6":{v6},"BackendType":"wireguard","BackendData":{{"PublicKey":"{KEY}","Port":{}}},"BackendV6Data":{{"PublicKey":"{KEY}","Port":{}}}}}"#,
            ports.0, ports.1
        );
        let attrs = LeaseAttrs::from_json(&value).unwrap();
        let lease = Lease {
            subnet,
            ipv6_subnet,
            attrs,
            expiration: None,
        };
        Peer::from_lease(&lease).unwrap()
    }

    fn dual(public4: &str, public6: &str) -> Peer {
        let key = "10.244.7.0-24&fd00:10:244:7::-64";
        peer(key, public4, public6, (51820, 51821))
    }

    const PUBLIC: Local = Local {
        v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        v6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    };

    fn route(mode: &str, dev: usize, p: &Peer, local: Local) -> Option<PeerRoute> {
        devices(&cfg(mode), true, true)[dev]
            .route(p, local)
            .unwrap()
    }

    #[test]
    fn separate_mode_makes_a_device_per_family_each_with_its_own_port_and_subnet() {
        let d = devices(&cfg("separate"), true, true);
        assert_eq!(
            d.iter().map(|d| (d.name, d.port)).collect::<Vec<_>>(),
            [(DEVICE, 51820), (DEVICE_V6, 51821)]
        );
        assert_eq!(lease_ports(&cfg("separate")), (51820, 51821));
        let p = dual("192.0.2.7", "2001:db8::7");
        let v4 = route("separate", 0, &p, PUBLIC).unwrap();
        assert_eq!(v4.endpoint, "192.0.2.7:51820".parse().unwrap());
        assert_eq!(v4.allowed.nets(), ["10.244.7.0/24".parse().unwrap()]);
        let v6 = route("separate", 1, &p, PUBLIC).unwrap();
        assert_eq!(v6.endpoint, "[2001:db8::7]:51821".parse().unwrap());
        assert_eq!(
            v6.allowed.nets(),
            ["fd00:10:244:7::/64".parse::<IpNet>().unwrap()]
        );
        assert!(v6.allowed.contains("fd00:10:244:7::9".parse().unwrap()));
        assert!(!v6.allowed.contains("10.244.7.9".parse().unwrap()));
        // Only IPv6 enabled: only the IPv6 device (flanneld's fix #1601).
        let only6 = devices(&cfg("separate"), false, true);
        assert_eq!(only6.len(), 1);
        assert_eq!(only6[0].name, DEVICE_V6);
    }

    #[test]
    fn one_device_modes_carry_both_families_to_one_endpoint() {
        for mode in ["auto", "ipv4", "ipv6"] {
            let d = devices(&cfg(mode), true, true);
            assert_eq!(d.len(), 1, "{mode}");
            assert_eq!((d[0].name, d[0].port), (DEVICE, 51820), "{mode}");
            assert_eq!(lease_ports(&cfg(mode)), (51820, 51820), "{mode}");
        }
        let p = dual("192.0.2.7", "2001:db8::7");
        let both = ["10.244.7.0/24", "fd00:10:244:7::/64"].map(|n| n.parse::<IpNet>().unwrap());
        let v4 = route("ipv4", 0, &p, PUBLIC).unwrap();
        assert_eq!(v4.endpoint, "192.0.2.7:51820".parse().unwrap());
        assert_eq!(v4.allowed.nets(), both);
        // ipv6: the peer's one device listens on its BackendData port, not ListenPortV6.
        let v6 = route("ipv6", 0, &p, PUBLIC).unwrap();
        assert_eq!(v6.endpoint, "[2001:db8::7]:51820".parse().unwrap());
        assert_eq!(v6.allowed.nets(), both);
        // An IPv6-only lease: BackendV6Data's port.
        let only6 = peer(
            "0.0.0.0-0&fd00:10:244:8::-64",
            "0.0.0.0",
            "2001:db8::8",
            (0, 51830),
        );
        let r = devices(&cfg("ipv6"), false, true)[0].route(&only6, PUBLIC);
        assert_eq!(
            r.unwrap().unwrap().endpoint,
            "[2001:db8::8]:51830".parse().unwrap()
        );
    }

    #[test]
    fn auto_mode_chooses_as_flanneld_select_mode() {
        let ep = |p: &Peer, local| route("auto", 0, p, local).unwrap().endpoint.is_ipv6();
        // A public IPv4 on both sides: IPv4.
        assert!(!ep(&dual("192.0.2.7", "2001:db8::7"), PUBLIC));
        // A private peer IPv4 and public IPv6 on both sides: IPv6.
        assert!(ep(&dual("10.1.2.7", "2001:db8::7"), PUBLIC));
        assert!(ep(&dual("172.20.0.7", "2001:db8::7"), PUBLIC));
        // ... unless either IPv6 is a ULA, or the peer has no PublicIPv6.
        assert!(!ep(&dual("10.1.2.7", "fd12::7"), PUBLIC));
        let ula = Local {
            v6: Some("fd12::1".parse().unwrap()),
            ..PUBLIC
        };
        assert!(!ep(&dual("10.1.2.7", "2001:db8::7"), ula));
        assert!(!ep(&dual("192.168.1.7", ""), PUBLIC));
        // No IPv4 of our own: IPv6 even to a public PublicIP.
        let v6_only = Local { v4: None, ..PUBLIC };
        assert!(ep(&dual("192.0.2.7", "2001:db8::7"), v6_only));
    }

    #[test]
    fn a_peer_that_cannot_be_reached_is_named_and_one_with_nothing_carried_is_skipped() {
        let no6 = dual("192.0.2.7", "");
        let e = devices(&cfg("ipv6"), true, true)[0].route(&no6, PUBLIC);
        assert!(e.unwrap_err().contains("no PublicIPv6"));
        // Without a PublicIPv6 the peer has no IPv6 side: nothing for flannel-wg-v6.
        assert_eq!(route("separate", 1, &no6, PUBLIC), None);
        let only6 = peer(
            "0.0.0.0-0&fd00:10:244:8::-64",
            "0.0.0.0",
            "2001:db8::8",
            (0, 51821),
        );
        assert_eq!(route("separate", 0, &only6, PUBLIC), None);
        let e = devices(&cfg("ipv4"), true, true)[0].route(&only6, PUBLIC);
        assert!(e.unwrap_err().contains("no PublicIP"));
        // A port of 0 is our own, as flanneld reads it.
        let zero = peer(
            "10.244.7.0-24&fd00:10:244:7::-64",
            "192.0.2.7",
            "2001:db8::7",
            (0, 0),
        );
        let r = route("separate", 1, &zero, PUBLIC).unwrap();
        assert_eq!(r.endpoint.port(), 51821);
    }
}
