//! `weft run`: the node agent. Acquires this node's lease, creates the TUN device and its
//! route, writes subnet.env, forwards until SIGTERM/SIGINT, and keeps the lease table
//! current from the store.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;

use crate::config::{BackendConfig, NetConfig};
use crate::dataplane::{open_tun, Dataplane, Offloads};
use crate::encap::{Format, Node, LINUX_SRC_PORTS};
use crate::lease::{Lease, LeaseAttrs, LeaseTable, Peer, VxlanBackendData};
use crate::netlink::Netlink;
use crate::store::etcd::EtcdStore;
use crate::store::file::FileStore;
use crate::store::LeaseStore;
use crate::subnet_env::SubnetEnv;
use crate::wire::udp::ChecksumMode;
use crate::wire::MacAddr;

/// How often the store is re-read: lease changes reach the table within this.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// The TUN's transmit queue: the default 500 overflows (and TCP retransmits) when the
/// kernel outpaces a worker for a moment; measured with iperf3, 5000 removes those drops.
pub const TUN_TXQUEUELEN: u32 = 5000;

/// `weft run`'s settings, from flags or `WEFT_<FLAG>` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The embedded lease store: a directory laid out like flannel's etcd keys
    /// (DIR/config holds net-conf.json, DIR/subnets/<a.b.c.d-len> the leases).
    #[arg(long, env = "WEFT_LEASE_DIR", default_value = "/var/lib/weft")]
    pub lease_dir: PathBuf,
    /// Underlay interface, by name or IP (default: the interface of the default route).
    #[arg(long, env = "WEFT_IFACE")]
    pub iface: Option<String>,
    /// This node's public (underlay) IP (default: the address of --iface).
    #[arg(long, env = "WEFT_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// Where to write flannel's subnet.env for the CNI plugin.
    #[arg(
        long,
        env = "WEFT_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Address for the health and metrics endpoint.
    #[arg(long, env = "WEFT_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,
    /// Port for /healthz, /metrics and /leases (0: off).
    #[arg(long, env = "WEFT_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Name of the TUN device.
    #[arg(long, env = "WEFT_TUN_NAME", default_value = "weft0", value_parser = parse_ifname)]
    pub tun_name: String,
    /// Forwarding threads (each with its own TUN queue and UDP socket).
    #[arg(long, env = "WEFT_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// TUN offloads: a virtio-net header with TSO and checksum offload, so one TUN read or
    /// write moves up to 64 KB (`--tun-offload=false` to switch off).
    #[arg(long, env = "WEFT_TUN_OFFLOAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub tun_offload: bool,
    /// UDP GSO: send a super-packet's datagrams in one syscall (`UDP_SEGMENT`).
    #[arg(long, env = "WEFT_UDP_GSO", default_value_t = true, action = clap::ArgAction::Set)]
    pub udp_gso: bool,
    /// UDP GRO: receive a flow's datagrams in one syscall (`UDP_GRO`).
    #[arg(long, env = "WEFT_UDP_GRO", default_value_t = true, action = clap::ArgAction::Set)]
    pub udp_gro: bool,
    /// Pin worker i to CPU i (modulo the CPUs weft may use). Off by default: measured on two
    /// cores, pinning did not help (see README).
    #[arg(long, env = "WEFT_CPU_AFFINITY", default_value_t = false, action = clap::ArgAction::Set)]
    pub cpu_affinity: bool,
    /// Keep polling this many microseconds after the last packet before sleeping (0: off).
    /// Measured on two cores: 50 gave +11 % TCP 1-stream and +21 % 4-stream over 0; 200 less.
    #[arg(long, env = "WEFT_BUSY_POLL_US", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub busy_poll_us: u32,
    /// Underlay UDP socket buffers, each way, in bytes (SO_RCVBUFFORCE/SO_SNDBUFFORCE).
    #[arg(long, env = "WEFT_SOCKET_BUFFER", default_value_t = 4 << 20, value_parser = clap::value_parser!(u32).range(65536..=(1 << 30)))]
    pub socket_buffer: u32,
    /// Renew the lease this many minutes before it expires (flanneld's flag; 1-1439).
    #[arg(long, env = "WEFT_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1439))]
    pub subnet_lease_renew_margin: u32,
    /// Keep leases in etcd instead of --lease-dir: comma-separated URLs
    /// (http://HOST:PORT or https://HOST:PORT), as flanneld's --etcd-endpoints.
    #[arg(long, env = "WEFT_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,
    /// etcd key prefix: the config is at PREFIX/config, leases at PREFIX/subnets/.
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = crate::store::etcd::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// Client key (PEM) for etcd over TLS, with --etcd-certfile.
    #[arg(long, env = "WEFT_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd over TLS, with --etcd-keyfile.
    #[arg(long, env = "WEFT_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// CA certificate (PEM) that signed etcd's server certificate.
    #[arg(long, env = "WEFT_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// etcd user name, with --etcd-password.
    #[arg(long, env = "WEFT_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password, with --etcd-username.
    #[arg(long, env = "WEFT_ETCD_PASSWORD")]
    pub etcd_password: Option<String>,
    /// Masquerade traffic from pods to outside the cluster network (flanneld's nat
    /// FLANNEL-POSTRTG rules); subnet.env then says FLANNEL_IPMASQ=true.
    #[arg(long, env = "WEFT_IP_MASQ", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ip_masq: bool,
    /// Plain MASQUERADE instead of MASQUERADE --random-fully.
    #[arg(long, env = "WEFT_IP_MASQ_FULLY_RANDOM_DISABLE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ip_masq_fully_random_disable: bool,
    /// Accept forwarded traffic to and from the cluster network (flanneld's FLANNEL-FWD).
    #[arg(long, env = "WEFT_IPTABLES_FORWARD_RULES", default_value_t = true, action = clap::ArgAction::Set)]
    pub iptables_forward_rules: bool,
    /// Re-check the iptables rules every this many seconds (1-3600).
    #[arg(long, env = "WEFT_IPTABLES_RESYNC", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub iptables_resync: u32,
}

impl RunArgs {
    /// The etcd settings, if etcd is the store.
    pub fn etcd_options(&self) -> Option<crate::store::etcd::EtcdOptions> {
        let endpoints = self.etcd_endpoints.as_ref()?;
        Some(crate::store::etcd::EtcdOptions {
            endpoints: endpoints
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            prefix: self.etcd_prefix.clone(),
            keyfile: self.etcd_keyfile.clone(),
            certfile: self.etcd_certfile.clone(),
            cafile: self.etcd_cafile.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
        })
    }
}

fn parse_ifname(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ']) {
        return Err(format!(
            "{s:?} is not a valid interface name (1-15 characters, no '/' or spaces)"
        ));
    }
    Ok(s.to_string())
}

/// A start-up or runtime failure, with what to do about it.
type Result<T> = std::result::Result<T, String>;

struct Underlay {
    name: String,
    mtu: u32,
    public_ip: Ipv4Addr,
}

fn find_underlay(nl: &Netlink, args: &RunArgs) -> Result<Underlay> {
    let addrs = nl.ipv4_addrs().map_err(|e| e.to_string())?;
    let link = match args.iface.as_deref() {
        Some(s) => match s.parse::<Ipv4Addr>() {
            Ok(ip) => {
                let idx = addrs
                    .iter()
                    .find(|(_, a)| *a == ip)
                    .map(|(i, _)| *i)
                    .ok_or_else(|| format!("--iface {ip}: no interface has this address"))?;
                nl.link_by_index(idx).map_err(|e| e.to_string())?
            }
            Err(_) => nl.link_by_name(s).map_err(|e| e.to_string())?,
        }
        .ok_or_else(|| format!("--iface {s}: no such interface"))?,
        None => {
            let idx = nl
                .default_route_link()
                .map_err(|e| e.to_string())?
                .ok_or("no default route to pick the underlay interface from: pass --iface NAME or --iface IP")?;
            nl.link_by_index(idx)
                .map_err(|e| e.to_string())?
                .ok_or("the default route's interface vanished")?
        }
    };
    let public_ip = match args.public_ip {
        Some(ip) => ip,
        None => addrs
            .iter()
            .find(|(i, _)| *i == link.index)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                format!(
                    "interface {} has no IPv4 address: give it one or pass --public-ip",
                    link.name
                )
            })?,
    };
    Ok(Underlay {
        name: link.name,
        mtu: link.mtu,
        public_ip,
    })
}

fn random_u64() -> u64 {
    rand::random()
}

/// Runs the agent until a signal or a fatal error.
pub fn run(args: RunArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    let nl = Netlink::new().map_err(|e| format!("cannot open netlink (are you root?): {e}"))?;
    let underlay = find_underlay(&nl, &args)?;
    // The daemon talks to its store only through LeaseStore: etcd or the embedded one.
    let mut store: Box<dyn LeaseStore> = match args.etcd_options() {
        Some(o) => Box::new(EtcdStore::open(&o).map_err(|e| e.to_string())?),
        None => {
            Box::new(FileStore::open(&args.lease_dir).map_err(|e| format!("--lease-dir: {e}"))?)
        }
    };
    let cfg = loop {
        match store.config() {
            Ok(c) => break c,
            // etcd not up yet, or the config not written yet: wait, as flanneld does.
            Err(e) if e.is_transient() && !stop.load(Ordering::Relaxed) => {
                eprintln!("weft: waiting for the network config: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) if args.etcd_endpoints.is_some() => return Err(e.to_string()),
            Err(e) => return Err(format!("{e}\n  (the embedded store reads the network config from {}/config; write flannel's net-conf.json there)", args.lease_dir.display())),
        }
    };
    for w in &cfg.warnings {
        eprintln!("weft: warning: {w}");
    }
    let pod_mtu = cfg.backend.pod_mtu(underlay.mtu);
    if pod_mtu < 576 {
        return Err(format!(
            "underlay {} MTU {} leaves only {pod_mtu} for pods; IPv4 needs 576",
            underlay.name, underlay.mtu
        ));
    }

    // The lease: reuse ours (keeping the VTEP MAC), else the previous subnet, else a new one.
    let previous = SubnetEnv::previous_subnet(&args.subnet_file);
    let new_mac = MacAddr::local_unicast(rand::random());
    let backend = cfg.backend;
    let make_attrs = move |old: Option<&Lease>| -> LeaseAttrs {
        match backend {
            BackendConfig::Vxlan { vni, .. } => {
                let mac = old
                    .and_then(|l| l.attrs.vxlan_data().ok())
                    .map(|d| d.vtep_mac)
                    .unwrap_or(new_mac);
                LeaseAttrs::vxlan(underlay.public_ip, VxlanBackendData { vni, vtep_mac: mac })
            }
            BackendConfig::Udp { .. } => LeaseAttrs::udp(underlay.public_ip),
        }
    };
    let acquired = loop {
        match store.acquire(
            &cfg,
            underlay.public_ip,
            previous,
            SystemTime::now(),
            random_u64(),
            &make_attrs,
        ) {
            Ok(a) => break a,
            Err(e) if e.is_transient() && !stop.load(Ordering::Relaxed) => {
                eprintln!("weft: cannot acquire a lease yet ({e}); retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(format!("cannot acquire a lease: {e}")),
        }
    };
    let mut lease = acquired.lease;
    eprintln!(
        "weft: lease {} ({:?}, {} attempt(s)) for {} on {} in {}",
        lease,
        acquired.source,
        acquired.attempts,
        underlay.public_ip,
        underlay.name,
        store.describe()
    );

    let format = match cfg.backend {
        BackendConfig::Vxlan { vni, port, .. } => {
            let mac = lease
                .attrs
                .vxlan_data()
                .map_err(|e| e.to_string())?
                .vtep_mac;
            Format::Vxlan {
                vni,
                port,
                mac,
                src_ports: LINUX_SRC_PORTS,
            }
        }
        BackendConfig::Udp { port } => Format::Udp { port },
    };
    let node = Node {
        public_ip: underlay.public_ip,
        subnet: lease.subnet,
        mtu: pod_mtu as usize,
        format,
        // The UDP socket sends only the payload; the kernel writes the outer headers.
        udp_checksum: ChecksumMode::Zero,
        hash_seed: random_u64(),
    };

    let table = Arc::new(LeaseTable::new(cfg.network));
    let mut last_peers = refresh(store.as_mut(), &table, &[])?;

    // The TUN device, its address and the cluster route.
    let mut offloads = Offloads {
        tun: args.tun_offload,
        gso: args.udp_gso,
        gro: args.udp_gro,
        pin: args.cpu_affinity,
        busy_poll_us: args.busy_poll_us,
        socket_buffer: args.socket_buffer,
    };
    let queues = match open_tun(&args.tun_name, args.workers as usize, offloads.tun) {
        Err(e) if offloads.tun => {
            // Probe: a kernel without TUN offloads still gets a working, slower dataplane.
            eprintln!("weft: warning: TUN offloads unavailable ({e}); continuing without them");
            offloads.tun = false;
            open_tun(&args.tun_name, args.workers as usize, false)
        }
        r => r,
    }
    .map_err(|e| {
        format!(
            "cannot create TUN device {}: {e} (is /dev/net/tun there, and are you root?)",
            args.tun_name
        )
    })?;
    let tun = nl
        .link_by_name(&args.tun_name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("TUN device {} vanished after creation", args.tun_name))?;
    // flanneld's iptables rules (masquerading, FORWARD accepts), kept by a resync thread.
    let rules = crate::masq::flannel_rules(
        cfg.network,
        lease.subnet,
        args.ip_masq,
        !args.ip_masq_fully_random_disable,
        args.iptables_forward_rules,
    );
    let iptables = (!rules.is_empty()).then(|| Arc::new(crate::masq::Iptables::new(rules)));
    let teardown = |nl: &Netlink| {
        let _ = nl.del_route(cfg.network, tun.index);
        let _ = nl.del_link(tun.index);
        if let Some(ipt) = &iptables {
            if let Err(e) = ipt.remove() {
                eprintln!("weft: warning: cannot remove iptables rules: {e}");
            }
        }
    };
    let setup = || -> std::io::Result<()> {
        // No IPv6 on the TUN: weft forwards IPv4 only, and router solicitations would only
        // be counted as drops. Best effort: the kernel may have IPv6 off already.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", args.tun_name),
            "1",
        );
        nl.set_mtu_up(tun.index, pod_mtu, TUN_TXQUEUELEN)?;
        nl.add_addr(tun.index, lease.subnet.network(), 32)?;
        nl.replace_route(cfg.network, tun.index)
    };
    if let Err(e) = setup() {
        teardown(&nl);
        return Err(format!("cannot configure {}: {e}", args.tun_name));
    }
    if let Some(ipt) = &iptables {
        if let Err(e) = ipt.ensure() {
            if args.ip_masq {
                teardown(&nl);
                return Err(format!("--ip-masq: {e}"));
            }
            eprintln!("weft: warning: cannot install the FORWARD accept rules (--iptables-forward-rules=false to skip them): {e}");
        }
    }
    let env = SubnetEnv {
        network: cfg.network,
        subnet: lease.subnet,
        mtu: pod_mtu,
        ipmasq: args.ip_masq,
    };
    if let Err(e) = env.write(&args.subnet_file) {
        teardown(&nl);
        return Err(format!(
            "cannot write --subnet-file {}: {e}",
            args.subnet_file.display()
        ));
    }

    let dp = match Dataplane::start(
        node,
        queues,
        table.clone(),
        stop.clone(),
        random_u64(),
        offloads,
    ) {
        Ok(dp) => dp,
        Err(e) => {
            teardown(&nl);
            return Err(format!("cannot start the dataplane: {e}"));
        }
    };
    if args.healthz_port != 0 {
        let addr = SocketAddr::new(args.healthz_ip, args.healthz_port);
        if let Err(e) = crate::health::serve(addr, dp.counters.clone(), table.clone()) {
            stop.store(true, Ordering::Relaxed);
            dp.join();
            teardown(&nl);
            return Err(e.to_string());
        }
    }
    eprintln!(
        "weft: forwarding {} via {} (MTU {pod_mtu}, {} backend, {} worker(s), offloads {:?}); subnet.env at {}",
        cfg.network,
        args.tun_name,
        cfg.backend.type_name(),
        args.workers,
        offloads,
        args.subnet_file.display()
    );

    // Watch the store, renew the lease and keep the iptables rules until told to stop.
    let margin = Duration::from_secs(args.subnet_lease_renew_margin as u64 * 60);
    let resync = Duration::from_secs(args.iptables_resync as u64);
    let mut next_resync = Instant::now() + resync;
    let mut next_renew = Instant::now();
    let mut outcome = Ok(());
    while !stop.load(Ordering::Relaxed) {
        store.wait_change(WATCH_INTERVAL);
        if let Some(ipt) = iptables.as_ref().filter(|_| Instant::now() >= next_resync) {
            next_resync = Instant::now() + resync;
            match ipt.ensure() {
                Ok(p) if !p.is_empty() => {
                    eprintln!("weft: repaired iptables rules ({})", p.join("; "))
                }
                Ok(_) => {}
                Err(e) => eprintln!("weft: warning: cannot check iptables rules: {e}"),
            }
        }
        match refresh(store.as_mut(), &table, &last_peers) {
            Ok(p) => last_peers = p,
            // A store outage leaves the dataplane forwarding on the last leases.
            Err(e) => {
                eprintln!("weft: warning: cannot read leases (forwarding on the last ones): {e}")
            }
        }
        let ours = last_peers
            .iter()
            .any(|p| p.subnet == lease.subnet && p.public_ip == lease.attrs.public_ip);
        let due = lease
            .expiration
            .is_some_and(|t| SystemTime::now() + margin >= t);
        if (!ours || due) && Instant::now() >= next_renew {
            match store.renew(&lease, SystemTime::now()) {
                Ok(Some(l)) => lease = l,
                Ok(None) => {
                    outcome = Err(format!(
                        "lease {} has been revoked (deleted from {}): shutting down, as flanneld does",
                        lease.key(),
                        store.describe()
                    ));
                    break;
                }
                Err(e) => {
                    // flanneld retries a failed renewal every minute.
                    next_renew = Instant::now() + Duration::from_secs(60);
                    eprintln!(
                        "weft: warning: cannot renew lease {} (retrying in 1 min): {e}",
                        lease.key()
                    )
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    dp.join();
    teardown(&nl);
    eprintln!(
        "weft: stopped; removed {}, its route{}; lease {} left in place",
        args.tun_name,
        if iptables.is_some() {
            " and the iptables rules"
        } else {
            ""
        },
        lease.key()
    );
    outcome
}

/// Re-reads the store and publishes a new table if the live peers changed.
fn refresh(store: &mut dyn LeaseStore, table: &LeaseTable, last: &[Peer]) -> Result<Vec<Peer>> {
    let now = SystemTime::now();
    let network: Ipv4Net = table.network();
    let mut peers: Vec<Peer> = store
        .leases()
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|l| !l.is_expired(now) && network.contains(&l.subnet))
        .filter_map(|l| Peer::from_lease(l).ok())
        .collect();
    peers.sort_by_key(|p| p.subnet);
    if peers != last {
        table.replace_all(peers.iter().copied());
    }
    Ok(peers)
}

/// Used by the harness and the demo: the config of a store directory.
pub fn store_config(dir: &std::path::Path) -> Result<NetConfig> {
    FileStore::open(dir)
        .and_then(|s| s.config())
        .map_err(|e| e.to_string())
}
