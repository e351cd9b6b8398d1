//! Subnet allocation, as flanneld's `tryAcquireLease`/`allocateSubnet` do it, as a pure
//! function: the store lists the leases, the caller passes the time and a random number,
//! and gets back what to write. With `EnableIPv6` an IPv6 subnet is allocated beside the
//! IPv4 one, and the lease's key becomes `10.244.1.0-24&fd00:0:0:1::-64`.
//!
//! Both families are walked with the same code over `u128` addresses and inclusive
//! intervals (an IPv4 address is a `u128` below 2^32), so a /0 IPv6 subnet or the last
//! subnet of the address space never overflows a shift or an end.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};

use super::Lease;
use crate::config::{Ipv4Config, Ipv6Config, NetConfig};

/// flanneld picks at random among the first this-many free subnets.
pub const RANDOM_POOL: usize = 100;

/// How the subnet was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A live lease (or reservation) already carries our public IP.
    ExistingLease {
        /// True if that lease is a reservation (no TTL): keep it without one.
        reservation: bool,
    },
    /// The subnet(s) from the previous subnet.env, still free and valid.
    Previous,
    /// A free subnet (of each family) picked at random among the first [`RANDOM_POOL`].
    Fresh,
    /// Assigned by someone else: the Kubernetes node's podCIDR(s).
    Assigned,
}

/// The subnets of the previous subnet.env (`FLANNEL_SUBNET`, `FLANNEL_IPV6_SUBNET`), which
/// a restarted node takes again when they are still free (flanneld's `previousSubnet` and
/// `previousIPv6Subnet`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Previous {
    /// `FLANNEL_SUBNET`, as a subnet.
    pub subnet: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_SUBNET`, as a subnet (host bits, as subnet.env writes it, are fine).
    pub ipv6_subnet: Option<Ipv6Net>,
}

/// Whose lease is ours: flanneld's `findLeaseByIP` compares the IPv4 `PublicIP`. An
/// IPv6-only node advertises `0.0.0.0` there, as every IPv6-only node does, so its own
/// lease is the one with its `PublicIPv6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The `PublicIP` our lease carries (`0.0.0.0` on an IPv6-only node).
    pub public_ip: Ipv4Addr,
    /// The `PublicIPv6` our lease carries, if any.
    pub public_ipv6: Option<Ipv6Addr>,
}

impl From<Ipv4Addr> for Owner {
    fn from(public_ip: Ipv4Addr) -> Owner {
        Owner {
            public_ip,
            public_ipv6: None,
        }
    }
}

impl Owner {
    /// True if `lease` is ours.
    pub fn owns(&self, lease: &Lease) -> bool {
        if self.public_ip.is_unspecified() {
            self.public_ipv6.is_some() && lease.attrs.public_ipv6 == self.public_ipv6
        } else {
            lease.attrs.public_ip == self.public_ip
        }
    }
}

/// The outcome of an allocation: what the caller writes to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// The subnet to lease (`Some` exactly when `EnableIPv4`).
    pub subnet: Option<Ipv4Net>,
    /// The IPv6 subnet to lease beside it (`Some` exactly when `EnableIPv6`).
    pub ipv6_subnet: Option<Ipv6Net>,
    /// How it was chosen.
    pub source: Source,
    /// Leases with our public IP that no longer fit the config (either family): flanneld
    /// deletes them.
    pub stale: Vec<Lease>,
}

/// Why no subnet could be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every subnet between SubnetMin and SubnetMax is leased.
    #[error("out of subnets: all {count} /{len} subnets between {min} and {max} are leased; free a lease, or widen Network, SubnetMin/SubnetMax or SubnetLen")]
    Full {
        /// The number of subnets in range.
        count: u64,
        /// SubnetLen.
        len: u8,
        /// SubnetMin.
        min: Ipv4Addr,
        /// SubnetMax.
        max: Ipv4Addr,
    },
    /// Every IPv6 subnet between IPv6SubnetMin and IPv6SubnetMax is leased.
    #[error("out of IPv6 subnets: all {count} /{len} subnets between {min} and {max} are leased; free a lease, or widen IPv6Network, IPv6SubnetMin/IPv6SubnetMax or IPv6SubnetLen")]
    FullV6 {
        /// The number of IPv6 subnets in range.
        count: u128,
        /// IPv6SubnetLen.
        len: u8,
        /// IPv6SubnetMin.
        min: Ipv6Addr,
        /// IPv6SubnetMax.
        max: Ipv6Addr,
    },
}

/// Chooses this node's subnet(s), as flanneld's `tryAcquireLease`:
///
/// 1. a live lease or reservation whose PublicIP is ours (the IPv4 one: flanneld's
///    `findLeaseByIP` never looks at PublicIPv6; an IPv6-only node's, see [`Owner`]), if it fits the config in both families
///    (with `EnableIPv6` it must have an IPv6 subnet; without, it must have none). Leases
///    of ours that do not fit are returned in `stale`, to delete, and still block their
///    ranges in this round, as in flanneld: a v4-only lease of a cluster that turns
///    `EnableIPv6` on is deleted and the node gets a fresh pair;
/// 2. else `previous` (from subnet.env) if its IPv4 subnet (and with `EnableIPv6`, its
///    IPv6 subnet) fits the config and no live lease overlaps either (flanneld would even
///    take them over from another node; weft does not). With `EnableIPv6` a previous
///    without an IPv6 subnet is not used, as in flanneld; without it, a previous IPv6
///    subnet is ignored (flanneld would drop the IPv4 one too);
/// 3. else, per family, walk SubnetMin..=SubnetMax, collect the first [`RANDOM_POOL`]
///    subnets no live lease overlaps, and take one at random (independent picks).
///
/// Expired leases (expiration at or before `now`) count as free. An IPv6-only network
/// (no IPv4 side) allocates an IPv6 subnet alone, and a dual-stack one both.
pub fn allocate(
    cfg: &NetConfig,
    leases: &[Lease],
    owner: impl Into<Owner>,
    previous: Previous,
    now: SystemTime,
    random: u64,
) -> Result<Allocation, AllocError> {
    let live: Vec<&Lease> = leases.iter().filter(|l| !l.is_expired(now)).collect();
    let (mine, stale) = own_lease(cfg, &live, owner.into());
    if let Some(l) = mine {
        return Ok(Allocation {
            subnet: l.subnet,
            ipv6_subnet: l.ipv6_subnet,
            source: Source::ExistingLease {
                reservation: l.expiration.is_none(),
            },
            stale,
        });
    }
    let taken = Taken::of(&live);
    if let Some((subnet, ipv6_subnet)) = free_previous(cfg, previous, &taken) {
        return Ok(Allocation {
            subnet,
            ipv6_subnet,
            source: Source::Previous,
            stale,
        });
    }
    let subnet = match &cfg.ipv4 {
        Some(v4) => Some(random_free_subnet(v4, &taken.v4, random)?),
        None => None,
    };
    let ipv6_subnet = match &cfg.ipv6 {
        Some(v6) => Some(random_free_v6_subnet(v6, &taken.v6, mix(random))?),
        None => None,
    };
    Ok(Allocation {
        subnet,
        ipv6_subnet,
        source: Source::Fresh,
        stale,
    })
}

/// True if `lease`'s subnets both fit the config (flanneld's `isSubnetConfigCompat` and
/// `isIPv6SubnetConfigCompat`).
fn fits(cfg: &NetConfig, lease: &Lease) -> bool {
    v4_fits(cfg, lease.subnet) && v6_fits(cfg, lease.ipv6_subnet)
}

/// With an IPv4 side, an IPv4 subnet that fits; without (IPv6-only), none at all.
fn v4_fits(cfg: &NetConfig, sn: Option<Ipv4Net>) -> bool {
    match (&cfg.ipv4, sn) {
        (None, sn) => sn.is_none(),
        (Some(c), Some(sn)) => c.is_compatible(sn),
        (Some(_), None) => false,
    }
}

/// flanneld's `isIPv6SubnetConfigCompat`: with `EnableIPv6`, an IPv6 subnet that fits;
/// without, none at all.
fn v6_fits(cfg: &NetConfig, sn: Option<Ipv6Net>) -> bool {
    match (&cfg.ipv6, sn) {
        (None, sn) => sn.is_none(),
        (Some(c), Some(sn)) => v6_compatible(c, sn),
        (Some(_), None) => false,
    }
}

/// True if `sn` may be a node's IPv6 subnet under `c` (the IPv6 half of flannel's
/// `isIPv6SubnetConfigCompat`; it also asks for no host bits, as the IPv4 check does).
fn v6_compatible(c: &Ipv6Config, sn: Ipv6Net) -> bool {
    sn.prefix_len() == c.subnet_len
        && sn.network() == sn.addr()
        && sn.addr() >= c.subnet_min
        && sn.addr() <= c.subnet_max
}

/// Step 1: the first live lease with our public IP that fits the config, and those that
/// do not (stale, to delete).
fn own_lease<'a>(
    cfg: &NetConfig,
    live: &[&'a Lease],
    owner: Owner,
) -> (Option<&'a Lease>, Vec<Lease>) {
    let mut stale = Vec::new();
    let mut mine = None;
    for &l in live.iter().filter(|l| owner.owns(l)) {
        if !fits(cfg, l) {
            stale.push(l.clone());
        } else if mine.is_none() {
            mine = Some(l);
        }
    }
    (mine, stale)
}

/// The address ranges the live leases hold, per family, merged (see [`merged`]).
struct Taken {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl Taken {
    fn of(live: &[&Lease]) -> Taken {
        Taken {
            v4: merged(
                live.iter()
                    .filter_map(|l| l.subnet.map(interval4))
                    .collect(),
            ),
            v6: merged(
                live.iter()
                    .filter_map(|l| l.ipv6_subnet.map(interval6))
                    .collect(),
            ),
        }
    }
}

/// Step 2: `previous`, if it fits the config and no taken interval overlaps it.
fn free_previous(
    cfg: &NetConfig,
    previous: Previous,
    taken: &Taken,
) -> Option<(Option<Ipv4Net>, Option<Ipv6Net>)> {
    let p = match &cfg.ipv4 {
        Some(c4) => {
            let p = previous.subnet.filter(|&p| c4.is_compatible(p))?;
            let (lo, hi) = interval4(p);
            if overlap_end(&taken.v4, lo, hi).is_some() {
                return None;
            }
            Some(p)
        }
        None => None,
    };
    let Some(c6) = &cfg.ipv6 else {
        return Some((p, None));
    };
    // subnet.env holds the first address (FLANNEL_IPV6_SUBNET=fc00:0:0:7::1/64).
    let p6 = previous
        .ipv6_subnet
        .map(|p6| p6.trunc())
        .filter(|&p6| v6_compatible(c6, p6))?;
    let (lo, hi) = interval6(p6);
    overlap_end(&taken.v6, lo, hi)
        .is_none()
        .then_some((p, Some(p6)))
}

/// The host-part mask of a subnet with `host_bits` host bits (0..=128).
fn host_mask(host_bits: u32) -> u128 {
    u128::MAX.checked_shr(128 - host_bits).unwrap_or(0)
}

/// The addresses an IPv4 subnet covers, as an inclusive interval.
fn interval4(subnet: Ipv4Net) -> (u128, u128) {
    let lo = u32::from(subnet.network()) as u128;
    (lo, lo | host_mask(32 - subnet.prefix_len() as u32))
}

/// The addresses an IPv6 subnet covers, as an inclusive interval.
fn interval6(subnet: Ipv6Net) -> (u128, u128) {
    let lo = u128::from(subnet.network());
    (lo, lo | host_mask(128 - subnet.prefix_len() as u32))
}

/// The intervals sorted, with overlapping ones merged, so that [`overlap_end`] can answer
/// with a binary search, in O(log n).
fn merged(mut taken: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    taken.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(taken.len());
    for (lo, hi) in taken {
        match merged.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// If a merged interval overlaps `lo..=hi`, the (inclusive) end of the first such one.
fn overlap_end(merged: &[(u128, u128)], lo: u128, hi: u128) -> Option<u128> {
    // The first merged interval that ends at or after lo.
    let i = merged.partition_point(|&(_, end)| end < lo);
    merged
        .get(i)
        .filter(|&&(start, _)| start <= hi)
        .map(|&(_, end)| end)
}

/// Walks the subnets of `host_bits` host bits from `min` to `max` (both subnet
/// addresses) and collects the first [`RANDOM_POOL`] that no taken interval overlaps.
fn free_pool(min: u128, max: u128, host_bits: u32, taken: &[(u128, u128)]) -> Vec<u128> {
    let mask = host_mask(host_bits);
    let mut pool: Vec<u128> = Vec::with_capacity(RANDOM_POOL);
    let mut at = Some(min);
    while let Some(a) = at.filter(|&a| a <= max && pool.len() < RANDOM_POOL) {
        at = match overlap_end(taken, a, a | mask) {
            // Skip past the blocking lease, rounded up to a subnet boundary; past the end
            // of the address space there is nothing left.
            Some(end) => end
                .checked_add(1)
                .and_then(|n| n.checked_add(mask))
                .map(|n| n & !mask),
            None => {
                pool.push(a);
                (a | mask).checked_add(1)
            }
        };
    }
    pool
}

/// Step 3, IPv4: a random one of the first [`RANDOM_POOL`] free subnets.
fn random_free_subnet(
    cfg: &Ipv4Config,
    taken: &[(u128, u128)],
    random: u64,
) -> Result<Ipv4Net, AllocError> {
    let min = u32::from(cfg.subnet_min) as u128;
    let max = u32::from(cfg.subnet_max) as u128;
    let pool = free_pool(min, max, 32 - cfg.subnet_len as u32, taken);
    let Some(&pick) = pool.get((random % pool.len().max(1) as u64) as usize) else {
        return Err(AllocError::Full {
            count: cfg.subnet_count(),
            len: cfg.subnet_len,
            min: cfg.subnet_min,
            max: cfg.subnet_max,
        });
    };
    // `pick` lies in [SubnetMin, SubnetMax], so it fits in 32 bits.
    Ok(Ipv4Net::new(Ipv4Addr::from(pick as u32), cfg.subnet_len).unwrap_or_default())
}

/// Step 3, IPv6: a random one of the first [`RANDOM_POOL`] free IPv6 subnets.
fn random_free_v6_subnet(
    c: &Ipv6Config,
    taken: &[(u128, u128)],
    random: u64,
) -> Result<Ipv6Net, AllocError> {
    let (min, max) = (u128::from(c.subnet_min), u128::from(c.subnet_max));
    let host_bits = 128 - c.subnet_len as u32;
    let pool = free_pool(min, max, host_bits, taken);
    let Some(&pick) = pool.get((random % pool.len().max(1) as u64) as usize) else {
        let count = max
            .saturating_sub(min)
            .checked_shr(host_bits)
            .unwrap_or(0)
            .saturating_add(1);
        return Err(AllocError::FullV6 {
            count,
            len: c.subnet_len,
            min: c.subnet_min,
            max: c.subnet_max,
        });
    };
    Ok(Ipv6Net::new(Ipv6Addr::from(pick), c.subnet_len).unwrap_or_default())
}

/// A second random number from the first, for the IPv6 pick (flanneld draws twice).
fn mix(random: u64) -> u64 {
    // splitmix64's finalizer: every input bit reaches every output bit.
    let mut z = random.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lease::LeaseAttrs;

    fn cfg(s: &str) -> NetConfig {
        NetConfig::parse(s).unwrap()
    }

    fn lease(subnet: &str, host: u8, expiration: Option<SystemTime>) -> Lease {
        Lease {
            subnet: Some(subnet.parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, host)),
            expiration,
        }
    }

    const ME: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    fn later() -> Option<SystemTime> {
        Some(now() + Duration::from_secs(3600))
    }

    /// `allocate` for us, now, with `previous` as subnet.env's subnet.
    fn with_previous(c: &NetConfig, leases: &[Lease], previous: &str) -> Allocation {
        let previous = Previous {
            subnet: Some(previous.parse().unwrap()),
            ipv6_subnet: None,
        };
        allocate(c, leases, ME, previous, now(), 0).unwrap()
    }

    #[test]
    fn reuses_own_lease_then_previous_then_fresh() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let leases = vec![
            lease("10.244.7.0/24", 1, later()),
            lease("10.244.1.0/24", 2, later()),
        ];
        let a = with_previous(&c, &leases, "10.244.9.0/24");
        assert_eq!(a.subnet, "10.244.7.0/24".parse().ok());
        assert_eq!(a.source, Source::ExistingLease { reservation: false });

        let leases = vec![lease("10.244.1.0/24", 2, later())];
        let a = with_previous(&c, &leases, "10.244.9.0/24");
        assert_eq!(
            (a.subnet, a.source),
            ("10.244.9.0/24".parse().ok(), Source::Previous)
        );

        // The previous subnet is someone else's now: pick fresh, never steal it.
        let a = with_previous(&c, &leases, "10.244.1.0/24");
        assert_eq!(
            (a.subnet, a.source),
            ("10.244.2.0/24".parse().ok(), Source::Fresh)
        );
        // A previous subnet that no longer fits the config is ignored.
        let a = with_previous(&c, &leases, "10.244.0.0/24");
        assert_eq!(a.source, Source::Fresh);
        let a = with_previous(&c, &leases, "10.9.0.0/24");
        assert_eq!(a.source, Source::Fresh);
    }

    #[test]
    fn reservations_and_expiry() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        // A reservation for us is reused and kept a reservation.
        let a = allocate(
            &c,
            &[lease("10.244.50.0/24", 1, None)],
            ME,
            Previous::default(),
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.source, Source::ExistingLease { reservation: true });
        // Someone else's reservation is never handed out.
        let a = allocate(
            &c,
            &[lease("10.244.1.0/24", 2, None)],
            ME,
            Previous::default(),
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.subnet, "10.244.2.0/24".parse().ok());
        // An expired lease is free, and an expired lease of ours is not "ours".
        let expired = Some(now() - Duration::from_secs(1));
        let a = allocate(
            &c,
            &[
                lease("10.244.1.0/24", 2, expired),
                lease("10.244.3.0/24", 1, expired),
            ],
            ME,
            Previous::default(),
            now(),
            0,
        )
        .unwrap();
        assert_eq!(
            (a.subnet, a.source),
            ("10.244.1.0/24".parse().ok(), Source::Fresh)
        );
    }

    #[test]
    fn stale_own_leases_are_reported() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
        let a = allocate(
            &c,
            &[lease("10.244.5.0/24", 1, later())],
            ME,
            Previous::default(),
            now(),
            0,
        )
        .unwrap();
        let stale: Vec<Ipv4Net> = a.stale.iter().filter_map(|l| l.subnet).collect();
        assert_eq!(stale, vec!["10.244.5.0/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(a.source, Source::Fresh);
        // The stale lease still blocks its range until deleted.
        assert!(!"10.244.5.0/24"
            .parse::<Ipv4Net>()
            .unwrap()
            .contains(&a.subnet.unwrap()));
    }

    #[test]
    fn random_pick_is_among_first_hundred_free() {
        let c = cfg(r#"{"Network":"10.0.0.0/8"}"#);
        let leases: Vec<Lease> = (1..=10u32)
            .map(|i| lease(&format!("10.0.{i}.0/24"), 9, later()))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..1000u64 {
            let a = allocate(
                &c,
                &leases,
                ME,
                Previous::default(),
                now(),
                r.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )
            .unwrap();
            let sn = a.subnet.unwrap();
            let third = u32::from(sn.network());
            // Free subnets start at 10.0.11.0; the pool is 100 long: 10.0.11.0 ..= 10.0.110.0.
            assert!((0x0a000b00..=0x0a006e00).contains(&third), "{sn}");
            assert!(leases
                .iter()
                .all(|l| !l.subnet.unwrap().contains(&sn.network())));
            seen.insert(a.subnet);
        }
        assert!(seen.len() > 50, "picks are spread: {}", seen.len());
    }

    #[test]
    fn full_network_and_overlapping_big_lease() {
        let c = cfg(r#"{"Network":"10.10.0.0/28"}"#); // /30 subnets: .4, .8, .12
        let leases: Vec<Lease> = ["10.10.0.4/30", "10.10.0.8/30", "10.10.0.12/30"]
            .iter()
            .map(|s| lease(s, 9, later()))
            .collect();
        let e = allocate(&c, &leases, ME, Previous::default(), now(), 0).unwrap_err();
        assert!(
            e.to_string()
                .contains("out of subnets: all 3 /30 subnets between 10.10.0.4 and 10.10.0.12"),
            "{e}"
        );

        // A lease of a bigger size blocks every subnet it covers.
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let a = allocate(
            &c,
            &[lease("10.244.0.0/20", 9, later())],
            ME,
            Previous::default(),
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.subnet, "10.244.16.0/24".parse().ok());
    }

    #[test]
    fn last_subnet_of_the_address_space() {
        let c = cfg(r#"{"Network":"255.255.255.0/24"}"#); // /26: .64 .128 .192
        let a = allocate(
            &c,
            &[
                lease("255.255.255.64/26", 9, later()),
                lease("255.255.255.128/26", 8, later()),
            ],
            ME,
            Previous::default(),
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.subnet, "255.255.255.192/26".parse().ok());
    }

    /// flanneld's IPv6 defaults for `"IPv6Network":"fc00::/48"` (flannel's
    /// pkg/subnet/config_test.go TestIPv6ConfigDefaults): /64s from fc00:0:0:1:: to
    /// fc00:0:0:ffff::.
    fn dual(v4: &str) -> NetConfig {
        v6cfg(v4, "fc00::/48", 64, "fc00:0:0:1::", "fc00:0:0:ffff::")
    }

    fn v6cfg(v4: &str, net: &str, len: u8, min: &str, max: &str) -> NetConfig {
        let mut c = cfg(v4);
        c.ipv6 = Some(Ipv6Config {
            network: net.parse().unwrap(),
            subnet_len: len,
            subnet_min: min.parse().unwrap(),
            subnet_max: max.parse().unwrap(),
        });
        c
    }

    fn lease6(subnet: &str, v6: &str, host: u8, expiration: Option<SystemTime>) -> Lease {
        Lease {
            ipv6_subnet: Some(v6.parse().unwrap()),
            ..lease(subnet, host, expiration)
        }
    }

    fn v6(s: &str) -> Option<Ipv6Net> {
        Some(s.parse().unwrap())
    }

    fn prev(v4: &str, v6: Option<&str>) -> Previous {
        Previous {
            subnet: Some(v4.parse().unwrap()),
            ipv6_subnet: v6.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn dual_stack_allocates_both_families_and_reuses_its_own_pair() {
        let c = dual(r#"{"Network":"10.244.0.0/16"}"#);
        let others = vec![
            lease6("10.244.1.0/24", "fc00:0:0:1::/64", 2, later()),
            lease6("10.244.2.0/24", "fc00:0:0:2::/64", 3, None),
        ];
        let a = allocate(&c, &others, ME, Previous::default(), now(), 0).unwrap();
        assert_eq!(a.source, Source::Fresh);
        assert_eq!(a.subnet, "10.244.3.0/24".parse().ok());
        // A /64 of the first 100 free ones (fc00:0:0:3:: on), drawn apart from the IPv4 one.
        let n = a.ipv6_subnet.unwrap();
        assert_eq!(n.prefix_len(), 64);
        assert!((3..=102).contains(&n.addr().segments()[3]), "{n}");
        assert_eq!(n.addr().segments()[..3], [0xfc00, 0, 0]);
        // Our own dual-stack lease is found by its IPv4 PublicIP and kept whole.
        let mut leases = others.clone();
        leases.push(lease6("10.244.9.0/24", "fc00:0:0:77::/64", 1, later()));
        let a = allocate(&c, &leases, ME, Previous::default(), now(), 5).unwrap();
        assert_eq!(
            (a.subnet, a.ipv6_subnet, a.source),
            (
                "10.244.9.0/24".parse().ok(),
                v6("fc00:0:0:77::/64"),
                Source::ExistingLease { reservation: false }
            )
        );
        // Without EnableIPv6 nothing IPv6 is allocated.
        let c4 = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let a = allocate(&c4, &others, ME, Previous::default(), now(), 0).unwrap();
        assert_eq!(a.ipv6_subnet, None);
    }

    #[test]
    fn an_ipv6_only_lease_takes_only_its_ipv6_subnet() {
        // flanneld's IPv6-only key, 0.0.0.0-0&fc00:0:0:3::-64: its IPv6 subnet is taken,
        // and no IPv4 space (its empty IPv4 subnet is not 0.0.0.0/0).
        let c = v6cfg(
            r#"{"Network":"10.244.0.0/16"}"#,
            "fc00::/48",
            64,
            "fc00:0:0:3::",
            "fc00:0:0:4::",
        );
        let (sn, sn6) = crate::lease::parse_subnet_key("0.0.0.0-0&fc00:0:0:3::-64").unwrap();
        let other = Lease {
            subnet: sn,
            ipv6_subnet: sn6,
            ..lease("10.244.0.0/24", 2, later())
        };
        let a = allocate(
            &c,
            std::slice::from_ref(&other),
            ME,
            Previous::default(),
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.subnet.unwrap().prefix_len(), 24);
        assert_eq!(a.ipv6_subnet, v6("fc00:0:0:4::/64"));
        // Ours, IPv6-only in a network with IPv4: stale, as flanneld's
        // isSubnetConfigCompat finds it.
        let mine = Lease {
            attrs: LeaseAttrs::udp(ME),
            ..other
        };
        let a = allocate(
            &c,
            std::slice::from_ref(&mine),
            ME,
            Previous::default(),
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.stale, vec![mine]);
        assert_eq!(a.source, Source::Fresh);
    }

    #[test]
    fn a_lease_of_the_other_stack_is_stale_as_in_flanneld() {
        // flanneld's isIPv6SubnetConfigCompat: with EnableIPv6 our v4-only lease does not
        // fit (deleted, and a fresh pair that avoids it); without, our dual-stack one.
        let c = dual(r#"{"Network":"10.244.0.0/16"}"#);
        let old = lease("10.244.0.0/24", 1, later());
        let a = allocate(
            &c,
            std::slice::from_ref(&old),
            ME,
            Previous::default(),
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.stale, vec![old]);
        assert_eq!(a.source, Source::Fresh);
        assert_eq!(a.subnet, "10.244.1.0/24".parse().ok());
        assert!(a.ipv6_subnet.is_some());
        let c4 = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let ds = lease6("10.244.0.0/24", "fc00:0:0:1::/64", 1, later());
        let a = allocate(
            &c4,
            std::slice::from_ref(&ds),
            ME,
            Previous::default(),
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.stale, vec![ds]);
        assert_eq!(a.ipv6_subnet, None);
        // An IPv6 subnet of the wrong size, or outside IPv6SubnetMin..Max, is stale too.
        for bad in ["fc00:0:0:1::/80", "fc00::/64", "fd00:0:0:1::/64"] {
            let l = lease6("10.244.0.0/24", bad, 1, later());
            let a = allocate(
                &c,
                std::slice::from_ref(&l),
                ME,
                Previous::default(),
                now(),
                0,
            )
            .unwrap();
            assert_eq!(a.stale, vec![l], "{bad}");
        }
        // Someone else's lease of the other stack is theirs: never stale for us.
        let theirs = lease("10.244.0.0/24", 2, later());
        let a = allocate(&c, &[theirs], ME, Previous::default(), now(), 0).unwrap();
        assert!(a.stale.is_empty());
    }

    #[test]
    fn previous_pair_is_reused_only_when_both_fit_and_are_free() {
        let c = dual(r#"{"Network":"10.244.0.0/16"}"#);
        let others = vec![lease6("10.244.1.0/24", "fc00:0:0:1::/64", 2, later())];
        let at = |p: Previous| allocate(&c, &others, ME, p, now(), 0).unwrap();
        let a = at(prev("10.244.7.0/24", Some("fc00:0:0:7::/64")));
        assert_eq!(
            (a.subnet, a.ipv6_subnet, a.source),
            (
                "10.244.7.0/24".parse().ok(),
                v6("fc00:0:0:7::/64"),
                Source::Previous
            )
        );
        // As subnet.env writes it, the first address of the subnet: the same pair.
        let a = at(prev("10.244.7.0/24", Some("fc00:0:0:7::1/64")));
        assert_eq!(
            (a.ipv6_subnet, a.source),
            (v6("fc00:0:0:7::/64"), Source::Previous)
        );
        // No IPv6 subnet in subnet.env (it was IPv4-only): a fresh pair, as flanneld.
        assert_eq!(at(prev("10.244.7.0/24", None)).source, Source::Fresh);
        // The IPv6 subnet is someone else's, or does not fit: a fresh pair, never shared.
        for p6 in ["fc00:0:0:1::/64", "fc00:0:0:7::/80", "fc00::/64"] {
            let a = at(prev("10.244.7.0/24", Some(p6)));
            assert_eq!(a.source, Source::Fresh, "{p6}");
            assert_ne!(a.ipv6_subnet, v6("fc00:0:0:1::/64"));
        }
        // Without EnableIPv6 a previous IPv6 subnet is ignored; the IPv4 one is reused.
        let c4 = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let p = prev("10.244.7.0/24", Some("fc00:0:0:7::/64"));
        let a = allocate(&c4, &others, ME, p, now(), 0).unwrap();
        assert_eq!((a.ipv6_subnet, a.source), (None, Source::Previous));
    }

    #[test]
    fn ipv6_pick_is_random_among_first_hundred_free_and_expired_ones_are_free() {
        let c = dual(r#"{"Network":"10.0.0.0/8"}"#);
        let mut leases: Vec<Lease> = (1..=10u32)
            .map(|i| {
                lease6(
                    &format!("10.0.{i}.0/24"),
                    &format!("fc00:0:0:{i:x}::/64"),
                    9,
                    later(),
                )
            })
            .collect();
        // An expired lease holds nothing.
        leases.push(lease6("10.0.200.0/24", "fc00:0:0:b::/64", 8, Some(now())));
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..1000u64 {
            let a = allocate(&c, &leases, ME, Previous::default(), now(), r).unwrap();
            let n = a.ipv6_subnet.unwrap();
            assert_eq!(n.prefix_len(), 64);
            let hextet = n.addr().segments()[3];
            assert!((0xb..=0xb + 99).contains(&hextet), "{n}");
            seen.insert(n);
        }
        assert!(seen.len() > 50, "picks are spread: {}", seen.len());
    }

    #[test]
    fn out_of_ipv6_subnets_names_the_fields_and_bounds_never_overflow() {
        // /2s of the whole address space, SubnetMin 4000:: as flanneld would default it.
        let c = v6cfg(r#"{"Network":"10.0.0.0/8"}"#, "::/0", 2, "4000::", "c000::");
        let two = vec![
            lease6("10.0.1.0/24", "4000::/2", 8, later()),
            lease6("10.0.2.0/24", "8000::/2", 9, later()),
        ];
        let a = allocate(&c, &two, ME, Previous::default(), now(), 7).unwrap();
        assert_eq!(
            a.ipv6_subnet,
            v6("c000::/2"),
            "the last subnet of the space"
        );
        // One lease of all of it blocks every subnet.
        let all = vec![lease6("10.0.1.0/24", "::/0", 8, later())];
        let e = allocate(&c, &all, ME, Previous::default(), now(), 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "out of IPv6 subnets: all 3 /2 subnets between 4000:: and c000:: are leased; free a lease, or widen IPv6Network, IPv6SubnetMin/IPv6SubnetMax or IPv6SubnetLen"
        );
        // The last /126 of the space, and a /128 lease beside it.
        let c = v6cfg(
            r#"{"Network":"10.0.0.0/8"}"#,
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124",
            126,
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff4",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc",
        );
        let l = vec![
            lease6(
                "10.0.1.0/24",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff4/126",
                8,
                later(),
            ),
            lease6(
                "10.0.2.0/24",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffa/128",
                9,
                later(),
            ),
        ];
        let a = allocate(&c, &l, ME, Previous::default(), now(), 3).unwrap();
        assert_eq!(
            a.ipv6_subnet,
            v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126")
        );
    }

    /// A lease as flanneld v0.28 writes an IPv6-only node's (pkg/subnet/etcd/registry.go:
    /// the key of a zero IP4Net, PublicIP 0.0.0.0, no BackendData), for public IPv6
    /// 2001:db8::`host`.
    fn flanneld_v6_only(key: &str, host: u8) -> Lease {
        let (subnet, ipv6_subnet) = crate::lease::parse_subnet_key(key).unwrap();
        let json = format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::{host:x}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{host:02x}"}}}}"#
        );
        Lease {
            subnet,
            ipv6_subnet,
            attrs: LeaseAttrs::from_json(&json).unwrap(),
            expiration: later(),
        }
    }

    #[test]
    fn ipv6_only_allocates_ipv6_alone_and_finds_its_lease_by_public_ipv6() {
        let mut c = dual(r#"{"Network":"10.244.0.0/16"}"#);
        c.ipv4 = None;
        let me = Owner {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some("2001:db8::1".parse().unwrap()),
        };
        let others = vec![
            flanneld_v6_only("0.0.0.0-0&fc00:0:0:1::-64", 2),
            flanneld_v6_only("0.0.0.0-0&fc00:0:0:2::-64", 3),
        ];
        // Fresh: an IPv6 subnet alone, past the taken ones; PublicIP 0.0.0.0 is not ours.
        let a = allocate(&c, &others, me, Previous::default(), now(), 0).unwrap();
        assert_eq!((a.subnet, a.source), (None, Source::Fresh));
        let n = a.ipv6_subnet.unwrap();
        assert!((3..=102).contains(&n.addr().segments()[3]), "{n}");
        // Ours, by PublicIPv6, kept.
        let mut leases = others.clone();
        leases.push(flanneld_v6_only("0.0.0.0-0&fc00:0:0:9::-64", 1));
        let a = allocate(&c, &leases, me, Previous::default(), now(), 0).unwrap();
        assert_eq!(
            (a.subnet, a.ipv6_subnet, a.source),
            (
                None,
                v6("fc00:0:0:9::/64"),
                Source::ExistingLease { reservation: false }
            )
        );
        // subnet.env's IPv6 subnet, when free; with no IPv4 one (flanneld's IPv6-only file).
        let p = Previous {
            subnet: None,
            ipv6_subnet: Some("fc00:0:0:7::1/64".parse().unwrap()),
        };
        let a = allocate(&c, &others, me, p, now(), 0).unwrap();
        assert_eq!((a.subnet, a.ipv6_subnet), (None, v6("fc00:0:0:7::/64")));
        assert_eq!(a.source, Source::Previous);
        // A dual-stack lease of ours no longer fits an IPv6-only network: stale.
        let mut mine = lease6("10.244.9.0/24", "fc00:0:0:9::/64", 1, later());
        mine.attrs.public_ipv6 = me.public_ipv6;
        let a = allocate(&c, &[mine.clone()], me, Previous::default(), now(), 0).unwrap();
        assert_eq!(a.stale, vec![mine]);
        assert_eq!((a.subnet, a.source), (None, Source::Fresh));
        assert_ne!(
            a.ipv6_subnet,
            v6("fc00:0:0:9::/64"),
            "the stale one blocks its range"
        );
        // In a dual-stack network an IPv6-only lease of ours is stale the other way.
        let d = dual(r#"{"Network":"10.244.0.0/16"}"#);
        let ours = flanneld_v6_only("0.0.0.0-0&fc00:0:0:9::-64", 1);
        let me4 = Owner {
            public_ip: Ipv4Addr::new(192, 0, 2, 1),
            ..me
        };
        let a = allocate(&d, &[ours], me4, Previous::default(), now(), 0).unwrap();
        assert!(
            a.stale.is_empty(),
            "found by its IPv4 PublicIP only, as flanneld"
        );
        assert!(a.subnet.is_some() && a.ipv6_subnet.is_some());
    }
}
