//! Least privilege. weft starts as root (or with the capabilities a unit grants) because
//! set-up needs them; once it forwards, no thread keeps more than it uses:
//!
//! - the control thread keeps `CAP_NET_ADMIN` (netlink: routes, links, neighbours; the TUN
//!   and vxlan device it may recreate; `SO_RCVBUFFORCE`) and `CAP_NET_RAW` (the
//!   `iptables-restore` it runs to resync flanneld's rules), nothing else, in its effective,
//!   permitted and bounding sets (as root, none inheritable; not as root, the two kept are
//!   also inheritable and ambient, which is how an unprivileged process hands them to
//!   iptables);
//! - the worker threads, the health server and the store clients' runtime threads keep
//!   nothing: they only read and write descriptors they were handed;
//! - every thread sets `no_new_privs`, so a program weft runs (iptables) cannot gain more
//!   than the thread had, as root's `execve` otherwise would (it grants the bounding set).
//!
//! Capabilities are per thread in Linux: each thread drops its own, which is why the
//! functions here act on the calling thread. The kernel enforces the rest; the netns test
//! reads every thread's `/proc/<pid>/task/<tid>/status`.
//!
//! Two `unsafe` calls: `prctl(PR_SET_NO_NEW_PRIVS)` and `geteuid`, which libc exposes only
//! as raw calls.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

use caps::{CapSet, Capability, CapsHashSet};

/// `--drop-capabilities` (default on): read by the threads that drop everything.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns dropping on or off for the threads started from now on (set once at start-up,
/// before any thread is spawned).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether dropping is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What the control thread keeps.
pub const CONTROL: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];

/// The calling thread keeps only `keep`: effective, permitted and bounding sets reduced
/// to it (the bounding set where the thread may still change it), nothing inheritable or
/// ambient, and `no_new_privs` set.
pub fn keep_only(keep: &[Capability]) -> Result<(), String> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let err = |what: &str, e: caps::errors::CapsError| format!("cannot {what}: {e}");
    // The bounding set first, while CAP_SETPCAP is still effective. A thread that lost it
    // already (spawned from one that dropped) cannot shrink it further; its permitted set,
    // below, still bounds it, and no_new_privs keeps an exec from regaining the rest.
    let can_setpcap = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(|e| err("read capabilities", e))?;
    if can_setpcap {
        for c in caps::read(None, CapSet::Bounding).map_err(|e| err("read the bounding set", e))? {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)
                    .map_err(|e| err("shrink the bounding set", e))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("clear the ambient set", e))?;
    let have = caps::read(None, CapSet::Permitted).map_err(|e| err("read capabilities", e))?;
    let kept: CapsHashSet = have.intersection(&keep).copied().collect();
    // Root's execve grants the bounding set (within the permitted one, under
    // no_new_privs), so iptables gets what this thread kept. A non-root weft (a unit with
    // User= and AmbientCapabilities=) passes them on only as ambient capabilities, which
    // must also be inheritable.
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let inheritable = if root {
        CapsHashSet::new()
    } else {
        kept.clone()
    };
    caps::set(None, CapSet::Inheritable, &inheritable)
        .map_err(|e| err("set the inheritable set", e))?;
    caps::set(None, CapSet::Effective, &kept).map_err(|e| err("set the effective set", e))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| err("set the permitted set", e))?;
    if !root {
        for c in &kept {
            caps::raise(None, CapSet::Ambient, *c)
                .map_err(|e| err("raise an ambient capability", e))?;
        }
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers and only sets a
    // flag of the calling thread.
    let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) } != 0 {
        return Err(format!(
            "cannot set no_new_privs: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// For threads that need no privilege at all (workers, the health server, the store
/// clients' runtimes): drops everything; a failure is logged once per thread at debug
/// level (the thread runs as it was, which is no worse than before).
pub fn drop_all_in_this_thread() {
    if !enabled() {
        return;
    }
    if let Err(e) = keep_only(&[]) {
        tracing::debug!(
            "thread {:?} keeps its capabilities: {e}",
            std::thread::current().name()
        );
    }
}
