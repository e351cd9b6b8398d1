//! `/run/flannel/subnet.env`: what the flannel CNI plugin reads (`FLANNEL_NETWORK`,
//! `FLANNEL_SUBNET`, `FLANNEL_IPV6_NETWORK`, `FLANNEL_IPV6_SUBNET`, `FLANNEL_MTU`,
//! `FLANNEL_IPMASQ`), written the way flanneld's `WriteSubnetFile` writes it, atomically.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

/// The contents of subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The cluster network (`FLANNEL_NETWORK`); `None` in an IPv6-only network, whose
    /// subnet.env flanneld writes without the IPv4 pair.
    pub network: Option<Ipv4Net>,
    /// The node's subnet (`FLANNEL_SUBNET` is its first usable address with its length).
    pub subnet: Option<Ipv4Net>,
    /// The cluster's IPv6 network (`FLANNEL_IPV6_NETWORK`), when IPv6 is enabled.
    pub ipv6_network: Option<Ipv6Net>,
    /// The node's IPv6 subnet (`FLANNEL_IPV6_SUBNET` is its first address with its length).
    pub ipv6_subnet: Option<Ipv6Net>,
    /// Pod MTU (`FLANNEL_MTU`).
    pub mtu: u32,
    /// Whether flannel masquerades (`FLANNEL_IPMASQ`); the CNI plugin sets `ipMasq` to the
    /// opposite.
    pub ipmasq: bool,
}

/// Why subnet.env could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// A variable is missing or malformed.
    #[error("subnet.env: {0}")]
    Invalid(String),
}

impl SubnetEnv {
    /// The file's text, in flanneld's order and spelling (pkg/subnet/subnet.go
    /// WriteSubnetFile): each subnet as its first address with its length, each pair only
    /// when set.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(n) = self.network {
            s += &format!("FLANNEL_NETWORK={n}\n");
        }
        if let Some(sn) = self.subnet {
            let first = Ipv4Addr::from(u32::from(sn.network()).wrapping_add(1));
            s += &format!("FLANNEL_SUBNET={first}/{}\n", sn.prefix_len());
        }
        if let Some(n) = self.ipv6_network {
            s += &format!("FLANNEL_IPV6_NETWORK={n}\n");
        }
        if let Some(sn) = self.ipv6_subnet {
            let first = Ipv6Addr::from(u128::from(sn.network()).wrapping_add(1));
            s += &format!("FLANNEL_IPV6_SUBNET={first}/{}\n", sn.prefix_len());
        }
        s + &format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq)
    }

    /// Parses subnet.env text: `KEY=VALUE` lines; blank lines, `#` comments, `export `
    /// prefixes, quotes and unknown keys are tolerated. Either family's pair may be absent
    /// (an IPv4-only or an IPv6-only network), not both, and neither may be half there.
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let bad = |m: String| SubnetEnvError::Invalid(m);
        let (mut network, mut subnet, mut mtu, mut ipmasq) = (None, None, None, None);
        let (mut ipv6_network, mut ipv6_subnet) = (None, None);
        let cidr4 = |k: &str, v: &str| {
            v.parse::<Ipv4Net>()
                .map_err(|_| bad(format!("{k} {v:?} is not a CIDR")))
        };
        let cidr6 = |k: &str, v: &str| {
            v.parse::<Ipv6Net>()
                .map_err(|_| bad(format!("{k} {v:?} is not an IPv6 CIDR")))
        };
        for (k, v) in entries(text) {
            match k {
                "FLANNEL_NETWORK" => network = Some(cidr4(k, v)?),
                "FLANNEL_SUBNET" => subnet = Some(cidr4(k, v)?),
                "FLANNEL_IPV6_NETWORK" => ipv6_network = Some(cidr6(k, v)?),
                "FLANNEL_IPV6_SUBNET" => ipv6_subnet = Some(cidr6(k, v)?.trunc()),
                "FLANNEL_MTU" => {
                    mtu = Some(
                        v.parse::<u32>()
                            .map_err(|_| bad(format!("FLANNEL_MTU {v:?} is not a number")))?,
                    )
                }
                "FLANNEL_IPMASQ" => {
                    ipmasq =
                        Some(v.parse::<bool>().map_err(|_| {
                            bad(format!("FLANNEL_IPMASQ {v:?} is not true or false"))
                        })?)
                }
                _ => {}
            }
        }
        let missing = |k: &str| bad(format!("{k} is missing"));
        let pair = |a: bool, b: bool, ka: &str, kb: &str| match (a, b) {
            (true, false) => Err(missing(kb)),
            (false, true) => Err(missing(ka)),
            _ => Ok(a),
        };
        let v4 = pair(
            network.is_some(),
            subnet.is_some(),
            "FLANNEL_NETWORK",
            "FLANNEL_SUBNET",
        )?;
        let v6 = pair(
            ipv6_network.is_some(),
            ipv6_subnet.is_some(),
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_IPV6_SUBNET",
        )?;
        if !v4 && !v6 {
            return Err(missing("FLANNEL_NETWORK (or FLANNEL_IPV6_NETWORK)"));
        }
        Ok(SubnetEnv {
            network,
            subnet: subnet.map(|s| s.trunc()),
            ipv6_network,
            ipv6_subnet,
            mtu: mtu.ok_or_else(|| missing("FLANNEL_MTU"))?,
            ipmasq: ipmasq.ok_or_else(|| missing("FLANNEL_IPMASQ"))?,
        })
    }

    /// Reads and parses a file.
    pub fn read(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let text = fs::read_to_string(path).map_err(|source| SubnetEnvError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The previous subnet recorded in `path` (`FLANNEL_SUBNET`), if the file exists and
    /// holds exactly one valid CIDR there: the allocation's second choice. Read on its own,
    /// as flanneld's ReadCIDRFromSubnetFile reads it, so the other keys do not matter.
    pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
        previous_cidr::<Ipv4Net>(path, "FLANNEL_SUBNET").map(|n| n.trunc())
    }

    /// The previous IPv6 subnet recorded in `path` (`FLANNEL_IPV6_SUBNET`), as
    /// [`SubnetEnv::previous_subnet`] reads the IPv4 one (flanneld's
    /// ReadIP6CIDRFromSubnetFile): an IPv6-only file written by flanneld counts too.
    pub fn previous_ipv6_subnet(path: &Path) -> Option<Ipv6Net> {
        previous_cidr::<Ipv6Net>(path, "FLANNEL_IPV6_SUBNET").map(|n| n.trunc())
    }

    /// Writes the file atomically: a temporary file in the same directory, flushed to disk,
    /// then renamed over the target, so the CNI plugin never reads half a file. Creates the
    /// directory if needed.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir)?;
        crate::atomic_file::write(path, self.render().as_bytes())
    }
}

/// The `KEY=VALUE` entries of subnet.env text, tolerantly: blank lines and `#` comments
/// skipped, an `export ` prefix and quotes around the value removed, keys and values
/// trimmed.
fn entries(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line.split_once('=')?;
        Some((k.trim(), v.trim().trim_matches('"')))
    })
}

/// The CIDR under `key` in the file at `path`, as flanneld reads a previous subnet: the
/// last line with the key, split at commas, entries that do not parse skipped, and only a
/// single valid entry taken (flanneld logs "more than 1 entry" and uses none).
fn previous_cidr<T: std::str::FromStr>(path: &Path, key: &str) -> Option<T> {
    let text = fs::read_to_string(path).ok()?;
    let value = entries(&text).filter(|(k, _)| *k == key).last()?.1;
    let mut valid = value.split(',').filter_map(|c| c.trim().parse::<T>().ok());
    match (valid.next(), valid.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            network: "10.244.0.0/16".parse().ok(),
            subnet: "10.244.1.0/24".parse().ok(),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1450,
            ipmasq: false,
        }
    }

    #[test]
    fn renders_like_flanneld() {
        assert_eq!(
            env().render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn parse_round_trip_and_tolerance() {
        assert_eq!(SubnetEnv::parse(&env().render()).unwrap(), env());
        let text = "# written by flanneld\nexport FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_WHATEVER=1\n\nFLANNEL_SUBNET=\"10.244.1.1/24\"\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        assert_eq!(SubnetEnv::parse(text).unwrap(), env());
        let e = SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLANNEL_SUBNET is missing"), "{e}");
        let e = SubnetEnv::parse(&env().render().replace("1450", "big"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLANNEL_MTU \"big\""), "{e}");
    }

    #[test]
    fn atomic_write_and_previous_subnet() {
        let dir = std::env::temp_dir().join(format!("weft-subnet-env-{}", std::process::id()));
        let path = dir.join("run/flannel/subnet.env");
        env().write(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), env());
        assert_eq!(
            SubnetEnv::previous_subnet(&path),
            Some("10.244.1.0/24".parse().unwrap())
        );
        let mut e2 = env();
        e2.mtu = 1472;
        e2.write(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap().mtu, 1472);
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(SubnetEnv::previous_subnet(&dir.join("absent")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn dual() -> SubnetEnv {
        SubnetEnv {
            ipv6_network: Some("fd00:10:244::/56".parse().unwrap()),
            ipv6_subnet: Some("fd00:10:244:1::/64".parse().unwrap()),
            ..env()
        }
    }

    /// flanneld's WriteSubnetFile (pkg/subnet/subnet.go:70, flannel cdf76059) writes
    /// `"FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\n"`, then
    /// `"FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s\n"` with the subnet's IP incremented
    /// by one, then `"FLANNEL_MTU=%d\nFLANNEL_IPMASQ=%t\n"`; addresses in Go's compressed
    /// form. The expected texts are those format strings filled in by hand.
    #[test]
    fn renders_dual_stack_like_flanneld() {
        let want = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        assert_eq!(dual().render(), want);
        assert_eq!(SubnetEnv::parse(want).unwrap(), dual());
        // Go's net.IP.String: the longest run of zero groups is the one compressed, a
        // single zero group never is.
        let e = SubnetEnv {
            ipv6_network: Some("fc00::/48".parse().unwrap()),
            ipv6_subnet: Some("fc00:0:0:1::/64".parse().unwrap()),
            ..env()
        };
        let want = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        assert_eq!(e.render(), want);
        let e = SubnetEnv {
            ipv6_network: Some("2001:db8:0:0:1::/80".parse().unwrap()),
            ipv6_subnet: Some("2001:db8:0:0:1:2::/96".parse().unwrap()),
            ..env()
        };
        assert!(e.render().contains(
            "FLANNEL_IPV6_NETWORK=2001:db8:0:0:1::/80\nFLANNEL_IPV6_SUBNET=2001:db8::1:2:0:1/96\n"
        ));
        let e = SubnetEnv::parse(&want.replace("fc00:0:0:1::1/64", "fc00:0:0:1::1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLANNEL_IPV6_SUBNET \"fc00:0:0:1::1\" is not an IPv6 CIDR"),
            "{e}"
        );
    }

    /// An IPv6-only node's file: flanneld's WriteSubnetFile (subnet.go:70) skips the IPv4
    /// pair when EnableIPv4 is false. The values are those of flannel's CNI plugin test's
    /// IPv6-only file (flannel_linux_test.go:76, which starts with an empty line), the
    /// text WriteSubnetFile's format strings make of them.
    #[test]
    fn renders_and_reads_ipv6_only_like_flanneld() {
        let want = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
        let e = SubnetEnv {
            network: None,
            subnet: None,
            ipv6_network: "fc00::/48".parse().ok(),
            ipv6_subnet: "fc00::/64".parse().ok(),
            mtu: 1472,
            ipmasq: true,
        };
        assert_eq!(e.render(), want);
        assert_eq!(SubnetEnv::parse(want).unwrap(), e);
        // Half a pair, or no pair at all: named.
        let e = SubnetEnv::parse(
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("FLANNEL_IPV6_SUBNET is missing"));
        let e = SubnetEnv::parse("FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n");
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("FLANNEL_NETWORK (or FLANNEL_IPV6_NETWORK) is missing"));
    }

    /// flanneld's main_test.go (flannel cdf76059): ReadIP6CIDRFromSubnetFile takes a single
    /// valid CIDR, skips invalid ones, and gives none for several; an IPv6-only file as
    /// flannel's CNI plugin tests write it (flannel_linux_test.go:76) has one.
    #[test]
    fn previous_ipv6_subnet_as_flanneld_reads_it() {
        let dir = std::env::temp_dir().join(format!("weft-subnet-env6-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("subnet.env");
        for (text, want) in [
            ("FLANNEL_IPV6_SUBNET=fd00::/64,not-a-cidr,fd01::/64\n", None),
            ("FLANNEL_IPV6_SUBNET=not-a-cidr\n", None),
            ("FLANNEL_IPV6_SUBNET=fd00::/64,not-a-cidr\n", Some("fd00::/64")),
            (
                "\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
                Some("fc00::/64"),
            ),
            ("FLANNEL_NETWORK=10.244.0.0/16\n", None),
        ] {
            std::fs::write(&path, text).unwrap();
            let want: Option<Ipv6Net> = want.map(|w| w.parse().unwrap());
            assert_eq!(SubnetEnv::previous_ipv6_subnet(&path), want, "{text}");
        }
        dual().write(&path).unwrap();
        assert_eq!(
            SubnetEnv::previous_ipv6_subnet(&path),
            Some("fd00:10:244:1::/64".parse().unwrap())
        );
        assert_eq!(
            SubnetEnv::previous_subnet(&path),
            Some("10.244.1.0/24".parse().unwrap())
        );
        // The IPv4 one is read on its own too, as flanneld's ReadCIDRFromSubnetFile reads it.
        std::fs::write(&path, "FLANNEL_SUBNET=10.244.9.1/24\n").unwrap();
        assert_eq!(
            SubnetEnv::previous_subnet(&path),
            Some("10.244.9.0/24".parse().unwrap())
        );
        assert_eq!(SubnetEnv::previous_ipv6_subnet(&dir.join("absent")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
