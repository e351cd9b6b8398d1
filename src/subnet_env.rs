//! `/run/flannel/subnet.env`: what the flannel CNI plugin reads (`FLANNEL_NETWORK`,
//! `FLANNEL_SUBNET`, `FLANNEL_MTU`, `FLANNEL_IPMASQ`), written the way flanneld's
//! `WriteSubnetFile` writes it, atomically.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

/// The contents of subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The cluster network (`FLANNEL_NETWORK`).
    pub network: Ipv4Net,
    /// The node's subnet (`FLANNEL_SUBNET` is its first usable address with its length).
    pub subnet: Ipv4Net,
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
    /// The file's text, in flanneld's order and spelling.
    pub fn render(&self) -> String {
        let first = Ipv4Addr::from(u32::from(self.subnet.network()).wrapping_add(1));
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            first,
            self.subnet.prefix_len(),
            self.mtu,
            self.ipmasq
        )
    }

    /// Parses subnet.env text: `KEY=VALUE` lines; blank lines, `#` comments, `export `
    /// prefixes, quotes and unknown keys (the IPv6 ones) are tolerated.
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let bad = |m: String| SubnetEnvError::Invalid(m);
        let (mut network, mut subnet, mut mtu, mut ipmasq) = (None, None, None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "FLANNEL_NETWORK" => {
                    network = Some(
                        v.parse::<Ipv4Net>()
                            .map_err(|_| bad(format!("FLANNEL_NETWORK {v:?} is not a CIDR")))?,
                    )
                }
                "FLANNEL_SUBNET" => {
                    subnet = Some(
                        v.parse::<Ipv4Net>()
                            .map_err(|_| bad(format!("FLANNEL_SUBNET {v:?} is not a CIDR")))?,
                    )
                }
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
        Ok(SubnetEnv {
            network: network.ok_or_else(|| missing("FLANNEL_NETWORK"))?,
            subnet: subnet.ok_or_else(|| missing("FLANNEL_SUBNET"))?.trunc(),
            ipv6_network: None,
            ipv6_subnet: None,
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

    /// The previous subnet recorded in `path`, if the file exists and is readable: the
    /// allocation's second choice. A missing or corrupt file is no previous subnet.
    pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
        Self::read(path).ok().map(|e| e.subnet)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
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
        let text = "# written by flanneld\nexport FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_IPV6_NETWORK=fd00::/56\n\nFLANNEL_SUBNET=\"10.244.1.1/24\"\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
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
}
