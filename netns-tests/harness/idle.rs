//! The host's CPU idle states, which decide what a wake-up costs and so weigh on every
//! latency figure: on a VM whose idle vCPUs halt at once (cpuidle `haltpoll` with
//! `guest_halt_poll_ns` 0, as this Firecracker guest comes), waking one is a halt exit on
//! the host; with halt polling the idle vCPU spins a while first and a wake-up is cheap.
//! The bench records them, and can set the polling for a run (`--halt-poll-ns`).

use std::path::Path;

const CPUIDLE: &str = "/sys/devices/system/cpu/cpuidle";
const HALT_POLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// What decides the cost of a wake-up here, in one line: the cpuidle driver and governor,
/// and the guest's halt polling where the `haltpoll` driver is in use.
pub fn idle_states() -> String {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "-".to_string())
    };
    let dir = Path::new(CPUIDLE);
    let mut line = format!(
        "cpuidle driver {}, governor {}",
        read(&dir.join("current_driver")),
        read(&dir.join("current_governor_ro"))
    );
    if Path::new(HALT_POLL_NS).exists() {
        line.push_str(&format!(
            ", guest_halt_poll_ns {}",
            read(Path::new(HALT_POLL_NS))
        ));
    }
    line
}

/// The guest's halt polling set for as long as this lives, and put back as it was when it
/// is dropped (on success, failure or panic).
pub struct HaltPoll {
    before: String,
}

impl HaltPoll {
    /// Sets `guest_halt_poll_ns` to `ns`; an error names the file where the host has no
    /// `haltpoll` cpuidle driver (bare metal, or a VM without it).
    pub fn set(ns: u64) -> Result<HaltPoll, String> {
        let before = std::fs::read_to_string(HALT_POLL_NS)
            .map_err(|e| format!("{HALT_POLL_NS}: {e} (no haltpoll cpuidle driver here)"))?;
        std::fs::write(HALT_POLL_NS, ns.to_string()).map_err(|e| format!("{HALT_POLL_NS}: {e}"))?;
        Ok(HaltPoll {
            before: before.trim().to_string(),
        })
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(HALT_POLL_NS, &self.before) {
            eprintln!("could not put {HALT_POLL_NS} back to {}: {e}", self.before);
        }
    }
}
