//! A real container runtime on a weft node: Debian's podman 4.3 with its CNI backend (libcni
//! itself, not the harness's rendition of it) runs a container on kube-flannel.yml's
//! conflist with weft-cni as `flannel`, and the container reaches a pod on another node
//! through weft; `podman run --rm` then DELs it, releasing its address. Set up as
//! `../shared/flannel-notes.md` describes it: a containers.conf with `network_backend =
//! "cni"`, runc with cgroupfs, podman entered into the node's network namespace with
//! nsenter, an image imported from a static busybox. Root only.

#[path = "harness.rs"]
mod harness;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use harness::{weft, Cluster, CniRuntime};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const IMAGE: &str = "localhost/weft-busybox";

/// podman's own directories for node `i`: config, CNI plugins and conflist, storage.
struct Podman {
    dir: PathBuf,
    node_ns: String,
}

impl Podman {
    fn new(c: &Cluster, i: usize) -> Podman {
        let dir = c.dir.join(format!("podman{}", i + 1));
        let rt = CniRuntime::kube_flannel(c, i);
        let (bin, netd) = (dir.join("cni-bin"), dir.join("net.d"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&netd).unwrap();
        std::os::unix::fs::symlink(c.weft.with_file_name("weft-cni"), bin.join("flannel")).unwrap();
        for p in ["bridge", "host-local", "loopback", "portmap"] {
            std::os::unix::fs::symlink(format!("/usr/lib/cni/{p}"), bin.join(p)).unwrap();
        }
        fs::write(netd.join("10-flannel.conflist"), rt.conflist.to_string()).unwrap();
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
            bin.display(),
            netd.display()
        );
        fs::write(dir.join("containers.conf"), conf).unwrap();
        Podman {
            dir,
            node_ns: c.nodes[i].ns.clone(),
        }
    }

    /// Runs podman in the node's network namespace (nsenter keeps /sys and the cgroup
    /// mounts, which `ip netns exec` would hide from runc); returns (ok, stdout + stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let d = self.dir.display();
        let o = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_ns))
            .args(["podman", "--storage-driver", "vfs"])
            .args([
                "--root",
                &format!("{d}/storage"),
                "--runroot",
                &format!("{d}/run"),
            ])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .output()
            .expect("podman is not installed: run ./scripts/test, which installs it");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    }

    /// Imports a one-binary image: a static busybox as /bin/busybox.
    fn import_busybox(&self) {
        let rootfs = self.dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let tar = self.dir.join("rootfs.tar");
        harness::sh(&[
            "tar",
            "-C",
            &rootfs.display().to_string(),
            "-cf",
            &tar.display().to_string(),
            ".",
        ]);
        let (ok, out) = self.run(&["import", &tar.display().to_string(), IMAGE]);
        assert!(ok, "podman import: {out}");
    }
}

#[test]
fn a_podman_container_on_a_weft_node_reaches_a_pod_on_another_node() {
    let mut c = Cluster::new(weft(), VXLAN);
    c.add_weft_nodes(2, &[]);
    let target = c.nodes[1].pods[0].ip.to_string();
    let podman = Podman::new(&c, 0);
    podman.import_busybox();
    let ipam = c.dir.join("n1/ipam/cbr0");
    let reserved = || fs::read_dir(&ipam).map(|d| d.count()).unwrap_or(0);
    let before = reserved();
    // podman asks runc for RLIMIT_NOFILE 1048576 and RLIMIT_NPROC 32768 even with
    // `--ulimit host`, past what this sandbox lets runc set (EPERM): ask for less, which
    // never needs a privilege.
    let (nofile, nproc) = ("nofile=1024:1024", "nproc=1024:1024");
    let (ok, out) = podman.run(&[
        "run",
        "--rm",
        "--network",
        "cbr0",
        "--ulimit",
        nofile,
        "--ulimit",
        nproc,
        IMAGE,
        "/bin/busybox",
        "sh",
        "-c",
        &format!("/bin/busybox ip -4 -o addr show eth0 && /bin/busybox ping -c 3 -W 2 {target}"),
    ]);
    assert!(ok, "the container did not reach {target}:\n{out}");
    assert!(out.contains(" 0% packet loss"), "{out}");
    // Its address came from node 1's subnet, by weft-cni's delegate.
    let subnet = c.subnet(0);
    let addr = out.split_whitespace().find_map(|w| {
        w.parse::<ipnet::Ipv4Net>()
            .ok()
            .filter(|n| n.addr() != n.network() && subnet.contains(&n.addr()))
    });
    assert!(addr.is_some(), "no address of {subnet} in:\n{out}");
    // `--rm` ran CNI DEL: host-local holds no more than before.
    assert_eq!(
        reserved(),
        before,
        "the container's address was not released"
    );
    harness::figure(&format!(
        "podman 4.3 (CNI backend) container {} on a weft node pinged pod {target} on another: 3/3",
        addr.unwrap()
    ));
}
