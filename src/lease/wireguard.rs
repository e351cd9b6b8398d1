//! The wireguard backend's lease data, as flanneld writes and reads it
//! (`pkg/backend/wireguard`: `wireguardLeaseAttrs`, `newSubnetAttrs`,
//! `handleSubnetEvents`): `BackendData` `{"PublicKey":"<base64>","Port":<ListenPort>}` for
//! the IPv4 side, `BackendV6Data` the same with `ListenPortV6` for the IPv6 side, one key
//! for both.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::{backend_type, LeaseAttrs, LeaseError};
use crate::wg::Key;

/// flannel's `wireguardLeaseAttrs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardBackendData {
    /// The node's public key, base64.
    #[serde(rename = "PublicKey", default)]
    pub public_key: String,
    /// The port the node listens on for this family; 0 from flanneld before ports were
    /// published (the reader then uses its own).
    #[serde(rename = "Port", default)]
    pub port: u16,
}

/// A wireguard peer's side, read from its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireguardPeerData {
    /// Its public key.
    pub public_key: Key,
    /// Its port; `None` when the lease says 0 (use our own, as flanneld does).
    pub port: Option<u16>,
}

impl LeaseAttrs {
    /// A wireguard node's attributes, as flanneld's `newSubnetAttrs` builds them:
    /// `BackendData` when the network has IPv4 (`families.0`), `BackendV6Data` when it has
    /// IPv6 (`families.1`), each with the node's public key and that family's port.
    pub fn wireguard(
        (public_ip, public_ipv6): (Ipv4Addr, Option<Ipv6Addr>),
        (ipv4, ipv6): (bool, bool),
        public_key: &Key,
        (port, port_v6): (u16, u16),
    ) -> LeaseAttrs {
        let data = |port| {
            let d = WireguardBackendData {
                public_key: public_key.to_base64(),
                port,
            };
            // A string and a number: serialization cannot fail.
            serde_json::to_value(d).unwrap_or_default()
        };
        LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type: backend_type::WIREGUARD.into(),
            backend_data: if ipv4 { data(port) } else { Default::default() },
            backend_v6_data: if ipv6 {
                data(port_v6)
            } else {
                Default::default()
            },
        }
    }

    /// The wireguard peer data of the IPv4 side (`v6` false) or the IPv6 side; a lease
    /// without a well-formed public key is refused by name (flanneld logs "failed to parse
    /// publicKey" and configures no peer).
    pub fn wireguard_data(&self, v6: bool) -> Result<WireguardPeerData, LeaseError> {
        let (field, value) = if v6 {
            ("BackendV6Data", &self.backend_v6_data)
        } else {
            ("BackendData", &self.backend_data)
        };
        let bad = |m: String| LeaseError::BackendData(format!("{field}: {m}"));
        if value.is_null() {
            return Err(bad(
                "missing: a wireguard lease carries its node's PublicKey and Port there".into(),
            ));
        }
        let d: WireguardBackendData =
            serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
        if d.public_key.is_empty() {
            return Err(bad(
                "no PublicKey: a wireguard peer cannot be configured without its node's public key"
                    .into(),
            ));
        }
        let public_key = Key::parse(&d.public_key).map_err(|e| {
            bad(format!(
                "PublicKey {:?} is not a WireGuard key: {e}",
                d.public_key
            ))
        })?;
        Ok(WireguardPeerData {
            public_key,
            port: (d.port != 0).then_some(d.port),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    /// flanneld's lease of a dual-stack wireguard node, in the words `json.Marshal` gives
    /// `lease.LeaseAttrs` with two `wireguardLeaseAttrs` (PublicKey, then Port).
    const FLANNELD_DUAL: &str = r#"{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"wireguard","BackendData":{"PublicKey":"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=","Port":51820},"BackendV6Data":{"PublicKey":"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=","Port":51821}}"#;

    #[test]
    fn flanneld_s_lease_reads_and_weft_writes_the_same_words() {
        let a = LeaseAttrs::from_json(FLANNELD_DUAL).unwrap();
        let key = Key::parse(KEY).unwrap();
        assert_eq!(
            a.wireguard_data(false).unwrap(),
            WireguardPeerData {
                public_key: key,
                port: Some(51820)
            }
        );
        assert_eq!(a.wireguard_data(true).unwrap().port, Some(51821));
        let ours = LeaseAttrs::wireguard(
            (
                "192.0.2.3".parse().unwrap(),
                Some("2001:db8::3".parse().unwrap()),
            ),
            (true, true),
            &key,
            (51820, 51821),
        );
        // The same JSON; weft's keys inside BackendData come sorted (Port before PublicKey,
        // as serde_json's map keeps them), which no reader of JSON can tell apart.
        assert_eq!(json(&ours.to_json()), json(FLANNELD_DUAL));
    }

    #[test]
    fn an_ipv4_only_lease_has_no_v6_data_and_port_0_means_ours() {
        let key = Key::parse(KEY).unwrap();
        let a = LeaseAttrs::wireguard(
            ("192.0.2.3".parse().unwrap(), None),
            (true, false),
            &key,
            (51820, 51821),
        );
        assert_eq!(
            json(&a.to_json()),
            json(
                r#"{"PublicIP":"192.0.2.3","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=","Port":51820}}"#
            )
        );
        assert!(a.wireguard_data(true).is_err());
        let old = LeaseAttrs::from_json(&format!(
            r#"{{"PublicIP":"192.0.2.3","BackendType":"wireguard","BackendData":{{"PublicKey":"{KEY}"}}}}"#
        ))
        .unwrap();
        assert_eq!(old.wireguard_data(false).unwrap().port, None);
    }

    #[test]
    fn a_peer_lease_without_a_good_public_key_is_refused_by_name() {
        for (data, want) in [
            (r#"{"Port":51820}"#, "no PublicKey"),
            (r#"{"PublicKey":"","Port":51820}"#, "no PublicKey"),
            (
                r#"{"PublicKey":"abc","Port":51820}"#,
                "is not a WireGuard key",
            ),
            (r#"{"PublicKey":7}"#, "BackendData"),
            ("null", "missing"),
        ] {
            let a = LeaseAttrs::from_json(&format!(
                r#"{{"PublicIP":"192.0.2.3","BackendType":"wireguard","BackendData":{data}}}"#
            ))
            .unwrap();
            let e = a.wireguard_data(false).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("BackendData"), "{data}: {e}");
        }
    }
}
