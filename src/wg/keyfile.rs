//! The node's private key, kept in a file as flanneld keeps it: `/run/flannel/wgkey`, or
//! `$WIREGUARD_KEY_FILE`; made when missing (base64, no newline, mode 0400, its directory
//! made 0755) and read back on every later start, so the public key in the lease, and every
//! peer's configuration of this node, survive a restart.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::key::{Key, KeyError};

/// flanneld's default key file.
pub const DEFAULT_PATH: &str = "/run/flannel/wgkey";

/// The environment variable that names another key file (flanneld's).
pub const ENV: &str = "WIREGUARD_KEY_FILE";

/// Why the key file could not give a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file exists but could not be read, or a new one not written.
    #[error("WireGuard key file {path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        err: std::io::Error,
    },
    /// The file holds no key.
    #[error("WireGuard key file {path} holds no private key: {err}; remove it to have a new key made, or write one there with `wg genkey > {path}`")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why its text is no key.
        err: KeyError,
    },
}

/// The key file's path: `$WIREGUARD_KEY_FILE` when set (`env` is its value), else
/// [`DEFAULT_PATH`].
pub fn path(env: Option<String>) -> PathBuf {
    env.map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// A key read or made, and a warning when the file is readable by others than its owner
/// (as `wg` warns of a world-accessible key).
#[derive(Debug)]
pub struct Loaded {
    /// The private key.
    pub key: Key,
    /// Whether this start made it.
    pub created: bool,
    /// Set when the file's mode lets group or others read it.
    pub warning: Option<String>,
}

/// Reads the private key at `path`, or makes one there when there is no file.
pub fn load_or_create(path: &Path) -> Result<Loaded, KeyFileError> {
    let io = |err| KeyFileError::Io {
        path: path.to_path_buf(),
        err,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Key::generate().map_err(io)?;
            write_new(path, &key).map_err(io)?;
            Ok(Loaded {
                key,
                created: true,
                warning: None,
            })
        }
        Err(e) => Err(io(e)),
        Ok(meta) => {
            let text = std::fs::read_to_string(path).map_err(io)?;
            let key = Key::parse(&text).map_err(|err| KeyFileError::Malformed {
                path: path.to_path_buf(),
                err,
            })?;
            let mode = meta.permissions().mode() & 0o777;
            let warning = (mode & 0o077 != 0).then(|| {
                format!(
                    "WireGuard key file {} has mode {mode:04o}: others than its owner can read the private key; chmod 0400 it",
                    path.display()
                )
            });
            Ok(Loaded {
                key,
                created: false,
                warning,
            })
        }
    }
}

/// Writes a new key file: its directory made 0755 when missing, the file created 0400
/// (never readable by others, not even while it is written) and never over an existing one.
fn write_new(path: &Path, key: &Key) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    f.write_all(key.to_base64().as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-wgkey-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_missing_key_is_made_0400_and_the_same_key_is_read_back() {
        let d = dir("made");
        let p = d.join("sub").join("wgkey");
        let first = load_or_create(&p).unwrap();
        assert!(first.created && first.warning.is_none());
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.len(), 44, "base64 without a newline: {text:?}");
        let again = load_or_create(&p).unwrap();
        assert!(!again.created);
        assert_eq!(again.key, first.key);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_wg_genkey_file_reads_and_loose_modes_are_warned_of() {
        let d = dir("loose");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("wgkey");
        let key = Key::generate().unwrap();
        std::fs::write(&p, format!("{}\n", key.to_base64())).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let got = load_or_create(&p).unwrap();
        assert_eq!(got.key, key);
        let w = got.warning.unwrap();
        assert!(w.contains("mode 0644") && w.contains("chmod 0400"), "{w}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_malformed_key_file_is_refused_by_name_and_left_alone() {
        let d = dir("bad");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("wgkey");
        std::fs::write(&p, "hello").unwrap();
        let e = load_or_create(&p).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("wg genkey"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "hello");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_path_is_flanneld_s() {
        assert_eq!(path(None), PathBuf::from("/run/flannel/wgkey"));
        assert_eq!(path(Some("/etc/wg/k".into())), PathBuf::from("/etc/wg/k"));
    }
}
