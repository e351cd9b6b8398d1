//! The embedded lease store: a directory that mirrors flannel's etcd layout so a person
//! can inspect it with `cat`, and several weft processes on one host can share it.
//!
//! ```text
//! DIR/config                  net-conf.json
//! DIR/subnets/10.244.1.0-24   {"PublicIP":...}        <- the etcd value, byte for byte
//!                             expiration=2026-11-24T10:45:12Z   <- absent: a reservation
//! DIR/subnets/10.244.2.0-24&fd00:0:0:2::-64            <- a dual-stack lease
//! DIR/.lock                   flock(2)ed around allocation
//! ```
//! A lease is created by writing a temporary file and hard-linking it to its name, which
//! fails if the name exists: create-exclusive with the whole content at once, so readers
//! never see half a lease. Names alone do not tell a subnet free (`10.244.1.0-24` and
//! `10.244.1.0-24&fd00::-64` hold the same IPv4 subnet), so `create` first looks for any
//! name holding either subnet, under the lock every weft process takes. Renewals replace
//! the file with a rename.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{LeaseStore, StoreError, StoreLock, Stored};
use crate::config::NetConfig;
use crate::lease::{keys_overlap, parse_subnet_key, Lease, LeaseAttrs};

const EXPIRATION_PREFIX: &str = "expiration=";

/// The directory store.
pub struct FileStore {
    dir: PathBuf,
    /// How many [`DirLock`]s of this store are alive (the `flock` is taken once).
    lock_depth: Arc<AtomicUsize>,
    /// Parsed leases by file name, with the file's identity, to skip unchanged files.
    cache: HashMap<String, (FileKey, Option<Lease>)>,
}

/// What tells a lease file unchanged since it was parsed: written at the same time, the
/// same inode (not replaced by a rename) and the same size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    mtime: i64,
    mtime_nsec: i64,
    inode: u64,
    len: u64,
}

impl FileKey {
    fn of(md: &fs::Metadata) -> FileKey {
        FileKey {
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            inode: md.ino(),
            len: md.len(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Renders a lease file: the etcd value, then the expiration line unless a reservation.
pub fn render(lease: &Lease) -> String {
    let mut s = lease.attrs.to_json();
    s.push('\n');
    if let Some(t) = lease.expiration {
        s.push_str(EXPIRATION_PREFIX);
        s.push_str(&humantime::format_rfc3339_seconds(t).to_string());
        s.push('\n');
    }
    s
}

/// Parses a lease file named `key` (e.g. `10.244.1.0-24`).
pub fn parse(key: &str, text: &str) -> Result<Lease, String> {
    let (subnet, ipv6_subnet) = parse_subnet_key(key).map_err(|e| e.to_string())?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let json = lines.next().ok_or("empty lease file")?;
    let attrs = LeaseAttrs::from_json(json).map_err(|e| e.to_string())?;
    let mut expiration = None;
    for l in lines {
        match l.strip_prefix(EXPIRATION_PREFIX) {
            Some(t) => {
                expiration = Some(humantime::parse_rfc3339(t).map_err(|e| {
                    format!("bad expiration {t:?}: {e}; expected e.g. 2026-11-24T10:45:12Z")
                })?)
            }
            None => {
                return Err(format!(
                    "unexpected line {l:?}; expected expiration=<RFC 3339 time>"
                ))
            }
        }
    }
    Ok(Lease {
        subnet,
        ipv6_subnet,
        attrs,
        expiration,
    })
}

impl FileStore {
    /// Opens (and creates, if needed) a store directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        let subnets = dir.join("subnets");
        fs::create_dir_all(&subnets).map_err(io_err(&subnets))?;
        Ok(FileStore {
            dir,
            lock_depth: Arc::new(AtomicUsize::new(0)),
            cache: HashMap::new(),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn subnets(&self) -> PathBuf {
        self.dir.join("subnets")
    }

    /// The path of a lease's file.
    pub fn lease_path(&self, lease: &Lease) -> PathBuf {
        self.subnets().join(lease.key())
    }

    /// Writes `DIR/config` (for tools and tests; weft itself only reads it).
    pub fn write_config(&self, json: &str) -> Result<(), StoreError> {
        let p = self.dir.join("config");
        crate::atomic_file::write(&p, json.as_bytes()).map_err(io_err(&p))
    }

    /// Writes a lease as another node (or a person) would: replace or create.
    pub fn put(&self, lease: &Lease) -> Result<(), StoreError> {
        let p = self.lease_path(lease);
        crate::atomic_file::write(&p, render(lease).as_bytes()).map_err(io_err(&p))
    }

    fn create_exclusive(&self, lease: &Lease) -> Result<bool, StoreError> {
        let p = self.lease_path(lease);
        let tmp = self
            .subnets()
            .join(format!(".{}.new.{}", lease.key(), std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(render(lease).as_bytes())?;
            f.sync_all()
        };
        write().map_err(io_err(&tmp))?;
        let linked = fs::hard_link(&tmp, &p);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// The name of a lease file (corrupt or not) whose key holds a subnet of `lease`.
    fn holder_of(&self, lease: &Lease) -> Result<Option<String>, StoreError> {
        let dir = self.subnets();
        let want = (lease.subnet, lease.ipv6_subnet);
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if parse_subnet_key(&name).is_ok_and(|k| keys_overlap(k, want)) {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// The first line of a lease's file as it is now (the etcd value it mirrors).
    fn raw_value(&self, lease: &Lease) -> Option<String> {
        fs::read_to_string(self.lease_path(lease))
            .ok()
            .map(|t| first_line(&t).to_string())
    }

    /// `flock(DIR/.lock)`, re-entrant within this store (allocation holds it and updates
    /// inside allocation must not wait for themselves).
    fn lock(&self) -> Result<DirLock, StoreError> {
        let depth = self.lock_depth.clone();
        if depth.fetch_add(1, Ordering::AcqRel) > 0 {
            return Ok(DirLock { _file: None, depth });
        }
        let p = self.dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .and_then(|f| f.lock().map(|()| f));
        match f {
            Ok(f) => Ok(DirLock {
                _file: Some(f),
                depth,
            }),
            Err(e) => {
                depth.fetch_sub(1, Ordering::AcqRel);
                Err(io_err(&p)(e))
            }
        }
    }
}

/// A held directory lock (the outermost one holds the locked file).
struct DirLock {
    _file: Option<File>,
    depth: Arc<AtomicUsize>,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        self.depth.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A lease file's value line (the first non-empty one), trimmed.
fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

impl LeaseStore for FileStore {
    fn config(&self) -> Result<NetConfig, StoreError> {
        let p = self.dir.join("config");
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        NetConfig::parse(&text).map_err(|source| StoreError::Config { path: p, source })
    }

    fn leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        let dir = self.subnets();
        let mut seen = HashMap::with_capacity(self.cache.len());
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(md) = entry.metadata() else { continue }; // deleted meanwhile
            if !md.is_file() {
                continue;
            }
            let key = FileKey::of(&md);
            let parsed = match self.cache.remove(&name) {
                Some((k, l)) if k == key => l,
                _ => {
                    let path = entry.path();
                    match fs::read_to_string(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|t| parse(&name, &t))
                    {
                        Ok(l) => Some(l),
                        Err(e) => {
                            tracing::warn!("skipping lease file {}: {e}", path.display());
                            None
                        }
                    }
                }
            };
            seen.insert(name, (key, parsed));
        }
        self.cache = seen;
        let mut out: Vec<Lease> = self.cache.values().filter_map(|(_, l)| l.clone()).collect();
        out.sort_by_key(|l| l.subnet);
        Ok(out)
    }

    fn list(&mut self) -> Result<Vec<Stored>, StoreError> {
        // The directory is the store: reading it is as fresh as it gets. Raw values come
        // from the files parsed (or cached) just now.
        let leases = self.leases()?;
        Ok(leases
            .into_iter()
            .map(|l| {
                let raw = self.raw_value(&l).unwrap_or_else(|| l.attrs.to_json());
                Stored { lease: l, raw }
            })
            .collect())
    }

    fn create(&mut self, lease: &Lease) -> Result<Option<Stored>, StoreError> {
        // Under the lock, no other weft process creates between the look and the link.
        let _lock = FileStore::lock(self)?;
        if let Some(holder) = self.holder_of(lease)? {
            tracing::debug!("{} is held by lease file {holder}", lease.key());
            return Ok(None);
        }
        Ok(self
            .create_exclusive(lease)?
            .then(|| Stored::ours(lease.clone())))
    }

    fn update(&mut self, lease: &Lease, expect: &str) -> Result<Option<Stored>, StoreError> {
        let p = self.lease_path(lease);
        // Local writers of the directory hold the lock for read-compare-replace.
        let _lock = self.lock()?;
        match fs::read_to_string(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&p)(e)),
            Ok(text) if first_line(&text) != expect.trim() => return Ok(None),
            Ok(_) => {}
        }
        self.put(lease)?;
        Ok(Some(Stored::ours(lease.clone())))
    }

    fn remove(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let p = self.lease_path(lease);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&p)(e)),
            _ => Ok(()),
        }
    }

    fn lock(&mut self) -> Result<StoreLock, StoreError> {
        // The lock serializes weft nodes sharing the directory; create-exclusive still
        // guards against anything that writes leases without it.
        FileStore::lock(self).map(StoreLock::held)
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::net::Ipv4Addr;
    use std::time::SystemTime;

    use super::*;
    use crate::lease::alloc::{Previous, Source};
    use crate::lease::VxlanBackendData;
    use crate::store::{acquire, renew, LEASE_TTL};

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn attrs(ip: Ipv4Addr) -> impl Fn(Option<&Lease>) -> LeaseAttrs {
        move |old| {
            let mac = old
                .and_then(|l| l.attrs.vxlan_data().ok())
                .map(|d| d.vtep_mac);
            let mac = mac.unwrap_or(crate::wire::MacAddr([0x0e, 0, 0, 0, ip.octets()[3], 9]));
            LeaseAttrs::vxlan(
                ip,
                VxlanBackendData {
                    vni: 1,
                    vtep_mac: mac,
                },
            )
        }
    }

    #[test]
    fn file_format_is_the_etcd_value_plus_expiration() {
        let l = Lease {
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 1)),
            expiration: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
        };
        let text = render(&l);
        // A udp lease, as flanneld's udp backend stores it: no BackendType.
        assert_eq!(
            text,
            "{\"PublicIP\":\"192.0.2.1\",\"PublicIPv6\":null}\nexpiration=2026-11-18T11:06:40Z\n"
        );
        assert_eq!(parse("10.244.1.0-24", &text).unwrap(), l);
        let reservation = Lease {
            expiration: None,
            ..l
        };
        assert_eq!(
            parse("10.244.1.0-24", &render(&reservation))
                .unwrap()
                .expiration,
            None
        );
        for bad in [
            "",
            "{",
            "{\"PublicIP\":\"192.0.2.1\"}\nexpiration=yesterday",
            "{\"PublicIP\":\"192.0.2.1\"}\nfoo",
        ] {
            assert!(parse("10.244.1.0-24", bad).is_err(), "{bad:?}");
        }
        assert!(parse("not-a-key", "{\"PublicIP\":\"192.0.2.1\"}").is_err());
    }

    #[test]
    fn acquire_reuse_renew_and_revoke() {
        let dir = tmpdir("acq");
        let mut s = FileStore::open(&dir).unwrap();
        s.write_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        let cfg = s.config().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let ip = Ipv4Addr::new(192, 0, 2, 1);
        let a = acquire(&mut s, &cfg, ip, Previous::default(), now, 5, &attrs(ip)).unwrap();
        assert_eq!(a.source, Source::Fresh);
        assert!(s.lease_path(&a.stored.lease).exists());
        // A restart reuses the subnet and the VTEP MAC.
        let b = acquire(&mut s, &cfg, ip, Previous::default(), now, 77, &attrs(ip)).unwrap();
        assert_eq!(b.stored.lease.subnet, a.stored.lease.subnet);
        assert_eq!(
            b.stored.lease.attrs.vxlan_data().unwrap(),
            a.stored.lease.attrs.vxlan_data().unwrap()
        );
        assert_eq!(b.source, Source::ExistingLease { reservation: false });
        let later = now + Duration::from_secs(3600);
        let r = renew(&mut s, &b.stored, later).unwrap().unwrap();
        assert_eq!(r.lease.expiration, Some(later + LEASE_TTL));
        assert_eq!(s.leases().unwrap(), vec![r.lease.clone()]);
        // Someone else's value under our name: revoked, and left alone.
        let theirs = Lease {
            attrs: LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 7)),
            ..r.lease.clone()
        };
        s.put(&theirs).unwrap();
        assert_eq!(renew(&mut s, &r, later).unwrap(), None);
        assert_eq!(s.leases().unwrap(), vec![theirs]);
        fs::remove_file(s.lease_path(&r.lease)).unwrap();
        assert_eq!(renew(&mut s, &r, later).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_are_skipped_and_expired_names_reused() {
        let dir = tmpdir("corrupt");
        let mut s = FileStore::open(&dir).unwrap();
        s.write_config(r#"{"Network":"10.10.0.0/28"}"#).unwrap(); // /30s: .4 .8 .12
        fs::write(dir.join("subnets/10.10.0.4-30"), "garbage").unwrap();
        fs::write(dir.join("subnets/README"), "not a lease").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let old = Lease {
            subnet: Some("10.10.0.8/30".parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 9)),
            expiration: Some(now - Duration::from_secs(1)),
        };
        s.put(&old).unwrap();
        let res = Lease {
            subnet: Some("10.10.0.12/30".parse().unwrap()),
            expiration: None,
            ..old.clone()
        };
        s.put(&res).unwrap();
        assert_eq!(s.leases().unwrap().len(), 2);
        let cfg = s.config().unwrap();
        // The expired .8 is free to reuse as the previous subnet.
        let ip = Ipv4Addr::new(192, 0, 2, 1);
        let a = acquire(
            &mut s,
            &cfg,
            ip,
            Previous {
                subnet: Some("10.10.0.8/30".parse().unwrap()),
                ipv6_subnet: None,
            },
            now,
            0,
            &attrs(ip),
        )
        .unwrap();
        assert_eq!(a.stored.lease.subnet, "10.10.0.8/30".parse().ok());
        assert_eq!(a.source, Source::Previous);
        // .4 holds a corrupt file: not a lease, but its name cannot be created, so the next
        // node is refused cleanly rather than looping on it (.12 is reserved).
        let ip2 = Ipv4Addr::new(192, 0, 2, 2);
        let e = acquire(&mut s, &cfg, ip2, Previous::default(), now, 0, &attrs(ip2)).unwrap_err();
        assert!(e.to_string().contains("out of subnets"), "{e}");
        assert!(dir.join("subnets/10.10.0.4-30").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_acquires_never_share_a_subnet() {
        let dir = tmpdir("race");
        let s = FileStore::open(&dir).unwrap();
        s.write_config(r#"{"Network":"10.244.0.0/24"}"#).unwrap(); // /26: 3 subnets
        let cfg = s.config().unwrap();
        let handles: Vec<_> = (1..=6u8)
            .map(|i| {
                let (dir, cfg) = (dir.clone(), cfg.clone());
                std::thread::spawn(move || {
                    let mut s = FileStore::open(&dir).unwrap();
                    let ip = Ipv4Addr::new(192, 0, 2, i);
                    acquire(
                        &mut s,
                        &cfg,
                        ip,
                        Previous::default(),
                        SystemTime::now(),
                        0,
                        &attrs(ip),
                    )
                    .ok()
                    .map(|a| a.stored.lease.subnet)
                })
            })
            .collect();
        let got: Vec<_> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        let mut uniq = got.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(uniq.len(), 3, "{got:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `Network` 10.244.0.0/16 (/24s) with `IPv6Network` fc00::/48 whose IPv6SubnetMin and
    /// Max leave `v6_count` /64s.
    fn dual_cfg(v6_count: u16) -> NetConfig {
        let mut c = NetConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        c.ipv6 = Some(crate::config::Ipv6Config {
            network: "fc00::/48".parse().unwrap(),
            subnet_len: 64,
            subnet_min: "fc00:0:0:1::".parse().unwrap(),
            subnet_max: format!("fc00:0:0:{v6_count:x}::").parse().unwrap(),
        });
        c
    }

    #[test]
    fn a_dual_stack_lease_as_flanneld_writes_it_is_read_back() {
        let dir = tmpdir("ds-read");
        let mut s = FileStore::open(&dir).unwrap();
        // Key and value of flannel's pkg/subnet/etcd/fuzz_test.go seed (kvToIPLease).
        let value = r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#;
        let name = "10.5.1.0-24&fc00::-64";
        fs::write(
            dir.join("subnets").join(name),
            format!("{value}\nexpiration=2026-11-18T11:06:40Z\n"),
        )
        .unwrap();
        let listed = s.list().unwrap();
        assert_eq!(listed.len(), 1);
        let l = &listed[0].lease;
        assert_eq!(l.subnet, "10.5.1.0/24".parse().ok());
        assert_eq!(l.ipv6_subnet, Some("fc00::/64".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, Some("fc00::1".parse().unwrap()));
        assert_eq!(listed[0].raw, value);
        assert_eq!(s.lease_path(l), dir.join("subnets").join(name));
        s.remove(l).unwrap();
        assert!(s.leases().unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_refuses_a_subnet_held_under_another_key() {
        let dir = tmpdir("ds-create");
        let mut s = FileStore::open(&dir).unwrap();
        let at = |key: &str| {
            let (subnet, ipv6_subnet) = parse_subnet_key(key).unwrap();
            Lease {
                subnet,
                ipv6_subnet,
                attrs: LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 1)),
                expiration: None,
            }
        };
        s.put(&at("10.244.1.0-24")).unwrap();
        s.put(&at("10.244.3.0-24&fc00:0:0:3::-64")).unwrap();
        for held in [
            "10.244.1.0-24&fc00:0:0:1::-64", // its IPv4 subnet, under a v4-only key
            "10.244.2.0-24&fc00:0:0:3::-64", // its IPv6 subnet
            "10.244.3.0-24",                 // the IPv4 half of a dual-stack key
            "10.244.0.0-22&fc00:0:0:9::-64", // overlapping, of another size
            "10.244.9.0-24&fc00::-48",       // ditto, IPv6
        ] {
            assert_eq!(s.create(&at(held)).unwrap(), None, "{held}");
        }
        let free = at("10.244.2.0-24&fc00:0:0:2::-64");
        assert!(s.create(&free).unwrap().is_some());
        assert!(dir.join("subnets/10.244.2.0-24&fc00:0:0:2::-64").exists());
        assert_eq!(s.leases().unwrap().len(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dual_stack_acquire_reuse_and_the_switch_from_ipv4_only() {
        let dir = tmpdir("ds-acq");
        let mut s = FileStore::open(&dir).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let ip = Ipv4Addr::new(192, 0, 2, 1);
        // An IPv4-only lease of ours, from before EnableIPv6.
        let c4 = NetConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let old = acquire(&mut s, &c4, ip, Previous::default(), now, 3, &attrs(ip)).unwrap();
        assert_eq!(old.stored.lease.ipv6_subnet, None);
        // EnableIPv6: as flanneld, the v4-only lease does not fit, is deleted, and a fresh
        // pair is leased under one dual-stack key.
        let cfg = dual_cfg(0xff);
        // A node that would make a new VTEP MAC unless given one.
        let new_mac = |old: Option<&Lease>| match old {
            Some(_) => attrs(ip)(old),
            None => LeaseAttrs::vxlan(
                ip,
                VxlanBackendData {
                    vni: 1,
                    vtep_mac: crate::wire::MacAddr([0x0e, 0, 0, 0, 0, 0x77]),
                },
            ),
        };
        let a = acquire(&mut s, &cfg, ip, Previous::default(), now, 3, &new_mac).unwrap();
        assert_eq!(a.source, Source::Fresh);
        let l = &a.stored.lease;
        assert!(l.ipv6_subnet.is_some());
        assert_ne!(l.subnet, old.stored.lease.subnet);
        assert!(l.key().contains('&'), "{}", l.key());
        assert!(!s.lease_path(&old.stored.lease).exists());
        // The stale lease's backend data (the VTEP MAC) carries over.
        assert_eq!(
            l.attrs.vxlan_data().unwrap(),
            old.stored.lease.attrs.vxlan_data().unwrap()
        );
        assert_eq!(s.leases().unwrap(), vec![l.clone()]);
        // A restart reuses the pair.
        let b = acquire(&mut s, &cfg, ip, Previous::default(), now, 9, &attrs(ip)).unwrap();
        assert_eq!(b.source, Source::ExistingLease { reservation: false });
        assert_eq!(b.stored.lease.key(), l.key());
        // Another node gets the subnet.env pair it had, when free.
        let ip2 = Ipv4Addr::new(192, 0, 2, 2);
        let prev = Previous {
            subnet: Some("10.244.200.0/24".parse().unwrap()),
            ipv6_subnet: Some("fc00:0:0:c8::/64".parse().unwrap()),
        };
        let c = acquire(&mut s, &cfg, ip2, prev, now, 0, &attrs(ip2)).unwrap();
        assert_eq!(c.source, Source::Previous);
        assert_eq!(c.stored.lease.key(), "10.244.200.0-24&fc00:0:0:c8::-64");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_dual_stack_acquires_never_share_an_ipv6_subnet() {
        let dir = tmpdir("ds-race");
        FileStore::open(&dir).unwrap();
        // Plenty of IPv4 subnets, three IPv6 ones: only IPv6 can collide.
        let cfg = dual_cfg(3);
        let handles: Vec<_> = (1..=6u8)
            .map(|i| {
                let (dir, cfg) = (dir.clone(), cfg.clone());
                std::thread::spawn(move || {
                    let mut s = FileStore::open(&dir).unwrap();
                    let ip = Ipv4Addr::new(192, 0, 2, i);
                    let now = SystemTime::now();
                    match acquire(
                        &mut s,
                        &cfg,
                        ip,
                        Previous::default(),
                        now,
                        i as u64,
                        &attrs(ip),
                    ) {
                        Ok(a) => Some(a.stored.lease.ipv6_subnet.unwrap()),
                        Err(e) => {
                            assert!(e.to_string().contains("out of IPv6 subnets"), "{e}");
                            None
                        }
                    }
                })
            })
            .collect();
        let mut got: Vec<_> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 3, "{got:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
