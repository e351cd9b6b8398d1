//! weft's container image, run as deploy/kube-weft.yml runs it. `scripts/image` builds it
//! (deploy/Dockerfile, FROM scratch, from this host's Debian packages) from the binaries
//! this test was built with, under a name of this run's own; the test checks its size and
//! `weft --version` in it, runs the manifest's two init containers (`cp` of weft-cni and of
//! the conflist), then runs `weft run` from the image with podman in node 1's network
//! namespace as the DaemonSet's container runs: host network, every capability dropped but
//! NET_ADMIN and NET_RAW, /dev/net/tun, /run/flannel, the xtables lock, the state directory
//! and the config mounted, with the flags the harness gives every weft node. Node 2 runs
//! the plain binary; a pod on each (the one on node 1 added through the weft-cni the init
//! container installed) pings the other. SIGTERM to podman stops weft cleanly: its
//! masquerading rules, made by the image's iptables, go. Root only; podman, runc and
//! iptables from ./scripts/test's packages.

#[path = "harness.rs"]
mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use harness::{figure, in_ns, output_text, run, weft, Cluster, CniRuntime, Kind, Pod};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// The goal for the image's size (uncompressed, as `podman image inspect` gives it).
const MAX_BYTES: u64 = 40_000_000;
/// podman asks runc for RLIMIT_NOFILE 1048576 and RLIMIT_NPROC 32768, past what this
/// sandbox lets runc set (EPERM): ask for less, which never needs a privilege.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// podman in node namespace `ns` (nsenter keeps /sys and the cgroup mounts, which `ip
/// netns exec` would hide from runc), in podman's system store where scripts/image put the
/// image.
fn podman(ns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg("podman");
    c.stdin(Stdio::null());
    c
}

fn podman_ok(ns: &str, args: &[&str]) -> String {
    let o: Output = podman(ns)
        .args(args)
        .output()
        .expect("podman is not installed: run ./scripts/test, which installs it");
    assert!(o.status.success(), "podman {args:?}:\n{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// This run's image, `NAME:VERSION` and `NAME:latest`; untagged (and removed, when no
/// other name holds it) however the test ends.
struct Image {
    name: String,
    reference: String,
}

impl Image {
    /// Runs scripts/image on the binaries beside `weft`; returns the image and the seconds
    /// the build took.
    fn build(name: &str, weft: &Path) -> (Image, f64) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image");
        let bin_dir = weft.parent().expect("weft's directory");
        let t = Instant::now();
        let o = Command::new(&script)
            .args(["--bin-dir", &bin_dir.display().to_string(), "--name", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .expect("cannot run scripts/image");
        let secs = t.elapsed().as_secs_f64();
        let version = env!("CARGO_PKG_VERSION");
        let image = Image {
            name: name.to_string(),
            reference: format!("{name}:{version}"),
        };
        assert!(
            o.status.success(),
            "scripts/image failed:\n{}",
            output_text(&o)
        );
        (image, secs)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = run(&["podman", "rmi", "--ignore", &self.reference]);
        let _ = run(&[
            "podman",
            "rmi",
            "--ignore",
            &format!("{}:latest", self.name),
        ]);
    }
}

/// A container by name, removed however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run(&[
            "podman", "rm", "--ignore", "--force", "--time", "2", &self.0,
        ]);
    }
}

/// Containers and images left by runs that died (names `wt<pid>x...` whose pid is gone).
fn reap_stale() {
    let stale = |name: &str| {
        let name = name.trim_start_matches("localhost/");
        let Some(rest) = name.strip_prefix("wt") else {
            return false;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !pid.is_empty()
            && rest[pid.len()..].starts_with('x')
            && !Path::new(&format!("/proc/{pid}")).exists()
    };
    let names = |args: &[&str]| -> Vec<String> {
        String::from_utf8_lossy(&run(args).stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    for c in names(&["podman", "ps", "--all", "--format", "{{.Names}}"]) {
        if stale(&c) {
            let _ = run(&["podman", "rm", "--ignore", "--force", "--time", "0", &c]);
        }
    }
    for i in names(&["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"]) {
        if stale(i.split(':').next().unwrap_or("")) {
            let _ = run(&["podman", "rmi", "--ignore", &i]);
        }
    }
}

/// The host directories node 1's container gets, as the DaemonSet's hostPath and
/// ConfigMap volumes.
struct Mounts {
    run_flannel: PathBuf,
    run_weft: PathBuf,
    opt_cni_bin: PathBuf,
    cni_net_d: PathBuf,
    weft_cfg: PathBuf,
}

impl Mounts {
    fn new(c: &Cluster) -> Mounts {
        let host = c.dir.join("n1-host");
        let m = Mounts {
            run_flannel: host.join("run/flannel"),
            run_weft: host.join("run/weft"),
            opt_cni_bin: host.join("opt/cni/bin"),
            cni_net_d: host.join("etc/cni/net.d"),
            weft_cfg: host.join("configmap"),
        };
        for d in [
            &m.run_flannel,
            &m.run_weft,
            &m.opt_cni_bin,
            &m.cni_net_d,
            &m.weft_cfg,
        ] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(
            m.weft_cfg.join("cni-conf.json"),
            harness::KUBE_FLANNEL_CONFLIST,
        )
        .unwrap();
        fs::write(m.weft_cfg.join("net-conf.json"), VXLAN).unwrap();
        m
    }
}

fn volume(host: &Path, container: &str) -> String {
    format!("{}:{container}", host.display())
}

/// The size of image `reference` in bytes, which must be within the goal.
fn checked_image_size(reference: &str) -> u64 {
    let inspect = run(&[
        "podman",
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        reference,
    ]);
    let size: u64 = String::from_utf8_lossy(&inspect.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("podman image inspect: {}", output_text(&inspect)));
    assert!(
        size <= MAX_BYTES,
        "the image is {size} bytes, over the {MAX_BYTES} goal"
    );
    size
}

/// Checks that weft in image `reference`, run in namespace `ns`, is the weft this test was
/// built with.
fn check_version_in_image(ns: &str, reference: &str) {
    let mut version = vec!["run", "--rm"];
    version.extend(ULIMITS);
    version.extend([reference, "--version"]);
    let v = podman_ok(ns, &version);
    assert_eq!(
        v.trim(),
        format!("weft {}", env!("CARGO_PKG_VERSION")),
        "weft --version in the image"
    );
}

/// Runs the DaemonSet's init containers in `ns`: weft-cni as /opt/cni/bin/flannel, the
/// conflist in /etc/cni/net.d, each with the image's cp.
fn run_init_containers(ns: &str, m: &Mounts, reference: &str) {
    let cni_bin = volume(&m.opt_cni_bin, "/opt/cni/bin");
    let mut install = vec!["run", "--rm", "--network", "host"];
    install.extend(ULIMITS);
    install.extend(["-v", &cni_bin, "--entrypoint", "cp", reference]);
    install.extend(["-f", "/usr/local/bin/weft-cni", "/opt/cni/bin/flannel"]);
    podman_ok(ns, &install);
    let (net_d, cfg) = (
        volume(&m.cni_net_d, "/etc/cni/net.d"),
        volume(&m.weft_cfg, "/etc/kube-weft:ro"),
    );
    let mut install = vec!["run", "--rm", "--network", "host"];
    install.extend(ULIMITS);
    install.extend(["-v", &net_d, "-v", &cfg, "--entrypoint", "cp", reference]);
    install.extend([
        "-f",
        "/etc/kube-weft/cni-conf.json",
        "/etc/cni/net.d/10-flannel.conflist",
    ]);
    podman_ok(ns, &install);
    assert_eq!(
        fs::read_to_string(m.cni_net_d.join("10-flannel.conflist")).unwrap(),
        harness::KUBE_FLANNEL_CONFLIST
    );
}

/// Starts `weft run` from image `reference` on node `n1` (namespace `ns`) as the DaemonSet's
/// container, named `name`, and waits for it as for any weft node; returns its subnet.env.
fn start_weft_container(
    c: &mut Cluster,
    n1: usize,
    ns: &str,
    m: &Mounts,
    name: &str,
    reference: &str,
) -> weft::subnet_env::SubnetEnv {
    let xtables_lock = Path::new("/run/xtables.lock");
    if !xtables_lock.exists() {
        fs::write(xtables_lock, "").unwrap(); // hostPath type FileOrCreate
    }
    c.nodes[n1].subnet_file = m.run_flannel.join("subnet.env");
    let leases = c.lease_dir().display().to_string();
    let log = fs::File::create(&c.nodes[n1].log).unwrap();
    let cfg = volume(&m.weft_cfg, "/etc/kube-weft:ro");
    let (run_flannel, run_weft, lock) = (
        volume(&m.run_flannel, "/run/flannel"),
        volume(&m.run_weft, "/run/weft"),
        volume(xtables_lock, "/run/xtables.lock"),
    );
    let lease_dir = format!("{leases}:{leases}");
    let port = c.nodes[n1].healthz.to_string();
    let mut args = vec!["run", "--rm", "--name", name, "--network", "host"];
    args.extend(["--cap-drop", "all", "--cap-add", "NET_ADMIN", "--cap-add"]);
    args.extend(["NET_RAW", "--device", "/dev/net/tun"]);
    args.extend(ULIMITS);
    args.extend(["-v", &run_flannel, "-v", &run_weft, "-v", &lock, "-v", &cfg]);
    args.extend(["-v", &lease_dir, reference]);
    // The harness's flags for every weft node (harness/process.rs), subnet.env where the
    // manifest's weft writes it.
    args.extend(["run", "--iface", "eth0", "--lease-dir", &leases]);
    args.extend(["--subnet-file", "/run/flannel/subnet.env"]);
    args.extend(["--healthz-port", &port, "--ip-masq"]);
    let child = podman(ns)
        .args(&args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("cannot start podman");
    c.nodes[n1].child = Some(child);
    c.finish_start(n1)
}

/// Adds a pod on node `n1` through the weft-cni the init container installed (in `m`); its
/// address must be in the node's subnet (from `env`).
fn add_pod_through_installed_cni(
    c: &mut Cluster,
    n1: usize,
    m: &Mounts,
    env: &weft::subnet_env::SubnetEnv,
) {
    let mut rt = CniRuntime::kube_flannel(c, n1);
    rt.path = format!("{}:/usr/lib/cni", m.opt_cni_bin.display());
    let pod_ns = c.add_ns("n1p1");
    let container = format!("{}-n1p1", c.prefix);
    let result = rt
        .add(&container, &pod_ns)
        .unwrap_or_else(|e| panic!("CNI ADD with the image's weft-cni: {e}"));
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.parse::<ipnet::Ipv4Net>().ok())
        .unwrap_or_else(|| panic!("no address in {result}"))
        .addr();
    let subnet = env.subnet.expect("an IPv4 subnet");
    assert!(subnet.contains(&ip), "{ip} not in {subnet}");
    c.nodes[n1].pods.push(Pod {
        ns: pod_ns,
        ip,
        ip6: None,
    });
    c.nodes[n1].containers.push(container);
}

/// Checks node `n1` (namespace `ns`): the image's iptables-restore installed flanneld's
/// masquerading, and tunnel GSO came up in the container.
fn check_masquerading_and_tunnel_gso(c: &Cluster, n1: usize, ns: &str) {
    // The image's iptables-restore installed flanneld's masquerading (read here with the
    // host's iptables-save, the same nf_tables rules).
    let nat = in_ns(ns, "iptables-save -t nat");
    assert!(nat.contains("FLANNEL-POSTRTG"), "no masquerading:\n{nat}");
    // Tunnel GSO's TAP is configured over netlink, so a read-only /proc/sys (any
    // unprivileged container) does not cost it.
    let log = fs::read_to_string(&c.nodes[n1].log).unwrap_or_default();
    assert!(!log.contains("tunnel GSO unavailable"), "{log}");
}

/// SIGTERM to podman reaches weft on node `n1` (podman proxies signals); it stops cleanly
/// and takes its rules in `ns` with it.
fn stop_container_and_its_rules(c: &mut Cluster, n1: usize, ns: &str) {
    assert!(
        c.stop_weft(n1),
        "weft in the container did not stop cleanly:\n{}",
        { fs::read_to_string(&c.nodes[n1].log).unwrap_or_default() }
    );
    let nat = in_ns(ns, "iptables-save -t nat");
    assert!(!nat.contains("FLANNEL-POSTRTG"), "rules left:\n{nat}");
}

#[test]
fn weft_from_its_image_under_podman_forwards_between_pods_with_a_plain_weft_node() {
    let mut c = Cluster::new(weft(), VXLAN);
    reap_stale();
    let (image, build_secs) = Image::build(&format!("localhost/{}-weft", c.prefix), weft());
    let reference = image.reference.clone();

    // Its size, and weft in it is the weft this test was built with.
    let size = checked_image_size(&reference);
    let n1 = c.add_node(Kind::Weft);
    let ns = c.nodes[n1].ns.clone();
    check_version_in_image(&ns, &reference);

    // The DaemonSet's init containers, then weft run from the image on node 1, as the
    // DaemonSet's container.
    let m = Mounts::new(&c);
    run_init_containers(&ns, &m, &reference);
    let name = format!("{}-weft", c.prefix);
    let _container = Container(name.clone());
    let env = start_weft_container(&mut c, n1, &ns, &m, &name, &reference);
    assert!(
        env.ipmasq,
        "subnet.env from the container: FLANNEL_IPMASQ=true"
    );
    add_pod_through_installed_cni(&mut c, n1, &m, &env);

    // Node 2: the plain binary, with a pod.
    let n2 = c.add_node(Kind::Weft);
    c.start_weft(n2, &[]);
    c.add_pod(n2, None);
    c.wait_converged();
    let failed = c.ping_all();
    assert!(failed.is_empty(), "failed pairs: {failed:?}");

    check_masquerading_and_tunnel_gso(&c, n1, &ns);
    stop_container_and_its_rules(&mut c, n1, &ns);

    figure(&format!(
        "weft image (scripts/image, FROM scratch): {:.1} MB, built in {build_secs:.0} s; under podman \
         (NET_ADMIN+NET_RAW) it forwarded between pods with a plain weft node, with tunnel GSO",
        size as f64 / 1e6,
    ));
}
