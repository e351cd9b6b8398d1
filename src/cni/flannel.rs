//! flannel's plugin logic as pure functions: read the plugin's own keys, and build the
//! delegate's config from them and the node's subnet.env, exactly as flannel-io/cni-plugin
//! does (`flannel.go`, `flannel_linux.go`).

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::{code, CniError};
use ipnet::{Ipv4Net, Ipv6Net};

/// flannel's default `subnetFile`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// flannel's default `dataDir` (delegate configs saved per container, for DEL).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// The flannel plugin's own configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// The network's name (`name`, e.g. `cbr0`): the delegate gets it.
    pub name: String,
    /// The config's `cniVersion`: the delegate speaks it too.
    pub cni_version: String,
    /// Where the node's subnet.env is.
    pub subnet_file: PathBuf,
    /// Where delegate configs are saved.
    pub data_dir: PathBuf,
    /// The `delegate` object (type, hairpinMode, isDefaultGateway, ...).
    pub delegate: Map<String, Value>,
    /// The top-level `ipam` object, the base of the delegate's IPAM.
    pub ipam: Map<String, Value>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

/// Reads flannel's keys from a network config (already version-checked).
pub fn plugin_conf(cfg: &Map<String, Value>) -> Result<PluginConf, CniError> {
    let string = |k: &str, default: &str| -> Result<String, CniError> {
        match super::key(cfg, k) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Ok(default.to_string()),
            Some(_) => Err(invalid(format!("{k:?} must be a string"))),
        }
    };
    let object = |k: &str| -> Result<Map<String, Value>, CniError> {
        match super::key(cfg, k) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(_) => Err(invalid(format!("{k:?} must be an object"))),
        }
    };
    let mut delegate = object("delegate")?;
    if delegate.get("type").is_some_and(|t| !t.is_string()) {
        return Err(invalid(
            "'delegate' dictionary, if present, must have a (string) 'type' field",
        ));
    }
    for k in ["name", "ipam"] {
        if delegate.contains_key(k) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("'delegate' dictionary must not have a '{k}' field: flannel sets it"),
            ));
        }
    }
    if let Some(rc) = super::key(cfg, "runtimeConfig").filter(|v| !v.is_null()) {
        delegate.insert("runtimeConfig".into(), rc.clone());
    }
    Ok(PluginConf {
        name: string("name", "")?,
        cni_version: string("cniVersion", "")?,
        subnet_file: string("subnetFile", DEFAULT_SUBNET_FILE)?.into(),
        data_dir: string("dataDir", DEFAULT_DATA_DIR)?.into(),
        delegate,
        ipam: object("ipam")?,
    })
}

/// subnet.env as flannel's plugin reads it (`loadFlannelSubnetEnv`): `KEY=value` lines,
/// other lines ignored (an `export KEY=` line is no key, a quoted value no number or
/// CIDR), `FLANNEL_NETWORK` and `FLANNEL_IPV6_NETWORK` comma-separated lists (duplicates
/// collapsed), the CIDRs' host bits masked, `FLANNEL_IPMASQ` true only when it says `true`.
/// Either family may be absent (an IPv4-only or an IPv6-only node), not both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelEnv {
    /// FLANNEL_NETWORK: each a route for the pods.
    pub networks: Vec<Ipv4Net>,
    /// FLANNEL_SUBNET, masked: host-local's IPv4 range.
    pub subnet: Option<Ipv4Net>,
    /// FLANNEL_IPV6_NETWORK: each a route for the pods.
    pub ipv6_networks: Vec<Ipv6Net>,
    /// FLANNEL_IPV6_SUBNET, masked: host-local's IPv6 range.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// FLANNEL_MTU.
    pub mtu: u32,
    /// FLANNEL_IPMASQ.
    pub ipmasq: bool,
}

/// Adds `n` to `list` unless it is there (the plugin's `isSubnetAlreadyPresent`).
fn push_new<T: PartialEq>(list: &mut Vec<T>, n: T) {
    if !list.contains(&n) {
        list.push(n);
    }
}

impl FlannelEnv {
    /// Parses `text` from `path` (named in errors).
    pub fn parse(text: &str, path: &std::path::Path) -> Result<FlannelEnv, CniError> {
        let bad = |k: &str, v: &str| invalid(format!("{}: {k}={v} is not valid", path.display()));
        let cidr4 = |k: &str, v: &str| {
            crate::gojson::parse_ipv4_cidr(v)
                .map(|n| n.trunc())
                .ok_or_else(|| bad(k, v))
        };
        let cidr6 = |k: &str, v: &str| {
            v.parse::<Ipv6Net>()
                .map(|n| n.trunc())
                .map_err(|_| bad(k, v))
        };
        let (mut networks, mut subnet, mut mtu, mut ipmasq) = (Vec::new(), None, None, None);
        let (mut ipv6_networks, mut ipv6_subnet) = (Vec::new(), None);
        for line in text.lines() {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            match k {
                // A repeated key replaces the list, as the plugin's does.
                "FLANNEL_NETWORK" => {
                    networks.clear();
                    for c in v.split(',') {
                        push_new(&mut networks, cidr4(k, c)?);
                    }
                }
                "FLANNEL_SUBNET" => subnet = Some(cidr4(k, v)?),
                "FLANNEL_IPV6_NETWORK" => {
                    ipv6_networks.clear();
                    for c in v.split(',') {
                        push_new(&mut ipv6_networks, cidr6(k, c)?);
                    }
                }
                "FLANNEL_IPV6_SUBNET" => ipv6_subnet = Some(cidr6(k, v)?),
                "FLANNEL_MTU" => mtu = Some(v.parse::<u32>().map_err(|_| bad(k, v))?),
                "FLANNEL_IPMASQ" => ipmasq = Some(v == "true"),
                _ => {}
            }
        }
        // The plugin's `missing`: a family's network or subnet may stand for both.
        let missing: Vec<&str> = [
            (
                "FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK",
                networks.is_empty() && ipv6_networks.is_empty(),
            ),
            (
                "FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET",
                subnet.is_none() && ipv6_subnet.is_none(),
            ),
            ("FLANNEL_MTU", mtu.is_none()),
            ("FLANNEL_IPMASQ", ipmasq.is_none()),
        ]
        .iter()
        .filter(|(_, m)| *m)
        .map(|(k, _)| *k)
        .collect();
        match (mtu, ipmasq) {
            (Some(mtu), Some(ipmasq)) if missing.is_empty() => Ok(FlannelEnv {
                networks,
                subnet,
                ipv6_networks,
                ipv6_subnet,
                mtu,
                ipmasq,
            }),
            _ => Err(invalid(format!(
                "{} is missing {}",
                path.display(),
                missing.join(", ")
            ))),
        }
    }
}

/// Reads and parses the node's subnet.env: a missing file is "try again later" (flanneld
/// or weft has not written it yet); a malformed one names the key.
pub fn subnet_env(conf: &PluginConf) -> Result<FlannelEnv, CniError> {
    let path = &conf.subnet_file;
    let text = std::fs::read_to_string(path).map_err(|e| {
        let c = if e.kind() == std::io::ErrorKind::NotFound {
            code::TRY_AGAIN_LATER
        } else {
            code::IO_FAILURE
        };
        CniError::new(
            c,
            format!(
                "cannot read {}: {e}; is weft (or flanneld) running on this node? Check its log",
                path.display()
            ),
        )
    })?;
    FlannelEnv::parse(&text, path)
}

/// The delegate's config for ADD: the plugin's `delegate` with flannel's defaults (type
/// `bridge`, `ipMasq` = not FLANNEL_IPMASQ, `mtu` = FLANNEL_MTU, `isGateway` for a bridge,
/// the network's name and version) and [`delegate_ipam`].
pub fn delegate_conf(conf: &PluginConf, env: &FlannelEnv) -> Result<Map<String, Value>, CniError> {
    let mut d = conf.delegate.clone();
    d.insert("name".into(), Value::String(conf.name.clone()));
    d.entry("type").or_insert_with(|| json!("bridge"));
    d.entry("ipMasq").or_insert_with(|| json!(!env.ipmasq));
    d.entry("mtu").or_insert_with(|| json!(env.mtu));
    if d.get("type").and_then(Value::as_str) == Some("bridge") {
        d.entry("isGateway").or_insert_with(|| json!(true));
    }
    if !conf.cni_version.is_empty() {
        d.insert("cniVersion".into(), json!(conf.cni_version));
    }
    d.insert("ipam".into(), Value::Object(delegate_ipam(conf, env)?));
    Ok(d)
}

/// The delegate's IPAM, as the plugin's `getDelegateIPAM` builds it: the config's `ipam`
/// with every key kept, `type` host-local unless given, `ranges` replaced by one range set
/// per family the node has (IPv4 first: `[[{subnet: v4}], [{subnet: v6}]]`), and a route
/// to each FLANNEL_NETWORK then each FLANNEL_IPV6_NETWORK after any routes it gives.
pub fn delegate_ipam(conf: &PluginConf, env: &FlannelEnv) -> Result<Map<String, Value>, CniError> {
    let mut ipam = conf.ipam.clone();
    ipam.entry("type").or_insert_with(|| json!("host-local"));
    let v4 = env.subnet.map(|s| s.to_string());
    let v6 = env.ipv6_subnet.map(|s| s.to_string());
    let ranges: Vec<Value> = v4
        .into_iter()
        .chain(v6)
        .map(|subnet| json!([{ "subnet": subnet }]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = match ipam.get("routes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(r)) if r.iter().all(Value::is_object) => r.clone(),
        Some(_) => return Err(invalid("ipam.routes must be an array of route objects")),
    };
    let v4 = env.networks.iter().map(|n| n.to_string());
    let v6 = env.ipv6_networks.iter().map(|n| n.to_string());
    routes.extend(v4.chain(v6).map(|dst| json!({ "dst": dst })));
    ipam.insert("routes".into(), Value::Array(routes));
    Ok(ipam)
}

/// The delegate's plugin type.
pub fn delegate_type(d: &Map<String, Value>) -> Result<&str, CniError> {
    d.get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .ok_or_else(|| invalid("the delegate config has no valid 'type'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conflist kube-flannel.yml ships (flannel's Documentation/kube-flannel.yml,
    /// cni-conf.json), as a runtime hands its first plugin to the plugin: the plugin's
    /// object with the list's name and cniVersion added.
    const KUBE_FLANNEL_CONFLIST: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    fn first_plugin() -> Map<String, Value> {
        let list: Value = serde_json::from_str(KUBE_FLANNEL_CONFLIST).unwrap();
        let mut p = list["plugins"][0].as_object().unwrap().clone();
        p.insert("name".into(), list["name"].clone());
        p.insert("cniVersion".into(), list["cniVersion"].clone());
        p
    }

    fn env() -> FlannelEnv {
        // What weft (and flanneld) write: FLANNEL_SUBNET is the first address.
        parse_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap()
    }

    fn parse_env(text: &str) -> Result<FlannelEnv, CniError> {
        FlannelEnv::parse(text, std::path::Path::new("subnet.env"))
    }

    /// flannel-io/cni-plugin's `loadFlannelSubnetEnv` (flannel.go:129): a list of networks,
    /// duplicates collapsed, host bits masked, IPMASQ true only for `true`, `export` lines
    /// and quoted values not understood.
    #[test]
    fn subnet_env_is_read_as_flannels_plugin_reads_it() {
        let e = parse_env("FLANNEL_NETWORK=10.244.0.0/16,10.245.0.1/16,10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=yes\n").unwrap();
        let nets: Vec<String> = e.networks.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.244.0.0/16", "10.245.0.0/16"]);
        assert_eq!(e.subnet, Some("10.244.7.0/24".parse().unwrap()));
        assert_eq!(e.ipv6_subnet, None);
        assert!(!e.ipmasq);
        let d = delegate_conf(&plugin_conf(&first_plugin()).unwrap(), &e).unwrap();
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst": "10.244.0.0/16"}, {"dst": "10.245.0.0/16"}])
        );
        let exported = parse_env("export FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap_err();
        assert!(
            exported.msg.contains("missing FLANNEL_NETWORK"),
            "{exported}"
        );
        let quoted = parse_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=\"1450\"\nFLANNEL_IPMASQ=true\n").unwrap_err();
        assert!(quoted.msg.contains("FLANNEL_MTU"), "{quoted}");
        let none = parse_env("").unwrap_err();
        assert!(
            none.msg
                .contains("missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"),
            "{none}"
        );
        // Dual-stack: both families, IPv6 lists like IPv4 ones.
        let v6 = parse_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48,fc00::1/48,fd00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
        let nets: Vec<String> = v6.ipv6_networks.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["fc00::/48", "fd00::/48"]);
        assert_eq!(v6.ipv6_subnet, Some("fc00:0:0:7::/64".parse().unwrap()));
        // One family's network and the other's subnet satisfy the plugin's `missing`, so
        // only a key that is bad is named.
        let bad = parse_env("FLANNEL_IPV6_NETWORK=10.244.0.0/16\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap_err();
        assert!(
            bad.msg
                .contains("FLANNEL_IPV6_NETWORK=10.244.0.0/16 is not valid"),
            "{bad}"
        );
    }

    #[test]
    fn dual_stack_delegate_gets_a_range_and_routes_per_family() {
        let e = parse_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap();
        let d = delegate_conf(&plugin_conf(&first_plugin()).unwrap(), &e).unwrap();
        assert_eq!(
            d["ipam"],
            json!({
                "type": "host-local",
                "ranges": [[{"subnet": "10.244.7.0/24"}], [{"subnet": "fd00:10:244:7::/64"}]],
                "routes": [{"dst": "10.244.0.0/16"}, {"dst": "fd00:10:244::/56"}]
            })
        );
        assert_eq!(d["ipMasq"], true);
        assert_eq!(d["hairpinMode"], true);
        // A given `ranges` is replaced, as the plugin replaces it.
        let mut p = first_plugin();
        p.insert(
            "ipam".into(),
            json!({"ranges": [[{"subnet": "192.0.2.0/24"}]]}),
        );
        let d = delegate_conf(&plugin_conf(&p).unwrap(), &e).unwrap();
        assert_eq!(
            d["ipam"]["ranges"][1],
            json!([{"subnet": "fd00:10:244:7::/64"}])
        );
        assert_eq!(d["ipam"]["ranges"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn kube_flannel_conflist_gives_flannels_bridge_delegate() {
        let conf = plugin_conf(&first_plugin()).unwrap();
        assert_eq!(conf.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(conf.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let d = delegate_conf(&conf, &env()).unwrap();
        assert_eq!(
            Value::Object(d),
            json!({
                "name": "cbr0",
                "cniVersion": "0.3.1",
                "type": "bridge",
                "hairpinMode": true,
                "isDefaultGateway": true,
                "isGateway": true,
                "ipMasq": false,
                "mtu": 1450,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.244.7.0/24"}]],
                    "routes": [{"dst": "10.244.0.0/16"}]
                }
            })
        );
    }

    #[test]
    fn the_delegates_own_choices_win_and_user_routes_come_first() {
        let mut p = first_plugin();
        p.insert(
            "delegate".into(),
            json!({"type": "ipvlan", "master": "eth0", "mtu": 1400, "ipMasq": true}),
        );
        p.insert(
            "ipam".into(),
            json!({"dataDir": "/tmp/x", "routes": [{"dst": "192.0.2.0/24"}]}),
        );
        p.insert("runtimeConfig".into(), json!({"portMappings": []}));
        p.insert("subnetFile".into(), json!("/tmp/n1/subnet.env"));
        let conf = plugin_conf(&p).unwrap();
        assert_eq!(conf.subnet_file, PathBuf::from("/tmp/n1/subnet.env"));
        let d = delegate_conf(&conf, &env()).unwrap();
        assert_eq!(d["type"], "ipvlan");
        assert_eq!(d["mtu"], 1400);
        assert_eq!(d["ipMasq"], true);
        assert!(
            !d.contains_key("isGateway"),
            "isGateway is for bridges only"
        );
        assert_eq!(d["runtimeConfig"], json!({"portMappings": []}));
        assert_eq!(d["ipam"]["dataDir"], "/tmp/x");
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst": "192.0.2.0/24"}, {"dst": "10.244.0.0/16"}])
        );
    }

    #[test]
    fn bad_delegates_are_refused_with_the_field() {
        for (delegate, code) in [
            (json!({"type": 7}), code::INVALID_CONFIG),
            (json!({"name": "x"}), code::UNSUPPORTED_FIELD),
            (json!({"ipam": {}}), code::UNSUPPORTED_FIELD),
            (json!("bridge"), code::INVALID_CONFIG),
        ] {
            let mut p = first_plugin();
            p.insert("delegate".into(), delegate.clone());
            let e = plugin_conf(&p).unwrap_err();
            assert_eq!(e.code, code, "{delegate}: {e}");
        }
        let mut p = first_plugin();
        p.insert("ipam".into(), json!({"routes": "10.0.0.0/8"}));
        let e = delegate_conf(&plugin_conf(&p).unwrap(), &env()).unwrap_err();
        assert!(e.msg.contains("ipam.routes"), "{e}");
    }

    #[test]
    fn subnet_env_missing_is_try_again_and_a_missing_key_is_named() {
        let dir = std::env::temp_dir().join(format!("weft-cni-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = first_plugin();
        p.insert(
            "subnetFile".into(),
            json!(dir.join("subnet.env").display().to_string()),
        );
        let conf = plugin_conf(&p).unwrap();
        assert_eq!(subnet_env(&conf).unwrap_err().code, code::TRY_AGAIN_LATER);
        std::fs::write(
            dir.join("subnet.env"),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let e = subnet_env(&conf).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("FLANNEL_MTU"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
