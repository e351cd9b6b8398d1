//! What the demo and the netns tests need from the host, checked before a cluster is built
//! on it. Each missing piece is reported with the command that supplies it, so a fresh
//! machine meets a list of fixes, not a panic half-way through setting up namespaces.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Commands the harness runs on the host or in its namespaces (weft itself runs
/// `iptables-restore` for `--ip-masq`), each with the Debian package it comes from.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("ss", "iproute2"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("python3", "python3"),
    ("sysctl", "procps"),
    ("kill", "procps"),
    ("iptables-restore", "iptables"),
    ("iptables-save", "iptables"),
];

/// Debian's CNI plugins that weft-cni delegates to, as kube-flannel.yml's conflist has it.
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "portmap"];

/// The host as the demo or a test sees it; every path can be changed, so the checks can
/// be pointed at a host that lacks something.
pub struct Host {
    /// The TUN clone device.
    pub tun: PathBuf,
    /// Where commands are looked up (`PATH`).
    pub path: OsString,
    /// Where Debian's CNI plugins are.
    pub cni_dir: PathBuf,
    /// cargo's profile directory (`target/release`) holding weft's binaries.
    pub bin_dir: PathBuf,
    /// The binaries of weft's that must be in `bin_dir`.
    pub bins: Vec<&'static str>,
    /// The command that builds them, named in the fix.
    pub build: &'static str,
}

impl Host {
    /// This host, for a program in `target/<profile>/examples/` that runs `bins`.
    pub fn here(bins: &[&'static str], build: &'static str) -> Host {
        Host {
            tun: "/dev/net/tun".into(),
            path: std::env::var_os("PATH").unwrap_or_default(),
            cni_dir: "/usr/lib/cni".into(),
            bin_dir: profile_dir(),
            bins: bins.to_vec(),
            build,
        }
    }

    /// What is missing, one line each with its fix; empty when the host is ready. The
    /// namespace probe runs only when everything else is there, so a host that lacks
    /// something is never touched.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !is_root() {
            p.push(
                "not root: run as root (sudo ./scripts/demo); the cluster is network \
                 namespaces, veths, bridges and TUN devices"
                    .to_string(),
            );
        }
        p.extend(self.tun_problem());
        p.extend(self.package_problem());
        p.extend(self.binary_problem());
        if p.is_empty() {
            p.extend(netns_problem());
        }
        p
    }

    fn tun_problem(&self) -> Option<String> {
        let p = weft::host::tun_device_problem(&self.tun)?;
        // Not root is reported on its own.
        (is_root() || !p.contains("Permission denied")).then_some(p)
    }

    fn package_problem(&self) -> Option<String> {
        let mut missing = Vec::new();
        let mut packages: Vec<&str> = Vec::new();
        let mut need = |what: String, package: &'static str| {
            missing.push(what);
            if !packages.contains(&package) {
                packages.push(package);
            }
        };
        for &(tool, package) in TOOLS {
            if !self.on_path(tool) {
                need(tool.to_string(), package);
            }
        }
        for plugin in CNI_PLUGINS {
            let p = self.cni_dir.join(plugin);
            if !is_executable(&p) {
                need(p.display().to_string(), "containernetworking-plugins");
            }
        }
        (!missing.is_empty()).then(|| {
            format!(
                "missing {}: apt-get install {} (./scripts/demo and ./scripts/test install them)",
                missing.join(", "),
                packages.join(" ")
            )
        })
    }

    fn binary_problem(&self) -> Option<String> {
        let missing: Vec<String> = self
            .bins
            .iter()
            .map(|b| self.bin_dir.join(b))
            .filter(|p| !is_executable(p))
            .map(|p| p.display().to_string())
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "{} not built: {} (./scripts/demo builds what the demo runs)",
                missing.join(", "),
                self.build
            )
        })
    }

    fn on_path(&self, tool: &str) -> bool {
        std::env::split_paths(&self.path).any(|d| is_executable(&d.join(tool)))
    }
}

/// cargo's profile directory of the running program: `target/release` for
/// `target/release/examples/x` and for `target/release/deps/test-hash`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Whether this process runs as root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Makes and deletes one network namespace: root in a container without CAP_SYS_ADMIN
/// passes every other check and fails here.
fn netns_problem() -> Option<String> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("wt{}probe{seq}", std::process::id());
    let o = Command::new("ip")
        .args(["netns", "add", &name])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if o.status.success() {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        return None;
    }
    Some(format!(
        "cannot make a network namespace ({}): the demo needs CAP_SYS_ADMIN and \
         CAP_NET_ADMIN (in a container: --privileged)",
        String::from_utf8_lossy(&o.stderr).trim()
    ))
}
