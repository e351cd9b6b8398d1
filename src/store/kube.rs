//! The kube subnet manager's protocol core (flannel's `pkg/subnet/kube`), pure: Node
//! objects in, leases and patches out. No client here: the I/O half (list/watch of nodes,
//! patches) sits on top of these functions, so what flanneld decides on a node is decided
//! here the same way, and unit-tested with the values flanneld writes.
//!
//! In kube mode a node's lease is its `spec.podCIDR` (or the IPv4 one of `spec.podCIDRs`)
//! plus annotations under a prefix (default `flannel.alpha.coreos.com/`):
//! `kube-subnet-manager: "true"` (the node is up), `backend-type`, `backend-data` (the same
//! JSON string as the etcd lease's BackendData, e.g. `{"VNI":1,"VtepMAC":"…"}`),
//! `public-ip`; `public-ip-overwrite` (set by an operator) replaces the advertised IP and
//! `node-public-ip` is read as `--public-ip` at start.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::SystemTime;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;

use crate::lease::{Lease, LeaseAttrs, VxlanBackendData};

/// flanneld's default `--kube-annotation-prefix`.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

/// How long a kube lease is taken to last: flanneld sets now + 24 h and never renews (the
/// node object is the lease).
pub const KUBE_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The annotation keys for one prefix (flannel's `newAnnotations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// `kube-subnet-manager`: "true" once the node's agent has written its lease.
    pub kube_managed: String,
    /// `backend-data`.
    pub backend_data: String,
    /// `backend-v6-data` (read and left alone: weft is IPv4 only).
    pub backend_v6_data: String,
    /// `backend-type`.
    pub backend_type: String,
    /// `public-ip`.
    pub public_ip: String,
    /// `public-ipv6` (left alone).
    pub public_ipv6: String,
    /// `node-public-ip`: an operator's `--public-ip` for this node.
    pub node_public_ip: String,
    /// `public-ip-overwrite`: an operator's replacement for the advertised IP.
    pub public_ip_overwrite: String,
}

impl Annotations {
    /// The keys under `prefix`, validated as flanneld validates it: an FQDN, then at most
    /// one `/` and a name of lowercase letters, digits, `_` and `-`. A prefix without `/`
    /// gets one; one with a name after `/` gets `-` (`org.com/x` -> `org.com/x-backend-type`).
    pub fn new(prefix: &str) -> Result<Annotations, String> {
        let mut p = prefix.to_string();
        match p.matches('/').count() {
            0 => p.push('/'),
            1 => {}
            _ => {
                return Err(format!(
                    "--kube-annotation-prefix {prefix:?}: at most one '/'"
                ))
            }
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        let valid = regex::Regex::new(r"^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
            .map(|re| re.is_match(&p))
            .unwrap_or(false);
        if !valid {
            return Err(format!(
                "--kube-annotation-prefix {prefix:?}: must be fqdn/[0-9a-z-_]* in lowercase, as {DEFAULT_PREFIX}"
            ));
        }
        let k = |s: &str| format!("{p}{s}");
        Ok(Annotations {
            kube_managed: k("kube-subnet-manager"),
            backend_data: k("backend-data"),
            backend_v6_data: k("backend-v6-data"),
            backend_type: k("backend-type"),
            public_ip: k("public-ip"),
            public_ipv6: k("public-ipv6"),
            node_public_ip: k("node-public-ip"),
            public_ip_overwrite: k("public-ip-overwrite"),
        })
    }
}

fn annotations(node: &Node) -> Option<&BTreeMap<String, String>> {
    node.metadata.annotations.as_ref()
}

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    annotations(node)?
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The node's name, for messages.
pub fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("<unnamed>")
}

/// The node's IPv4 pod CIDR: `spec.podCIDRs` (one or two, dual-stack) or else
/// `spec.podCIDR`, as flanneld reads them; `Ok(None)` when none is assigned yet.
pub fn pod_cidr_v4(node: &Node) -> Result<Option<Ipv4Net>, String> {
    let spec = node.spec.as_ref();
    let cidrs: Vec<&str> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(v) if !v.is_empty() => v.iter().map(String::as_str).collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.as_deref())
            .filter(|c| !c.is_empty())
            .into_iter()
            .collect(),
    };
    if cidrs.len() > 2 {
        return Err(format!(
            "node {}: pod CIDRs {cidrs:?}: at most one IPv4 and one IPv6",
            node_name(node)
        ));
    }
    for c in &cidrs {
        if c.contains(':') {
            continue;
        }
        let net: Ipv4Net = c
            .parse()
            .map_err(|e| format!("node {}: pod CIDR {c:?}: {e}", node_name(node)))?;
        return Ok(Some(net.trunc()));
    }
    Ok(None)
}

/// A node as a lease (flannel's `nodeToLease`): `Ok(None)` while its agent has not
/// written `kube-subnet-manager: "true"` (flanneld ignores such nodes) or it has no IPv4
/// pod CIDR; `Err` for malformed annotations or CIDRs (flanneld logs and skips the node).
pub fn node_lease(
    node: &Node,
    keys: &Annotations,
    now: SystemTime,
) -> Result<Option<Lease>, String> {
    if annotation(node, &keys.kube_managed) != Some("true") {
        return Ok(None);
    }
    let Some(subnet) = pod_cidr_v4(node)? else {
        return Ok(None);
    };
    let name = node_name(node);
    let ip = annotation(node, &keys.public_ip).unwrap_or_default();
    let public_ip: Ipv4Addr = ip.parse().map_err(|_| {
        format!(
            "node {name}: {} {ip:?} is not an IPv4 address",
            keys.public_ip
        )
    })?;
    let backend_data = match annotation(node, &keys.backend_data) {
        None => serde_json::Value::Null,
        Some(s) => serde_json::from_str(s)
            .map_err(|e| format!("node {name}: {} is not JSON: {e}", keys.backend_data))?,
    };
    Ok(Some(Lease {
        subnet,
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: annotation(node, &keys.backend_type)
                .unwrap_or_default()
                .to_string(),
            backend_data,
            backend_v6_data: serde_json::Value::Null,
        },
        expiration: Some(now + KUBE_LEASE_TTL),
    }))
}

/// `backend-data` as flanneld writes it: Go's `json.Marshal` of the backend's data (keys
/// in struct order, no spaces), `null` for a backend without data (udp).
pub fn backend_data_text(attrs: &LeaseAttrs) -> String {
    match attrs.vxlan_data() {
        Ok(VxlanBackendData { vni, vtep_mac }) if attrs.backend_type == "vxlan" => {
            format!(r#"{{"VNI":{vni},"VtepMAC":"{vtep_mac}"}}"#)
        }
        _ => attrs.backend_data.to_string(),
    }
}

/// What our node's annotations must become for `attrs` (flannel's `AcquireLease`): the
/// attributes actually advertised (`public-ip-overwrite` replaces the public IP) and the
/// merge patch of `metadata.annotations` to send, `None` when they already agree (a
/// restart with nothing changed patches nothing).
pub fn own_annotations(
    node: &Node,
    keys: &Annotations,
    attrs: &LeaseAttrs,
) -> (LeaseAttrs, Option<serde_json::Value>) {
    let data = backend_data_text(attrs);
    let overwrite =
        annotation(node, &keys.public_ip_overwrite).and_then(|s| s.parse::<Ipv4Addr>().ok());
    let advertised = overwrite.unwrap_or(attrs.public_ip);
    let mut effective = attrs.clone();
    effective.public_ip = advertised;
    // As flanneld: its udp backend acquires with no BackendType, so it writes "" here.
    let want = [
        (&keys.backend_type, attrs.backend_type.clone()),
        (&keys.backend_data, data),
        (&keys.public_ip, advertised.to_string()),
        (&keys.kube_managed, "true".to_string()),
    ];
    // Go's map index: a missing key reads as "".
    let differs = want.iter().any(|(k, v)| {
        annotations(node)
            .and_then(|a| a.get(k.as_str()))
            .map_or("", String::as_str)
            != v
    });
    if !differs {
        return (effective, None);
    }
    let map: serde_json::Map<String, serde_json::Value> = want
        .into_iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v)))
        .collect();
    (
        effective,
        Some(serde_json::json!({ "metadata": { "annotations": map } })),
    )
}

/// The VTEP MAC our node's `backend-data` holds, to keep across restarts (flannel's
/// `GetStoredMacAddresses`, which reads it back the same way).
pub fn stored_mac(node: &Node, keys: &Annotations) -> Option<crate::wire::MacAddr> {
    let data: VxlanBackendData =
        serde_json::from_str(annotation(node, &keys.backend_data)?).ok()?;
    Some(data.vtep_mac)
}

/// The node's `node-public-ip` annotation, which flanneld takes as `--public-ip`.
pub fn stored_public_ip(node: &Node, keys: &Annotations) -> Option<Ipv4Addr> {
    annotation(node, &keys.node_public_ip)?.parse().ok()
}

/// The status patch that clears `NetworkUnavailable` (flannel's `CompleteLease`), sent as
/// a strategic merge patch to the node's `status` subresource; `now` is RFC 3339.
pub fn network_available_patch(now: &str) -> serde_json::Value {
    serde_json::json!({
        "status": {
            "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": "FlannelIsUp",
                "message": "Flannel is running on this node",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node as kube-apiserver returns it, with the annotations flanneld's vxlan backend
    /// writes (values in the form flannel's `AcquireLease` writes them: backend-data is
    /// Go's json.Marshal of vxlanLeaseAttrs, public-ip is IP.String()).
    fn flanneld_node() -> Node {
        serde_json::from_str(
            r#"{
              "apiVersion": "v1",
              "kind": "Node",
              "metadata": {
                "name": "node-3",
                "uid": "5d7c8e46-2f0e-4b1a-9c55-0a7f2f3c9d11",
                "resourceVersion": "48213",
                "creationTimestamp": "2026-11-20T10:00:00Z",
                "labels": {"kubernetes.io/hostname": "node-3"},
                "annotations": {
                  "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:03:01\"}",
                  "flannel.alpha.coreos.com/backend-type": "vxlan",
                  "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                  "flannel.alpha.coreos.com/public-ip": "192.0.2.3",
                  "node.alpha.kubernetes.io/ttl": "0"
                }
              },
              "spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24"]},
              "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.3"}]}
            }"#,
        )
        .unwrap()
    }

    fn keys() -> Annotations {
        Annotations::new(DEFAULT_PREFIX).unwrap()
    }

    #[test]
    fn prefixes_as_flanneld_builds_and_refuses_them() {
        // flannel's annotations_test.go cases.
        for (prefix, backend_type) in [
            (
                "flannel.alpha.coreos.com",
                "flannel.alpha.coreos.com/backend-type",
            ),
            (
                "flannel.alpha.coreos.com/",
                "flannel.alpha.coreos.com/backend-type",
            ),
            (
                "flannel.alpha.coreos.com/prefix",
                "flannel.alpha.coreos.com/prefix-backend-type",
            ),
            (
                "flannel.alpha.coreos.com/prefix-",
                "flannel.alpha.coreos.com/prefix-backend-type",
            ),
            ("org.com", "org.com/backend-type"),
            ("org9.com", "org9.com/backend-type"),
            ("org.com/9", "org.com/9-backend-type"),
        ] {
            assert_eq!(Annotations::new(prefix).unwrap().backend_type, backend_type);
        }
        for bad in [
            "org",
            "org/",
            "org/prefix",
            "org.COM",
            "org.com/PREFIX",
            "a.b/c/d",
        ] {
            assert!(Annotations::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_flanneld_node_is_a_vxlan_lease() {
        let now = SystemTime::UNIX_EPOCH;
        let l = node_lease(&flanneld_node(), &keys(), now).unwrap().unwrap();
        assert_eq!(l.subnet, "10.244.3.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(l.attrs.public_ip, Ipv4Addr::new(192, 0, 2, 3));
        assert_eq!(l.attrs.backend_type, "vxlan");
        let d = l.attrs.vxlan_data().unwrap();
        assert_eq!(
            (d.vni, d.vtep_mac.to_string().as_str()),
            (1, "0e:00:00:00:03:01")
        );
        assert_eq!(l.expiration, Some(now + KUBE_LEASE_TTL));
        assert_eq!(
            stored_mac(&flanneld_node(), &keys()).unwrap().to_string(),
            "0e:00:00:00:03:01"
        );
    }

    #[test]
    fn nodes_not_up_are_no_lease_and_malformed_ones_an_error() {
        let now = SystemTime::UNIX_EPOCH;
        let mut n = flanneld_node();
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove("flannel.alpha.coreos.com/kube-subnet-manager");
        assert_eq!(node_lease(&n, &keys(), now).unwrap(), None);
        let mut n = flanneld_node();
        n.spec = None;
        assert_eq!(node_lease(&n, &keys(), now).unwrap(), None);
        // flannel's fuzz seeds: none may panic; bad ones are errors.
        for (ip, cidr) in [
            ("not-an-ip", "10.244.1.0/24"),
            ("192.168.0.1", "not-a-cidr"),
            ("::1", "10.244.1.0/24"),
        ] {
            let mut n = flanneld_node();
            let a = n.metadata.annotations.as_mut().unwrap();
            a.insert("flannel.alpha.coreos.com/public-ip".into(), ip.into());
            let s = n.spec.as_mut().unwrap();
            s.pod_cidr = Some(cidr.into());
            s.pod_cidrs = None;
            assert!(node_lease(&n, &keys(), now).is_err(), "{ip} {cidr}");
        }
        // IPv6-only: no IPv4 lease; dual-stack: the IPv4 one.
        let mut n = flanneld_node();
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fc00::/64".into()]);
        assert_eq!(node_lease(&n, &keys(), now).unwrap(), None);
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fc00::/64".into(), "10.244.9.0/24".into()]);
        assert_eq!(
            node_lease(&n, &keys(), now).unwrap().unwrap().subnet,
            "10.244.9.0/24".parse::<Ipv4Net>().unwrap()
        );
    }

    #[test]
    fn own_annotations_patch_only_what_differs_and_honour_the_overwrite() {
        let n = flanneld_node();
        let lease = node_lease(&n, &keys(), SystemTime::UNIX_EPOCH)
            .unwrap()
            .unwrap();
        // A restart with the same attributes: nothing to patch, same bytes as flanneld's.
        let (eff, patch) = own_annotations(&n, &keys(), &lease.attrs);
        assert_eq!(patch, None);
        assert_eq!(eff, lease.attrs);
        // A new MAC: all four keys, backend-data in Go's byte form.
        let mut attrs = lease.attrs.clone();
        attrs.backend_data = serde_json::json!({"VtepMAC": "0e:00:00:00:03:02", "VNI": 1});
        let (_, patch) = own_annotations(&n, &keys(), &attrs);
        let a = &patch.unwrap()["metadata"]["annotations"];
        assert_eq!(
            a["flannel.alpha.coreos.com/backend-data"],
            r#"{"VNI":1,"VtepMAC":"0e:00:00:00:03:02"}"#
        );
        assert_eq!(a["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
        // public-ip-overwrite wins over our address.
        let mut n2 = n.clone();
        n2.metadata.annotations.as_mut().unwrap().insert(
            "flannel.alpha.coreos.com/public-ip-overwrite".into(),
            "203.0.113.7".into(),
        );
        let (eff, patch) = own_annotations(&n2, &keys(), &lease.attrs);
        assert_eq!(eff.public_ip, Ipv4Addr::new(203, 0, 113, 7));
        assert_eq!(
            patch.unwrap()["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"],
            "203.0.113.7"
        );
        // flanneld's udp backend has no type and no data: backend-type "", backend-data
        // "null" (Go's MarshalJSON of a nil RawMessage); read back, a udp lease.
        let udp = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 3));
        let (_, patch) = own_annotations(&n, &keys(), &udp);
        let patch = patch.unwrap();
        let a = &patch["metadata"]["annotations"];
        assert_eq!(a["flannel.alpha.coreos.com/backend-data"], "null");
        assert_eq!(a["flannel.alpha.coreos.com/backend-type"], "");
        let mut n3 = n.clone();
        for (k, v) in a.as_object().unwrap() {
            n3.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(k.clone(), v.as_str().unwrap().into());
        }
        let l = node_lease(&n3, &keys(), SystemTime::UNIX_EPOCH)
            .unwrap()
            .unwrap();
        assert_eq!(l.attrs, udp);
        assert_eq!(own_annotations(&n3, &keys(), &udp).1, None);
    }

    #[test]
    fn the_status_patch_is_flanneld_condition() {
        let p = network_available_patch("2026-11-25T09:00:00Z");
        let c = &p["status"]["conditions"][0];
        assert_eq!(
            (
                c["type"].as_str(),
                c["status"].as_str(),
                c["reason"].as_str()
            ),
            (
                Some("NetworkUnavailable"),
                Some("False"),
                Some("FlannelIsUp")
            )
        );
        // It deserializes as a real NodeCondition.
        let _: k8s_openapi::api::core::v1::NodeCondition =
            serde_json::from_value(c.clone()).unwrap();
    }
}
