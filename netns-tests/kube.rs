//! weft as flanneld's kube subnet manager (`--kube-subnet-mgr`), against the kube-apiserver
//! stand-in (`kube_api.rs`; no real kube-apiserver can be installed here): nodes whose
//! podCIDRs the test assigns, as kube-controller-manager would, become leases; weft writes
//! flanneld's annotations and clears NetworkUnavailable; pods set up through weft-cni reach
//! each other; a deleted node's lease leaves every table; a restart keeps the VTEP MAC.
//! Root only, like the rest.

#[path = "harness.rs"]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::{iperf3, weft, Cluster, Kind, Pod};
use serde_json::{json, Value};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const P: &str = "flannel.alpha.coreos.com/";

/// Registers node `i` (named n<i+1>) with podCIDR 10.244.<i+1>.0/24, as the kubelet and
/// kube-controller-manager would, and starts weft there in kube mode, told its node by
/// NODE_NAME or (`by_pod`) only by POD_NAMESPACE/POD_NAME, as kube-flannel.yml tells
/// flanneld, with the pod registered on that node.
fn kube_node_as(c: &mut Cluster, url: &str, conf: &Path, by_pod: bool) -> usize {
    let i = c.add_node(Kind::Weft);
    let name = format!("n{}", i + 1);
    let cidr = format!("10.244.{}.0/24", i + 1);
    let (code, _) = c.kube(
        "POST",
        "/api/v1/nodes",
        "application/json",
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                "status": {"conditions": [{"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}]}}),
    );
    assert_eq!(code, 201);
    let conf = conf.display().to_string();
    let args = [
        "--kube-subnet-mgr",
        "--kube-api-url",
        url,
        "--net-config-path",
        &conf,
    ];
    if by_pod {
        let pod = format!("kube-weft-ds-{}", i + 1);
        let (code, _) = c.kube(
            "POST",
            "/api/v1/namespaces/kube-weft/pods",
            "application/json",
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod},
                    "spec": {"nodeName": name, "containers": [{"name": "kube-weft", "image": "weft"}]}}),
        );
        assert_eq!(code, 201);
        c.start_weft_env(
            i,
            &args,
            &[("POD_NAME", &pod), ("POD_NAMESPACE", "kube-weft")],
        );
    } else {
        c.start_weft_env(i, &args, &[("NODE_NAME", &name)]);
    }
    i
}

/// A Node object as a running flanneld (vxlan) leaves it: its podCIDR and the annotations
/// as flanneld writes them, literal strings, VTEP MAC 0e:00:00:00:<host>:01.
fn flanneld_node(name: &str, host: u8, cidr: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "annotations": {
               "flannel.alpha.coreos.com/backend-data":
                   format!("{{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:{host:02x}:01\"}}"),
               "flannel.alpha.coreos.com/backend-type": "vxlan",
               "flannel.alpha.coreos.com/kube-subnet-manager": "true",
               "flannel.alpha.coreos.com/public-ip": format!("192.0.2.{host}")}},
           "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
}

fn kube_node(c: &mut Cluster, url: &str, conf: &Path) -> usize {
    kube_node_as(c, url, conf, false)
}

/// Waits until every running node's table holds exactly `n` subnets; returns how long.
fn tables_hold(c: &Cluster, n: usize, what: &str) -> Duration {
    let start = Instant::now();
    for i in 0..c.nodes.len() {
        if c.nodes[i].child.is_some() {
            harness::wait_for(what, Duration::from_secs(10), || {
                (c.table(i).len() == n).then_some(())
            });
        }
    }
    start.elapsed()
}

fn node(c: &Cluster, name: &str) -> Value {
    let (code, n) = c.kube(
        "GET",
        &format!("/api/v1/nodes/{name}"),
        "application/json",
        &Value::Null,
    );
    assert_eq!(code, 200, "{n}");
    n
}

/// Starts 3 kube-mode nodes, checks subnet.env, adds a pod to each; returns how long starting took.
fn start_three_kube_nodes(c: &mut Cluster, url: &str, conf: &Path) -> Duration {
    let t0 = Instant::now();
    for i in 0..3 {
        // Node 2 finds its node through its pod, as flanneld does in kube-flannel.yml.
        kube_node_as(c, url, conf, i == 1);
    }
    let started = t0.elapsed();
    for i in 0..3 {
        let env = weft::subnet_env::SubnetEnv::read(&c.nodes[i].subnet_file).unwrap();
        assert_eq!(
            env.subnet.map(|s| s.to_string()),
            Some(format!("10.244.{}.0/24", i + 1)),
            "subnet.env is not the podCIDR"
        );
        c.add_pod(i, None);
    }
    tables_hold(c, 3, "every table to hold the 3 nodes");
    started
}

/// Adds an annotated node, waits for it in every table, deletes it; returns how long it took.
fn an_added_node_comes_and_goes(c: &Cluster) -> Duration {
    // A node added to the API (annotated, as a running flanneld leaves it) reaches every
    // table; then it goes again.
    let t = Instant::now();
    let (code, _) = c.kube(
        "POST",
        "/api/v1/nodes",
        "application/json",
        &flanneld_node("n9", 9, "10.244.9.0/24"),
    );
    assert_eq!(code, 201);
    tables_hold(c, 4, "an added node to reach every table");
    let added = t.elapsed();
    c.kube(
        "DELETE",
        "/api/v1/nodes/n9",
        "application/json",
        &Value::Null,
    );
    tables_hold(c, 3, "the added node to go");
    added
}

/// Checks n1's annotations and NetworkUnavailable are as flanneld sets them; returns backend-data.
fn n1_is_annotated_as_flanneld_annotates(c: &Cluster) -> String {
    let n1 = node(c, "n1");
    let a = &n1["metadata"]["annotations"];
    assert_eq!(a[format!("{P}kube-subnet-manager")], "true");
    assert_eq!(a[format!("{P}backend-type")], "vxlan");
    assert_eq!(a[format!("{P}public-ip")], "192.0.2.1");
    let data = a[format!("{P}backend-data")].as_str().unwrap().to_string();
    assert!(
        data.starts_with(r#"{"VNI":1,"VtepMAC":""#) && data.ends_with(r#""}"#),
        "{data}"
    );
    let conds = n1["status"]["conditions"].as_array().unwrap();
    let nu = conds
        .iter()
        .find(|c| c["type"] == "NetworkUnavailable")
        .unwrap();
    assert_eq!(
        (nu["status"].as_str(), nu["reason"].as_str()),
        (Some("False"), Some("FlannelIsUp"))
    );
    data
}

/// Stops node 3 and deletes it from the API; returns how long its lease took to leave the tables.
fn a_deleted_node_leaves_the_tables(c: &mut Cluster) -> Duration {
    // A node deleted from the API: its lease leaves every other table.
    c.stop_weft(2);
    let (code, _) = c.kube(
        "DELETE",
        "/api/v1/nodes/n3",
        "application/json",
        &Value::Null,
    );
    assert_eq!(code, 200);
    tables_hold(c, 2, "the deleted node's lease to leave the tables")
}

/// Restarts node 1: checks it keeps its VTEP MAC (`data`) and table, and its pod reaches node 2.
fn a_restart_keeps_the_vtep_mac(c: &mut Cluster, url: &str, conf: &Path, data: &str, p1: &Pod) {
    // A restart keeps the VTEP MAC (read back from backend-data).
    assert!(c.stop_weft(0));
    let conf_s = conf.display().to_string();
    c.start_weft_env(
        0,
        &[
            "--kube-subnet-mgr",
            "--kube-api-url",
            url,
            "--net-config-path",
            &conf_s,
        ],
        &[("NODE_NAME", "n1")],
    );
    let after = node(c, "n1");
    assert_eq!(
        after["metadata"]["annotations"][format!("{P}backend-data")],
        data,
        "the VTEP MAC changed"
    );
    tables_hold(c, 2, "node 1's table after the restart");
    let dst = c.nodes[1].pods[0].ip;
    let o = harness::try_in_ns(&p1.ns, &format!("ping -c 2 -i 0.2 -W 2 {dst}"));
    assert!(o.status.success(), "ping after the restart failed");
}

/// Checks every API call the nodes made (from the stand-in's log) is one API_CALLS grants.
fn every_call_made_is_granted(c: &Cluster) {
    // Every call the nodes made is one the manifest's ClusterRole grants
    // (weft::store::kube::API_CALLS, which tests/manifest.rs holds the manifest to).
    let log = std::fs::read_to_string(c.dir.join("kube-api.log")).unwrap();
    let mut made = std::collections::BTreeSet::new();
    for l in log.lines().filter_map(|l| l.strip_prefix("rbac ")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f[0] != "192.0.2.250" {
            made.insert((f[2].to_string(), f[1].to_string()));
        }
    }
    for (resource, verb) in &made {
        assert!(
            weft::store::kube::API_CALLS.contains(&(resource.as_str(), verb.as_str())),
            "weft called {verb} {resource}, which API_CALLS (and so the manifest) lacks"
        );
    }
    assert!(made.contains(&("pods".into(), "get".into())), "{made:?}");
    assert!(
        made.contains(&("nodes/status".into(), "patch".into())),
        "{made:?}"
    );
}

#[test]
fn a_kube_cluster_forwards_writes_flanneld_annotations_and_follows_node_deletion() {
    let mut c = Cluster::new(weft(), VXLAN);
    let (url, conf) = c.start_kube_api_with(VXLAN);
    let started = start_three_kube_nodes(&mut c, &url, &conf);
    let added = an_added_node_comes_and_goes(&c);

    // The annotations and the condition, as flanneld writes them.
    let data = n1_is_annotated_as_flanneld_annotates(&c);

    let failed = c.ping_all();
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));
    let (p1, p3) = (c.nodes[0].pods[0].clone(), c.nodes[2].pods[0].clone());
    let r = iperf3(&p1, &p3, 2, None);
    assert!(r.bytes > 0.0);

    let gone = a_deleted_node_leaves_the_tables(&mut c);
    a_restart_keeps_the_vtep_mac(&mut c, &url, &conf, &data, &p1);
    every_call_made_is_granted(&c);
    harness::figure(&format!(
        "kube subnet manager: 3 nodes started (subnet.env written) in {:.2} s; a node added to the API in all 3 tables in {} ms; iperf3 n1 -> n3 {:.2} Gbit/s; deleted node out of both tables in {} ms",
        started.as_secs_f64(),
        added.as_millis(),
        r.bps / 1e9,
        gone.as_millis()
    ));
}

/// The leases the API holds, as flanneld reads nodes (for programming the "stock flannel"
/// kernel node, which plays flanneld's part here).
fn api_leases(c: &Cluster) -> Vec<weft::lease::Lease> {
    let (_, list) = c.kube("GET", "/api/v1/nodes", "application/json", &Value::Null);
    let keys = weft::store::kube::Annotations::new(weft::store::kube::DEFAULT_PREFIX).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| {
            let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(n.clone()).unwrap();
            weft::store::kube::node_lease(
                &n,
                &keys,
                weft::store::kube::Families::IPV4,
                std::time::SystemTime::now(),
            )
            .ok()
            .flatten()
        })
        .collect()
}

/// Registers node 2 without a podCIDR, checks weft waits for one, then assigns it and checks it.
fn a_node_waits_for_its_pod_cidr(c: &mut Cluster, url: &str, conf: &Path) {
    // Node 2 registers before kube-controller-manager assigns its podCIDR: weft waits, as
    // flanneld does ("pod cidr not assigned"), and goes on once it is assigned.
    let n = c.add_node(Kind::Weft);
    let (code, _) = c.kube(
        "POST",
        "/api/v1/nodes",
        "application/json",
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}),
    );
    assert_eq!(code, 201);
    let conf_s = conf.display().to_string();
    c.spawn_weft_env(
        n,
        &[
            "--kube-subnet-mgr",
            "--kube-api-url",
            url,
            "--net-config-path",
            &conf_s,
        ],
        &[("NODE_NAME", "n2")],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !c.nodes[n].subnet_file.exists(),
        "subnet.env before a podCIDR"
    );
    let log = std::fs::read_to_string(&c.nodes[n].log).unwrap();
    assert!(log.contains("pod cidr not assigned"), "{log}");
    let (code, _) = c.kube(
        "PATCH",
        "/api/v1/nodes/n2",
        "application/merge-patch+json",
        &json!({"spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}}),
    );
    assert_eq!(code, 200);
    assert_eq!(c.finish_start(n).subnet, "10.244.2.0/24".parse().ok());
}

/// Starts node 3 as a flanneld-annotated kernel vxlan node, adds a pod per node, checks all pings.
fn a_flanneld_node_joins(c: &mut Cluster) {
    // Node 3: flannel.1 as flanneld configures it; its Node as flanneld leaves it.
    let k = c.add_node(Kind::KernelVxlan);
    c.start_kernel_node(k, "10.244.3.0/24".parse().unwrap());
    let (code, _) = c.kube(
        "POST",
        "/api/v1/nodes",
        "application/json",
        &flanneld_node("n3", 3, "10.244.3.0/24"),
    );
    assert_eq!(code, 201);
    tables_hold(c, 3, "the weft nodes to see the flanneld node");
    for i in 0..3 {
        c.add_pod(i, None);
    }
    c.program_kernel_peers_for(k, &api_leases(c));
    let failed = c.ping_all();
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));
}

/// Inserts (`-I`) or deletes (`-D`) the rules that cut the API server off on its underlay side.
fn api_underlay_drop(api_ns: &str, op: &str) {
    // On the underlay side only: the test itself still reaches the API over loopback.
    let rules = [["INPUT", "-i", "--dport"], ["OUTPUT", "-o", "--sport"]];
    for [chain, dir, port] in rules {
        harness::ns_sh(
            api_ns,
            &[
                "iptables", op, chain, dir, "eth0", "-p", "tcp", port, "6443", "-j", "DROP",
            ],
        );
    }
}

/// Deletes node 3 from the API, then compacts, pokes node 2 and compacts again.
fn delete_n3_and_compact_twice(c: &Cluster) {
    // Deleted while the nodes cannot hear it (from inside the API's namespace), then the
    // history compacted and the watches ended: back, the nodes must list again (410).
    let (code, _) = c.kube(
        "DELETE",
        "/api/v1/nodes/n3",
        "application/json",
        &Value::Null,
    );
    assert_eq!(code, 200);
    // One more change after the watches ended, then compact again: whatever the nodes saw
    // last is now older than the history.
    c.kube("POST", "/standin/compact", "application/json", &Value::Null);
    c.kube(
        "PATCH",
        "/api/v1/nodes/n2",
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"example.com/poked": "yes"}}}),
    );
    c.kube("POST", "/standin/compact", "application/json", &Value::Null);
}

/// Cuts the API off for 8 s under iperf3 while node 3 goes; returns the slowest second (bit/s).
fn an_api_outage_under_iperf3(c: &Cluster) -> f64 {
    // The API server unreachable (both directions dropped) for 8 s under iperf3, and a
    // node deleted meanwhile.
    let (a, b) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let traffic =
        std::thread::spawn(move || harness::iperf3_json(&a, &b, &["-t", "12", "-i", "1"]));
    std::thread::sleep(Duration::from_secs(2));
    let api_ns = format!("{}-api", c.prefix);
    api_underlay_drop(&api_ns, "-I");
    delete_n3_and_compact_twice(c);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        c.table(0).len(),
        3,
        "a table changed while the API was unreachable"
    );
    api_underlay_drop(&api_ns, "-D");
    let v = traffic.join().unwrap().expect("iperf3 failed");
    let per_second = harness::iperf3_per_second(&v);
    let slowest = per_second.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        slowest > 0.0,
        "a second without traffic during the API outage: {per_second:?}"
    );
    slowest
}

/// A node registered before its podCIDR waits for it. A "stock flannel" node whose Node
/// object carries the annotations exactly as flanneld's vxlan backend writes them (literal strings, not weft's writer) joins two weft nodes:
/// weft reads it as a vxlan peer and pods on all three reach each other. Then the API
/// server becomes unreachable for 8 s under iperf3: forwarding goes on every second, and a
/// node deleted meanwhile, its history compacted, leaves the tables once the API is back
/// (the nodes' watches get 410 and list again).
#[test]
fn a_flanneld_annotated_node_interoperates_and_an_api_outage_loses_nothing() {
    let mut c = Cluster::new(weft(), VXLAN);
    let (url, conf) = c.start_kube_api_with(VXLAN);
    kube_node(&mut c, &url, &conf);
    a_node_waits_for_its_pod_cidr(&mut c, &url, &conf);
    a_flanneld_node_joins(&mut c);
    let slowest = an_api_outage_under_iperf3(&c);
    let back = tables_hold(&c, 2, "the deletion to arrive once the API is back");
    for i in 0..2 {
        let log = std::fs::read_to_string(&c.nodes[i].log).unwrap();
        assert!(
            log.contains("kube watch expired"),
            "node {} did not list again after the 410: {log}",
            i + 1
        );
    }
    harness::figure(&format!(
        "kube API unreachable 8 s under iperf3: slowest second {:.2} Gbit/s; the node deleted meanwhile left the tables {} ms after the API came back",
        slowest / 1e9,
        back.as_millis()
    ));
}
