//! The peers' public addresses, counted, for the userspace dataplane's sender filter
//! (`crate::dataplane::filter`): a change of a few peers re-programs the filter only when
//! an address comes or goes, and not at all while there are more addresses than the
//! filter lists (it is lifted then, and stays so), so a change costs what it changed.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::dataplane::filter::{MAX_SENDERS, MAX_SENDERS_V6};
use crate::lease::{Peer, PeerChanges, SubnetPair};

/// A peer's public addresses that send to us (an IPv6-only peer's `PublicIP`, 0.0.0.0,
/// sends nothing).
type Addresses = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The live peers' public addresses, each with the number of peers that have it.
#[derive(Debug, Default)]
pub(crate) struct Senders {
    of: BTreeMap<SubnetPair, Addresses>,
    v4: BTreeMap<Ipv4Addr, usize>,
    v6: BTreeMap<Ipv6Addr, usize>,
}

impl Senders {
    /// Exactly `peers`' addresses.
    pub(crate) fn reset(&mut self, peers: &[Peer]) {
        *self = Senders::default();
        for p in peers {
            self.put(p);
        }
    }

    /// Applies `changes`: whether the filter must be programmed again (an address came or
    /// went, and the filter lists them, or did before).
    pub(crate) fn patch(&mut self, changes: &PeerChanges) -> bool {
        let before = self.listable();
        let mut moved = (false, false);
        let mut or = |(a, b): (bool, bool)| moved = (moved.0 || a, moved.1 || b);
        for key in &changes.gone {
            or(self.remove(key));
        }
        for p in &changes.put {
            if self.of.get(&p.key()) == Some(&addresses(p)) {
                continue;
            }
            or(self.remove(&p.key()));
            or(self.put(p));
        }
        let after = self.listable();
        (moved.0 && (before.0 || after.0)) || (moved.1 && (before.1 || after.1))
    }

    /// The distinct IPv4 senders.
    pub(crate) fn v4(&self) -> Vec<Ipv4Addr> {
        self.v4.keys().copied().collect()
    }

    /// The distinct IPv6 senders.
    pub(crate) fn v6(&self) -> Vec<Ipv6Addr> {
        self.v6.keys().copied().collect()
    }

    /// Whether the filter lists each family's senders (IPv4, IPv6); past its limit, a
    /// family's filter is lifted, and a change among them changes nothing.
    fn listable(&self) -> (bool, bool) {
        (
            self.v4.len() <= MAX_SENDERS,
            self.v6.len() <= MAX_SENDERS_V6,
        )
    }

    /// Counts `p`'s addresses: whether one is new, per family.
    fn put(&mut self, p: &Peer) -> (bool, bool) {
        let (v4, v6) = addresses(p);
        self.of.insert(p.key(), (v4, v6));
        let new4 = v4.is_some_and(|ip| count_in(&mut self.v4, ip));
        let new6 = v6.is_some_and(|ip| count_in(&mut self.v6, ip));
        (new4, new6)
    }

    /// Forgets the peer at `key`: whether one of its addresses is no longer anyone's,
    /// per family.
    fn remove(&mut self, key: &SubnetPair) -> (bool, bool) {
        let Some((v4, v6)) = self.of.remove(key) else {
            return (false, false);
        };
        let gone4 = v4.is_some_and(|ip| count_out(&mut self.v4, ip));
        let gone6 = v6.is_some_and(|ip| count_out(&mut self.v6, ip));
        (gone4, gone6)
    }
}

fn addresses(p: &Peer) -> Addresses {
    let v4 = Some(p.public_ip).filter(|ip| !ip.is_unspecified());
    (v4, p.v6.map(|v| v.public_ip))
}

/// One more peer with `ip`: whether it is the first.
fn count_in<A: Ord>(counts: &mut BTreeMap<A, usize>, ip: A) -> bool {
    let n = counts.entry(ip).or_default();
    *n += 1;
    *n == 1
}

/// One peer fewer with `ip`: whether it was the last.
fn count_out<A: Ord>(counts: &mut BTreeMap<A, usize>, ip: A) -> bool {
    match counts.get_mut(&ip) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            counts.remove(&ip);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::table::BackendKind;
    use crate::testkit::peer;

    fn vxlan(i: u8) -> Peer {
        peer(i, BackendKind::Vxlan, 1)
    }

    fn put(p: Vec<Peer>) -> PeerChanges {
        PeerChanges {
            put: p,
            gone: vec![],
        }
    }

    #[test]
    fn the_filter_is_programmed_again_only_when_an_address_comes_or_goes() {
        let mut s = Senders::default();
        let mut v4_only = vxlan(2);
        v4_only.v6 = None;
        s.reset(&[vxlan(1), v4_only]);
        assert_eq!((s.v4().len(), s.v6().len()), (2, 1));
        assert!(!s.patch(&put(vec![vxlan(1)])), "the same peer again");
        let mut moved = vxlan(1);
        moved.public_ip = Ipv4Addr::new(192, 0, 2, 2);
        assert!(s.patch(&put(vec![moved])), "192.0.2.1 is no one's now");
        assert_eq!(s.v4(), [Ipv4Addr::new(192, 0, 2, 2)]);
        let gone = PeerChanges {
            put: vec![],
            gone: vec![vxlan(2).key()],
        };
        assert!(!s.patch(&gone), "node 1 still sends from 192.0.2.2");
        assert!(s.patch(&put(vec![vxlan(3)])));
        assert_eq!(s.v4().len(), 2);
        assert_eq!(s.v6().len(), 2, "node 1's and node 3's");
    }

    #[test]
    fn past_what_the_filter_lists_a_change_programs_nothing() {
        let mut s = Senders::default();
        let many: Vec<Peer> = (0..=255u8)
            .flat_map(|i| {
                (0..2u8).map(move |j| {
                    let mut p = vxlan(i);
                    p.subnet = ipnet::Ipv4Net::new(Ipv4Addr::new(10, j, i, 0), 24).ok();
                    p.public_ip = Ipv4Addr::new(198, 51, j, i);
                    p.v6 = None;
                    p
                })
            })
            .collect();
        s.reset(&many);
        assert!(s.v4().len() > MAX_SENDERS);
        let mut one = vxlan(7);
        one.v6 = None;
        one.public_ip = Ipv4Addr::new(203, 0, 113, 7);
        assert!(!s.patch(&put(vec![one])), "IPv4's filter is lifted");
        one.v6 = vxlan(7).v6;
        assert!(s.patch(&put(vec![one])), "IPv6's lists its first sender");
        s.v6 = (0..=MAX_SENDERS_V6 as u16)
            .map(|i| (Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i), 1))
            .collect();
        let mut other = vxlan(8);
        other.public_ip = Ipv4Addr::new(203, 0, 113, 8);
        assert!(!s.patch(&put(vec![other])), "both families past the limits");
    }
}
