//! Stops, crashes and restarts: while weft is not running no pod packet leaves a node
//! unencapsulated (the fail-closed route), and after `kill -9` a restarted weft keeps its
//! subnet and VTEP MAC and carries traffic again within 2 s. Root only, like the rest.

#[path = "harness.rs"]
mod harness;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{ns_run, weft, Capture, Cluster, Kind, Pod};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Two weft nodes with one pod each, converged.
fn two_nodes() -> Cluster {
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_weft_nodes(2, &[]);
    c
}

/// Sends pod traffic from `from` to `to` while the path may be down: pings (ICMP) and a
/// burst of UDP datagrams. Returns whether any ping was answered.
fn poke(from: &Pod, to: &Pod) -> bool {
    let code = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(20):\n  try: s.sendto(b'leak?',(sys.argv[1],5001))\n  except OSError: pass";
    let _ = ns_run(&from.ns, &["python3", "-c", code, &to.ip.to_string()]);
    harness::try_in_ns(&from.ns, &format!("ping -c 5 -i 0.1 -W 1 {}", to.ip))
        .status
        .success()
}

/// Frames on the router's side of the underlay whose IP destination is a pod address.
fn leaked(frames: &[Vec<u8>]) -> usize {
    frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[30] == 10 && f[31] == 244)
        .count()
}

#[test]
fn a_stopped_or_killed_node_leaks_no_pod_packet_unencapsulated() {
    let mut c = two_nodes();
    let router = c.add_router(0);
    let (p1, p2) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    assert!(poke(&p1, &p2), "no traffic before the test");
    let pcap = c.dir.join("router.pcap");
    let cap = Capture::start(&router, "eth0", "ip", &pcap);

    // SIGTERM: weft removes its TUN and route, and keeps the guard.
    assert!(c.stop_weft(0), "weft did not exit cleanly on SIGTERM");
    let routes =
        String::from_utf8_lossy(&ns_run(&c.nodes[0].ns, &["ip", "route"]).stdout).into_owned();
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("unreachable 10.244.0.0/16 proto 87 metric 4000000000")),
        "no fail-closed route after SIGTERM:\n{routes}"
    );
    assert!(!poke(&p1, &p2), "a ping crossed while weft was stopped");
    // kill -9: nothing of weft's clean-up runs; the kernel deletes the TUN.
    c.start_weft(0, &[]);
    assert!(poke(&p1, &p2), "no traffic after the restart");
    c.kill_weft(0);
    harness::wait_for("the TUN to go", Duration::from_secs(5), || {
        (!ns_run(&c.nodes[0].ns, &["ip", "link", "show", "weft0"])
            .status
            .success())
        .then_some(())
    });
    assert!(!poke(&p1, &p2), "a ping crossed while weft was killed");
    let frames = cap.stop();
    let n = leaked(&frames);
    assert_eq!(
        n,
        0,
        "{n} unencapsulated pod packets reached the router ({} frames seen)",
        frames.len()
    );

    // The control: without the guard (weft cleanup removes it) the same traffic leaks,
    // so the capture above could have seen a leak.
    let o = ns_run(&c.nodes[0].ns, &[&weft().display().to_string(), "cleanup"]);
    assert!(o.status.success(), "weft cleanup failed");
    let cap = Capture::start(&router, "eth0", "ip", &c.dir.join("control.pcap"));
    poke(&p1, &p2);
    let control = leaked(&cap.stop());
    assert!(
        control > 0,
        "without the guard no packet reached the router: the capture proves nothing"
    );
    harness::figure(&format!(
        "leak test: 0 of {} frames at the router carried a pod destination while weft was stopped (SIGTERM) and killed (kill -9); {control} did once `weft cleanup` removed the guard",
        frames.len()
    ));
}

/// A 10 ms ping in `ns` to `dst`, with receive timestamps (`-D`), written to `file`.
fn start_ping(ns: &str, dst: &str, file: &Path) -> Child {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-D", "-n", "-i", "0.01", "-W", "1", dst,
        ])
        .stdin(Stdio::null())
        .stdout(fs::File::create(file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start ping")
}

/// The receive times (Unix seconds) of the echo replies in a `ping -D` log.
fn replies(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Node 1's lease, as the lease store holds it.
fn node_1_lease(c: &Cluster) -> weft::lease::Lease {
    c.leases()
        .into_iter()
        .find(|l| l.attrs.public_ip == c.nodes[0].ip)
        .expect("node 1 has no lease")
}

/// Stops a ping the way Ctrl-C does (SIGINT, so it flushes its log) and reaps it.
fn stop_ping(ping: &mut Child) {
    let _ = Command::new("kill")
        .args(["-INT", &ping.id().to_string()])
        .status();
    let _ = ping.wait();
}

/// Checks that node 1's lease and its subnet.env kept the subnet, and its lease the VTEP
/// MAC, of the lease `before` the kill.
fn check_subnet_and_mac_kept(
    c: &Cluster,
    before: &weft::lease::Lease,
    env: &weft::subnet_env::SubnetEnv,
) {
    let after = node_1_lease(c);
    assert_eq!(after.subnet, before.subnet, "the subnet changed");
    assert_eq!(env.subnet, before.subnet, "subnet.env changed");
    assert_eq!(
        after.attrs.vxlan_data().unwrap().vtep_mac,
        before.attrs.vxlan_data().unwrap().vtep_mac,
        "the VTEP MAC changed"
    );
}

/// Checks that the iperf3 stream `v` carried data in its last second; returns its longest
/// run of 0.1 s intervals without a byte, in seconds.
fn stream_recovered_after_stall(v: &serde_json::Value) -> f64 {
    let per = harness::iperf3_per_second(v);
    let stall = per
        .split(|b| *b > 0.0)
        .map(|run| run.len())
        .max()
        .unwrap_or(0) as f64
        * 0.1;
    let tail = &per[per.len().saturating_sub(10)..];
    assert!(
        tail.iter().all(|b| *b > 0.0),
        "the stream did not recover: {per:?}"
    );
    stall
}

#[test]
fn kill_9_and_restart_keep_subnet_and_mac_and_traffic_returns_within_2_s() {
    let mut c = two_nodes();
    let before = node_1_lease(&c);
    let (p1, p2) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    // Under load: an iperf3 TCP stream the whole time, and a router as node 1's default
    // route capturing any pod packet that leaves unencapsulated (its filter takes only
    // those, so the stream's encapsulated frames cost the capture nothing).
    let router = c.add_router(0);
    let cap = Capture::start(
        &router,
        "eth0",
        "dst net 10.244.0.0/16",
        &c.dir.join("leak.pcap"),
    );
    let (s1, s2) = (p1.clone(), p2.clone());
    let stream =
        std::thread::spawn(move || harness::iperf3_json(&s1, &s2, &["-t", "6", "-i", "0.1"]));
    let log = c.dir.join("ping.log");
    let mut ping = start_ping(&p1.ns, &p2.ip.to_string(), &log);
    std::thread::sleep(Duration::from_millis(1500));
    c.kill_weft(0);
    let killed = unix_now();
    std::thread::sleep(Duration::from_millis(500));
    let restart = unix_now();
    let env = c.start_weft(0, &[]);
    let started = unix_now();
    let first = harness::wait_for(
        "a ping answered after the restart",
        Duration::from_secs(10),
        || {
            replies(&fs::read_to_string(&log).unwrap_or_default())
                .into_iter()
                .find(|&t| t > restart)
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    stop_ping(&mut ping);
    let times = replies(&fs::read_to_string(&log).unwrap());
    let last_before = times
        .iter()
        .copied()
        .filter(|&t| t < killed)
        .fold(0.0, f64::max);
    assert!(last_before > 0.0, "no ping answered before the kill");
    check_subnet_and_mac_kept(&c, &before, &env);
    let gap = first - restart;
    assert!(
        gap < 2.0,
        "traffic came back {gap:.3} s after the restart began (limit 2 s)"
    );
    // The stream survived the crash (one TCP connection throughout) and carried data
    // again: its 0.1 s intervals, the longest run without a byte.
    let v = stream
        .join()
        .unwrap()
        .expect("the iperf3 stream broke across the kill -9");
    let stall = stream_recovered_after_stall(&v);
    let frames = cap.stop();
    let n = leaked(&frames);
    assert_eq!(
        n, 0,
        "{n} unencapsulated pod packets reached the router under load"
    );
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    harness::figure(&format!(
        "kill -9 then restart under iperf3 TCP (10 ms ping beside it): weft up (subnet.env, /healthz) {:.0} ms after the restart began, first ping reply {:.0} ms after it; {:.0} ms without replies in all, {:.0} ms of which weft was dead on purpose; the stream's longest stall {stall:.1} s, {gbps:.2} Gbit/s over its 6 s; 0 pod packets unencapsulated at the router",
        (started - restart) * 1e3,
        gap * 1e3,
        (first - last_before) * 1e3,
        (restart - killed) * 1e3
    ));
}

/// flanneld serves /healthz before it waits for its config, and so does weft: a node whose
/// etcd has no config yet answers 200 `starting: …` on /healthz and 503 on /readyz; once
/// the config is written it forwards, both answer `ok`, and a `Type=notify` systemd unit
/// hears `READY=1` on its NOTIFY_SOCKET (a datagram socket this test listens on).
#[test]
fn healthz_answers_before_the_config_and_systemd_hears_ready() {
    let mut c = Cluster::with_etcd(weft(), VXLAN);
    let key = format!("{}/config", harness::ETCD_PREFIX);
    c.etcd().ctl(&["del", &key]);
    let n = c.add_node(Kind::Weft);
    let sock_path = c.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    c.spawn_weft_env(
        n,
        &[],
        &[("NOTIFY_SOCKET", &sock_path.display().to_string())],
    );
    let starting = harness::wait_for("/healthz while starting", Duration::from_secs(10), || {
        c.http(n, "/healthz")
    });
    assert_eq!(starting, "starting: waiting for the network config\n");
    assert!(
        c.http(n, "/readyz").is_none(),
        "/readyz must be 503 before forwarding"
    );
    let mut buf = [0u8; 256];
    sock.set_nonblocking(true).unwrap();
    assert!(sock.recv(&mut buf).is_err(), "READY=1 before forwarding");
    sock.set_nonblocking(false).unwrap();
    c.etcd().ctl(&["put", &key, VXLAN]);
    let len = sock
        .recv(&mut buf)
        .expect("no sd_notify message within 20 s");
    let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "got {msg:?}");
    // READY=1 comes once forwarding: the endpoints say so, and pods are served.
    assert_eq!(c.http(n, "/readyz").as_deref(), Some("ok\n"));
    assert_eq!(c.http(n, "/healthz").as_deref(), Some("ok\n"));
    harness::wait_for("subnet.env", Duration::from_secs(5), || {
        weft::subnet_env::SubnetEnv::read(&c.nodes[n].subnet_file).ok()
    });
}

#[test]
fn an_underlay_down_for_5_s_comes_back_by_itself_with_the_same_lease() {
    let mut c = two_nodes();
    let (p1, p2) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    assert!(poke(&p1, &p2), "no traffic before the test");
    let subnet = c.subnet(0);
    let ns = c.nodes[0].ns.clone();
    harness::ns_sh(&ns, &["ip", "link", "set", "eth0", "down"]);
    std::thread::sleep(Duration::from_secs(5));
    assert!(!poke(&p1, &p2), "pods talked over a downed underlay");
    harness::ns_sh(&ns, &["ip", "link", "set", "eth0", "up"]);
    let t = std::time::Instant::now();
    // Nobody touches weft: forwarding resumes on its own.
    harness::wait_for("pods to talk again", Duration::from_secs(15), || {
        poke(&p1, &p2).then_some(())
    });
    let back = t.elapsed();
    assert!(
        c.nodes[0]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "weft exited"
    );
    assert_eq!(c.subnet(0), subnet, "subnet.env changed");
    assert!(
        c.leases()
            .iter()
            .any(|l| l.subnet == Some(subnet) && l.attrs.public_ip == c.nodes[0].ip),
        "the lease was lost"
    );
    assert_eq!(
        c.http(0, "/healthz").as_deref(),
        Some("ok\n"),
        "not healthy after the outage"
    );
    harness::figure(&format!(
        "underlay down 5 s: pod-to-pod ping answered {:.1} s after the link came back, same lease {subnet}",
        back.as_secs_f64()
    ));
}

/// A small tmpfs over a directory, lazily unmounted when dropped (before the cluster that
/// owns the directory removes it).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        harness::sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "weft-test",
            dir.to_str().unwrap(),
        ]);
        Tmpfs(dir.to_path_buf())
    }

    fn remount(&self, opts: &str) {
        harness::sh(&[
            "mount",
            "-o",
            &format!("remount,{opts}"),
            self.0.to_str().unwrap(),
        ]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Lines of `log` past byte `from` that contain `what`.
fn lines_with(log: &Path, from: usize, what: &str) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.get(from..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_string)
        .collect()
}

/// Mounts a 256 KiB tmpfs over the lease directory `dir` and writes the network config
/// back into it.
fn mount_small_lease_dir(dir: &Path) -> Tmpfs {
    let config = fs::read_to_string(dir.join("config")).unwrap();
    let mnt = Tmpfs::mount(dir, "256k");
    weft::store::file::FileStore::open(dir)
        .unwrap()
        .write_config(&config)
        .unwrap();
    mnt
}

/// Each of the first two nodes' log files, with its length now.
fn log_offsets(c: &Cluster) -> Vec<(std::path::PathBuf, usize)> {
    (0..2)
        .map(|i| {
            let l = c.nodes[i].log.clone();
            let n = fs::metadata(&l).unwrap().len() as usize;
            (l, n)
        })
        .collect()
}

/// The lease files under `dir`/subnets, by name, with their text, sorted.
fn lease_files(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(dir.join("subnets"))
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, fs::read_to_string(e.path()).unwrap_or_default())
        })
        .collect();
    v.sort();
    v
}

/// Node `i`'s count of lease renewals with result `r`.
fn renewals(c: &Cluster, i: usize, r: &str) -> u64 {
    c.metrics(i)
        .get(&format!("weft_lease_renewals_total{{result=\"{r}\"}}"))
        .copied()
        .unwrap_or(0)
}

/// One ping from pod `a` to pod `b`; whether it was answered.
fn ping_once(a: &Pod, b: &Pod) -> bool {
    ns_run(&a.ns, &["ping", "-c", "1", "-W", "1", &b.ip.to_string()])
        .status
        .success()
}

/// Fills the lease directory's file system: every byte taken by a file of this test's.
fn fill_lease_dir(dir: &Path) {
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", dir.join("fill").display()),
            "bs=4k",
        ])
        .stderr(Stdio::null())
        .status();
}

/// Two nodes and their pods held under watch while the lease directory fails, with the
/// pings sent and lost so far.
struct Hold<'a> {
    c: &'a Cluster,
    dir: &'a Path,
    p1: &'a Pod,
    p2: &'a Pod,
    pings: usize,
    lost: usize,
}

impl Hold<'_> {
    /// Polls every half second until `done`, pinging both ways and checking that both
    /// tables keep both leases and every lease file parses.
    fn until(&mut self, what: &str, limit: Duration, done: &dyn Fn() -> bool) {
        let end = std::time::Instant::now() + limit;
        while !done() {
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            for (a, b) in [(self.p1, self.p2), (self.p2, self.p1)] {
                self.pings += 1;
                self.lost += usize::from(!ping_once(a, b));
            }
            for i in 0..2 {
                assert_eq!(
                    self.c.metrics(i).get("weft_leases").copied(),
                    Some(2),
                    "node {} lost a lease",
                    i + 1
                );
            }
            for (name, text) in lease_files(self.dir) {
                assert!(
                    !name.contains(".tmp") && !name.contains(".new"),
                    "a temporary file was left: {name}"
                );
                weft::store::file::parse(&name, &text)
                    .unwrap_or_else(|e| panic!("lease file {name} is not whole ({e}): {text:?}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Checks that each node logged its failing renewal once, read-only, and the same line as
/// after the first failure (`ro_errors`).
fn check_failure_logged_once(logs: &[(std::path::PathBuf, usize)], ro_errors: &[Vec<String>]) {
    for (i, (l, n)) in logs.iter().enumerate() {
        let errs = lines_with(l, *n, "cannot renew lease");
        assert_eq!(
            errs.len(),
            1,
            "node {}: a failing renewal must be logged once: {errs:#?}",
            i + 1
        );
        assert!(errs[0].contains("Read-only"), "node {}: {}", i + 1, errs[0]);
        assert_eq!(errs, ro_errors[i]);
    }
}

/// Checks that each node logged one renewal and no error.
fn check_renewal_logged_once(logs: &[(std::path::PathBuf, usize)]) {
    for (i, (l, n)) in logs.iter().enumerate() {
        let ok = lines_with(l, *n, "renewed lease");
        assert_eq!(ok.len(), 1, "node {}: {ok:?}", i + 1);
        assert!(lines_with(l, *n, "ERROR").is_empty());
    }
}

/// The lease directory (flannel's etcd keys as files, shared by the nodes) first made
/// read-only, then writable but full, across two renewals a minute apart: both fail,
/// each node logs it once, the pods keep reaching each other on the last leases, every
/// lease file stays whole and no temporary file is left; once space is free the next
/// retry renews and says so. Renewals come a minute after start (a 1439-minute margin
/// on flannel's 24-hour lease), so this test takes about three minutes.
#[test]
fn a_read_only_or_full_lease_directory_keeps_forwarding_and_renewal_is_retried() {
    let mut c = Cluster::new(weft(), VXLAN);
    let dir = c.lease_dir();
    let mnt = mount_small_lease_dir(&dir);
    c.add_weft_nodes(2, &["--subnet-lease-renew-margin", "1439"]);
    let (p1, p2) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    let logs = log_offsets(&c);
    let leases_before = lease_files(&dir);
    assert_eq!(leases_before.len(), 2, "{leases_before:?}");
    mnt.remount("ro");
    let mut hold = Hold {
        c: &c,
        dir: &dir,
        p1: &p1,
        p2: &p2,
        pings: 0,
        lost: 0,
    };
    hold.until(
        "the first renewal to fail (read-only)",
        Duration::from_secs(120),
        &|| (0..2).all(|i| renewals(&c, i, "error") >= 1),
    );
    let ro_errors: Vec<Vec<String>> = logs
        .iter()
        .map(|(l, n)| lines_with(l, *n, "cannot renew lease"))
        .collect();
    // Writable again, but full: every byte taken by a file of this test's.
    mnt.remount("rw");
    fill_lease_dir(&dir);
    hold.until(
        "the retry to fail (full)",
        Duration::from_secs(120),
        &|| (0..2).all(|i| renewals(&c, i, "error") >= 2),
    );
    assert_eq!(
        lease_files(&dir),
        leases_before,
        "a failed renewal changed a lease file"
    );
    check_failure_logged_once(&logs, &ro_errors);
    fs::remove_file(dir.join("fill")).unwrap();
    hold.until("a renewal to succeed", Duration::from_secs(120), &|| {
        (0..2).all(|i| renewals(&c, i, "ok") >= 1)
    });
    let renewed = lease_files(&dir);
    assert_ne!(
        renewed, leases_before,
        "the renewal did not move the expirations"
    );
    check_renewal_logged_once(&logs);
    let (pings, lost) = (hold.pings, hold.lost);
    assert_eq!(
        lost, 0,
        "{lost} of {pings} pod pings lost while the lease directory was read-only or full"
    );
    harness::figure(&format!(
        "lease directory read-only, then full (256 KiB tmpfs), across two renewals: {pings} pod pings, {lost} lost; both leases in both tables throughout; one warning per node; lease files unchanged and whole; renewed on the first retry with space"
    ));
}
