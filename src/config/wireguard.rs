//! The wireguard backend's keys, read with flanneld's defaults (`pkg/backend/wireguard`,
//! `RegisterNetwork`): `ListenPort` 51820, `ListenPortV6` 51821, `MTU` (the underlay's),
//! `PSK`, `PersistentKeepaliveInterval` (seconds, 0 for none) and `Mode` (`separate`).

use super::{err, ConfigError, RawBackend};
use crate::wg::Key;

/// flanneld's `overhead`: an IPv6 header (40), UDP (8), WireGuard's type, index and
/// counter (16) and the Poly1305 tag (16). The device MTU and FLANNEL_MTU are the MTU less
/// this, in either family.
pub const OVERHEAD: u32 = 80;

/// Which devices carry which family (flanneld's `Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One device per family: `flannel-wg` over IPv4 to PublicIP:ListenPort,
    /// `flannel-wg-v6` over IPv6 to PublicIPv6:ListenPortV6 (flanneld's default).
    Separate,
    /// One device, `flannel-wg`, for both families; each peer reached over IPv4 unless its
    /// PublicIP is private and its PublicIPv6 is not (flanneld's `selectMode`).
    Auto,
    /// One device, every peer reached over IPv4.
    Ipv4,
    /// One device, every peer reached over IPv6.
    Ipv6,
}

/// The wireguard backend's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireguardConfig {
    /// The UDP port of the IPv4 device (and of the one device outside separate mode).
    pub listen_port: u16,
    /// The UDP port of the IPv6 device in separate mode.
    pub listen_port_v6: u16,
    /// The underlay MTU to take 80 bytes from, when it is not the interface's.
    pub mtu: Option<u32>,
    /// The preshared key every peer shares, if any.
    pub psk: Option<Key>,
    /// Seconds between keepalives to each peer; `None` for none.
    pub keepalive: Option<u16>,
    /// Which devices carry which family.
    pub mode: Mode,
}

/// Reads a port key: flanneld's default when absent; 0 is refused, since flanneld would
/// listen on a random port yet advertise 0, which peers read as "your own port".
fn port(field: &str, v: Option<i64>, default: u16) -> Result<u16, ConfigError> {
    match v {
        None => Ok(default),
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Some(p) => err(format!(
            "Backend.{field} {p} is not a UDP port (1-65535; flanneld's default is {default})"
        )),
    }
}

/// Reads the wireguard keys of `b`, given which families the network has.
pub(super) fn read(b: &RawBackend, ipv4: bool, ipv6: bool) -> Result<WireguardConfig, ConfigError> {
    let listen_port = port("ListenPort", b.listen_port, 51820)?;
    let listen_port_v6 = port("ListenPortV6", b.listen_port_v6, 51821)?;
    let mtu = match b.mtu {
        None | Some(0) => None,
        Some(m) if (68 + OVERHEAD as i64..=65535).contains(&m) => Some(m as u32),
        Some(m) => {
            return err(format!(
                "Backend.MTU {m} is out of range: it is the underlay MTU, 148-65535 (the device gets 80 less)"
            ))
        }
    };
    let psk = match b.psk.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Key::parse(s).or_else(|e| {
            err(format!(
                "Backend.PSK is not a WireGuard key: {e}; make one with `wg genpsk`"
            ))
        })?),
    };
    let keepalive = match b.keepalive {
        None | Some(0) => None,
        Some(s) if (1..=65535).contains(&s) => Some(s as u16),
        Some(s) => {
            return err(format!(
            "Backend.PersistentKeepaliveInterval {s} is out of range: seconds, 0 (none) to 65535"
        ))
        }
    };
    let mode = mode(b.mode.as_deref(), ipv4, ipv6)?;
    if mode == Mode::Separate && ipv4 && ipv6 && listen_port == listen_port_v6 {
        return err(format!("Backend.ListenPortV6 {listen_port_v6} is ListenPort too: in separate mode each family has its own device and port; give them two"));
    }
    Ok(WireguardConfig {
        listen_port,
        listen_port_v6,
        mtu,
        psk,
        keepalive,
        mode,
    })
}

/// Reads `Mode` (compared exactly, as flanneld compares it), refusing one that names a
/// family the network does not have.
fn mode(m: Option<&str>, ipv4: bool, ipv6: bool) -> Result<Mode, ConfigError> {
    let mode = match m {
        None | Some("separate") => Mode::Separate,
        Some("auto") => Mode::Auto,
        Some("ipv4") => Mode::Ipv4,
        Some("ipv6") => Mode::Ipv6,
        Some(other) => {
            return err(format!(
                "Backend.Mode {other:?} is not a mode: use \"separate\" (the default), \"auto\", \"ipv4\" or \"ipv6\""
            ))
        }
    };
    match mode {
        Mode::Ipv6 if !ipv6 => err("Backend.Mode is \"ipv6\" but EnableIPv6 is not true: peers would have no IPv6 endpoint; use \"separate\" or enable IPv6"),
        Mode::Ipv4 if !ipv4 => err("Backend.Mode is \"ipv4\" in an IPv6-only network (EnableIPv4 false): peers have no IPv4 endpoint; use \"separate\" or \"ipv6\""),
        _ => Ok(mode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, NetConfig};

    fn wg(json: &str) -> Result<WireguardConfig, String> {
        match NetConfig::parse(json).map_err(|e| e.to_string())?.backend {
            BackendConfig::Wireguard(w) => Ok(w),
            other => panic!("not wireguard: {other:?}"),
        }
    }

    const V4: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#;
    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard"}}"#;

    /// flanneld's defaults (`RegisterNetwork`'s struct literal), and FLANNEL_MTU = MTU - 80.
    #[test]
    fn flanneld_s_defaults() {
        let w = wg(V4).unwrap();
        assert_eq!(
            w,
            WireguardConfig {
                listen_port: 51820,
                listen_port_v6: 51821,
                mtu: None,
                psk: None,
                keepalive: None,
                mode: Mode::Separate,
            }
        );
        let b = BackendConfig::Wireguard(w);
        assert_eq!(
            (b.pod_mtu(1500), b.type_name(), b.port()),
            (1420, "wireguard", Some(51820))
        );
        assert_eq!(
            BackendConfig::Wireguard(WireguardConfig {
                mtu: Some(9000),
                ..w
            })
            .pod_mtu(1500),
            8920
        );
    }

    /// Every key flanneld's wireguard backend reads, in flannel's documentation's example
    /// spelling (Documentation/backends.md), the PSK made by `wg genpsk`.
    #[test]
    fn every_key_as_flannel_documents_it() {
        let json = DUAL.replace(
            r#""Type":"wireguard""#,
            r#""Type":"wireguard","ListenPort":51830,"ListenPortV6":51831,"MTU":1400,"PSK":"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=","PersistentKeepaliveInterval":25,"Mode":"auto""#,
        );
        let w = wg(&json).unwrap();
        assert_eq!(
            (w.listen_port, w.listen_port_v6, w.mtu),
            (51830, 51831, Some(1400))
        );
        assert_eq!((w.keepalive, w.mode), (Some(25), Mode::Auto));
        assert_eq!(
            w.psk.unwrap().to_base64(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        assert!(NetConfig::parse(&json).unwrap().warnings.is_empty());
    }

    #[test]
    fn bad_values_are_refused_with_the_field_and_the_fix() {
        let with = |base: &str, keys: &str| {
            wg(&base.replace(
                r#""Type":"wireguard""#,
                &format!(r#""Type":"wireguard",{keys}"#),
            ))
            .unwrap_err()
        };
        for (base, keys, want) in [
            (
                V4,
                r#""PSK":"not-a-key""#,
                "Backend.PSK is not a WireGuard key",
            ),
            (V4, r#""PSK":"AAAA""#, "wg genpsk"),
            (
                V4,
                r#""ListenPort":0"#,
                "Backend.ListenPort 0 is not a UDP port",
            ),
            (V4, r#""ListenPortV6":70000"#, "Backend.ListenPortV6 70000"),
            (V4, r#""MTU":100"#, "Backend.MTU 100 is out of range"),
            (
                V4,
                r#""PersistentKeepaliveInterval":-1"#,
                "PersistentKeepaliveInterval -1",
            ),
            (
                V4,
                r#""PersistentKeepaliveInterval":"25s""#,
                "PersistentKeepaliveInterval",
            ),
            (
                V4,
                r#""Mode":"Separate""#,
                "Backend.Mode \"Separate\" is not a mode",
            ),
            (V4, r#""Mode":"ipv6""#, "EnableIPv6 is not true"),
            (
                DUAL,
                r#""ListenPortV6":51820"#,
                "each family has its own device and port",
            ),
        ] {
            let e = with(base, keys);
            assert!(e.contains(want), "{keys}: {e}");
        }
        let v6_only = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard","Mode":"ipv4"}}"#;
        assert!(wg(v6_only).unwrap_err().contains("IPv6-only"));
        // One device for both families needs no second port.
        assert!(wg(&DUAL.replace(
            r#""Type":"wireguard""#,
            r#""Type":"wireguard","Mode":"auto","ListenPortV6":51820"#
        ))
        .is_ok());
    }
}
