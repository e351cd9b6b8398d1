//! Traffic between pods and nodes: iperf3 runs and their reports, UDP probes.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::cluster::Pod;
use super::command::{ns_run, words};

/// The received rate of each interval of an `iperf3 -J -i 1` run, in bits per second.
pub fn iperf3_per_second(v: &serde_json::Value) -> Vec<f64> {
    v["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default()
}

/// iperf3's summary of one run.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    /// Received bits per second.
    pub bps: f64,
    /// Bytes received.
    pub bytes: f64,
    /// Retransmits (TCP) or lost percent (UDP).
    pub loss: f64,
}

/// Runs iperf3 from pod `from` to pod `to` with client `args` (plus `-J`), and returns its
/// JSON report, or why it failed.
pub fn iperf3_json(from: &Pod, to: &Pod, args: &[&str]) -> Result<serde_json::Value, String> {
    iperf3_json_family(from, to, false, args)
}

/// [`iperf3_json`] to `to`'s IPv6 address when `v6` (a dual-stack pod).
pub fn iperf3_json_family(
    from: &Pod,
    to: &Pod,
    v6: bool,
    args: &[&str],
) -> Result<serde_json::Value, String> {
    let dst = match (v6, to.ip6) {
        (true, Some(a)) => a.to_string(),
        (true, None) => return Err(format!("{} has no IPv6 address", to.ip)),
        (false, _) => to.ip.to_string(),
    };
    let mut server = Command::new("ip")
        .args(words(&format!(
            "netns exec {} iperf3 -s -1 -B {dst}",
            to.ns
        )))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start iperf3 -s: {e}"))?;
    let ready = (0..200).any(|_| {
        let o = ns_run(&to.ns, &["ss", "-Hltn", "sport = :5201"]);
        let up = !o.stdout.is_empty();
        if !up {
            std::thread::sleep(Duration::from_millis(50));
        }
        up
    });
    let mut argv = vec!["iperf3", "-c", dst.as_str(), "-J"];
    argv.extend_from_slice(args);
    let out = ready.then(|| ns_run(&from.ns, &argv));
    let _ = server.kill();
    let _ = server.wait();
    let out = out.ok_or("iperf3 server did not start")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("iperf3 {} -> {dst} failed: {text}", from.ip));
    }
    serde_json::from_str(&text).map_err(|e| format!("iperf3 -J output: {e}"))
}

/// Runs iperf3 from pod `from` to pod `to` for `secs` seconds; `udp` is (bitrate, length).
pub fn iperf3(from: &Pod, to: &Pod, secs: u32, udp: Option<(&str, u32)>) -> Iperf {
    let mut args = format!("-t {secs}");
    if let Some((rate, len)) = udp {
        args += &format!(" -u -b {rate} -l {len}");
    }
    let argv = words(&args);
    let v = iperf3_json(from, to, &argv).unwrap_or_else(|e| panic!("{e}"));
    Iperf::from_json(&v, udp.is_some())
}

impl Iperf {
    /// The summary of an iperf3 `-J` report.
    pub fn from_json(v: &serde_json::Value, udp: bool) -> Iperf {
        let end = &v["end"];
        if udp {
            let s = &end["sum"];
            Iperf {
                bps: s["bits_per_second"].as_f64().unwrap_or(0.0),
                bytes: s["bytes"].as_f64().unwrap_or(0.0),
                loss: s["lost_percent"].as_f64().unwrap_or(100.0),
            }
        } else {
            Iperf {
                bps: end["sum_received"]["bits_per_second"]
                    .as_f64()
                    .unwrap_or(0.0),
                bytes: end["sum_received"]["bytes"].as_f64().unwrap_or(0.0),
                loss: end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
            }
        }
    }
}

/// The source address a UDP listener in `listener` (port 7000) sees on datagrams that
/// `sender` sends to `to`: where masquerading shows.
pub fn udp_source_seen(listener: &str, sender: &str, to: &str) -> String {
    let listen = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7000))\ns.settimeout(10)\nd,a=s.recvfrom(100)\nprint(a[0])";
    let listener = listener.to_string();
    let h = std::thread::spawn(move || ns_run(&listener, &["python3", "-c", listen]));
    std::thread::sleep(Duration::from_millis(300));
    let send = format!("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor _ in range(20):\n  s.sendto(b'x',('{to}',7000)); time.sleep(0.1)");
    ns_run(sender, &["python3", "-c", &send]);
    let o = h.join().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
