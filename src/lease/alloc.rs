//! Subnet allocation, as flanneld's `tryAcquireLease`/`allocateSubnet` do it, as a pure
//! function: the store lists the leases, the caller passes the time and a random number,
//! and gets back what to write.

use std::net::Ipv4Addr;
use std::time::SystemTime;

use ipnet::Ipv4Net;

use super::Lease;
use crate::config::NetConfig;

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
    /// The subnet from the previous subnet.env, still free and valid.
    Previous,
    /// A free subnet picked at random among the first [`RANDOM_POOL`].
    Fresh,
    /// Assigned by someone else: the Kubernetes node's podCIDR.
    Assigned,
}

/// The outcome of an allocation: what the caller writes to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The subnet to lease.
    pub subnet: Ipv4Net,
    /// How it was chosen.
    pub source: Source,
    /// Leases with our public IP that no longer fit the config: flanneld deletes them.
    pub stale: Vec<Ipv4Net>,
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
}

/// Chooses this node's subnet.
///
/// 1. a live lease or reservation whose PublicIP is ours, if it fits the config (leases of
///    ours that do not fit are returned in `stale`, to delete);
/// 2. else `previous` (from subnet.env) if it fits the config and no live lease overlaps it
///    (flanneld would even take it over from another node; weft does not);
/// 3. else walk SubnetMin..=SubnetMax, collect the first [`RANDOM_POOL`] subnets no live
///    lease overlaps, and take `random % count` of them.
///
/// Expired leases (expiration at or before `now`) count as free.
pub fn allocate(
    cfg: &NetConfig,
    leases: &[Lease],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    now: SystemTime,
    random: u64,
) -> Result<Allocation, AllocError> {
    let live: Vec<&Lease> = leases.iter().filter(|l| !l.is_expired(now)).collect();
    let (mine, stale) = own_lease(cfg, &live, public_ip);
    if let Some(l) = mine {
        return Ok(Allocation {
            subnet: l.subnet,
            source: Source::ExistingLease {
                reservation: l.expiration.is_none(),
            },
            stale,
        });
    }
    let taken = merged_intervals(&live);
    if let Some(p) = free_previous(cfg, previous, &taken) {
        return Ok(Allocation {
            subnet: p,
            source: Source::Previous,
            stale,
        });
    }
    let subnet = random_free_subnet(cfg, &taken, random)?;
    Ok(Allocation {
        subnet,
        source: Source::Fresh,
        stale,
    })
}

/// Step 1: the first live lease with our public IP that fits the config, and the subnets
/// of those that do not (stale, to delete).
fn own_lease<'a>(
    cfg: &NetConfig,
    live: &[&'a Lease],
    public_ip: Ipv4Addr,
) -> (Option<&'a Lease>, Vec<Ipv4Net>) {
    let mut stale = Vec::new();
    let mut mine = None;
    for &l in live.iter().filter(|l| l.attrs.public_ip == public_ip) {
        if cfg.is_compatible(l.subnet) && mine.is_none() {
            mine = Some(l);
        } else if !cfg.is_compatible(l.subnet) {
            stale.push(l.subnet);
        }
    }
    (mine, stale)
}

/// Step 2: `previous`, if it fits the config and no taken interval overlaps it.
fn free_previous(
    cfg: &NetConfig,
    previous: Option<Ipv4Net>,
    taken: &[(u64, u64)],
) -> Option<Ipv4Net> {
    let p = previous.filter(|&p| cfg.is_compatible(p))?;
    let (lo, hi) = interval(p);
    overlap_end(taken, lo, hi).is_none().then_some(p)
}

/// The addresses `subnet` covers, as a half-open interval.
fn interval(subnet: Ipv4Net) -> (u64, u64) {
    let lo = u32::from(subnet.network()) as u64;
    (lo, lo + (1u64 << (32 - subnet.prefix_len())))
}

/// The intervals of the live leases, sorted and with overlapping ones merged, so that
/// [`overlap_end`] can answer with a binary search, in O(log n).
fn merged_intervals(live: &[&Lease]) -> Vec<(u64, u64)> {
    let mut taken: Vec<(u64, u64)> = live.iter().map(|l| interval(l.subnet)).collect();
    taken.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(taken.len());
    for (lo, hi) in taken {
        match merged.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// If a merged interval overlaps `lo..hi`, the end of the first such interval.
fn overlap_end(merged: &[(u64, u64)], lo: u64, hi: u64) -> Option<u64> {
    // The first merged interval that ends after lo.
    let i = merged.partition_point(|&(_, end)| end <= lo);
    merged
        .get(i)
        .filter(|&&(start, _)| start < hi)
        .map(|&(_, end)| end)
}

/// Step 3: walks SubnetMin..=SubnetMax, collects the first [`RANDOM_POOL`] subnets no
/// taken interval overlaps, and picks `random % count` of them.
fn random_free_subnet(
    cfg: &NetConfig,
    taken: &[(u64, u64)],
    random: u64,
) -> Result<Ipv4Net, AllocError> {
    let size = 1u64 << (32 - cfg.subnet_len);
    let max = u32::from(cfg.subnet_max) as u64;
    let mut pool: Vec<u64> = Vec::with_capacity(RANDOM_POOL);
    let mut at = u32::from(cfg.subnet_min) as u64;
    while at <= max && pool.len() < RANDOM_POOL {
        match overlap_end(taken, at, at + size) {
            // Skip past the blocking lease, rounded up to a subnet boundary.
            Some(end) => at = end.div_ceil(size) * size,
            None => {
                pool.push(at);
                at += size;
            }
        }
    }
    if pool.is_empty() {
        return Err(AllocError::Full {
            count: cfg.subnet_count(),
            len: cfg.subnet_len,
            min: cfg.subnet_min,
            max: cfg.subnet_max,
        });
    }
    let pick = pool[(random % pool.len() as u64) as usize];
    // `pick` lies in [SubnetMin, SubnetMax], so it fits in 32 bits.
    Ok(Ipv4Net::new(Ipv4Addr::from(pick as u32), cfg.subnet_len).unwrap_or_default())
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
            subnet: subnet.parse().unwrap(),
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
        allocate(c, leases, ME, Some(previous.parse().unwrap()), now(), 0).unwrap()
    }

    #[test]
    fn reuses_own_lease_then_previous_then_fresh() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let leases = vec![
            lease("10.244.7.0/24", 1, later()),
            lease("10.244.1.0/24", 2, later()),
        ];
        let a = with_previous(&c, &leases, "10.244.9.0/24");
        assert_eq!(a.subnet, "10.244.7.0/24".parse().unwrap());
        assert_eq!(a.source, Source::ExistingLease { reservation: false });

        let leases = vec![lease("10.244.1.0/24", 2, later())];
        let a = with_previous(&c, &leases, "10.244.9.0/24");
        assert_eq!(
            (a.subnet, a.source),
            ("10.244.9.0/24".parse().unwrap(), Source::Previous)
        );

        // The previous subnet is someone else's now: pick fresh, never steal it.
        let a = with_previous(&c, &leases, "10.244.1.0/24");
        assert_eq!(
            (a.subnet, a.source),
            ("10.244.2.0/24".parse().unwrap(), Source::Fresh)
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
        let a = allocate(&c, &[lease("10.244.50.0/24", 1, None)], ME, None, now(), 0).unwrap();
        assert_eq!(a.source, Source::ExistingLease { reservation: true });
        // Someone else's reservation is never handed out.
        let a = allocate(&c, &[lease("10.244.1.0/24", 2, None)], ME, None, now(), 0).unwrap();
        assert_eq!(a.subnet, "10.244.2.0/24".parse().unwrap());
        // An expired lease is free, and an expired lease of ours is not "ours".
        let expired = Some(now() - Duration::from_secs(1));
        let a = allocate(
            &c,
            &[
                lease("10.244.1.0/24", 2, expired),
                lease("10.244.3.0/24", 1, expired),
            ],
            ME,
            None,
            now(),
            0,
        )
        .unwrap();
        assert_eq!(
            (a.subnet, a.source),
            ("10.244.1.0/24".parse().unwrap(), Source::Fresh)
        );
    }

    #[test]
    fn stale_own_leases_are_reported() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
        let a = allocate(
            &c,
            &[lease("10.244.5.0/24", 1, later())],
            ME,
            None,
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.stale, vec!["10.244.5.0/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(a.source, Source::Fresh);
        // The stale lease still blocks its range until deleted.
        assert!(!"10.244.5.0/24"
            .parse::<Ipv4Net>()
            .unwrap()
            .contains(&a.subnet));
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
                None,
                now(),
                r.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )
            .unwrap();
            let third = u32::from(a.subnet.network());
            // Free subnets start at 10.0.11.0; the pool is 100 long: 10.0.11.0 ..= 10.0.110.0.
            assert!((0x0a000b00..=0x0a006e00).contains(&third), "{}", a.subnet);
            assert!(leases
                .iter()
                .all(|l| !l.subnet.contains(&a.subnet.network())));
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
        let e = allocate(&c, &leases, ME, None, now(), 0).unwrap_err();
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
            None,
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.subnet, "10.244.16.0/24".parse().unwrap());
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
            None,
            now(),
            0,
        )
        .unwrap();
        assert_eq!(a.subnet, "255.255.255.192/26".parse().unwrap());
    }
}
