//! tcpdump captures inside a namespace, and the pcap files they write.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::command::{run, wait_for, wait_for_exit, words};

/// A tcpdump capture inside a namespace, written to a pcap file.
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i dev -w file filter` in `ns`, keeping the first 192 bytes of each
    /// frame (the headers: whole frames of an iperf3 run are more than tcpdump can write),
    /// in immediate mode (so a few sparse packets are written before the capture stops),
    /// and waits until it is listening.
    pub fn start(ns: &str, dev: &str, filter: &str, file: &Path) -> Capture {
        Capture::start_with(ns, dev, filter, file, 192, None)
    }

    /// [`start`](Self::start) keeping `snaplen` bytes of each frame (0: all of it) and
    /// stopping by itself after `count` frames, if given.
    pub fn start_with(
        ns: &str,
        dev: &str,
        filter: &str,
        file: &Path,
        snaplen: u32,
        count: Option<u32>,
    ) -> Capture {
        assert!(
            run(&["sh", "-c", "command -v tcpdump"]).status.success(),
            "tcpdump is not installed: run ./scripts/test, which installs it"
        );
        let log = file.with_extension("log");
        let child = Command::new("ip")
            .args(words(&format!(
                "netns exec {ns} tcpdump -i {dev} -U --immediate-mode -n -s {snaplen} -Z root"
            )))
            .args(
                count
                    .map(|n| vec!["-c".to_string(), n.to_string()])
                    .unwrap_or_default(),
            )
            .arg("-w")
            .arg(file)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start tcpdump");
        wait_for("tcpdump to listen", Duration::from_secs(10), || {
            fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("listening on"))
        });
        Capture {
            child,
            file: file.to_path_buf(),
        }
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and returns the captured frames.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        let _ = run(&["kill", "-INT", &self.child.id().to_string()]);
        if wait_for_exit(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        read_pcap(&fs::read(&self.file).expect("no capture file"))
    }
}

/// The frames of a classic little-endian pcap file (what tcpdump -w writes here).
pub fn read_pcap(data: &[u8]) -> Vec<Vec<u8>> {
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    assert!(data.len() >= 24, "pcap file too short");
    assert!(
        matches!(u32_at(0), 0xa1b2_c3d4 | 0xa1b2_3c4d),
        "not a little-endian pcap file"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32_at(at + 8) as usize;
        let end = (at + 16 + len).min(data.len());
        frames.push(data[at + 16..end].to_vec());
        at += 16 + len;
    }
    frames
}
