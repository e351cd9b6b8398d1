//! Whether what this process installed is removed when it stops, or left for the next
//! weft to adopt.
//!
//! Every piece of kernel state weft installs is held by a guard whose `Drop` removes it
//! (the backend's devices and routes, flanneld's rules). Some stops must leave it all in
//! place instead, as flanneld v0.27+ leaves its device, routes and rules at exit:
//!
//! - a kernel dataplane (kernel vxlan, host-gw) stopping: the kernel keeps forwarding on
//!   what is there, and the next start adopts it;
//! - a process that handed the node over to its successor ([`crate::handover`]): the
//!   successor forwards on the same devices;
//! - a successor whose start fails before it took over: what it adopted is its
//!   predecessor's, still forwarding.
//!
//! One process-wide switch read by those guards' `Drop`s, so every exit path (an error, a
//! signal, an unwind) obeys it alike. `weft cleanup` removes what was left.

use std::sync::atomic::{AtomicBool, Ordering};

static KEEP: AtomicBool = AtomicBool::new(false);

/// From now on, guards dropped leave what they hold (`true`), or remove it (`false`, the
/// default).
pub fn keep_state(keep: bool) {
    KEEP.store(keep, Ordering::SeqCst);
}

/// Whether guards dropped now leave what they hold.
pub fn keeping() -> bool {
    KEEP.load(Ordering::SeqCst)
}
