//! The CNI 1.1 verbs, with the semantics the spec and libcni give them (flannel's own
//! plugin takes them as no-ops):
//!
//! - **STATUS**: fails with code 50 (plugin not available) while the node's subnet.env is
//!   missing or unreadable, or the delegate is not on `CNI_PATH`, so a runtime reports the
//!   network not ready instead of failing each ADD; otherwise asks the delegate when it
//!   speaks 1.1.0.
//! - **GC**: every delegate config saved for a container that is not among
//!   `cni.dev/valid-attachments` (`cni.dev/attachments` in the 1.1.0 tag of the spec) is a
//!   leaked attachment: the delegate gets its DEL (releasing host-local's address; with
//!   `CNI_IFNAME=eth0`, the name runtimes give pods, as the saved config records none) and
//!   the file goes. GC is then forwarded to the delegate when it speaks 1.1.0. Errors do not
//!   stop the sweep; they are reported together.
//!
//! Both need a 1.1.0 config: libcni sends neither to an older list.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{Map, Value};

use super::{code, exec, flannel, CniError, Invocation};

fn require_1_1(version: &str, verb: &str) -> Result<(), CniError> {
    if super::at_least(version, "1.1.0") {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{verb} needs cniVersion 1.1.0 or later, not {version}"),
        ))
    }
}

/// STATUS: ready to serve ADD, or code 50 with why not.
pub(super) fn status(
    inv: &Invocation,
    conf: &flannel::PluginConf,
    version: &str,
) -> Result<String, CniError> {
    require_1_1(version, "STATUS")?;
    let not_available = |e: CniError| CniError::new(code::PLUGIN_NOT_AVAILABLE, e.msg);
    let env = flannel::subnet_env(conf).map_err(not_available)?;
    if inv.path.is_empty() {
        // No CNI_PATH (optional for STATUS): the delegate cannot be looked for.
        return Ok(String::new());
    }
    forward(inv, conf, &env, "STATUS", Map::new()).map_err(|e| match e.code {
        code::INVALID_ENV => not_available(e),
        _ => e,
    })?;
    Ok(String::new())
}

/// GC: releases the attachments the runtime no longer has, then forwards GC.
pub(super) fn gc(
    inv: &Invocation,
    cfg: &Map<String, Value>,
    conf: &flannel::PluginConf,
    version: &str,
) -> Result<String, CniError> {
    require_1_1(version, "GC")?;
    let valid = valid_containers(cfg)?;
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(&conf.data_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            let msg = format!("cannot list {}: {e}", conf.data_dir.display());
            return Err(CniError::new(code::IO_FAILURE, msg));
        }
        Ok(d) => d.flatten().collect(),
    };
    for e in entries {
        let id = e.file_name().to_string_lossy().into_owned();
        if valid.contains(&id) || !e.path().is_file() {
            continue;
        }
        if let Err(err) = release(inv, &e.path(), &id) {
            errors.push(err);
        }
    }
    let mut keys = Map::new();
    for k in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        if let Some(v) = cfg.get(k) {
            keys.insert(k.into(), v.clone());
        }
    }
    // Without subnet.env there is no delegate config to forward with: nothing to collect.
    if let Ok(env) = flannel::subnet_env(conf) {
        if let Err(e) = forward(inv, conf, &env, "GC", keys) {
            errors.push(e);
        }
    }
    match errors.first() {
        None => Ok(String::new()),
        Some(first) => Err(CniError::new(
            first.code,
            errors
                .iter()
                .map(|e| e.msg.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

/// The container IDs among the attachments libcni lists as valid.
fn valid_containers(cfg: &Map<String, Value>) -> Result<HashSet<String>, CniError> {
    let list = ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .iter()
        .find_map(|k| cfg.get(*k))
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "GC without cni.dev/valid-attachments: nothing is removed on a guess",
            )
        })?;
    let Value::Array(list) = list else {
        let msg = "cni.dev/valid-attachments must be an array";
        return Err(CniError::new(code::INVALID_CONFIG, msg));
    };
    Ok(list
        .iter()
        .filter_map(|a| a.get("containerID")?.as_str().map(String::from))
        .collect())
}

/// DEL through the delegate for a leaked attachment, then its saved config removed.
fn release(inv: &Invocation, saved: &Path, id: &str) -> Result<(), CniError> {
    let bytes = std::fs::read(saved).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("cannot read {}: {e}", saved.display()),
        )
    })?;
    if let Ok(Value::Object(delegate)) = serde_json::from_slice::<Value>(&bytes) {
        let plugin = exec::find(&inv.path, flannel::delegate_type(&delegate)?)?;
        let env = [
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ];
        exec::run_env(&plugin, "DEL", &bytes, &env)?;
    }
    std::fs::remove_file(saved).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("cannot remove {}: {e}", saved.display()),
        )
    })
}

/// Runs `command` on the delegate, with the config ADD would give it plus `extra`, when the
/// delegate speaks 1.1.0; an older one (Debian's plugins 1.1.1) knows neither verb.
fn forward(
    inv: &Invocation,
    conf: &flannel::PluginConf,
    env: &flannel::FlannelEnv,
    command: &str,
    extra: Map<String, Value>,
) -> Result<(), CniError> {
    let mut delegate = flannel::delegate_conf(conf, env)?;
    let plugin = exec::find(&inv.path, flannel::delegate_type(&delegate)?)?;
    if !exec::versions(&plugin)?.iter().any(|v| v == "1.1.0") {
        return Ok(());
    }
    delegate.extend(extra);
    exec::run(
        &plugin,
        command,
        Value::Object(delegate).to_string().as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{code, plugin::handle};

    fn run(command: &str, conf: &str) -> Result<String, u32> {
        let env: HashMap<String, String> = [("CNI_COMMAND", command), ("CNI_PATH", "/nonexistent")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        handle(&env, conf.as_bytes()).map_err(|(e, _)| e.code)
    }

    #[test]
    fn gc_and_status_need_a_1_1_config_and_gc_its_attachments() {
        let dir = std::env::temp_dir().join(format!("weft-cni-gc-{}", std::process::id()));
        let conf = |v: &str, extra: &str| {
            format!(
                r#"{{"cniVersion":"{v}","name":"cbr0","type":"flannel","subnetFile":"{0}/none.env","dataDir":"{0}/data"{extra}}}"#,
                dir.display()
            )
        };
        for verb in ["GC", "STATUS"] {
            assert_eq!(
                run(verb, &conf("1.0.0", "")),
                Err(code::INCOMPATIBLE_VERSION)
            );
        }
        // No subnet.env: STATUS says not available; GC has nothing to forward and no
        // saved configs, so it succeeds, but only with the attachments listed.
        assert_eq!(
            run("STATUS", &conf("1.1.0", "")),
            Err(code::PLUGIN_NOT_AVAILABLE)
        );
        assert_eq!(run("GC", &conf("1.1.0", "")), Err(code::INVALID_CONFIG));
        let valid = r#","cni.dev/valid-attachments":[{"containerID":"x","ifname":"eth0"}]"#;
        assert_eq!(run("GC", &conf("1.1.0", valid)), Ok(String::new()));
        // The 1.1.0 tag's key is read too.
        let old_key = r#","cni.dev/attachments":[]"#;
        assert_eq!(run("GC", &conf("1.1.0", old_key)), Ok(String::new()));
    }
}
