//! The watch machinery the etcd and kube stores share: a cache their watch task keeps
//! current, what the control loop waits on, whether the server answers, and when to say
//! so. Each store keeps only its API's parts (what it lists and watches, how an event
//! changes its cache).
//!
//! Rules, the same for both stores:
//! - the cache keeps the last state seen while the server is away, so the dataplane
//!   forwards on the last leases;
//! - an outage is logged once when it starts (with how many entries the dataplane keeps)
//!   and once when it ends, not on every retry; retries come every [`RETRY`];
//! - before the first listing arrives the store counts as reachable (nothing is kept
//!   yet, so there is no outage to measure); after it, only while the server answers;
//! - every change names the cache keys it touched, kept in a bounded log, so a reader can
//!   ask what changed since the generation it last read ([`Watch::changed_since`]) and
//!   read only those entries: a change costs the reader what it changed, not the size of
//!   the cluster. A listing, or a log overflow, sends readers back to a full read.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::StoreError;
use crate::quiet::Quiet;

/// How long a watch task waits before it tries again after a failure (as flanneld's
/// kube watch; its etcd watch retried every second too).
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// The changes the log keeps; a reader further behind reads everything again.
const LOG_LEN: usize = 4096;

/// A cache a watch task keeps: how many entries it holds, for the outage message.
pub(crate) trait Cache: Send + 'static {
    /// The entries the dataplane would keep forwarding on.
    fn len(&self) -> usize;
}

struct State<C> {
    cache: C,
    /// Bumped on every change a waiter must see.
    generation: u64,
    /// False while the server cannot be reached.
    online: bool,
    /// True once the first listing arrived.
    synced: bool,
    /// The keys changed, with the generation each change made, oldest first.
    log: VecDeque<(u64, String)>,
    /// The generation the log starts after: a reader at an older one reads everything.
    log_from: u64,
}

/// The shared state of one store's watch.
pub(crate) struct Watch<C> {
    state: Mutex<State<C>>,
    changed: Condvar,
    /// An outage logged and its end not yet.
    outage: Quiet<()>,
    /// The server, for messages ("etcd at http://...").
    server: String,
    /// What the cache holds, for messages ("lease(s)").
    noun: &'static str,
}

impl<C: Cache> Watch<C> {
    /// A watch of `server` starting from `cache`, not yet synced.
    pub(crate) fn new(cache: C, server: String, noun: &'static str) -> Arc<Watch<C>> {
        Arc::new(Watch {
            state: Mutex::new(State {
                cache,
                generation: 0,
                online: false,
                synced: false,
                log: VecDeque::new(),
                log_from: 0,
            }),
            changed: Condvar::new(),
            outage: Quiet::new(),
            server,
            noun,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the cache.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&C) -> R) -> R {
        f(&self.lock().cache)
    }

    /// The cache and its generation, once the first listing arrived.
    pub(crate) fn synced<R>(&self, f: impl FnOnce(&C) -> R) -> Option<(R, u64)> {
        let s = self.lock();
        s.synced.then(|| (f(&s.cache), s.generation))
    }

    /// The cache's generation, once the first listing arrived: it changes with every
    /// change a waiter must see.
    pub(crate) fn generation(&self) -> Option<u64> {
        let s = self.lock();
        s.synced.then_some(s.generation)
    }

    /// The keys changed after generation `since`, each once, and the generation they
    /// bring the reader to, with `f` applied to the cache under the same lock (so the keys
    /// and the entries read agree). `None` when the reader must read everything: not
    /// synced, or `since` older than the log (a listing came, or the log overflowed).
    pub(crate) fn changed_since<R>(
        &self,
        since: u64,
        f: impl FnOnce(&C, &BTreeSet<&str>) -> R,
    ) -> Option<(R, u64)> {
        let s = self.lock();
        if !s.synced || since < s.log_from || since > s.generation {
            return None;
        }
        let keys: BTreeSet<&str> = (s.log.iter().rev())
            .take_while(|(g, _)| *g > since)
            .map(|(_, k)| k.as_str())
            .collect();
        Some((f(&s.cache, &keys), s.generation))
    }

    /// Changes the cache from an answer of the server (which is therefore reachable);
    /// `f` returns the keys whose entries changed (none: nothing a waiter must see).
    pub(crate) fn update(&self, f: impl FnOnce(&mut C) -> Vec<String>) {
        let mut s = self.lock();
        self.back_online(&mut s);
        let keys = f(&mut s.cache);
        self.changed(&mut s, keys);
    }

    /// Changes the cache from one of our own writes (the watch will confirm it), which
    /// says nothing about whether the watch reaches the server.
    pub(crate) fn record(&self, f: impl FnOnce(&mut C) -> Vec<String>) {
        let mut s = self.lock();
        let keys = f(&mut s.cache);
        self.changed(&mut s, keys);
    }

    /// One generation for the changed `keys`, logged, waiters woken.
    fn changed(&self, s: &mut State<C>, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        s.generation += 1;
        for k in keys {
            if s.log.len() == LOG_LEN {
                if let Some((g, _)) = s.log.pop_front() {
                    // Readers at g - 1 or older would miss this change.
                    s.log_from = s.log_from.max(g);
                }
            }
            s.log.push_back((s.generation, k));
        }
        self.changed.notify_all();
    }

    /// Replaces the cache from a full listing: the watch is synced from here on, and
    /// every reader reads everything once.
    pub(crate) fn listed(&self, f: impl FnOnce(&mut C) -> bool) {
        let mut s = self.lock();
        self.back_online(&mut s);
        let first = !s.synced;
        s.synced = true;
        if f(&mut s.cache) || first {
            s.generation += 1;
            s.log.clear();
            s.log_from = s.generation;
            self.changed.notify_all();
        }
    }

    fn back_online(&self, s: &mut State<C>) {
        s.online = true;
        if self.outage.clear() {
            tracing::info!("{} reachable again; watching", self.server);
        }
    }

    /// The server did not answer (`why`): logged once per outage.
    pub(crate) fn offline(&self, why: &str) {
        let mut s = self.lock();
        if self.outage.report(()) {
            tracing::warn!(
                "{} unreachable ({why}); forwarding on the last {} {} and retrying",
                self.server,
                s.cache.len(),
                self.noun
            );
        }
        s.online = false;
    }

    /// Whether the server answers (true before the first listing failed: see the module).
    pub(crate) fn reachable(&self) -> bool {
        let s = self.lock();
        !s.synced || s.online
    }

    /// Waits up to `timeout` for a generation other than `seen`.
    pub(crate) fn wait_change(&self, seen: u64, timeout: Duration) {
        let s = self.lock();
        if s.generation != seen {
            return;
        }
        let _ = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.generation == seen);
    }
}

/// A store's client runtime: one worker thread, named, that drops every capability (the
/// client only talks to its server).
pub(crate) fn runtime(name: &str) -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(crate::privilege::drop_all_in_this_thread)
        .enable_all()
        .build()
        .map_err(|e| StoreError::Remote {
            what: format!("{name} runtime"),
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Cache for Vec<u32> {
        fn len(&self) -> usize {
            Vec::len(self)
        }
    }

    #[test]
    fn waiters_see_changes_and_reachability_follows_answers() {
        let w = Watch::new(Vec::<u32>::new(), "test".into(), "entries");
        assert!(w.reachable(), "before the first listing nothing is kept");
        assert!(w.synced(|c| c.len()).is_none());
        w.offline("refused");
        assert!(w.reachable(), "still: nothing listed yet");
        w.listed(|c| {
            c.push(1);
            true
        });
        let (n, g) = w.synced(|c| c.len()).unwrap();
        assert_eq!(n, 1);
        w.offline("refused");
        assert!(!w.reachable());
        w.read(|c| assert_eq!(c, &[1]));
        // An answer that changes nothing: reachable again, and waiters are not woken.
        w.update(|_| Vec::new());
        assert!(w.reachable());
        assert_eq!(w.synced(|_| ()).unwrap().1, g);
        w.wait_change(g, Duration::from_millis(20));
        let w2 = w.clone();
        let h = std::thread::spawn(move || w2.wait_change(g, Duration::from_secs(60)));
        w.update(|c| {
            c.push(2);
            vec!["2".into()]
        });
        h.join().unwrap();
        assert_eq!(w.synced(|c| c.clone()).unwrap(), (vec![1, 2], g + 1));
    }

    fn keys_since(w: &Watch<Vec<u32>>, since: u64) -> Option<(Vec<String>, u64)> {
        w.changed_since(since, |_, keys| {
            keys.iter().map(|k| k.to_string()).collect()
        })
    }

    #[test]
    fn readers_get_the_keys_changed_since_their_read_until_a_listing_or_overflow() {
        let w = Watch::new(Vec::<u32>::new(), "test".into(), "entries");
        assert_eq!(keys_since(&w, 0), None, "not synced: read everything");
        w.listed(|_| true);
        let g = w.generation().unwrap();
        assert_eq!(keys_since(&w, g), Some((vec![], g)));
        assert_eq!(keys_since(&w, g - 1), None, "from before the listing");
        w.update(|_| vec!["b".into(), "a".into()]);
        w.record(|_| vec!["b".into()]);
        w.update(|_| vec![]);
        assert_eq!(
            keys_since(&w, g),
            Some((vec!["a".into(), "b".into()], g + 2))
        );
        assert_eq!(keys_since(&w, g + 1), Some((vec!["b".into()], g + 2)));
        assert_eq!(keys_since(&w, g + 3), None, "a generation never given");
        // A second listing sends every reader back to a full read.
        w.listed(|_| true);
        assert_eq!(keys_since(&w, g + 2), None);
        let g = w.generation().unwrap();
        // Overflow: the reader that would miss a key reads everything.
        for i in 0..LOG_LEN + 1 {
            w.update(|_| vec![format!("k{i}")]);
        }
        assert_eq!(keys_since(&w, g), None);
        let (keys, now) = keys_since(&w, g + 1).unwrap();
        assert_eq!((keys.len(), now), (LOG_LEN, g + LOG_LEN as u64 + 1));
    }
}
