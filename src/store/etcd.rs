//! The etcd lease store, in flanneld's v3 layout, so weft nodes and stock flanneld nodes
//! can share one etcd:
//!
//! ```text
//! <prefix>/config                  net-conf.json
//! <prefix>/subnets/10.244.1.0-24   {"PublicIP":...}   attached to an etcd lease (TTL 24 h);
//!                                                     without one, a reservation
//! <prefix>/subnets/10.244.2.0-24&fd00:0:0:2::-64      a dual-stack lease
//! ```
//! Allocation creates the key in a transaction that succeeds only if the key is absent, and
//! retries on a lost race, as flanneld does (`registry.go` `createSubnet`). The key's name
//! alone does not tell a subnet free (`10.244.1.0-24` and `10.244.1.0-24&fd00::-64` hold
//! the same IPv4 subnet; two dual-stack keys may share an IPv6 one), which flanneld leaves
//! to chance; weft lists the keys, refuses a lease whose subnets one of them holds, and
//! makes the transaction also require that no key under `subnets/` was created since that
//! listing, so two nodes can never hold one subnet under different keys. Renewal re-puts the value under a fresh 24 h
//! lease (flanneld's `updateSubnet`), but only if the key still holds our value: a key that
//! was deleted or taken over is reported as revoked rather than silently re-created.
//!
//! A background task lists `<prefix>/subnets/` and then watches it from the listed revision;
//! events update a [`LeaseCache`] that `leases()` reads without touching the network. When
//! the stream breaks (etcd restarted or unreachable) the task re-watches from the last
//! revision it saw; if etcd compacted that revision away it lists again. Meanwhile the
//! cache keeps the last leases, so the dataplane forwards on them.
//!
//! etcd enforces lease TTLs itself (an expired key is deleted, which the watch reports), so
//! a key etcd still holds is live: other nodes' leased keys are reported as expiring
//! [`LEASE_TTL`] from the moment they are read, never earlier.
//!
//! The async client runs on a private one-thread tokio runtime; the [`LeaseStore`] calls
//! block on it with a deadline. Everything that is not I/O ([`LeaseCache`], key and value
//! decoding) is plain code, unit-tested without etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::watch::{Cache, Watch, RETRY};
use super::{LeaseChanges, LeaseRead, LeaseStore, StoreError, Stored, LEASE_TTL};
use crate::config::NetConfig;
use crate::lease::{keys_overlap, parse_subnet_key, Lease, LeaseAttrs, SubnetPair};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
};

/// flanneld's default `--etcd-endpoints`.
pub const DEFAULT_ENDPOINTS: &str = "http://127.0.0.1:4001,http://127.0.0.1:2379";
/// flanneld's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// Deadline for one request (a list of 5,000 leases takes a few milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the client pings etcd over HTTP/2 (see `connect_options`).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);
/// How many times `create` lists and tries again when another key was created between its
/// listing and its transaction (a subnet it did not want, most often).
const CREATE_TRIES: usize = 5;

/// How to reach etcd: flanneld's `--etcd-*` flags.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port` URLs.
    pub endpoints: Vec<String>,
    /// Key prefix (`/coreos.com/network`).
    pub prefix: String,
    /// Client key (PEM), with `certfile`.
    pub keyfile: Option<PathBuf>,
    /// Client certificate (PEM), with `keyfile`.
    pub certfile: Option<PathBuf>,
    /// CA bundle (PEM) that signed etcd's certificate.
    pub cafile: Option<PathBuf>,
    /// etcd user, with `password`.
    pub username: Option<String>,
    /// etcd password.
    pub password: Option<String>,
}

impl EtcdOptions {
    /// Checks the options for mistakes a person must fix; the messages name the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err(
                "--etcd-endpoints is empty: give one or more URLs such as http://192.0.2.10:2379"
                    .into(),
            );
        }
        for e in &self.endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .ok_or_else(|| {
                    format!("--etcd-endpoints {e:?}: an endpoint is a URL, http://HOST:PORT or https://HOST:PORT")
                })?;
            if rest.is_empty() || rest.contains('/') && !rest.ends_with('/') {
                return Err(format!(
                    "--etcd-endpoints {e:?}: expected http://HOST:PORT or https://HOST:PORT"
                ));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() > 1 && self.prefix.ends_with('/') {
            return Err(format!(
                "--etcd-prefix {:?}: a prefix starts with '/' and has no trailing '/', like {DEFAULT_PREFIX}",
                self.prefix
            ));
        }
        if self.keyfile.is_some() != self.certfile.is_some() {
            return Err(
                "--etcd-keyfile and --etcd-certfile go together: give both or neither".into(),
            );
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(
                "--etcd-username and --etcd-password go together: give both or neither".into(),
            );
        }
        let tls = self.cafile.is_some() || self.certfile.is_some();
        if tls && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err("--etcd-cafile/--etcd-certfile are set but an endpoint is http://: use https:// endpoints".into());
        }
        Ok(())
    }

    fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            // HTTP/2 pings notice a peer that vanished without closing the connection. Not
            // more often than etcd's --grpc-keepalive-min-time (5 s by default): a client
            // pinging faster gets GOAWAY "too_many_pings", and its watch breaks every few
            // seconds (it did, at 3 s: an outage logged and every lease re-read each 12 s).
            .with_keep_alive(KEEPALIVE_EVERY, Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            // A token expires (etcd's simple tokens after 5 idle minutes, or a restart):
            // the client asks for a new one instead of failing every call after.
            o = o
                .with_user(u.clone(), p.clone())
                .with_auto_token_refresh(true);
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            let read = |flag: &str, p: &PathBuf| {
                std::fs::read(p)
                    .map_err(|e| StoreError::Missing(format!("{flag} {}: {e}", p.display())))
            };
            let mut tls = TlsOptions::new();
            match &self.cafile {
                Some(ca) => {
                    tls = tls.ca_certificate(Certificate::from_pem(read("--etcd-cafile", ca)?))
                }
                None => tls = tls.with_native_roots(),
            }
            if let (Some(c), Some(k)) = (&self.certfile, &self.keyfile) {
                tls = tls.identity(Identity::from_pem(
                    read("--etcd-certfile", c)?,
                    read("--etcd-keyfile", k)?,
                ));
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }
}

/// A lease as the cache holds it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    lease: Lease,
    /// The etcd lease the key is attached to (0: none, a reservation).
    etcd_lease: i64,
    mod_revision: i64,
}

/// The leases under `<prefix>/subnets/` as of some revision: what the watch maintains.
/// No I/O; fed with listed key-values and watch events.
#[derive(Debug, Clone)]
pub struct LeaseCache {
    subnets_prefix: String,
    entries: BTreeMap<String, Entry>,
    revision: i64,
    generation: u64,
    /// The keys whose leases changed since [`LeaseCache::take_touched`] last ran.
    touched: Vec<String>,
}

/// Decodes one key-value under `subnets_prefix`: flannel's subnet key and lease JSON.
pub fn decode(
    subnets_prefix: &str,
    key: &[u8],
    value: &[u8],
    etcd_lease: i64,
    now: SystemTime,
) -> Result<Lease, String> {
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    let name = key
        .strip_prefix(subnets_prefix)
        .ok_or_else(|| format!("{key}: not under {subnets_prefix}"))?;
    let (subnet, ipv6_subnet) = parse_subnet_key(name).map_err(|e| e.to_string())?;
    let json = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_string())?;
    let attrs = LeaseAttrs::from_json(json).map_err(|e| e.to_string())?;
    Ok(Lease {
        subnet,
        ipv6_subnet,
        attrs,
        expiration: (etcd_lease != 0).then_some(now + LEASE_TTL),
    })
}

impl LeaseCache {
    /// An empty cache for the leases under `<prefix>/subnets/`.
    pub fn new(prefix: &str) -> LeaseCache {
        LeaseCache {
            subnets_prefix: format!("{prefix}/subnets/"),
            entries: BTreeMap::new(),
            revision: 0,
            generation: 0,
            touched: Vec::new(),
        }
    }

    /// The keys whose leases changed since the last call (a listing counts as no key: it
    /// replaces everything).
    pub fn take_touched(&mut self) -> Vec<String> {
        std::mem::take(&mut self.touched)
    }

    /// The lease under `key` (a full etcd key), as [`LeaseCache::leases`] gives it.
    pub fn lease(&self, key: &str) -> Option<Lease> {
        self.entries
            .get(key)
            .map(|e| self.read(e, SystemTime::now()))
    }

    /// The subnets a full etcd key under the cache's prefix names, if it names any.
    pub fn subnets_of(&self, key: &str) -> Option<SubnetPair> {
        parse_subnet_key(key.strip_prefix(&self.subnets_prefix)?).ok()
    }

    fn read(&self, e: &Entry, now: SystemTime) -> Lease {
        Lease {
            // Refreshed on every read: etcd deletes a key when its lease runs out.
            expiration: (e.etcd_lease != 0).then_some(now + LEASE_TTL),
            ..e.lease.clone()
        }
    }

    /// The newest revision applied.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Bumped by every change to the set of leases.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of readable leases.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no lease is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replaces everything with a listing taken at `revision`: `(key, value, lease, mod_rev)`.
    /// Unreadable entries are skipped, each with a warning naming the key.
    pub fn reset<'a>(
        &mut self,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64, i64)>,
        revision: i64,
    ) {
        let mut fresh = BTreeMap::new();
        for (k, v, l, m) in kvs {
            if let Some((name, e)) = self.entry(k, v, l, m) {
                fresh.insert(name, e);
            }
        }
        if fresh != self.entries {
            self.entries = fresh;
            self.generation += 1;
        }
        self.touched.clear();
        self.revision = revision;
    }

    fn entry(&self, k: &[u8], v: &[u8], l: i64, m: i64) -> Option<(String, Entry)> {
        let name = String::from_utf8_lossy(k).into_owned();
        match decode(&self.subnets_prefix, k, v, l, SystemTime::now()) {
            Ok(lease) => Some((
                name,
                Entry {
                    // Expiry is derived on read (see `leases`), so equal values compare equal.
                    lease: Lease {
                        expiration: None,
                        ..lease
                    },
                    etcd_lease: l,
                    mod_revision: m,
                },
            )),
            Err(e) => {
                tracing::warn!("skipping etcd key {name}: {e}");
                None
            }
        }
    }

    /// Applies a put at `mod_revision`. A value that cannot be read removes the key's lease
    /// (as a corrupt lease file does in the embedded store).
    pub fn put(&mut self, key: &[u8], value: &[u8], etcd_lease: i64, mod_revision: i64) {
        let name = String::from_utf8_lossy(key).into_owned();
        if self
            .entries
            .get(&name)
            .is_some_and(|e| e.mod_revision >= mod_revision)
        {
            return; // already applied (acquire records its own writes first)
        }
        match self.entry(key, value, etcd_lease, mod_revision) {
            Some((name, e)) => {
                let changed = self.entries.get(&name).map(|o| &o.lease) != Some(&e.lease);
                self.entries.insert(name.clone(), e);
                if changed {
                    self.generation += 1;
                    self.touched.push(name);
                }
            }
            None => {
                if self.entries.remove(&name).is_some() {
                    self.generation += 1;
                    self.touched.push(name);
                }
            }
        }
        self.revision = self.revision.max(mod_revision);
    }

    /// Applies a delete (or an expiry) at `revision`.
    pub fn delete(&mut self, key: &[u8], revision: i64) {
        let name = String::from_utf8_lossy(key);
        if let Some(e) = self.entries.get(name.as_ref()) {
            if e.mod_revision < revision {
                self.entries.remove(name.as_ref());
                self.generation += 1;
                self.touched.push(name.into_owned());
            }
        }
        self.revision = self.revision.max(revision);
    }

    /// Notes that the store has reached `revision` with nothing to report for us.
    pub fn progress(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// The readable leases, by subnet.
    pub fn leases(&self) -> Vec<Lease> {
        let now = SystemTime::now();
        let mut v: Vec<Lease> = self.entries.values().map(|e| self.read(e, now)).collect();
        v.sort_by_key(|l| l.subnet);
        v
    }
}

impl Cache for LeaseCache {
    fn len(&self) -> usize {
        LeaseCache::len(self)
    }
}

/// The etcd store.
pub struct EtcdStore {
    rt: tokio::runtime::Runtime,
    client: Client,
    prefix: String,
    endpoints: String,
    watch: Arc<Watch<LeaseCache>>,
    seen_generation: u64,
    watching: bool,
}

fn remote(what: &str) -> impl FnOnce(etcd_client::Error) -> StoreError + '_ {
    move |e| {
        let detail = e.to_string();
        match refusal(&e) {
            Some(r) => StoreError::Refused {
                what: format!("etcd {what}"),
                detail: format!("{} (etcd said: {detail})", r.fix()),
            },
            None => StoreError::Remote {
                what: format!("etcd {what}"),
                detail,
            },
        }
    }
}

/// Why etcd, or the TLS handshake with it, refused who we are: retrying cannot fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// etcd's certificate is not signed by a CA weft trusts.
    UnknownCa,
    /// etcd wants a client certificate and got none.
    CertificateRequired,
    /// etcd refused weft's client certificate.
    BadClientCertificate,
    /// etcd refused the user name or password.
    AuthFailed,
    /// etcd has authentication on and got no user name.
    UserEmpty,
    /// The user lacks permission on the prefix.
    PermissionDenied,
}

impl Refusal {
    /// What to do about it, naming the flag.
    pub fn fix(self) -> &'static str {
        match self {
            Refusal::UnknownCa => "etcd's TLS certificate is not signed by the CA weft trusts: give --etcd-cafile the CA that signed it (and an https:// endpoint whose address the certificate names)",
            Refusal::CertificateRequired => "etcd wants a client certificate: give --etcd-certfile and --etcd-keyfile",
            Refusal::BadClientCertificate => "etcd refused weft's client certificate: give --etcd-certfile and --etcd-keyfile signed by etcd's --trusted-ca-file",
            Refusal::AuthFailed => "etcd refused the user name or password: check --etcd-username and --etcd-password",
            Refusal::UserEmpty => "etcd has authentication enabled: give --etcd-username and --etcd-password",
            Refusal::PermissionDenied => "etcd's user lacks permission on the prefix: grant the user's role readwrite on --etcd-prefix",
        }
    }
}

/// etcd's own errors for a bad or missing user, sent with code InvalidArgument; etcd's
/// Go client tells its errors apart by these exact descriptions too (`rpctypes`).
const ETCD_AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
const ETCD_USER_EMPTY: &str = "etcdserver: user name is empty";

/// Whether an etcd client error is a refusal of who we are: by gRPC status code, etcd's
/// error, or the TLS error in its cause chain. `None` for everything else (an etcd that is
/// down or slow is retried).
pub fn refusal(e: &etcd_client::Error) -> Option<Refusal> {
    if let etcd_client::Error::GRpcStatus(s) = e {
        match (s.code(), s.message()) {
            (tonic::Code::PermissionDenied, _) => return Some(Refusal::PermissionDenied),
            (tonic::Code::InvalidArgument, ETCD_AUTH_FAILED) => return Some(Refusal::AuthFailed),
            (tonic::Code::InvalidArgument, ETCD_USER_EMPTY) => return Some(Refusal::UserEmpty),
            _ => {}
        }
    }
    // etcd_client's error does not chain its cause: start from the one it wraps.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    };
    while let Some(c) = cause {
        if let Some(r) = tls_refusal(c) {
            return Some(r);
        }
        cause = c.source();
    }
    None
}

/// The refusal a TLS error stands for: rustls's own error where the stack kept it, or the
/// alert's description where tokio-rustls handed it over as text (the one place a message
/// is read, and only rustls's fixed wording of an alert name).
fn tls_refusal(c: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    use rustls::AlertDescription as A;
    let inner = c
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .map(|e| e as &(dyn std::error::Error + 'static));
    let alert = match c
        .downcast_ref::<rustls::Error>()
        .or_else(|| inner?.downcast_ref())
    {
        Some(rustls::Error::InvalidCertificate(_)) => return Some(Refusal::UnknownCa),
        Some(rustls::Error::AlertReceived(a)) => *a,
        Some(_) => return None,
        None => {
            let text = inner?.to_string();
            let name = text.strip_prefix("received fatal alert: ")?;
            [A::CertificateRequired, A::BadCertificate, A::UnknownCA]
                .into_iter()
                .find(|a| format!("{a:?}") == name)?
        }
    };
    match alert {
        A::CertificateRequired => Some(Refusal::CertificateRequired),
        A::BadCertificate | A::UnknownCA => Some(Refusal::BadClientCertificate),
        _ => None,
    }
}

async fn deadline<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(remote(what)),
        Err(_) => Err(StoreError::Remote {
            what: format!("etcd {what}"),
            detail: format!("no answer within {CALL_TIMEOUT:?}"),
        }),
    }
}

impl EtcdStore {
    /// Prepares a client for `opts` (validated). Connecting is lazy: an etcd that is not up
    /// yet is retried by the calls, so nodes may start before it.
    pub fn open(opts: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        opts.validate().map_err(StoreError::Missing)?;
        let rt = super::watch::runtime("weft-etcd")?;
        let options = opts.connect_options()?;
        let endpoints = opts.endpoints.clone();
        let client = rt.block_on(async {
            // Client::connect builds a balanced, lazily connecting channel.
            Client::connect(endpoints, Some(options)).await
        });
        let client = client.map_err(remote("connect"))?;
        Ok(EtcdStore {
            rt,
            client,
            prefix: opts.prefix.clone(),
            endpoints: opts.endpoints.join(","),
            watch: Watch::new(
                LeaseCache::new(&opts.prefix),
                format!("etcd at {}", opts.endpoints.join(",")),
                "lease(s)",
            ),
            seen_generation: u64::MAX,
            watching: false,
        })
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    fn key(&self, lease: &Lease) -> String {
        format!("{}{}", self.subnets_prefix(), lease.key())
    }

    /// Reads every lease straight from etcd (not the cache), each with its value as stored.
    fn list_stored(&self) -> Result<Vec<Stored>, StoreError> {
        let mut c = self.client.clone();
        let prefix = self.subnets_prefix();
        let resp = self.rt.block_on(deadline(
            "list leases",
            c.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        ))?;
        let now = SystemTime::now();
        let mut out = Vec::new();
        for kv in resp.kvs() {
            match decode(&prefix, kv.key(), kv.value(), kv.lease(), now) {
                Ok(lease) => out.push(Stored {
                    lease,
                    raw: String::from_utf8_lossy(kv.value()).into_owned(),
                }),
                Err(e) => tracing::warn!(
                    "skipping etcd key {}: {e}",
                    String::from_utf8_lossy(kv.key())
                ),
            }
        }
        Ok(out)
    }

    /// The subnet keys under `subnets/` (names only) and the revision they were read at.
    fn list_keys(&self) -> Result<(Vec<String>, i64), StoreError> {
        let mut c = self.client.clone();
        let prefix = self.subnets_prefix();
        let opts = GetOptions::new().with_prefix().with_keys_only();
        let resp = self.rt.block_on(deadline(
            "list lease keys",
            c.get(prefix.clone(), Some(opts)),
        ))?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let names = resp.kvs().iter().filter_map(|kv| {
            let key = std::str::from_utf8(kv.key()).ok()?;
            Some(key.strip_prefix(&prefix)?.to_string())
        });
        Ok((names.collect(), rev))
    }

    /// Writes `lease` if every `cond` holds, under a fresh [`LEASE_TTL`] etcd lease unless
    /// it is a reservation, and records it in the cache.
    fn write_if(&self, lease: &Lease, cond: Vec<Compare>) -> Result<Option<Stored>, StoreError> {
        let key = self.key(lease);
        let value = lease.attrs.to_json();
        let ttl = lease.expiration.map(|_| LEASE_TTL);
        let started = SystemTime::now();
        Ok(self.put_leased(&key, &value, cond, ttl)?.map(|(id, rev)| {
            self.record(&key, &value, id, rev);
            Stored {
                lease: Lease {
                    expiration: ttl.map(|t| started + t),
                    ..lease.clone()
                },
                raw: value,
            }
        }))
    }

    /// Starts the watch task (once): list, then watch from the listed revision.
    fn start_watch(&mut self) {
        if self.watching {
            return;
        }
        self.watching = true;
        let watch = self.watch.clone();
        let client = self.client.clone();
        let prefix = self.subnets_prefix();
        self.rt.spawn(watch_loop(client, prefix, watch));
    }

    /// Writes `value` at `key` under a fresh lease if `cond` holds; revokes the lease if not.
    /// Returns the etcd lease and the revision written at, or `None` if `cond` failed.
    fn put_leased(
        &self,
        key: &str,
        value: &str,
        cond: Vec<Compare>,
        ttl: Option<Duration>,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let mut c = self.client.clone();
        self.rt.block_on(async {
            let id = match ttl {
                Some(ttl) => deadline("grant lease", c.lease_grant(ttl.as_secs() as i64, None))
                    .await?
                    .id(),
                None => 0,
            };
            let opts = (id != 0).then(|| PutOptions::new().with_lease(id));
            let txn = Txn::new()
                .when(cond)
                .and_then([TxnOp::put(key, value, opts)]);
            let resp = deadline("create or update lease", c.txn(txn)).await?;
            if resp.succeeded() {
                Ok(Some((id, resp.header().map_or(0, |h| h.revision()))))
            } else {
                if id != 0 {
                    let _ = deadline("revoke lease", c.lease_revoke(id)).await;
                }
                Ok(None)
            }
        })
    }

    fn record(&self, key: &str, value: &str, etcd_lease: i64, revision: i64) {
        self.watch.record(|c| {
            changed(c, |c| {
                c.put(key.as_bytes(), value.as_bytes(), etcd_lease, revision)
            })
        });
    }

    /// Writes a lease as another node would (for tests and tools): replace or create, under
    /// a fresh etcd lease unless it is a reservation.
    pub fn put(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let key = self.key(lease);
        let ttl = lease.expiration.map(|t| {
            t.duration_since(SystemTime::now())
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_secs(1))
        });
        let cond = Compare::version(key.clone(), CompareOp::Greater, -1);
        self.put_leased(&key, &lease.attrs.to_json(), vec![cond], ttl)
            .map(|_| ())
    }

    /// Deletes a lease's key (for tests and tools).
    pub fn delete(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let key = self.key(lease);
        let mut c = self.client.clone();
        self.rt
            .block_on(deadline("delete lease", c.delete(key, None)))
            .map(|_| ())
    }

    /// Writes `<prefix>/config` (for tests and tools).
    pub fn write_config(&mut self, json: &str) -> Result<(), StoreError> {
        let key = format!("{}/config", self.prefix);
        let mut c = self.client.clone();
        self.rt
            .block_on(deadline("write config", c.put(key, json, None)))
            .map(|_| ())
    }
}

/// The keys whose leases `f` changed.
fn changed(c: &mut LeaseCache, f: impl FnOnce(&mut LeaseCache)) -> Vec<String> {
    c.take_touched();
    f(c);
    c.take_touched()
}

/// What the watch task does after a watch stream ends.
#[derive(PartialEq, Eq)]
enum After {
    /// List the leases again (the revision was compacted away, or the watch canceled).
    Relist,
    /// Watch again from the cache's revision.
    Rewatch,
}

/// The watch task: lists, then follows the watch from the listed revision, until the
/// runtime is dropped.
async fn watch_loop(mut c: Client, prefix: String, watch: Arc<Watch<LeaseCache>>) {
    let mut relist = true;
    loop {
        if relist {
            let list = c.get(prefix.clone(), Some(GetOptions::new().with_prefix()));
            match deadline("list leases", list).await {
                Ok(resp) => {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    let kvs = resp.kvs().iter();
                    let entries =
                        kvs.map(|kv| (kv.key(), kv.value(), kv.lease(), kv.mod_revision()));
                    watch.listed(|cache| {
                        let before = cache.generation();
                        cache.reset(entries, rev);
                        cache.generation() != before
                    });
                }
                Err(e) => {
                    watch.offline(&e.to_string());
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        relist = follow(&mut c, &prefix, &watch).await == After::Relist;
    }
}

/// Follows one watch stream from the cache's revision into the cache.
async fn follow(c: &mut Client, prefix: &str, watch: &Watch<LeaseCache>) -> After {
    let from = watch.read(|cache| cache.revision()) + 1;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from)
        .with_progress_notify();
    let (after, why) = match deadline("watch leases", c.watch(prefix, Some(opts))).await {
        Err(e) => (After::Rewatch, e.to_string()),
        Ok(mut stream) => loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => break (After::Rewatch, "watch stream closed".into()),
                Err(e) => break (After::Rewatch, e.to_string()),
            };
            if resp.compact_revision() > 0 {
                tracing::info!(
                    from,
                    compacted = resp.compact_revision(),
                    "etcd compacted the watched revision away; listing the leases again"
                );
                return After::Relist;
            }
            if resp.canceled() {
                break (
                    After::Relist,
                    format!("watch canceled: {}", resp.cancel_reason()),
                );
            }
            watch.update(|cache| changed(cache, |cache| apply(cache, &resp)));
        },
    };
    watch.offline(&why);
    tokio::time::sleep(RETRY).await;
    after
}

/// One watch response's events (or progress) into the cache.
fn apply(cache: &mut LeaseCache, resp: &etcd_client::WatchResponse) {
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        match ev.event_type() {
            etcd_client::EventType::Put => {
                cache.put(kv.key(), kv.value(), kv.lease(), kv.mod_revision())
            }
            etcd_client::EventType::Delete => cache.delete(kv.key(), kv.mod_revision()),
        }
    }
    if resp.events().is_empty() && !resp.created() {
        // A progress notification.
        cache.progress(resp.header().map_or(0, |h| h.revision()));
    }
}

impl LeaseStore for EtcdStore {
    fn config(&self) -> Result<NetConfig, StoreError> {
        let key = format!("{}/config", self.prefix);
        let mut c = self.client.clone();
        let resp = self
            .rt
            .block_on(deadline("read config", c.get(key.clone(), None)))?;
        let kv = resp.kvs().first().ok_or_else(|| {
            StoreError::Missing(format!(
                "etcd has no network config at {key}: write flannel's net-conf.json there, e.g. etcdctl put {key} '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
            ))
        })?;
        let text = String::from_utf8_lossy(kv.value());
        NetConfig::parse(&text).map_err(|source| StoreError::Config {
            path: PathBuf::from(format!("etcd {key}")),
            source,
        })
    }

    fn leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        self.start_watch();
        match self.watch.synced(|c| c.leases()) {
            Some((leases, generation)) => {
                self.seen_generation = generation;
                Ok(leases)
            }
            // Before the first listing there is nothing to forward on: read directly.
            None => self
                .list_stored()
                .map(|v| v.into_iter().map(|s| s.lease).collect()),
        }
    }

    fn list(&mut self) -> Result<Vec<Stored>, StoreError> {
        self.list_stored()
    }

    fn generation(&self) -> Option<u64> {
        self.watch.generation()
    }

    fn read(&mut self, since: Option<u64>) -> Result<(LeaseRead, Option<u64>), StoreError> {
        let changed = |c: &LeaseCache, keys: &BTreeSet<&str>| {
            let mut ch = LeaseChanges::default();
            for k in keys {
                match c.lease(k) {
                    Some(l) => ch.put.push(l),
                    // The key names the subnets (an entry with an unreadable key never
                    // was one: nothing to remove).
                    None => ch.gone.extend(c.subnets_of(k)),
                }
            }
            ch
        };
        if let Some((ch, g)) = since.and_then(|s| self.watch.changed_since(s, changed)) {
            self.seen_generation = g;
            return Ok((LeaseRead::Changed(ch), Some(g)));
        }
        self.start_watch();
        match self.watch.synced(|c| c.leases()) {
            Some((leases, g)) => {
                self.seen_generation = g;
                Ok((LeaseRead::All(leases), Some(g)))
            }
            None => Ok((LeaseRead::All(self.leases()?), None)),
        }
    }

    fn reachable(&self) -> bool {
        self.watch.reachable()
    }

    /// flanneld's transaction on the key's absence, plus: no listed key holds either
    /// subnet, and no key was created under `subnets/` since that listing (a renewal does
    /// not count: it keeps the key's create revision).
    fn create(&mut self, lease: &Lease) -> Result<Option<Stored>, StoreError> {
        let want = (lease.subnet, lease.ipv6_subnet);
        for _ in 0..CREATE_TRIES {
            let (names, rev) = self.list_keys()?;
            let held = |n: &String| parse_subnet_key(n).is_ok_and(|k| keys_overlap(k, want));
            if let Some(holder) = names.iter().find(|n| held(n)) {
                tracing::debug!("{} is held by etcd key {holder}", lease.key());
                return Ok(None);
            }
            let cond = vec![
                Compare::version(self.key(lease), CompareOp::Equal, 0),
                Compare::create_revision(self.subnets_prefix(), CompareOp::Less, rev + 1)
                    .with_prefix(),
            ];
            if let Some(stored) = self.write_if(lease, cond)? {
                return Ok(Some(stored));
            }
        }
        Ok(None)
    }

    fn update(&mut self, lease: &Lease, expect: &str) -> Result<Option<Stored>, StoreError> {
        let cond = Compare::value(self.key(lease), CompareOp::Equal, expect);
        self.write_if(lease, vec![cond])
    }

    fn remove(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let key = self.key(lease);
        let mut c = self.client.clone();
        self.rt
            .block_on(deadline("delete stale lease", c.delete(key, None)))
            .map(|_| ())
    }

    fn wait_change(&mut self, timeout: Duration) {
        self.start_watch();
        self.watch.wait_change(self.seen_generation, timeout);
    }

    fn describe(&self) -> String {
        format!("etcd {} (prefix {})", self.endpoints, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const P: &str = "/coreos.com/network";
    const V1: &str = r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:01:01"}}"#;
    const V2: &str = r#"{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:02:01"}}"#;

    fn k(s: &str) -> Vec<u8> {
        format!("{P}/subnets/{s}").into_bytes()
    }

    fn subnets(c: &LeaseCache) -> Vec<String> {
        c.leases().iter().map(|l| l.key()).collect()
    }

    #[test]
    fn list_then_events() {
        let mut c = LeaseCache::new(P);
        let (a, b) = (k("10.244.1.0-24"), k("10.244.2.0-24"));
        c.reset(
            [
                (a.as_slice(), V1.as_bytes(), 7, 5),
                (b.as_slice(), V2.as_bytes(), 0, 6),
            ],
            9,
        );
        assert_eq!(subnets(&c), ["10.244.1.0-24", "10.244.2.0-24"]);
        assert_eq!(c.revision(), 9);
        let l = c.leases();
        assert!(l[0].expiration.is_some(), "leased key");
        assert!(
            l[1].expiration.is_none(),
            "a key without an etcd lease is a reservation"
        );
        assert_eq!(l[0].attrs.public_ip, Ipv4Addr::new(192, 0, 2, 1));

        let g = c.generation();
        c.delete(&a, 10);
        assert_eq!(subnets(&c), ["10.244.2.0-24"]);
        assert!(c.generation() > g);
        // A replayed (older) put does not resurrect or overwrite newer state.
        c.put(&b, V1.as_bytes(), 0, 6);
        assert_eq!(c.leases()[0].attrs.public_ip, Ipv4Addr::new(192, 0, 2, 2));
        c.put(&b, V1.as_bytes(), 0, 11);
        assert_eq!(c.leases()[0].attrs.public_ip, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(c.revision(), 11);
    }

    #[test]
    fn changed_keys_are_named_once_each_and_name_their_subnets() {
        let mut c = LeaseCache::new(P);
        let (a, d) = (k("10.244.1.0-24"), k("10.5.1.0-24&fc00::-64"));
        c.reset([(a.as_slice(), V1.as_bytes(), 7, 5)], 9);
        assert!(c.take_touched().is_empty(), "a listing names no key");
        let name = |k: &[u8]| String::from_utf8(k.to_vec()).unwrap();
        // Changed, replayed (no change), then deleted.
        c.put(&a, V2.as_bytes(), 7, 10);
        c.put(&a, V2.as_bytes(), 7, 10);
        c.put(
            &d,
            br#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#,
            8,
            11,
        );
        assert_eq!(c.take_touched(), [name(&a), name(&d)]);
        assert_eq!(
            c.lease(&name(&a)).unwrap().attrs.public_ip,
            Ipv4Addr::new(192, 0, 2, 2)
        );
        c.delete(&d, 12);
        assert_eq!(c.take_touched(), [name(&d)]);
        assert!(c.lease(&name(&d)).is_none());
        let pair = c.subnets_of(&name(&d)).unwrap();
        assert_eq!(pair.0, "10.5.1.0/24".parse().ok());
        assert_eq!(pair.1, "fc00::/64".parse().ok());
        assert_eq!(c.subnets_of("/elsewhere/10.5.1.0-24"), None);
    }

    #[test]
    fn unchanged_relist_keeps_generation() {
        let mut c = LeaseCache::new(P);
        let a = k("10.244.1.0-24");
        c.reset([(a.as_slice(), V1.as_bytes(), 7, 5)], 9);
        let g = c.generation();
        c.reset([(a.as_slice(), V1.as_bytes(), 7, 5)], 12);
        assert_eq!(c.generation(), g);
        assert_eq!(c.revision(), 12);
        // A lease changed while we were not watching shows up in the relist.
        c.reset([(a.as_slice(), V2.as_bytes(), 7, 13)], 13);
        assert!(c.generation() > g);
    }

    #[test]
    fn corrupt_values_and_foreign_keys_are_skipped() {
        let mut c = LeaseCache::new(P);
        let a = k("10.244.1.0-24");
        let bad_key = k("10.244.1.7-24"); // host bits: flannel never writes this
        let other = b"/coreos.com/network/config".to_vec();
        c.reset(
            [
                (a.as_slice(), V1.as_bytes(), 7, 5),
                (bad_key.as_slice(), V1.as_bytes(), 7, 6),
                (other.as_slice(), b"{}".as_slice(), 0, 7),
            ],
            9,
        );
        assert_eq!(subnets(&c), ["10.244.1.0-24"]);
        // A put that corrupts a lease removes it rather than keeping a stale value.
        c.put(&a, b"{\"PublicIP\":", 7, 10);
        assert!(c.is_empty());
    }

    #[test]
    fn dual_stack_keys_and_values_as_flanneld_writes_them_are_watched() {
        // Key and value of flannel's pkg/subnet/etcd/fuzz_test.go seed (kvToIPLease).
        const V6: &str = r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#;
        let mut c = LeaseCache::new(P);
        let (a, d) = (k("10.244.1.0-24"), k("10.5.1.0-24&fc00::-64"));
        c.reset([(a.as_slice(), V1.as_bytes(), 7, 5)], 9);
        c.put(&d, V6.as_bytes(), 8, 10);
        assert_eq!(subnets(&c), ["10.5.1.0-24&fc00::-64", "10.244.1.0-24"]);
        let l = &c.leases()[0];
        assert_eq!(l.ipv6_subnet, Some("fc00::/64".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, Some("fc00::1".parse().unwrap()));
        let direct = decode(
            &format!("{P}/subnets/"),
            &d,
            V6.as_bytes(),
            8,
            SystemTime::now(),
        );
        assert_eq!(direct.unwrap().ipv6_subnet, l.ipv6_subnet);
        // A malformed PublicIPv6 is no lease (skipped with a warning, as a corrupt value).
        c.put(
            &d,
            br#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::zz"}"#,
            8,
            11,
        );
        assert_eq!(subnets(&c), ["10.244.1.0-24"]);
        c.put(&d, V6.as_bytes(), 8, 12);
        c.delete(&d, 13);
        assert_eq!(subnets(&c), ["10.244.1.0-24"]);
    }

    #[test]
    fn options_are_checked() {
        let ok = EtcdOptions {
            endpoints: vec!["http://192.0.2.10:2379".into()],
            prefix: P.into(),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut EtcdOptions), needle: &str| {
            let mut o = ok.clone();
            f(&mut o);
            let e = o.validate().unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        bad(
            &|o| o.endpoints = vec!["192.0.2.10:2379".into()],
            "--etcd-endpoints",
        );
        bad(&|o| o.endpoints.clear(), "--etcd-endpoints");
        bad(&|o| o.prefix = "coreos.com/network".into(), "--etcd-prefix");
        bad(&|o| o.prefix = "/x/".into(), "--etcd-prefix");
        bad(&|o| o.keyfile = Some("/k".into()), "--etcd-certfile");
        bad(&|o| o.username = Some("u".into()), "--etcd-password");
        bad(&|o| o.cafile = Some("/ca".into()), "https://");
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::{refusal, Refusal};
    use std::io::{Error as IoError, ErrorKind::InvalidData};

    fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    /// A status whose cause is `source`, as tonic reports a failed connection.
    fn failed_with(source: IoError) -> etcd_client::Error {
        let s = tonic::Status::from_error(Box::new(source));
        etcd_client::Error::GRpcStatus(s)
    }

    #[test]
    fn credential_errors_name_the_flag_and_outages_are_retried() {
        use tonic::Code;
        // etcd 3.4's answers for a wrong password, no user, and no permission.
        let pw = "etcdserver: authentication failed, invalid user ID or password";
        let pw = refusal(&status(Code::InvalidArgument, pw)).unwrap();
        assert_eq!(pw, Refusal::AuthFailed);
        assert!(pw.fix().contains("--etcd-password"));
        let anon = refusal(&status(
            Code::InvalidArgument,
            "etcdserver: user name is empty",
        ));
        assert!(anon.unwrap().fix().contains("--etcd-username"));
        let denied = status(Code::PermissionDenied, "etcdserver: permission denied");
        assert_eq!(refusal(&denied), Some(Refusal::PermissionDenied));
        // The TLS stack's errors, typed and as tokio-rustls hands an alert over.
        let ca = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let ca = refusal(&failed_with(IoError::new(InvalidData, ca))).unwrap();
        assert!(ca.fix().contains("--etcd-cafile"));
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let no_cert = refusal(&failed_with(IoError::new(InvalidData, alert)));
        assert_eq!(no_cert, Some(Refusal::CertificateRequired));
        let bad = IoError::new(InvalidData, "received fatal alert: BadCertificate");
        let bad = refusal(&failed_with(bad)).unwrap();
        assert!(bad.fix().contains("--etcd-certfile"));
        // An etcd that is down, slow, or answers anything else: retried.
        let down = IoError::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        assert_eq!(refusal(&failed_with(down)), None);
        assert_eq!(
            refusal(&status(Code::Unavailable, "etcdserver: request timed out")),
            None
        );
        // An expired token is the client's to refresh, not a wrong password.
        let token = status(Code::Unauthenticated, "etcdserver: invalid auth token");
        assert_eq!(refusal(&token), None);
        let other = IoError::new(InvalidData, "received fatal alert: HandshakeFailure");
        assert_eq!(refusal(&failed_with(other)), None);
    }
}
