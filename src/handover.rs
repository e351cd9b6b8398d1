//! Hand-over: a second `weft run` on a node where weft already runs takes the node over
//! without losing a packet, and the first exits 0 by itself.
//!
//! The successor starts forwarding *beside* its predecessor, and only then tells it to go;
//! the predecessor stops its workers and exits leaving the devices, routes and rules in
//! place ([`crate::teardown`]). The kernel dataplanes' devices and routes are adopted as a
//! restart after a crash adopts them. A userspace dataplane's TUN queues and receiving
//! sockets are *passed* (`SCM_RIGHTS`, [`Shared`]): the successor's workers read the very
//! queues and sockets the predecessor's read, so nothing is detached or closed under
//! traffic. (Attaching new queues beside the old ones and letting the kernel steer to them
//! was tried first and loses packets: a TUN queue's detach moves the last queue into its
//! slot and, for an RCU grace period, drops what flows steered to the moved queue send;
//! and what waits in a queue when it closes is purged. A predecessor that passes nothing
//! (an older weft) is still handed over that way, its sockets steered to the successor's
//! ([`crate::dataplane::filter::successor_steering`]).) The health listeners are
//! `SO_REUSEPORT`: the successor binds beside them.
//!
//! The conversation, one JSON line each way, over a Unix socket in `--state-dir` named
//! after the network namespace (nodes that share a filesystem, as namespaces on one host
//! do, never meet; the successor finds its predecessor's socket in a DaemonSet pod that
//! mounts the state directory from the host):
//!
//! 1. successor: [`Hello`]; predecessor: its [`Identity`] (pid, version, flags, network,
//!    subnet). The successor refuses, and exits with the difference, when the flags
//!    differ; the predecessor carries on untouched;
//! 2. the successor prepares (store, network config, which must be the predecessor's, its
//!    lease, which is the same lease); successor: `share`; predecessor: a [`SharedHeader`]
//!    line carrying its dataplane's descriptors (none for a kernel dataplane);
//! 3. the successor starts forwarding beside it, on those descriptors where they are what
//!    it would have opened, its guards set to leave what they adopted should it fail
//!    ([`crate::teardown::keep_state`]);
//! 4. successor: `take shared` (it reads the passed descriptors: the predecessor just
//!    stops) or `take` (it opened its own: the predecessor steers its sockets to them and
//!    drains its own first); predecessor: `leaving`, then it stops. A predecessor already
//!    stopping on its own (SIGTERM) answers `stopping` instead and stops as it would have:
//!    one of the two wins ([`Handoff::close`]), never both.
//!
//! The path is the successor's from its `take` on: the predecessor leaves it in place, and
//! a weft that stops on its own removes it only while it still holds its own socket open
//! (so no other socket there can share its inode number).
//!
//! A socket nobody listens on (a weft killed with -9) is stale: removed, and the start
//! goes on. A predecessor that accepts and does not answer within [`ANSWER`] is left
//! alone and the successor refuses to start, saying so.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a predecessor has to answer each line.
pub const ANSWER: Duration = Duration::from_secs(5);

/// How long a predecessor waits for its successor between the hello and `take` (the
/// successor reads its store and takes its lease meanwhile).
pub const PREPARE: Duration = Duration::from_secs(120);

/// Why a hand-over did not happen. The predecessor, if any, keeps forwarding in every case.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory or the socket cannot be used.
    #[error("--state-dir {path}: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something listens on the socket but does not answer.
    #[error("a weft at {path} accepted but did not answer within {secs} s; it is left alone. Stop it (its pid: `fuser {path}`), or remove {path} if no weft runs")]
    NoAnswer {
        /// The socket's path.
        path: PathBuf,
        /// The wait.
        secs: u64,
    },
    /// The running weft was stopping on its own when asked to hand over.
    #[error("weft (pid {pid}) was already stopping when asked to hand the node over, and refused: it stops as it would without a successor")]
    Stopping {
        /// The running weft's pid.
        pid: u32,
    },
    /// The running weft answered something else than weft's hand-over.
    #[error("{path}: not a weft hand-over answer ({detail}); the process there is left alone")]
    Garbled {
        /// The socket's path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The running weft was started with other flags.
    #[error("weft (pid {pid}, {version}) already runs on this node with other flags: {diff}. It keeps forwarding. To hand the node over, start this weft with the same flags; to change them, stop that weft first (a userspace node is down until this one forwards)")]
    Flags {
        /// The running weft's pid.
        pid: u32,
        /// Its version.
        version: String,
        /// The flags that differ.
        diff: String,
    },
    /// The running weft forwards another network than the store now holds.
    #[error("weft (pid {pid}) forwards {theirs} but the network config now says {ours}: a change of Network is not a hand-over. It keeps forwarding; stop it and run `weft cleanup` first")]
    Network {
        /// The running weft's pid.
        pid: u32,
        /// Its network.
        theirs: String,
        /// The store's.
        ours: String,
    },
}

/// The successor's first line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Its pid.
    pub pid: u32,
    /// Its version.
    pub version: String,
}

/// What a running weft says about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// Its pid.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// Its flags, by name (secrets by fingerprint).
    pub flags: BTreeMap<String, String>,
    /// The cluster network it forwards.
    pub network: String,
    /// Its lease's subnet.
    pub subnet: String,
    /// Whether it answers `share` (an older weft does not: it is handed over by steering).
    #[serde(default)]
    pub shares: bool,
}

/// The most descriptors one hand-over passes (the kernel's `SCM_MAX_FD`): a dataplane with
/// more is handed over by steering instead.
pub const MAX_FDS: usize = 253;

/// What a predecessor's passed descriptors are, in the order they come: `tun` TUN queues,
/// then `udp` IPv4 sockets, then `udp6` IPv6 sockets (one of each per worker).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedHeader {
    /// The TUN device the queues belong to.
    pub tun_name: String,
    /// Whether the queues carry the virtio-net header (`IFF_VNET_HDR`).
    pub tun_offload: bool,
    /// TUN queues.
    pub tun: usize,
    /// Receiving sockets on the IPv4 underlay address.
    pub udp: usize,
    /// Receiving sockets on the IPv6 underlay address.
    pub udp6: usize,
}

/// A userspace dataplane's TUN queues and receiving sockets, as one weft passes them to
/// its successor: the successor's workers read what the predecessor's read.
#[derive(Debug, Default)]
pub struct Shared {
    /// What they are.
    pub header: SharedHeader,
    /// The descriptors, in the header's order.
    pub fds: Vec<OwnedFd>,
}

impl Shared {
    /// Second descriptors of the same queues and sockets.
    fn duplicate(&self) -> std::io::Result<Shared> {
        Ok(Shared {
            header: self.header.clone(),
            fds: self
                .fds
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<std::io::Result<_>>()?,
        })
    }

    /// The TUN queues, the IPv4 sockets and the IPv6 sockets; `None` unless the header
    /// counts the descriptors there are.
    pub fn split(self) -> Option<[Vec<OwnedFd>; 3]> {
        let h = &self.header;
        if h.tun + h.udp + h.udp6 != self.fds.len() {
            return None;
        }
        let (tun, udp) = (h.tun, h.udp);
        let mut fds = self.fds.into_iter();
        let tun_fds = fds.by_ref().take(tun).collect();
        let udp_fds = fds.by_ref().take(udp).collect();
        Some([tun_fds, udp_fds, fds.collect()])
    }
}

/// The descriptors between this weft and the next or the last: what its userspace
/// dataplane offers while it runs, what a predecessor passed it (for its first start).
#[derive(Debug, Default)]
pub struct Handoff {
    offer: Mutex<Option<Shared>>,
    inherited: Mutex<Option<Shared>>,
    /// The first start read the predecessor's descriptors.
    adopted: AtomicBool,
    /// The successor reads ours.
    successor_shares: AtomicBool,
    /// Where this process stands: [`SERVING`], [`HANDED_OVER`] or [`CLOSING`]. One
    /// switch out of serving wins: a successor's `take` and this process's own stop
    /// cannot both (a `take` answered while the stop tears down what it adopted).
    state: AtomicU8,
}

/// Forwarding, and a successor's `take` would be granted.
const SERVING: u8 = 0;
/// A successor took the node: what runs is its now.
const HANDED_OVER: u8 = 1;
/// Stopping on its own: a `take` is refused.
const CLOSING: u8 = 2;

impl Handoff {
    /// What a successor will be passed (the running dataplane's descriptors), or nothing.
    pub fn offer(&self, shared: Option<Shared>) {
        *self.offer.lock().unwrap_or_else(|e| e.into_inner()) = shared;
    }

    /// What the predecessor passed, for the start that adopts it.
    pub fn inherit(&self, shared: Shared) {
        *self.inherited.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared);
    }

    /// What the predecessor passed, once.
    pub fn take_inherited(&self) -> Option<Shared> {
        self.inherited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Says the predecessor's descriptors are read here.
    pub fn mark_adopted(&self) {
        self.adopted.store(true, Ordering::SeqCst);
    }

    /// Whether this process reads its predecessor's descriptors.
    pub fn adopted(&self) -> bool {
        self.adopted.load(Ordering::SeqCst)
    }

    /// Grants a successor's `take`, unless this process already stops.
    fn hand_over(&self) -> bool {
        self.state
            .compare_exchange(SERVING, HANDED_OVER, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// This process stops: every `take` from now on is refused. Returns whether a
    /// successor took the node first (then the devices, routes and rules are its).
    pub fn close(&self) -> bool {
        match self
            .state
            .compare_exchange(SERVING, CLOSING, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => false,
            Err(now) => now == HANDED_OVER,
        }
    }

    /// Whether a successor took the node.
    pub fn handed_over(&self) -> bool {
        self.state.load(Ordering::SeqCst) == HANDED_OVER
    }

    /// Whether the successor reads this process's descriptors (then nothing needs
    /// steering or draining: stopping is enough).
    pub fn successor_shares(&self) -> bool {
        self.successor_shares.load(Ordering::SeqCst)
    }

    /// Copies of what is offered, or an empty header.
    fn duplicate_offer(&self) -> std::io::Result<Shared> {
        let offer = self.offer.lock().unwrap_or_else(|e| e.into_inner());
        offer
            .as_ref()
            .filter(|s| s.fds.len() <= MAX_FDS)
            .map_or_else(|| Ok(Shared::default()), Shared::duplicate)
    }
}

/// Writes `line` and a newline, `fds` riding with its first byte.
fn send_with_fds(stream: &UnixStream, line: &str, fds: &[OwnedFd]) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let bytes = format!("{line}\n");
    let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(std::io::Error::other(
            "too many descriptors for one message",
        ));
    }
    let iov = [std::io::IoSlice::new(bytes.as_bytes())];
    let sent = rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::NOSIGNAL)?;
    let mut rest = stream;
    rest.write_all(&bytes.as_bytes()[sent..])
}

/// Reads one line (at most 4 KiB) and the descriptors that came with it.
fn recv_with_fds(stream: &UnixStream) -> std::io::Result<(String, Vec<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let got = rustix::net::recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = msg {
            fds.extend(passed);
        }
    }
    if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(std::io::Error::other(
            "the descriptors did not fit the message",
        ));
    }
    let mut len = got.bytes;
    let mut reader = stream;
    // A stream may split the line; the rest comes without descriptors.
    while !buf[..len].contains(&b'\n') {
        if len == buf.len() {
            return Err(std::io::Error::other("a line over 4 KiB"));
        }
        match reader.read(&mut buf[len..])? {
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            n => len += n,
        }
    }
    let line = String::from_utf8_lossy(&buf[..len]).trim_end().to_string();
    Ok((line, fds))
}

/// The hand-over socket in `state_dir` for this network namespace.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    let netns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.st_ino());
    state_dir.join(format!("weft-netns-{netns}.sock"))
}

/// The top-level fields of a `{:#?}` rendering of a struct, by name: one line each at four
/// spaces, a nested value's lines joined to its field's. Fields whose name says secret are
/// kept as a fingerprint only.
pub fn flags_of(debug: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in debug.lines().skip(1).filter(|l| l.starts_with("    ")) {
        let top = line.starts_with("    ") && !line.starts_with("     ");
        match (top, line.trim_start().split_once(": ")) {
            (true, Some((name, value))) => {
                out.insert(name.to_string(), value.trim_end_matches(',').to_string());
                last = Some(name.to_string());
            }
            _ => {
                if let Some(v) = last.as_ref().and_then(|n| out.get_mut(n)) {
                    v.push_str(line.trim());
                }
            }
        }
    }
    for (name, value) in out.iter_mut() {
        *value = value.trim_end_matches(',').to_string();
        if ["password", "token", "secret"]
            .iter()
            .any(|s| name.contains(s))
        {
            *value = format!("fingerprint {:016x}", fnv1a(value.as_bytes()));
        }
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The flags that differ between `ours` and `theirs`, as `--flag (VALUE, running: VALUE)`;
/// flags only one side knows (a newer weft's) are not compared, nor `ignored` ones.
pub fn differences(
    ours: &BTreeMap<String, String>,
    theirs: &BTreeMap<String, String>,
    ignored: &[&str],
) -> Vec<String> {
    ours.iter()
        .filter(|(k, _)| !ignored.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let t = theirs.get(k)?;
            (t != v).then(|| format!("--{} ({v}, running: {t})", k.replace('_', "-")))
        })
        .collect()
}

/// A running weft found at start, that answered.
pub struct Predecessor {
    stream: BufReader<UnixStream>,
    path: PathBuf,
    /// What it said about itself.
    pub identity: Identity,
}

/// Looks for a running weft on this node: `None` where none listens (a stale socket is
/// removed), its identity where one answers with the same flags as `flags`.
pub fn find(
    state_dir: &Path,
    flags: &BTreeMap<String, String>,
    ignored: &[&str],
) -> Result<Option<Predecessor>, Error> {
    let path = socket_path(state_dir);
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale hand-over socket (no weft listens on it)");
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        Err(source) => return Err(Error::Socket { path, source }),
    };
    let mut p = Predecessor {
        stream: BufReader::new(stream),
        path,
        identity: Identity::default(),
    };
    let hello = Hello {
        pid: std::process::id(),
        version: crate::VERSION.to_string(),
    };
    p.send(&serde_json::to_string(&hello).unwrap_or_default())?;
    let line = p.receive(ANSWER)?;
    p.identity = serde_json::from_str(&line).map_err(|e| p.garbled(e.to_string()))?;
    let diff = differences(flags, &p.identity.flags, ignored);
    if !diff.is_empty() {
        return Err(Error::Flags {
            pid: p.identity.pid,
            version: p.identity.version.clone(),
            diff: diff.join(", "),
        });
    }
    Ok(Some(p))
}

impl Predecessor {
    fn send(&mut self, line: &str) -> Result<(), Error> {
        let w = self.stream.get_mut();
        w.write_all(format!("{line}\n").as_bytes())
            .map_err(|source| Error::Socket {
                path: self.path.clone(),
                source,
            })
    }

    fn receive(&mut self, wait: Duration) -> Result<String, Error> {
        let _ = self.stream.get_ref().set_read_timeout(Some(wait));
        let mut line = String::new();
        match self.stream.read_line(&mut line) {
            Ok(0) => Err(self.garbled("it closed the connection".into())),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(Error::NoAnswer {
                    path: self.path.clone(),
                    secs: wait.as_secs(),
                })
            }
            Err(source) => Err(Error::Socket {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn garbled(&self, detail: String) -> Error {
        Error::Garbled {
            path: self.path.clone(),
            detail,
        }
    }

    /// Refuses a predecessor that forwards another network than `network`.
    pub fn check_network(&self, network: &str) -> Result<(), Error> {
        if self.identity.network == network {
            return Ok(());
        }
        Err(Error::Network {
            pid: self.identity.pid,
            theirs: self.identity.network.clone(),
            ours: network.to_string(),
        })
    }

    /// Asks for the predecessor's dataplane descriptors (an empty [`Shared`] from a
    /// kernel dataplane, or from a weft that does not pass them).
    pub fn share(&mut self) -> Result<Shared, Error> {
        if !self.identity.shares {
            return Ok(Shared::default());
        }
        if !self.stream.buffer().is_empty() {
            return Err(self.garbled("it said more than its identity".into()));
        }
        self.send("\"share\"")?;
        let _ = self.stream.get_ref().set_read_timeout(Some(ANSWER));
        let (line, fds) = recv_with_fds(self.stream.get_ref()).map_err(|source| Error::Socket {
            path: self.path.clone(),
            source,
        })?;
        let header = serde_json::from_str(&line).map_err(|e| self.garbled(e.to_string()))?;
        Ok(Shared { header, fds })
    }

    /// Tells the predecessor to go, once this process forwards (on its descriptors when
    /// `shared`); returns its pid. It answers `leaving`, then stops its workers and exits.
    pub fn take(mut self, shared: bool) -> Result<u32, Error> {
        self.send(if shared {
            "\"take shared\""
        } else {
            "\"take\""
        })?;
        let line = self.receive(ANSWER)?;
        if line == "\"stopping\"" {
            return Err(Error::Stopping {
                pid: self.identity.pid,
            });
        }
        if line != "\"leaving\"" {
            return Err(self.garbled(format!("answered {line:?} to take")));
        }
        Ok(self.identity.pid)
    }
}

/// This process's hand-over socket; dropping it removes the socket file, unless the node
/// was handed over (the path is the successor's now) or another socket has replaced it.
pub struct Listener {
    path: PathBuf,
    inode: u64,
    handoff: Arc<Handoff>,
    /// The listening socket, held open until the file is dealt with: while it is open its
    /// inode cannot be freed, so a successor's socket at the path cannot get the same
    /// number. (Closed first, ext4 gives the next bind the number just freed, and an inode
    /// comparison would take the successor's socket for ours and remove it.)
    _socket: UnixListener,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Closing first: a `take` arriving from here on is refused, so the path cannot
        // become a successor's between the check and the removal.
        if self.handoff.close() {
            return;
        }
        if std::fs::metadata(&self.path).is_ok_and(|m| m.st_ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Listens for a successor from a thread: passes it `handoff`'s offer when asked; on its
/// `take` (granted unless [`Handoff::close`] came first), sets `stop`.
pub fn listen(
    state_dir: &Path,
    identity: Identity,
    stop: Arc<AtomicBool>,
    handoff: Arc<Handoff>,
) -> Result<Listener, Error> {
    let path = socket_path(state_dir);
    let socket = |source| Error::Socket {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(socket)?;
    // Ours now: a predecessor's (or a stale one) is replaced.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(socket)?;
    let inode = std::fs::metadata(&path).map_err(socket)?.st_ino();
    let held = listener.try_clone().map_err(socket)?;
    let kept = handoff.clone();
    std::thread::Builder::new()
        .name("weft-handover".into())
        .spawn(move || {
            // Talking on a Unix socket needs no capability.
            crate::privilege::drop_all_in_this_thread();
            for conn in listener.incoming().flatten() {
                match serve(conn, &identity, &handoff) {
                    Ok(true) => {
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::info!(error = %e, "a hand-over did not happen"),
                }
            }
        })
        .map_err(socket)?;
    Ok(Listener {
        path,
        inode,
        handoff: kept,
        _socket: held,
    })
}

/// Answers `share`: the offer's descriptors with their header, or (when they cannot be
/// duplicated or sent) an empty header, so that the conversation goes on to `take` and the
/// successor opens its own.
fn share(conn: &UnixStream, handoff: &Handoff, pid: u32) -> std::io::Result<()> {
    let header = |s: &Shared| serde_json::to_string(&s.header).map_err(std::io::Error::other);
    let sent = handoff.duplicate_offer().and_then(|shared| {
        send_with_fds(conn, &header(&shared)?, &shared.fds)?;
        Ok(shared.fds.len())
    });
    match sent {
        Ok(n) => {
            tracing::info!(
                pid,
                descriptors = n,
                "passed the dataplane's queues and sockets to the successor"
            );
            Ok(())
        }
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot pass the dataplane's queues and sockets; the successor opens its own");
            send_with_fds(conn, &header(&Shared::default())?, &[])
        }
    }
}

/// One successor's conversation: whether it took the node.
fn serve(conn: UnixStream, identity: &Identity, handoff: &Handoff) -> std::io::Result<bool> {
    conn.set_read_timeout(Some(ANSWER))?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(false);
    }
    let hello: Hello = serde_json::from_str(line.trim_end()).map_err(std::io::Error::other)?;
    tracing::info!(
        pid = hello.pid,
        version = %hello.version,
        "a successor asks for this node"
    );
    let mut answer = serde_json::to_string(identity).map_err(std::io::Error::other)?;
    answer.push('\n');
    r.get_mut().write_all(answer.as_bytes())?;
    r.get_ref().set_read_timeout(Some(PREPARE))?;
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        match line.trim_end() {
            "\"share\"" if n > 0 => share(r.get_ref(), handoff, hello.pid)?,
            take @ ("\"take\"" | "\"take shared\"") => {
                let shares = take.contains("shared");
                // Before the switch: a stop that sees it handed over reads this.
                handoff.successor_shares.store(shares, Ordering::SeqCst);
                if !handoff.hand_over() {
                    r.get_mut().write_all(b"\"stopping\"\n")?;
                    tracing::info!(
                        pid = hello.pid,
                        "a successor asked for the node while this weft stops: refused"
                    );
                    return Ok(false);
                }
                // Granted: the successor forwards from its `take` on, whether or not it
                // hears the answer, so this process stops either way.
                if let Err(e) = r.get_mut().write_all(b"\"leaving\"\n") {
                    tracing::warn!(pid = hello.pid, error = %e, "the successor did not hear `leaving`; stopping for it all the same");
                }
                tracing::info!(
                    pid = hello.pid,
                    on_our_queues = shares,
                    "handing the node over: stopping, leaving the devices, routes and rules to it"
                );
                return Ok(true);
            }
            _ => {
                tracing::info!(
                    pid = hello.pid,
                    "the successor went away without taking the node; forwarding on"
                );
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)]
    struct Args {
        v: u8,
        iface: Vec<String>,
        etcd_password: Option<String>,
        workers: u16,
    }

    fn args(workers: u16, password: &str) -> BTreeMap<String, String> {
        flags_of(&format!(
            "{:#?}",
            Args {
                v: 0,
                iface: vec!["eth0".into(), "eth1".into()],
                etcd_password: Some(password.into()),
                workers,
            }
        ))
    }

    #[test]
    fn flags_are_read_by_name_with_nested_values_and_secrets_fingerprinted() {
        let f = args(2, "hunter2");
        assert_eq!(f["workers"], "2");
        assert_eq!(f["iface"], "[\"eth0\",\"eth1\",]");
        assert!(f["etcd_password"].starts_with("fingerprint "));
        assert!(!f["etcd_password"].contains("hunter2"));
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn differences_name_the_flag_and_ignore_what_one_side_lacks() {
        let (a, b) = (args(2, "x"), args(4, "y"));
        let d = differences(&a, &b, &[]);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.contains(&"--workers (2, running: 4)".to_string()),
            "{d:?}"
        );
        assert!(differences(&a, &a, &[]).is_empty());
        assert_eq!(differences(&a, &b, &["workers", "etcd_password"]).len(), 0);
        let mut newer = a.clone();
        newer.insert("new_flag".into(), "1".into());
        assert!(differences(&newer, &a, &[]).is_empty());
    }

    #[test]
    fn a_successor_with_other_flags_is_refused_and_one_with_the_same_takes_over() {
        let dir = std::env::temp_dir().join(format!("weft-handover-{}", std::process::id()));
        let ours = args(2, "x");
        let identity = Identity {
            pid: 42,
            version: "test".into(),
            flags: ours.clone(),
            network: "10.244.0.0/16".into(),
            subnet: "10.244.3.0/24".into(),
            shares: true,
        };
        let stop = Arc::<AtomicBool>::default();
        let handoff = Arc::new(Handoff::default());
        let l = listen(&dir, identity, Arc::clone(&stop), handoff.clone()).unwrap();
        let e = find(&dir, &args(4, "x"), &[]).err().unwrap().to_string();
        assert!(e.contains("--workers (4, running: 2)"), "{e}");
        assert!(!handoff.handed_over());
        let p = find(&dir, &ours, &[])
            .unwrap()
            .expect("the listener answers");
        let e = p.check_network("10.245.0.0/16").unwrap_err().to_string();
        assert!(
            e.contains("10.244.0.0/16") && e.contains("10.245.0.0/16"),
            "{e}"
        );
        p.check_network("10.244.0.0/16").unwrap();
        assert_eq!(p.take(false).unwrap(), 42);
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(handoff.handed_over());
        assert!(
            !handoff.successor_shares(),
            "it took the node without our descriptors"
        );
        drop(l);
        // The path is the successor's now, for it to listen at: not removed.
        assert!(socket_path(&dir).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A listener and a successor that takes the node and then listens at the same path.
    fn taken(dir: &Path) -> (Listener, Arc<AtomicBool>) {
        let identity = Identity {
            pid: 9,
            ..Identity::default()
        };
        let stop = Arc::<AtomicBool>::default();
        let l = listen(dir, identity, stop.clone(), Arc::default()).unwrap();
        let p = find(dir, &BTreeMap::new(), &[]).unwrap().unwrap();
        p.take(false).unwrap();
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        (l, stop)
    }

    #[test]
    fn a_handed_over_listener_leaves_the_successors_socket_in_place() {
        let dir = std::env::temp_dir().join(format!("weft-relisten-{}", std::process::id()));
        let (mut old, _) = taken(&dir);
        // The old listener's thread has returned (its accept loop closed its socket): give
        // it the time to, as a busy host would, before the successor listens.
        std::thread::sleep(Duration::from_millis(50));
        let new = listen(&dir, Identity::default(), Arc::default(), Arc::default()).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).map(|m| m.st_ino()).ok();
        assert_ne!(ino(&socket_path(&dir)), Some(old.inode), "an inode reused");
        // As if the number had been reused (the held socket prevents that on ext4; other
        // filesystems never reuse at once): handed over, the old listener still leaves it.
        old.inode = new.inode;
        drop(old);
        assert_eq!(
            ino(&socket_path(&dir)),
            Some(new.inode),
            "the successor's socket removed"
        );
        // A third weft finds the successor.
        assert!(find(&dir, &BTreeMap::new(), &[]).unwrap().is_some());
        drop(new);
        assert!(!socket_path(&dir).exists(), "a stopped weft's socket left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_take_after_the_stop_began_is_refused_and_the_stop_removes_its_socket() {
        let dir = std::env::temp_dir().join(format!("weft-closing-{}", std::process::id()));
        let (stop, handoff) = (Arc::<AtomicBool>::default(), Arc::new(Handoff::default()));
        let l = listen(&dir, Identity::default(), stop.clone(), handoff.clone()).unwrap();
        let p = find(&dir, &BTreeMap::new(), &[]).unwrap().unwrap();
        // SIGTERM: the daemon's stop claims the node before the successor's take.
        assert!(!handoff.close(), "not handed over");
        let e = p.take(false).unwrap_err().to_string();
        assert!(e.contains("stopping"), "{e}");
        assert!(!handoff.handed_over() && !stop.load(Ordering::SeqCst));
        // Still not handed over, however often asked.
        assert!(!handoff.close());
        drop(l);
        assert!(!socket_path(&dir).exists(), "a stopped weft's socket left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A listener in `dir` that offers `offer`, and a successor that found it.
    fn offering(
        dir: &Path,
        offer: Option<Shared>,
        shares: bool,
    ) -> (Listener, Arc<Handoff>, Predecessor) {
        let identity = Identity {
            pid: 7,
            shares,
            ..Identity::default()
        };
        let handoff = Arc::new(Handoff::default());
        handoff.offer(offer);
        let l = listen(dir, identity, Arc::default(), handoff.clone()).unwrap();
        let p = find(dir, &BTreeMap::new(), &[]).unwrap().unwrap();
        (l, handoff, p)
    }

    #[test]
    fn the_successor_is_passed_the_very_queues_and_sockets_and_says_it_reads_them() {
        let dir = std::env::temp_dir().join(format!("weft-share-{}", std::process::id()));
        let (queue, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let header = SharedHeader {
            tun_name: "weft0".into(),
            tun_offload: true,
            tun: 1,
            udp: 1,
            udp6: 0,
        };
        let offer = Shared {
            header: header.clone(),
            fds: vec![
                queue.try_clone().unwrap().into(),
                udp.try_clone().unwrap().into(),
            ],
        };
        let (_l, handoff, mut p) = offering(&dir, Some(offer), true);
        let got = p.share().unwrap();
        assert_eq!(got.header, header);
        let [tun, socks, socks6] = got.split().expect("as many descriptors as the header says");
        assert!(socks6.is_empty());
        // The same objects, not copies: what is sent on the passed queue arrives at the
        // original's peer, and the passed socket is bound where the original is.
        let passed = std::os::unix::net::UnixDatagram::from(tun.into_iter().next().unwrap());
        passed.send(b"packet").unwrap();
        let mut buf = [0u8; 16];
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"packet");
        let passed = std::net::UdpSocket::from(socks.into_iter().next().unwrap());
        assert_eq!(passed.local_addr().unwrap(), udp.local_addr().unwrap());
        assert_eq!(p.take(true).unwrap(), 7);
        while !handoff.successor_shares() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nothing_is_passed_by_a_kernel_dataplane_or_an_older_weft() {
        let dir = std::env::temp_dir().join(format!("weft-noshare-{}", std::process::id()));
        let (_l, _, mut p) = offering(&dir, None, true);
        let got = p.share().unwrap();
        assert_eq!(got.header, SharedHeader::default());
        assert!(got.fds.is_empty());
        drop((_l, p));
        // A predecessor that does not say `shares` is never asked (it would take `share`
        // for a successor gone away): the hand-over goes on to `take`.
        let (_l, handoff, mut p) = offering(&dir, None, false);
        assert!(p.share().unwrap().fds.is_empty());
        assert_eq!(p.take(false).unwrap(), 7);
        assert!(!handoff.successor_shares());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stale_socket_is_removed_and_a_silent_listener_refused() {
        let dir = std::env::temp_dir().join(format!("weft-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = socket_path(&dir);
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(find(&dir, &BTreeMap::new(), &[]).unwrap().is_none());
        assert!(!path.exists(), "the stale socket is removed");
        let _silent = UnixListener::bind(&path).unwrap();
        let e = find(&dir, &BTreeMap::new(), &[]).err().unwrap();
        assert!(matches!(e, Error::NoAnswer { .. }), "{e}");
        assert!(path.exists(), "a live listener's socket is left alone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
