//! The part of a Node the kube subnet manager reads, and nothing more: its name,
//! resourceVersion, the annotations under flannel's prefix, `spec.podCIDR` and
//! `spec.podCIDRs`. kubelet's Node carries far more (managedFields, status with conditions,
//! capacity and the image list: 4-30 KB of JSON each), which a 5,000-node cluster would
//! make hundreds of megabytes in every node's agent. [`SlimNode`] is what the list and the
//! watch deserialize into: serde skips every other field as it parses, so nothing else is
//! ever allocated. The watch keeps each node as a [`CompactNode`] (a few hundred bytes);
//! the pure functions of [`super::kube`] read either through [`NodeView`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// A Node holding only what weft reads (see the module).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "Raw")]
pub struct SlimNode(pub Node);

#[derive(Deserialize, Default)]
struct Raw {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: Option<RawSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: Option<String>,
    resource_version: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct RawSpec {
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
}

impl From<Raw> for SlimNode {
    fn from(r: Raw) -> SlimNode {
        SlimNode(Node {
            metadata: ObjectMeta {
                name: r.metadata.name,
                resource_version: r.metadata.resource_version,
                annotations: r.metadata.annotations,
                ..ObjectMeta::default()
            },
            spec: r.spec.map(|s| NodeSpec {
                pod_cidr: s.pod_cidr,
                pod_cidrs: s.pod_cidrs,
                ..NodeSpec::default()
            }),
            status: None,
        })
    }
}

impl SlimNode {
    /// The Node, keeping of its annotations only those that start with `prefix` (the
    /// keys flannel's prefix makes): other agents' annotations can be large.
    pub fn keep_prefixed(self, prefix: &str) -> Node {
        let mut n = self.0;
        if let Some(a) = n.metadata.annotations.as_mut() {
            a.retain(|k, _| k.starts_with(prefix));
        }
        n
    }
}

/// What the subnet manager reads of a node, whatever holds it.
pub trait NodeView {
    /// `metadata.name`.
    fn name(&self) -> Option<&str>;
    /// The annotation `key`, as stored (possibly empty).
    fn annotation(&self, key: &str) -> Option<&str>;
    /// `spec.podCIDRs` (possibly empty) and `spec.podCIDR`.
    fn cidrs(&self) -> (&[String], Option<&str>);
}

impl NodeView for Node {
    fn name(&self) -> Option<&str> {
        self.metadata.name.as_deref()
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    fn cidrs(&self) -> (&[String], Option<&str>) {
        let spec = self.spec.as_ref();
        let list = spec.and_then(|s| s.pod_cidrs.as_deref()).unwrap_or(&[]);
        (list, spec.and_then(|s| s.pod_cidr.as_deref()))
    }
}

/// A node as the watch keeps it: its name, its annotations under flannel's prefix, its
/// pod CIDRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactNode {
    name: String,
    annotations: Vec<(String, String)>,
    pod_cidrs: Vec<String>,
    pod_cidr: Option<String>,
}

impl NodeView for CompactNode {
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        let found = self.annotations.iter().find(|(k, _)| k == key);
        found.map(|(_, v)| v.as_str())
    }

    fn cidrs(&self) -> (&[String], Option<&str>) {
        (&self.pod_cidrs, self.pod_cidr.as_deref())
    }
}

impl SlimNode {
    /// Its name and what the watch keeps of it ([`SlimNode::keep_prefixed`]'s
    /// annotations); `None` for a node without a name.
    pub fn compact(self, prefix: &str) -> Option<(String, CompactNode)> {
        let n = self.keep_prefixed(prefix);
        let name = n.metadata.name?;
        let annotations = n.metadata.annotations.unwrap_or_default();
        let spec = n.spec.unwrap_or_default();
        let node = CompactNode {
            name: name.clone(),
            annotations: annotations.into_iter().collect(),
            pod_cidrs: spec.pod_cidrs.unwrap_or_default(),
            pod_cidr: spec.pod_cidr,
        };
        Some((name, node))
    }
}

impl kube::Resource for SlimNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node as kubelet registers it and kube-controller-manager and flanneld annotate
    /// it (the shape of `kubectl get node -o json` on a kubeadm cluster).
    const KUBELET_NODE: &str = r#"{
      "apiVersion": "v1", "kind": "Node",
      "metadata": {
        "name": "worker-7", "uid": "0b1f3c52-9a47-4c1e-8d2e-5f6a7b8c9d0e",
        "resourceVersion": "918273", "creationTimestamp": "2026-11-02T08:15:00Z",
        "labels": {"kubernetes.io/hostname": "worker-7", "kubernetes.io/os": "linux"},
        "annotations": {
          "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"9a:3e:12:7c:55:01\"}",
          "flannel.alpha.coreos.com/backend-type": "vxlan",
          "flannel.alpha.coreos.com/kube-subnet-manager": "true",
          "flannel.alpha.coreos.com/public-ip": "198.51.100.7",
          "node.alpha.kubernetes.io/ttl": "0",
          "volumes.kubernetes.io/controller-managed-attach-detach": "true"
        },
        "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
          "time": "2026-11-02T08:15:00Z", "fieldsType": "FieldsV1",
          "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:kubernetes.io/os": {}}}}}]
      },
      "spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"],
               "providerID": "kind://docker/kind/worker-7"},
      "status": {
        "addresses": [{"type": "InternalIP", "address": "198.51.100.7"}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        "images": [{"names": ["registry.k8s.io/etcd@sha256:29", "registry.k8s.io/etcd:3.5.15"],
                    "sizeBytes": 56909194}],
        "nodeInfo": {"kubeletVersion": "v1.33.1", "architecture": "amd64"}
      }
    }"#;

    #[test]
    fn a_kubelet_node_keeps_only_what_the_subnet_manager_reads() {
        let full: Node = serde_json::from_str(KUBELET_NODE).unwrap();
        let slim: SlimNode = serde_json::from_str(KUBELET_NODE).unwrap();
        let prefix = "flannel.alpha.coreos.com/";
        let n = slim.keep_prefixed(prefix);
        assert_eq!(n.metadata.name, full.metadata.name);
        assert_eq!(n.metadata.resource_version, full.metadata.resource_version);
        let a = n.metadata.annotations.as_ref().unwrap();
        assert_eq!(a.len(), 4, "{a:?}");
        assert!(a.keys().all(|k| k.starts_with(prefix)));
        let spec = n.spec.as_ref().unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.7.0/24"));
        assert_eq!(spec.pod_cidrs, full.spec.as_ref().unwrap().pod_cidrs);
        assert!(spec.provider_id.is_none() && n.status.is_none());
        assert!(n.metadata.managed_fields.is_none() && n.metadata.labels.is_none());
        // The lease read from it is the full node's lease.
        let keys = super::super::kube::Annotations::new("flannel.alpha.coreos.com").unwrap();
        let fam = super::super::kube::Families::IPV4;
        let now = std::time::SystemTime::now();
        let lease = |n: &Node| super::super::kube::node_leases(std::iter::once(n), &keys, fam, now);
        assert_eq!(lease(&n), lease(&full));
        assert_eq!(lease(&n).len(), 1);
        // And so is the compact form the watch keeps.
        let slim: SlimNode = serde_json::from_str(KUBELET_NODE).unwrap();
        let (name, compact) = slim.compact(prefix).unwrap();
        assert_eq!(name, "worker-7");
        let l = super::super::kube::node_leases(std::iter::once(&compact), &keys, fam, now);
        assert_eq!(l, lease(&full));
    }

    #[test]
    fn a_node_without_spec_or_annotations_reads_as_one() {
        let s: SlimNode = serde_json::from_str(r#"{"metadata":{"name":"bare"}}"#).unwrap();
        let n = s.keep_prefixed("flannel.alpha.coreos.com/");
        assert_eq!(n.metadata.name.as_deref(), Some("bare"));
        assert!(n.spec.is_none() && n.metadata.annotations.is_none());
    }
}
