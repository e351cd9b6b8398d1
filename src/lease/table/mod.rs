//! The lock-free lease table: subnet -> peer, read by every packet.
//!
//! Readers load an immutable [`Snapshot`] through `arc-swap` (a few atomic operations, no
//! lock, no allocation); a writer patches a copy of the current snapshot (the changed
//! peers' index entries, see `patch`) and publishes it with one atomic swap, so a reader
//! sees either the old table or the new one, never a mix.
//!
//! Lookup is O(1) in the usual case, where every lease has the same prefix length (flannel
//! gives each node one `SubnetLen` subnet): the destination's offset in the cluster
//! network, shifted by the host bits, indexes a flat array. Otherwise (mixed lengths, after
//! a SubnetLen change, or reservations of other sizes) it is a longest-prefix match over
//! one hash map per distinct prefix length, longest first.

mod patch;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{backend_type, Lease, LeaseError, SubnetPair};
use crate::wire::MacAddr;
use patch::Writer;

/// The largest direct-index array (in slots) before the table falls back to hash maps.
const MAX_DIRECT_SLOTS: usize = 1 << 20;
const NO_PEER: u32 = u32::MAX;

/// The backend a peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// VXLAN (kernel or weft).
    Vxlan,
    /// flannel's udp format.
    Udp,
    /// flannel's host-gw: reached by a plain route via its public IP.
    HostGw,
    /// flannel's wireguard: reached through an encrypted tunnel to its public key.
    Wireguard,
    /// Anything else (ipip, ...): weft cannot reach it.
    Other,
}

/// What the packet path needs to know about one remote subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The node's IPv4 pod subnet (`None`: an IPv6-only node, whose `public_ip`,
    /// `vni` and `vtep_mac` are then flanneld's zeros).
    pub subnet: Option<Ipv4Net>,
    /// The node's underlay address.
    pub public_ip: Ipv4Addr,
    /// Its backend.
    pub backend: BackendKind,
    /// Its VNI (vxlan only; 0 otherwise).
    pub vni: u32,
    /// Its VTEP MAC (vxlan only; zero otherwise).
    pub vtep_mac: MacAddr,
    /// It takes a TSO super-packet encapsulated once, as one unsegmented datagram of up
    /// to 64 KB ([`LeaseAttrs::takes_super_datagrams`]: vxlan peers and weft's udp
    /// nodes). False for flanneld's udp proxy, which gets segments: the one flag the
    /// packet path reads to choose.
    ///
    /// [`LeaseAttrs::takes_super_datagrams`]: super::LeaseAttrs::takes_super_datagrams
    pub super_datagrams: bool,
    /// Its IPv6 side, in a dual-stack cluster: set when its lease holds an IPv6 subnet and
    /// a `PublicIPv6` (and, for vxlan, a well-formed `BackendV6Data`).
    pub v6: Option<PeerV6>,
    /// Its WireGuard side (wireguard only): its public key and ports.
    pub wg: Option<WgPeer>,
}

/// A wireguard peer's key and ports, as its lease publishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgPeer {
    /// Its public key (one for both families, as flanneld's).
    pub public_key: crate::wg::Key,
    /// Its IPv4 port (`BackendData.Port`); `None` when absent or 0: use our own.
    pub port: Option<u16>,
    /// Its IPv6 port (`BackendV6Data.Port`); `None` when absent or 0.
    pub port_v6: Option<u16>,
}

impl WgPeer {
    /// The wireguard side of `lease`: the key from `BackendData` when the lease has an
    /// IPv4 subnet, else from `BackendV6Data` (flanneld reads them in that order); a lease
    /// without a usable key is refused by name.
    fn from_lease(lease: &Lease) -> Result<WgPeer, LeaseError> {
        let a = &lease.attrs;
        let v4 = lease.subnet.map(|_| a.wireguard_data(false)).transpose()?;
        let v6 = match (lease.ipv6_subnet, &a.backend_v6_data) {
            (Some(_), d) if !d.is_null() => Some(a.wireguard_data(true)?),
            _ => None,
        };
        let public_key = match (v4, v6) {
            (Some(d), _) | (None, Some(d)) => d.public_key,
            (None, None) => {
                return Err(LeaseError::BackendData(format!(
                    "wireguard lease {} carries no public key (BackendData, BackendV6Data)",
                    lease.key()
                )))
            }
        };
        Ok(WgPeer {
            public_key,
            port: v4.and_then(|d| d.port),
            port_v6: v6.and_then(|d| d.port),
        })
    }
}

/// The IPv6 side of a peer: its IPv6 pod subnet, reached over the IPv6 underlay (flanneld
/// sends IPv6 pod traffic over IPv6 and IPv4 over IPv4), with the VTEP of its
/// `flannel-v6.<VNI>` device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerV6 {
    /// Its IPv6 pod subnet.
    pub subnet: Ipv6Net,
    /// Its IPv6 underlay address (`PublicIPv6`).
    pub public_ip: Ipv6Addr,
    /// The VNI of its IPv6 device (vxlan only; 0 otherwise).
    pub vni: u32,
    /// The MAC of its IPv6 device (`BackendV6Data.VtepMAC`; vxlan only).
    pub vtep_mac: MacAddr,
}

impl Peer {
    /// The peer a lease describes. A vxlan lease must carry valid `BackendData`; a lease
    /// with no BackendType is what flanneld's udp backend writes, so it is a udp peer, one
    /// that takes super-datagrams only if its BackendData says so (weft's).
    ///
    /// An IPv6-only lease (flanneld's `0.0.0.0-0&fc00::-64`, without `BackendData`) is a
    /// peer without an IPv4 side; a lease with no side at all (no IPv4 subnet, and no
    /// IPv6 subnet with a `PublicIPv6`) is refused.
    pub fn from_lease(lease: &Lease) -> Result<Peer, LeaseError> {
        let a = &lease.attrs;
        let backend = match a.backend_type.as_str() {
            backend_type::VXLAN => BackendKind::Vxlan,
            "" | backend_type::UDP => BackendKind::Udp,
            backend_type::HOST_GW => BackendKind::HostGw,
            backend_type::WIREGUARD => BackendKind::Wireguard,
            _ => BackendKind::Other,
        };
        // The IPv4 device's VNI and MAC, where the lease has an IPv4 side.
        let (vni, vtep_mac) = match (backend, lease.subnet) {
            (BackendKind::Vxlan, Some(_)) => {
                let d = a.vxlan_data()?;
                (d.vni, d.vtep_mac)
            }
            _ => (0, MacAddr::default()),
        };
        let v6 = PeerV6::from_lease(lease, backend)?;
        if lease.subnet.is_none() && v6.is_none() {
            return Err(LeaseError::NoSide(lease.key()));
        }
        let wg = match backend {
            BackendKind::Wireguard => Some(WgPeer::from_lease(lease)?),
            _ => None,
        };
        Ok(Peer {
            subnet: lease.subnet,
            public_ip: a.public_ip,
            backend,
            vni,
            vtep_mac,
            super_datagrams: a.takes_super_datagrams(),
            v6,
            wg,
        })
    }

    /// The peer's place in the table: its IPv4 subnet, or an IPv6-only peer's IPv6 one
    /// (so a node is one peer whichever key form its lease has).
    pub fn key(&self) -> SubnetPair {
        peer_key((self.subnet, self.v6.map(|v| v.subnet)))
    }
}

/// The table place of a lease with subnets `pair` (IPv4, IPv6): its IPv4 subnet, or an
/// IPv6-only lease's IPv6 one, as [`Peer::key`].
pub fn peer_key(pair: SubnetPair) -> SubnetPair {
    match pair {
        (Some(sn), _) => (Some(sn), None),
        (None, v6) => (None, v6),
    }
}

/// Peers added or changed, and the places ([`Peer::key`]) of peers gone: one change of
/// the live set, applied to the table without reading the rest of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// Peers added or changed.
    pub put: Vec<Peer>,
    /// The keys of peers gone.
    pub gone: Vec<SubnetPair>,
}

impl PeerChanges {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.gone.is_empty()
    }
}

impl PeerV6 {
    /// The IPv6 side of `lease`, if it has one: an IPv6 subnet and a `PublicIPv6`, and for
    /// a vxlan node its `BackendV6Data` (which must then be well formed).
    fn from_lease(lease: &Lease, backend: BackendKind) -> Result<Option<PeerV6>, LeaseError> {
        let (Some(subnet), Some(public_ip)) = (lease.ipv6_subnet, lease.attrs.public_ipv6) else {
            return Ok(None);
        };
        let (vni, vtep_mac) = if backend == BackendKind::Vxlan {
            let d = lease.attrs.vxlan_v6_data()?;
            (d.vni, d.vtep_mac)
        } else {
            (0, MacAddr::default())
        };
        Ok(Some(PeerV6 {
            subnet,
            public_ip,
            vni,
            vtep_mac,
        }))
    }
}

/// A multiply-shift hasher for u32 keys: the keys are masked addresses, not attacker-chosen
/// strings in a way that matters (the set of keys is the lease set, written by nodes).
#[derive(Default)]
struct U32Hasher(u64);

impl Hasher for U32Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16 ^ v as u64;
    }
    fn write_u128(&mut self, v: u128) {
        let x = (v as u64) ^ ((v >> 64) as u64).rotate_left(29);
        self.0 = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16 ^ x;
    }
}

type U32Map = HashMap<u32, u32, BuildHasherDefault<U32Hasher>>;
/// IPv6 keys (masked subnets, public addresses) -> peer index.
type U128Map = HashMap<u128, u32, BuildHasherDefault<U32Hasher>>;

#[derive(Debug, Clone)]
enum Index {
    /// Every peer has prefix length `len` inside `network`: slot = offset >> (32 - len).
    Direct {
        base: u32,
        net_mask: u32,
        shift: u32,
        slots: Box<[u32]>,
    },
    /// Longest-prefix match: (prefix length, masked address -> peer), longest first.
    ByLen(Vec<(u8, U32Map)>),
}

/// One published, immutable version of the table.
///
/// Peers sit in slots that keep their place while they live, so a change of the live set
/// is a patch of a copy of the previous snapshot ([`LeaseTable::apply`]): a few index
/// entries per changed peer and one copy of the flat arrays, never a rebuild of the
/// whole set.
#[derive(Debug, Clone)]
pub struct Snapshot {
    generation: u64,
    network: Ipv4Net,
    /// Peers by slot. A slot a removal freed keeps its old peer, which no index points
    /// at, until a put takes it again: the packet path reads a slot with one bounds check,
    /// as from a plain array.
    peers: Vec<Peer>,
    /// Which slots hold a live peer (for [`Snapshot::peers`]; lookups never need it).
    live: Vec<bool>,
    len: usize,
    index: Index,
    by_public_ip: U32Map,
    /// The peers' IPv6 subnets: (prefix length, masked address -> peer), longest first
    /// (flannel gives every node one IPv6SubnetLen, so usually one map).
    index6: Vec<(u8, U128Map)>,
    by_public_ipv6: U128Map,
}

impl Snapshot {
    /// Builds a snapshot of `peers` for a cluster `network`. When two peers have the same
    /// key ([`Peer::key`]) the later one wins.
    pub fn build(
        network: Ipv4Net,
        peers: impl IntoIterator<Item = Peer>,
        generation: u64,
    ) -> Snapshot {
        Self::build_with(&mut Writer::default(), network, peers, generation)
    }

    /// [`Snapshot::build`], with the writer's side kept in `w` (which starts empty).
    fn build_with(
        w: &mut Writer,
        network: Ipv4Net,
        peers: impl IntoIterator<Item = Peer>,
        generation: u64,
    ) -> Snapshot {
        let mut s = Snapshot {
            generation,
            network,
            peers: Vec::new(),
            live: Vec::new(),
            len: 0,
            index: Self::index_of(network, &[], &[]),
            by_public_ip: U32Map::default(),
            index6: Vec::new(),
            by_public_ipv6: U128Map::default(),
        };
        let put = peers.into_iter().collect();
        s.patch(w, &PeerChanges { put, gone: vec![] });
        s
    }

    /// The IPv4 index over the `live` ones of `peers` (by slot): the flat array when
    /// every IPv4 subnet has one prefix length inside `network`, else one map per length.
    fn index_of(network: Ipv4Net, peers: &[Peer], live: &[bool]) -> Index {
        let v4: Vec<(Ipv4Net, u32)> = (peers.iter().zip(live).enumerate())
            .filter(|(_, (_, live))| **live)
            .filter_map(|(i, (p, _))| Some((p.subnet?, i as u32)))
            .collect();
        Self::direct_index(network, &v4).unwrap_or_else(|| {
            let mut lens: BTreeMap<u8, U32Map> = BTreeMap::new();
            for &(sn, i) in &v4 {
                lens.entry(sn.prefix_len())
                    .or_default()
                    .insert(u32::from(sn.network()), i);
            }
            Index::ByLen(lens.into_iter().rev().collect())
        })
    }

    #[inline]
    fn at(&self, slot: u32) -> Option<&Peer> {
        self.peers.get(slot as usize)
    }

    /// The peer whose IPv6 subnet holds `dst` (longest prefix wins).
    #[inline]
    pub fn lookup6(&self, dst: Ipv6Addr) -> Option<&Peer> {
        let d = u128::from(dst);
        self.index6.iter().find_map(|(len, m)| {
            let mask = u128::MAX.checked_shl(128 - *len as u32).unwrap_or(0);
            m.get(&(d & mask)).and_then(|&i| self.at(i))
        })
    }

    /// A peer whose lease carries `public_ip` as its `PublicIPv6` (the one with the
    /// lowest key, if several).
    #[inline]
    pub fn by_public_ipv6(&self, public_ip: Ipv6Addr) -> Option<&Peer> {
        self.at(*self.by_public_ipv6.get(&u128::from(public_ip))?)
    }

    /// The flat array over `v4` (IPv4 subnets and their peers' slots), where every one
    /// has the same prefix length inside `network`.
    fn direct_index(network: Ipv4Net, v4: &[(Ipv4Net, u32)]) -> Option<Index> {
        let len = v4
            .first()
            .map_or(network.prefix_len().clamp(24, 32), |(sn, _)| {
                sn.prefix_len()
            });
        if len < network.prefix_len() {
            return None;
        }
        let bits = (len - network.prefix_len()) as u32;
        if bits > 20 || (1usize << bits) > MAX_DIRECT_SLOTS {
            return None;
        }
        let mut index = Index::Direct {
            base: u32::from(network.network()),
            net_mask: u32::from(network.netmask()),
            shift: 32 - len as u32,
            slots: vec![NO_PEER; 1 << bits].into_boxed_slice(),
        };
        for &(sn, i) in v4 {
            if !index.set(sn, i) {
                return None;
            }
        }
        Some(index)
    }

    /// The peer whose subnet holds `dst` (longest prefix wins).
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let d = u32::from(dst);
        let i = match &self.index {
            Index::Direct {
                base,
                net_mask,
                shift,
                slots,
            } => {
                if d & net_mask != *base {
                    return None;
                }
                let slot = (d - base).checked_shr(*shift).unwrap_or(0) as usize;
                *slots.get(slot)?
            }
            Index::ByLen(maps) => {
                let mut found = NO_PEER;
                for (len, m) in maps {
                    let mask = u32::MAX.checked_shl(32 - *len as u32).unwrap_or(0);
                    if let Some(&i) = m.get(&(d & mask)) {
                        found = i;
                        break;
                    }
                }
                found
            }
        };
        self.at(i)
    }

    /// A peer whose lease carries `public_ip` (the one with the lowest key, if several).
    #[inline]
    pub fn by_public_ip(&self, public_ip: Ipv4Addr) -> Option<&Peer> {
        self.at(*self.by_public_ip.get(&u32::from(public_ip))?)
    }

    /// All peers, ordered by key ([`Peer::key`]): a sort, for reports, not the packet
    /// path.
    pub fn peers(&self) -> Vec<&Peer> {
        let live = self.peers.iter().zip(&self.live).filter(|(_, l)| **l);
        let mut v: Vec<&Peer> = live.map(|(p, _)| p).collect();
        v.sort_unstable_by_key(|p| p.key());
        v
    }

    /// How many peers the snapshot holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no peers.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The publish counter of this snapshot (0 for the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True when lookups use the flat array (all prefix lengths equal).
    pub fn is_direct(&self) -> bool {
        matches!(self.index, Index::Direct { .. })
    }
}

/// The shared table: lock-free for readers, serialized for writers.
#[derive(Debug)]
pub struct LeaseTable {
    network: Ipv4Net,
    current: ArcSwap<Snapshot>,
    /// The writers' side (where each peer sits). Only writers take this lock; readers
    /// never see it.
    writer: Mutex<Writer>,
}

impl LeaseTable {
    /// An empty table for the cluster `network`.
    pub fn new(network: Ipv4Net) -> LeaseTable {
        LeaseTable {
            network,
            current: ArcSwap::from_pointee(Snapshot::build(network, [], 0)),
            writer: Mutex::new(Writer::default()),
        }
    }

    /// The current snapshot, for the packet path: no lock, no allocation.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc` (for long-lived readers).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The cluster network the table serves.
    pub fn network(&self) -> Ipv4Net {
        self.network
    }

    /// Replaces the whole table (after a full list from the store) and publishes it.
    pub fn replace_all(&self, peers: impl IntoIterator<Item = Peer>) -> u64 {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        *w = Writer::default();
        let generation = self.current.load().generation + 1;
        let snap = Snapshot::build_with(&mut w, self.network, peers, generation);
        self.current.store(Arc::new(snap));
        generation
    }

    /// Adds or changes one peer and publishes; returns the new generation.
    pub fn upsert(&self, peer: Peer) -> u64 {
        self.apply(&PeerChanges {
            put: vec![peer],
            gone: vec![],
        })
    }

    /// Applies one change of the live set (gone first, then put) to a copy of the
    /// current snapshot and publishes it; returns the new generation. It costs the
    /// changed peers' index entries and one copy of the snapshot's flat arrays, whatever
    /// the table's size (`benches/lease.rs`, `lease_change`).
    pub fn apply(&self, changes: &PeerChanges) -> u64 {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Snapshot::clone(&self.current.load());
        next.generation += 1;
        next.patch(&mut w, changes);
        let generation = next.generation;
        self.current.store(Arc::new(next));
        generation
    }

    /// Removes the peer of IPv4 `subnet` and publishes; returns the new generation.
    pub fn remove(&self, subnet: Ipv4Net) -> u64 {
        self.apply(&PeerChanges {
            put: vec![],
            gone: vec![(Some(subnet), None)],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(subnet: &str, host: u8) -> Peer {
        Peer {
            subnet: subnet.parse().ok(),
            public_ip: Ipv4Addr::new(192, 0, 2, host),
            backend: BackendKind::Vxlan,
            vni: 1,
            vtep_mac: MacAddr([0x0e, 0, 0, 0, host, 1]),
            super_datagrams: true,
            v6: None,
            wg: None,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn dual(subnet: &str, host: u8, v6: &str) -> Peer {
        Peer {
            v6: Some(PeerV6 {
                subnet: v6.parse().unwrap(),
                public_ip: format!("2001:db8::{host}").parse().unwrap(),
                vni: 1,
                vtep_mac: MacAddr([0x0e, 0, 0, 0, host, 2]),
            }),
            ..peer(subnet, host)
        }
    }

    #[test]
    fn ipv6_lookups_find_the_longest_prefix_and_the_public_address() {
        let t = LeaseTable::new("10.244.0.0/16".parse().unwrap());
        t.replace_all([
            dual("10.244.1.0/24", 1, "fd00:10:244:1::/64"),
            dual("10.244.2.0/24", 2, "fd00:10:244:2::/64"),
            peer("10.244.3.0/24", 3),
        ]);
        t.upsert(dual("10.244.4.0/24", 4, "fd00:10:244:2:8000::/65"));
        let s = t.load();
        let at = |a: &str| {
            s.lookup6(a.parse().unwrap())
                .map(|p| p.subnet.unwrap().to_string())
        };
        assert_eq!(at("fd00:10:244:1::9").as_deref(), Some("10.244.1.0/24"));
        assert_eq!(at("fd00:10:244:2::9").as_deref(), Some("10.244.2.0/24"));
        assert_eq!(
            at("fd00:10:244:2:8000::9").as_deref(),
            Some("10.244.4.0/24")
        );
        assert_eq!(at("fd00:10:244:3::9"), None);
        assert_eq!(at("::"), None);
        let by = |a: &str| s.by_public_ipv6(a.parse().unwrap()).map(|p| p.public_ip);
        assert_eq!(by("2001:db8::2"), Some(ip("192.0.2.2")));
        assert_eq!(by("2001:db8::3"), None);
        drop(s);
        t.remove("10.244.2.0/24".parse().unwrap());
        let s = t.load();
        assert!(s.lookup6("fd00:10:244:2::9".parse().unwrap()).is_none());
        assert!(s.by_public_ipv6("2001:db8::2".parse().unwrap()).is_none());
    }

    /// An IPv6-only node (flanneld's `0.0.0.0-0&...` lease: PublicIP 0.0.0.0, no
    /// BackendData) beside IPv4 and dual-stack ones.
    fn v6_only(v6: &str, host: u8) -> Peer {
        Peer {
            subnet: None,
            public_ip: Ipv4Addr::UNSPECIFIED,
            vni: 0,
            vtep_mac: MacAddr::default(),
            ..dual("10.244.0.0/24", host, v6)
        }
    }

    #[test]
    fn an_ipv6_only_peer_is_found_by_its_ipv6_side_only() {
        let t = LeaseTable::new("10.244.0.0/16".parse().unwrap());
        t.replace_all([
            dual("10.244.1.0/24", 1, "fd00:10:244:1::/64"),
            v6_only("fd00:10:244:5::/64", 5),
            peer("10.244.3.0/24", 3),
        ]);
        // Twice under its own key: still one peer.
        t.upsert(v6_only("fd00:10:244:5::/64", 5));
        let s = t.load();
        assert_eq!(s.len(), 3);
        // The IPv4 index holds the IPv4 sides alone (and stays the flat array).
        assert!(s.is_direct());
        assert_eq!(
            s.lookup(ip("10.244.3.9")).and_then(|p| p.subnet),
            "10.244.3.0/24".parse().ok()
        );
        assert!(s.lookup(ip("10.244.5.9")).is_none());
        assert!(s.by_public_ip(Ipv4Addr::UNSPECIFIED).is_none());
        let found = s.lookup6("fd00:10:244:5::9".parse().unwrap()).unwrap();
        assert_eq!(found.subnet, None);
        assert_eq!(
            found.v6.unwrap().public_ip,
            "2001:db8::5".parse::<Ipv6Addr>().unwrap()
        );
        assert!(s.by_public_ipv6("2001:db8::5".parse().unwrap()).is_some());
    }

    #[test]
    fn the_peer_carries_whether_it_takes_super_datagrams() {
        let peer_of = |json: &str| {
            let lease = Lease {
                subnet: Some("10.244.9.0/24".parse().unwrap()),
                ipv6_subnet: None,
                attrs: super::super::LeaseAttrs::from_json(json).unwrap(),
                expiration: None,
            };
            Peer::from_lease(&lease).unwrap()
        };
        // flanneld's udp backend writes exactly this (flannel's udp_amd64.go).
        let flanneld = peer_of(r#"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#);
        assert_eq!(
            (flanneld.backend, flanneld.super_datagrams),
            (BackendKind::Udp, false)
        );
        let weft = peer_of(
            r#"{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendData":{"SuperDatagrams":true}}"#,
        );
        assert_eq!(
            (weft.backend, weft.super_datagrams),
            (BackendKind::Udp, true)
        );
        let vxlan = peer_of(
            r#"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:09:01"}}"#,
        );
        assert!(vxlan.super_datagrams);
    }

    /// flanneld's wireguard leases (`newSubnetAttrs`: one key, a port per family): dual-
    /// stack, IPv6-only (`0.0.0.0-0&...`, PublicIP 0.0.0.0, BackendV6Data alone), and one
    /// from before ports were published; a lease without a key is refused by name.
    #[test]
    fn a_wireguard_peer_carries_its_key_and_ports() {
        let key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let lease = |v4: bool, json: String| Lease {
            subnet: v4.then(|| "10.244.9.0/24".parse().unwrap()),
            ipv6_subnet: Some("fd00:10:244:9::/64".parse().unwrap()),
            attrs: super::super::LeaseAttrs::from_json(&json).unwrap(),
            expiration: None,
        };
        let dual = format!(
            r#"{{"PublicIP":"192.0.2.9","PublicIPv6":"2001:db8::9","BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":51820}},"BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}"#
        );
        let p = Peer::from_lease(&lease(true, dual)).unwrap();
        let wg = p.wg.unwrap();
        assert_eq!(p.backend, BackendKind::Wireguard);
        assert_eq!(wg.public_key.to_base64(), key);
        assert_eq!((wg.port, wg.port_v6), (Some(51820), Some(51821)));
        assert_eq!(
            p.v6.unwrap().public_ip,
            "2001:db8::9".parse::<Ipv6Addr>().unwrap()
        );
        let v6_only = format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::9","BackendType":"wireguard","BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}"#
        );
        let wg = Peer::from_lease(&lease(false, v6_only))
            .unwrap()
            .wg
            .unwrap();
        assert_eq!((wg.port, wg.port_v6), (None, Some(51821)));
        let old = format!(
            r#"{{"PublicIP":"192.0.2.9","BackendType":"wireguard","BackendData":{{"PublicKey":"{key}"}}}}"#
        );
        assert_eq!(
            Peer::from_lease(&lease(true, old))
                .unwrap()
                .wg
                .unwrap()
                .port,
            None
        );
        let keyless =
            r#"{"PublicIP":"192.0.2.9","BackendType":"wireguard","BackendData":{"Port":51820}}"#;
        let e = Peer::from_lease(&lease(true, keyless.into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PublicKey"), "{e}");
        let v6_keyless =
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::9","BackendType":"wireguard"}"#;
        let e = Peer::from_lease(&lease(false, v6_keyless.into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no public key"), "{e}");
    }

    #[test]
    fn direct_lookup() {
        let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let s = Snapshot::build(
            net,
            [peer("10.244.1.0/24", 1), peer("10.244.255.0/24", 2)],
            0,
        );
        assert!(s.is_direct());
        assert_eq!(
            s.lookup(ip("10.244.1.77")).unwrap().public_ip,
            ip("192.0.2.1")
        );
        assert_eq!(
            s.lookup(ip("10.244.255.255")).unwrap().public_ip,
            ip("192.0.2.2")
        );
        assert!(s.lookup(ip("10.244.2.1")).is_none());
        assert!(s.lookup(ip("10.245.1.1")).is_none());
        assert!(s.lookup(ip("0.0.0.0")).is_none());
        assert!(s.lookup(ip("255.255.255.255")).is_none());
    }

    #[test]
    fn longest_prefix_match_with_mixed_lengths() {
        let net: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let s = Snapshot::build(
            net,
            [
                peer("10.1.0.0/16", 1),
                peer("10.1.2.0/24", 2),
                peer("10.1.2.128/25", 3),
                peer("10.9.0.0/24", 4),
            ],
            0,
        );
        assert!(!s.is_direct());
        assert_eq!(
            s.lookup(ip("10.1.2.200")).unwrap().public_ip,
            ip("192.0.2.3")
        );
        assert_eq!(s.lookup(ip("10.1.2.5")).unwrap().public_ip, ip("192.0.2.2"));
        assert_eq!(s.lookup(ip("10.1.3.5")).unwrap().public_ip, ip("192.0.2.1"));
        assert_eq!(s.lookup(ip("10.9.0.9")).unwrap().public_ip, ip("192.0.2.4"));
        assert!(s.lookup(ip("10.2.0.1")).is_none());
    }

    /// A random peer from a small space, so that keys, public addresses and IPv6
    /// subnets collide: IPv4 /24s (or /26s when `mixed`), some IPv6-only.
    fn random_peer(r: u32, mixed: bool) -> Peer {
        let len = if mixed && r.is_multiple_of(7) { 26 } else { 24 };
        let a = Ipv4Addr::from(0x0a00_0000 | ((r >> 8) % 64) << 8);
        let v6 = PeerV6 {
            subnet: format!("fd00:{:x}::/64", (r >> 4) % 6).parse().unwrap(),
            public_ip: format!("2001:db8::{:x}", (r >> 12) % 5).parse().unwrap(),
            vni: 1,
            vtep_mac: MacAddr::default(),
        };
        Peer {
            subnet: (!r.is_multiple_of(11)).then(|| Ipv4Net::new(a, len).unwrap().trunc()),
            public_ip: Ipv4Addr::new(192, 0, 2, ((r >> 16) % 6) as u8),
            vni: r >> 20,
            v6: (!r.is_multiple_of(3) || r.is_multiple_of(11)).then_some(v6),
            ..peer("10.0.0.0/24", 1)
        }
    }

    /// Every lookup `a` answers as `b` does, for the addresses these peers use.
    fn same_answers(a: &Snapshot, b: &Snapshot, probes: &[Peer]) {
        assert_eq!(a.len(), b.len());
        assert_eq!(a.peers(), b.peers());
        for p in probes {
            if let Some(sn) = p.subnet {
                let d = Ipv4Addr::from(u32::from(sn.network()) + 1);
                assert_eq!(a.lookup(d), b.lookup(d), "{d}");
            }
            assert_eq!(a.by_public_ip(p.public_ip), b.by_public_ip(p.public_ip));
            if let Some(v6) = p.v6 {
                let d = Ipv6Addr::from(u128::from(v6.subnet.network()) + 1);
                assert_eq!(a.lookup6(d), b.lookup6(d), "{d}");
                let ip = v6.public_ip;
                assert_eq!(a.by_public_ipv6(ip), b.by_public_ipv6(ip), "{ip}");
            }
        }
    }

    #[test]
    fn patching_agrees_with_building_the_same_set_afresh() {
        let net: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        let mut x: u32 = 0x9e37_79b9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for round in 0..8 {
            let mixed = round % 2 == 1;
            let t = LeaseTable::new(net);
            let mut model: BTreeMap<SubnetPair, Peer> = BTreeMap::new();
            let mut probes = Vec::new();
            for _ in 0..150 {
                let mut ch = PeerChanges::default();
                for _ in 0..next() % 4 {
                    let p = random_peer(next(), mixed);
                    ch.put.push(p);
                    probes.push(p);
                }
                for _ in 0..next() % 3 {
                    ch.gone.push(random_peer(next(), mixed).key());
                }
                for k in &ch.gone {
                    model.remove(k);
                }
                model.extend(ch.put.iter().map(|p| (p.key(), *p)));
                t.apply(&ch);
                let fresh = Snapshot::build(net, model.values().copied(), 0);
                same_answers(&t.load(), &fresh, &probes);
            }
            assert!(model.len() > 20, "the table grew ({})", model.len());
            // One prefix length throughout: the flat array all along.
            assert_eq!(t.load().is_direct(), !mixed);
        }
    }

    #[test]
    fn lpm_agrees_with_linear_scan() {
        // Pseudo-random mixed-length tables checked against a brute-force scan.
        let net: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let mut x: u32 = 12345;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for round in 0..20 {
            let mut peers = Vec::new();
            for i in 0..50 {
                let len = [16u8, 20, 24, 26, 30][(next() % 5) as usize];
                let a = Ipv4Addr::from(0x0a00_0000 | (next() & 0x00ff_ffff));
                let subnet = Ipv4Net::new(a, len).unwrap().trunc();
                peers.push(Peer {
                    subnet: Some(subnet),
                    ..peer("10.0.0.0/24", i)
                });
            }
            let s = Snapshot::build(net, peers.clone(), round);
            for _ in 0..2000 {
                let d = Ipv4Addr::from(0x0a00_0000 | (next() & 0x00ff_ffff));
                // Later duplicates win, as in build().
                let mut best: Option<&Peer> = None;
                for p in peers.iter() {
                    if p.subnet.unwrap().contains(&d)
                        && best.is_none_or(|b| {
                            p.subnet.unwrap().prefix_len() >= b.subnet.unwrap().prefix_len()
                        })
                    {
                        best = Some(p);
                    }
                }
                assert_eq!(s.lookup(d).map(|p| p.subnet), best.map(|p| p.subnet), "{d}");
            }
        }
    }

    #[test]
    fn table_publishes_generations() {
        let t = LeaseTable::new("10.244.0.0/16".parse().unwrap());
        assert!(t.load().is_empty());
        assert_eq!(t.upsert(peer("10.244.1.0/24", 1)), 1);
        let old = t.snapshot();
        t.upsert(peer("10.244.1.0/24", 9));
        assert_eq!(
            old.lookup(ip("10.244.1.1")).unwrap().public_ip,
            ip("192.0.2.1")
        );
        assert_eq!(
            t.load().lookup(ip("10.244.1.1")).unwrap().public_ip,
            ip("192.0.2.9")
        );
        t.remove("10.244.1.0/24".parse().unwrap());
        assert!(t.load().lookup(ip("10.244.1.1")).is_none());
        assert_eq!(t.load().generation(), 3);
        t.replace_all([peer("10.244.7.0/24", 7)]);
        assert_eq!(t.load().len(), 1);
    }
}
