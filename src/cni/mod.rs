//! `weft-cni`: flannel's CNI plugin (flannel-io/cni-plugin), so that weft can be installed
//! as `/opt/cni/bin/flannel` under the conflist kube-flannel.yml ships. It reads the node's
//! subnet.env, builds the delegate's config as flannel's plugin does (a `bridge` named by
//! the network, host-local IPAM with a range per family over the node's IPv4 and IPv6
//! subnets and routes to the cluster networks), saves it per container, and runs the
//! delegate through the CNI exec protocol.
//!
//! The protocol is written here rather than taken from a crate: the one Rust CNI crate
//! (`cni-plugin` 0.2, last released 2021) delegates only through an async runtime and
//! parses results into its own types, while this plugin must pass the delegate's result
//! through byte for byte and keep every key of the delegate's config it does not know.
//! So configs stay `serde_json` maps, as flannel's plugin keeps them.
//!
//! Layout: this file is the protocol (commands, environment, versions, error objects);
//! [`flannel`] the pure config building; [`exec`] finding and running the delegate;
//! [`plugin`] the commands; `gc_status` the 1.1 verbs GC and STATUS.

pub mod exec;
pub mod flannel;
mod gc_status;
pub mod plugin;

use std::collections::HashMap;

use serde_json::{json, Value};

/// CNI versions this plugin speaks, as flannel's (libcni's `version.All`): CHECK needs
/// 0.4.0 or later, GC and STATUS 1.1.0. A config without `cniVersion` is 0.1.0, as libcni
/// reads it.
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The latest of [`SUPPORTED_VERSIONS`].
pub const LATEST: &str = "1.1.0";

/// The CNI spec's well-known error codes.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (a transient condition, such as no subnet.env yet).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests (1.1.0).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
}

/// A CNI error object: printed on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The spec's code (or the delegate's).
    pub code: u32,
    /// What went wrong, naming the cause.
    pub msg: String,
    /// More detail, if any.
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The error object, in `version`'s shape.
    pub fn to_json(&self, version: &str) -> String {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v.to_string()
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)
    }
}

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Check a container's attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Remove what belongs to attachments the runtime no longer has (1.1.0).
    Gc,
    /// Say whether ADD can be served (1.1.0).
    Status,
}

/// What the runtime passed in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_PATH`: where plugins are.
    pub path: Vec<String>,
}

impl Invocation {
    /// Reads the `CNI_*` variables the spec requires for the command.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Invocation, CniError> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND").map(String::as_str) {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("GC") => Command::Gc,
            Some("STATUS") => Command::Status,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, GC, STATUS or VERSION"),
                ))
            }
            None => return Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        };
        // GC and STATUS have no attachment: the spec requires CNI_PATH for GC only.
        let need = match command {
            Command::Version | Command::Status => vec![],
            Command::Gc => vec!["CNI_PATH"],
            // DEL may come after the namespace is gone, so without CNI_NETNS.
            Command::Del => vec!["CNI_CONTAINERID", "CNI_PATH", "CNI_IFNAME"],
            Command::Add | Command::Check => {
                vec!["CNI_CONTAINERID", "CNI_PATH", "CNI_NETNS", "CNI_IFNAME"]
            }
        };
        let missing: Vec<&str> = need.into_iter().filter(|k| get(k).is_none()).collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "required environment variables missing: {}",
                    missing.join(", ")
                ),
            ));
        }
        let container_id = get("CNI_CONTAINERID").cloned().unwrap_or_default();
        if !container_id.is_empty() && !cni_name(&container_id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_CONTAINERID {container_id:?} has invalid characters (libcni's skel allows [a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
            ));
        }
        if let Some(ifname) = get("CNI_IFNAME") {
            check_ifname(ifname)?;
        }
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Invocation {
            command,
            container_id,
            path,
        })
    }
}

/// The netconf keys flannel's plugin and libcni read (`types.NetConf` and flannel's
/// `NetConf`): Go's `encoding/json` matches each of them in any case.
const NETCONF_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "capabilities",
    "ipam",
    "dns",
    "args",
    "prevResult",
    "runtimeConfig",
    "subnetFile",
    "dataDir",
    "delegate",
];

/// A netconf key as Go reads it into flannel's struct: the key itself, or the same key in
/// another case when no field has that exact name (the map holds keys sorted, so among
/// several spellings the last in that order wins, not the document's).
pub fn key<'a>(map: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| {
        map.iter()
            .rev()
            .find(|(k, _)| !NETCONF_KEYS.contains(&k.as_str()) && k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// libcni's rule for container IDs and network names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn cni_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// libcni's interface name check: at most 15 bytes, not `.` or `..`, no `/`, `:` or space.
fn check_ifname(name: &str) -> Result<(), CniError> {
    let bad = |why: &str| {
        Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME {name:?} {why}"),
        ))
    };
    if name.len() > 15 {
        return bad("is too long: interface names have at most 15 characters");
    }
    if name == "." || name == ".." {
        return bad("is . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad("contains / or : or whitespace");
    }
    Ok(())
}

/// The VERSION answer.
pub fn version_result() -> String {
    json!({"cniVersion": LATEST, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

/// A CNI version as numbers, for ordering (`None`: not `x.y.z`).
pub fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

/// Whether `version` is `at_least` or later.
pub fn at_least(version: &str, at_least: &str) -> bool {
    version_tuple(version) >= version_tuple(at_least) && version_tuple(version).is_some()
}

/// Parses a network config from stdin: a JSON object with a supported `cniVersion`.
pub fn parse_config(stdin: &[u8]) -> Result<serde_json::Map<String, Value>, CniError> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("cannot decode the network config on stdin: {e}"),
        )
    })?;
    let Value::Object(map) = v else {
        return Err(CniError::new(
            code::DECODE,
            "the network config on stdin is not a JSON object",
        ));
    };
    // libcni reads a config without cniVersion as 0.1.0.
    let version = match key(&map, "cniVersion").and_then(Value::as_str) {
        None | Some("") => "0.1.0",
        Some(v) => v,
    };
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    match key(&map, "name").and_then(Value::as_str) {
        None | Some("") => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "missing network name (the config's \"name\")",
            ))
        }
        Some(n) if !cni_name(n) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("network name {n:?} has invalid characters (libcni allows [a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
            ))
        }
        Some(_) => {}
    }
    Ok(map)
}

/// Whether `version` knows CHECK (0.4.0 and later).
pub fn has_check(version: &str) -> bool {
    !matches!(version, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_is_checked_per_command() {
        let add = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ]);
        let i = Invocation::from_env(&add).unwrap();
        assert_eq!(i.command, Command::Add);
        assert_eq!(i.path, ["/opt/cni/bin", "/usr/lib/cni"]);
        let mut no_netns = add.clone();
        no_netns.remove("CNI_NETNS");
        let e = Invocation::from_env(&no_netns).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        // DEL needs no namespace.
        no_netns.insert("CNI_COMMAND".into(), "DEL".into());
        assert_eq!(
            Invocation::from_env(&no_netns).unwrap().command,
            Command::Del
        );
        let v = Invocation::from_env(&env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(v.command, Command::Version);
        // GC needs CNI_PATH alone; STATUS nothing.
        let gc = Invocation::from_env(&env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")])).unwrap();
        assert_eq!(
            (gc.command, gc.path.as_slice()),
            (Command::Gc, &["/x".to_string()][..])
        );
        let st = Invocation::from_env(&env(&[("CNI_COMMAND", "STATUS")])).unwrap();
        assert_eq!(st.command, Command::Status);
        for bad in [
            env(&[]),
            env(&[("CNI_COMMAND", "GC")]),
            env(&[("CNI_COMMAND", "NOPE")]),
        ] {
            assert_eq!(
                Invocation::from_env(&bad).unwrap_err().code,
                code::INVALID_ENV
            );
        }
        for (k, v) in [
            ("CNI_CONTAINERID", "../../etc"),
            ("CNI_CONTAINERID", "_x"),
            ("CNI_IFNAME", "a-sixteen-chars!"),
            ("CNI_IFNAME", "eth:0"),
            ("CNI_IFNAME", ".."),
        ] {
            let mut bad = add.clone();
            bad.insert(k.into(), v.into());
            assert_eq!(
                Invocation::from_env(&bad).unwrap_err().code,
                code::INVALID_ENV,
                "{k}={v}"
            );
        }
    }

    #[test]
    fn configs_need_json_and_a_supported_version() {
        assert_eq!(parse_config(b"{not json").unwrap_err().code, code::DECODE);
        assert_eq!(parse_config(b"[1]").unwrap_err().code, code::DECODE);
        let e = parse_config(br#"{"cniVersion":"0.5.0","name":"n","type":"flannel"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        for v in SUPPORTED_VERSIONS {
            let text = format!(r#"{{"cniVersion":"{v}","name":"n","type":"flannel"}}"#);
            assert!(parse_config(text.as_bytes()).is_ok(), "{v}");
        }
        // No cniVersion: 0.1.0, as libcni reads it. No name, or a bad one: refused, as
        // libcni's skel refuses it.
        assert!(parse_config(br#"{"name":"n","type":"flannel"}"#).is_ok());
        // Keys in any case, as Go's encoding/json reads them.
        let m = parse_config(br#"{"CNIVersion":"0.5.0","Name":"n"}"#).unwrap_err();
        assert_eq!(m.code, code::INCOMPATIBLE_VERSION);
        let m = parse_config(br#"{"cniversion":"1.0.0","NAME":"n","SubnetFile":"/x"}"#).unwrap();
        assert_eq!(key(&m, "subnetFile"), Some(&Value::from("/x")));
        for bad in [
            r#"{"type":"flannel"}"#,
            r#"{"name":"","type":"flannel"}"#,
            r#"{"name":"-x","type":"flannel"}"#,
        ] {
            assert_eq!(
                parse_config(bad.as_bytes()).unwrap_err().code,
                code::INVALID_CONFIG,
                "{bad}"
            );
        }
        assert!(!has_check("0.3.1") && has_check("0.4.0") && has_check("1.0.0"));
        assert!(at_least("1.1.0", "1.1.0") && at_least("1.10.0", "1.2.0"));
        assert!(!at_least("1.0.0", "1.1.0") && !at_least("junk", "0.1.0"));
    }

    #[test]
    fn error_and_version_objects() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "no subnet.env");
        let v: Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion":"1.0.0","code":11,"msg":"no subnet.env"})
        );
        let v: Value = serde_json::from_str(&version_result()).unwrap();
        assert_eq!(v["supportedVersions"][6], "1.1.0");
        assert_eq!(v["cniVersion"], "1.1.0");
    }
}
