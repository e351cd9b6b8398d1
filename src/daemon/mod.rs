//! `weft run`: the node agent, as four named steps ([`run`]):
//!
//! - **prepare** ([`prepare`]): the store and its network config ([`open_store`],
//!   [`wait_config`]), the underlay for the config's families ([`find_underlay`]), the
//!   fail-closed guard route ([`fail_closed`]),
//!   the backend ([`crate::backend::for_config`]) and the host checks, what an earlier run
//!   left removed, then our lease ([`acquire_lease`]);
//! - **start forwarding** ([`start_forwarding`]): the table from the store's leases, the
//!   backend started, flanneld's iptables or nftables rules, subnet.env, ready;
//! - **control loop** ([`ControlLoop`]): the store's changes and the time drive the sans-IO
//!   [`policy::Policy`], whose actions (publish, renew, resync rules, check the backend,
//!   stop) the loop performs;
//! - **shutdown** ([`shutdown`]).
//!
//! Everything installed is held by a guard (the backend's [`Running`], the
//! [`InstalledRules`]) whose `Drop` removes it, so every exit path, error or signal,
//! cleans up the same way, unless [`crate::teardown`] says leave it (a kernel dataplane's
//! stop, a hand-over to a successor). Leases are left in place, as flanneld leaves them.

mod args;
mod error;
pub mod policy;
#[cfg(test)]
mod tests;
mod underlay;

pub use crate::backend::{DataplaneChoice, Underlay};
pub use args::{flanneld_env_aliases, RunArgs};
pub use error::Error;
pub use underlay::{find_underlay, find_underlay_v6, find_underlay_v6_only};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backend::{self, Backend, DataplaneSettings, Health, Running, Setup};
use crate::config::NetConfig;
use crate::dataplane::counters::Counters;
use crate::dataplane::{Offloads, Tuning};
use crate::lease::LeaseTable;
use crate::masq::{InstalledRules, Mode};
use crate::netlink::Netlink;
use crate::quiet::Quiet;
use crate::store::etcd::EtcdStore;
use crate::store::file::FileStore;
use crate::store::kube::KubeStore;
use crate::store::LeaseRead;
use crate::store::{Acquired, LeaseStore, Stored};
use crate::subnet_env::SubnetEnv;
use policy::{Action, Event, Now, Policy};

/// How often the store is re-read: lease changes reach the table within this.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// How often the backend's devices and routes are checked (someone may delete the TUN, set
/// it down or flush its route); a repair or a restart follows within this.
pub const BACKEND_CHECK: Duration = Duration::from_secs(1);

/// A start-up or runtime result.
type Result<T> = std::result::Result<T, Error>;

/// Phase 1a: the lease store the flags select, seen only as a [`LeaseStore`].
pub fn open_store(args: &RunArgs) -> Result<Box<dyn LeaseStore>> {
    if let Some(o) = args.kube_options() {
        return Ok(Box::new(KubeStore::open(&o).map_err(Error::Store)?));
    }
    Ok(match args.etcd_options() {
        Some(o) => Box::new(EtcdStore::open(&o).map_err(Error::Store)?),
        None => Box::new(FileStore::open(&args.lease_dir).map_err(Error::LeaseDir)?),
    })
}

/// Phase 1a: the public addresses an operator set for this node in the store (the kube
/// store's `node-public-ip` and `node-public-ipv6` annotations) replace `--public-ip` and
/// `--public-ipv6`, as flanneld's `GetStoredPublicIP` does before it picks the interface.
/// A store it cannot ask leaves the flags as they are (flanneld logs and goes on); a
/// malformed annotation is refused.
fn stored_public_ips(store: &dyn LeaseStore, args: &RunArgs) -> Result<RunArgs> {
    let mut args = args.clone();
    match store.stored_public_ips() {
        Ok((v4, v6)) => {
            if let Some(ip) = v4 {
                if ip.is_unspecified() {
                    let why = "node-public-ip 0.0.0.0 is no address to advertise: correct or remove the annotation";
                    return Err(Error::Store(crate::store::StoreError::Invalid(why.into())));
                }
                tracing::info!(%ip, "the node's node-public-ip annotation replaces --public-ip");
                args.public_ip = Some(ip);
            }
            if let Some(ip) = v6 {
                tracing::info!(%ip, "the node's node-public-ipv6 annotation replaces --public-ipv6");
                args.public_ipv6 = Some(ip);
            }
        }
        Err(e @ crate::store::StoreError::Invalid(_)) => return Err(Error::Store(e)),
        Err(e) => tracing::warn!("cannot read the node's stored public addresses: {e}"),
    }
    Ok(args)
}

/// Phase 1b: the network config, waiting while the store is not up or the config not
/// written yet, as flanneld does.
pub fn wait_config(store: &dyn LeaseStore, args: &RunArgs, stop: &AtomicBool) -> Result<NetConfig> {
    loop {
        match store.config() {
            Ok(c) => return Ok(c),
            Err(e) if e.is_transient() && !stop.load(Ordering::Relaxed) => {
                tracing::info!("waiting for the network config: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) if args.etcd_endpoints.is_some() || args.kube_subnet_mgr => {
                return Err(Error::Store(e))
            }
            Err(source) => {
                return Err(Error::FileConfig {
                    source,
                    dir: args.lease_dir.clone(),
                })
            }
        }
    }
}

/// Phase 3: the fail-closed guards. `unreachable <network>`, for the network of each
/// family, at a metric far above the
/// TUN's route (see [`crate::netlink::GUARD_METRIC`]): while weft forwards, the TUN's route
/// wins; while no weft runs (stopped, crashed, `kill -9`, mid-upgrade) the TUN and its
/// route are gone and the guard answers "net unreachable" instead of letting pods' packets
/// for other nodes follow the default route unencapsulated. It is never removed by `weft
/// run` (`weft cleanup` removes it); guards for a network no longer configured are.
pub fn fail_closed(nl: &Netlink, networks: &[ipnet::IpNet]) -> Result<()> {
    for old in nl.guards().unwrap_or_default() {
        if !networks.contains(&old) {
            match nl.del_guard(old) {
                Ok(()) => tracing::info!(
                    "removed the fail-closed route for {old}, no longer the cluster network"
                ),
                Err(e) => tracing::warn!("cannot remove the old fail-closed route for {old}: {e}"),
            }
        }
    }
    for &network in networks {
        nl.replace_guard(network)
            .map_err(|source| Error::Guard { network, source })?;
    }
    Ok(())
}

/// `weft cleanup`: removes every fail-closed guard route, and whatever a stopped or
/// crashed weft left (peer routes, `flannel.*` vxlan devices, flanneld's iptables and
/// nftables rules); returns the guards' networks and a line per other removal.
pub fn cleanup() -> std::io::Result<(Vec<ipnet::IpNet>, Vec<String>)> {
    let nl = Netlink::new()?;
    let guards = nl.guards()?;
    for g in &guards {
        nl.del_guard(*g)?;
    }
    let mut done = backend::remove_leftovers(&nl)?;
    for mode in [Mode::Iptables, Mode::Nftables] {
        if crate::masq::remove_leftovers(mode).is_ok() {
            done.push(format!("flanneld's {} rules, if any", mode.name()));
        }
    }
    Ok((guards, done))
}

/// Phase 4: our lease: reuse ours (keeping backend data such as the VTEP MAC), else the
/// subnet in the previous subnet.env, else a new one; retried while the store is away.
pub fn acquire_lease(
    store: &mut dyn LeaseStore,
    cfg: &NetConfig,
    backend: &dyn Backend,
    owner: crate::lease::alloc::Owner,
    subnet_file: &std::path::Path,
    stop: &AtomicBool,
) -> Result<Acquired> {
    let previous = SubnetEnv::previous_subnet(subnet_file);
    let attrs = |ours: Option<&crate::lease::Lease>| {
        backend.lease_attrs(owner.public_ip, owner.public_ipv6, ours)
    };
    loop {
        let random = rand::random();
        match crate::store::acquire(
            store,
            cfg,
            owner,
            crate::lease::alloc::Previous {
                subnet: previous,
                ipv6_subnet: SubnetEnv::previous_ipv6_subnet(subnet_file),
            },
            SystemTime::now(),
            random,
            &attrs,
        ) {
            Ok(a) => return Ok(a),
            Err(e) if e.is_transient() && !stop.load(Ordering::Relaxed) => {
                tracing::info!("cannot acquire a lease yet ({e}); retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(Error::Acquire(e)),
        }
    }
}

/// Phase 3b: a vxlan device an earlier run left (a crash, or a change of backend or
/// dataplane) is removed before this run's backend programs anything, so its routes cannot
/// shadow the TUN's and it does not hold the VXLAN port; `spare`, the kernel dataplane's
/// own devices (one per family the network has), are left for it to adopt. The backend's route set adopts or removes the
/// earlier run's peer routes.
fn adopt(nl: &Netlink, spare: &[String]) {
    match backend::remove_leftover_devices(nl, spare) {
        Ok(done) => {
            for d in done {
                tracing::info!("removed {d}, left by an earlier run");
            }
        }
        Err(e) => tracing::warn!("cannot remove what an earlier run left: {e}"),
    }
}

/// The userspace dataplane's settings from the flags.
fn dataplane_settings(
    args: &RunArgs,
    counters: &Counters,
    handoff: &Arc<crate::handover::Handoff>,
) -> DataplaneSettings {
    DataplaneSettings {
        handoff: handoff.clone(),
        counters: counters.clone(),
        tun_name: args.tun_name.clone(),
        workers: args.workers as usize,
        offloads: Offloads {
            tun: args.tun_offload,
            gso: args.udp_gso,
            gro: args.udp_gro,
            tunnel_gso: args.tunnel_gso,
            udp_coalesce: args.tun_udp_coalesce,
        },
        tuning: Tuning {
            pin: args.cpu_affinity,
            incoming_cpu: args.udp_incoming_cpu,
            slice_us: args.worker_slice_us,
            tun_cpu_steering: args.tun_cpu_steering,
            poll: crate::dataplane::poll::SpinPolicy {
                spin: args.busy_poll,
                floor: std::time::Duration::from_micros(10),
                cap: std::time::Duration::from_micros(args.busy_poll_us.into()),
                yield_cpu: args.busy_poll_yield,
                bulk_bytes: args.busy_poll_bulk_bytes.into(),
            },
            socket_buffer: args.socket_buffer,
            sender_filter: args.udp_sender_filter,
        },
    }
}

/// Phase 5b: flanneld's rules in the mode net-conf chose (`EnableNFTables`), after the
/// other mode's are removed, as flanneld removes them at start. A failure is fatal for
/// `--ip-masq` (pods would leave unmasqueraded) and a warning otherwise; either way the
/// guard is kept, so the next resync retries.
fn install_rules(plan: &crate::masq::Plan, mode: Mode) -> Result<Option<InstalledRules>> {
    let other = match mode {
        Mode::Iptables => Mode::Nftables,
        Mode::Nftables => Mode::Iptables,
    };
    if let Err(e) = crate::masq::remove_leftovers(other) {
        tracing::debug!(error = %e, "no rules of the other mode removed");
    }
    if !crate::masq::wanted(plan, mode) {
        return Ok(None);
    }
    let (installed, first) = InstalledRules::install(plan, mode);
    match first {
        Err(e) if plan.masq => return Err(Error::Masq(e)),
        Err(e) => tracing::warn!(
            mode = installed.mode(),
            error = %e,
            "cannot install flanneld's forward rules (--iptables-forward-rules=false to skip them)"
        ),
        Ok(()) => {}
    }
    Ok(Some(installed))
}

/// The host checks, before a lease is taken: flanneld's br_netfilter check in iptables
/// mode (unless `--br-netfilter-check=false`), and the TUN device for a backend that
/// forwards through one.
fn check_host(cfg: &NetConfig, args: &RunArgs, backend: &dyn Backend) -> Result<()> {
    let bridge = std::path::Path::new("/proc/sys/net/bridge");
    let tun = std::path::Path::new("/dev/net/tun");
    let br_netfilter = !cfg.enable_nftables && args.br_netfilter_check;
    let problem = br_netfilter
        .then(|| crate::host::br_netfilter_problem(bridge, cfg.ipv4.is_some(), cfg.ipv6.is_some()))
        .flatten()
        .or_else(|| {
            backend
                .needs_tun()
                .then(|| crate::host::tun_device_problem(tun))
                .flatten()
        });
    problem.map_or(Ok(()), |p| Err(Error::Host(p)))
}

/// flanneld's traffic rules as this node wants them (the forward-from devices are the
/// started backend's to add); the IPv6 side when net-conf enables IPv6 and the lease has an
/// IPv6 subnet.
fn rules_plan(node: &Node, args: &RunArgs) -> crate::masq::Plan {
    let ipv4 = node.network.zip(node.subnet);
    let ipv6 = node.cfg.ipv6.as_ref().zip(node.ours.lease.ipv6_subnet);
    crate::masq::Plan {
        ipv4: ipv4.map(|(network, subnet)| crate::masq::V4Plan { network, subnet }),
        ipv6: ipv6.map(|(v6, subnet)| crate::masq::V6Plan {
            network: v6.network,
            subnet,
        }),
        masq: args.ip_masq,
        random_fully: !args.ip_masq_fully_random_disable,
        forward: args.iptables_forward_rules,
        forward_from: Vec::new(),
    }
}

/// `--ip-blackhole-route`: a blackhole route for this node's subnet (and its IPv6 subnet,
/// as flanneld's `AddBlackholeV6Route`), added at start and whenever a resync finds it
/// gone, as flanneld adds it (which also leaves it at exit). A failure is logged once
/// until the route is back.
pub(crate) struct BlackholeRoute {
    nl: Arc<Netlink>,
    subnets: Vec<ipnet::IpNet>,
    failing: Quiet<()>,
}

impl BlackholeRoute {
    fn new(nl: Arc<Netlink>, subnets: Vec<ipnet::IpNet>) -> BlackholeRoute {
        let b = BlackholeRoute {
            nl,
            subnets,
            failing: Quiet::new(),
        };
        b.ensure();
        b
    }

    fn ensure(&self) {
        for &subnet in &self.subnets {
            self.ensure_one(subnet);
        }
    }

    fn ensure_one(&self, subnet: ipnet::IpNet) {
        match self.nl.ensure_blackhole(subnet) {
            Ok(added) => {
                if added {
                    tracing::info!(%subnet, "--ip-blackhole-route: added blackhole route");
                }
                self.failing.clear();
            }
            Err(e) if self.failing.report(()) => {
                tracing::warn!(%subnet, error = %e, "--ip-blackhole-route: cannot add the blackhole route; retrying every resync")
            }
            Err(_) => {}
        }
    }
}

/// Runs the agent until a signal, a hand-over or a fatal error: [`prepare`],
/// [`start_forwarding`] (beside a predecessor, then taking the node from it, when one
/// runs: [`crate::handover`]), the [`ControlLoop`], then [`shutdown`].
pub fn run(args: RunArgs) -> Result<()> {
    // Before any thread starts: each drops its own capabilities (crate::privilege).
    crate::privilege::enable(args.drop_capabilities);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(Error::Signals)?;
    }
    let mut predecessor = find_predecessor(&args)?;
    let status = serve_health(&args)?;
    let (node, mut store) = tracing::info_span!("prepare")
        .in_scope(|| prepare(&args, &status, &stop, predecessor.as_ref()))?;
    if let Some(p) = predecessor.as_mut() {
        node.handoff.inherit(p.share()?);
    }
    let subnet = node.first_subnet();
    let mut fwd = tracing::info_span!("start", %subnet)
        .in_scope(|| start_forwarding(&args, &node, store.as_mut(), &status))?;
    // What the first start did not adopt (a kernel dataplane's start) is not held open.
    drop(node.handoff.take_inherited());
    let _span = tracing::info_span!("node", %subnet).entered();
    if let Some(p) = predecessor {
        take_over(p, node.handoff.adopted());
    }
    let _listener = listen_for_successor(&args, &node, &stop);
    let start = || node.start_backend(&args);
    let control = ControlLoop {
        store: store.as_mut(),
        policy: &mut fwd.policy,
        running: &mut fwd.running,
        start: &start,
        kept: Kept {
            table: &node.table,
            rules: fwd.rules.as_ref(),
            blackhole: fwd.blackhole.as_ref(),
            status: &status,
        },
        backend_problem: None,
        last_read: None,
    };
    let outcome = control.run(&stop);
    // From here a successor's `take` is refused, unless it came first.
    let handed_over = node.handoff.close();
    shutdown(&node, fwd, handed_over);
    outcome
}

/// Flags a successor may change without refusal: the log level.
const HANDOVER_MAY_DIFFER: &[&str] = &["v"];

/// A weft already running on this node, that answered with the same flags. From here until
/// [`take_over`], what this process adopts is its predecessor's: left in place on failure.
fn find_predecessor(args: &RunArgs) -> Result<Option<crate::handover::Predecessor>> {
    let flags = crate::handover::flags_of(&format!("{args:#?}"));
    let found = crate::handover::find(&args.state_dir, &flags, HANDOVER_MAY_DIFFER)?;
    if let Some(p) = &found {
        tracing::info!(
            pid = p.identity.pid,
            version = %p.identity.version,
            subnet = %p.identity.subnet,
            "weft already runs on this node: starting beside it, then taking the node over"
        );
        crate::teardown::keep_state(true);
    }
    Ok(found)
}

/// Tells the predecessor to go, now that this process forwards (on its queues and sockets
/// when `shared`); from here on what it installed is ours (removed at a stop as ours is).
fn take_over(p: crate::handover::Predecessor, shared: bool) {
    match p.take(shared) {
        Ok(pid) => tracing::info!(pid, "took the node over; the old weft exits"),
        Err(e) => {
            tracing::warn!(error = %e, "the old weft did not confirm the hand-over; forwarding anyway")
        }
    }
    crate::teardown::keep_state(false);
}

/// This process's hand-over socket, for the next weft started on the node (none, with a
/// warning, where the state directory cannot hold one: a restart is then an outage).
fn listen_for_successor(
    args: &RunArgs,
    node: &Node,
    stop: &Arc<AtomicBool>,
) -> Option<crate::handover::Listener> {
    let identity = crate::handover::Identity {
        pid: std::process::id(),
        version: crate::VERSION.to_string(),
        flags: crate::handover::flags_of(&format!("{args:#?}")),
        network: node.first_network.to_string(),
        subnet: node.first_subnet().to_string(),
        shares: true,
    };
    let handoff = node.handoff.clone();
    crate::handover::listen(&args.state_dir, identity, stop.clone(), handoff)
        .inspect_err(|e| tracing::warn!(error = %e, "no hand-over socket: a restart of this node will not be seamless"))
        .ok()
}

/// /healthz (and /metrics) first, as flanneld serves it before it waits for its config.
fn serve_health(args: &RunArgs) -> Result<Arc<crate::health::Status>> {
    let status = crate::health::Status::starting("opening the store");
    for (what, ip, port) in [
        ("healthz", args.healthz_ip, args.healthz_port),
        ("metrics", args.metrics_ip, args.metrics_port),
    ] {
        if port != 0 {
            let addr = SocketAddr::new(ip, port);
            let limits = crate::health::Limits::default();
            crate::health::serve(what, addr, status.clone(), limits).map_err(Error::Healthz)?;
        }
    }
    Ok(status)
}

/// What [`prepare`] settled before anything forwards.
struct Node {
    nl: Arc<Netlink>,
    underlay: Underlay,
    cfg: NetConfig,
    /// The IPv4 network (`None`: an IPv6-only network).
    network: Option<ipnet::Ipv4Net>,
    /// The network of our first family (the IPv4 one, else the IPv6 one): what a
    /// successor must have, and what our peers' leases lie in.
    first_network: ipnet::IpNet,
    backend: Box<dyn Backend>,
    pod_mtu: u32,
    ours: Stored,
    /// Our lease's IPv4 subnet (`None` in an IPv6-only network).
    subnet: Option<ipnet::Ipv4Net>,
    table: Arc<LeaseTable>,
    counters: Counters,
    /// The dataplane's queues and sockets, from a predecessor and for a successor.
    handoff: Arc<crate::handover::Handoff>,
}

impl Node {
    /// Our subnet of the first family (the IPv4 one, else the IPv6 one), for logs and a
    /// successor.
    fn first_subnet(&self) -> String {
        let l = &self.ours.lease;
        (l.subnet.map(|s| s.to_string()))
            .or(l.ipv6_subnet.map(|s| s.to_string()))
            .unwrap_or_default()
    }

    /// Starts the backend (at start, and again after it broke).
    fn start_backend(&self, args: &RunArgs) -> Result<Box<dyn Running>> {
        let setup = Setup {
            nl: &self.nl,
            underlay: &self.underlay.name,
            local_ip: self.underlay.local_ip,
            public_ip: self.underlay.public_ip,
            network: self.network,
            v6: self
                .underlay
                .v6
                .zip(self.cfg.ipv6.as_ref())
                .map(|(u, c)| (u.local_ip, c.network)),
            lease: &self.ours.lease,
            subnet: self.subnet,
            pod_mtu: self.pod_mtu,
            table: self.table.clone(),
            dataplane: dataplane_settings(args, &self.counters, &self.handoff),
        };
        Ok(self.backend.start(setup)?)
    }
}

/// The network of the first family and the underlay for `cfg`: chosen by its IPv4
/// addresses, with its IPv6 side too when the network has IPv6, or by its IPv6 addresses
/// alone in an IPv6-only network.
fn underlay_for(nl: &Netlink, cfg: &NetConfig, args: &RunArgs) -> Result<(ipnet::IpNet, Underlay)> {
    // NetConfig::parse refuses a config without a family; one built otherwise is named.
    let network = cfg.first_network().ok_or_else(|| {
        crate::backend::Error::Unsupported("the network config has no address family".into())
    })?;
    if cfg.ipv4.is_none() {
        let underlay = find_underlay_v6_only(nl, args)?;
        if let Some(v6) = &underlay.v6 {
            tracing::info!(local = %v6.local_ip, public = %v6.public_ip, "an IPv6-only underlay");
        }
        return Ok((network, underlay));
    }
    let mut underlay = find_underlay(nl, args)?;
    if cfg.ipv6.is_some() {
        let v6 = find_underlay_v6(nl, args, &underlay)?;
        tracing::info!(local = %v6.local_ip, public = %v6.public_ip, "the underlay's IPv6 side");
        underlay.v6 = Some(v6);
    }
    Ok((network, underlay))
}

/// The store and its config, the underlay (a predecessor's network, if one runs), the
/// fail-closed guard, the backend and the host checks, then our lease.
fn prepare(
    args: &RunArgs,
    status: &crate::health::Status,
    stop: &AtomicBool,
    predecessor: Option<&crate::handover::Predecessor>,
) -> Result<(Node, Box<dyn LeaseStore>)> {
    let nl = Arc::new(Netlink::new().map_err(Error::Netlink)?);
    let mut store = open_store(args)?;
    let args = &stored_public_ips(store.as_ref(), args)?;
    status.step("waiting for the network config");
    let cfg = wait_config(store.as_ref(), args, stop)?;
    status.step("choosing the underlay");
    let (network, underlay) = underlay_for(&nl, &cfg, args)?;
    if let Some(p) = predecessor {
        // Before anything is touched: a change of Network is refused, not adopted.
        p.check_network(&network.to_string())?;
    }
    status.step("acquiring a lease");
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    fail_closed(&nl, &cfg.networks())?;
    let backend = backend::for_config(&cfg.backend, args.dataplane, &underlay)?;
    check_host(&cfg, args, backend.as_ref())?;
    adopt(
        &nl,
        &backend.kernel_devices(cfg.ipv4.is_some(), cfg.ipv6.is_some()),
    );
    let pod_mtu = backend.pod_mtu(underlay.mtu);
    if pod_mtu < 576 {
        return Err(Error::MtuTooSmall {
            name: underlay.name,
            mtu: underlay.mtu,
            pod_mtu,
        });
    }
    let public = crate::lease::alloc::Owner {
        public_ip: underlay.public_ip,
        public_ipv6: underlay.v6.map(|v| v.public_ip),
    };
    let acquired = acquire_lease(
        store.as_mut(),
        &cfg,
        backend.as_ref(),
        public,
        &args.subnet_file,
        stop,
    )?;
    tracing::info!(
        lease = %acquired.stored.lease,
        source = ?acquired.source,
        attempts = acquired.attempts,
        public_ip = %underlay.public_ip,
        underlay = %underlay.name,
        store = %store.describe(),
        "lease acquired"
    );
    let node = Node {
        subnet: acquired.stored.lease.subnet,
        nl,
        network: cfg.network(),
        first_network: network,
        // The IPv4 index's range: an IPv6-only node's table indexes no IPv4 peer.
        table: Arc::new(LeaseTable::new(cfg.network().unwrap_or_default())),
        counters: Counters::with_workers(args.workers as usize),
        underlay,
        cfg,
        backend,
        pod_mtu,
        ours: acquired.stored,
        handoff: Arc::default(),
    };
    Ok((node, store))
}

/// What forwards, and what the control loop keeps current.
/// Fields drop in order, as [`shutdown`] drops them: the rules, then the backend.
struct Forwarding {
    rules: Option<InstalledRules>,
    running: Option<Box<dyn Running>>,
    policy: Policy,
    blackhole: Option<BlackholeRoute>,
}

/// The table from the store's current leases, the backend, flanneld's rules, subnet.env
/// for the CNI plugin; then the node says it is ready.
fn start_forwarding(
    args: &RunArgs,
    node: &Node,
    store: &mut dyn LeaseStore,
    status: &crate::health::Status,
) -> Result<Forwarding> {
    let cfg = &node.cfg;
    let resync = Duration::from_secs(args.iptables_resync as u64);
    let mode = Mode::from_config(cfg.enable_nftables);
    let mut plan = rules_plan(node, args);
    let mut policy = Policy::new(
        node.ours.clone(),
        node.first_network,
        Duration::from_secs(args.subnet_lease_renew_margin as u64 * 60),
        (crate::masq::wanted(&plan, mode) || args.ip_blackhole_route).then_some(resync),
        BACKEND_CHECK,
        Now::read(),
    );
    // The table starts from the store's current leases, before anything forwards.
    let first = store.leases().map_err(|e| e.to_string());
    let mut peers = Vec::new();
    for a in policy.on(Now::read(), Event::Leases(first)) {
        match a {
            Action::Publish(p) => {
                node.table.replace_all(p.iter().copied());
                peers = p;
            }
            Action::Warn(w) => tracing::warn!("{w}"),
            _ => {}
        }
    }
    let mut running = node.start_backend(args)?;
    running.peers_changed(&peers);
    plan.forward_from = running.forwarded_from();
    let rules = install_rules(&plan, mode)?;
    let blackhole = args.ip_blackhole_route.then(|| {
        let v6 = node.ours.lease.ipv6_subnet.map(ipnet::IpNet::V6);
        let v4 = node.subnet.map(ipnet::IpNet::V4);
        let subnets = v4.into_iter().chain(v6).collect();
        BlackholeRoute::new(node.nl.clone(), subnets)
    });
    announce(args, node, running.as_ref(), status)?;
    Ok(Forwarding {
        policy,
        running: Some(running),
        rules,
        blackhole,
    })
}

/// subnet.env for the CNI plugin, /healthz and systemd told we forward, then the
/// capabilities the control thread no longer needs dropped.
fn announce(
    args: &RunArgs,
    node: &Node,
    running: &dyn Running,
    status: &crate::health::Status,
) -> Result<()> {
    SubnetEnv {
        network: node.network,
        subnet: node.subnet,
        ipv6_network: node.cfg.ipv6.as_ref().map(|c| c.network),
        ipv6_subnet: node.ours.lease.ipv6_subnet,
        mtu: node.pod_mtu,
        ipmasq: args.ip_masq,
    }
    .write(&args.subnet_file)
    .map_err(|source| Error::SubnetFile {
        path: args.subnet_file.clone(),
        source,
    })?;
    status.forwarding(node.counters.clone(), node.table.clone());
    // For a Type=notify systemd unit (a no-op without NOTIFY_SOCKET).
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd we are ready");
    }
    tracing::info!(
        "forwarding {} with the {}; subnet.env at {}",
        node.cfg.networks_text(),
        running.describe(),
        args.subnet_file.display()
    );
    if args.drop_capabilities {
        match crate::privilege::keep_only(&crate::privilege::CONTROL) {
            Ok(()) => tracing::info!(
                "capabilities: CAP_NET_ADMIN and CAP_NET_RAW kept for the control thread, none for the others (--drop-capabilities=false keeps them all)"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot drop capabilities, running with what weft was started with"),
        }
    }
    Ok(())
}

/// Removes what the backend and the rules installed, unless the node was handed over or
/// the kernel forwards without us (kernel vxlan, host-gw: left for the next start to
/// adopt, as flanneld leaves them); the lease and the guard stay.
fn shutdown(node: &Node, fwd: Forwarding, handed_over: bool) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let Forwarding {
        policy,
        mut running,
        rules,
        blackhole: _,
    } = fwd;
    if let Some(r) = running.as_mut().filter(|_| handed_over) {
        r.yield_to_successor();
    }
    let outlives = running.as_ref().is_some_and(|r| r.outlives_process());
    if handed_over || outlives {
        crate::teardown::keep_state(true);
    }
    let had_rules = rules.as_ref().map(|r| r.mode());
    drop(rules);
    drop(running);
    let rules = had_rules
        .map(|m| format!(" and the {m} rules"))
        .unwrap_or_default();
    let (backend, lease) = (node.backend.name(), policy.lease().lease.key());
    if handed_over {
        tracing::info!("handed over: the {backend} backend's devices and routes{rules} left to the new weft; exiting");
    } else if outlives {
        tracing::info!("stopped; what the {backend} backend installed{rules} left forwarding for the next start to adopt (`weft cleanup` removes it); lease {lease} left in place");
    } else {
        tracing::info!(
            "stopped; removed what the {backend} backend installed{rules}; lease {lease} and the fail-closed route for {} left in place",
            node.first_network
        );
    }
}

/// What the control loop keeps current besides the backend.
pub(crate) struct Kept<'a> {
    /// The forwarding table.
    pub(crate) table: &'a LeaseTable,
    /// flanneld's iptables or nftables rules, if any.
    pub(crate) rules: Option<&'a InstalledRules>,
    /// `--ip-blackhole-route`, if asked for.
    pub(crate) blackhole: Option<&'a BlackholeRoute>,
    /// What /healthz reports.
    pub(crate) status: &'a crate::health::Status,
}

/// The control loop: wait for the store to change (or the watch interval), feed the policy
/// the leases and the time, and carry out its actions, until `stop` is set or our lease is
/// revoked. A backend found broken (its TUN deleted, say) is stopped and started again
/// with `start`; if that fails, the next check tries again.
pub(crate) struct ControlLoop<'a> {
    pub(crate) store: &'a mut dyn LeaseStore,
    pub(crate) policy: &'a mut Policy,
    pub(crate) running: &'a mut Option<Box<dyn Running>>,
    pub(crate) start: &'a dyn Fn() -> Result<Box<dyn Running>>,
    pub(crate) kept: Kept<'a>,
    /// What the last backend check left wrong, for /healthz.
    pub(crate) backend_problem: Option<String>,
    /// The store's state when the leases were last read, to read them again only when
    /// it changed.
    pub(crate) last_read: Option<LastRead>,
}

/// What made the last leases read current: the store's generation and reachability, and
/// the earliest time a lease read then expires. While all three hold the leases would
/// read the same, so a round costs the same whatever their number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastRead {
    generation: u64,
    reachable: bool,
    next_expiry: Option<SystemTime>,
}

impl ControlLoop<'_> {
    /// Steps on each change or [`WATCH_INTERVAL`] until `stop` is set.
    pub(crate) fn run(mut self, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            self.store.wait_change(WATCH_INTERVAL);
            self.step(Now::read())?;
        }
        Ok(())
    }

    /// One round at `now`: the leases and a tick into the policy, its actions carried out.
    pub(crate) fn step(&mut self, now: Now) -> Result<()> {
        let mut events = VecDeque::from([Event::Tick]);
        if let Some(leases) = self.read_leases(now) {
            events.push_front(leases);
        }
        while let Some(ev) = events.pop_front() {
            for action in self.policy.on(now, ev) {
                events.extend(self.perform(now, action)?);
            }
        }
        let problem = self.policy.problem(now);
        let status = self.kept.status;
        status.set_problem(problem.or_else(|| self.backend_problem.clone()));
        Ok(())
    }

    /// The leases, or what changed in them since the last read, unless the store says
    /// they are what they were at the last read (and none has expired since): then
    /// `None`, and nothing is read.
    fn read_leases(&mut self, now: Now) -> Option<Event> {
        let reachable = self.store.reachable();
        let current =
            |r: &LastRead| r.reachable == reachable && r.next_expiry.is_none_or(|t| now.wall < t);
        let since = self.last_read.filter(current).map(|r| r.generation);
        if since.is_some() && since == self.store.generation() {
            return None;
        }
        // A store answering from its cache while unreachable counts as an outage: the
        // table stays on the last leases and /healthz measures the outage.
        let read = match self.store.read(since) {
            Ok(_) if !reachable => Err(format!("{} is unreachable", self.store.describe())),
            r => r.map_err(|e| e.to_string()),
        };
        let expiring = |l: &[crate::lease::Lease]| {
            (l.iter().filter_map(|l| l.expiration))
                .filter(|t| *t > now.wall)
                .min()
        };
        let last = |generation: Option<u64>, next_expiry| {
            generation.map(|generation| LastRead {
                generation,
                reachable,
                next_expiry,
            })
        };
        let (event, last_read) = match read {
            Ok((LeaseRead::All(l), g)) => {
                let next = expiring(&l);
                (Event::Leases(Ok(l)), last(g, next))
            }
            Ok((LeaseRead::Changed(ch), g)) => {
                let before = self.last_read.and_then(|r| r.next_expiry);
                let next = expiring(&ch.put).into_iter().chain(before).min();
                (Event::LeaseChanges(ch), last(g, next))
            }
            Err(e) => (Event::Leases(Err(e)), None),
        };
        self.last_read = last_read;
        Some(event)
    }

    /// Carries out one action: the event it leads to, if any.
    fn perform(&mut self, now: Now, action: Action) -> Result<Option<Event>> {
        match action {
            Action::Publish(peers) => {
                tracing::debug!(peers = peers.len(), "forwarding table updated");
                self.kept.table.replace_all(peers.iter().copied());
                if let Some(r) = self.running.as_mut() {
                    r.peers_changed(&peers);
                }
            }
            Action::Patch(changes) => {
                tracing::debug!(
                    put = changes.put.len(),
                    gone = changes.gone.len(),
                    "forwarding table changed"
                );
                self.kept.table.apply(&changes);
                if let Some(r) = self.running.as_mut() {
                    let policy = &self.policy;
                    r.peers_patched(&changes, &|| policy.peers());
                }
            }
            Action::Renew => {
                let lease = self.policy.lease();
                tracing::debug!(lease = %lease.lease.key(), "renewing the lease");
                let r = crate::store::renew(self.store, lease, now.wall);
                self.kept.status.renewed(r.is_ok());
                return Ok(Some(Event::Renewed(r.map_err(|e| e.to_string()))));
            }
            Action::ResyncRules => {
                if let Some(r) = self.kept.rules {
                    r.resync()
                }
                if let Some(b) = self.kept.blackhole {
                    b.ensure()
                }
            }
            Action::CheckBackend => {
                self.backend_problem = check_backend(self.running, self.start, self.policy)
            }
            Action::Warn(w) => tracing::warn!("{w}"),
            Action::Info(m) => tracing::info!("{m}"),
            Action::Revoked => {
                return Err(Error::Revoked {
                    key: self.policy.lease().lease.key(),
                    store: self.store.describe(),
                })
            }
        }
        Ok(None)
    }
}
/// Checks the running backend; repairs are logged, a broken one is replaced. Returns what
/// is still wrong (a broken dataplane that could not be recreated), for `/healthz`.
fn check_backend(
    running: &mut Option<Box<dyn Running>>,
    start: &dyn Fn() -> Result<Box<dyn Running>>,
    policy: &Policy,
) -> Option<String> {
    let health = match running.as_mut() {
        Some(r) => r.check(),
        None => Health::Broken("the dataplane is not running".into()),
    };
    match health {
        Health::Fine => None,
        Health::Repaired(what) => {
            tracing::warn!("{what}");
            None
        }
        Health::Broken(why) => {
            tracing::warn!("{why}; recreating the dataplane");
            // The old one first: it holds the device name and the ports.
            *running = None;
            match start() {
                Ok(mut r) => {
                    r.peers_changed(&policy.peers());
                    tracing::info!("forwarding again with the {}", r.describe());
                    *running = Some(r);
                    None
                }
                Err(e) => {
                    tracing::error!("cannot recreate the dataplane (retrying): {e}");
                    Some(format!("{why}, and the dataplane cannot be recreated: {e}"))
                }
            }
        }
    }
}
