//! ICMP error rate limiting, as the kernel limits the errors it sends itself: per
//! destination, `net.ipv4.icmp_ratelimit` (one every 1000 ms after a burst of 6, the
//! kernel's `XRLIM_BURST_FACTOR`, `inet_peer_xrlim_allow`), and for the whole node,
//! `net.ipv4.icmp_msgs_per_sec` (1000) with `icmp_msgs_burst` (50). So a pod flooding a
//! subnet nobody leases gets a few errors a second, not one per packet, and a storm from
//! many sources gets at most the node's rate. "Fragmentation needed" is not limited, as the
//! kernel does not limit it (path MTU discovery must not stall): the caller skips it.
//!
//! Pure: the caller passes a monotonic time in nanoseconds. Memory is bounded: destinations
//! share a fixed table of slots by hash, a new one taking over its slot with a full burst
//! (as a new `inet_peer` starts), so many sources cannot grow it; the node-wide bucket caps
//! what such churn could add.

use std::net::IpAddr;

/// Per-destination interval (`icmp_ratelimit`, ms).
pub const PER_DEST_INTERVAL_MS: u64 = 1000;
/// Per-destination burst (`XRLIM_BURST_FACTOR`).
pub const PER_DEST_BURST: u64 = 6;
/// Node-wide rate (`icmp_msgs_per_sec`).
pub const GLOBAL_PER_SEC: u64 = 1000;
/// Node-wide burst (`icmp_msgs_burst`).
pub const GLOBAL_BURST: u64 = 50;

const SLOTS: usize = 1024;
const NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    dst: u128,
    used: bool,
    /// Credit in nanoseconds, at most `burst * interval`.
    tokens: u64,
    last: u64,
}

/// The limiter: one per node (the workers share it; it is touched only for errors).
#[derive(Debug)]
pub struct IcmpLimiter {
    slots: Box<[Slot]>,
    interval: u64,
    burst: u64,
    global_cost: u64,
    global_cap: u64,
    global_tokens: u64,
    global_last: Option<u64>,
}

impl Default for IcmpLimiter {
    fn default() -> Self {
        IcmpLimiter::new(
            PER_DEST_INTERVAL_MS,
            PER_DEST_BURST,
            GLOBAL_PER_SEC,
            GLOBAL_BURST,
        )
    }
}

impl IcmpLimiter {
    /// A limiter allowing `burst` errors to one destination and then one per
    /// `interval_ms`, and `global_per_sec` for the node after a burst of `global_burst`.
    pub fn new(interval_ms: u64, burst: u64, global_per_sec: u64, global_burst: u64) -> Self {
        let global_cost = NS / global_per_sec.max(1);
        IcmpLimiter {
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
            interval: interval_ms.max(1) * 1_000_000,
            burst: burst.max(1),
            global_cost,
            global_cap: global_cost * global_burst.max(1),
            global_tokens: global_cost * global_burst.max(1),
            global_last: None,
        }
    }

    /// May an ICMP error go to `dst` now? Consumes a token when it may.
    pub fn allow(&mut self, dst: IpAddr, now_ns: u64) -> bool {
        // The node-wide bucket.
        if let Some(last) = self.global_last {
            let refill = now_ns.saturating_sub(last);
            self.global_tokens = self
                .global_tokens
                .saturating_add(refill)
                .min(self.global_cap);
        }
        // A clock read that goes back (another worker's, a moment older) refills nothing.
        self.global_last = Some(self.global_last.map_or(now_ns, |l| l.max(now_ns)));
        if self.global_tokens < self.global_cost {
            return false;
        }
        // The destination's.
        let key = match dst {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        };
        let folded =
            (key as u32) ^ ((key >> 32) as u32) ^ ((key >> 64) as u32) ^ ((key >> 96) as u32);
        let i = (folded.wrapping_mul(0x9e37_79b1) >> 22) as usize % SLOTS;
        let cap = self.burst * self.interval;
        let s = &mut self.slots[i];
        if !s.used || s.dst != key {
            *s = Slot {
                dst: key,
                used: true,
                tokens: cap,
                last: now_ns,
            };
        } else {
            s.tokens = s
                .tokens
                .saturating_add(now_ns.saturating_sub(s.last))
                .min(cap);
            s.last = s.last.max(now_ns);
        }
        if s.tokens < self.interval {
            return false;
        }
        s.tokens -= self.interval;
        self.global_tokens -= self.global_cost;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0af4_0100 + n))
    }

    #[test]
    fn one_destination_gets_the_burst_then_one_a_second() {
        let mut l = IcmpLimiter::default();
        let t0 = 5_000 * MS;
        let first: usize = (0..100).filter(|_| l.allow(ip(2), t0)).count();
        assert_eq!(first, PER_DEST_BURST as usize);
        // 10 s of one packet a millisecond: one error a second.
        let later = (1..=10_000).filter(|k| l.allow(ip(2), t0 + k * MS)).count();
        assert_eq!(later, 10);
        // Another destination is not held back by the first.
        assert!(l.allow(ip(3), t0 + 10_000 * MS));
    }

    #[test]
    fn many_destinations_are_capped_by_the_node_rate() {
        let mut l = IcmpLimiter::default();
        let t0 = 1_000 * MS;
        // 100,000 errors asked for in one second, each for a fresh source: at most the
        // node's burst plus its rate.
        let sent = (0..100_000u64)
            .filter(|k| l.allow(ip(*k as u32), t0 + k * 10_000))
            .count() as u64;
        assert!(sent <= GLOBAL_BURST + GLOBAL_PER_SEC, "{sent}");
        assert!(sent >= GLOBAL_PER_SEC, "{sent}");
    }

    #[test]
    fn time_going_backwards_or_standing_still_grants_nothing_extra() {
        let mut l = IcmpLimiter::new(1000, 2, 1000, 50);
        assert!(l.allow(ip(1), 10 * NS));
        assert!(l.allow(ip(1), 10 * NS));
        assert!(!l.allow(ip(1), 10 * NS));
        assert!(!l.allow(ip(1), 5 * NS));
        assert!(!l.allow(ip(1), 10 * NS));
        assert!(l.allow(ip(1), 11 * NS));
    }
}
