//! The plugin's commands: ADD builds and saves the delegate's config and runs it; DEL runs
//! the delegate with the saved config and forgets it; CHECK asks the delegate; VERSION
//! answers from the spec; GC and STATUS are in [`super::gc_status`].
//!
//! A 1.1.0 config meets delegates that stop at 1.0.0 (Debian's plugins 1.1.1 refuse 1.1.0
//! outright, though 1.1.0 only adds optional result fields): the delegate is then run at
//! 1.0.0 and its result relabelled 1.1.0, which is what libcni's own conversion does.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;

use super::{code, exec, flannel, parse_config, CniError, Command, Invocation};

/// Handles one invocation: `env` is the process environment, `stdin` the network config.
/// Returns what to print on success; on failure the error and the version to print it in.
pub fn handle(env: &HashMap<String, String>, stdin: &[u8]) -> Result<String, (CniError, String)> {
    let fail = |e: CniError| (e, "1.0.0".to_string());
    let inv = Invocation::from_env(env).map_err(fail)?;
    if inv.command == Command::Version {
        return Ok(super::version_result());
    }
    let cfg = parse_config(stdin).map_err(fail)?;
    let version = super::key(&cfg, "cniVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .unwrap_or("0.1.0")
        .to_string();
    let conf = flannel::plugin_conf(&cfg).map_err(|e| (e, version.clone()))?;
    let saved = conf.data_dir.join(&inv.container_id);
    let r = match inv.command {
        Command::Add => add(&inv, &conf, &saved),
        Command::Del => del(&inv, &saved),
        Command::Check => check(&inv, &cfg, &version, &saved),
        Command::Gc => super::gc_status::gc(&inv, &cfg, &conf, &version),
        Command::Status => super::gc_status::status(&inv, &conf, &version),
        Command::Version => unreachable!("answered above"),
    };
    r.map_err(|e| (e, version))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> CniError {
    move |e| CniError::new(code::IO_FAILURE, format!("{what}: {e}"))
}

fn add(inv: &Invocation, conf: &flannel::PluginConf, saved: &PathBuf) -> Result<String, CniError> {
    let env = flannel::subnet_env(conf)?;
    let mut delegate = flannel::delegate_conf(conf, &env)?;
    let plugin = exec::find(&inv.path, flannel::delegate_type(&delegate)?)?;
    let wanted = conf.cni_version.as_str();
    let speaks = delegate_version(&plugin, wanted);
    if speaks != wanted {
        delegate.insert("cniVersion".into(), Value::String(speaks.into()));
    }
    let bytes = Value::Object(delegate).to_string();
    // Saved first, so a DEL after a half-done ADD can still undo it.
    save(saved, bytes.as_bytes())?;
    let out = exec::run(&plugin, "ADD", bytes.as_bytes())?;
    if speaks == wanted {
        return Ok(String::from_utf8_lossy(&out).into_owned());
    }
    let mut result: Value = serde_json::from_slice(&out)
        .map_err(|e| CniError::new(code::DECODE, format!("the delegate's ADD result: {e}")))?;
    result["cniVersion"] = Value::String(wanted.into());
    Ok(result.to_string())
}

/// The version to run the delegate at: the config's, except that a 1.1.0 config runs a
/// delegate that stops at 1.0.0 at 1.0.0.
fn delegate_version<'a>(plugin: &std::path::Path, wanted: &'a str) -> &'a str {
    if wanted != "1.1.0" {
        return wanted;
    }
    match exec::versions(plugin) {
        Ok(v) if !v.iter().any(|x| x == "1.1.0") && v.iter().any(|x| x == "1.0.0") => "1.0.0",
        _ => wanted,
    }
}

fn del(inv: &Invocation, saved: &PathBuf) -> Result<String, CniError> {
    let bytes = match std::fs::read(saved) {
        // Nothing was added for this container (or DEL ran before): nothing to undo.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(io(format!("cannot read {}", saved.display()))(e)),
        Ok(b) => b,
    };
    let Ok(Value::Object(delegate)) = serde_json::from_slice::<Value>(&bytes) else {
        // A corrupt saved config cannot be delegated; forget it so DEL can complete.
        eprintln!(
            "weft-cni: {} is not a JSON object; removing it",
            saved.display()
        );
        let _ = std::fs::remove_file(saved);
        return Ok(String::new());
    };
    let plugin = exec::find(&inv.path, flannel::delegate_type(&delegate)?)?;
    exec::run(&plugin, "DEL", &bytes)?;
    let _ = std::fs::remove_file(saved);
    Ok(String::new())
}

fn check(
    inv: &Invocation,
    cfg: &serde_json::Map<String, Value>,
    version: &str,
    saved: &PathBuf,
) -> Result<String, CniError> {
    if !super::has_check(version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK needs cniVersion 0.4.0 or later, not {version}"),
        ));
    }
    let bytes = std::fs::read(saved).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "no ADD recorded for container {} ({}: {e})",
                inv.container_id,
                saved.display()
            ),
        )
    })?;
    let Ok(Value::Object(mut delegate)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(CniError::new(
            code::DECODE,
            format!("{} is not a JSON object", saved.display()),
        ));
    };
    if let Some(prev) = super::key(cfg, "prevResult") {
        // The delegate may run at an older version than the config (see ADD).
        let mut prev = prev.clone();
        if let (Some(v), Some(p)) = (delegate.get("cniVersion").cloned(), prev.as_object_mut()) {
            p.insert("cniVersion".into(), v);
        }
        delegate.insert("prevResult".into(), prev);
    }
    let plugin = exec::find(&inv.path, flannel::delegate_type(&delegate)?)?;
    exec::run(
        &plugin,
        "CHECK",
        Value::Object(delegate).to_string().as_bytes(),
    )?;
    Ok(String::new())
}

/// Writes `data` to `path` (mode 0600, in a 0700 directory) and syncs it.
fn save(path: &PathBuf, data: &[u8]) -> Result<(), CniError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(path);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("cannot create {}", dir.display())))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot write {}", path.display())))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("cannot write {}", path.display())))
}
