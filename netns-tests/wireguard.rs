//! weft's WireGuard against a stock one: the sans-IO node (`weft::wg::Node`, driven by the
//! `wg_probe` example over one UDP socket) and Debian's wireguard-go, configured with
//! wireguard-tools as flanneld configures `flannel-wg` (its `<subnet>/32` address, MTU
//! 1420, a scope-link route for the whole Network, the peer's subnet as allowed IPs and
//! PublicIP:51820 as endpoint), on a real underlay. Each side pings the other's pod
//! address through the tunnel; this kernel has no wireguard module, so wireguard-go is the
//! stock peer. Root only, like the rest.

#[path = "harness.rs"]
mod harness;

use std::process::Command;

use harness::preflight::profile_dir;
use harness::{
    ns_sh, stock_wg_device, stock_wg_device_as, stock_wg_peer, weft, wg_keys, Cluster, Stock,
    StockDevice, UapiSockets,
};

/// Starts wireguard-go on `ns` as flanneld would have `flannel-wg` there: key `private`,
/// port 51820, peer `peer` (with `psk`) for 10.244.1.0/24 at 192.0.2.1:51820, address
/// 10.244.2.0/32, MTU 1420, route 10.244.0.0/16 scope link.
fn stock_node(c: &Cluster, ns: &str, private: &str, peer: &str, psk: Option<&str>) {
    let key = c.dir.join("wgkey-b");
    stock_wg_device(
        Stock::WireguardGo,
        ns,
        DEV,
        (private, &key),
        "10.244.2.0/32",
    );
    let mut set =
        format!("wg set {DEV} peer {peer} allowed-ips 10.244.1.0/24 endpoint 192.0.2.1:51820");
    if let Some(p) = psk {
        let f = c.dir.join("psk-b");
        std::fs::write(&f, p).unwrap();
        set += &format!(" preshared-key {}", f.display());
    }
    harness::in_ns(ns, &set);
}

/// Runs the probe on `ns` (key `private`, the stock peer's `peer`, `psk`) while the stock
/// node pings 10.244.1.0 three times; (probe succeeded, ping output).
fn probe(
    c: &Cluster,
    ns: &[String; 2],
    private: &str,
    peer: &str,
    psk: Option<&str>,
) -> (bool, String) {
    let exe = profile_dir().join("examples/wg_probe");
    assert!(
        exe.exists(),
        "{} is missing: build with --all-targets",
        exe.display()
    );
    let pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns[1],
            "sh",
            "-c",
            "sleep 1; ping -c 3 -i 0.3 -W 2 10.244.1.0",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut args = vec![
        "netns",
        "exec",
        &ns[0],
        exe.to_str().unwrap(),
        "--private",
        private,
        "--peer",
        peer,
        "--listen",
        "192.0.2.1:51820",
        "--endpoint",
        "192.0.2.2:51820",
        "--src",
        "10.244.1.0",
        "--dst",
        "10.244.2.0",
        "--count",
        "3",
        "--answer",
        "3",
        "--seconds",
        "8",
    ];
    if let Some(p) = psk {
        args.extend(["--psk", p]);
    }
    let out = Command::new("ip").args(&args).output().unwrap();
    let ping = pinger.wait_with_output().unwrap();
    let _ = c;
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&ping.stdout).to_string(),
    )
}

/// flanneld's device name; its control socket is removed on every exit path.
const DEV: &str = "flannel-wg";

fn uapi_socket() -> UapiSockets {
    UapiSockets(vec![DEV.to_string()])
}

/// Two hosts on the underlay: weft's probe on 192.0.2.1, wireguard-go on 192.0.2.2.
fn two_hosts() -> (UapiSockets, Cluster, [String; 2]) {
    let mut c = Cluster::new(weft(), harness::DUAL_STACK_VXLAN);
    let a = c.add_host("wga", 1);
    let b = c.add_host("wgb", 2);
    (uapi_socket(), c, [a, b])
}

#[test]
fn weft_s_wireguard_and_a_stock_wireguard_go_reach_each_other_both_ways() {
    for psk in [
        None,
        Some(harness::sh(&["wg", "genpsk"]).trim().to_string()),
    ] {
        let (_sock, c, ns) = two_hosts();
        let ((ka, pa), (kb, pb)) = (wg_keys(), wg_keys());
        stock_node(&c, &ns[1], &kb, &pa, psk.as_deref());
        let (ok, ping) = probe(&c, &ns, &ka, &pb, psk.as_deref());
        assert!(ok, "weft's probe got no replies or no pings (psk {psk:?})");
        assert!(ping.contains("3 received"), "{ping}");
        let show = ns_sh(&ns[1], &["wg", "show", "flannel-wg", "latest-handshakes"]);
        assert!(show.contains(&pa), "{show}");
    }
}

/// The same exchange with PSKs that differ fails: nothing is accepted on either side.
#[test]
fn a_psk_that_differs_gets_nothing_through() {
    let (_sock, c, ns) = two_hosts();
    let ((ka, pa), (kb, pb)) = (wg_keys(), wg_keys());
    let (p1, p2) = (
        harness::sh(&["wg", "genpsk"]),
        harness::sh(&["wg", "genpsk"]),
    );
    stock_node(&c, &ns[1], &kb, &pa, Some(p1.trim()));
    let (ok, ping) = probe(&c, &ns, &ka, &pb, Some(p2.trim()));
    assert!(!ok);
    assert!(ping.contains(" 0 received"), "{ping}");
}

const WG_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#;

/// Node `k` set up as flanneld v0.28 sets up a wireguard node (`pkg/backend/wireguard`),
/// with wireguard-go for the module this kernel lacks: its lease in etcd in flanneld's
/// words (`newSubnetAttrs`), subnet.env as `WriteSubnetFile` writes it (MTU 1500 - 80),
/// `flannel-wg` holding 10.244.<n>.0/32 with MTU 1420 and a scope-link route for the
/// Network. Returns its public key.
fn flanneld_wireguard_node(c: &mut Cluster, k: usize) -> String {
    let n = k + 1;
    let sn = flanneld_octet(c, n);
    let (private, public) = wg_keys();
    let key = c.dir.join(format!("wgkey-{n}"));
    let ns = c.nodes[k].ns.clone();
    let address = format!("10.244.{sn}.0/32");
    stock_wg_device(Stock::WireguardGo, &ns, DEV, (&private, &key), &address);
    let value = format!(
        r#"{{"PublicIP":"192.0.2.{n}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{public}","Port":51820}}}}"#
    );
    put_flanneld_lease(c, &format!("10.244.{sn}.0-24"), &value);
    let env = format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.{sn}.1/24\nFLANNEL_MTU=1420\nFLANNEL_IPMASQ=false\n");
    let file = c.nodes[k].subnet_file.clone();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, env).unwrap();
    public
}

/// The third octet of the subnet a flanneld node `n` takes: `n` (10.244.<n>.0/24,
/// fd00:10:244:<n>::/64) unless a weft node already holds it (weft picks its subnet at
/// random), else a free one: writing over a weft node's lease would take it away.
fn flanneld_octet(c: &Cluster, n: usize) -> usize {
    let taken: Vec<usize> = (c.leases().iter())
        .flat_map(|l| {
            let v4 = l.subnet.map(|s| s.network().octets()[2] as usize);
            v4.into_iter()
                .chain(l.ipv6_subnet.map(|s| s.network().segments()[3] as usize))
        })
        .collect();
    let free = |x: &usize| !taken.contains(x);
    std::iter::once(n)
        .chain(200..=254)
        .find(free)
        .expect("a free subnet")
}

/// Puts `value` under subnet key `key` in etcd with a day's TTL, as flanneld's
/// `AcquireLease` does.
fn put_flanneld_lease(c: &Cluster, key: &str, value: &str) {
    let etcd = c.etcd.as_ref().expect("an etcd cluster");
    let grant = etcd.ctl(&["lease", "grant", "86400"]);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    let lkey = format!("{}/subnets/{key}", harness::ETCD_PREFIX);
    etcd.ctl(&["put", &format!("--lease={id}"), &lkey, value]);
}

/// flanneld's peer programming on node `k` (`addPeer`): for every other lease in etcd,
/// read raw, a peer with its public key, its subnet as allowed IPs, PublicIP:Port.
fn program_flanneld_wg_peers(c: &Cluster, k: usize) {
    let prefix = format!("{}/subnets/", harness::ETCD_PREFIX);
    let ns = &c.nodes[k].ns;
    for (key, v) in c.etcd.as_ref().unwrap().get_prefix(&prefix) {
        let v: serde_json::Value = serde_json::from_str(&v).unwrap();
        let ip_ = v["PublicIP"].as_str().unwrap();
        if ip_ == c.nodes[k].ip.to_string() {
            continue;
        }
        let subnet = key[prefix.len()..].replace('-', "/");
        let data = &v["BackendData"];
        let endpoint = format!("{ip_}:{}", data["Port"]);
        let public = data["PublicKey"].as_str().unwrap();
        stock_wg_peer(ns, DEV, public, &subnet, &endpoint);
    }
}

/// Two weft wireguard nodes (their keys in `wgkey-1`, `wgkey-2` of the cluster's
/// directory) and one set up as flanneld, a pod on each; (the cluster, the flanneld
/// node's index, its public key).
fn wireguard_cluster() -> (Cluster, usize, String) {
    let mut c = Cluster::with_etcd(weft(), WG_CONF);
    for _ in 0..2 {
        let i = c.add_node(harness::Kind::Weft);
        start_wg_weft(&mut c, i);
    }
    let k = c.add_node(harness::Kind::Weft);
    let flanneld_key = flanneld_wireguard_node(&mut c, k);
    program_flanneld_wg_peers(&c, k);
    for i in 0..3 {
        c.add_pod(i, None);
    }
    (c, k, flanneld_key)
}

/// Starts weft on node `i` with its key file and its UAPI socket's directory in the
/// cluster's directory (the nodes share this host's /var/run/wireguard otherwise).
fn start_wg_weft(c: &mut Cluster, i: usize) {
    let key = key_file(c, i);
    let uapi = uapi_dir(c, i);
    c.start_weft_env(
        i,
        &[],
        &[
            ("WIREGUARD_KEY_FILE", key.to_str().unwrap()),
            ("WEFT_WG_UAPI_DIR", uapi.to_str().unwrap()),
        ],
    );
}

fn uapi_dir(c: &Cluster, i: usize) -> std::path::PathBuf {
    c.dir.join(format!("uapi-{}", i + 1))
}

/// Runs `wg <args>` on weft's node `i` as an operator would, its UAPI directory mounted
/// where wireguard-tools looks (/var/run/wireguard), in a mount namespace of its own.
fn wg_on_weft(c: &Cluster, i: usize, args: &[&str]) -> std::process::Output {
    let dir = uapi_dir(c, i);
    let mount = format!(
        "mkdir -p /var/run/wireguard && mount --bind {} /var/run/wireguard",
        dir.display()
    );
    let mut argv = harness::after_private_mount(&mount);
    argv.push("wg".into());
    argv.extend(args.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    harness::ns_run(&c.nodes[i].ns, &argv)
}

/// `wg show flannel-wg dump` on weft's node 1 lists its key and port, and a peer for each
/// other node with its lease's endpoint and subnet, a handshake and bytes received; `wg
/// set` is refused (the store owns the peers).
fn check_wg_show(c: &Cluster, k: usize, flanneld_key: &str) {
    let o = wg_on_weft(c, 0, &["show", "flannel-wg", "dump"]);
    let dump = harness::output_text(&o);
    assert!(o.status.success(), "wg show: {dump}");
    let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines[0][1], published_key(c, 0), "{dump}");
    assert_eq!(lines[0][2], "51820", "{dump}");
    assert_eq!(lines.len(), 3, "two peers: {dump}");
    let peer = lines.iter().find(|l| l[0] == flanneld_key).expect(&dump);
    assert_eq!(peer[2], format!("{}:51820", c.nodes[k].ip), "{dump}");
    assert_eq!(peer[3], format!("10.244.{}.0/24", k + 1), "{dump}");
    assert_ne!(peer[4], "0", "no handshake: {dump}");
    assert_ne!(peer[5], "0", "nothing received: {dump}");
    let (_, stranger) = wg_keys();
    let set = [
        "set",
        "flannel-wg",
        "peer",
        &stranger,
        "allowed-ips",
        "10.244.9.0/24",
    ];
    assert!(!wg_on_weft(c, 0, &set).status.success(), "wg set was taken");
}

fn key_file(c: &Cluster, i: usize) -> std::path::PathBuf {
    c.dir.join(format!("wgkey-{}", i + 1))
}

/// The public key node `i`'s lease publishes.
fn published_key(c: &Cluster, i: usize) -> String {
    let ip_ = c.nodes[i].ip;
    let l = c.leases().into_iter().find(|l| l.attrs.public_ip == ip_);
    let l = l.unwrap_or_else(|| panic!("no lease for node {}", i + 1));
    l.attrs.backend_data["PublicKey"]
        .as_str()
        .expect("a PublicKey")
        .to_string()
}

/// Two weft wireguard nodes and one set up as flanneld: every pod reaches every other with
/// the largest DF ping the 1420-byte path holds, TCP runs between weft and flanneld's pods,
/// and the underlay carries nothing but WireGuard messages on port 51820 (beside the
/// store's own traffic, to etcd's port 2379).
#[test]
fn weft_wireguard_nodes_and_a_flanneld_wireguard_node_reach_each_other() {
    let _sock = uapi_socket();
    let (c, k, flanneld_key) = wireguard_cluster();
    // weft's leases in flanneld's words, and weft's devices as flanneld's.
    let flanneld_ip = c.nodes[k].ip;
    let ours: Vec<_> = c
        .leases()
        .into_iter()
        .filter(|l| l.attrs.public_ip != flanneld_ip)
        .collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
    for l in &ours {
        assert_eq!(l.attrs.backend_type, "wireguard", "{l:?}");
        assert_eq!(l.attrs.backend_data["Port"], 51820, "{l:?}");
        assert_eq!(
            l.attrs.backend_data["PublicKey"].as_str().map(str::len),
            Some(44),
            "{l:?}"
        );
    }
    let link = ns_sh(&c.nodes[0].ns, &["ip", "-d", "link", "show", "flannel-wg"]);
    assert!(link.contains("mtu 1420"), "{link}");
    let route = ns_sh(&c.nodes[0].ns, &["ip", "route", "show", "10.244.0.0/16"]);
    assert!(route.contains("10.244.0.0/16 dev flannel-wg"), "{route}");
    let cap = harness::Capture::start(
        &c.nodes[0].ns.clone(),
        "eth0",
        "ip and not port 2379",
        &c.dir.join("wg.pcap"),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let failed = c.ping_all();
    assert!(failed.is_empty(), "{failed:#?}");
    let pods = c.pods();
    for (a, b) in [(0, 2), (2, 0), (0, 1)] {
        let big = format!("ping -c 1 -W 2 -M do -s {} {}", 1420 - 28, pods[b].ip);
        let o = harness::try_in_ns(&pods[a].ns, &big);
        assert!(o.status.success(), "DF ping {a} -> {b}");
    }
    let t = harness::iperf3(&pods[0], &pods[2], 2, None);
    assert!(t.bps > 0.0, "no TCP between weft and flanneld's pods");
    let frames = cap.stop();
    assert!(frames.len() > 20, "{} frames", frames.len());
    for f in &frames {
        let ip_ = &f[14..];
        assert_eq!(ip_[9], 17, "not UDP on the underlay: {f:?}");
        let udp = &ip_[(ip_[0] & 15) as usize * 4..];
        let ports = [
            u16::from_be_bytes([udp[0], udp[1]]),
            u16::from_be_bytes([udp[2], udp[3]]),
        ];
        assert_eq!(ports, [51820, 51820], "{f:?}");
        assert!(
            (1..=4).contains(&udp[8]) && udp[9..12] == [0, 0, 0],
            "not WireGuard: {f:?}"
        );
    }
    check_wg_show(&c, k, &flanneld_key);
    let show = ns_sh(
        &c.nodes[k].ns,
        &["wg", "show", "flannel-wg", "latest-handshakes"],
    );
    assert!(
        !show.contains("\t0\n") && !flanneld_key.is_empty(),
        "{show}"
    );
}

/// The flood: `wg_flood` on the flanneld node sends 20 000 handshake initiations a second
/// (from keys that are no peer's) at weft's node 1 for 6 seconds, while node 2's pod
/// pings node 1's; (ping's output, the flooder's report).
fn flood_while_pinging(c: &Cluster, k: usize, target_key: &str) -> (String, String) {
    let exe = profile_dir().join("examples/wg_flood");
    let target = format!("{}:51820", c.nodes[0].ip);
    let flooder = Command::new("ip")
        .args(["netns", "exec", &c.nodes[k].ns])
        .arg(&exe)
        .args(["--target", &target, "--peer", target_key])
        .args(["--rate", "20000", "--seconds", "6"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wg_flood (cargo build --examples)");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let pods = c.pods();
    let ping = format!("ping -c 40 -i 0.1 -W 1 {}", pods[0].ip);
    let o = harness::try_in_ns(&pods[1].ns, &ping);
    let f = flooder.wait_with_output().unwrap();
    (
        harness::output_text(&o),
        String::from_utf8_lossy(&f.stdout).to_string(),
    )
}

/// The number before `word` in `text` (`40 received` -> 40).
fn count_before(text: &str, word: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    let i = words.iter().position(|w| w.trim_matches(',') == word);
    i.and_then(|i| words.get(i.checked_sub(1)?)?.parse().ok())
        .unwrap_or_else(|| panic!("no count before {word:?} in {text}"))
}

/// weft keeps its key across a restart (the same public key in its lease, the key file
/// still mode 0400) and its peers, weft and flanneld, reach it again; then a flood of
/// handshake initiations from strangers is answered with cookie replies, counted in
/// /metrics, while an established peer's pings keep coming through.
#[test]
fn the_key_survives_a_restart_and_a_flood_of_initiations_gets_cookies_not_the_tunnel() {
    use std::os::unix::fs::PermissionsExt;
    let _sock = uapi_socket();
    let (mut c, k, _) = wireguard_cluster();
    let failed = c.ping_all();
    assert!(failed.is_empty(), "{failed:#?}");
    let before = published_key(&c, 0);
    assert!(c.stop_weft(0), "weft did not exit cleanly");
    start_wg_weft(&mut c, 0);
    assert_eq!(published_key(&c, 0), before, "a new key after the restart");
    let mode = std::fs::metadata(key_file(&c, 0))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400, "the key file's mode");
    let pods = c.pods();
    for b in [1, 2] {
        let o = harness::try_in_ns(&pods[0].ns, &format!("ping -c 3 -W 2 {}", pods[b].ip));
        assert!(
            o.status.success(),
            "node 1 -> {}: {}",
            b + 1,
            harness::output_text(&o)
        );
    }
    let failed = c.ping_all();
    assert!(failed.is_empty(), "after the restart: {failed:#?}");
    let m0 = c.metrics(0);
    assert!(m0["weft_wireguard_handshakes_total"] >= 2, "{m0:?}");
    let (ping, flood) = flood_while_pinging(&c, k, &before);
    eprintln!("{ping}\n{flood}");
    let m1 = c.metrics(0);
    let d = |name: &str| m1[name] - m0[name];
    let received = count_before(&ping, "received");
    assert!(
        received >= 36,
        "the established peer lost its traffic: {ping}"
    );
    assert!(count_before(&flood, "cookie") > 0, "{flood}");
    assert!(d("weft_wireguard_cookie_replies_total") > 1000, "{m1:?}");
    assert!(
        d("weft_wireguard_drops_total{reason=\"unknown_peer\"}") > 0,
        "initiations under the limit are refused as from no peer: {m1:?}"
    );
    harness::figure(&format!(
        "wireguard flood: {} initiations in 6 s, {} cookie replies, pings {received}/40",
        count_before(&flood, "initiations"),
        d("weft_wireguard_cookie_replies_total")
    ));
}

/// A TCP stream from weft's pod to flanneld's that runs 130 seconds crosses a rekey
/// (WireGuard renews a session's keys after 120): the stream keeps its connection, data
/// moves in every second, and both sides show the new handshake.
#[test]
fn a_stream_keeps_its_connection_across_a_rekey() {
    let _sock = uapi_socket();
    let (c, k, _) = wireguard_cluster();
    let failed = c.ping_all();
    assert!(failed.is_empty(), "{failed:#?}");
    let h0 = c.metrics(0)["weft_wireguard_handshakes_total"];
    let pods = c.pods();
    let v = harness::iperf3_json(&pods[0], &pods[2], &["-t", "130", "-i", "1", "-b", "20M"])
        .expect("the stream broke");
    let per_second = harness::iperf3_per_second(&v);
    assert!(per_second.len() >= 129, "{per_second:?}");
    let idle: Vec<usize> = (0..per_second.len())
        .filter(|&i| per_second[i] <= 0.0)
        .collect();
    assert!(idle.is_empty(), "seconds without data: {idle:?}");
    let h1 = c.metrics(0)["weft_wireguard_handshakes_total"];
    assert!(h1 > h0, "no rekey in 130 s: handshakes {h0} -> {h1}");
    let show = ns_sh(
        &c.nodes[k].ns,
        &["wg", "show", "flannel-wg", "latest-handshakes"],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key0 = published_key(&c, 0);
    let line = show
        .lines()
        .find(|l| l.starts_with(&key0))
        .expect("node 1's peer");
    let at: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        now.saturating_sub(at) < 60,
        "flanneld's last handshake with node 1 is old: {show}"
    );
}

/// separate mode's IPv6 device.
const DEV6: &str = "flannel-wg-v6";

/// A dual-stack wireguard net-conf.json in `mode`.
fn wg_dual(mode: &str) -> String {
    format!(
        r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{{"Type":"wireguard","Mode":"{mode}"}}}}"#
    )
}

/// Node `k` set up as flanneld v0.28 sets up a dual-stack wireguard node: in separate mode
/// (`one` false) `flannel-wg` on 51820 with 10.244.<n>.0/32 and `flannel-wg-v6` on 51821
/// with fd00:10:244:<n>::/128, else one `flannel-wg` on 51820 with both; each with a
/// scope-link route for its Networks and MTU 1420 (wireguard-go for the missing module).
/// Its lease as `newSubnetAttrs` writes it (ListenPortV6 in BackendV6Data in every mode),
/// subnet.env as `WriteSubnetFile`. Returns its public key.
fn flanneld_dual_wg_node(c: &mut Cluster, k: usize, one: bool) -> String {
    let n = k + 1;
    let sn = flanneld_octet(c, n);
    let v6 = harness::v6_underlay(c, k);
    let (private, public) = wg_keys();
    let ns = c.nodes[k].ns.clone();
    let (a4, a6) = (
        format!("10.244.{sn}.0/32"),
        format!("fd00:10:244:{sn}::/128"),
    );
    const R4: &str = "10.244.0.0/16";
    const R6: &str = "fd00:10:244::/56";
    let key = c.dir.join(format!("wgkey-{n}"));
    let (both, only4, only6) = ([a4.as_str(), &a6], [a4.as_str()], [a6.as_str()]);
    let devices = if one {
        vec![(
            DEV,
            StockDevice {
                port: 51820,
                addresses: &both,
                routes: &[R4, R6],
            },
        )]
    } else {
        vec![
            (
                DEV,
                StockDevice {
                    port: 51820,
                    addresses: &only4,
                    routes: &[R4],
                },
            ),
            (
                DEV6,
                StockDevice {
                    port: 51821,
                    addresses: &only6,
                    routes: &[R6],
                },
            ),
        ]
    };
    for (dev, plan) in &devices {
        stock_wg_device_as(Stock::WireguardGo, &ns, dev, (&private, &key), plan);
    }
    let value = format!(
        r#"{{"PublicIP":"192.0.2.{n}","PublicIPv6":"{v6}","BackendType":"wireguard","BackendData":{{"PublicKey":"{public}","Port":51820}},"BackendV6Data":{{"PublicKey":"{public}","Port":51821}}}}"#
    );
    put_flanneld_lease(
        c,
        &format!("10.244.{sn}.0-24&fd00:10:244:{sn}::-64"),
        &value,
    );
    let env = format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.{sn}.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:{sn}::1/64\nFLANNEL_MTU=1420\nFLANNEL_IPMASQ=false\n");
    let file = c.nodes[k].subnet_file.clone();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, env).unwrap();
    public
}

/// flanneld's `handleSubnetEvents` on node `k` for every other lease, read raw from etcd:
/// in separate mode a peer on each device (its IPv4 subnet at PublicIP:Port, its IPv6
/// subnet at [PublicIPv6]:BackendV6Data.Port); in ipv6 mode one peer on `flannel-wg`
/// with both subnets at [PublicIPv6]:BackendV6Data.Port.
fn program_flanneld_dual_wg_peers(c: &Cluster, k: usize, one: bool) {
    let prefix = format!("{}/subnets/", harness::ETCD_PREFIX);
    let ns = &c.nodes[k].ns;
    for (key, v) in c.etcd.as_ref().unwrap().get_prefix(&prefix) {
        let v: serde_json::Value = serde_json::from_str(&v).unwrap();
        if v["PublicIP"] == c.nodes[k].ip.to_string() {
            continue;
        }
        let (s4, s6) = key[prefix.len()..]
            .split_once('&')
            .expect("a dual-stack key");
        let (s4, s6) = (s4.replace('-', "/"), s6.replace('-', "/"));
        let public = v["BackendV6Data"]["PublicKey"].as_str().unwrap();
        let ep4 = format!(
            "{}:{}",
            v["PublicIP"].as_str().unwrap(),
            v["BackendData"]["Port"]
        );
        let ep6 = format!(
            "[{}]:{}",
            v["PublicIPv6"].as_str().unwrap(),
            v["BackendV6Data"]["Port"]
        );
        if one {
            stock_wg_peer(ns, DEV, public, &format!("{s4},{s6}"), &ep6);
        } else {
            stock_wg_peer(ns, DEV, public, &s4, &ep4);
            stock_wg_peer(ns, DEV6, public, &s6, &ep6);
        }
    }
}

/// Two weft nodes and one set up as flanneld in a dual-stack wireguard network in `mode`
/// (the flanneld node's lease is in etcd before weft's nodes start), a pod on each:
/// (the cluster, the flanneld node's index, its public key).
fn dual_wireguard_cluster(mode: &str) -> (Cluster, usize, String) {
    let mut c = Cluster::with_etcd(weft(), &wg_dual(mode));
    for _ in 0..2 {
        let i = c.add_node(harness::Kind::Weft);
        harness::v6_underlay(&c, i);
    }
    let k = c.add_node(harness::Kind::Weft);
    let one = mode != "separate";
    let flanneld_key = flanneld_dual_wg_node(&mut c, k, one);
    for i in 0..2 {
        start_wg_weft(&mut c, i);
    }
    program_flanneld_dual_wg_peers(&c, k, one);
    for i in 0..3 {
        let pod = c.add_pod(i, None);
        assert!(pod.ip6.is_some(), "a pod without IPv6: {pod:?}");
    }
    (c, k, flanneld_key)
}

/// The outer family (4 or 6), UDP ports and UDP payload of an Ethernet frame captured on
/// the underlay, which must be UDP.
fn outer_udp(f: &[u8]) -> (u8, [u16; 2], &[u8]) {
    let (family, udp) = match f[12..14] {
        [0x08, 0x00] => {
            let ip_ = &f[14..];
            assert_eq!(ip_[9], 17, "not UDP on the underlay: {f:?}");
            (4, &ip_[(ip_[0] & 15) as usize * 4..])
        }
        [0x86, 0xdd] => {
            assert_eq!(f[14 + 6], 17, "not UDP on the underlay: {f:?}");
            (6, &f[14 + 40..])
        }
        _ => panic!("neither IPv4 nor IPv6 on the underlay: {f:?}"),
    };
    let port = |i: usize| u16::from_be_bytes([udp[i], udp[i + 1]]);
    (family, [port(0), port(2)], &udp[8..])
}

/// Every pod reaches every other in both families with the largest DF ping the 1420-byte
/// devices hold, TCP runs both ways between weft's and flanneld's pods over IPv6 and one
/// way over IPv4, and node 1's underlay carries only WireGuard messages: per outer family,
/// the ports `ports` says ((family, port); 0 for a family that must not appear).
fn assert_dual_traffic(c: &Cluster, k: usize, ports: [(u8, u16); 2]) {
    let cap = harness::Capture::start(
        &c.nodes[0].ns.clone(),
        "eth0",
        "udp and not port 2379",
        &c.dir.join("wg-dual.pcap"),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    harness::assert_all_reach(c, 1420 - 28, 1420 - 48);
    let pods = c.pods();
    for (a, b) in [(0, k), (k, 0)] {
        let bytes = harness::iperf3_v6(&pods[a], &pods[b]);
        assert!(bytes > 0.0, "no TCP over IPv6 from pod {a} to pod {b}");
    }
    assert!(
        harness::iperf3(&pods[0], &pods[k], 2, None).bps > 0.0,
        "no TCP over IPv4"
    );
    let frames = cap.stop();
    let mut seen = [0usize; 2];
    for f in &frames {
        let (family, p, payload) = outer_udp(f);
        let want = ports
            .iter()
            .find(|(fam, _)| *fam == family)
            .map(|(_, p)| *p);
        assert_eq!(
            Some([p[0], p[0]]),
            want.map(|w| [w, w]),
            "IPv{family} {f:?}"
        );
        assert_eq!(p[0], p[1], "{f:?}");
        assert!(
            (1..=4).contains(&payload[0]) && payload[1..4] == [0, 0, 0],
            "not WireGuard: {f:?}"
        );
        seen[usize::from(family == 6)] += 1;
    }
    for (i, (family, port)) in ports.iter().enumerate() {
        let n = seen[usize::from(*family == 6)];
        assert!(
            *port == 0 || n > 20,
            "{n} IPv{family} frames (ports {ports:?}, #{i})"
        );
    }
}

/// The line of `wg show <dev> dump` on weft's node 1 for the peer with key `peer`, after
/// checking the device's own line (its port).
fn weft_dump_peer(c: &Cluster, dev: &str, port: u16, peer: &str) -> Vec<String> {
    let o = wg_on_weft(c, 0, &["show", dev, "dump"]);
    let dump = harness::output_text(&o);
    assert!(o.status.success(), "wg show {dev}: {dump}");
    let lines: Vec<Vec<String>> = dump
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    assert_eq!(lines[0][2], port.to_string(), "{dump}");
    assert_eq!(lines.len(), 3, "two peers: {dump}");
    let line = lines.iter().find(|l| l[0] == peer).expect(&dump);
    assert_ne!(line[4], "0", "no handshake: {dump}");
    line.clone()
}

/// Dual-stack, separate mode (flanneld's default): IPv4 pods cross `flannel-wg` over the
/// IPv4 underlay on 51820, IPv6 pods `flannel-wg-v6` over the IPv6 underlay on 51821,
/// between two weft nodes and a node set up as flanneld sets one up.
#[test]
fn dual_stack_separate_mode_carries_each_family_on_its_own_device_and_port() {
    let _sock = UapiSockets(vec![DEV.into(), DEV6.into()]);
    let (c, k, flanneld_key) = dual_wireguard_cluster("separate");
    let flanneld_ip = c.nodes[k].ip;
    for l in c
        .leases()
        .iter()
        .filter(|l| l.attrs.public_ip != flanneld_ip)
    {
        let a = &l.attrs;
        assert!(a.public_ipv6.is_some() && l.ipv6_subnet.is_some(), "{l:?}");
        assert_eq!(a.backend_data["Port"], 51820, "{l:?}");
        assert_eq!(a.backend_v6_data["Port"], 51821, "{l:?}");
        assert_eq!(a.backend_data["PublicKey"], a.backend_v6_data["PublicKey"]);
    }
    let ns = &c.nodes[0].ns;
    let v6dev = ns_sh(ns, &["ip", "-6", "addr", "show", "dev", DEV6]);
    assert!(
        v6dev.contains("mtu 1420") && v6dev.contains("/128 scope global"),
        "{v6dev}"
    );
    let r6 = ns_sh(ns, &["ip", "-6", "route", "show", "fd00:10:244::/56"]);
    assert!(r6.contains(&format!("dev {DEV6}")), "{r6}");
    assert_dual_traffic(&c, k, [(4, 51820), (6, 51821)]);
    let v6 = weft_dump_peer(&c, DEV6, 51821, &flanneld_key);
    assert_eq!(v6[2], format!("[2001:db8::{}]:51821", k + 1), "{v6:?}");
    assert_eq!(v6[3], format!("fd00:10:244:{}::/64", k + 1), "{v6:?}");
    let v4 = weft_dump_peer(&c, DEV, 51820, &flanneld_key);
    assert_eq!(v4[3], format!("10.244.{}.0/24", k + 1), "{v4:?}");
}

/// Dual-stack, `Mode: "ipv6"`: one device, `flannel-wg`, carries both families, every
/// peer reached over the IPv6 underlay on the one port it listens on, which weft's lease
/// publishes in BackendV6Data too (flanneld publishes ListenPortV6 there).
#[test]
fn dual_stack_ipv6_mode_carries_both_families_on_one_device_over_ipv6() {
    let _sock = UapiSockets(vec![DEV.into()]);
    let (c, k, flanneld_key) = dual_wireguard_cluster("ipv6");
    let flanneld_ip = c.nodes[k].ip;
    for l in c
        .leases()
        .iter()
        .filter(|l| l.attrs.public_ip != flanneld_ip)
    {
        assert_eq!(l.attrs.backend_data["Port"], 51820, "{l:?}");
        assert_eq!(l.attrs.backend_v6_data["Port"], 51820, "{l:?}");
    }
    let ns = &c.nodes[0].ns;
    let dev = ns_sh(ns, &["ip", "addr", "show", "dev", DEV]);
    assert!(
        dev.contains("/32 scope global") && dev.contains("/128 scope global"),
        "{dev}"
    );
    let links = ns_sh(ns, &["ip", "link", "show"]);
    assert!(!links.contains(DEV6), "{links}");
    assert_dual_traffic(&c, k, [(6, 51820), (4, 0)]);
    let peer = weft_dump_peer(&c, DEV, 51820, &flanneld_key);
    assert_eq!(peer[2], format!("[2001:db8::{}]:51820", k + 1), "{peer:?}");
    let flanneld = c
        .leases()
        .into_iter()
        .find(|l| l.attrs.public_ip == c.nodes[k].ip);
    let sn = flanneld
        .and_then(|l| l.subnet)
        .expect("the flanneld node's lease");
    let sn = sn.network().octets()[2];
    assert_eq!(
        peer[3],
        format!("10.244.{sn}.0/24,fd00:10:244:{sn}::/64"),
        "{peer:?}"
    );
}

/// IPv6-only (`EnableIPv4` false): separate mode makes `flannel-wg-v6` alone, the lease
/// is flanneld's IPv6-only one (key `0.0.0.0-0&<v6>`, PublicIP 0.0.0.0, no BackendData,
/// the key and ListenPortV6 in BackendV6Data), and two weft nodes' pods reach each other
/// with the largest DF ping over the IPv6 underlay.
#[test]
fn an_ipv6_only_network_runs_on_flannel_wg_v6_alone() {
    let conf = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard"}}"#;
    // The harness's own addressing wants an IPv4 Network; the nodes read etcd's config.
    let mut c = Cluster::with_etcd(weft(), &wg_dual("separate"));
    c.etcd()
        .ctl(&["put", &format!("{}/config", harness::ETCD_PREFIX), conf]);
    for _ in 0..2 {
        let i = c.add_node(harness::Kind::Weft);
        harness::v6_underlay(&c, i);
        start_wg_weft(&mut c, i);
    }
    let prefix = format!("{}/subnets/", harness::ETCD_PREFIX);
    let leases = c.etcd.as_ref().unwrap().get_prefix(&prefix);
    assert_eq!(leases.len(), 2, "{leases:?}");
    for (key, v) in &leases {
        assert!(
            key[prefix.len()..].starts_with("0.0.0.0-0&fd00:10:244:"),
            "{key}"
        );
        let v: serde_json::Value = serde_json::from_str(v).unwrap();
        assert_eq!(v["PublicIP"], "0.0.0.0", "{v}");
        assert!(v.get("BackendData").is_none(), "{v}");
        assert_eq!(v["BackendV6Data"]["Port"], 51821, "{v}");
        assert_eq!(
            v["BackendV6Data"]["PublicKey"].as_str().map(str::len),
            Some(44)
        );
    }
    let links = ns_sh(&c.nodes[0].ns, &["ip", "-o", "link", "show"]);
    assert!(
        links.contains(DEV6) && !links.contains(&format!("{DEV}:")),
        "{links}"
    );
    let pods: Vec<_> = (0..2)
        .map(|i| harness::add_v6_only_pod(&mut c, i))
        .collect();
    for (a, b) in [(0, 1), (1, 0)] {
        let ping = format!("ping -c 2 -i 0.2 -W 2 -M do -s {} {}", 1420 - 48, pods[b].1);
        let o = harness::try_in_ns(&pods[a].0, &ping);
        assert!(
            o.status.success(),
            "{} -> {}: {}",
            pods[a].1,
            pods[b].1,
            harness::output_text(&o)
        );
    }
}
