//! The CNI exec protocol from the caller's side: find a plugin on `CNI_PATH`, run it with
//! the runtime's environment (`CNI_COMMAND` set for the call), the config on stdin, and
//! take its result from stdout, or its error object on failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{code, CniError};

/// The first executable file named `plugin` in the `CNI_PATH` directories.
pub fn find(path: &[String], plugin: &str) -> Result<PathBuf, CniError> {
    use std::os::unix::fs::PermissionsExt;
    path.iter()
        .map(|d| Path::new(d).join(plugin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!(
                    "delegate plugin {plugin:?} not found in CNI_PATH ({}); install it there (Debian: containernetworking-plugins in /usr/lib/cni)",
                    path.join(":")
                ),
            )
        })
}

/// Runs `plugin` for `command` (ADD, DEL, CHECK) with `config` on stdin; returns what it
/// printed. A failing plugin's error object comes back as its error, code kept, message
/// prefixed with the plugin's name.
pub fn run(plugin: &Path, command: &str, config: &[u8]) -> Result<Vec<u8>, CniError> {
    run_env(plugin, command, config, &[])
}

/// The versions `plugin` says it speaks (VERSION).
pub fn versions(plugin: &Path) -> Result<Vec<String>, CniError> {
    let out = run(plugin, "VERSION", br#"{"cniVersion":"1.0.0"}"#)?;
    let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    Ok(v["supportedVersions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// As [`run`], with `env` set for the plugin besides `CNI_COMMAND` (GC's DEL of an
/// attachment names its container, which the runtime's environment does not).
pub fn run_env(
    plugin: &Path,
    command: &str,
    config: &[u8],
    env: &[(&str, &str)],
) -> Result<Vec<u8>, CniError> {
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let io = |what: &str, e: std::io::Error| {
        CniError::new(code::IO_FAILURE, format!("{what} delegate {name}: {e}"))
    };
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io("cannot run", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        match stdin.write_all(config) {
            // A plugin need not read its stdin: the CNI skel gives VERSION an empty one,
            // so a plugin that already exited closed the pipe. What it printed counts.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r.map_err(|e| io("cannot write the config to", e))?,
        }
    }
    let out = child.wait_with_output().map_err(|e| io("lost", e))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let reported: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    let field = |k: &str| reported.as_ref().and_then(|v| v.get(k)).cloned();
    let msg = field("msg")
        .and_then(|m| m.as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
    Err(CniError {
        code: field("code")
            .and_then(|c| c.as_u64())
            .map_or(code::IO_FAILURE, |c| c as u32),
        msg: format!("delegate {name} {command} failed ({}): {msg}", out.status),
        details: field("details")
            .and_then(|d| d.as_str().map(String::from))
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_searches_the_path_in_order_and_names_it_when_missing() {
        let dir = std::env::temp_dir().join(format!("weft-cni-find-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("bridge"), "not executable").unwrap();
        std::fs::copy("/bin/true", b.join("bridge")).unwrap();
        let path = vec![a.display().to_string(), b.display().to_string()];
        assert_eq!(find(&path, "bridge").unwrap(), b.join("bridge"));
        let e = find(&path, "ptp").unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("\"ptp\"") && e.msg.contains(&path[0]), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A plugin that exits without reading its config (as the CNI skel's VERSION does)
    /// still answers: a config larger than the pipe holds makes the write fail for sure.
    #[test]
    fn a_plugin_that_never_reads_its_config_still_answers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("weft-cni-noread-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("noread");
        std::fs::write(
            &p,
            "#!/bin/sh\necho '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}'\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let big = vec![b' '; 1 << 20];
        let out = run(&p, "VERSION", &big).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("1.0.0"));
        assert_eq!(versions(&p).unwrap(), ["1.0.0"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_delegates_error_object_is_kept() {
        let dir = std::env::temp_dir().join(format!("weft-cni-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("fails");
        std::fs::write(
            &p,
            "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"bad '$CNI_COMMAND'\"}'\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let e = run(&p, "ADD", b"{}").unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("bad ADD") && e.msg.contains("fails"), "{e}");
        let ok = run(Path::new("/bin/cat"), "ADD", b"{\"x\":1}").unwrap();
        assert_eq!(ok, b"{\"x\":1}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
