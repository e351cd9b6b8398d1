//! weft's processes on the nodes: starting, waiting for, stopping and asking them (healthz,
//! metrics, the forwarding table), and where the binaries are.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft::subnet_env::SubnetEnv;

use super::cluster::{Cluster, Kind};
use super::command::{ns_run, run, wait_for};
use super::preflight;

/// Each thread of process `pid`: its name, state and where in the kernel it waits
/// (`wchan`), one a line: what a hung process was doing.
fn threads_of(pid: u32) -> String {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    let mut lines = Vec::new();
    for t in dir.flatten() {
        let p = t.path();
        let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        // The state follows the name's closing parenthesis.
        let state = stat.rsplit_once(") ").map(|(_, r)| &r[..1]).unwrap_or("?");
        lines.push(format!("{} {state} {}", read("comm").trim(), read("wchan")));
    }
    lines.sort();
    lines.join("\n")
}

/// The weft binary next to the running example (target/<profile>/examples/x -> ../weft).
pub fn weft_next_to_exe() -> PathBuf {
    let weft = preflight::profile_dir().join("weft");
    assert!(weft.exists(), "build weft first: cargo build --release");
    weft
}

/// The example `name` built beside `weft` (`target/<profile>/examples/<name>`); it must
/// exist (`cargo build --all-targets`, which `cargo test --all-targets` does, builds it).
pub fn example_beside(weft: &Path, name: &str) -> PathBuf {
    let p = weft
        .parent()
        .expect("weft's directory")
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: build with --all-targets (cargo test --all-targets builds it)",
        p.display()
    );
    p
}

/// Resident memory of process `pid` in KiB (`VmRSS` in /proc; 0 if it is gone).
pub fn rss_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether the node whose health port is `port` (on this namespace's loopback) has a
/// lease holding pod address `addr` in its table: one `GET /leases/<addr>`, which costs
/// the node one lookup however large its table is.
pub fn table_holds(port: u16, addr: std::net::IpAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = write!(s, "GET /leases/{addr} HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
}

/// User plus system CPU seconds of process `pid` so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime), counted after the command's closing parenthesis.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// CPU time of every thread of process `pid` so far, in nanoseconds (the scheduler's own
/// account, `/proc/PID/task/*/schedstat`, exact where `/proc/PID/stat` counts 10 ms ticks).
pub fn cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

impl Cluster {
    /// Starts weft on node `i` with extra flags and waits for its subnet.env and /healthz.
    pub fn start_weft(&mut self, i: usize, extra: &[&str]) -> SubnetEnv {
        self.spawn_weft(i, extra);
        self.finish_start(i)
    }

    /// Adds `n` weft nodes, each started with `extra` and given one pod, and waits until
    /// every table holds every lease.
    pub fn add_weft_nodes(&mut self, n: usize, extra: &[&str]) {
        for _ in 0..n {
            let i = self.add_node(Kind::Weft);
            self.start_weft(i, extra);
            self.add_pod(i, None);
        }
        self.wait_converged();
    }

    /// Starts weft on nodes 0 and 1 at the same instant; returns their subnets.
    pub fn start_weft_pair(&mut self) -> (Ipv4Net, Ipv4Net) {
        self.spawn_weft(0, &[]);
        self.spawn_weft(1, &[]);
        let subnet = |env: SubnetEnv| env.subnet.expect("an IPv4 subnet");
        (subnet(self.finish_start(0)), subnet(self.finish_start(1)))
    }

    /// As `start_weft`, with `env` added to weft's environment.
    pub fn start_weft_env(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) -> SubnetEnv {
        self.spawn(i, extra, env);
        self.finish_start(i)
    }

    /// Starts weft on node `i` and returns at once (no waiting for anything); `env` adds
    /// variables to its environment.
    pub fn spawn_weft_env(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) {
        self.spawn(i, extra, env);
    }

    fn spawn_weft(&mut self, i: usize, extra: &[&str]) {
        self.spawn(i, extra, &[]);
    }

    fn spawn(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "weft already runs on node {}", i + 1);
        let _ = fs::remove_file(&n.subnet_file);
        self.spawn_beside(i, extra, env);
    }

    /// Hands node `i` over: starts a second weft there with `extra` while the first runs,
    /// and waits for the first to exit by itself. Returns the first's exit status (whether it
    /// was 0) and how long the hand-over took, from the second's start to the first's exit.
    pub fn hand_over(&mut self, i: usize, extra: &[&str]) -> (bool, Duration) {
        let mut old = self.nodes[i].child.take().expect("weft is not running");
        let t0 = Instant::now();
        self.spawn_beside(i, extra, &[]);
        let deadline = t0 + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = old.try_wait() {
                return (st.success(), t0.elapsed());
            }
            if Instant::now() > deadline {
                let threads = threads_of(old.id());
                let successor = self.nodes[i].child.as_mut().map(|c| c.try_wait());
                let _ = old.kill();
                let _ = old.wait();
                let log = fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
                panic!("timed out after 30 s waiting for the old weft to exit; its threads (name state wchan):\n{threads}\nthe successor: {successor:?}\nthe node's log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a weft on node `i` beside whatever runs there and waits for it to exit;
    /// returns (success, the node's log). For starts that must be refused.
    pub fn spawn_weft_and_wait(
        &mut self,
        i: usize,
        extra: &[&str],
        limit: Duration,
    ) -> (bool, String) {
        self.spawn_beside(i, extra, &[]);
        self.wait_exit(i, limit)
    }

    fn spawn_beside(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) {
        let n = &mut self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let port = n.healthz.to_string();
        let store = match &self.etcd {
            Some(e) => {
                let mut v = vec!["--etcd-endpoints".to_string(), e.url.clone()];
                v.extend(e.weft_args.iter().cloned());
                v
            }
            None => vec![
                "--lease-dir".to_string(),
                self.dir.join("leases").display().to_string(),
            ],
        };
        let mut args = vec!["netns".to_string(), "exec".into(), n.ns.clone()];
        args.extend(self.launcher.iter().cloned());
        args.extend([self.weft.display().to_string(), "run".into()]);
        // eth0 unless the test chooses the underlay itself.
        if !extra.iter().any(|a| a.starts_with("--iface")) {
            args.extend(["--iface".into(), "eth0".into()]);
        }
        args.extend(store);
        args.extend([
            "--subnet-file".into(),
            n.subnet_file.display().to_string(),
            "--healthz-port".into(),
            port,
        ]);
        // The hand-over socket in the cluster's directory, not the host's /run/weft.
        if !extra.iter().any(|a| a.starts_with("--state-dir")) {
            args.extend([
                "--state-dir".into(),
                self.dir.join("state").display().to_string(),
            ]);
        }
        // As kube-flannel.yml runs flanneld: with --ip-masq, so subnet.env says
        // FLANNEL_IPMASQ=true and the CNI bridge leaves pod-to-pod traffic un-NATed.
        if !extra.iter().any(|a| a.starts_with("--ip-masq")) {
            args.push("--ip-masq".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("ip")
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start weft");
        n.child = Some(child);
    }

    /// Waits for weft on node `i`, spawned by `spawn_weft_env`, to write subnet.env and answer
    /// `/healthz` with ok.
    pub fn finish_start(&mut self, i: usize) -> SubnetEnv {
        let n = &self.nodes[i];
        let (file, logp) = (n.subnet_file.clone(), n.log.clone());
        let env = wait_for(
            &format!("weft on node {} to write subnet.env", i + 1),
            Duration::from_secs(20),
            || {
                if let Some(Ok(Some(st))) = self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                    panic!(
                        "weft on node {} exited ({st}):\n{}",
                        i + 1,
                        fs::read_to_string(&logp).unwrap_or_default()
                    );
                }
                SubnetEnv::read(&file).ok()
            },
        );
        wait_for("the healthz endpoint", Duration::from_secs(10), || {
            self.http(i, "/healthz").filter(|b| b == "ok\n")
        });
        env
    }

    /// Stops weft on node `i` with SIGTERM and returns whether it exited cleanly.
    pub fn stop_weft(&mut self, i: usize) -> bool {
        let Some(mut child) = self.nodes[i].child.take() else {
            return true;
        };
        // `ip netns exec` execs weft, so the child's pid is weft's.
        let _ = run(&["kill", "-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills weft on node `i` with SIGKILL, as a crash or an OOM kill would: none of its
    /// clean-up runs (the kernel still deletes the TUN when its last descriptor closes).
    pub fn kill_weft(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            // `ip netns exec` execs weft, so this is weft's pid.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for weft on node `i` to exit by itself and returns (success, log).
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> (bool, String) {
        let mut child = self.nodes[i].child.take().expect("weft is not running");
        let st = wait_for("weft to exit", limit, || child.try_wait().ok().flatten());
        (
            st.success(),
            fs::read_to_string(&self.nodes[i].log).unwrap_or_default(),
        )
    }

    /// The node's current subnet (from its subnet.env, or its kernel lease).
    pub fn subnet(&self, i: usize) -> Ipv4Net {
        SubnetEnv::read(&self.nodes[i].subnet_file)
            .expect("no subnet.env")
            .subnet
            .expect("an IPv4 subnet")
    }

    /// GET `path` from node `i`'s healthz port, from inside its namespace.
    pub fn http(&self, i: usize, path: &str) -> Option<String> {
        let code = format!(
            "import urllib.request,sys\ntry:\n  sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{}{path}', timeout=2).read().decode())\nexcept Exception as e:\n  sys.exit(1)",
            self.nodes[i].healthz
        );
        let o = ns_run(&self.nodes[i].ns, &["python3", "-c", &code]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Node `i`'s metrics, as `name{labels}` -> value.
    pub fn metrics(&self, i: usize) -> HashMap<String, u64> {
        let text = self.http(i, "/metrics").expect("no /metrics");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            })
            .collect()
    }

    /// The subnets in node `i`'s forwarding table.
    pub fn table(&self, i: usize) -> Vec<Ipv4Net> {
        let text = self.http(i, "/leases").unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// Waits until every weft node's table lists exactly the leases in the directory.
    pub fn wait_converged(&self) {
        let want: Vec<Ipv4Net> = self.leases().iter().filter_map(|l| l.subnet).collect();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.kind == Kind::Weft && n.child.is_some() {
                wait_for(
                    &format!("node {} to see leases {want:?}", i + 1),
                    Duration::from_secs(10),
                    || (self.table(i) == want).then_some(()),
                );
            }
        }
    }
}
