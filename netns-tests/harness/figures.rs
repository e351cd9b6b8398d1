//! Figures: what a test measured on the way, printed and collected for `scripts/test`, and
//! the statistics they are made of.

use std::fs;
use std::path::Path;

/// Prints a measured figure and appends it to `target/tmp/figures.txt`, which
/// `scripts/test` prints at the end (cargo hides a passing test's output).
pub fn figure(line: &str) {
    // scripts/test runs the suite a second time with every offload off, through weft's env.
    let off = std::env::var("WEFT_TUN_OFFLOAD").is_ok_and(|v| v == "false");
    let line = format!("{}{line}", if off { "[offloads off] " } else { "" });
    eprintln!("[figures] {line}");
    // Integration tests have CARGO_TARGET_TMPDIR; the demo example does not.
    let Some(dir) = option_env!("CARGO_TARGET_TMPDIR") else {
        return;
    };
    if let Ok(mut f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(dir).join("figures.txt"))
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}

/// The median of the finite values in `v` (NaN if there are none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Busy CPU seconds of the whole machine so far, all CPUs together, from /proc/stat: user,
/// nice, system, irq, softirq and steal (everything but idle and iowait).
pub fn machine_busy_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .take(6)
        .map(|(_, x)| x)
        .sum();
    busy / 100.0
}

/// The `p` quantile (0 to 1) of `v`, by nearest rank; `v` is sorted in place.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Runs this same binary again inside namespace `ns` as `WEFT_SCALE_PHASE=phase` with
/// `env` (the scale benches' parts that must reach a server or a node's health port from
/// its namespace); its trimmed stdout. Panics, with its stderr, if it fails.
pub fn run_phase(ns: &str, phase: &str, env: &[(&str, String)]) -> String {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(std::env::current_exe().unwrap())
        .env("WEFT_SCALE_PHASE", phase);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{phase} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `$WEFT_SCALE_ARGS`, split on white space: flags the scale benches add to the node they
/// measure (`--dataplane kernel`, say, to measure the kernel's vxlan with every peer's
/// route, neighbour and FDB entry).
pub fn scale_args() -> Vec<String> {
    let extra = std::env::var("WEFT_SCALE_ARGS").unwrap_or_default();
    extra.split_whitespace().map(str::to_string).collect()
}
