//! Phase 2, the underlay: which interface carries the tunnels, which of its addresses the
//! sockets bind, and which address the lease advertises, chosen as flanneld chooses
//! (flannel's `main.go` and `pkg/ipmatch`):
//!
//! 1. each `--iface` in order (a name: that interface and its first IPv4 address; an IP: the
//!    interface holding it, and that IP), the first that exists wins;
//! 2. then each `--iface-regex` in order, matched first against every interface's IPv4
//!    addresses (that address wins), then against interface names (first address);
//! 3. then `--iface-can-reach IP`: the interface and source address the kernel would use to
//!    reach IP;
//! 4. with none of those flags: the interface holding `--public-ip` if it is local, else the
//!    default route's interface.
//!
//! `--public-ip` is what the lease advertises; it may be no local address at all (a node
//! behind NAT), while the sockets bind the chosen interface address. The choice is pure
//! ([`select`]) over what netlink reports ([`Interfaces`]).
//!
//! With IPv6 enabled (net-conf `EnableIPv6`), the IPv6 side is then chosen on the same
//! interface ([`select_v6`]), as flanneld's dual-stack `LookupExtIface`: `--public-ipv6`
//! if it is an address of that interface, else its first global IPv6 address; without
//! `--iface`, `--iface-regex` or `--iface-can-reach` the IPv6 default route must leave by
//! the same interface as the IPv4 one. `--public-ipv6` is what the lease advertises.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use regex::Regex;

use super::{Error, Result, RunArgs};
use crate::backend::{Underlay, UnderlayV6};
use crate::netlink::{Link, Netlink};

/// An address family the underlay is chosen in: IPv4, or IPv6 in an IPv6-only network.
pub(crate) trait Family:
    Copy + Eq + std::str::FromStr + std::fmt::Display + std::fmt::Debug
{
    /// The family's name in messages.
    const NAME: &'static str;
    /// The flag that advertises another address of the family.
    const PUBLIC_FLAG: &'static str;
    /// `ip` if it is of this family.
    fn of(ip: IpAddr) -> Option<Self>;
}

impl Family for Ipv4Addr {
    const NAME: &'static str = "IPv4";
    const PUBLIC_FLAG: &'static str = "--public-ip";
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl Family for Ipv6Addr {
    const NAME: &'static str = "global IPv6";
    const PUBLIC_FLAG: &'static str = "--public-ipv6";
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

/// The interfaces and the addresses of one family (IPv4, or IPv6 in an IPv6-only network)
/// of this namespace, as netlink lists them.
#[derive(Debug, Clone)]
pub(crate) struct Interfaces<A = Ipv4Addr> {
    /// Every link, in index order.
    pub(crate) links: Vec<Link>,
    /// (link index, address), in the kernel's order (an interface's primary first).
    pub(crate) addrs: Vec<(u32, A)>,
    /// The family's default route's interface, if any.
    pub(crate) default_link: Option<u32>,
}

impl<A> Default for Interfaces<A> {
    fn default() -> Self {
        Interfaces {
            links: Vec::new(),
            addrs: Vec::new(),
            default_link: None,
        }
    }
}

impl<A> Default for Selection<A> {
    fn default() -> Self {
        Selection {
            iface: Vec::new(),
            iface_regex: Vec::new(),
            can_reach: None,
            public_ip: None,
        }
    }
}

impl<A: Family> Interfaces<A> {
    fn link(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    fn first_addr(&self, index: u32) -> Option<A> {
        self.addrs.iter().find(|(i, _)| *i == index).map(|a| a.1)
    }

    fn holder(&self, ip: A) -> Option<&Link> {
        self.addrs
            .iter()
            .find(|(_, a)| *a == ip)
            .and_then(|(i, _)| self.link(*i))
    }

    fn summary(&self) -> String {
        self.links
            .iter()
            .map(|l| {
                let a: Vec<String> = self
                    .addrs
                    .iter()
                    .filter(|(i, _)| *i == l.index)
                    .map(|(_, a)| a.to_string())
                    .collect();
                format!("{} [{}]", l.name, a.join(" "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `--iface-can-reach`'s target, and the (interface index, source address) of the route to
/// it, if there is one.
pub(crate) type CanReach = (IpAddr, Option<(u32, IpAddr)>);

/// The selection flags (the addresses of one family).
#[derive(Debug, Clone)]
pub(crate) struct Selection<A = Ipv4Addr> {
    /// `--iface`, in order.
    pub(crate) iface: Vec<String>,
    /// `--iface-regex`, in order.
    pub(crate) iface_regex: Vec<Regex>,
    /// `--iface-can-reach` (of either family), with the (interface, source address) the
    /// kernel would use to reach it, as looked up by [`route_to`].
    pub(crate) can_reach: Option<CanReach>,
    /// `--public-ip` (`--public-ipv6` in an IPv6-only network).
    pub(crate) public_ip: Option<A>,
}

/// Chooses the underlay from `ifs` as flanneld does (see the module documentation); the
/// error lists every attempt and the interfaces there are.
pub(crate) fn select(ifs: &Interfaces, sel: &Selection) -> Result<Underlay> {
    let (link, local_ip) = choose(ifs, sel)?;
    Ok(Underlay {
        name: link.name.clone(),
        mtu: link.mtu,
        local_ip,
        public_ip: sel.public_ip.unwrap_or(local_ip),
        v6: None,
    })
}

/// The interface and address of `A`'s family `ifs` and `sel` choose.
fn choose<'a, A: Family>(ifs: &'a Interfaces<A>, sel: &Selection<A>) -> Result<(&'a Link, A)> {
    let mut tried = Vec::new();
    pick(ifs, sel, &mut tried).ok_or_else(|| {
        Error::NoUnderlay(format!(
            "{} (interfaces here: {})",
            tried.join("; "),
            ifs.summary()
        ))
    })
}

/// An IPv6-only network's underlay, chosen as [`select`] chooses an IPv4 one but among
/// global IPv6 addresses (flanneld's `LookupExtIface` for an IPv6 stack): `--iface` names
/// an interface or one of its IPv6 addresses, `--iface-regex` matches either, else the
/// interface holding `--public-ipv6`, else the IPv6 default route's. It has no IPv4 side:
/// `0.0.0.0` stands for its addresses, as flanneld advertises PublicIP `0.0.0.0` then.
pub(crate) fn select_v6_only(
    ifs: &Interfaces<Ipv6Addr>,
    sel: &Selection<Ipv6Addr>,
) -> Result<Underlay> {
    let (link, local_ip) = choose(ifs, sel)?;
    Ok(Underlay {
        name: link.name.clone(),
        mtu: link.mtu,
        local_ip: Ipv4Addr::UNSPECIFIED,
        public_ip: Ipv4Addr::UNSPECIFIED,
        v6: Some(UnderlayV6 {
            local_ip,
            public_ip: sel.public_ip.unwrap_or(local_ip),
        }),
    })
}

/// The IPv6 side of the underlay on interface `link`, from every global IPv6 address
/// (`addrs`: link index, address); `default_v6` is `Some(the IPv6 default route's
/// interface)` when the interface was chosen by the IPv4 default route, which flanneld
/// then wants to be the IPv6 one's too.
pub(crate) fn select_v6(
    addrs: &[(u32, Ipv6Addr)],
    link: &Link,
    public_ipv6: Option<Ipv6Addr>,
    default_v6: Option<Option<u32>>,
) -> Result<UnderlayV6> {
    let fail = |m: String| Err(Error::NoUnderlay(m));
    match default_v6 {
        Some(None) => return fail(format!("EnableIPv6: no IPv6 default route (flanneld wants one leaving by {}, the IPv4 default route's interface); add one, or choose the interface with --iface", link.name)),
        Some(Some(i)) if i != link.index => return fail(format!("EnableIPv6: the IPv6 default route leaves by interface {i}, not by {}, the IPv4 default route's (flanneld wants them the same); choose the interface with --iface", link.name)),
        _ => {}
    }
    let mine: Vec<Ipv6Addr> = addrs
        .iter()
        .filter(|(i, _)| *i == link.index)
        .map(|a| a.1)
        .collect();
    let local = match public_ipv6 {
        Some(p) if mine.contains(&p) => p,
        Some(p) if addrs.iter().any(|(_, a)| *a == p) => {
            return fail(format!("--public-ipv6 {p} is an address of another interface than {}, the underlay (flanneld: the v6 interface must be the v4 one); choose the interface with --iface", link.name))
        }
        _ => match mine.first() {
            Some(a) => *a,
            None => return fail(format!("EnableIPv6: interface {} has no global IPv6 address; give it one, choose another with --iface, or set EnableIPv6 to false", link.name)),
        },
    };
    Ok(UnderlayV6 {
        local_ip: local,
        public_ip: public_ipv6.unwrap_or(local),
    })
}

impl<A: Family> Interfaces<A> {
    /// `l` with its first address of the family, or `None` with why in `tried`.
    fn with_addr<'a>(
        &'a self,
        l: &'a Link,
        what: &str,
        tried: &mut Vec<String>,
    ) -> Option<(&'a Link, A)> {
        let found = self.first_addr(l.index).map(|a| (l, a));
        if found.is_none() {
            tried.push(format!(
                "{what}: interface {} has no {} address",
                l.name,
                A::NAME
            ));
        }
        found
    }

    /// The first `--iface` (a name, or an address of the family) that exists.
    fn by_iface(&self, iface: &[String], tried: &mut Vec<String>) -> Option<(&Link, A)> {
        for s in iface {
            let what = format!("--iface {s}");
            let found = match s.parse::<A>() {
                Ok(ip) => match self.holder(ip) {
                    Some(l) => Some((l, ip)),
                    None => {
                        tried.push(format!("{what}: no interface has this address"));
                        None
                    }
                },
                Err(_) => match self.links.iter().find(|l| l.name == *s) {
                    Some(l) => self.with_addr(l, &what, tried),
                    None => {
                        tried.push(format!("{what}: no such interface"));
                        None
                    }
                },
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

fn pick<'a, A: Family>(
    ifs: &'a Interfaces<A>,
    sel: &Selection<A>,
    tried: &mut Vec<String>,
) -> Option<(&'a Link, A)> {
    let with_addr =
        |l: &'a Link, what: &str, tried: &mut Vec<String>| ifs.with_addr(l, what, tried);
    if let Some(found) = ifs.by_iface(&sel.iface, tried) {
        return Some(found);
    }
    for re in &sel.iface_regex {
        let what = format!("--iface-regex {re}");
        if let Some((i, a)) = ifs.addrs.iter().find(|(_, a)| re.is_match(&a.to_string())) {
            if let Some(l) = ifs.link(*i) {
                return Some((l, *a));
            }
        }
        match ifs.links.iter().find(|l| re.is_match(&l.name)) {
            Some(l) => {
                if let Some(found) = with_addr(l, &what, tried) {
                    return Some(found);
                }
            }
            None => tried.push(format!("{what}: matches no interface name or address")),
        }
    }
    if let Some((target, route)) = sel.can_reach {
        let what = format!("--iface-can-reach {target}");
        match route.and_then(|(i, src)| Some((ifs.link(i)?, A::of(src)))) {
            Some((l, Some(src))) => return Some((l, src)),
            Some((l, None)) => return with_addr(l, &what, tried),
            None => tried.push(format!("{what}: no route to it")),
        }
    }
    if !sel.iface.is_empty() || !sel.iface_regex.is_empty() || sel.can_reach.is_some() {
        return None;
    }
    if let Some((l, ip)) = sel.public_ip.and_then(|ip| Some((ifs.holder(ip)?, ip))) {
        return with_addr(l, A::PUBLIC_FLAG, tried).map(|(l, _)| (l, ip));
    }
    match ifs.default_link.and_then(|i| ifs.link(i)) {
        Some(l) => with_addr(
            l,
            "the default route's interface (pass --iface or give it an address)",
            tried,
        ),
        None => {
            tried.push(
                "no default route to pick the underlay interface from: pass --iface NAME or --iface IP"
                    .into(),
            );
            None
        }
    }
}

/// The interface index and source address the kernel would use to reach `ip`: a UDP socket
/// of `ip`'s family connected to it (nothing is sent) reports the source address routing
/// chose, and the interface holding that address (among `v4` and `v6`, (link index,
/// address) as netlink lists them) is the one `ip route get` names in the usual case. As
/// flanneld's `GetInterfaceBySpecificIPRouting`, the target may be of the other family than
/// the underlay's: it then names the interface, and the address is that interface's first
/// of the underlay's family.
pub(crate) fn route_to(
    v4: &[(u32, Ipv4Addr)],
    v6: &[(u32, Ipv6Addr)],
    ip: IpAddr,
) -> Option<(u32, IpAddr)> {
    let any: IpAddr = match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    s.connect(SocketAddr::new(ip, 9)).ok()?;
    let src = s.local_addr().ok()?.ip();
    let index = match src {
        IpAddr::V4(a) => v4.iter().find(|(_, x)| *x == a).map(|x| x.0),
        IpAddr::V6(a) => v6.iter().find(|(_, x)| *x == a).map(|x| x.0),
    };
    index.map(|i| (i, src))
}

/// `--iface-can-reach`, looked up ([`route_to`]).
fn can_reach(nl: &Netlink, args: &RunArgs) -> Result<Option<CanReach>> {
    let Some(ip) = args.iface_can_reach else {
        return Ok(None);
    };
    let v4 = nl.ipv4_addrs().map_err(Error::Interfaces)?;
    let v6 = nl.ipv6_addrs().map_err(Error::Interfaces)?;
    Ok(Some((ip, route_to(&v4, &v6, ip))))
}

/// Phase 2: reads the interfaces and chooses the underlay from the flags.
pub fn find_underlay(nl: &Netlink, args: &RunArgs) -> Result<Underlay> {
    let ifs = Interfaces {
        links: nl.links().map_err(Error::Interfaces)?,
        addrs: nl.ipv4_addrs().map_err(Error::Interfaces)?,
        default_link: nl.default_route_link().map_err(Error::Interfaces)?,
    };
    let sel = Selection {
        iface: args.iface.clone(),
        iface_regex: args.iface_regex.clone(),
        can_reach: can_reach(nl, args)?,
        public_ip: args.public_ip,
    };
    select(&ifs, &sel)
}

/// Phase 2, in an IPv6-only network: reads the interfaces and their global IPv6
/// addresses and chooses the underlay from the flags ([`select_v6_only`]).
pub fn find_underlay_v6_only(nl: &Netlink, args: &RunArgs) -> Result<Underlay> {
    let ifs = Interfaces {
        links: nl.links().map_err(Error::Interfaces)?,
        addrs: nl.ipv6_addrs().map_err(Error::Interfaces)?,
        default_link: nl.default_route_link_v6().map_err(Error::Interfaces)?,
    };
    let sel = Selection {
        iface: args.iface.clone(),
        iface_regex: args.iface_regex.clone(),
        can_reach: can_reach(nl, args)?,
        public_ip: args.public_ipv6,
    };
    select_v6_only(&ifs, &sel)
}

/// Phase 2b, when the network has IPv6: the underlay's IPv6 side ([`select_v6`]).
pub fn find_underlay_v6(nl: &Netlink, args: &RunArgs, underlay: &Underlay) -> Result<UnderlayV6> {
    let link = nl
        .link_by_name(&underlay.name)
        .map_err(Error::Interfaces)?
        .ok_or_else(|| Error::NoUnderlay(format!("{} vanished", underlay.name)))?;
    let chosen_by_default = args.iface.is_empty()
        && args.iface_regex.is_empty()
        && args.iface_can_reach.is_none()
        && args.public_ip.is_none();
    let default_v6 = if chosen_by_default {
        Some(nl.default_route_link_v6().map_err(Error::Interfaces)?)
    } else {
        None
    };
    let addrs = nl.ipv6_addrs().map_err(Error::Interfaces)?;
    select_v6(&addrs, &link, args.public_ipv6, default_v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> Link {
        Link {
            mac: None,
            kind: None,
            vxlan: None,
            index,
            name: name.into(),
            mtu: 1500 - index,
            up: true,
        }
    }

    /// lo 127.0.0.1; eth0 192.0.2.1 and 192.0.2.51; eth1 198.51.100.7; bare0 no address;
    /// default route via eth1.
    fn host() -> Interfaces {
        Interfaces {
            links: vec![
                link(1, "lo"),
                link(2, "eth0"),
                link(3, "eth1"),
                link(4, "bare0"),
            ],
            addrs: vec![
                (1, Ipv4Addr::new(127, 0, 0, 1)),
                (2, Ipv4Addr::new(192, 0, 2, 1)),
                (2, Ipv4Addr::new(192, 0, 2, 51)),
                (3, Ipv4Addr::new(198, 51, 100, 7)),
            ],
            default_link: Some(3),
        }
    }

    fn sel(iface: &[&str], regex: &[&str]) -> Selection {
        Selection {
            iface: iface.iter().map(|s| s.to_string()).collect(),
            iface_regex: regex.iter().map(|r| Regex::new(r).unwrap()).collect(),
            ..Selection::default()
        }
    }

    fn chosen(s: &Selection) -> (String, Ipv4Addr, Ipv4Addr) {
        let u = select(&host(), s).unwrap();
        (u.name, u.local_ip, u.public_ip)
    }

    #[test]
    fn the_first_existing_iface_wins_and_an_ip_advertises_itself() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            chosen(&sel(&["nosuch0", "eth0", "eth1"], &[])),
            ("eth0".into(), ip("192.0.2.1"), ip("192.0.2.1"))
        );
        // An address that is not the interface's first is still the one advertised.
        assert_eq!(
            chosen(&sel(&["203.0.113.9", "192.0.2.51"], &[])),
            ("eth0".into(), ip("192.0.2.51"), ip("192.0.2.51"))
        );
        // An interface without an address is skipped, as flanneld skips it.
        assert_eq!(chosen(&sel(&["bare0", "eth1"], &[])).0, "eth1");
    }

    #[test]
    fn regexes_match_addresses_first_then_names_after_every_iface() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            chosen(&sel(&[], &[r"^192\.0\.2\.5"])),
            ("eth0".into(), ip("192.0.2.51"), ip("192.0.2.51"))
        );
        assert_eq!(chosen(&sel(&[], &["^nomatch$", "^eth1$"])).0, "eth1");
        // --iface is tried before any regex, whatever the order on the command line.
        assert_eq!(chosen(&sel(&["eth1"], &["^eth0$"])).0, "eth1");
        assert_eq!(chosen(&sel(&["nosuch0"], &["^eth0$"])).0, "eth0");
    }

    #[test]
    fn can_reach_and_the_defaults() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let any = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut s = Selection {
            can_reach: Some((any("192.0.2.99"), Some((2, any("192.0.2.51"))))),
            ..Selection::default()
        };
        assert_eq!(
            chosen(&s),
            ("eth0".into(), ip("192.0.2.51"), ip("192.0.2.51"))
        );
        // An IPv6 target names the interface (as flanneld's RouteGet), whose first IPv4
        // address is the underlay's.
        s.can_reach = Some((any("2001:db8::99"), Some((2, any("2001:db8::1")))));
        assert_eq!(
            chosen(&s),
            ("eth0".into(), ip("192.0.2.1"), ip("192.0.2.1"))
        );
        s.can_reach = Some((any("2001:db8::99"), Some((4, any("2001:db8:4::1")))));
        let e = select(&host(), &s).unwrap_err().to_string();
        assert!(
            e.contains("--iface-can-reach 2001:db8::99: interface bare0 has no IPv4 address"),
            "{e}"
        );
        // Nothing asked: the default route's interface.
        assert_eq!(chosen(&Selection::default()).0, "eth1");
        // A local --public-ip picks its interface; one behind NAT is advertised while the
        // sockets bind the chosen interface's address.
        s = Selection {
            public_ip: Some(ip("192.0.2.51")),
            ..Selection::default()
        };
        assert_eq!(
            chosen(&s),
            ("eth0".into(), ip("192.0.2.51"), ip("192.0.2.51"))
        );
        s.public_ip = Some(ip("203.0.113.10"));
        assert_eq!(
            chosen(&s),
            ("eth1".into(), ip("198.51.100.7"), ip("203.0.113.10"))
        );
        s.iface = vec!["eth0".into()];
        assert_eq!(
            chosen(&s),
            ("eth0".into(), ip("192.0.2.1"), ip("203.0.113.10"))
        );
    }

    #[test]
    fn nothing_matching_names_every_attempt() {
        let mut s = sel(&["nosuch0", "203.0.113.9", "bare0"], &["^zz"]);
        s.can_reach = Some(("203.0.113.1".parse().unwrap(), None));
        let e = select(&host(), &s).unwrap_err().to_string();
        for want in [
            "--iface nosuch0: no such interface",
            "--iface 203.0.113.9: no interface has this address",
            "--iface bare0: interface bare0 has no IPv4 address",
            "--iface-regex ^zz: matches no interface name or address",
            "--iface-can-reach 203.0.113.1: no route to it",
            "eth0 [192.0.2.1 192.0.2.51]",
        ] {
            assert!(e.contains(want), "{want:?} missing from: {e}");
        }
        let none = Interfaces {
            default_link: None,
            ..host()
        };
        let e = select(&none, &Selection::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no default route"), "{e}");
    }

    #[test]
    fn the_ipv6_side_is_chosen_on_the_same_interface_as_flanneld_chooses_it() {
        let six = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let addrs = [
            (2, six("2001:db8::1")),
            (2, six("2001:db8::51")),
            (3, six("2001:db8:1::7")),
        ];
        let eth0 = link(2, "eth0");
        // The interface's first global address, advertised as it is.
        let u = select_v6(&addrs, &eth0, None, None).unwrap();
        assert_eq!(
            (u.local_ip, u.public_ip),
            (six("2001:db8::1"), six("2001:db8::1"))
        );
        // --public-ipv6 of that interface is its local address too; one of no interface
        // (behind NAT) is advertised while the interface's first address is local.
        let u = select_v6(&addrs, &eth0, Some(six("2001:db8::51")), None).unwrap();
        assert_eq!(u.local_ip, six("2001:db8::51"));
        let u = select_v6(&addrs, &eth0, Some(six("2001:db8:ff::9")), None).unwrap();
        assert_eq!(
            (u.local_ip, u.public_ip),
            (six("2001:db8::1"), six("2001:db8:ff::9"))
        );
        // Refusals, each naming what to change.
        let e = |r: Result<UnderlayV6>| r.unwrap_err().to_string();
        let other = e(select_v6(&addrs, &eth0, Some(six("2001:db8:1::7")), None));
        assert!(
            other.contains("another interface") && other.contains("--iface"),
            "{other}"
        );
        let bare = e(select_v6(&addrs, &link(4, "bare0"), None, None));
        assert!(
            bare.contains("bare0 has no global IPv6 address") && bare.contains("EnableIPv6"),
            "{bare}"
        );
        let none = e(select_v6(&addrs, &eth0, None, Some(None)));
        assert!(none.contains("no IPv6 default route"), "{none}");
        let elsewhere = e(select_v6(&addrs, &eth0, None, Some(Some(3))));
        assert!(elsewhere.contains("not by eth0"), "{elsewhere}");
        assert!(select_v6(&addrs, &eth0, None, Some(Some(2))).is_ok());
    }

    /// An IPv6-only network's underlay: flanneld's `LookupExtIface` for an IPv6 stack,
    /// the same rules over global IPv6 addresses; no IPv4 side (0.0.0.0, as flanneld's
    /// PublicIP then).
    #[test]
    fn an_ipv6_only_underlay_is_chosen_among_ipv6_addresses() {
        let six = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let ifs = Interfaces {
            links: host().links,
            addrs: vec![(2, six("2001:db8::1")), (3, six("2001:db8:1::7"))],
            default_link: Some(3),
        };
        let pick = |sel: Selection<Ipv6Addr>| {
            let u = select_v6_only(&ifs, &sel).unwrap();
            let v6 = u.v6.unwrap();
            assert_eq!(
                (u.local_ip, u.public_ip),
                (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED)
            );
            (u.name, v6.local_ip, v6.public_ip)
        };
        // The IPv6 default route's interface.
        let (eth1, a7) = ("eth1".to_string(), six("2001:db8:1::7"));
        assert_eq!(pick(Selection::default()), (eth1.clone(), a7, a7));
        // --iface by name and by IPv6 address; --iface-regex on an address.
        let by = |iface: &[&str], regex: &[&str]| Selection {
            iface: iface.iter().map(|s| s.to_string()).collect(),
            iface_regex: regex.iter().map(|r| Regex::new(r).unwrap()).collect(),
            ..Selection::default()
        };
        let (eth0, a1) = ("eth0".to_string(), six("2001:db8::1"));
        assert_eq!(pick(by(&["eth0"], &[])), (eth0.clone(), a1, a1));
        assert_eq!(pick(by(&["2001:db8::1"], &[])), (eth0.clone(), a1, a1));
        assert_eq!(pick(by(&[], &["^2001:db8::"])), (eth0.clone(), a1, a1));
        // --public-ipv6 of an interface chooses it; one of none is advertised as it is.
        let public = |ip: &str| Selection {
            public_ip: Some(six(ip)),
            ..Selection::default()
        };
        assert_eq!(pick(public("2001:db8::1")), (eth0.clone(), a1, a1));
        let nat = six("2001:db8:ff::9");
        assert_eq!(pick(public("2001:db8:ff::9")), (eth1, a7, nat));
        // --iface-can-reach: an IPv6 target gives the route's source address; an IPv4 one
        // names the interface, whose first global IPv6 address is taken (flanneld's
        // LookupExtIface for an IPv6 stack).
        let reach = |target: &str, route: (u32, &str)| Selection {
            can_reach: Some((
                target.parse().unwrap(),
                Some((route.0, route.1.parse().unwrap())),
            )),
            ..Selection::default()
        };
        let a2 = six("2001:db8::2");
        let two = Interfaces {
            addrs: vec![(2, a1), (2, a2), (3, a7)],
            ..ifs.clone()
        };
        let u = select_v6_only(&two, &reach("2001:db8::99", (2, "2001:db8::2"))).unwrap();
        assert_eq!((u.name.as_str(), u.v6.unwrap().local_ip), ("eth0", a2));
        assert_eq!(pick(reach("192.0.2.99", (2, "192.0.2.1"))), (eth0, a1, a1));
        // An interface without a global IPv6 address, named.
        let e = select_v6_only(&ifs, &by(&["bare0"], &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bare0 has no global IPv6 address"), "{e}");
    }
}
