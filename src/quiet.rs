//! Rate-limited logging: a condition that lasts (a route that cannot be programmed, a
//! peer skipped on every lease update, a store away) is logged when it starts or changes
//! and when it ends, not on every retry. The one helper for that, in two shapes:
//! [`Quiet`] for one condition, [`QuietSet`] for one per key (a peer's subnet).

use std::collections::BTreeSet;
use std::sync::Mutex;

/// One condition: what was last reported, if it still holds.
#[derive(Debug, Default)]
pub struct Quiet<K> {
    last: Mutex<Option<K>>,
}

impl<K: PartialEq> Quiet<K> {
    /// Nothing reported.
    pub const fn new() -> Quiet<K> {
        Quiet {
            last: Mutex::new(None),
        }
    }

    /// The condition holds as `k`: true when that is news (it began, or changed), so the
    /// caller logs it.
    pub fn report(&self, k: K) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() == Some(&k) {
            return false;
        }
        *last = Some(k);
        true
    }

    /// Whether the condition holds (was reported and has not ended).
    pub fn holds(&self) -> bool {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The condition ended: true if it had been reported, so the caller logs the recovery.
    pub fn clear(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.take().is_some()
    }
}

/// A condition per key: the keys reported and still holding.
#[derive(Debug)]
pub struct QuietSet<K: Ord> {
    last: BTreeSet<K>,
}

impl<K: Ord> Default for QuietSet<K> {
    fn default() -> QuietSet<K> {
        QuietSet {
            last: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> QuietSet<K> {
    /// True the first time `k` is seen, never again (for conditions that come and go too
    /// fast to log each time: a kind of send error on the packet path).
    pub fn first(&mut self, k: K) -> bool {
        self.last.insert(k)
    }

    /// The condition holds for exactly `now`'s keys: those of them that are news (the
    /// caller logs them); keys no longer there are forgotten, so they are news again if they
    /// come back.
    pub fn news<'a, V>(&mut self, now: impl IntoIterator<Item = (&'a K, V)>) -> Vec<(&'a K, V)>
    where
        K: 'a,
    {
        let mut fresh = Vec::new();
        let mut holding = BTreeSet::new();
        for (k, v) in now {
            if !self.last.contains(k) {
                fresh.push((k, v));
            }
            holding.insert(k.clone());
        }
        self.last = holding;
        fresh
    }

    /// As [`news`](Self::news) for the keys in `within` only: the condition holds, among
    /// them, for exactly `now`'s keys (all of which are in `within`); the other keys keep
    /// their state. What a change of a few peers needs, without the others.
    pub fn news_within<'a, V>(
        &mut self,
        within: &BTreeSet<K>,
        now: impl IntoIterator<Item = (&'a K, V)>,
    ) -> Vec<(&'a K, V)>
    where
        K: 'a,
    {
        let was: BTreeSet<K> = within.intersection(&self.last).cloned().collect();
        for k in within {
            self.last.remove(k);
        }
        let mut fresh = Vec::new();
        for (k, v) in now {
            if !was.contains(k) {
                fresh.push((k, v));
            }
            self.last.insert(k.clone());
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_is_news_when_it_begins_changes_or_ends() {
        let q = Quiet::new();
        assert!(!q.clear(), "nothing to recover from");
        assert!(q.report("refused"));
        assert!(!q.report("refused"));
        assert!(q.report("timed out"), "changed");
        assert!(q.clear());
        assert!(!q.clear());
        assert!(q.report("refused"), "a new streak");
    }

    #[test]
    fn keys_are_news_once_while_they_hold() {
        let mut s = QuietSet::default();
        assert_eq!(s.news([(&1, "a"), (&2, "b")]), [(&1, "a"), (&2, "b")]);
        assert!(s.news([(&1, "a"), (&2, "b")]).is_empty());
        assert!(s.news([(&2, "b")]).is_empty());
        assert_eq!(
            s.news([(&1, "a"), (&2, "b")]),
            [(&1, "a")],
            "1 went and came back"
        );
    }

    #[test]
    fn news_within_some_keys_leaves_the_others_as_they_were() {
        let mut s = QuietSet::default();
        s.news([(&1, "a"), (&2, "b"), (&3, "c")]);
        let within = BTreeSet::from([2, 4]);
        assert_eq!(s.news_within(&within, [(&4, "d")]), [(&4, "d")]);
        assert!(
            s.news([(&1, "a"), (&3, "c"), (&4, "d")]).is_empty(),
            "1 and 3 untouched, 2 ended, 4 begun"
        );
        let within = BTreeSet::from([1]);
        assert!(
            s.news_within(&within, [(&1, "a")]).is_empty(),
            "1 still holds"
        );
        assert_eq!(s.news([(&2, "b")]), [(&2, "b")], "2 is news again");
    }
}
