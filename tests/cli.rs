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
