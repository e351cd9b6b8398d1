//! The command line as an operator meets it, without root: flanneld's `--version` on
//! `weft run` (a unit written for flanneld may run it), and flags weft adds beside
//! flanneld's being accepted by the parser.

use std::process::Command;

fn weft(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[test]
fn run_version_prints_the_version_and_exits() {
    for args in [&["run", "--version"][..], &["--version"]] {
        let (ok, out) = weft(args);
        assert!(ok, "{args:?}: {out}");
        assert_eq!(
            out,
            format!("weft {}\n", env!("CARGO_PKG_VERSION")),
            "{args:?}"
        );
    }
}

#[test]
fn flanneld_flags_and_wefts_own_are_in_runs_help() {
    let (ok, help) = weft(&["run", "--help"]);
    assert!(ok, "{help}");
    for flag in [
        "--ip-blackhole-route",
        "--br-netfilter-check",
        "--metrics-port",
        "--metrics-ip",
        "--healthz-ip",
    ] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
}

/// `weft check-config` names every key no field takes, so a typo is never silent.
#[test]
fn check_config_warns_of_unknown_keys() {
    let dir = std::env::temp_dir().join(format!("weft-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("net-conf.json");
    std::fs::write(
        &file,
        r#"{"network":"10.244.0.0/16","SubnetLne":26,"backend":{"type":"vxlan","vni":2,"Prot":4789}}"#,
    )
    .unwrap();
    let (ok, out) = weft(&["check-config", &file.display().to_string()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("warning: unknown key \"SubnetLne\""), "{out}");
    assert!(out.contains("warning: unknown key \"Prot\""), "{out}");
    assert!(out.contains("VNI 2"), "lower-case vni not read: {out}");
}
