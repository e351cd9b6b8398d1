//! The health port against a pod that tries to hold it shut. Before weft served it with
//! hyper, three idle connections from anywhere made `/healthz` time out, and kube-weft.yml's
//! liveness probe (1 s) would have had kubelet restart weft again and again. Here a pod
//! holds 100 idle connections to its node's address and trickles a request a byte a second
//! (reconnecting whenever weft closes one), while "kubelet" in the node's namespace probes
//! `/healthz` as kubelet does: a new connection per probe, a 1 s timeout. Root only.

#[path = "harness.rs"]
mod harness;

use std::process::{Child, Command, Stdio};

use harness::{weft, Cluster, Kind};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// The attacker: `n` idle connections and one trickling a request head a byte a second,
/// each reopened when closed; prints `ready` once all are open, then `open=K` each second
/// (how many of the idle ones were open at that moment).
const HOLD: &str = r#"
import socket, sys, time, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def conn():
    while True:
        try:
            return socket.create_connection((host, port), timeout=2)
        except OSError:
            time.sleep(0.05)
socks = [conn() for _ in range(n)]
def slow():
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 1000
    while True:
        s = conn()
        try:
            for b in head:
                s.send(bytes([b]))
                time.sleep(1)
        except OSError:
            pass
threading.Thread(target=slow, daemon=True).start()
print("ready", flush=True)
while True:
    open_now = 0
    for i, s in enumerate(socks):
        try:
            s.setblocking(False)
            closed = s.recv(1) == b""
        except BlockingIOError:
            closed = False
        except OSError:
            closed = True
        if closed:
            s.close()
            socks[i] = conn()
        else:
            open_now += 1
    print(f"open={open_now}", flush=True)
    time.sleep(1)
"#;

/// kubelet's httpGet probe, `count` times 100 ms apart: a new connection each, 1 s timeout.
/// Prints one line per probe: the status line's code (0 for none) and the seconds it took.
const PROBE: &str = r#"
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(count):
    t = time.perf_counter()
    code = 0
    try:
        s = socket.create_connection((host, port), timeout=1)
        s.settimeout(1)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n")
        got = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
        if got.startswith(b"HTTP/1.1 ") and got.endswith(b"\r\n\r\nok\n"):
            code = int(got[9:12])
    except OSError:
        pass
    print(code, time.perf_counter() - t, flush=True)
    time.sleep(0.1)
"#;

/// Probes node `i`'s health port from its own namespace; returns each probe's latency in
/// ms, or the probe that failed.
fn probe(c: &Cluster, i: usize, count: usize) -> Result<Vec<f64>, String> {
    let port = c.nodes[i].healthz.to_string();
    let o = harness::ns_run(
        &c.nodes[i].ns,
        &[
            "python3",
            "-c",
            PROBE,
            "127.0.0.1",
            &port,
            &count.to_string(),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut ms = Vec::new();
    for line in out.lines() {
        let (code, secs) = line.split_once(' ').ok_or(line.to_string())?;
        if code != "200" {
            return Err(format!("a probe got {code:?} after {secs} s:\n{out}"));
        }
        ms.push(secs.parse::<f64>().map_err(|e| e.to_string())? * 1e3);
    }
    if ms.len() != count {
        return Err(format!("{} probes of {count} ran:\n{out}", ms.len()));
    }
    Ok(ms)
}

/// Starts the attacker in `ns` against `to`; returns it once every connection is open.
fn hold(
    ns: &str,
    to: &str,
    port: u16,
    n: usize,
) -> (
    Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", HOLD, to])
        .args([port.to_string(), n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok);
    assert_eq!(
        first.as_deref(),
        Some("ready"),
        "the attacker did not connect"
    );
    (child, lines)
}

fn summary(ms: &[f64]) -> String {
    let max = ms.iter().cloned().fold(0.0, f64::max);
    format!(
        "p50 {:.1} ms, max {max:.1} ms",
        harness::median(ms.to_vec())
    )
}

#[test]
fn a_pod_holding_connections_open_cannot_delay_a_probe() {
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_node(Kind::Weft);
    c.start_weft(0, &[]);
    let pod = c.add_pod(0, None);
    let quiet = probe(&c, 0, 10).unwrap();

    // The pod reaches its node at the node's own address, as any pod can.
    let port = c.nodes[0].healthz;
    let (mut attacker, mut lines) = hold(&pod.ns, "192.0.2.1", port, 100);
    // The connections are really there, established on weft's port.
    let established = harness::ns_sh(
        &c.nodes[0].ns,
        &[
            "ss",
            "-Htn",
            "state",
            "established",
            &format!("sport = :{port}"),
        ],
    );
    let held = established.lines().count();
    assert!(held >= 100, "only {held} connections held:\n{established}");

    // 60 probes over ~6 s: past the head timeout (2 s), so the trickler has been cut off
    // and has reconnected, and the idle ones are still open.
    let attacked = probe(&c, 0, 60);
    let _ = attacker.kill();
    let _ = attacker.wait();
    let reports: Vec<String> = lines.by_ref().map_while(Result::ok).collect();
    let attacked = attacked.unwrap();
    assert!(
        reports.iter().any(|l| l == "open=100"),
        "the idle connections were not held: {reports:?}"
    );
    harness::figure(&format!(
        "healthz probe latency (a new connection, as kubelet's): {} quiet; {} while a pod holds 100 idle connections and trickles a request a byte a second ({held} established)",
        summary(&quiet),
        summary(&attacked)
    ));
}

/// GET `path` from `host:port` inside namespace `ns`: the status code (0 when nothing
/// answered) and the body.
fn get_from(ns: &str, host: &str, port: u16, path: &str) -> (u16, String) {
    let code = "import sys,urllib.request,urllib.error\ntry:\n  r=urllib.request.urlopen(f'http://{sys.argv[1]}:{sys.argv[2]}{sys.argv[3]}',timeout=2)\n  print(r.status); print(r.read().decode(),end='')\nexcept urllib.error.HTTPError as e:\n  print(e.code)\nexcept Exception:\n  print(0)";
    let o = harness::ns_run(ns, &["python3", "-c", code, host, &port.to_string(), path]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (status, body) = out.split_once('\n').unwrap_or((out.as_str(), ""));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of metric `name` in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}

/// A count from /proc/<pid>/status (`Threads:`).
fn proc_status(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn health_on_loopback_is_out_of_pods_reach_and_metrics_listen_apart() {
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_node(Kind::Weft);
    let metrics_port = 9200;
    c.start_weft(
        0,
        &[
            "--healthz-ip=127.0.0.1",
            &format!("--metrics-port={metrics_port}"),
        ],
    );
    let pod = c.add_pod(0, None);
    let healthz = c.nodes[0].healthz;
    // kubelet, on the node, is answered on loopback ...
    assert_eq!(c.http(0, "/healthz").as_deref(), Some("ok\n"));
    // ... a pod reaching the node's address is not, on either of its addresses ...
    for host in ["192.0.2.1", &pod_gateway(&c)] {
        assert_eq!(get_from(&pod.ns, host, healthz, "/healthz").0, 0, "{host}");
    }
    // ... while a scraper reaches the metrics listener, which serves the same paths.
    let pid = c.nodes[0].child.as_ref().unwrap().id();
    let cpu_before = cpu_seconds(pid);
    let (code, text) = get_from(&pod.ns, "192.0.2.1", metrics_port, "/metrics");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("weft_leases 1\n"), "{text}");
    assert_eq!(
        get_from(&pod.ns, "192.0.2.1", metrics_port, "/healthz"),
        (200, "ok\n".into())
    );
    // The process metrics are weft's own, as /proc shows them.
    assert_eq!(
        metric(&text, "process_threads"),
        proc_status(pid, "Threads:")
    );
    let rss = metric(&text, "process_resident_memory_bytes");
    let rss_now = proc_status(pid, "VmRSS:") * 1024.0;
    assert!((rss - rss_now).abs() < rss_now * 0.2, "{rss} vs {rss_now}");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    // A connection or two may come and go between the two readings.
    assert!(
        (metric(&text, "process_open_fds") - fds).abs() <= 3.0,
        "{text}"
    );
    // CPU seconds: what /proc said just before the scrape, at most what it says after (a
    // node that has just started may have used less than one 10 ms tick: 0 is honest).
    let cpu = metric(&text, "process_cpu_seconds_total");
    let after = cpu_seconds(pid);
    assert!(
        cpu >= cpu_before - 0.011 && cpu <= after + 0.011,
        "{cpu_before} <= {cpu} <= {after}"
    );
}

/// utime + stime of `pid`, in seconds (USER_HZ 100).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<f64> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f[11] + f[12]) / 100.0
}

/// The pod's gateway: the node's cni0 address, the first of its subnet.
fn pod_gateway(c: &Cluster) -> String {
    let route = harness::ns_sh(
        &c.nodes[0].pods[0].ns,
        &["ip", "-4", "route", "show", "default"],
    );
    route.split_whitespace().nth(2).unwrap_or("").to_string()
}
