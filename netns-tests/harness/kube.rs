//! The kube-apiserver stand-in on the underlay, and requests to it as kubectl would send them.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cluster::Cluster;
use super::command::{ns_run, wait_for};
use super::process::example_beside;

impl Cluster {
    /// Starts the kube-apiserver stand-in (the `kube-api-standin` example) in its own
    /// namespace on the underlay, at 192.0.2.250:6443, with a bookmark every second on idle
    /// watches; returns its URL. Talk to it with [`Cluster::kube`].
    pub fn start_kube_api(&mut self) -> String {
        let exe = example_beside(&self.weft, "kube-api-standin");
        let ns = self.add_host("api", 250);
        let log = self.dir.join("kube-api.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&exe)
            .args(["192.0.2.250:6443", "1"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the kube-apiserver stand-in");
        self.helpers.push(child);
        wait_for("the kube API stand-in", Duration::from_secs(10), || {
            fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("listening on"))
        });
        "http://192.0.2.250:6443".into()
    }

    /// [`Cluster::start_kube_api`], and `net_conf` written where the nodes'
    /// `--net-config-path` will read it (kube-flannel.yml's ConfigMap): its URL and path.
    pub fn start_kube_api_with(&mut self, net_conf: &str) -> (String, std::path::PathBuf) {
        let url = self.start_kube_api();
        let conf = self.dir.join("net-conf.json");
        fs::write(&conf, net_conf).unwrap();
        (url, conf)
    }

    /// One request to the kube API stand-in, from its namespace, as kubectl or
    /// kube-controller-manager would send it: (status code, JSON body).
    pub fn kube(
        &self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let code = "import sys,urllib.request\nb=sys.argv[3].encode() if sys.argv[3] else None\nr=urllib.request.Request('http://192.0.2.250:6443'+sys.argv[2],data=b,method=sys.argv[1],headers={'Content-Type':sys.argv[4]})\ntry:\n  resp=urllib.request.urlopen(r,timeout=5)\nexcept urllib.error.HTTPError as e:\n  resp=e\nsys.stdout.write(str(resp.status)+'\\n'+resp.read().decode())";
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let ns = format!("{}-api", self.prefix);
        let o = ns_run(&ns, &["python3", "-c", code, method, path, &body, ctype]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let (status, json) = out.split_once('\n').unwrap_or_else(|| {
            panic!(
                "kube API call failed: {out}{}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (
            status.parse().unwrap(),
            serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
        )
    }
}
