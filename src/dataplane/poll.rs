//! How long a worker keeps polling after a burst before it sleeps: the decision alone,
//! without I/O, so it is unit-tested (the worker loop in [`super::worker`] does the polling).
//!
//! A sleeping worker costs a wake-up per packet that finds it asleep: an IPI and, on a VM,
//! a halt exit and a host scheduling decision, 20-100 µs on the 2-vCPU VM weft is measured
//! on, where the kernel's own vxlan path wakes nobody (it runs in the sender's system
//! call). A request/response exchange through weft finds a worker asleep at every hop. A
//! worker that keeps polling past the reply's arrival saves that wake-up, but a spin that
//! never catches anything is CPU taken from the pods.
//!
//! So the spin is bounded by what the last bursts' successors took, as the kernel's NAPI
//! busy polling bounds its own by what recent traffic did:
//! - after each burst the worker notes what the burst ended with ([`Last`]): a packet sent
//!   to a peer (what follows is the peer's reply, a round trip away) or one written to the
//!   TUN (what follows is the local pod's answer, an application wake-up away);
//! - when the next packet comes, the gap since the burst is folded into that kind's
//!   estimate: how often a packet came within the cap at all, and how long it took then;
//! - the next burst of that kind spins for twice the typical gap, between the floor and the
//!   cap, where a packet usually came within the cap, and for the floor where it did not
//!   (a ping's reply delivered to its pod, whose next request is 10 ms away).
//!
//! Idle, no burst ends, so nothing spins. A bulk burst (one that moved at least
//! `bulk_bytes` in full-size packets, such as a TSO super-packet) is followed by no spin
//! at all, and its gap is not learned: a stream's next 64 KB is worth no wake-up saved,
//! and spinning for it was measured as CPU per GB spent for nothing (docs/performance.md).
//!
//! While spinning the worker yields its CPU between polls, so a pod or a peer worker
//! woken on the same vCPU runs at once instead of waiting for the spin to end (measured:
//! without yielding, a 200 µs spin made an idle ping slower).

use std::time::{Duration, Instant};

/// How a worker spins after a burst (`--busy-poll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Spin {
    /// Sleep at once.
    Off,
    /// Always spin for the cap.
    Fixed,
    /// Spin for what recent gaps took, between the floor and the cap.
    Adaptive,
}

/// What a burst ended with: what the worker waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Last {
    /// A packet sent to a peer: its reply is a round trip away.
    Sent = 0,
    /// A packet written to the TUN: the pod's answer is a wake-up away.
    Delivered = 1,
}

/// The spin policy: its mode, floor and cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinPolicy {
    /// The mode.
    pub spin: Spin,
    /// The shortest spin of an adaptive policy (what catches replies the kernel produces
    /// within the worker's own TUN write, such as an echo reply).
    pub floor: Duration,
    /// The longest spin (`--busy-poll-us`); the fixed spin.
    pub cap: Duration,
    /// Yield the CPU between polls while spinning (`--busy-poll-yield`).
    pub yield_cpu: bool,
    /// A burst that moved at least this many inner bytes, in packets of `FULL_SIZE` (1 KB) on
    /// average, is bulk (`--busy-poll-bulk-bytes`; 0: none is): an adaptive policy sleeps
    /// after it at once and learns nothing from the gap that follows.
    pub bulk_bytes: u64,
}

/// The average packet size from which a large burst is bulk. A flood of small datagrams
/// is not: its worker is bound by packets, not bytes, and measured, it delivered 13-14 %
/// less when its bursts slept at once.
pub(crate) const FULL_SIZE: u64 = 1024;

/// What one burst moved, in inner bytes and wire packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) bytes: u64,
    pub(crate) packets: u64,
}

/// Weight of one observation in an estimate, as a shift: 1/8.
const SHIFT: u32 = 3;
/// An estimate's hit rate is in parts of this.
const ONE: u32 = 1 << 10;

/// What the gaps after one kind of burst have been.
#[derive(Debug, Clone, Copy, Default)]
struct Estimate {
    /// How often the next packet came within the cap, in parts of [`ONE`] (moving average).
    hits: u32,
    /// How long it took then, in nanoseconds (moving average).
    gap_ns: u64,
}

impl Estimate {
    fn observe(&mut self, gap: Option<Duration>) {
        self.hits -= self.hits >> SHIFT;
        if let Some(g) = gap {
            self.hits += ONE >> SHIFT;
            let g = g.as_nanos().min(u64::MAX as u128) as u64;
            self.gap_ns = self.gap_ns - (self.gap_ns >> SHIFT) + (g >> SHIFT);
        }
    }
}

/// One worker's spin state.
#[derive(Debug)]
pub(crate) struct Poller {
    policy: SpinPolicy,
    est: [Estimate; 2],
    /// The last burst's end and kind, until the next packet comes.
    pending: Option<(Instant, Last)>,
}

impl Poller {
    /// A poller that has seen nothing yet (an adaptive one spins for the floor until it
    /// has).
    pub(crate) fn new(policy: SpinPolicy) -> Poller {
        Poller {
            policy,
            est: [Estimate::default(); 2],
            pending: None,
        }
    }

    /// Whether to yield the CPU between polls while spinning.
    pub(crate) fn yields(&self) -> bool {
        self.policy.yield_cpu
    }

    /// A burst that moved `m` ended at `now` with `last`: how long to keep polling
    /// before sleeping.
    pub(crate) fn burst_ended(&mut self, now: Instant, last: Last, m: Moved) -> Duration {
        let p = &self.policy;
        let bulk = p.bulk_bytes > 0
            && m.bytes >= p.bulk_bytes
            && m.bytes >= m.packets.saturating_mul(FULL_SIZE);
        self.pending = (!bulk).then_some((now, last));
        match p.spin {
            Spin::Off => Duration::ZERO,
            Spin::Fixed => p.cap,
            Spin::Adaptive if bulk => Duration::ZERO,
            Spin::Adaptive => {
                let e = self.est[last as usize];
                if e.hits < ONE / 2 {
                    return p.floor.min(p.cap);
                }
                Duration::from_nanos(e.gap_ns.saturating_mul(2)).clamp(p.floor.min(p.cap), p.cap)
            }
        }
    }

    /// A packet came at `now` (spinning or after a sleep): the gap since the last burst
    /// goes into that burst kind's estimate.
    pub(crate) fn woke(&mut self, now: Instant) {
        if let Some((t, last)) = self.pending.take() {
            let gap = now.saturating_duration_since(t);
            let within = (gap <= self.policy.cap).then_some(gap);
            self.est[last as usize].observe(within);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    fn adaptive() -> Poller {
        Poller::new(SpinPolicy {
            spin: Spin::Adaptive,
            floor: 10 * US,
            cap: 200 * US,
            yield_cpu: true,
            bulk_bytes: 16 << 10,
        })
    }

    fn moved(bytes: u64, packets: u64) -> Moved {
        Moved { bytes, packets }
    }

    /// A ping's echo.
    fn small() -> Moved {
        moved(84, 1)
    }

    /// A TCP stream's super-packet: 64 KB in 47 segments.
    fn stream() -> Moved {
        moved(64 << 10, 47)
    }

    /// `n` bursts of `last`, each followed by a packet after `gap`.
    fn train(p: &mut Poller, t: &mut Instant, last: Last, gap: Duration, n: usize) {
        for _ in 0..n {
            p.burst_ended(*t, last, small());
            *t += gap;
            p.woke(*t);
        }
    }

    #[test]
    fn a_new_adaptive_poller_spins_for_the_floor() {
        let mut p = adaptive();
        assert_eq!(p.burst_ended(Instant::now(), Last::Sent, small()), 10 * US);
    }

    #[test]
    fn round_trips_within_the_cap_stretch_the_spin_to_twice_their_length() {
        let (mut p, mut t) = (adaptive(), Instant::now());
        train(&mut p, &mut t, Last::Sent, 60 * US, 40);
        let spin = p.burst_ended(t, Last::Sent, small());
        assert!(spin > 110 * US && spin <= 120 * US, "{spin:?}");
        // Gaps longer than half the cap: the spin stops at the cap.
        train(&mut p, &mut t, Last::Sent, 180 * US, 40);
        assert_eq!(p.burst_ended(t, Last::Sent, small()), 200 * US);
    }

    #[test]
    fn each_kind_of_burst_learns_apart() {
        // A ping: the reply follows the request within 80 µs, the next request follows the
        // delivered reply 10 ms later.
        let (mut p, mut t) = (adaptive(), Instant::now());
        for _ in 0..40 {
            train(&mut p, &mut t, Last::Sent, 80 * US, 1);
            train(
                &mut p,
                &mut t,
                Last::Delivered,
                Duration::from_millis(10),
                1,
            );
        }
        assert!(p.burst_ended(t, Last::Sent, small()) >= 150 * US);
        assert_eq!(p.burst_ended(t, Last::Delivered, small()), 10 * US);
    }

    #[test]
    fn back_to_back_bursts_keep_the_spin_at_the_floor_and_silence_brings_it_back() {
        let (mut p, mut t) = (adaptive(), Instant::now());
        train(&mut p, &mut t, Last::Delivered, 2 * US, 40);
        assert_eq!(p.burst_ended(t, Last::Delivered, small()), 10 * US);
        train(&mut p, &mut t, Last::Sent, 100 * US, 40);
        assert!(p.burst_ended(t, Last::Sent, small()) > 150 * US);
        // The peer stops answering: after a few misses the spin is the floor again.
        train(&mut p, &mut t, Last::Sent, Duration::from_secs(1), 8);
        assert_eq!(p.burst_ended(t, Last::Sent, small()), 10 * US);
    }

    #[test]
    fn bulk_sleeps_at_once_and_teaches_nothing() {
        // Round trips of 80 µs have stretched the spin after a send.
        let (mut p, mut t) = (adaptive(), Instant::now());
        train(&mut p, &mut t, Last::Sent, 80 * US, 40);
        let before = p.burst_ended(t, Last::Sent, small());
        assert!(before >= 150 * US, "{before:?}");
        // A stream's super-packets: no spin, and their 1 ms gaps are not learned.
        for _ in 0..40 {
            assert_eq!(p.burst_ended(t, Last::Sent, stream()), Duration::ZERO);
            t += Duration::from_millis(1);
            p.woke(t);
        }
        assert_eq!(p.burst_ended(t, Last::Sent, small()), before);
        // Just under the threshold is not bulk, nor a flood of small datagrams; with the
        // threshold at 0 nothing is.
        assert!(p.burst_ended(t, Last::Sent, moved((16 << 10) - 1, 11)) > Duration::ZERO);
        assert!(p.burst_ended(t, Last::Sent, moved(92 * 400, 400)) > Duration::ZERO);
        assert_eq!(
            p.burst_ended(t, Last::Sent, moved(1428 * 20, 20)),
            Duration::ZERO
        );
        p.policy.bulk_bytes = 0;
        assert_eq!(p.burst_ended(t, Last::Sent, stream()), before);
    }

    #[test]
    fn fixed_and_off_ignore_what_they_saw() {
        let mut p = adaptive();
        p.policy.spin = Spin::Fixed;
        let mut t = Instant::now();
        train(&mut p, &mut t, Last::Sent, Duration::from_secs(1), 8);
        assert_eq!(p.burst_ended(t, Last::Sent, small()), 200 * US);
        p.policy.spin = Spin::Off;
        assert_eq!(p.burst_ended(t, Last::Sent, small()), Duration::ZERO);
    }

    #[test]
    fn a_packet_without_a_burst_before_it_changes_nothing() {
        let mut p = adaptive();
        p.woke(Instant::now());
        p.woke(Instant::now());
        assert_eq!(p.burst_ended(Instant::now(), Last::Sent, small()), 10 * US);
    }
}
