//! The WireGuard UAPI socket, `/var/run/wireguard/flannel-wg.sock` as a userspace
//! WireGuard keeps it (`$WEFT_WG_UAPI_DIR` moves the directory: tests run several nodes on
//! one filesystem), so that `wg show` works on a weft node. A thread answers each
//! connection's requests ([`crate::wg::uapi`]) from the state the dataplane publishes
//! every tick; `set` is refused. The socket is root's alone (mode 0600 in a 0700
//! directory), as it carries the private key.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::wg::uapi::{self, Device};

/// Where the sockets are, unless `$WEFT_WG_UAPI_DIR` says otherwise.
pub(crate) const DIR: &str = "/var/run/wireguard";

/// The state the socket answers from, published by the dataplane.
pub(crate) type Published = Arc<Mutex<Device>>;

/// A serving socket; dropping it stops the thread and removes the file.
pub(crate) struct UapiSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UapiSocket {
    /// Serves `<dir>/<dev>.sock` from `state`. Refused when a live process answers there
    /// already (a stale file is replaced).
    pub(crate) fn start(dir: &Path, dev: &str, state: Published) -> io::Result<UapiSocket> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let path = dir.join(format!("{dev}.sock"));
        if UnixStream::connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} answers already: another WireGuard has {dev}",
                    path.display()
                ),
            ));
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weft-wg-uapi".into())
            .spawn(move || serve(&listener, &flag, &state))?;
        Ok(UapiSocket {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UapiSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, stop: &AtomicBool, state: &Mutex<Device>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                if let Err(e) = answer(conn, state) {
                    tracing::debug!(error = %e, "wireguard: UAPI connection");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!(error = %e, "wireguard: UAPI socket");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Answers one connection's requests until it closes (or stalls for 2 seconds).
fn answer(mut conn: UnixStream, state: &Mutex<Device>) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut input = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match uapi::parse(&input).map_err(io::Error::other)? {
            Some((req, used)) => {
                input.drain(..used);
                let reply = {
                    let dev = state.lock().unwrap_or_else(|e| e.into_inner());
                    uapi::respond(&req, &dev)
                };
                conn.write_all(reply.as_bytes())?;
            }
            None if input.len() > 1 << 20 => return Err(io::Error::other("request too long")),
            None => {
                let n = conn.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                input.extend_from_slice(&chunk[..n]);
            }
        }
    }
}
