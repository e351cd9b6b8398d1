//! The kube subnet manager's protocol core (flannel's `pkg/subnet/kube`), pure: Node
//! objects in, leases and patches out. The I/O half below it ([`KubeStore`]: list/watch of
//! nodes through [`super::watch`], patches) sits on top of these functions, so what flanneld
//! decides on a node is decided here the same way, and unit-tested with the values flanneld
//! writes.
//!
//! In kube mode a node's lease is its `spec.podCIDRs` split by family (or `spec.podCIDR`)
//! plus annotations under a prefix (default `flannel.alpha.coreos.com/`):
//! `kube-subnet-manager: "true"` (the node is up), `backend-type`, `backend-data` (the same
//! JSON string as the etcd lease's BackendData, e.g. `{"VNI":1,"VtepMAC":"…"}`),
//! `public-ip`; `public-ip-overwrite` (set by an operator) replaces the advertised IP and
//! `node-public-ip` is read in place of `--public-ip` at start ([`stored_public_ips`]).
//! With `EnableIPv6` the IPv6 side has the same four: `backend-v6-data`, `public-ipv6`,
//! `public-ipv6-overwrite`, `node-public-ipv6`. In an IPv6-only network (`EnableIPv4`
//! false) only the IPv6 side is read and written, as flanneld does ([`Families`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;

use super::kube_node::NodeView;
use super::StoreError;
use crate::config::NetConfig;
use crate::lease::{Lease, LeaseAttrs, SubnetPair, VxlanBackendData};

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
    /// `backend-v6-data`: the IPv6 side's backend data, as `backend-data`.
    pub backend_v6_data: String,
    /// `backend-type`.
    pub backend_type: String,
    /// `public-ip`.
    pub public_ip: String,
    /// `public-ipv6`.
    pub public_ipv6: String,
    /// `node-public-ip`: an operator's `--public-ip` for this node.
    pub node_public_ip: String,
    /// `node-public-ipv6`: an operator's `--public-ipv6` for this node.
    pub node_public_ipv6: String,
    /// `public-ip-overwrite`: an operator's replacement for the advertised IP.
    pub public_ip_overwrite: String,
    /// `public-ipv6-overwrite`: an operator's replacement for the advertised IPv6 address.
    pub public_ipv6_overwrite: String,
}

impl Annotations {
    /// The prefix every key starts with (`flannel.alpha.coreos.com/`).
    pub fn prefix(&self) -> &str {
        self.backend_type
            .strip_suffix("backend-type")
            .unwrap_or(&self.backend_type)
    }

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
            node_public_ipv6: k("node-public-ipv6"),
            public_ip_overwrite: k("public-ip-overwrite"),
            public_ipv6_overwrite: k("public-ipv6-overwrite"),
        })
    }
}

fn annotations(node: &Node) -> Option<&BTreeMap<String, String>> {
    node.metadata.annotations.as_ref()
}

fn annotation<'a>(node: &'a impl NodeView, key: &str) -> Option<&'a str> {
    node.annotation(key).filter(|v| !v.is_empty())
}

/// The node's name, for messages.
pub fn node_name(node: &impl NodeView) -> &str {
    node.name().unwrap_or("<unnamed>")
}

/// The node's pod CIDRs by family, `(IPv4, IPv6)`: `spec.podCIDRs` (one, or two for
/// dual-stack) or else `spec.podCIDR`, as flanneld reads them (the first of a family
/// wins); `(None, None)` when none is assigned yet.
pub fn pod_cidrs(node: &impl NodeView) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), String> {
    let (list, single) = node.cidrs();
    let cidrs: Vec<&str> = match list {
        v if !v.is_empty() => v.iter().map(String::as_str).collect(),
        _ => single.filter(|c| !c.is_empty()).into_iter().collect(),
    };
    if cidrs.len() > 2 {
        return Err(format!(
            "node {}: pod CIDRs {cidrs:?}: at most one IPv4 and one IPv6",
            node_name(node)
        ));
    }
    let (mut v4, mut v6) = (None, None);
    for c in &cidrs {
        let net: ipnet::IpNet = c
            .parse()
            .map_err(|e| format!("node {}: pod CIDR {c:?}: {e}", node_name(node)))?;
        match net.trunc() {
            ipnet::IpNet::V4(n) => v4 = v4.or(Some(n)),
            ipnet::IpNet::V6(n) => v6 = v6.or(Some(n)),
        }
    }
    Ok((v4, v6))
}

/// The address families a network has, which decide what of a node [`node_lease`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    /// The network has IPv4 (`EnableIPv4`, the default).
    pub ipv4: bool,
    /// The network has IPv6 (`EnableIPv6`).
    pub ipv6: bool,
}

impl Families {
    /// IPv4 alone, the default.
    pub const IPV4: Families = Families {
        ipv4: true,
        ipv6: false,
    };
    /// Both families.
    pub const DUAL: Families = Families {
        ipv4: true,
        ipv6: true,
    };
    /// IPv6 alone (`EnableIPv4` false).
    pub const IPV6: Families = Families {
        ipv4: false,
        ipv6: true,
    };

    /// The families of `cfg`.
    pub fn of(cfg: &NetConfig) -> Families {
        Families {
            ipv4: cfg.ipv4.is_some(),
            ipv6: cfg.ipv6.is_some(),
        }
    }
}

/// A node as a lease (flannel's `nodeToLease`): `Ok(None)` while its agent has not
/// written `kube-subnet-manager: "true"` (flanneld ignores such nodes) or it lacks the
/// pod CIDR of the network's first family (IPv4, or IPv6 in an IPv6-only network); `Err`
/// for malformed annotations or CIDRs (flanneld logs and skips the node). Each family of
/// `families` is read as flanneld reads it: IPv4 the pod CIDR, `public-ip` and
/// `backend-data`; IPv6 the pod CIDR, `public-ipv6` and `backend-v6-data`. In a
/// dual-stack network flanneld skips a node that lacks an IPv6 part; weft keeps it as an
/// IPv4-only lease (the absent parts `None`), so its IPv4 pods stay reachable, and refuses
/// only malformed values. An IPv6-only node's lease has flanneld's PublicIP 0.0.0.0.
pub fn node_lease(
    node: &impl NodeView,
    keys: &Annotations,
    families: Families,
    now: SystemTime,
) -> Result<Option<Lease>, String> {
    if annotation(node, &keys.kube_managed) != Some("true") {
        return Ok(None);
    }
    let (v4, v6) = pod_cidrs(node)?;
    let first_family_missing = if families.ipv4 {
        v4.is_none()
    } else {
        v6.is_none()
    };
    if first_family_missing {
        return Ok(None);
    }
    let mut attrs = LeaseAttrs {
        public_ip: Ipv4Addr::UNSPECIFIED,
        public_ipv6: None,
        backend_type: annotation(node, &keys.backend_type)
            .unwrap_or_default()
            .to_string(),
        backend_data: serde_json::Value::Null,
        backend_v6_data: serde_json::Value::Null,
    };
    if families.ipv4 {
        attrs.public_ip = node_public_ip(node, keys)?;
        attrs.backend_data = json_annotation(node, &keys.backend_data)?;
    }
    if families.ipv6 {
        attrs.public_ipv6 = node_public_ipv6(node, keys)?;
        attrs.backend_v6_data = json_annotation(node, &keys.backend_v6_data)?;
        if !families.ipv4 && attrs.public_ipv6.is_none() {
            let key = &keys.public_ipv6;
            return Err(format!(
                "node {}: no {key} annotation in an IPv6-only network",
                node_name(node)
            ));
        }
    }
    Ok(Some(Lease {
        subnet: v4.filter(|_| families.ipv4),
        ipv6_subnet: v6.filter(|_| families.ipv6),
        attrs,
        expiration: Some(now + KUBE_LEASE_TTL),
    }))
}

/// A node's `public-ip` annotation.
fn node_public_ip(node: &impl NodeView, keys: &Annotations) -> Result<Ipv4Addr, String> {
    let ip = annotation(node, &keys.public_ip).unwrap_or_default();
    ip.parse().map_err(|_| {
        format!(
            "node {}: {} {ip:?} is not an IPv4 address",
            node_name(node),
            keys.public_ip
        )
    })
}

/// A node's `public-ipv6` annotation, if it has one.
fn node_public_ipv6(node: &impl NodeView, keys: &Annotations) -> Result<Option<Ipv6Addr>, String> {
    annotation(node, &keys.public_ipv6)
        .map(|ip| {
            ip.parse::<Ipv6Addr>().map_err(|_| {
                format!(
                    "node {}: {} {ip:?} is not an IPv6 address",
                    node_name(node),
                    keys.public_ipv6
                )
            })
        })
        .transpose()
}

/// A JSON annotation (backend data), `null` when absent.
fn json_annotation(node: &impl NodeView, key: &str) -> Result<serde_json::Value, String> {
    match annotation(node, key) {
        None => Ok(serde_json::Value::Null),
        Some(s) => serde_json::from_str(s)
            .map_err(|e| format!("node {}: {key} is not JSON: {e}", node_name(node))),
    }
}

/// Our node's subnets for `cfg` (flannel's `AcquireLease` checks): its IPv4 pod CIDR
/// inside the Network and, with `EnableIPv6`, its IPv6 pod CIDR inside the IPv6Network.
/// No podCIDR yet is [`StoreError::Missing`] (kube-controller-manager assigns it soon);
/// everything that will not fix itself is [`StoreError::Invalid`], naming the fix.
pub fn own_subnets(
    node: &Node,
    cfg: &NetConfig,
    config_path: &Path,
) -> Result<SubnetPair, StoreError> {
    let name = node_name(node);
    let conf = config_path.display();
    let (v4, v6) = pod_cidrs(node).map_err(StoreError::Invalid)?;
    if v4.is_none() && v6.is_none() {
        return Err(StoreError::Missing(format!(
            "node {name} pod cidr not assigned (waiting for kube-controller-manager)"
        )));
    }
    let subnet = match &cfg.ipv4 {
        None => None,
        Some(c4) => {
            let v4 = v4.ok_or_else(|| {
                StoreError::Invalid(format!(
                    "node {name} has no IPv4 podCIDR (only {v6:?}) but the network has IPv4 (EnableIPv4 is not false) in {conf}: give kube-controller-manager an IPv4 --cluster-cidr as well (dual-stack), or set EnableIPv4 false for an IPv6-only network"
                ))
            })?;
            Some(pod_cidr_inside(
                name, v4, c4.network, "podCIDR", "Network", &conf,
            )?)
        }
    };
    let ipv6 = match &cfg.ipv6 {
        None => None,
        Some(c6) => {
            let v6 = v6.ok_or_else(|| {
                StoreError::Invalid(format!(
                    "node {name} has no IPv6 podCIDR (only {v4:?}) but EnableIPv6 is true in {conf}: give kube-controller-manager an IPv6 --cluster-cidr as well (dual-stack), or set EnableIPv6 false"
                ))
            })?;
            Some(pod_cidr_inside(
                name,
                v6,
                c6.network,
                "IPv6 podCIDR",
                "IPv6Network",
                &conf,
            )?)
        }
    };
    Ok((subnet, ipv6))
}

/// `cidr` if it lies inside `network` (a node's pod CIDR must be one of the network's
/// subnets), else the refusal naming both.
fn pod_cidr_inside<N: Copy + std::fmt::Display>(
    name: &str,
    cidr: N,
    network: N,
    what: &str,
    field: &str,
    conf: &dyn std::fmt::Display,
) -> Result<N, StoreError>
where
    ipnet::IpNet: From<N>,
{
    let (c, n) = (ipnet::IpNet::from(cidr), ipnet::IpNet::from(network));
    if n.contains(&c.network()) && c.prefix_len() >= n.prefix_len() {
        return Ok(cidr);
    }
    Err(StoreError::Invalid(format!(
        "node {name}: its {what} {cidr} is outside the {field} {network} of {conf} (kube-controller-manager's --cluster-cidr and net-conf.json must agree)"
    )))
}

/// The leases of `nodes` (see [`node_lease`]); malformed nodes are skipped, as flanneld
/// skips them.
pub(crate) fn node_leases<'a, N: NodeView + 'a>(
    nodes: impl Iterator<Item = &'a N>,
    keys: &Annotations,
    families: Families,
    now: SystemTime,
) -> Vec<Lease> {
    nodes
        .filter_map(|n| readable_lease(n, keys, families, now))
        .collect()
}

/// The node's lease, if it has a readable one (an unreadable one is skipped, logged at
/// debug).
fn readable_lease(
    node: &impl NodeView,
    keys: &Annotations,
    families: Families,
    now: SystemTime,
) -> Option<Lease> {
    node_lease(node, keys, families, now).unwrap_or_else(|e| {
        tracing::debug!("skipping {e}");
        None
    })
}

/// `backend-data` as flanneld writes it: Go's `json.Marshal` of the backend's data (keys
/// in struct order, no spaces), `null` for a backend without data (udp).
pub fn backend_data_text(attrs: &LeaseAttrs) -> String {
    data_text(&attrs.backend_type, &attrs.backend_data)
}

/// `backend-v6-data` as flanneld writes it, in the same form as `backend-data`.
pub fn backend_v6_data_text(attrs: &LeaseAttrs) -> String {
    data_text(&attrs.backend_type, &attrs.backend_v6_data)
}

fn data_text(backend_type: &str, data: &serde_json::Value) -> String {
    match serde_json::from_value::<VxlanBackendData>(data.clone()) {
        Ok(VxlanBackendData { vni, vtep_mac }) if backend_type == "vxlan" => {
            format!(r#"{{"VNI":{vni},"VtepMAC":"{vtep_mac}"}}"#)
        }
        _ => data.to_string(),
    }
}

/// Whether flanneld's `AcquireLease` writes the IPv6 annotations for `attrs`: an IPv6
/// public address, and for vxlan (and wireguard) IPv6 backend data too.
fn writes_v6(attrs: &LeaseAttrs) -> bool {
    attrs.public_ipv6.is_some()
        && match attrs.backend_type.as_str() {
            "vxlan" | "wireguard" => !attrs.backend_v6_data.is_null(),
            "host-gw" | "extension" => true,
            _ => false,
        }
}

/// Whether flanneld's `AcquireLease` writes `backend-data` and `public-ip` for `attrs`:
/// always, but for vxlan (and wireguard) without IPv4 backend data, an IPv6-only node's.
fn writes_v4(attrs: &LeaseAttrs) -> bool {
    match attrs.backend_type.as_str() {
        "vxlan" | "wireguard" => !attrs.backend_data.is_null(),
        _ => true,
    }
}

/// What our node's annotations must become for `attrs` (flannel's `AcquireLease`): the
/// attributes actually advertised (`public-ip-overwrite` replaces the public IP,
/// `public-ipv6-overwrite` the IPv6 one) and the merge patch of `metadata.annotations` to
/// send, `None` when they already agree (a restart with nothing changed patches nothing).
/// `backend-v6-data` and `public-ipv6` are written when flanneld writes them (see
/// [`writes_v6`]) and otherwise left as they are.
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
    // An IPv6-only node's PublicIP stays 0.0.0.0, as every node reads it (node_lease).
    if !attrs.public_ip.is_unspecified() {
        effective.public_ip = advertised;
    }
    // As flanneld: its udp backend acquires with no BackendType, so it writes "" here.
    let mut want = vec![
        (&keys.backend_type, attrs.backend_type.clone()),
        (&keys.kube_managed, "true".to_string()),
    ];
    if writes_v4(attrs) {
        want.push((&keys.backend_data, data));
        want.push((&keys.public_ip, advertised.to_string()));
    }
    if let Some(ip6) = attrs.public_ipv6.filter(|_| writes_v6(attrs)) {
        let overwrite =
            annotation(node, &keys.public_ipv6_overwrite).and_then(|s| s.parse::<Ipv6Addr>().ok());
        let advertised = overwrite.unwrap_or(ip6);
        effective.public_ipv6 = Some(advertised);
        want.push((&keys.backend_v6_data, backend_v6_data_text(attrs)));
        want.push((&keys.public_ipv6, advertised.to_string()));
    }
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

/// The VTEP MAC our node's `backend-v6-data` holds (the IPv6 half of flannel's
/// `GetStoredMacAddresses`).
pub fn stored_mac_v6(node: &Node, keys: &Annotations) -> Option<crate::wire::MacAddr> {
    let data: VxlanBackendData =
        serde_json::from_str(annotation(node, &keys.backend_v6_data)?).ok()?;
    Some(data.vtep_mac)
}

/// The node's `node-public-ip` and `node-public-ipv6` annotations, which flanneld takes in
/// place of `--public-ip` and `--public-ipv6` (its `GetStoredPublicIP`); a value that is
/// not an address of its family is refused by name, as flanneld cannot start on it either.
pub fn stored_public_ips(
    node: &Node,
    keys: &Annotations,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), StoreError> {
    Ok((
        stored_address(node, &keys.node_public_ip, "--public-ip", "IPv4")?,
        stored_address(node, &keys.node_public_ipv6, "--public-ipv6", "IPv6")?,
    ))
}

fn stored_address<A: std::str::FromStr>(
    node: &Node,
    key: &str,
    flag: &str,
    family: &str,
) -> Result<Option<A>, StoreError> {
    let Some(v) = annotation(node, key) else {
        return Ok(None);
    };
    v.parse().map(Some).map_err(|_| {
        StoreError::Invalid(format!(
            "node {}: annotation {key} {v:?} is not an {family} address; it stands for {flag} (flanneld's GetStoredPublicIP): correct or remove it",
            node_name(node)
        ))
    })
}

/// What our node's `backend-data` (and `backend-v6-data`) keep of an earlier run that
/// never finished its annotations: a vxlan lease carrying the stored VTEP MACs.
fn stored_lease(
    node: &Node,
    keys: &Annotations,
    (subnet, ipv6_subnet): SubnetPair,
) -> Option<Lease> {
    let mac = stored_mac(node, keys)?;
    let mut attrs = LeaseAttrs::vxlan(
        Ipv4Addr::UNSPECIFIED,
        VxlanBackendData {
            vni: 1,
            vtep_mac: mac,
        },
    );
    if let Some(vtep_mac) = stored_mac_v6(node, keys) {
        let data = VxlanBackendData { vni: 1, vtep_mac };
        attrs.backend_v6_data = serde_json::to_value(data).unwrap_or_default();
    }
    Some(Lease {
        subnet,
        ipv6_subnet,
        attrs,
        expiration: None,
    })
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

// ---------------------------------------------------------------------------------------
// The I/O half: a `LeaseStore` over the Kubernetes API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};

use super::kube_node::{CompactNode, SlimNode};
use super::watch::{Cache, Watch, RETRY};
use super::{Acquired, LeaseChanges, LeaseRead, LeaseStore, Stored};

/// How long one API call may take before it counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Watches end after this (the server's own limit is higher); a new one follows.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// Nodes per page of a list: a 5,000-node list is ten answers of at most a few MB, never
/// one buffer of the whole cluster.
const PAGE: u32 = 500;

/// flanneld's kube flags.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// `--kube-api-url` (without it: the kubeconfig's, or in-cluster).
    pub api_url: Option<String>,
    /// `--kubeconfig-file`.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-annotation-prefix`.
    pub prefix: String,
    /// `--net-config-path`: net-conf.json, from the manifest's ConfigMap.
    pub net_config_path: PathBuf,
    /// `--set-node-network-unavailable`: clear the node's NetworkUnavailable condition.
    pub set_network_unavailable: bool,
    /// This node (`NODE_NAME`); when empty, the node of the pod `pod` (namespace, name),
    /// as flanneld falls back to `POD_NAMESPACE`/`POD_NAME`.
    pub node_name: String,
    /// Our pod, for finding the node when `node_name` is empty.
    pub pod: Option<(String, String)>,
}

/// Every Kubernetes API call weft makes, as (resource, verb): what the manifest's
/// ClusterRole must grant, no more (`tests/manifest.rs` checks it).
pub const API_CALLS: &[(&str, &str)] = &[
    ("nodes", "get"),
    ("nodes", "list"),
    ("nodes", "watch"),
    ("nodes/status", "patch"),
    ("pods", "get"),
];

/// The nodes as last listed and watched, by name.
type Nodes = BTreeMap<String, CompactNode>;

impl Cache for Nodes {
    fn len(&self) -> usize {
        BTreeMap::len(self)
    }
}

/// The kube subnet manager: leases are nodes (see the module documentation).
pub struct KubeStore {
    rt: tokio::runtime::Runtime,
    api: Api<SlimNode>,
    opts: KubeOptions,
    keys: Annotations,
    url: String,
    watch: Arc<Watch<Nodes>>,
    seen_generation: u64,
    /// The subnets of the lease each node had at the control loop's last read
    /// ([`LeaseStore::read`]), to name those of a node deleted since.
    reported: HashMap<String, SubnetPair>,
    watching: bool,
    /// The node name found through our pod.
    resolved: std::sync::OnceLock<String>,
    /// The network's families, from the config `assigned` was given: which sides of the
    /// peers are read.
    families: Families,
}

fn remote(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote {
        what: format!("kube API: {what}"),
        detail: e.to_string(),
    }
}

async fn deadline<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| remote(what, e)),
        Err(_) => Err(remote(what, format!("no answer within {CALL_TIMEOUT:?}"))),
    }
}

impl KubeStore {
    /// A client for `opts`: `--kube-api-url` alone (no credentials: a proxy or a test
    /// server), a kubeconfig (with the URL overriding its server), or the in-cluster
    /// service account. Connecting is lazy, as with etcd.
    pub fn open(opts: &KubeOptions) -> Result<KubeStore, StoreError> {
        let keys = Annotations::new(&opts.prefix).map_err(StoreError::Invalid)?;
        if opts.node_name.is_empty() && opts.pod.is_none() {
            return Err(StoreError::Invalid(
                "--kube-subnet-mgr needs the node's name: set NODE_NAME (the manifest sets it from spec.nodeName), or POD_NAME and POD_NAMESPACE".into(),
            ));
        }
        let rt = super::watch::runtime("weft-kube")?;
        let config = rt.block_on(async {
            let mut config = match &opts.kubeconfig {
                Some(path) => {
                    let kc = kube::config::Kubeconfig::read_from(path)
                        .map_err(|e| format!("--kubeconfig-file {}: {e}", path.display()))?;
                    kube::Config::from_custom_kubeconfig(kc, &Default::default())
                        .await
                        .map_err(|e| format!("--kubeconfig-file {}: {e}", path.display()))?
                }
                None => match &opts.api_url {
                    Some(_) => {
                        kube::Config::new("http://localhost".parse().map_err(|e| format!("{e}"))?)
                    }
                    None => kube::Config::incluster().map_err(|e| {
                        format!("no --kube-api-url or --kubeconfig-file, and not in a pod: {e}")
                    })?,
                },
            };
            if let Some(url) = &opts.api_url {
                config.cluster_url = url
                    .parse()
                    .map_err(|e| format!("--kube-api-url {url:?}: {e}"))?;
            }
            Ok::<_, String>(config)
        });
        let config = config.map_err(StoreError::Invalid)?;
        let url = config.cluster_url.to_string();
        let client = {
            let _guard = rt.enter();
            kube::Client::try_from(config).map_err(|e| remote("client", e))?
        };
        Ok(KubeStore {
            rt,
            api: Api::all(client),
            opts: opts.clone(),
            keys,
            watch: Watch::new(Nodes::new(), format!("kube API at {url}"), "node(s)"),
            url,
            seen_generation: u64::MAX,
            reported: HashMap::new(),
            watching: false,
            resolved: std::sync::OnceLock::new(),
            families: Families::IPV4,
        })
    }

    fn start_watch(&mut self) {
        if std::mem::replace(&mut self.watching, true) {
            return;
        }
        let prefix = self.keys.prefix().to_string();
        self.rt
            .spawn(watch_loop(self.api.clone(), self.watch.clone(), prefix));
    }

    /// Our node's name: NODE_NAME, else the `spec.nodeName` of our pod (looked up once).
    fn name(&self) -> Result<String, StoreError> {
        if !self.opts.node_name.is_empty() {
            return Ok(self.opts.node_name.clone());
        }
        if let Some(n) = self.resolved.get() {
            return Ok(n.clone());
        }
        let (ns, pod) = self.opts.pod.clone().unwrap_or_default();
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.api.clone().into_client(), &ns);
        let p = self
            .rt
            .block_on(deadline(&format!("get pod {ns}/{pod}"), pods.get(&pod)))?;
        let node = p
            .spec
            .and_then(|s| s.node_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                StoreError::Missing(format!("pod {ns}/{pod} is not scheduled on a node yet"))
            })?;
        tracing::info!("node {node}, from pod {ns}/{pod}");
        Ok(self.resolved.get_or_init(|| node).clone())
    }

    /// Our node, `None` if the API has no such node.
    fn own_node(&self) -> Result<Option<Node>, StoreError> {
        let name = self.name()?;
        let node = self.rt.block_on(deadline(
            &format!("get node {name}"),
            self.api.get_opt(&name),
        ))?;
        Ok(node.map(|n| n.keep_prefixed(self.keys.prefix())))
    }

    fn now_rfc3339() -> String {
        humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
    }

    /// Writes our annotations if they differ (through `nodes/status`, as flanneld does, so
    /// the rights are flanneld's) and returns the lease as advertised.
    fn ensure_own(
        &self,
        node: &Node,
        attrs: &LeaseAttrs,
        (subnet, ipv6_subnet): crate::lease::SubnetPair,
        now: SystemTime,
    ) -> Result<Stored, StoreError> {
        let (effective, patch) = own_annotations(node, &self.keys, attrs);
        if let Some(p) = patch {
            let name = self.name()?;
            self.rt.block_on(deadline(
                &format!("patch node {name} annotations"),
                self.api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(p)),
            ))?;
        }
        Ok(Stored::ours(Lease {
            subnet,
            ipv6_subnet,
            attrs: effective,
            expiration: Some(now + KUBE_LEASE_TTL),
        }))
    }
}

/// Every node, listed in pages of [`PAGE`], each kept as [`SlimNode::keep_prefixed`]
/// makes it; and the list's resourceVersion, to watch from.
async fn list_nodes(api: &Api<SlimNode>, prefix: &str) -> Result<(Nodes, String), StoreError> {
    let (mut nodes, mut token) = (Nodes::new(), None::<String>);
    loop {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = deadline("list nodes", api.list(&params)).await?;
        nodes.extend(page.items.into_iter().filter_map(|n| n.compact(prefix)));
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok((nodes, page.metadata.resource_version.unwrap_or_default())),
        }
    }
}

/// The changes of the nodes `named` (each with its lease now, if it has one) against
/// the subnets `reported` at the last read, which they update: a lease gone, or moved
/// to other subnets, is gone.
fn changes(
    reported: &mut HashMap<String, SubnetPair>,
    named: Vec<(String, Option<Lease>)>,
) -> LeaseChanges {
    let mut ch = LeaseChanges::default();
    for (name, lease) in named {
        let now = lease.as_ref().map(|l| (l.subnet, l.ipv6_subnet));
        if let Some(before) = reported.remove(&name).filter(|b| Some(*b) != now) {
            ch.gone.push(before);
        }
        if let (Some(l), Some(pair)) = (lease, now) {
            reported.insert(name, pair);
            ch.put.push(l);
        }
    }
    ch
}

/// Lists the nodes, then watches from the list's resourceVersion; a 410 (or any break)
/// lists again. While the API server is away the cache keeps the last nodes.
async fn watch_loop(api: Api<SlimNode>, watch: Arc<Watch<Nodes>>, prefix: String) {
    let mut rv: Option<String> = None;
    loop {
        let from = match rv.take() {
            Some(from) => from,
            None => match list_nodes(&api, &prefix).await {
                Ok((nodes, from)) => {
                    watch.listed(|c| {
                        *c = nodes;
                        true
                    });
                    from
                }
                Err(e) => {
                    watch.offline(&e.to_string());
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        rv = follow(&api, &watch, (from, &prefix)).await;
    }
}

/// Follows one watch from `from` into the cache: the resourceVersion to watch again from
/// when the server ends it, or `None` to list again.
async fn follow(
    api: &Api<SlimNode>,
    watch: &Watch<Nodes>,
    (from, prefix): (String, &str),
) -> Option<String> {
    let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    let mut stream = match deadline("watch nodes", api.watch(&params, &from)).await {
        Ok(s) => s.boxed(),
        Err(e) => {
            watch.offline(&e.to_string());
            tokio::time::sleep(RETRY).await;
            return None;
        }
    };
    let mut rv = from;
    loop {
        match stream.try_next().await {
            Ok(Some(WatchEvent::Added(n) | WatchEvent::Modified(n))) => {
                rv = n.0.metadata.resource_version.clone().unwrap_or(rv);
                if let Some((name, n)) = n.compact(prefix) {
                    // kubelet's status updates change nothing weft keeps: not a change.
                    watch.update(|c| match c.get(&name) == Some(&n) {
                        true => Vec::new(),
                        false => {
                            c.insert(name.clone(), n);
                            vec![name]
                        }
                    });
                }
            }
            Ok(Some(WatchEvent::Deleted(n))) => {
                let n = n.0;
                rv = n.metadata.resource_version.clone().unwrap_or(rv);
                if let Some(name) = n.metadata.name.as_deref() {
                    watch.update(|c| match c.remove(name) {
                        Some(_) => vec![name.to_string()],
                        None => Vec::new(),
                    });
                }
            }
            Ok(Some(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
            Ok(Some(WatchEvent::Error(e))) => {
                if e.code == 410 {
                    tracing::info!(reason = %e.message, "kube watch expired; listing the nodes again");
                } else {
                    tracing::warn!(code = e.code, reason = %e.message, "kube watch error; listing again");
                }
                return None;
            }
            // The server ended the watch (its timeout): watch again from rv.
            Ok(None) => return Some(rv),
            Err(e) => {
                watch.offline(&e.to_string());
                tokio::time::sleep(RETRY).await;
                return None;
            }
        }
    }
}

impl LeaseStore for KubeStore {
    fn config(&self) -> Result<NetConfig, StoreError> {
        let path = &self.opts.net_config_path;
        let text = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        NetConfig::parse(&text).map_err(|source| StoreError::Config {
            path: path.clone(),
            source,
        })
    }

    fn leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        self.start_watch();
        let now = SystemTime::now();
        let (keys, families) = (&self.keys, self.families);
        let read = |c: &Nodes| node_leases(c.values(), keys, families, now);
        // Before the watch's first listing, wait for it rather than list twice.
        if self.watch.generation().is_none() {
            self.watch.wait_change(0, CALL_TIMEOUT);
        }
        if let Some((leases, generation)) = self.watch.synced(read) {
            self.seen_generation = generation;
            return Ok(leases);
        }
        // The watch has not listed yet: list directly.
        let prefix = self.keys.prefix();
        let (nodes, _) = self.rt.block_on(list_nodes(&self.api, prefix))?;
        Ok(read(&nodes))
    }

    fn list(&mut self) -> Result<Vec<Stored>, StoreError> {
        Ok(self.leases()?.into_iter().map(Stored::ours).collect())
    }

    fn read(&mut self, since: Option<u64>) -> Result<(LeaseRead, Option<u64>), StoreError> {
        self.start_watch();
        if self.watch.generation().is_none() {
            self.watch.wait_change(0, CALL_TIMEOUT);
        }
        let (keys, families, now) = (&self.keys, self.families, SystemTime::now());
        let named = |c: &Nodes, names: &BTreeSet<&str>| -> Vec<(String, Option<Lease>)> {
            let lease = |n: &str| readable_lease(c.get(n)?, keys, families, now);
            names.iter().map(|n| (n.to_string(), lease(n))).collect()
        };
        if let Some((named, g)) = since.and_then(|s| self.watch.changed_since(s, named)) {
            self.seen_generation = g;
            return Ok((
                LeaseRead::Changed(changes(&mut self.reported, named)),
                Some(g),
            ));
        }
        let all = |c: &Nodes| -> Vec<(String, Lease)> {
            let lease =
                |(n, node)| Some((String::clone(n), readable_lease(node, keys, families, now)?));
            c.iter().filter_map(lease).collect()
        };
        let Some((named, g)) = self.watch.synced(all) else {
            self.reported.clear();
            return Ok((LeaseRead::All(self.leases()?), None));
        };
        self.seen_generation = g;
        self.reported = (named.iter())
            .map(|(n, l)| (n.clone(), (l.subnet, l.ipv6_subnet)))
            .collect();
        Ok((
            LeaseRead::All(named.into_iter().map(|(_, l)| l).collect()),
            Some(g),
        ))
    }

    fn create(&mut self, _lease: &Lease) -> Result<Option<Stored>, StoreError> {
        Err(StoreError::Missing(
            "the kube subnet manager does not allocate: the node's podCIDR is its lease".into(),
        ))
    }

    /// Renewal: our annotations are made right again (flanneld never renews in kube
    /// mode; weft also repairs annotations someone removed). Our node gone: revoked.
    fn update(&mut self, lease: &Lease, _expect: &str) -> Result<Option<Stored>, StoreError> {
        let Some(node) = self.own_node()? else {
            return Ok(None);
        };
        let now = SystemTime::now();
        let subnets = (lease.subnet, lease.ipv6_subnet);
        self.ensure_own(&node, &lease.attrs, subnets, now).map(Some)
    }

    fn remove(&mut self, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }

    fn stored_public_ips(&self) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), StoreError> {
        match self.own_node()? {
            Some(node) => stored_public_ips(&node, &self.keys),
            None => Ok((None, None)),
        }
    }

    fn assigned(
        &mut self,
        cfg: &NetConfig,
        attrs: &dyn Fn(Option<&Lease>) -> LeaseAttrs,
        now: SystemTime,
    ) -> Option<Result<Acquired, StoreError>> {
        self.families = Families::of(cfg);
        Some((|| {
            let name = self.name()?;
            let node = self.own_node()?.ok_or_else(|| {
                StoreError::Missing(format!(
                    "node {name} is not registered (yet) in the Kubernetes API"
                ))
            })?;
            // A podCIDR that does not parse or fit will not fix itself: refused, not retried.
            let subnets = own_subnets(&node, cfg, &self.opts.net_config_path)?;
            // The VTEP MACs survive restarts: our previous annotations are our lease.
            let previous = node_lease(&node, &self.keys, self.families, now)
                .ok()
                .flatten()
                .or_else(|| stored_lease(&node, &self.keys, subnets));
            let stored = self.ensure_own(&node, &attrs(previous.as_ref()), subnets, now)?;
            if self.opts.set_network_unavailable {
                let p = network_available_patch(&Self::now_rfc3339());
                self.rt.block_on(deadline(
                    &format!("patch node {name} status"),
                    self.api
                        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(p)),
                ))?;
            }
            Ok(Acquired {
                stored,
                source: crate::lease::alloc::Source::Assigned,
                attempts: 1,
            })
        })())
    }

    fn wait_change(&mut self, timeout: Duration) {
        self.start_watch();
        self.watch.wait_change(self.seen_generation, timeout);
    }

    fn describe(&self) -> String {
        format!(
            "the Kubernetes API at {} (node {})",
            self.url,
            self.resolved
                .get()
                .cloned()
                .unwrap_or_else(|| self.opts.node_name.clone())
        )
    }

    fn generation(&self) -> Option<u64> {
        self.watch.generation()
    }

    fn reachable(&self) -> bool {
        self.watch.reachable()
    }
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
    fn a_node_changed_since_the_last_read_is_put_and_a_deleted_one_named_gone() {
        let now = SystemTime::UNIX_EPOCH;
        let read = |n: &Node| node_lease(n, &keys(), Families::IPV4, now).unwrap();
        let first = read(&flanneld_node()).unwrap();
        let pair = |l: &Lease| (l.subnet, l.ipv6_subnet);
        let mut reported = HashMap::new();
        let name = || "node-3".to_string();
        let ch = changes(&mut reported, vec![(name(), Some(first.clone()))]);
        assert_eq!((ch.put, ch.gone), (vec![first.clone()], vec![]));
        // The node got another podCIDR: the old subnets are gone, the new lease put.
        let mut moved = flanneld_node();
        moved.spec.as_mut().unwrap().pod_cidr = Some("10.244.9.0/24".into());
        moved.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.9.0/24".into()]);
        let second = read(&moved).unwrap();
        let ch = changes(&mut reported, vec![(name(), Some(second.clone()))]);
        assert_eq!(
            (ch.put, ch.gone),
            (vec![second.clone()], vec![pair(&first)])
        );
        // Deleted (or no longer a flannel node): gone by the subnets last reported.
        let ch = changes(&mut reported, vec![(name(), None)]);
        assert_eq!((ch.put, ch.gone), (vec![], vec![pair(&second)]));
        // A node never reported and still without a lease changes nothing.
        let ch = changes(&mut reported, vec![("other".into(), None)]);
        assert_eq!(ch, LeaseChanges::default());
        assert!(reported.is_empty());
    }

    #[test]
    fn a_flanneld_node_is_a_vxlan_lease() {
        let now = SystemTime::UNIX_EPOCH;
        let l = node_lease(&flanneld_node(), &keys(), Families::IPV4, now)
            .unwrap()
            .unwrap();
        assert_eq!(l.subnet, "10.244.3.0/24".parse::<Ipv4Net>().ok());
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
        assert_eq!(node_lease(&n, &keys(), Families::IPV4, now).unwrap(), None);
        let mut n = flanneld_node();
        n.spec = None;
        assert_eq!(node_lease(&n, &keys(), Families::IPV4, now).unwrap(), None);
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
            assert!(
                node_lease(&n, &keys(), Families::IPV4, now).is_err(),
                "{ip} {cidr}"
            );
        }
        // IPv6-only: no IPv4 lease; dual-stack: the IPv4 one.
        let mut n = flanneld_node();
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fc00::/64".into()]);
        assert_eq!(node_lease(&n, &keys(), Families::IPV4, now).unwrap(), None);
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fc00::/64".into(), "10.244.9.0/24".into()]);
        assert_eq!(
            node_lease(&n, &keys(), Families::IPV4, now)
                .unwrap()
                .unwrap()
                .subnet,
            "10.244.9.0/24".parse::<Ipv4Net>().ok()
        );
    }

    #[test]
    fn own_annotations_patch_only_what_differs_and_honour_the_overwrite() {
        let n = flanneld_node();
        let lease = node_lease(&n, &keys(), Families::IPV4, SystemTime::UNIX_EPOCH)
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
        let l = node_lease(&n3, &keys(), Families::IPV4, SystemTime::UNIX_EPOCH)
            .unwrap()
            .unwrap();
        assert_eq!(l.attrs, udp);
        assert!(!l.attrs.takes_super_datagrams());
        assert_eq!(own_annotations(&n3, &keys(), &udp).1, None);
        // weft's udp node adds its mark in backend-data (backend-type stays ""), and reads
        // back as a node that takes super-datagrams.
        let weft_udp = LeaseAttrs::weft_udp(Ipv4Addr::new(192, 0, 2, 3));
        let patch = own_annotations(&n3, &keys(), &weft_udp).1.unwrap();
        let a = &patch["metadata"]["annotations"];
        assert_eq!(
            a["flannel.alpha.coreos.com/backend-data"],
            r#"{"SuperDatagrams":true}"#
        );
        assert_eq!(a["flannel.alpha.coreos.com/backend-type"], "");
        for (k, v) in a.as_object().unwrap() {
            let annotations = n3.metadata.annotations.as_mut().unwrap();
            annotations.insert(k.clone(), v.as_str().unwrap().into());
        }
        let l = node_lease(&n3, &keys(), Families::IPV4, SystemTime::UNIX_EPOCH)
            .unwrap()
            .unwrap();
        assert_eq!(l.attrs, weft_udp);
        assert!(l.attrs.takes_super_datagrams());
        assert_eq!(own_annotations(&n3, &keys(), &weft_udp).1, None);
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

    /// A dual-stack node as flanneld's vxlan backend leaves it: `spec.podCIDRs` with both
    /// families (as kube-controller-manager assigns them), and the annotations flannel's
    /// `AcquireLease` (pkg/subnet/kube/kube.go) writes from vxlan's `newSubnetAttrs`
    /// (pkg/backend/vxlan/vxlan.go): `backend-v6-data` is Go's json.Marshal of
    /// vxlanLeaseAttrs for the flannel-v6.1 device, `public-ipv6` is `IP6.String()`.
    fn dual_stack_node() -> Node {
        serde_json::from_str(
            r#"{
              "apiVersion": "v1",
              "kind": "Node",
              "metadata": {
                "name": "node-4",
                "annotations": {
                  "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:04:01\"}",
                  "flannel.alpha.coreos.com/backend-type": "vxlan",
                  "flannel.alpha.coreos.com/backend-v6-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:04:02\"}",
                  "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                  "flannel.alpha.coreos.com/public-ip": "192.0.2.4",
                  "flannel.alpha.coreos.com/public-ipv6": "2001:db8::4"
                }
              },
              "spec": {"podCIDR": "10.244.4.0/24", "podCIDRs": ["10.244.4.0/24", "fc00:0:0:4::/64"]}
            }"#,
        )
        .unwrap()
    }

    fn set(n: &mut Node, key: &str, value: Option<&str>) {
        let a = n.metadata.annotations.as_mut().unwrap();
        let key = format!("flannel.alpha.coreos.com/{key}");
        match value {
            Some(v) => a.insert(key, v.into()),
            None => a.remove(&key),
        };
    }

    fn dual_cfg() -> NetConfig {
        let mut c = NetConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        c.ipv6 = Some(crate::config::Ipv6Config {
            network: "fc00::/48".parse().unwrap(),
            subnet_len: 64,
            subnet_min: "fc00:0:0:1::".parse().unwrap(),
            subnet_max: "fc00:0:0:ffff::".parse().unwrap(),
        });
        c
    }

    #[test]
    fn a_dual_stack_flanneld_node_is_a_dual_stack_lease() {
        let now = SystemTime::UNIX_EPOCH;
        let l = node_lease(&dual_stack_node(), &keys(), Families::DUAL, now)
            .unwrap()
            .unwrap();
        assert_eq!(l.key(), "10.244.4.0-24&fc00:0:0:4::-64");
        assert_eq!(l.attrs.public_ipv6, Some("2001:db8::4".parse().unwrap()));
        let d6: VxlanBackendData = serde_json::from_value(l.attrs.backend_v6_data.clone()).unwrap();
        assert_eq!(d6.vtep_mac.to_string(), "0e:00:00:00:04:02");
        assert_eq!(
            l.attrs.vxlan_data().unwrap().vtep_mac.to_string(),
            "0e:00:00:00:04:01"
        );
        // Without EnableIPv6 the IPv6 side is not read, as flanneld's nodeToLease.
        let l4 = node_lease(&dual_stack_node(), &keys(), Families::IPV4, now)
            .unwrap()
            .unwrap();
        assert_eq!(
            (l4.key().as_str(), l4.attrs.public_ipv6),
            ("10.244.4.0-24", None)
        );
        assert!(l4.attrs.backend_v6_data.is_null());
        // The IPv6 CIDR first in podCIDRs, or alone in podCIDR for an IPv6 peer: by family.
        let mut n = dual_stack_node();
        n.spec.as_mut().unwrap().pod_cidrs =
            Some(vec!["fc00:0:0:4::/64".into(), "10.244.4.0/24".into()]);
        assert_eq!(
            node_lease(&n, &keys(), Families::DUAL, now).unwrap(),
            Some(l.clone())
        );
        // A malformed public-ipv6 is an error with EnableIPv6 (flanneld: ParseIP6 fails),
        // and nobody's business without it.
        for bad in ["not-an-ip", "192.0.2.4"] {
            let mut n = dual_stack_node();
            set(&mut n, "public-ipv6", Some(bad));
            let e = node_lease(&n, &keys(), Families::DUAL, now).unwrap_err();
            assert!(
                e.contains("public-ipv6") && e.contains("not an IPv6 address"),
                "{e}"
            );
            assert!(node_lease(&n, &keys(), Families::IPV4, now).is_ok());
        }
        let mut n = dual_stack_node();
        set(&mut n, "backend-v6-data", Some("{"));
        assert!(node_lease(&n, &keys(), Families::DUAL, now).is_err());
        // A peer without an IPv6 side yet (flanneld would skip it whole): its IPv4 lease.
        let mut n = dual_stack_node();
        set(&mut n, "public-ipv6", None);
        set(&mut n, "backend-v6-data", None);
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.4.0/24".into()]);
        let l = node_lease(&n, &keys(), Families::DUAL, now)
            .unwrap()
            .unwrap();
        assert_eq!((l.ipv6_subnet, l.attrs.public_ipv6), (None, None));
        assert!(l.attrs.backend_v6_data.is_null());
        assert_eq!(
            stored_mac_v6(&dual_stack_node(), &keys())
                .unwrap()
                .to_string(),
            "0e:00:00:00:04:02"
        );
    }

    #[test]
    fn own_annotations_write_the_ipv6_pair_as_flanneld() {
        let n = dual_stack_node();
        let lease = node_lease(&n, &keys(), Families::DUAL, SystemTime::UNIX_EPOCH)
            .unwrap()
            .unwrap();
        // What flanneld wrote, read back and written again: nothing to patch.
        let (eff, patch) = own_annotations(&n, &keys(), &lease.attrs);
        assert_eq!((eff, patch), (lease.attrs.clone(), None));
        // A new IPv6 VTEP MAC: backend-v6-data in Go's byte form, beside the IPv4 keys.
        let mut attrs = lease.attrs.clone();
        attrs.backend_v6_data = serde_json::json!({"VtepMAC": "0e:00:00:00:04:03", "VNI": 1});
        let patch = own_annotations(&n, &keys(), &attrs).1.unwrap();
        let a = &patch["metadata"]["annotations"];
        assert_eq!(
            a["flannel.alpha.coreos.com/backend-v6-data"],
            r#"{"VNI":1,"VtepMAC":"0e:00:00:00:04:03"}"#
        );
        assert_eq!(a["flannel.alpha.coreos.com/public-ipv6"], "2001:db8::4");
        assert_eq!(a["flannel.alpha.coreos.com/public-ip"], "192.0.2.4");
        // public-ipv6-overwrite wins over our IPv6 address, as public-ip-overwrite does.
        let mut n2 = n.clone();
        set(&mut n2, "public-ipv6-overwrite", Some("2001:db8:ffff::4"));
        let (eff, patch) = own_annotations(&n2, &keys(), &lease.attrs);
        assert_eq!(eff.public_ipv6, Some("2001:db8:ffff::4".parse().unwrap()));
        assert_eq!(
            patch.unwrap()["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ipv6"],
            "2001:db8:ffff::4"
        );
        // host-gw writes public-ipv6 with its (null) v6 data; vxlan without IPv6 data and
        // udp write no IPv6 keys at all (flanneld's conditions in AcquireLease).
        let mut hostgw = lease.attrs.clone();
        hostgw.backend_type = "host-gw".into();
        hostgw.backend_data = serde_json::Value::Null;
        hostgw.backend_v6_data = serde_json::Value::Null;
        let patch = own_annotations(&n, &keys(), &hostgw).1.unwrap();
        let a = &patch["metadata"]["annotations"];
        assert_eq!(a["flannel.alpha.coreos.com/backend-v6-data"], "null");
        assert_eq!(a["flannel.alpha.coreos.com/public-ipv6"], "2001:db8::4");
        let mut v4only = lease.attrs.clone();
        v4only.backend_v6_data = serde_json::Value::Null;
        let mut n3 = n.clone();
        set(
            &mut n3,
            "backend-data",
            Some(r#"{"VNI":1,"VtepMAC":"0e:00:00:00:04:09"}"#),
        );
        let patch = own_annotations(&n3, &keys(), &v4only).1.unwrap();
        let a = patch["metadata"]["annotations"].as_object().unwrap();
        assert!(!a.contains_key("flannel.alpha.coreos.com/backend-v6-data"));
        assert!(!a.contains_key("flannel.alpha.coreos.com/public-ipv6"));
        let mut udp = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 4));
        udp.public_ipv6 = Some("2001:db8::4".parse().unwrap());
        let patch = own_annotations(&n, &keys(), &udp).1.unwrap();
        let a = patch["metadata"]["annotations"].as_object().unwrap();
        assert!(!a.contains_key("flannel.alpha.coreos.com/public-ipv6"));
    }

    #[test]
    fn own_subnets_by_family_and_named_refusals() {
        let conf = Path::new("/etc/kube-flannel/net-conf.json");
        let c4 = NetConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let ds = dual_cfg();
        let n = dual_stack_node();
        let v4: Ipv4Net = "10.244.4.0/24".parse().unwrap();
        let v6: Ipv6Net = "fc00:0:0:4::/64".parse().unwrap();
        assert_eq!(own_subnets(&n, &ds, conf).unwrap(), (Some(v4), Some(v6)));
        assert_eq!(own_subnets(&n, &c4, conf).unwrap(), (Some(v4), None));
        let with_cidrs = |cidrs: &[&str]| {
            let mut n = dual_stack_node();
            let s = n.spec.as_mut().unwrap();
            s.pod_cidrs = Some(cidrs.iter().map(|c| c.to_string()).collect());
            s.pod_cidr = cidrs.first().map(|c| c.to_string());
            n
        };
        let msg = |n: &Node, c: &NetConfig| own_subnets(n, c, conf).unwrap_err().to_string();
        // IPv6-only: the IPv6 podCIDR alone, whatever else the node has; a node with
        // no IPv4 podCIDR in a network with IPv4 is refused, named.
        let mut v6only = ds.clone();
        v6only.ipv4 = None;
        let only6 = with_cidrs(&["fc00:0:0:4::/64"]);
        assert_eq!(
            own_subnets(&only6, &v6only, conf).unwrap(),
            (None, Some(v6))
        );
        assert_eq!(own_subnets(&n, &v6only, conf).unwrap(), (None, Some(v6)));
        let e = msg(&only6, &ds);
        assert!(
            e.contains("has no IPv4 podCIDR") && e.contains("EnableIPv4 false"),
            "{e}"
        );
        let e = msg(&with_cidrs(&["10.244.4.0/24"]), &v6only);
        assert!(e.contains("has no IPv6 podCIDR"), "{e}");
        // EnableIPv6 but no IPv6 podCIDR; an IPv6 podCIDR outside IPv6Network.
        let e = msg(&with_cidrs(&["10.244.4.0/24"]), &ds);
        assert!(
            e.contains("has no IPv6 podCIDR") && e.contains("EnableIPv6"),
            "{e}"
        );
        let e = msg(&with_cidrs(&["10.244.4.0/24", "fd00:0:0:4::/64"]), &ds);
        assert!(e.contains("outside the IPv6Network fc00::/48"), "{e}");
        let e = msg(&with_cidrs(&["10.244.4.0/24", "fc00::/40"]), &ds);
        assert!(e.contains("outside the IPv6Network"), "{e}");
        // Nothing assigned yet: transient.
        let e = own_subnets(&with_cidrs(&[]), &ds, conf).unwrap_err();
        assert!(e.is_transient(), "{e}");
    }

    /// flanneld's `GetStoredPublicIP`: the `node-public-ip(v6)` annotations an operator
    /// sets, in flanneld's key names; a value of the wrong family is named, not ignored.
    #[test]
    fn stored_public_ips_are_read_from_flanneds_annotations() {
        let mut n = dual_stack_node();
        assert_eq!(stored_public_ips(&n, &keys()).unwrap(), (None, None));
        set(&mut n, "node-public-ip", Some("198.51.100.9"));
        set(&mut n, "node-public-ipv6", Some("2001:db8::9"));
        assert_eq!(
            stored_public_ips(&n, &keys()).unwrap(),
            (
                Some("198.51.100.9".parse().unwrap()),
                Some("2001:db8::9".parse().unwrap())
            )
        );
        for (key, bad, flag) in [
            ("node-public-ip", "2001:db8::9", "--public-ip"),
            ("node-public-ipv6", "198.51.100.9", "--public-ipv6"),
        ] {
            let mut n = dual_stack_node();
            set(&mut n, key, Some(bad));
            let e = stored_public_ips(&n, &keys()).unwrap_err().to_string();
            assert!(
                e.contains(&format!("flannel.alpha.coreos.com/{key}")) && e.contains(flag),
                "{e}"
            );
        }
    }

    /// An IPv6-only node as flanneld v0.28's vxlan backend annotates it (pkg/subnet/kube
    /// AcquireLease: no backend-data and no public-ip, its IPv4 BackendData being null).
    fn flanneld_v6_only_node() -> Node {
        serde_json::from_str(
            r#"{
              "apiVersion": "v1",
              "kind": "Node",
              "metadata": {
                "name": "node-6",
                "annotations": {
                  "flannel.alpha.coreos.com/backend-type": "vxlan",
                  "flannel.alpha.coreos.com/backend-v6-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:06:02\"}",
                  "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                  "flannel.alpha.coreos.com/public-ipv6": "2001:db8::6"
                }
              },
              "spec": {"podCIDR": "fc00:0:0:6::/64", "podCIDRs": ["fc00:0:0:6::/64"]}
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn ipv6_only_nodes_are_read_and_annotated_as_flanneld() {
        let now = SystemTime::UNIX_EPOCH;
        let n = flanneld_v6_only_node();
        let l = node_lease(&n, &keys(), Families::IPV6, now)
            .unwrap()
            .unwrap();
        assert_eq!(l.key(), "0.0.0.0-0&fc00:0:0:6::-64");
        assert_eq!(l.attrs.public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(l.attrs.public_ipv6, Some("2001:db8::6".parse().unwrap()));
        assert_eq!(
            l.attrs.vxlan_v6_data().unwrap().vtep_mac.to_string(),
            "0e:00:00:00:06:02"
        );
        // Written back unchanged, nothing to patch: no public-ip, no backend-data.
        let (eff, patch) = own_annotations(&n, &keys(), &l.attrs);
        assert_eq!((eff, patch), (l.attrs.clone(), None));
        // A dual-stack node in an IPv6-only network: its IPv6 side alone.
        let l = node_lease(&dual_stack_node(), &keys(), Families::IPV6, now)
            .unwrap()
            .unwrap();
        assert_eq!(l.key(), "0.0.0.0-0&fc00:0:0:4::-64");
        assert!(l.attrs.backend_data.is_null());
        // In networks with IPv4, an IPv6-only node is no lease (yet to get its IPv4 side).
        assert_eq!(node_lease(&n, &keys(), Families::DUAL, now).unwrap(), None);
        assert_eq!(node_lease(&n, &keys(), Families::IPV4, now).unwrap(), None);
        // IPv6-only without public-ipv6: named, skipped.
        let mut bare = n.clone();
        set(&mut bare, "public-ipv6", None);
        let e = node_lease(&bare, &keys(), Families::IPV6, now).unwrap_err();
        assert!(
            e.contains("no flannel.alpha.coreos.com/public-ipv6 annotation"),
            "{e}"
        );
    }
}
