//! The README's first command meets a host that lacks something: the demo (the
//! `cluster-demo` example that `./scripts/demo` runs) says what is missing and the fix, exits
//! 2, and touches nothing, instead of panicking half-way through building a cluster. Each
//! test takes one thing away for real: root (setpriv), a binary (a copy of the build
//! without it), a package (a PATH without the tool; a private mount over /usr/lib/cni) or
//! the TUN device (a private mount over /dev/net). Run as root.

#[path = "harness.rs"]
mod harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::preflight::{profile_dir, TOOLS};

/// The built demo; the tests need it built beside them.
fn demo() -> PathBuf {
    let exe = profile_dir().join("examples/cluster-demo");
    assert!(
        exe.exists(),
        "{} is missing: build with --all-targets (cargo test --all-targets builds it)",
        exe.display()
    );
    exe
}

/// A scratch directory, removed on every exit path.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("wt-demo-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A copy of the build's layout (`examples/cluster-demo` beside `bins`) in `s`, readable by
/// anyone; returns the demo's path in it.
fn copy_build(s: &Scratch, bins: &[&str]) -> PathBuf {
    let examples = s.0.join("examples");
    fs::create_dir_all(&examples).unwrap();
    fs::set_permissions(&examples, fs::Permissions::from_mode(0o755)).unwrap();
    let exe = examples.join("cluster-demo");
    fs::copy(demo(), &exe).unwrap();
    for b in bins {
        fs::copy(profile_dir().join(b), s.0.join(b)).unwrap();
    }
    exe
}

/// Runs `argv`, checks it stopped at the checks (exit 2, no panic), and returns stderr.
fn refused(argv: &[&str], path: Option<&Path>) -> String {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let o: Output = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{argv:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("cannot run on this host"), "{err}");
    err
}

/// The demo in a private mount namespace where `mount` ran first.
fn with_mount(mount: &str) -> String {
    let mut argv = harness::after_private_mount(mount);
    argv.push(demo().display().to_string());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    refused(&argv, None)
}

#[test]
fn without_root_the_demo_says_to_run_it_as_root() {
    harness::require_root();
    let s = Scratch::new("user");
    let exe = copy_build(&s, &["weft", "weft-cni"]);
    let exe = exe.display().to_string();
    let err = refused(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &exe,
        ],
        None,
    );
    assert!(
        err.contains("not root: run as root (sudo ./scripts/demo)"),
        "{err}"
    );
    assert!(!err.contains("not built"), "{err}");
}

#[test]
fn a_missing_weft_cni_is_named_with_the_build_command() {
    harness::require_root();
    let s = Scratch::new("nocni");
    let exe = copy_build(&s, &["weft"]);
    let err = refused(&[&exe.display().to_string()], None);
    let cni = s.0.join("weft-cni").display().to_string();
    assert!(
        err.contains(&format!("{cni} not built: cargo build --release --bin weft --bin weft-cni --example cluster-demo")),
        "{err}"
    );
    // weft is there, so only weft-cni is named.
    assert!(!err.contains(&format!("{}/weft,", s.0.display())), "{err}");
}

#[test]
fn a_missing_tool_is_named_with_its_package() {
    harness::require_root();
    let s = Scratch::new("path");
    for &(tool, _) in TOOLS.iter().filter(|(t, _)| *t != "iperf3") {
        let real = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} is not installed"));
        std::os::unix::fs::symlink(real, s.0.join(tool)).unwrap();
    }
    let err = refused(&[&demo().display().to_string()], Some(&s.0));
    assert!(
        err.contains("missing iperf3: apt-get install iperf3 (./scripts/demo"),
        "{err}"
    );
}

#[test]
fn missing_cni_plugins_name_debians_package() {
    harness::require_root();
    let err = with_mount("mount -t tmpfs none /usr/lib/cni");
    for p in ["bridge", "host-local", "portmap"] {
        assert!(err.contains(&format!("/usr/lib/cni/{p}")), "{err}");
    }
    assert!(
        err.contains("apt-get install containernetworking-plugins"),
        "{err}"
    );
}

#[test]
fn a_missing_tun_device_is_named_with_mknod() {
    harness::require_root();
    let err = with_mount("mount -t tmpfs none /dev/net");
    assert!(
        err.contains("/dev/net/tun is missing: mkdir -p /dev/net && mknod /dev/net/tun c 10 200"),
        "{err}"
    );
}

#[test]
fn a_tun_path_that_is_another_device_is_refused() {
    harness::require_root();
    let err = with_mount("mount --bind /dev/null /dev/net/tun");
    assert!(
        err.contains("/dev/net/tun is not the TUN device (it is char 1:3, not char 10:200)"),
        "{err}"
    );
}

#[test]
fn an_unknown_backend_is_a_usage_error() {
    let o = Command::new(demo()).arg("host-gw").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("usage: cluster-demo [vxlan|udp]"), "{err}");
}
