//! A real etcd server on the underlay, and etcdctl to read and write it as flanneld would.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weft::lease::Lease;

use super::cluster::Cluster;
use super::command::{run, wait_for, wait_for_exit, words};

/// The etcd key prefix the tests use (flanneld's default).
pub const ETCD_PREFIX: &str = "/coreos.com/network";

/// A real etcd server in its own namespace on the underlay (192.0.2.250:2379).
pub struct Etcd {
    /// Its namespace.
    pub ns: String,
    /// Its client URL.
    pub url: String,
    /// Extra flags for etcd itself (TLS files, `--client-cert-auth`).
    pub server_args: Vec<String>,
    /// Extra flags for etcdctl (`--cacert`, `--cert`, `--key`, `--user`).
    pub ctl_args: Vec<String>,
    /// Extra flags for the weft nodes (`--etcd-cafile` and so on).
    pub weft_args: Vec<String>,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts (or restarts, on the same data) the server and waits until it answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "etcd already runs");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let (url, peer) = (&self.url, "http://192.0.2.250:2380");
        let urls = format!(
            "--listen-client-urls {url} --advertise-client-urls {url} \
             --listen-peer-urls {peer} --initial-advertise-peer-urls {peer} \
             --initial-cluster weft-test={peer}"
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcd", "--name", "weft-test"])
            .args(["--data-dir", &self.data.display().to_string()])
            .args(words(&urls))
            .args(&self.server_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd (apt-get install etcd-server)");
        self.child = Some(child);
        wait_for("etcd to answer", Duration::from_secs(20), || {
            self.try_ctl(&["endpoint", "health"]).ok()
        });
    }

    /// Stops the server (SIGTERM, as systemd would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = run(&["kill", "-TERM", &c.id().to_string()]);
            if wait_for_exit(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Runs etcdctl (API v3) against the server; Err(stderr) on failure.
    pub fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        let etcdctl = format!("netns exec {} etcdctl --endpoints {}", self.ns, self.url);
        let o = Command::new("ip")
            .args(words(&etcdctl))
            .args(["--command-timeout", "5s"])
            .args(&self.ctl_args)
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// Runs etcdctl and panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?} failed: {e}"))
    }

    /// Key -> value under `prefix`, as etcdctl prints them.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    /// The etcd lease a key is attached to (0: none), from `etcdctl get -w json`.
    pub fn lease_of(&self, key: &str) -> i64 {
        let out = self.ctl(&["get", key, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["kvs"][0]["lease"].as_i64().unwrap_or(0)
    }

    /// Writes a lease as flanneld does: under a fresh etcd lease with `ttl` seconds, or
    /// without one (a reservation).
    pub fn put_lease(&self, lease: &Lease, ttl: Option<u64>) {
        let key = format!("{ETCD_PREFIX}/subnets/{}", lease.key());
        let json = lease.attrs.to_json();
        match ttl {
            Some(t) => {
                // "lease 694d7d4a1f3c2b0e granted with TTL(86400s)"
                let out = self.ctl(&["lease", "grant", &t.to_string()]);
                let id = out.split_whitespace().nth(1).unwrap().to_string();
                self.ctl(&["put", &format!("--lease={id}"), &key, &json]);
            }
            None => {
                self.ctl(&["put", &key, &json]);
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Cluster {
    /// As `new`, but the leases live in a real etcd server started on the underlay (its
    /// own namespace, 192.0.2.250) with `net_conf` at `<prefix>/config`.
    pub fn with_etcd(weft: &Path, net_conf: &str) -> Cluster {
        Cluster::with_etcd_args(weft, net_conf, "http", &[], &[], &[])
    }

    /// As `with_etcd`, with the client URL's `scheme` and extra flags for etcd, etcdctl
    /// and weft (for TLS: the files the test made; see [`Etcd`]).
    pub fn with_etcd_args(
        weft: &Path,
        net_conf: &str,
        scheme: &str,
        server: &[String],
        ctl: &[String],
        weft_args: &[String],
    ) -> Cluster {
        let mut c = Cluster::new(weft, net_conf);
        assert!(
            run(&["sh", "-c", "command -v etcd && command -v etcdctl"])
                .status
                .success(),
            "etcd is not installed: run ./scripts/test, which installs etcd-server and etcd-client"
        );
        let ns = c.add_host("etcd", 250);
        let mut etcd = Etcd {
            ns,
            url: format!("{scheme}://192.0.2.250:2379"),
            server_args: server.to_vec(),
            ctl_args: ctl.to_vec(),
            weft_args: weft_args.to_vec(),
            data: c.dir.join("etcd-data"),
            log: c.dir.join("etcd.log"),
            child: None,
        };
        etcd.start();
        etcd.ctl(&["put", &format!("{ETCD_PREFIX}/config"), net_conf]);
        c.etcd = Some(etcd);
        c
    }

    /// The etcd server (panics for a directory-store cluster).
    pub fn etcd(&mut self) -> &mut Etcd {
        self.etcd.as_mut().expect("this cluster has no etcd")
    }
}
