//! deploy/kube-weft.yml, read as Kubernetes would: every document through k8s-openapi's
//! types (a field they do not know, a typo, is lost in the round trip and fails here); the
//! ClusterRole grants exactly the API calls weft makes; the ConfigMap's conflist is
//! kube-flannel.yml's and its net-conf.json is one weft accepts; the DaemonSet's command
//! line is one `weft run` accepts, with the probes on its healthz port, and the volumes and
//! environment weft needs. No root.

use std::collections::BTreeSet;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

const MANIFEST: &str = include_str!("../deploy/kube-weft.yml");

/// kube-flannel.yml's conflist (flannel's Documentation/kube-flannel.yml, cni-conf.json).
const KUBE_FLANNEL_CONFLIST: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

#[derive(Parser)]
struct Weft {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    Run(Box<weft::daemon::RunArgs>),
}

/// Parses `doc` as `T` and checks nothing was lost: unknown fields vanish in the round trip.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{e}: {}", doc["metadata"]["name"]));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back, doc,
        "{} {}: a field Kubernetes does not know (typo?)",
        doc["kind"], doc["metadata"]["name"]
    );
    t
}

fn docs() -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(MANIFEST)
        .expect("deploy/kube-weft.yml is not YAML")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn every_document_is_a_valid_kubernetes_object() {
    let kinds: Vec<String> = docs()
        .iter()
        .map(|d| {
            let k = d["kind"].as_str().unwrap().to_string();
            match k.as_str() {
                "Namespace" => drop(typed::<Namespace>(d)),
                "ClusterRole" => drop(typed::<ClusterRole>(d)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(d)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(d)),
                "ConfigMap" => drop(typed::<ConfigMap>(d)),
                "DaemonSet" => drop(typed::<DaemonSet>(d)),
                other => panic!("unexpected kind {other}"),
            }
            k
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "ServiceAccount",
            "ConfigMap",
            "DaemonSet"
        ]
    );
}

fn find<T: serde::de::DeserializeOwned + serde::Serialize>(kind: &str) -> T {
    typed(docs().iter().find(|d| d["kind"] == kind).unwrap())
}

#[test]
fn the_cluster_role_grants_exactly_the_calls_weft_makes() {
    let role: ClusterRole = find("ClusterRole");
    let mut granted = BTreeSet::new();
    for r in role.rules.unwrap() {
        assert_eq!(
            r.api_groups.as_deref(),
            Some(&[String::new()][..]),
            "core group only"
        );
        for res in r.resources.unwrap() {
            for v in &r.verbs {
                granted.insert((res.clone(), v.clone()));
            }
        }
    }
    let needed: BTreeSet<(String, String)> = weft::store::kube::API_CALLS
        .iter()
        .map(|(r, v)| (r.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        granted, needed,
        "the ClusterRole must grant exactly weft's calls"
    );
    let binding: ClusterRoleBinding = find("ClusterRoleBinding");
    let sa: ServiceAccount = find("ServiceAccount");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
}

#[test]
fn the_config_map_holds_kube_flannels_conflist_and_a_config_weft_accepts() {
    let cm: ConfigMap = find("ConfigMap");
    let data = cm.data.unwrap();
    let conflist: Value = serde_json::from_str(&data["cni-conf.json"]).unwrap();
    assert_eq!(
        conflist,
        serde_json::from_str::<Value>(KUBE_FLANNEL_CONFLIST).unwrap()
    );
    let cfg = weft::config::NetConfig::parse(&data["net-conf.json"]).unwrap();
    assert_eq!(cfg.network().unwrap().to_string(), "10.244.0.0/16");
}

/// Checks the pod mounts /run/weft (the hand-over socket's directory) from the host.
fn the_state_directory_is_shared(pod: &PodSpec) {
    // Both pods see the same state directory, where the old one's hand-over socket is.
    let c0 = &pod.containers[0];
    let state = c0
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/run/weft");
    let vol = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| Some(&v.name) == state.map(|m| &m.name));
    assert_eq!(
        vol.and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.as_str()),
        Some("/run/weft")
    );
}

/// Checks the probes and ports are on weft's healthz address and port, metrics apart.
fn the_probes_are_on_healthz_apart_from_metrics(c: &Container, run: &weft::daemon::RunArgs) {
    // The probes are on the healthz port and address weft listens on: loopback, which
    // kubelet reaches on a host-network pod and no other pod does; metrics apart.
    let ports = c.ports.as_ref().unwrap();
    let port = |name: &str| ports.iter().find(|p| p.name.as_deref() == Some(name));
    assert_eq!(
        port("healthz").unwrap().container_port,
        i32::from(run.healthz_port)
    );
    assert_eq!(
        port("metrics").unwrap().container_port,
        i32::from(run.metrics_port)
    );
    assert_eq!(run.healthz_ip.to_string(), "127.0.0.1");
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
    }
}

/// Checks the container is not privileged and adds NET_ADMIN and NET_RAW only.
fn the_container_is_unprivileged_with_weft_s_capabilities(c: &Container) {
    // Not privileged; the capabilities weft needs.
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap().add.clone().unwrap();
    assert_eq!(caps, ["NET_ADMIN", "NET_RAW"]);
}

/// Checks NODE_NAME comes from the downward API and the mounts hold what weft's paths need.
fn the_env_and_mounts_are_weft_s(c: &Container, run: &weft::daemon::RunArgs) {
    // NODE_NAME from the downward API; the config where --net-config-path points.
    let env = c.env.as_ref().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    let mounts: Vec<&str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    for want in ["/run/flannel", "/dev/net/tun", "/run/xtables.lock"] {
        assert!(mounts.contains(&want), "{want} not mounted: {mounts:?}");
    }
    assert!(run.net_config_path.starts_with(
        mounts
            .iter()
            .find(|m| m.starts_with("/etc/kube-weft"))
            .unwrap()
    ));
    assert_eq!(run.subnet_file.to_str(), Some("/run/flannel/subnet.env"));
}

#[test]
fn the_daemon_set_runs_weft_as_kube_flannel_runs_flanneld() {
    let ds: DaemonSet = find("DaemonSet");
    let spec = ds.spec.unwrap();
    // Rolled out by hand-over: the new pod beside the old, never a node without weft.
    let rolling = spec.update_strategy.unwrap().rolling_update.unwrap();
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let pod = spec.template.spec.unwrap();
    the_state_directory_is_shared(&pod);
    assert_eq!(pod.host_network, Some(true));
    let sa: ServiceAccount = find("ServiceAccount");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    let c = &pod.containers[0];
    let mut argv = c.command.clone().unwrap();
    argv.extend(c.args.clone().unwrap());
    assert_eq!(argv[0], "/usr/local/bin/weft");
    let Cmd::Run(run) = Weft::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("weft would refuse {argv:?}: {e}"))
        .cmd;
    assert!(run.kube_subnet_mgr && run.ip_masq);
    the_probes_are_on_healthz_apart_from_metrics(c, &run);
    the_container_is_unprivileged_with_weft_s_capabilities(c);
    the_env_and_mounts_are_weft_s(c, &run);
    // The init containers install weft-cni as the conflist's "flannel" plugin, and the
    // conflist where the kubelet's runtime reads it.
    let init = pod.init_containers.unwrap();
    let cp: Vec<Vec<String>> = init.iter().map(|i| i.args.clone().unwrap()).collect();
    assert_eq!(
        cp[0],
        ["-f", "/usr/local/bin/weft-cni", "/opt/cni/bin/flannel"]
    );
    assert_eq!(cp[1][2], "/etc/cni/net.d/10-flannel.conflist");
}
