//! Running commands on the host and in namespaces, and waiting: the harness's verbs.
//!
//! A command of plain words can be written on one line: `ip(&ns, "link set eth0 up")`,
//! `in_ns(&ns, "sysctl -qw net.ipv4.ip_forward=1")`. The line is split on whitespace, so it
//! suits commands whose arguments hold no spaces (names, addresses, flags); anything else
//! (a path, a script, a message) goes through the `&[&str]` forms, `sh` and `ns_sh`.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs a command, returning its output whatever the exit status.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `args` inside namespace `ns`.
pub fn ns_run(ns: &str, args: &[&str]) -> Output {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

/// Runs `args` inside `ns`; it must succeed.
pub fn ns_sh(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// The words of a one-line command, split on whitespace. Quotes are refused: nothing here
/// is a shell, so a quoted argument would reach the program with its quotes on.
pub fn words(line: &str) -> Vec<&str> {
    assert!(
        !line.contains(['"', '\'']),
        "{line:?}: one-line commands take no quotes; pass the words as a slice"
    );
    line.split_whitespace().collect()
}

/// `ip -n <ns> <line>`; it must succeed. Returns its stdout.
pub fn ip(ns: &str, line: &str) -> String {
    let mut v = vec!["ip", "-n", ns];
    v.extend(words(line));
    sh(&v)
}

/// Runs the one-line command `line` inside `ns`; it must succeed. Returns its stdout.
pub fn in_ns(ns: &str, line: &str) -> String {
    ns_sh(ns, &words(line))
}

/// Runs the one-line command `line` inside `ns`, returning its output whatever the exit
/// status.
pub fn try_in_ns(ns: &str, line: &str) -> Output {
    ns_run(ns, &words(line))
}

/// stdout then stderr of a finished command, as one string.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `f` until it returns `Some` or `limit` passes. Deadlines are generous: they bound
/// a hang, they do not measure speed.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `limit` for a child to exit.
pub fn wait_for_exit(c: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `iptables-restore --noflush` of `input` in namespace `ns`; it must succeed.
pub fn iptables_restore(ns: &str, input: &str) {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("cannot run iptables-restore");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    assert!(
        child.wait().unwrap().success(),
        "iptables-restore of\n{input}"
    );
}

/// A command prefix that runs the rest in a mount namespace of its own where `mount` (a
/// shell command) ran first: what a host without some file looks like to one process.
pub fn after_private_mount(mount: &str) -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!("{mount} && exec \"$0\" \"$@\""),
    ]
    .map(String::from)
    .to_vec()
}
