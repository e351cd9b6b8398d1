//! weft on a real etcd server (Debian's etcd-server, started by the harness in its own
//! namespace on the test underlay): flannel's key layout, a mixed cluster with a "stock
//! flannel" kernel vxlan node, faults (etcd down under traffic, a partition across a
//! compaction, deletions), allocation races, and --ip-masq. Root only, like the rest.

#[path = "harness.rs"]
mod harness;

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use harness::{iperf3, iperf3_json, ns_run, ns_sh, weft, Cluster, Kind, ETCD_PREFIX};
use weft::lease::{Lease, LeaseAttrs};
use weft::store::etcd::{EtcdOptions, EtcdStore};
use weft::store::{LeaseStore, StoreError};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// Three subnets in all (10.244.1-3.0/24): races for them are frequent.
const TINY: &str = r#"{"Network":"10.244.0.0/22","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

fn subnets_prefix() -> String {
    format!("{ETCD_PREFIX}/subnets/")
}

fn etcd_cluster(conf: &str, nodes: usize, extra: &[&str]) -> Cluster {
    let mut c = Cluster::with_etcd(weft(), conf);
    c.add_weft_nodes(nodes, extra);
    c
}

#[test]
fn three_nodes_on_etcd_write_flannels_keys_reach_each_other_and_keep_subnets_on_restart() {
    let mut c = etcd_cluster(VXLAN, 3, &[]);
    // One key per node, flannel's key format, flannel's JSON, a 24 h etcd lease.
    let kvs = c.etcd().get_prefix(&subnets_prefix());
    assert_eq!(kvs.len(), 3, "{kvs:?}");
    for (i, n) in c.nodes.iter().enumerate() {
        let subnet = c.subnet(i);
        let key = format!(
            "{}{}-{}",
            subnets_prefix(),
            subnet.network(),
            subnet.prefix_len()
        );
        let (_, value) = kvs
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no key {key} in {kvs:?}"));
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(v["PublicIP"], n.ip.to_string(), "{value}");
        assert!(v["PublicIPv6"].is_null(), "{value}");
        assert_eq!(v["BackendType"], "vxlan");
        assert_eq!(v["BackendData"]["VNI"], 1);
        let mac = v["BackendData"]["VtepMAC"].as_str().unwrap();
        assert_eq!(mac.len(), 17, "{value}");
        let etcd = c.etcd.as_ref().unwrap();
        let id = etcd.lease_of(&key);
        assert_ne!(id, 0, "{key} must carry an etcd lease");
        let ttl = etcd.ctl(&["lease", "timetolive", &format!("{id:x}")]);
        assert!(ttl.contains("granted with TTL(86400s)"), "{ttl}");
    }
    let failed = c.ping_all();
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));
    let (a, b) = (c.nodes[0].pods[0].clone(), c.nodes[2].pods[0].clone());
    let r = iperf3(&a, &b, 3, None);
    assert!(r.bytes > 0.0);
    harness::figure(&format!(
        "etcd cluster iperf3 TCP node 1 -> node 3: {:.2} Gbit/s",
        r.bps / 1e9
    ));

    // A restart reuses the subnet (found by public IP in etcd) and the VTEP MAC.
    let before = c.subnet(1);
    let before_kv = c.etcd().get_prefix(&subnets_prefix());
    assert!(c.stop_weft(1), "weft did not stop cleanly");
    c.start_weft(1, &[]);
    assert_eq!(c.subnet(1), before);
    let after_kv = c.etcd().get_prefix(&subnets_prefix());
    assert_eq!(
        after_kv, before_kv,
        "restart must not change any lease value"
    );
    c.wait_converged();
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "pings after restart failed:\n{}",
        failed.join("\n")
    );
}

#[test]
fn stock_flannel_node_and_weft_nodes_share_one_etcd() {
    let mut c = Cluster::with_etcd(weft(), VXLAN);
    // The flanneld node's lease is written as flanneld writes it (etcdctl: grant 86400, put
    // --lease), and flannel.1 is programmed from what etcdctl reads back.
    let (to_kernel, from_kernel) = c.mixed_with_kernel_node("10.244.77.0/24", 1);
    harness::figure(&format!(
        "etcd mixed cluster iperf3 TCP: weft -> flannel {:.2} Gbit/s, flannel -> weft {:.2} Gbit/s",
        to_kernel.bps / 1e9,
        from_kernel.bps / 1e9
    ));
}

/// Waits until every running weft node's table satisfies `pred`; returns how long it took.
fn until_all_tables(
    c: &Cluster,
    what: &str,
    limit: Duration,
    pred: impl Fn(&str) -> bool,
) -> Duration {
    let start = Instant::now();
    for (i, n) in c.nodes.iter().enumerate() {
        if n.child.is_some() {
            harness::wait_for(what, limit, || {
                pred(&c.http(i, "/leases").unwrap_or_default()).then_some(())
            });
        }
    }
    start.elapsed()
}

fn extra_lease(subnet: &str, host: u8) -> Lease {
    Lease {
        subnet: subnet.parse().ok(),
        ipv6_subnet: None,
        attrs: LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 0, 2, host),
            weft::lease::VxlanBackendData {
                vni: 1,
                vtep_mac: weft::wire::MacAddr([0x0e, 0, 0, 0, host, 1]),
            },
        ),
        expiration: Some(SystemTime::now() + Duration::from_secs(86400)),
    }
}

/// Stops etcd for 30 s under iperf3: checks every second had traffic and both nodes noticed.
fn etcd_down_under_iperf3(c: &mut Cluster) {
    let (a, b) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    // 1. etcd stopped for 30 s while iperf3 runs between pods: no second without traffic.
    let traffic = std::thread::spawn(move || iperf3_json(&a, &b, &["-t", "40", "-i", "1"]));
    std::thread::sleep(Duration::from_secs(4));
    c.etcd().stop();
    std::thread::sleep(Duration::from_secs(30));
    c.etcd().start();
    let v = traffic.join().unwrap().expect("iperf3 failed");
    let per_second = harness::iperf3_per_second(&v);
    assert!(per_second.len() >= 39, "{per_second:?}");
    let slowest = per_second.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        slowest > 0.0,
        "a second without traffic while etcd was down: {per_second:?}"
    );
    harness::figure(&format!(
        "etcd down 30 s under iperf3: slowest second {:.2} Gbit/s, mean {:.2} Gbit/s",
        slowest / 1e9,
        per_second.iter().sum::<f64>() / per_second.len() as f64 / 1e9
    ));
    for i in 0..2 {
        let log = std::fs::read_to_string(&c.nodes[i].log).unwrap();
        assert!(
            log.contains("unreachable"),
            "node {} never noticed: {log}",
            i + 1
        );
    }
}

/// Partitions the nodes from etcd across an add, `l1`'s deletion and a compaction; returns the add.
fn a_partition_across_a_compaction(c: &mut Cluster, l1: &Lease) -> Lease {
    // 2. The nodes are cut off from etcd (etcd itself stays up); meanwhile a lease is
    // added, another deleted, and the history compacted past the nodes' watch revision.
    let etcd_ns = c.etcd().ns.clone();
    let cut = "INPUT -p tcp --dport 2379 -s 192.0.2.0/28 -j DROP";
    harness::in_ns(&etcd_ns, &format!("iptables -I {cut}"));
    harness::wait_for(
        "both nodes to notice the partition",
        Duration::from_secs(30),
        || {
            (0..2)
                .all(|i| {
                    std::fs::read_to_string(&c.nodes[i].log)
                        .unwrap()
                        // The store's own line ("etcd at URL unreachable (why)"), once per outage.
                        .matches("unreachable (")
                        .count()
                        >= 2
                })
                .then_some(())
        },
    );
    let l2 = extra_lease("10.244.202.0/24", 202);
    c.put_lease(&l2);
    c.etcd()
        .ctl(&["del", &format!("{}{}", subnets_prefix(), l1.key())]);
    let status = c.etcd().ctl(&["endpoint", "status", "-w", "json"]);
    let rev = serde_json::from_str::<serde_json::Value>(&status).unwrap()[0]["Status"]["header"]
        ["revision"]
        .as_i64()
        .unwrap();
    c.etcd().ctl(&["compact", &rev.to_string()]);
    // Forwarding goes on during the partition.
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "pings during the partition:\n{}",
        failed.join("\n")
    );
    harness::in_ns(&etcd_ns, &format!("iptables -D {cut}"));
    until_all_tables(
        c,
        "the table after the partition healed",
        Duration::from_secs(30),
        |t| t.contains("10.244.202.0/24") && !t.contains("10.244.201.0/24"),
    );
    for i in 0..2 {
        let log = std::fs::read_to_string(&c.nodes[i].log).unwrap();
        assert!(
            log.contains("compacted"),
            "node {} should have re-listed after the compaction: {log}",
            i + 1
        );
    }
    l2
}

#[test]
fn forwarding_survives_etcd_down_and_a_partition_across_a_compaction() {
    let mut c = etcd_cluster(VXLAN, 2, &[]);
    etcd_down_under_iperf3(&mut c);
    // After etcd returns the watch resumes: a new lease reaches every table.
    let l1 = extra_lease("10.244.201.0/24", 201);
    c.put_lease(&l1);
    until_all_tables(
        &c,
        "a lease written after etcd returned",
        Duration::from_secs(15),
        |t| t.contains("10.244.201.0/24"),
    );

    let l2 = a_partition_across_a_compaction(&mut c, &l1);

    // 3. A lease deleted in etcd leaves every table within a second.
    let t0 = Instant::now();
    c.etcd()
        .ctl(&["del", &format!("{}{}", subnets_prefix(), l2.key())]);
    let took = t0.elapsed()
        + until_all_tables(
            &c,
            "the deleted lease to go",
            Duration::from_secs(10),
            |t| !t.contains("10.244.202.0/24"),
        );
    harness::figure(&format!(
        "etcd lease deletion reached both tables in {} ms (etcdctl and polling included)",
        took.as_millis()
    ));
    assert!(took < Duration::from_secs(1), "deletion took {took:?}");
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "pings at the end:\n{}",
        failed.join("\n")
    );
}

#[test]
fn a_node_whose_etcd_lease_is_deleted_shuts_down() {
    let mut c = etcd_cluster(VXLAN, 2, &[]);
    let key = format!(
        "{}{}",
        subnets_prefix(),
        weft::lease::subnet_key(Some(c.subnet(1)), None)
    );
    c.etcd().ctl(&["del", &key]);
    let (ok, log) = c.wait_exit(1, Duration::from_secs(10));
    assert!(!ok, "a revoked node must exit with an error");
    assert!(log.contains("has been revoked"), "{log}");
    // And it did not put its key back on the way out.
    assert!(c.etcd().get_prefix(&key).is_empty());
}

/// The contender side of the allocation race: run inside the etcd namespace by
/// `simultaneous_allocations_never_share_a_subnet` (it re-executes this test binary there).
#[test]
#[ignore = "helper: run by simultaneous_allocations_never_share_a_subnet"]
fn race_helper() {
    let Ok(url) = std::env::var("WEFT_RACE_ETCD") else {
        return;
    };
    let rounds: usize = std::env::var("WEFT_RACE_ROUNDS").unwrap().parse().unwrap();
    let contenders = 4;
    let opts = EtcdOptions {
        endpoints: vec![url],
        prefix: ETCD_PREFIX.into(),
        ..Default::default()
    };
    let mut admin = EtcdStore::open(&opts).unwrap();
    let cfg = admin.config().unwrap();
    for round in 0..rounds {
        for l in admin.leases().unwrap() {
            admin.delete(&l).unwrap();
        }
        let barrier = Arc::new(Barrier::new(contenders));
        let handles: Vec<_> = (0..contenders)
            .map(|n| {
                let (opts, cfg, barrier) = (opts.clone(), cfg.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut s = EtcdStore::open(&opts).unwrap();
                    let ip = Ipv4Addr::new(192, 0, 2, 100 + n as u8);
                    s.config().unwrap(); // connected before the start line
                    barrier.wait();
                    weft::store::acquire(
                        &mut s,
                        &cfg,
                        ip,
                        Default::default(),
                        SystemTime::now(),
                        rand_u64(),
                        &|_| LeaseAttrs::udp(ip),
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut won: Vec<String> = Vec::new();
        let mut attempts = 0;
        let mut full = 0;
        for r in results {
            match r {
                Ok(a) => {
                    won.push(a.stored.lease.subnet.expect("an IPv4 lease").to_string());
                    attempts += a.attempts - 1;
                }
                Err(StoreError::Alloc(_)) => full += 1,
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        println!("RACE {round} {} {attempts} {full}", won.join(","));
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

#[test]
fn simultaneous_allocations_never_share_a_subnet() {
    let mut c = Cluster::with_etcd(weft(), TINY);
    // (a) 4 contenders released by a barrier for 3 subnets, 40 rounds, through etcd
    // transactions: 3 distinct winners and one "out of subnets" every round.
    let etcd_ns = c.etcd().ns.clone();
    let url = c.etcd().url.clone();
    let exe = std::env::current_exe().unwrap();
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &etcd_ns])
        .arg(&exe)
        .args([
            "--ignored",
            "--exact",
            "race_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("WEFT_RACE_ETCD", &url)
        .env("WEFT_RACE_ROUNDS", "40")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut retries = 0;
    let mut rounds = 0;
    for line in text
        .lines()
        .filter_map(|l| l.split_once("RACE ").map(|x| x.1))
    {
        let f: Vec<&str> = line.split(' ').collect();
        let mut won: Vec<&str> = f[1].split(',').collect();
        won.sort();
        let n = won.len();
        won.dedup();
        assert_eq!(
            won.len(),
            n,
            "round {}: two contenders got one subnet: {line}",
            f[0]
        );
        assert_eq!(n, 3, "round {}: {line}", f[0]);
        assert_eq!(f[3], "1", "round {}: {line}", f[0]);
        retries += f[2].parse::<usize>().unwrap();
        rounds += 1;
    }
    assert_eq!(rounds, 40, "{text}");
    // Each round has at least 3 lost races (4 contenders, 3 subnets): the retry path ran.
    assert!(retries > 0, "no race was ever lost: the test did not race");
    harness::figure(&format!(
        "etcd allocation race: 40 rounds x 4 contenders for 3 subnets, {retries} lost races retried, never a shared subnet"
    ));

    // (b) Two weft nodes started at the same instant, 8 times: different subnets each time.
    c.add_node(Kind::Weft);
    c.add_node(Kind::Weft);
    for round in 0..8 {
        c.etcd().ctl(&["del", "--prefix", &subnets_prefix()]);
        for i in 0..2 {
            let _ = std::fs::remove_file(&c.nodes[i].subnet_file);
        }
        let (s0, s1) = c.start_weft_pair();
        assert_ne!(s0, s1, "round {round}: both nodes got {s0}");
        let keys = c.etcd().get_prefix(&subnets_prefix());
        assert_eq!(keys.len(), 2, "round {round}: {keys:?}");
        for i in 0..2 {
            assert!(c.stop_weft(i));
        }
    }
}

#[test]
fn ip_masq_masquerades_traffic_leaving_the_cluster_but_not_pod_to_pod() {
    let mut c = etcd_cluster(VXLAN, 2, &["--ip-masq"]);
    let ns = c.nodes[0].ns.clone();
    let env = weft::subnet_env::SubnetEnv::read(&c.nodes[0].subnet_file).unwrap();
    assert!(env.ipmasq, "subnet.env must say FLANNEL_IPMASQ=true");
    let nat = ns_sh(&ns, &["iptables-save", "-t", "nat"]);
    let rules = weft::masq::flannel_rules(c.network, c.subnet(0), true, true, true);
    for r in rules.iter().flat_map(|c| c.rules.iter().chain([&c.jump])) {
        let table = if r.contains("FLANNEL-FWD") || r.contains("FORWARD") {
            "filter"
        } else {
            "nat"
        };
        let save = if table == "nat" {
            nat.clone()
        } else {
            ns_sh(&ns, &["iptables-save", "-t", "filter"])
        };
        assert!(save.lines().any(|l| l == r), "missing {r} in\n{save}");
    }

    // A host on the underlay outside the cluster network: it sees the node's address.
    let host = c.add_host("ext", 200);
    let pod = c.nodes[0].pods[0].clone();
    let src = harness::udp_source_seen(&host, &pod.ns, "192.0.2.200");
    assert_eq!(
        src, "192.0.2.1",
        "traffic leaving the cluster must carry the node's address"
    );
    let o = ns_run(&pod.ns, &["ping", "-c", "2", "-W", "2", "192.0.2.200"]);
    assert!(o.status.success(), "pod cannot reach the outside host");
    // Pod to pod keeps the pod's address.
    let other = c.nodes[1].pods[0].clone();
    let src = harness::udp_source_seen(&other.ns, &pod.ns, &other.ip.to_string());
    assert_eq!(
        src,
        pod.ip.to_string(),
        "pod-to-pod traffic must not be masqueraded"
    );

    // Someone deletes a rule: weft puts it back within the resync period (5 s).
    harness::in_ns(&ns, "iptables -t nat -F FLANNEL-POSTRTG");
    harness::wait_for(
        "weft to restore FLANNEL-POSTRTG",
        Duration::from_secs(15),
        || {
            let nat = ns_sh(&ns, &["iptables-save", "-t", "nat"]);
            let have = nat
                .lines()
                .filter(|l| l.starts_with("-A FLANNEL-POSTRTG"))
                .count();
            let jumps = nat
                .lines()
                .filter(|l| l.contains("-j FLANNEL-POSTRTG"))
                .count();
            (have == 6 && jumps == 1).then_some(())
        },
    );
    assert!(c.stop_weft(0));
    let after = ns_sh(&ns, &["iptables-save"]);
    assert!(
        !after.contains("FLANNEL"),
        "rules left after a clean stop:\n{after}"
    );
}

/// Runs `openssl` in `dir`; it must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is not installed (apt-get install openssl)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

const P256: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// A self-signed CA `name` in `dir`: `name.crt`, `name.key`.
fn make_ca(dir: &Path, name: &str) {
    let (crt, key, subj) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("/CN={name}"),
    );
    let mut a = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", &subj];
    a.extend(P256);
    a.extend(["-keyout", &key, "-out", &crt]);
    openssl(dir, &a);
}

/// A key and certificate `name` (CN `cn`) signed by CA `ca`, with the openssl extension
/// lines `ext` (subjectAltName, extendedKeyUsage).
fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let (key, csr, crt, subj) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("/CN={cn}"),
    );
    let mut a = vec!["req", "-nodes", "-subj", &subj];
    a.extend(P256);
    a.extend(["-keyout", &key, "-out", &csr]);
    openssl(dir, &a);
    let (ca_crt, ca_key, extf) = (
        format!("{ca}.crt"),
        format!("{ca}.key"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extf,
            "-out",
            &crt,
        ],
    );
}

/// Starts weft on a new node whose store flags are `weft_args` and expects it to give up
/// with a message containing every one of `says`; returns the message line.
fn refused(c: &mut Cluster, weft_args: Vec<String>, says: &[&str]) -> String {
    c.etcd().weft_args = weft_args;
    let i = c.add_node(Kind::Weft);
    c.spawn_weft_env(i, &[], &[]);
    let child = c.nodes[i].child.as_mut().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    c.nodes[i].child = None;
    let log = fs::read_to_string(&c.nodes[i].log).unwrap_or_default();
    let st = status.unwrap_or_else(|| panic!("weft did not give up within 30 s:\n{log}"));
    assert!(
        !st.success(),
        "weft started with a wrong credential:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| says.iter().all(|s| l.contains(s)))
        .unwrap_or_else(|| panic!("no line saying {says:?} in:\n{log}"));
    // The message, without the timestamp and level.
    line.split_once(" weft: ")
        .map_or(line, |(_, m)| m)
        .to_string()
}

/// etcd with TLS client certificates (a CA, server and client certificates the test makes
/// with openssl, `--client-cert-auth`): two nodes connect, lease and forward; a node given
/// a CA that did not sign etcd's certificate, or no client certificate, is refused with a
/// message naming the flag to fix.
#[test]
fn etcd_with_tls_client_certificates_connects_and_a_wrong_ca_is_refused_clearly() {
    let pki = std::env::temp_dir().join(format!("weft-pki-{}", std::process::id()));
    let _ = fs::remove_dir_all(&pki);
    fs::create_dir_all(&pki).unwrap();
    make_ca(&pki, "ca");
    make_ca(&pki, "other-ca");
    make_cert(
        &pki,
        "ca",
        "server",
        "etcd",
        "subjectAltName=IP:192.0.2.250\nextendedKeyUsage=serverAuth\n",
    );
    make_cert(
        &pki,
        "ca",
        "client",
        "weft",
        "extendedKeyUsage=clientAuth\n",
    );
    let f = |n: &str| pki.join(n).display().to_string();
    let server = [
        "--cert-file",
        &f("server.crt"),
        "--key-file",
        &f("server.key"),
        "--client-cert-auth",
        "--trusted-ca-file",
        &f("ca.crt"),
    ];
    let ctl = [
        "--cacert",
        &f("ca.crt"),
        "--cert",
        &f("client.crt"),
        "--key",
        &f("client.key"),
    ];
    let good: Vec<String> = [
        "--etcd-cafile",
        &f("ca.crt"),
        "--etcd-certfile",
        &f("client.crt"),
        "--etcd-keyfile",
        &f("client.key"),
    ]
    .map(String::from)
    .to_vec();
    let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut c = Cluster::with_etcd_args(
        weft(),
        VXLAN,
        "https",
        &strings(&server),
        &strings(&ctl),
        &good,
    );
    c.add_weft_nodes(2, &[]);
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "pings failed over a TLS etcd:\n{}",
        failed.join("\n")
    );
    assert_eq!(c.etcd().get_prefix(&subnets_prefix()).len(), 2);
    let mut wrong_ca = good.clone();
    wrong_ca[1] = f("other-ca.crt");
    let ca_line = refused(&mut c, wrong_ca, &["--etcd-cafile"]);
    let no_cert = good[..2].to_vec();
    let cert_line = refused(&mut c, no_cert, &["--etcd-certfile"]);
    let _ = fs::remove_dir_all(&pki);
    harness::figure(&format!(
        "etcd over TLS with client certificates: 2 nodes leased and forwarded; a wrong CA refused: {ca_line}; no client certificate refused: {cert_line}"
    ));
}

/// etcd with username/password auth (`etcdctl user add`, `auth enable`): nodes with the
/// right password connect and forward; a wrong password is refused with a message naming
/// the flag.
#[test]
fn etcd_with_password_auth_connects_and_a_wrong_password_is_refused_clearly() {
    let mut c = Cluster::with_etcd(weft(), VXLAN);
    {
        let e = c.etcd();
        e.ctl(&["user", "add", "root:weft-root-pw"]);
        e.ctl(&["user", "add", "flannel:flannel-pw"]);
        e.ctl(&["role", "add", "flannel"]);
        e.ctl(&[
            "role",
            "grant-permission",
            "--prefix=true",
            "flannel",
            "readwrite",
            &format!("{ETCD_PREFIX}/"),
        ]);
        e.ctl(&["user", "grant-role", "flannel", "flannel"]);
        e.ctl(&["auth", "enable"]);
        e.ctl_args = ["--user", "root:weft-root-pw"].map(String::from).to_vec();
        e.weft_args = [
            "--etcd-username",
            "flannel",
            "--etcd-password",
            "flannel-pw",
        ]
        .map(String::from)
        .to_vec();
    }
    c.add_weft_nodes(2, &[]);
    let failed = c.ping_all();
    assert!(
        failed.is_empty(),
        "pings failed over an authenticated etcd:\n{}",
        failed.join("\n")
    );
    let wrong = [
        "--etcd-username",
        "flannel",
        "--etcd-password",
        "not-the-password",
    ]
    .map(String::from)
    .to_vec();
    let line = refused(&mut c, wrong, &["--etcd-password"]);
    let anon = refused(&mut c, Vec::new(), &["--etcd-username"]);
    harness::figure(&format!(
        "etcd with password auth: 2 nodes leased and forwarded as user flannel (a role limited to {ETCD_PREFIX}/); a wrong password refused: {line}; no user refused: {anon}"
    ));
}

/// A private etcd server on loopback, for the store's own dual-stack tests (no namespace:
/// they talk to it through `EtcdStore` and etcdctl only). Stopped and wiped on drop.
struct LoopbackEtcd {
    url: String,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl LoopbackEtcd {
    fn start(tag: &str) -> LoopbackEtcd {
        let port = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (client, peer) = (port(), port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let dir = std::env::temp_dir().join(format!("weft-etcd-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let log = fs::File::create(dir.join("etcd.log")).unwrap();
        let child = std::process::Command::new("etcd")
            .args(["--name", "local", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("local={peer_url}")])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd (apt-get install etcd-server)");
        let e = LoopbackEtcd { url, dir, child };
        harness::wait_for("loopback etcd to answer", Duration::from_secs(20), || {
            e.try_ctl(&["endpoint", "health"]).ok()
        });
        e
    }

    fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        let o = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url, "--command-timeout", "5s"])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        o.status
            .success()
            .then_some(out)
            .ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())
    }

    fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }

    /// The keys under the subnets prefix, names only.
    fn subnet_keys(&self) -> Vec<String> {
        let out = self.ctl(&["get", "--prefix", "--keys-only", &subnets_prefix()]);
        let names = out
            .lines()
            .filter_map(|l| l.strip_prefix(&subnets_prefix()));
        names.map(String::from).collect()
    }

    fn store(&self) -> EtcdStore {
        EtcdStore::open(&EtcdOptions {
            endpoints: vec![self.url.clone()],
            prefix: ETCD_PREFIX.into(),
            ..Default::default()
        })
        .unwrap()
    }
}

impl Drop for LoopbackEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `Network` 10.5.0.0/16 (/24s) beside `IPv6Network` fc00::/48 with /64s from
/// fc00:0:0:1:: to fc00:0:0:`v6_max`:: (flanneld's defaults when `v6_max` is ffff).
fn dual_stack_cfg(v6_max: u16) -> weft::config::NetConfig {
    let mut c = weft::config::NetConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap();
    c.ipv6 = Some(weft::config::Ipv6Config {
        network: "fc00::/48".parse().unwrap(),
        subnet_len: 64,
        subnet_min: "fc00:0:0:1::".parse().unwrap(),
        subnet_max: format!("fc00:0:0:{v6_max:x}::").parse().unwrap(),
    });
    c
}

fn dual_attrs(ip: Ipv4Addr) -> impl Fn(Option<&Lease>) -> LeaseAttrs {
    move |_| LeaseAttrs {
        public_ipv6: Some(format!("fd00::{}", ip.octets()[3]).parse().unwrap()),
        ..LeaseAttrs::udp(ip)
    }
}

fn key_lease(key: &str) -> Lease {
    let (subnet, ipv6_subnet) = weft::lease::parse_subnet_key(key).unwrap();
    Lease {
        subnet,
        ipv6_subnet,
        attrs: LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 99)),
        expiration: Some(SystemTime::now() + Duration::from_secs(3600)),
    }
}

#[test]
fn dual_stack_leases_in_a_real_etcd_as_flanneld_writes_them() {
    let etcd = LoopbackEtcd::start("ds");
    let p = subnets_prefix();
    // Exactly what flanneld stores: the dual-stack key and value of flannel's
    // pkg/subnet/etcd/fuzz_test.go seed, and the v4-only lease of its
    // Documentation/reservations.md.
    const FLANNELD_V6: &str = r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#;
    const FLANNELD_V4: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    etcd.ctl(&["put", &format!("{p}10.5.1.0-24&fc00::-64"), FLANNELD_V6]);
    etcd.ctl(&["put", &format!("{p}10.5.2.0-24"), FLANNELD_V4]);
    let mut s = etcd.store();
    let leases = s.leases().unwrap();
    assert_eq!(leases.len(), 2, "{leases:?}");
    let ds = leases.iter().find(|l| l.ipv6_subnet.is_some()).unwrap();
    assert_eq!(ds.key(), "10.5.1.0-24&fc00::-64");
    assert_eq!(ds.attrs.public_ipv6, Some("fc00::1".parse().unwrap()));

    // create refuses a subnet of either family held under another key.
    for held in [
        "10.5.2.0-24&fc00:0:0:5::-64",
        "10.5.9.0-24&fc00::-64",
        "10.5.1.0-24",
    ] {
        assert_eq!(s.create(&key_lease(held)).unwrap(), None, "{held}");
    }
    let free = key_lease("10.5.3.0-24&fc00:0:0:3::-64");
    assert!(s.create(&free).unwrap().is_some());
    assert!(etcd.subnet_keys().contains(&free.key()));

    // acquire: a fresh pair under one key with a TTL'd etcd lease, reused on restart.
    let cfg = dual_stack_cfg(0xffff);
    let ip = Ipv4Addr::new(192, 0, 2, 1);
    let prev = weft::lease::alloc::Previous {
        subnet: Some("10.5.1.0/24".parse().unwrap()), // flanneld's: taken
        ipv6_subnet: Some("fc00:0:0:1::/64".parse().unwrap()),
    };
    let now = SystemTime::now();
    let a = weft::store::acquire(&mut s, &cfg, ip, prev, now, 7, &dual_attrs(ip)).unwrap();
    let ours = a.stored.lease.clone();
    assert_eq!(a.source, weft::lease::alloc::Source::Fresh);
    assert!(ours.key().contains('&'), "{}", ours.key());
    assert!(leases.iter().all(|l| !l.overlaps(&ours)) && !free.overlaps(&ours));
    let got = etcd.ctl(&["get", "--print-value-only", &format!("{p}{}", ours.key())]);
    assert_eq!(
        got.trim(),
        r#"{"PublicIP":"192.0.2.1","PublicIPv6":"fd00::1"}"#
    );
    let b = weft::store::acquire(&mut s, &cfg, ip, prev, now, 9, &dual_attrs(ip)).unwrap();
    assert_eq!(b.stored.lease.key(), ours.key());

    // The watch sees a dual-stack key another node writes, and its removal.
    let other = "10.5.77.0-24&fc00:0:0:77::-64";
    etcd.ctl(&["put", &format!("{p}{other}"), FLANNELD_V6]);
    harness::wait_for(
        "the watch to report the new key",
        Duration::from_secs(5),
        || {
            s.wait_change(Duration::from_millis(200));
            s.leases()
                .unwrap()
                .iter()
                .any(|l| l.key() == other)
                .then_some(())
        },
    );
    // remove takes the lease's own (dual-stack) key.
    s.remove(&ours).unwrap();
    assert!(!etcd.subnet_keys().contains(&ours.key()));
    assert!(etcd.subnet_keys().contains(&other.to_string()));
}

#[test]
fn racing_dual_stack_allocations_in_a_real_etcd_never_share_an_ipv6_subnet() {
    let etcd = LoopbackEtcd::start("ds-race");
    // Plenty of IPv4 subnets and three IPv6 ones: every collision is an IPv6 one, under
    // two different keys, which a transaction on the key alone (flanneld's) lets through.
    let cfg = dual_stack_cfg(3);
    let contenders = 4;
    for round in 0..10 {
        etcd.ctl(&["del", "--prefix", &subnets_prefix()]);
        let barrier = Arc::new(Barrier::new(contenders));
        let handles: Vec<_> = (0..contenders)
            .map(|n| {
                let (mut s, cfg, barrier) = (etcd.store(), cfg.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let ip = Ipv4Addr::new(192, 0, 2, 100 + n as u8);
                    s.leases().unwrap(); // connected before the start line
                    barrier.wait();
                    let prev = Default::default();
                    let now = SystemTime::now();
                    weft::store::acquire(&mut s, &cfg, ip, prev, now, rand_u64(), &dual_attrs(ip))
                })
            })
            .collect();
        let mut v6: Vec<String> = Vec::new();
        let mut full = 0;
        for h in handles {
            match h.join().unwrap() {
                Ok(a) => v6.push(a.stored.lease.ipv6_subnet.unwrap().to_string()),
                Err(StoreError::Alloc(e)) => {
                    assert!(e.to_string().contains("out of IPv6 subnets"), "{e}");
                    full += 1;
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        let keys = etcd.subnet_keys();
        v6.sort();
        v6.dedup();
        assert_eq!((v6.len(), full), (3, 1), "round {round}: {keys:?}");
        assert_eq!(keys.len(), 3, "round {round}: {keys:?}");
    }
}

/// A node on a healthy etcd never logs an outage: its HTTP/2 keepalive pings respect
/// etcd's `--grpc-keepalive-min-time` (5 s). At 3 s etcd answered with GOAWAY
/// "too_many_pings" and the watch broke every 12 s or so: an outage logged, and every
/// lease re-read, each time.
#[test]
fn a_node_on_a_healthy_etcd_keeps_its_watch() {
    let c = etcd_cluster(VXLAN, 1, &[]);
    std::thread::sleep(Duration::from_secs(30));
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    assert!(!log.contains("unreachable"), "{log}");
    assert!(!log.contains("too_many_pings"), "{log}");
}
