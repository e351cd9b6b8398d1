//! Scale bench for the kube subnet manager, as root: `netns-tests/kube-scale [N]` (default
//! 5000). Registers N nodes in the kube-apiserver stand-in as kubelet registers them
//! (about 4.4 KB of JSON each: labels, managedFields, conditions, capacity, images),
//! each annotated as a stock flanneld vxlan node with a podCIDR of Network 10.0.0.0/8,
//! then starts one weft node on `--kube-subnet-mgr` and reports
//!
//! - one plain list of all N nodes from the same API (the floor for start -> table),
//! - start -> a table with every node, and the node's resident memory then,
//! - its CPU over 30 s while nothing changes,
//! - node added (and annotated) -> in its table, and node deleted -> gone (30 samples),
//! - the API requests it made (lists, watches, gets, patches), from the stand-in's log.
//!
//! `WEFT_SCALE_ARGS` adds flags to the weft node (`--dataplane kernel`, say).
//!
//! Parts that must reach the API or the node's health port run this same binary again
//! inside a namespace (`WEFT_SCALE_PHASE`). Not a test: nothing is asserted.

#[path = "harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{Cluster, Kind};
use serde_json::{json, Value};

const CONF: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;
const API: &str = "192.0.2.250:6443";
const P: &str = "flannel.alpha.coreos.com/";

/// The i-th node as kubelet registers it and flanneld annotates it: 10.(i/250+1).(i%250).0/24
/// with a public IP in 198.18.0.0/15 (the benchmarking range; nothing is ever sent there).
fn node(i: usize) -> Value {
    let (a, b) = (i / 250 + 1, i % 250);
    let name = format!("node-{i:05}");
    let public = format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255);
    let mac = format!("0e:5c:{:02x}:{:02x}:00:01", (i >> 8) as u8, i as u8);
    let images: Vec<Value> = (0..8)
        .map(|k| json!({"names": [format!("registry.example.com/team-{k}/service-{k}@sha256:{:064x}", i * 8 + k), format!("registry.example.com/team-{k}/service-{k}:v1.{k}.{i}")], "sizeBytes": 50_000_000 + k * 1_000_003}))
        .collect();
    let cond = |t: &str, s: &str, r: &str| json!({"type": t, "status": s, "reason": r, "message": format!("kubelet has {r}"), "lastHeartbeatTime": "2026-12-04T01:00:00Z", "lastTransitionTime": "2026-11-02T08:15:00Z"});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("0b1f3c52-9a47-4c1e-8d2e-{i:012x}"),
            "creationTimestamp": "2026-11-02T08:15:00Z",
            "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "m6i.xlarge", "topology.kubernetes.io/zone": "zone-a"},
            "annotations": {
                format!("{P}backend-data"): format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
                format!("{P}backend-type"): "vxlan",
                format!("{P}kube-subnet-manager"): "true",
                format!("{P}public-ip"): public,
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"
            },
            "managedFields": [
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-11-02T08:15:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:volumes.kubernetes.io/controller-managed-attach-detach": {}}, "f:labels": {".": {}, "f:beta.kubernetes.io/arch": {}, "f:beta.kubernetes.io/os": {}, "f:kubernetes.io/arch": {}, "f:kubernetes.io/hostname": {}, "f:kubernetes.io/os": {}}}}},
                {"manager": "flanneld", "operation": "Update", "apiVersion": "v1", "time": "2026-11-02T08:15:05Z", "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {"f:metadata": {"f:annotations": {"f:flannel.alpha.coreos.com/backend-data": {}, "f:flannel.alpha.coreos.com/backend-type": {}, "f:flannel.alpha.coreos.com/kube-subnet-manager": {}, "f:flannel.alpha.coreos.com/public-ip": {}}}}}
            ]
        },
        "spec": {"podCIDR": format!("10.{a}.{b}.0/24"), "podCIDRs": [format!("10.{a}.{b}.0/24")], "providerID": format!("aws:///zone-a/i-{i:017x}")},
        "status": {
            "addresses": [{"type": "InternalIP", "address": public}, {"type": "Hostname", "address": name}],
            "allocatable": {"cpu": "4", "ephemeral-storage": "95551679124", "hugepages-2Mi": "0", "memory": "15896184Ki", "pods": "110"},
            "capacity": {"cpu": "4", "ephemeral-storage": "103680620Ki", "hugepages-2Mi": "0", "memory": "15998584Ki", "pods": "110"},
            "conditions": [cond("MemoryPressure", "False", "KubeletHasSufficientMemory"), cond("DiskPressure", "False", "KubeletHasNoDiskPressure"), cond("PIDPressure", "False", "KubeletHasSufficientPID"), cond("Ready", "True", "KubeletReady"), cond("NetworkUnavailable", "False", "FlannelIsUp")],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images,
            "nodeInfo": {"architecture": "amd64", "bootID": format!("{i:08x}-1c2d-4e5f-8a9b-0c1d2e3f4a5b"), "containerRuntimeVersion": "containerd://1.7.24", "kernelVersion": "6.12.0-1-amd64", "kubeProxyVersion": "", "kubeletVersion": "v1.33.1", "machineID": format!("{i:032x}"), "operatingSystem": "linux", "osImage": "Debian GNU/Linux 13 (trixie)", "systemUUID": format!("ec2{i:05x}-aaaa-bbbb-cccc-0123456789ab")}
        }
    })
}

/// One HTTP/1.1 request to `addr` on a connection of its own: (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("the API");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (code, body.unwrap_or_default())
}

/// GET /leases from the local health port: the table, one lease per line.
fn table(port: u16) -> String {
    http(&format!("127.0.0.1:{port}"), "GET", "/leases", "").1
}

/// Inside a namespace: fill the API, time one plain list, or time changes into a node's
/// table.
fn phase(which: &str) {
    match which {
        "fill" => {
            let n: usize = std::env::var("WEFT_SCALE_N").unwrap().parse().unwrap();
            let t = Instant::now();
            let bytes: usize = (0..n)
                .map(|i| {
                    let body = node(i).to_string();
                    let (code, _) = http(API, "POST", "/api/v1/nodes", &body);
                    assert_eq!(code, 201, "node {i}");
                    body.len()
                })
                .sum();
            println!("fill {n} {} {}", t.elapsed().as_millis(), bytes / n);
        }
        "list" => {
            let t = Instant::now();
            let (code, body) = http(API, "GET", "/api/v1/nodes", "");
            let parsed: Value = serde_json::from_str(&body).unwrap_or_default();
            let items = parsed["items"].as_array().map_or(0, Vec::len);
            println!(
                "list {code} {items} {} {}",
                body.len(),
                t.elapsed().as_millis()
            );
        }
        "latency" => latency(),
        _ => panic!("unknown phase {which}"),
    }
}

/// 30 nodes added, each timed into the table of the node whose health port is
/// `WEFT_SCALE_PORT`, then deleted and timed out of it.
fn latency() {
    let port: u16 = std::env::var("WEFT_SCALE_PORT").unwrap().parse().unwrap();
    let (mut add, mut del, mut fetch) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..30 {
        let t = Instant::now();
        std::hint::black_box(table(port));
        fetch.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for k in 0..30 {
        let i = 40_000 + k;
        let n = node(i);
        let cidr: ipnet::Ipv4Net = n["spec"]["podCIDR"].as_str().unwrap().parse().unwrap();
        let addr = std::net::IpAddr::V4(cidr.network());
        let t = Instant::now();
        assert_eq!(http(API, "POST", "/api/v1/nodes", &n.to_string()).0, 201);
        while !harness::table_holds(port, addr) {}
        add.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let path = format!("/api/v1/nodes/{}", n["metadata"]["name"].as_str().unwrap());
        assert_eq!(http(API, "DELETE", &path, "").0, 200);
        while harness::table_holds(port, addr) {}
        del.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "add median {:.1} ms, p99 {:.1} ms; delete median {:.1} ms, p99 {:.1} ms; one fetch of the whole /leases {:.1} ms",
        harness::percentile(&mut add, 0.5),
        harness::percentile(&mut add, 0.99),
        harness::percentile(&mut del, 0.5),
        harness::percentile(&mut del, 0.99),
        harness::percentile(&mut fetch, 0.5)
    );
}

/// The API calls the stand-in logged from `client`, counted by verb.
fn requests(log: &Path, client: &str) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        // The latency phase's own creates and deletes come from the node's address too.
        let weft_s = w.len() == 4 && !matches!(w[2], "create" | "delete");
        if weft_s && w[0] == "rbac" && w[1] == client {
            *by.entry(format!("{} {}", w[2], w[3])).or_default() += 1;
        }
    }
    let v: Vec<String> = by.iter().map(|(k, n)| format!("{n} {k}")).collect();
    v.join(", ")
}

/// Starts weft on node 1 (`n1`) on `--kube-subnet-mgr`; the milliseconds from its start to
/// a table with all `n` other nodes and its own.
fn start_and_fill_table(c: &mut Cluster, conf: &Path, n: usize) -> f64 {
    let conf_s = conf.display().to_string();
    let url = format!("http://{API}");
    let extra_args = harness::scale_args();
    let mut args = vec![
        "--kube-subnet-mgr",
        "--kube-api-url",
        &url,
        "--net-config-path",
        &conf_s,
    ];
    args.extend(extra_args.iter().map(String::as_str));
    let t = Instant::now();
    // WEFT_SCALE_ENV="K=V ..." adds to the node's environment (allocator experiments).
    let extra = std::env::var("WEFT_SCALE_ENV").unwrap_or_default();
    let mut env: Vec<(&str, &str)> = vec![("NODE_NAME", "n1")];
    env.extend(extra.split_whitespace().filter_map(|kv| kv.split_once('=')));
    c.start_weft_env(0, &args, &env);
    harness::wait_for("the full table", Duration::from_secs(300), || {
        let lines = c.http(0, "/leases").map(|s| s.lines().count()).unwrap_or(0);
        (lines > n).then_some(())
    });
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    if let Ok(p) = std::env::var("WEFT_SCALE_PHASE") {
        return phase(&p);
    }
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("usage: kube-scale [NODES]"))
        .unwrap_or(5000);
    let weft = harness::weft_next_to_exe();
    let mut c = Cluster::new(Path::new(&weft), CONF);
    let (_, conf) = c.start_kube_api_with(CONF);
    let api_ns = format!("{}-api", c.prefix);
    let fill = harness::run_phase(&api_ns, "fill", &[("WEFT_SCALE_N", n.to_string())]);
    let f: Vec<u64> = fill
        .split_whitespace()
        .skip(2)
        .map(|x| x.parse().unwrap())
        .collect();
    c.add_node(Kind::Weft);
    let us = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                    "spec": {"podCIDR": "10.255.0.0/24", "podCIDRs": ["10.255.0.0/24"]}});
    assert_eq!(
        c.kube("POST", "/api/v1/nodes", "application/json", &us).0,
        201
    );
    let ns = c.nodes[0].ns.clone();
    let list = harness::run_phase(&ns, "list", &[]);
    let list_ms: f64 = list.split_whitespace().last().unwrap().parse().unwrap();

    let to_table = start_and_fill_table(&mut c, &conf, n);
    let pid = c.nodes[0].child.as_ref().unwrap().id();
    std::thread::sleep(Duration::from_secs(2));
    let rss = harness::rss_kb(pid);
    let cpu0 = harness::cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(30));
    let idle = (harness::cpu_seconds(pid) - cpu0) / 30.0 * 100.0;
    let lat = harness::run_phase(
        &ns,
        "latency",
        &[("WEFT_SCALE_PORT", c.nodes[0].healthz.to_string())],
    );
    let calls = requests(&c.dir.join("kube-api.log"), &c.nodes[0].ip.to_string());
    let report = format!(
        "kube scale: {n} nodes registered as kubelet registers them ({} bytes of JSON each) in {} ms\n\
         one plain list of all {} nodes from the same API: {list_ms:.0} ms ({list})\n\
         start -> table with every node: {to_table:.0} ms ({:.2}x the plain list)\n\
         memory: RSS {rss} kB with the full table\n\
         idle CPU over 30 s with nothing changing: {idle:.2} % of one vCPU\n\
         node added and annotated -> table, deleted -> gone (30 samples, polled with /leases/<address>): {lat}\n\
         API requests weft made: {calls}",
        f[1],
        f[0],
        n + 1,
        to_table / list_ms,
    );
    println!("{report}");
    let _ = std::fs::create_dir_all("target/bench");
    let _ = std::fs::write(
        format!("target/bench/kube-scale-{n}.txt"),
        format!("{report}\n"),
    );
}
