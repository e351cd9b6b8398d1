//! Running the firewall tools (`iptables-save`, `iptables-restore`, `nft`): the one place
//! either mode starts a program, feeding it a script on stdin and taking its output. A
//! tool that is not installed is its own error, so a removal on a host without it is a
//! no-op rather than a failure, without matching message text.

use std::io::Write;
use std::process::{Command, Stdio};

/// Why a tool gave no output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ToolError {
    /// The program could not be started (not installed): what, and the package.
    Missing(String),
    /// It ran and failed, or its pipes broke: what it said.
    Failed(String),
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolError::Missing(m) | ToolError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<ToolError> for String {
    fn from(e: ToolError) -> String {
        e.to_string()
    }
}

/// Runs `program args` with `stdin` on its standard input (from Debian's `package`);
/// returns its standard output.
pub(super) fn run(
    program: &str,
    args: &[&str],
    stdin: &str,
    package: &str,
) -> Result<String, ToolError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            ToolError::Missing(format!("cannot run {program}: {e} (install {package})"))
        })?;
    let broke = |e: std::io::Error| ToolError::Failed(format!("{program}: {e}"));
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes()).map_err(broke)?;
    }
    let o = child.wait_with_output().map_err(broke)?;
    if !o.status.success() {
        let mut line = program.to_string();
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        return Err(ToolError::Failed(format!(
            "{line} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_failure_and_absence_are_told_apart() {
        assert_eq!(run("cat", &[], "abc", "coreutils"), Ok("abc".to_string()));
        let failed = run("sh", &["-c", "echo nope >&2; exit 3"], "", "dash").unwrap_err();
        assert_eq!(
            failed,
            ToolError::Failed("sh -c echo nope >&2; exit 3 failed: nope".into())
        );
        let missing = run("weft-no-such-tool", &[], "", "nothing").unwrap_err();
        assert!(matches!(missing, ToolError::Missing(m) if m.contains("install nothing")));
    }
}
