//! Changing a snapshot in place, peer by peer: what [`LeaseTable::apply`] does to a copy
//! of the current snapshot before it publishes it, and what a full build does from empty.
//!
//! Where several peers claim one address (two leases with one public IP, or one IPv6
//! subnet), the peer with the lowest key ([`Peer::key`]) answers for it, as it always
//! has. The writer keeps those claims in order, so a removal hands the address to the
//! next claimant in O(log n) instead of a scan.
//!
//! [`LeaseTable::apply`]: super::LeaseTable::apply

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{Index, Peer, PeerChanges, Snapshot, NO_PEER};
use crate::lease::SubnetPair;

/// The writers' side of a table: where each peer sits, the free slots, and every claim
/// on a shared address in key order.
#[derive(Debug, Default)]
pub(super) struct Writer {
    slots: HashMap<SubnetPair, u32>,
    free: Vec<u32>,
    by_ip: BTreeSet<(Ipv4Addr, SubnetPair)>,
    by_ip6: BTreeSet<(Ipv6Addr, SubnetPair)>,
    by_subnet6: BTreeSet<(Ipv6Net, SubnetPair)>,
}

impl Writer {
    /// The slot of the lowest-keyed claimant of `a` in `claims`.
    fn first<A: Ord + Copy>(&self, claims: &BTreeSet<(A, SubnetPair)>, a: A) -> Option<u32> {
        let (_, k) = claims
            .range((a, (None, None))..)
            .next()
            .filter(|(x, _)| *x == a)?;
        self.slots.get(k).copied()
    }
}

/// Points `map[key]` at `slot`, or removes it when there is none.
fn point<K: std::hash::Hash + Eq, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, u32, S>,
    key: K,
    slot: Option<u32>,
) {
    match slot {
        Some(s) => {
            map.insert(key, s);
        }
        None => {
            map.remove(&key);
        }
    }
}

/// The place of prefix length `len`'s map in `maps` (longest first), added empty if
/// there was none.
fn map_for<M: Default>(maps: &mut Vec<(u8, M)>, len: u8) -> usize {
    match maps.iter().position(|(l, _)| *l <= len) {
        Some(i) if maps[i].0 == len => i,
        Some(i) => {
            maps.insert(i, (len, M::default()));
            i
        }
        None => {
            maps.push((len, M::default()));
            maps.len() - 1
        }
    }
}

impl Snapshot {
    /// Applies `ch` (gone first, then put; a put replaces the peer of its key).
    pub(super) fn patch(&mut self, w: &mut Writer, ch: &PeerChanges) {
        for k in &ch.gone {
            self.take(w, *k);
        }
        for p in &ch.put {
            self.take(w, p.key());
            self.put(w, *p);
        }
    }

    /// Removes the peer of key `k`, if any, and hands its addresses to the next claimant.
    fn take(&mut self, w: &mut Writer, k: SubnetPair) {
        let Some(slot) = w.slots.remove(&k) else {
            return;
        };
        let Some(p) = self.peers.get(slot as usize).copied() else {
            return;
        };
        self.live[slot as usize] = false;
        w.free.push(slot);
        self.len -= 1;
        if let Some(sn) = p.subnet {
            self.index.unset(sn, slot);
            w.by_ip.remove(&(p.public_ip, k));
            let next = w.first(&w.by_ip, p.public_ip);
            point(&mut self.by_public_ip, u32::from(p.public_ip), next);
        }
        if let Some(v6) = p.v6 {
            w.by_subnet6.remove(&(v6.subnet, k));
            let next = w.first(&w.by_subnet6, v6.subnet);
            self.point6(v6.subnet, next);
            w.by_ip6.remove(&(v6.public_ip, k));
            let next = w.first(&w.by_ip6, v6.public_ip);
            point(&mut self.by_public_ipv6, u128::from(v6.public_ip), next);
        }
    }

    /// Places `p` (whose key holds no peer) in a free slot and indexes it.
    fn put(&mut self, w: &mut Writer, p: Peer) {
        let k = p.key();
        let slot = w.free.pop().unwrap_or_else(|| {
            self.peers.push(p);
            self.live.push(true);
            (self.peers.len() - 1) as u32
        });
        self.peers[slot as usize] = p;
        self.live[slot as usize] = true;
        self.len += 1;
        w.slots.insert(k, slot);
        if let Some(sn) = p.subnet {
            if !self.index.set(sn, slot) {
                // Another prefix length, or outside the network: index anew (rare).
                self.index = Self::index_of(self.network, &self.peers, &self.live);
            }
            w.by_ip.insert((p.public_ip, k));
            let first = w.first(&w.by_ip, p.public_ip);
            point(&mut self.by_public_ip, u32::from(p.public_ip), first);
        }
        if let Some(v6) = p.v6 {
            w.by_subnet6.insert((v6.subnet, k));
            let first = w.first(&w.by_subnet6, v6.subnet);
            self.point6(v6.subnet, first);
            w.by_ip6.insert((v6.public_ip, k));
            let first = w.first(&w.by_ip6, v6.public_ip);
            point(&mut self.by_public_ipv6, u128::from(v6.public_ip), first);
        }
    }

    /// Points IPv6 `subnet` at `slot` (or at nothing), in the map of its prefix length.
    fn point6(&mut self, subnet: Ipv6Net, slot: Option<u32>) {
        let at = map_for(&mut self.index6, subnet.prefix_len());
        point(&mut self.index6[at].1, u128::from(subnet.network()), slot);
        if self.index6[at].1.is_empty() {
            self.index6.remove(at);
        }
    }
}

impl Index {
    /// Points IPv4 `sn` at `slot`; false when the flat array cannot hold it (another
    /// prefix length, or outside the network).
    pub(super) fn set(&mut self, sn: Ipv4Net, slot: u32) -> bool {
        match self {
            Index::Direct { .. } => match self.direct_slot(sn) {
                Some(at) => {
                    *at = slot;
                    true
                }
                None => false,
            },
            Index::ByLen(maps) => {
                let at = map_for(maps, sn.prefix_len());
                maps[at].1.insert(u32::from(sn.network()), slot);
                true
            }
        }
    }

    /// Clears IPv4 `sn` if it points at `slot`.
    fn unset(&mut self, sn: Ipv4Net, slot: u32) {
        match self {
            Index::Direct { .. } => {
                if let Some(at) = self.direct_slot(sn).filter(|at| **at == slot) {
                    *at = NO_PEER;
                }
            }
            Index::ByLen(maps) => {
                let key = u32::from(sn.network());
                if let Some((_, m)) = maps.iter_mut().find(|(l, _)| *l == sn.prefix_len()) {
                    if m.get(&key) == Some(&slot) {
                        m.remove(&key);
                    }
                }
            }
        }
    }

    /// The flat array's entry for `sn`, if `sn` has its prefix length inside its network.
    fn direct_slot(&mut self, sn: Ipv4Net) -> Option<&mut u32> {
        let Index::Direct {
            base,
            net_mask,
            shift,
            slots,
        } = self
        else {
            return None;
        };
        let a = u32::from(sn.network());
        if u32::from(sn.prefix_len()) + *shift != 32 || a & *net_mask != *base {
            return None;
        }
        slots.get_mut((a - *base).checked_shr(*shift).unwrap_or(0) as usize)
    }
}
