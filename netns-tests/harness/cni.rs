//! The container runtime's side of CNI: kube-flannel.yml's conflist run plugin by plugin,
//! and pods added and removed through it.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use super::cluster::{Cluster, Pod};
use super::command::run;
use super::netns::kill_ns_processes;

/// The conflist kube-flannel.yml ships (flannel's Documentation/kube-flannel.yml,
/// `cni-conf.json`), byte for byte.
pub const KUBE_FLANNEL_CONFLIST: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

/// A container runtime's side of CNI, as containerd or CRI-O runs a conflist: every plugin
/// in order, each given the previous one's result as `prevResult`; DEL in reverse order.
/// Plugins run inside the node's namespace with the `CNI_*` variables the spec defines.
pub struct CniRuntime {
    /// The network configuration list.
    pub conflist: serde_json::Value,
    /// `CNI_PATH`.
    pub path: String,
    /// The node's namespace.
    pub node_ns: String,
}

impl CniRuntime {
    /// kube-flannel.yml's conflist for node `i` of `c`, with `weft-cni` installed as the
    /// `flannel` plugin beside Debian's plugins. One host plays several nodes here, so the
    /// flannel plugin gets flannel's own `subnetFile` and `dataDir` keys, and host-local its
    /// `dataDir`, per node; everything else is the manifest's.
    pub fn kube_flannel(c: &Cluster, i: usize) -> CniRuntime {
        let node_dir = c.dir.join(format!("n{}", i + 1));
        let bin = node_dir.join("cni-bin");
        fs::create_dir_all(&bin).unwrap();
        let cni = c.weft.with_file_name("weft-cni");
        assert!(
            cni.exists(),
            "{} is missing: build with --all-targets",
            cni.display()
        );
        let link = bin.join("flannel");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&cni, &link).unwrap();
        let mut conflist: serde_json::Value = serde_json::from_str(KUBE_FLANNEL_CONFLIST).unwrap();
        let flannel = &mut conflist["plugins"][0];
        flannel["subnetFile"] = c.nodes[i].subnet_file.display().to_string().into();
        flannel["dataDir"] = node_dir.join("cni-flannel").display().to_string().into();
        flannel["ipam"] =
            serde_json::json!({"dataDir": node_dir.join("ipam").display().to_string()});
        CniRuntime {
            conflist,
            path: format!("{}:/usr/lib/cni", bin.display()),
            node_ns: c.nodes[i].ns.clone(),
        }
    }

    /// Runs one plugin: returns its stdout, or (exit failed) its stdout and stderr.
    pub fn exec(
        &self,
        plugin: &str,
        command: &str,
        container: &str,
        pod_ns: &str,
        conf: &serde_json::Value,
    ) -> Result<String, String> {
        let netns = format!("/var/run/netns/{pod_ns}");
        self.exec_as(plugin, command, [container, &netns, "eth0"], conf)
    }

    /// Runs one plugin with CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME set to `attachment`
    /// (libcni sets all three empty for GC and STATUS).
    fn exec_as(
        &self,
        plugin: &str,
        command: &str,
        attachment: [&str; 3],
        conf: &serde_json::Value,
    ) -> Result<String, String> {
        let [container, netns, ifname] = attachment;
        let exe = self
            .path
            .split(':')
            .map(|d| Path::new(d).join(plugin))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {plugin} not on {}", self.path));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns])
            .arg(&exe)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run a CNI plugin");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            Ok(out)
        } else {
            Err(format!("{out}{}", String::from_utf8_lossy(&o.stderr)))
        }
    }

    fn plugin_conf(&self, k: usize, prev: Option<&serde_json::Value>) -> serde_json::Value {
        let mut conf = self.conflist["plugins"][k].clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn plugins(&self) -> usize {
        self.conflist["plugins"].as_array().map_or(0, Vec::len)
    }

    /// ADD through the whole list; the last plugin's result.
    pub fn add(&self, container: &str, pod_ns: &str) -> Result<serde_json::Value, String> {
        let mut prev: Option<serde_json::Value> = None;
        for k in 0..self.plugins() {
            let conf = self.plugin_conf(k, prev.as_ref());
            let plugin = conf["type"].as_str().unwrap().to_string();
            let out = self.exec(&plugin, "ADD", container, pod_ns, &conf)?;
            prev = Some(
                serde_json::from_str(&out)
                    .map_err(|e| format!("{plugin} ADD result: {e}: {out}"))?,
            );
        }
        prev.ok_or_else(|| "empty plugin list".into())
    }

    /// libcni's `GetStatusNetworkList`: nothing for a list below 1.1.0; else STATUS to each
    /// plugin in order, the first error returned.
    pub fn status(&self) -> Result<(), String> {
        let version = self.conflist["cniVersion"].as_str().unwrap_or("");
        if !weft::cni::at_least(version, "1.1.0") {
            return Ok(());
        }
        for k in 0..self.plugins() {
            let conf = self.plugin_conf(k, None);
            let plugin = conf["type"].as_str().unwrap().to_string();
            self.exec_as(&plugin, "STATUS", ["", "", ""], &conf)?;
        }
        Ok(())
    }

    /// libcni's `GCNetworkList`: DEL through the list for each attachment the runtime has
    /// cached (container, pod namespace) that is not `valid`; then, for a 1.1.0 list, GC to
    /// every plugin with the valid attachments injected under both of libcni's keys. Every
    /// error is kept.
    pub fn gc(&self, valid: &[&str], cached: &[(&str, &str)]) -> Result<(), String> {
        let mut errors = Vec::new();
        for (container, pod_ns) in cached.iter().filter(|(c, _)| !valid.contains(c)) {
            if let Err(e) = self.del(container, pod_ns) {
                errors.push(e);
            }
        }
        let version = self.conflist["cniVersion"].as_str().unwrap_or("");
        if weft::cni::at_least(version, "1.1.0") {
            let attachments: Vec<serde_json::Value> = valid
                .iter()
                .map(|c| serde_json::json!({"containerID": c, "ifname": "eth0"}))
                .collect();
            for k in 0..self.plugins() {
                let mut conf = self.plugin_conf(k, None);
                conf["cni.dev/valid-attachments"] = attachments.clone().into();
                conf["cni.dev/attachments"] = attachments.clone().into();
                let plugin = conf["type"].as_str().unwrap().to_string();
                if let Err(e) = self.exec_as(&plugin, "GC", ["", "", ""], &conf) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    /// DEL through the list in reverse (cniVersion 0.3.1 passes no prevResult to DEL).
    pub fn del(&self, container: &str, pod_ns: &str) -> Result<(), String> {
        for k in (0..self.plugins()).rev() {
            let conf = self.plugin_conf(k, None);
            let plugin = conf["type"].as_str().unwrap().to_string();
            self.exec(&plugin, "DEL", container, pod_ns, &conf)?;
        }
        Ok(())
    }
}

impl Cluster {
    /// Adds a pod to node `i` as a container runtime does: a namespace, then CNI ADD through
    /// kube-flannel.yml's conflist (weft-cni as `flannel`, Debian's bridge, host-local and
    /// portmap), so cni0, the veth, the address and the routes are the plugins' work. `mtu`
    /// overrides FLANNEL_MTU through the delegate's own `mtu` key, as flannel's plugin allows.
    pub fn add_pod(&mut self, i: usize, mtu: Option<u32>) -> Pod {
        let mut rt = CniRuntime::kube_flannel(self, i);
        if let Some(mtu) = mtu {
            rt.conflist["plugins"][0]["delegate"]["mtu"] = mtu.into();
        }
        let j = self.nodes[i].pods.len() + 1;
        let ns = self.add_ns(&format!("n{}p{j}", i + 1));
        let container = format!("{}-n{}p{j}", self.prefix, i + 1);
        let result = rt
            .add(&container, &ns)
            .unwrap_or_else(|e| panic!("CNI ADD of a pod on node {} failed: {e}", i + 1));
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.parse::<Ipv4Net>().ok())
            .unwrap_or_else(|| panic!("CNI ADD result has no IPv4 address: {result}"))
            .addr();
        let ip6 = result["ips"].as_array().and_then(|ips| {
            ips.iter()
                .find_map(|a| a["address"].as_str()?.parse::<ipnet::Ipv6Net>().ok())
        });
        let pod = Pod {
            ns,
            ip,
            ip6: ip6.map(|n| n.addr()),
        };
        self.nodes[i].pods.push(pod.clone());
        self.nodes[i].containers.push(container);
        pod
    }

    /// Removes pod `pod` of node `i` as a runtime does: CNI DEL through the conflist in
    /// reverse, then its namespace. Returns DEL's error, if any.
    pub fn remove_pod(&mut self, i: usize, pod: &Pod) -> Result<(), String> {
        let k = self.nodes[i]
            .pods
            .iter()
            .position(|p| p.ns == pod.ns)
            .expect("no such pod");
        let rt = CniRuntime::kube_flannel(self, i);
        let container = self.nodes[i].containers[k].clone();
        rt.del(&container, &pod.ns)?;
        self.nodes[i].pods.remove(k);
        self.nodes[i].containers.remove(k);
        kill_ns_processes(&pod.ns);
        let _ = run(&["ip", "netns", "del", &pod.ns]);
        self.namespaces.retain(|n| n != &pod.ns);
        Ok(())
    }
}
