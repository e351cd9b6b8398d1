//! A garbage flood (the `flood` example) from a host on the underlay, and what a weft node
//! counted of it.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The flood's rate in Mbit/s: `WEFT_TEST_FLOOD_MBIT`, 1600 by default.
pub fn flood_mbit() -> String {
    std::env::var("WEFT_TEST_FLOOD_MBIT").unwrap_or_else(|_| "1600".into())
}

/// A running flood: random 1400-byte datagrams, each different, that stop by themselves.
pub struct Flood {
    child: Child,
}

impl Flood {
    /// Starts the `flood` example `exe` in namespace `ns`, aimed at `to` (ADDR:PORT) for
    /// `secs` seconds at `mbit` Mbit/s.
    pub fn start(exe: &Path, ns: &str, to: &str, secs: f64, mbit: &str) -> Flood {
        let secs = format!("{secs}");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args([to, secs.as_str(), "1400", mbit])
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the flood example");
        Flood { child }
    }

    /// Waits for the flood to end; returns how many datagrams it sent.
    pub fn sent(self) -> u64 {
        let out = self.child.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        // "sent N datagrams in S s"
        report
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("flood said: {report}"))
    }
}

/// What a weft node counted between two readings of its metrics.
#[derive(Debug, Clone, Copy)]
pub struct FloodCounts {
    /// Drops by weft, every reason together: without the sender filter, random bytes mostly
    /// fail the VXLAN header checks before the sender is looked at.
    pub dropped: u64,
    /// Of those, drops as from an unknown sender.
    pub unknown_sender: u64,
    /// Datagrams the kernel dropped for weft's sockets (the sender filter, a full buffer).
    pub socket: u64,
    /// Inner packets weft delivered.
    pub rx: u64,
}

impl FloodCounts {
    /// The counts from metrics `before` to metrics `after`.
    pub fn between(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> FloodCounts {
        let delta =
            |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        FloodCounts {
            dropped: after
                .keys()
                .filter(|k| k.starts_with("weft_drops_total{"))
                .map(|k| delta(k))
                .sum(),
            unknown_sender: delta("weft_drops_total{reason=\"unknown_sender\"}"),
            socket: delta("weft_socket_drops_total"),
            rx: delta("weft_packets_total{direction=\"rx\"}"),
        }
    }

    /// Every datagram counted somewhere, weft's drops and the kernel's together.
    pub fn counted(&self) -> u64 {
        self.dropped + self.socket
    }
}
