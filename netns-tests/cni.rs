//! weft-cni as flannel's CNI plugin, driven the way a container runtime drives the conflist
//! kube-flannel.yml ships, with Debian's real `bridge`, `host-local` and `portmap` plugins,
//! against nodes running weft. Needs root (CI runs it as root).

#[path = "harness.rs"]
mod harness;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use harness::{iperf3, ns_run, weft, Cluster, CniRuntime, Kind, Pod};
use ipnet::Ipv4Net;

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn require_plugins() {
    assert!(
        Path::new("/usr/lib/cni/bridge").exists() && Path::new("/usr/lib/cni/host-local").exists(),
        "Debian's containernetworking-plugins are not installed: run ./scripts/test, which installs them"
    );
}

/// The pod address an ADD result reports (0.3.1 result: ips[].address).
fn pod_ip(result: &serde_json::Value) -> (Ipv4Addr, Ipv4Net) {
    let a = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {result}"));
    let net: Ipv4Net = a.parse().unwrap();
    (net.addr(), net.trunc())
}

fn mtu_of(ns: &str, dev: &str) -> u32 {
    let o = ns_run(ns, &["cat", &format!("/sys/class/net/{dev}/mtu")]);
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn veths(ns: &str) -> usize {
    let o = ns_run(ns, &["ip", "-o", "link", "show", "type", "veth"]);
    String::from_utf8_lossy(&o.stdout).lines().count()
}

/// Runs weft-cni directly with `env` and `stdin`; returns (exit ok, stdout).
fn weft_cni(env: &[(&str, &str)], stdin: &str) -> (bool, serde_json::Value) {
    let mut child = Command::new(weft().with_file_name("weft-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.success(), v)
}

#[test]
fn kube_flannel_conflist_with_debians_plugins_sets_up_and_tears_down_pods() {
    require_plugins();
    let mut c = Cluster::new(weft(), VXLAN);
    let mut envs = Vec::new();
    for i in 0..2 {
        c.add_node(Kind::Weft);
        envs.push(c.start_weft(i, &[]));
    }
    c.wait_converged();
    let rt: Vec<CniRuntime> = (0..2).map(|i| CniRuntime::kube_flannel(&c, i)).collect();
    let pods = add_a_pod_per_node(&mut c, &rt, &envs);
    // Pods on different nodes reach each other and carry iperf3 through weft.
    let (p1, p2) = (&pods[0].0, &pods[1].0);
    let o = harness::try_in_ns(&p1.ns, &format!("ping -c 3 -i 0.2 -W 2 {}", p2.ip));
    assert!(o.status.success(), "ping between CNI pods failed");
    let r = iperf3(p1, p2, 2, None);
    assert!(r.bytes > 0.0, "iperf3 moved nothing");
    harness::figure(&format!(
        "weft-cni pods ({} on node 1, {} on node 2 from host-local): iperf3 {:.2} Gbit/s",
        p1.ip,
        p2.ip,
        r.bps / 1e9
    ));

    // DEL releases the address (host-local's file) and removes the veth and the saved
    // delegate config; a second DEL of the same container succeeds.
    del_on_node_2_releases_everything(&c, &rt[1], p2, &pods[1].1);
    // ADD after DEL, in a fresh namespace: clean, and forwarding again.
    let ns = c.add_ns("cni2b");
    let id = format!("{}-c2b", c.prefix);
    let (ip, net) = pod_ip(
        &rt[1]
            .add(&id, &ns)
            .unwrap_or_else(|e| panic!("re-ADD failed: {e}")),
    );
    assert_eq!(Some(net), envs[1].subnet);
    let o = ns_run(
        &p1.ns,
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", &ip.to_string()],
    );
    assert!(o.status.success(), "ping to the re-added pod failed");
}

/// ADDs a pod on each node through `rt`; checks its subnet and MTUs; returns (pod, ID).
fn add_a_pod_per_node(
    c: &mut Cluster,
    rt: &[CniRuntime],
    envs: &[weft::subnet_env::SubnetEnv],
) -> Vec<(Pod, String)> {
    let mut pods = Vec::new();
    for i in 0..2 {
        let ns = c.add_ns(&format!("cni{}", i + 1));
        let id = format!("{}-c{}", c.prefix, i + 1);
        let result = rt[i]
            .add(&id, &ns)
            .unwrap_or_else(|e| panic!("ADD failed: {e}"));
        let (ip, net) = pod_ip(&result);
        assert_eq!(
            Some(net),
            envs[i].subnet,
            "pod address {ip} outside node {}'s subnet",
            i + 1
        );
        assert_eq!(
            mtu_of(&ns, "eth0"),
            envs[i].mtu,
            "pod MTU is not FLANNEL_MTU"
        );
        assert_eq!(mtu_of(&c.nodes[i].ns, "cni0"), envs[i].mtu);
        pods.push((
            Pod {
                ns: ns.clone(),
                ip,
                ip6: None,
            },
            id,
        ));
    }
    pods
}

/// DELs pod `p2` (container `id`) on node 2 twice; the first releases everything.
fn del_on_node_2_releases_everything(c: &Cluster, rt: &CniRuntime, p2: &Pod, id: &str) {
    let node2 = c.dir.join("n2");
    let lease_file = node2.join(format!("ipam/cbr0/{}", p2.ip));
    let saved = node2.join(format!("cni-flannel/{id}"));
    assert!(lease_file.exists() && saved.exists());
    let before = veths(&c.nodes[1].ns);
    rt.del(id, &p2.ns)
        .unwrap_or_else(|e| panic!("DEL failed: {e}"));
    assert!(
        !lease_file.exists(),
        "DEL left host-local's reservation of {}",
        p2.ip
    );
    assert!(!saved.exists(), "DEL left the saved delegate config");
    assert_eq!(veths(&c.nodes[1].ns), before - 1, "DEL left the veth");
    rt.del(id, &p2.ns).expect("a repeated DEL must succeed");
}

#[test]
fn weft_cni_errors_are_cni_error_objects() {
    require_plugins();
    let dir = std::env::temp_dir().join(format!("weft-cni-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env_file = dir.join("subnet.env");
    let conf = |subnet_file: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_str(harness::KUBE_FLANNEL_CONFLIST).unwrap();
        let mut p = v["plugins"][0].take();
        p["name"] = "cbr0".into();
        p["cniVersion"] = "0.3.1".into();
        p["subnetFile"] = subnet_file.display().to_string().into();
        p["dataDir"] = dir.join("data").display().to_string().into();
        p.to_string()
    };
    let base = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let code = |v: &serde_json::Value| v["code"].as_u64().unwrap_or(0);
    // No subnet.env yet: try again later (11), naming the file.
    let (ok, v) = weft_cni(&base, &conf(&env_file));
    assert!(!ok && code(&v) == 11, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("subnet.env"), "{v}");
    // A key missing from it: invalid config (7), naming the key.
    std::fs::write(
        &env_file,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let (ok, v) = weft_cni(&base, &conf(&env_file));
    assert!(
        !ok && code(&v) == 7 && v["msg"].as_str().unwrap().contains("FLANNEL_MTU"),
        "{v}"
    );
    // The delegate not on CNI_PATH: invalid environment (4), naming the plugin.
    std::fs::write(&env_file, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap();
    let mut no_path = base;
    no_path[4] = ("CNI_PATH", "/nonexistent");
    let (ok, v) = weft_cni(&no_path, &conf(&env_file));
    assert!(
        !ok && code(&v) == 4 && v["msg"].as_str().unwrap().contains("\"bridge\""),
        "{v}"
    );
    // Bad JSON on stdin: failed to decode (6).
    let (ok, v) = weft_cni(&base, "{\"cniVersion\":");
    assert!(!ok && code(&v) == 6, "{v}");
    // An unsupported version: incompatible (1). VERSION answers without stdin.
    let (ok, v) = weft_cni(
        &base,
        r#"{"cniVersion":"0.5.0","name":"cbr0","type":"flannel"}"#,
    );
    assert!(!ok && code(&v) == 1, "{v}");
    let (ok, v) = weft_cni(&[("CNI_COMMAND", "VERSION")], "");
    assert!(
        ok && v["supportedVersions"].as_array().unwrap().len() == 7,
        "{v}"
    );
    assert_eq!(v["supportedVersions"][6], "1.1.0", "{v}");
    // DEL of a container never added succeeds.
    let mut del = base;
    del[0] = ("CNI_COMMAND", "DEL");
    let (ok, _) = weft_cni(&del, &conf(&env_file));
    assert!(ok, "DEL of an unknown container must succeed");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether `from` gets answers from `to` (two pings).
fn pings(from: &Pod, to: &Pod) -> bool {
    let to = to.ip.to_string();
    let argv = ["ping", "-c", "2", "-i", "0.2", "-W", "2", to.as_str()];
    ns_run(&from.ns, &argv).status.success()
}

/// kube-flannel.yml's conflist at cniVersion 1.1.0, weft-cni alone: Debian's plugins 1.1.1
/// stop at 1.0.0, so its portmap cannot sit in a 1.1.0 list (libcni would hand it 1.1.0).
fn cni_1_1(c: &Cluster, i: usize) -> CniRuntime {
    let mut rt = CniRuntime::kube_flannel(c, i);
    rt.conflist["cniVersion"] = "1.1.0".into();
    rt.conflist["plugins"].as_array_mut().unwrap().truncate(1);
    rt
}

/// A 1.1.0 conflist driven with libcni's semantics: STATUS says "not available" (50) until
/// weft writes subnet.env; ADD runs Debian's bridge at 1.0.0 and answers 1.1.0; pods on two
/// nodes reach each other; GC releases an attachment the runtime lost without a DEL (its
/// saved delegate config and host-local's address) and keeps the valid one working.
#[test]
fn a_cni_1_1_conflist_gets_status_add_and_gc() {
    require_plugins();
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_node(Kind::Weft);
    c.add_node(Kind::Weft);
    let err = cni_1_1(&c, 0).status().unwrap_err();
    assert!(
        err.contains("\"code\":50") && err.contains("subnet.env"),
        "{err}"
    );
    for i in 0..2 {
        c.start_weft(i, &[]);
    }
    c.wait_converged();
    cni_1_1(&c, 0).status().unwrap();

    let mut pods = Vec::new();
    for (i, name) in [(0, "a"), (1, "b"), (1, "c")] {
        let ns = c.add_ns(&format!("v11{name}"));
        let id = format!("{}-{name}", c.prefix);
        let result = cni_1_1(&c, i).add(&id, &ns).unwrap();
        assert_eq!(result["cniVersion"], "1.1.0", "{result}");
        pods.push((
            Pod {
                ns,
                ip: pod_ip(&result).0,
                ip6: None,
            },
            id,
        ));
    }
    for (to, _) in &pods[1..] {
        assert!(pings(&pods[0].0, to), "ping {} failed", to.ip);
    }

    // Node 2's runtime lost pod c (no DEL ever came): GC with b alone valid releases c.
    let node2 = c.dir.join("n2");
    let (b, cc) = (&pods[1], &pods[2]);
    let lease = |p: &Pod| node2.join(format!("ipam/cbr0/{}", p.ip));
    let saved = |id: &str| node2.join(format!("cni-flannel/{id}"));
    assert!(lease(&cc.0).exists() && saved(&cc.1).exists());
    cni_1_1(&c, 1).gc(&[&b.1], &[(&b.1, &b.0.ns)]).unwrap();
    assert!(
        !lease(&cc.0).exists(),
        "GC left host-local's reservation of {}",
        cc.0.ip
    );
    assert!(!saved(&cc.1).exists(), "GC left c's saved delegate config");
    assert!(
        lease(&b.0).exists() && saved(&b.1).exists(),
        "GC touched the valid pod"
    );
    assert!(
        pings(&pods[0].0, &b.0),
        "the valid pod stopped answering after GC"
    );
    // A runtime that cached b and now lists nothing valid: libcni DELs b, GC finds nothing.
    cni_1_1(&c, 1).gc(&[], &[(&b.1, &b.0.ns)]).unwrap();
    assert!(!lease(&b.0).exists() && !saved(&b.1).exists());
}
