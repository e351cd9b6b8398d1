//! The kube-apiserver stand-in answers as the real server does: every response and watch
//! event is read back through k8s-openapi's types (the shapes of the Kubernetes API, not
//! weft's), and the semantics the kube subnet manager relies on are checked: list then
//! watch from its resourceVersion, bookmarks, 410 after a compaction, 404/409/415, merge
//! and strategic-merge patches of annotations and conditions, subresource rules. No root.

#[path = "kube_api.rs"]
mod standin;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, WatchEvent};
use serde_json::{json, Value};

fn start() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || standin::run(l, Duration::from_secs(1)));
    addr
}

/// One request on its own connection; (status code, JSON body).
fn call(addr: SocketAddr, method: &str, path: &str, ctype: &str, body: &Value) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    let b = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let code: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (code, serde_json::from_slice(&body).unwrap())
}

fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    call(addr, "GET", path, "application/json", &Value::Null)
}

/// A watch: the JSON lines of a chunked response.
struct Watch(BufReader<TcpStream>);

impl Watch {
    fn open(addr: SocketAddr, query: &str) -> Watch {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/v1/nodes?watch=true&{query} HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
        }
        Watch(r)
    }

    /// The next event, `None` at the end of the stream.
    fn next(&mut self) -> Option<Value> {
        let mut size = String::new();
        self.0.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return None;
        }
        let mut chunk = vec![0; n + 2];
        self.0.read_exact(&mut chunk).ok()?;
        Some(serde_json::from_slice(&chunk[..n]).unwrap())
    }

    /// The next event, read through k8s-openapi's `WatchEvent<Node>`.
    fn typed(&mut self) -> WatchEvent<Node> {
        let ev = self.next().expect("watch ended");
        serde_json::from_value(ev.clone()).unwrap_or_else(|e| panic!("{e}: {ev}"))
    }
}

fn node(name: &str, cidr: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
}

#[test]
fn objects_and_errors_have_the_real_servers_shapes() {
    let a = start();
    let (code, n) = call(
        a,
        "POST",
        "/api/v1/nodes",
        "application/json",
        &node("n1", "10.244.1.0/24"),
    );
    assert_eq!(code, 201);
    let n: Node = serde_json::from_value(n).unwrap();
    assert_eq!(n.metadata.resource_version.as_deref(), Some("1"));
    assert!(n.metadata.uid.is_some() && n.metadata.creation_timestamp.is_some());
    let (code, e) = call(
        a,
        "POST",
        "/api/v1/nodes",
        "application/json",
        &node("n1", "10.244.1.0/24"),
    );
    let e: Status = serde_json::from_value(e).unwrap();
    assert_eq!(
        (code, e.reason.as_deref(), e.code),
        (409, Some("AlreadyExists"), Some(409))
    );
    let (code, e) = get(a, "/api/v1/nodes/nope");
    let e: Status = serde_json::from_value(e).unwrap();
    assert_eq!((code, e.reason.as_deref()), (404, Some("NotFound")));
    assert_eq!(e.message.as_deref(), Some("nodes \"nope\" not found"));
    let (code, list) = get(a, "/api/v1/nodes");
    assert_eq!(code, 200);
    let list: k8s_openapi::List<Node> = serde_json::from_value(list).unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.metadata.resource_version.as_deref(), Some("1"));
    let (code, _) = call(
        a,
        "PATCH",
        "/api/v1/nodes/n1",
        "application/json-patch+json",
        &json!([]),
    );
    assert_eq!(code, 415);
    let (code, _) = call(
        a,
        "PATCH",
        "/api/v1/nodes/nope/status",
        "application/merge-patch+json",
        &json!({}),
    );
    assert_eq!(code, 404);
}

#[test]
fn patches_merge_as_the_real_server_merges_them() {
    let a = start();
    call(
        a,
        "POST",
        "/api/v1/nodes",
        "application/json",
        &node("n1", "10.244.1.0/24"),
    );
    // Annotations through the status subresource (as flanneld patches them), strategic.
    let (code, n) = call(
        a,
        "PATCH",
        "/api/v1/nodes/n1/status",
        "application/strategic-merge-patch+json",
        &json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "192.0.2.1"}}, "spec": {"podCIDR": "10.9.9.0/24"}}),
    );
    assert_eq!(code, 200);
    assert_eq!(
        n["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"],
        "192.0.2.1"
    );
    assert_eq!(
        n["spec"]["podCIDR"], "10.244.1.0/24",
        "the status subresource changed spec"
    );
    // Conditions merge by type; a second patch of the same type replaces its fields.
    for (st, reason) in [("True", "NoRouteCreated"), ("False", "FlannelIsUp")] {
        call(
            a,
            "PATCH",
            "/api/v1/nodes/n1/status",
            "application/strategic-merge-patch+json",
            &json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": st, "reason": reason}]}}),
        );
    }
    call(
        a,
        "PATCH",
        "/api/v1/nodes/n1/status",
        "application/strategic-merge-patch+json",
        &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    let (_, n) = get(a, "/api/v1/nodes/n1");
    let n: Node = serde_json::from_value(n).unwrap();
    let conds = n.status.unwrap().conditions.unwrap();
    assert_eq!(conds.len(), 2, "{conds:?}");
    assert_eq!(
        (conds[0].type_.as_str(), conds[0].status.as_str()),
        ("NetworkUnavailable", "False")
    );
    // The main resource ignores status; a merge patch with null deletes a key.
    let (_, n) = call(
        a,
        "PATCH",
        "/api/v1/nodes/n1",
        "application/merge-patch+json",
        &json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": null}}, "status": {"conditions": []}}),
    );
    assert!(n["metadata"]["annotations"]
        .get("flannel.alpha.coreos.com/public-ip")
        .is_none());
    assert_eq!(n["status"]["conditions"].as_array().unwrap().len(), 2);
}

/// Adds n2, annotates it through its status subresource and deletes n1: three changes to watch.
fn three_changes(a: SocketAddr) {
    call(
        a,
        "POST",
        "/api/v1/nodes",
        "application/json",
        &node("n2", "10.244.2.0/24"),
    );
    call(
        a,
        "PATCH",
        "/api/v1/nodes/n2/status",
        "application/strategic-merge-patch+json",
        &json!({"metadata": {"annotations": {"x.example.com/k": "v"}}}),
    );
    call(
        a,
        "DELETE",
        "/api/v1/nodes/n1",
        "application/json",
        &Value::Null,
    );
}

/// Reads the three changes from `w`, then the idle bookmark at the last one's RV; returns that RV.
fn the_changes_then_a_bookmark(w: &mut Watch) -> String {
    match w.typed() {
        WatchEvent::Added(n) => assert_eq!(n.metadata.name.as_deref(), Some("n2")),
        e => panic!("{e:?}"),
    }
    match w.typed() {
        WatchEvent::Modified(n) => {
            assert_eq!(n.metadata.annotations.unwrap()["x.example.com/k"], "v")
        }
        e => panic!("{e:?}"),
    }
    let last = match w.typed() {
        WatchEvent::Deleted(n) => {
            assert_eq!(n.metadata.name.as_deref(), Some("n1"));
            n.metadata.resource_version.unwrap()
        }
        e => panic!("{e:?}"),
    };
    // Idle: a bookmark at the current resourceVersion (every 1 s here).
    match w.typed() {
        WatchEvent::Bookmark {
            resource_version, ..
        } => assert_eq!(resource_version, last),
        e => panic!("{e:?}"),
    }
    last
}

#[test]
fn watches_follow_a_list_send_bookmarks_and_expire_after_compaction() {
    let a = start();
    call(
        a,
        "POST",
        "/api/v1/nodes",
        "application/json",
        &node("n1", "10.244.1.0/24"),
    );
    let (_, list) = get(a, "/api/v1/nodes");
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut w = Watch::open(a, &format!("resourceVersion={rv}&allowWatchBookmarks=true"));
    three_changes(a);
    let last = the_changes_then_a_bookmark(&mut w);
    // Without a resourceVersion a watch starts with the current state.
    let mut fresh = Watch::open(a, "");
    match fresh.typed() {
        WatchEvent::Added(n) => assert_eq!(n.metadata.name.as_deref(), Some("n2")),
        e => panic!("{e:?}"),
    }
    // After a compaction, a watch from the old resourceVersion gets 410 Expired and ends.
    call(
        a,
        "POST",
        "/standin/compact",
        "application/json",
        &Value::Null,
    );
    let mut old = Watch::open(a, &format!("resourceVersion={rv}"));
    match old.typed() {
        WatchEvent::ErrorStatus(s) => {
            assert_eq!((s.code, s.reason.as_deref()), (Some(410), Some("Expired")))
        }
        e => panic!("{e:?}"),
    }
    assert!(old.next().is_none(), "the stream must end after 410");
    // A watch with timeoutSeconds ends by itself.
    let mut short = Watch::open(a, &format!("resourceVersion={last}&timeoutSeconds=1"));
    assert!(short.next().is_none());
}

/// A dual-stack node as flanneld's vxlan backend annotates it (the values as flannel's
/// `AcquireLease` in pkg/subnet/kube/kube.go writes them from pkg/backend/vxlan's
/// `newSubnetAttrs`: Go's json.Marshal of vxlanLeaseAttrs, `IP6.String()`).
fn flanneld_dual_stack_node(name: &str, i: u8) -> Value {
    let p = "flannel.alpha.coreos.com";
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": {
        format!("{p}/backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"0e:00:00:00:0{i}:01"}}"#),
        format!("{p}/backend-v6-data"): format!(r#"{{"VNI":1,"VtepMAC":"0e:00:00:00:0{i}:02"}}"#),
        format!("{p}/backend-type"): "vxlan",
        format!("{p}/kube-subnet-manager"): "true",
        format!("{p}/public-ip"): format!("192.0.2.{i}"),
        format!("{p}/public-ipv6"): format!("2001:db8::{i}"),
    }}, "spec": {
        "podCIDR": format!("10.244.{i}.0/24"),
        "podCIDRs": [format!("10.244.{i}.0/24"), format!("fc00:0:0:{i}::/64")],
    }})
}

fn kube_store(a: SocketAddr, node: &str, conf: &std::path::Path) -> weft::store::kube::KubeStore {
    weft::store::kube::KubeStore::open(&weft::store::kube::KubeOptions {
        api_url: Some(format!("http://{a}")),
        kubeconfig: None,
        prefix: weft::store::kube::DEFAULT_PREFIX.into(),
        net_config_path: conf.to_path_buf(),
        set_network_unavailable: false,
        node_name: node.into(),
        pod: None,
    })
    .unwrap()
}

#[test]
fn the_kube_store_leases_dual_stack_nodes_and_refuses_ipv6_only_ones() {
    use weft::lease::{LeaseAttrs, VxlanBackendData};
    use weft::store::LeaseStore;
    let a = start();
    let post = |n: &Value| call(a, "POST", "/api/v1/nodes", "application/json", n).0;
    let mut ours = node("n1", "10.244.1.0/24");
    ours["spec"]["podCIDRs"] = json!(["10.244.1.0/24", "fc00:0:0:1::/64"]);
    assert_eq!(post(&ours), 201);
    assert_eq!(post(&flanneld_dual_stack_node("n2", 2)), 201);
    assert_eq!(post(&node("n6", "fc00:0:0:6::/64")), 201);
    let conf = std::env::temp_dir().join(format!("weft-kube-ds-{}.json", std::process::id()));
    std::fs::write(
        &conf,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let mut cfg = weft::config::NetConfig::parse(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    cfg.ipv6 = Some(weft::config::Ipv6Config {
        network: "fc00::/48".parse().unwrap(),
        subnet_len: 64,
        subnet_min: "fc00:0:0:1::".parse().unwrap(),
        subnet_max: "fc00:0:0:ffff::".parse().unwrap(),
    });
    let mac = |last: u8| VxlanBackendData {
        vni: 1,
        vtep_mac: weft::wire::MacAddr([0x0e, 0, 0, 0, 1, last]),
    };
    let attrs = |_: Option<&weft::lease::Lease>| LeaseAttrs {
        public_ipv6: Some("2001:db8::1".parse().unwrap()),
        backend_v6_data: serde_json::to_value(mac(2)).unwrap(),
        ..LeaseAttrs::vxlan("192.0.2.1".parse().unwrap(), mac(1))
    };
    let mut s = kube_store(a, "n1", &conf);
    let prev = Default::default();
    let now = std::time::SystemTime::now();
    let got = weft::store::acquire(
        &mut s,
        &cfg,
        "192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap(),
        prev,
        now,
        0,
        &attrs,
    );
    let lease = got.unwrap().stored.lease;
    assert_eq!(lease.key(), "10.244.1.0-24&fc00:0:0:1::-64");
    // Our IPv6 annotations, as flanneld writes them.
    let (_, n1) = get(a, "/api/v1/nodes/n1");
    let ann = &n1["metadata"]["annotations"];
    assert_eq!(
        ann["flannel.alpha.coreos.com/backend-v6-data"],
        r#"{"VNI":1,"VtepMAC":"0e:00:00:00:01:02"}"#
    );
    assert_eq!(ann["flannel.alpha.coreos.com/public-ipv6"], "2001:db8::1");
    // The flanneld peer, both families; the IPv6-only node is no lease.
    let leases = s.leases().unwrap();
    let peer = leases.iter().find(|l| l.attrs.public_ip.octets()[3] == 2);
    let peer = peer.unwrap_or_else(|| panic!("{leases:?}"));
    assert_eq!(peer.key(), "10.244.2.0-24&fc00:0:0:2::-64");
    assert_eq!(peer.attrs.public_ipv6, Some("2001:db8::2".parse().unwrap()));
    assert_eq!(leases.len(), 2, "{leases:?}");
    // A node of ours with an IPv6 podCIDR alone, in a network with IPv4: refused, named.
    let mut s6 = kube_store(a, "n6", &conf);
    let e = weft::store::acquire(
        &mut s6,
        &cfg,
        "192.0.2.6".parse::<std::net::Ipv4Addr>().unwrap(),
        prev,
        now,
        0,
        &attrs,
    );
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("has no IPv4 podCIDR") && e.contains("EnableIPv4 false"),
        "{e}"
    );
    let _ = std::fs::remove_file(&conf);
}

/// `limit` and `continue` page a list as the real server pages it: pages in name order,
/// each with the first page's resourceVersion and a `continue` token (percent-encoded as
/// clients send it) while more remain; a token from before a compaction gets 410.
#[test]
fn lists_come_in_pages_with_continue_tokens() {
    let a = start();
    for i in 0..5 {
        let n = node(&format!("n{i}"), &format!("10.244.{i}.0/24"));
        assert_eq!(
            call(a, "POST", "/api/v1/nodes", "application/json", &n).0,
            201
        );
    }
    let (mut names, mut token, mut rvs) = (Vec::new(), String::new(), Vec::new());
    loop {
        let q = if token.is_empty() {
            String::new()
        } else {
            format!("&continue={}", token.replace('/', "%2F"))
        };
        let (code, page) = get(a, &format!("/api/v1/nodes?limit=2{q}"));
        assert_eq!(code, 200, "{page}");
        let list: k8s_openapi::List<Node> = serde_json::from_value(page.clone()).unwrap();
        assert!(list.items.len() <= 2, "{page}");
        names.extend(list.items.iter().filter_map(|n| n.metadata.name.clone()));
        rvs.push(list.metadata.resource_version.clone().unwrap());
        match list.metadata.continue_ {
            Some(t) if !t.is_empty() => token = t,
            _ => break,
        }
        // A change while paging does not move the list's resourceVersion.
        let n = node("late", "10.244.9.0/24");
        call(a, "POST", "/api/v1/nodes", "application/json", &n);
    }
    // "late", written after the first page, sorts first: it is not in this list (the
    // watch from its resourceVersion brings it).
    assert_eq!(names, ["n0", "n1", "n2", "n3", "n4"]);
    assert!(rvs.iter().all(|rv| rv == &rvs[0]), "{rvs:?}");
    let (_, first) = get(a, "/api/v1/nodes?limit=2");
    let old = first["metadata"]["continue"]
        .as_str()
        .unwrap()
        .replace('/', "%2F");
    let n = node("later", "10.244.10.0/24");
    call(a, "POST", "/api/v1/nodes", "application/json", &n);
    call(
        a,
        "POST",
        "/standin/compact",
        "application/json",
        &Value::Null,
    );
    let (code, status) = get(a, &format!("/api/v1/nodes?limit=2&continue={old}"));
    assert_eq!(code, 410, "{status}");
    let _: Status = serde_json::from_value(status).unwrap();
}
