//! `weft run`'s command line: flanneld's flags where it has them, plus weft's own.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use crate::backend::DataplaneChoice;

/// `weft run`'s settings, from flags or `WEFT_<FLAG>` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Log detail, as flanneld's `-v`: 0 info (the default), 1-4 adds debug, 5 and up trace.
    /// `RUST_LOG` (e.g. `RUST_LOG=weft::store=debug`), when set, wins.
    #[arg(short = 'v', long = "v", env = "WEFT_V", default_value_t = 0)]
    pub v: u8,
    /// The embedded lease store: a directory laid out like flannel's etcd keys
    /// (DIR/config holds net-conf.json, DIR/subnets/<a.b.c.d-len> the leases).
    #[arg(long, env = "WEFT_LEASE_DIR", default_value = "/var/lib/weft")]
    pub lease_dir: PathBuf,
    /// Underlay interface, by name or IP; repeatable, the first that exists wins (default:
    /// the interface of the default route). An IP is the address advertised.
    #[arg(long, env = "WEFT_IFACE")]
    pub iface: Vec<String>,
    /// Regex matched against interface addresses, then names, after every --iface;
    /// repeatable, the first match wins.
    #[arg(long, env = "WEFT_IFACE_REGEX", value_parser = parse_regex)]
    pub iface_regex: Vec<regex::Regex>,
    /// Use the interface (and address) the kernel routes this IP (IPv4 or IPv6) through,
    /// after --iface and --iface-regex.
    #[arg(long, env = "WEFT_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<std::net::IpAddr>,
    /// The IP the lease advertises to other nodes (default: the underlay interface's
    /// address); may be no local address at all, for a node behind NAT.
    #[arg(long, env = "WEFT_PUBLIC_IP", value_parser = parse_public_ip)]
    pub public_ip: Option<Ipv4Addr>,
    /// The IPv6 address the lease advertises (`PublicIPv6`) when the network has IPv6
    /// (default: the underlay interface's first global IPv6 address).
    #[arg(long, env = "WEFT_PUBLIC_IPV6")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// Where to write flannel's subnet.env for the CNI plugin.
    #[arg(
        long,
        env = "WEFT_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Where a running weft listens for its successor (`weft run` started again on the
    /// node hands the node over without an outage): a directory only root may write,
    /// shared by the old and the new process (a DaemonSet mounts it from the host).
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/run/weft")]
    pub state_dir: PathBuf,
    /// Address for /healthz, /readyz, /metrics and /leases (as flanneld's, every address by
    /// default; 127.0.0.1 keeps them from pods when probes come from the node itself).
    #[arg(long, env = "WEFT_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,
    /// Port for /healthz, /readyz, /metrics and /leases (0: off).
    #[arg(long, env = "WEFT_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Address for a second listener serving the same paths, for a scraper that must
    /// reach the node from elsewhere while --healthz-ip stays on loopback.
    #[arg(long, env = "WEFT_METRICS_IP", default_value = "0.0.0.0")]
    pub metrics_ip: IpAddr,
    /// Port for that second listener (0: off).
    #[arg(long, env = "WEFT_METRICS_PORT", default_value_t = 0)]
    pub metrics_port: u16,
    /// Where vxlan packets are encapsulated: `userspace` (weft's own dataplane on a TUN),
    /// `kernel` (a `flannel.<VNI>` vxlan device programmed as flanneld programs it) or
    /// `auto` (kernel when the vxlan module loads, else userspace). The wire is the same,
    /// so a cluster may mix them. host-gw needs neither; udp has only the userspace one.
    #[arg(long, env = "WEFT_DATAPLANE", value_enum, default_value_t = DataplaneChoice::Userspace)]
    pub dataplane: DataplaneChoice,
    /// Drop datagrams from hosts that hold no lease in the kernel (a BPF filter on the
    /// vxlan/udp sockets), before they are copied to weft or wake a worker
    /// (`--udp-sender-filter=false` to leave every check to userspace).
    #[arg(long, env = "WEFT_UDP_SENDER_FILTER", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub udp_sender_filter: bool,
    /// Least privilege once forwarding: the control thread keeps only CAP_NET_ADMIN and
    /// CAP_NET_RAW, every other thread nothing, all with no_new_privs
    /// (`--drop-capabilities=false` to keep what weft was started with).
    #[arg(long, env = "WEFT_DROP_CAPABILITIES", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub drop_capabilities: bool,
    /// Name of the TUN device.
    #[arg(long, env = "WEFT_TUN_NAME", default_value = "weft0", value_parser = parse_ifname)]
    pub tun_name: String,
    /// Forwarding threads (each with its own TUN queue and UDP socket). Two measured best on
    /// two vCPUs with tunnel GSO: four streams +26 %, one stream and ping RTT unchanged.
    #[arg(long, env = "WEFT_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// TUN offloads: a virtio-net header with TSO and checksum offload, so one TUN read or
    /// write moves up to 64 KB (`--tun-offload=false` to switch off).
    #[arg(long, env = "WEFT_TUN_OFFLOAD", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tun_offload: bool,
    /// UDP GSO: send a super-packet's datagrams in one syscall (`UDP_SEGMENT`).
    #[arg(long, env = "WEFT_UDP_GSO", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub udp_gso: bool,
    /// Tunnel GSO: a pod's TSO super-packet is encapsulated once and handed whole to the
    /// kernel, which segments it inside the tunnel (Linux 6.17+, either backend, `--tun-offload`;
    /// probed at start, with a fallback to splitting in userspace).
    #[arg(long, env = "WEFT_TUNNEL_GSO", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tunnel_gso: bool,
    /// Write consecutive UDP datagrams of one flow to the TUN as one `UDP_L4` GSO packet,
    /// which the kernel cuts back into the same datagrams at the pod (`--tun-offload`).
    #[arg(long, env = "WEFT_TUN_UDP_COALESCE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tun_udp_coalesce: bool,
    /// UDP GRO: receive a flow's datagrams in one syscall (`UDP_GRO`).
    #[arg(long, env = "WEFT_UDP_GRO", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub udp_gro: bool,
    /// Pin worker i to CPU i (modulo the CPUs weft may use). Off by default: measured on two
    /// cores, pinning did not help (see docs/performance.md, "How weft moves data").
    #[arg(long, env = "WEFT_CPU_AFFINITY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub cpu_affinity: bool,
    /// How a worker keeps polling after a burst before it sleeps: `adaptive` spins for
    /// twice what recent round trips took (at least 10 µs, at most --busy-poll-us),
    /// `fixed` for --busy-poll-us, `off` not at all (docs/performance.md, "Latency").
    #[arg(long, env = "WEFT_BUSY_POLL", value_enum, default_value_t = crate::dataplane::poll::Spin::Adaptive)]
    pub busy_poll: crate::dataplane::poll::Spin,
    /// The longest spin after a burst, in microseconds (0: never spin).
    #[arg(long, env = "WEFT_BUSY_POLL_US", default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub busy_poll_us: u32,
    /// Each worker's socket takes the datagrams the kernel receives on the worker's CPU
    /// (`SO_INCOMING_CPU`, Linux 6.2+), instead of the group's hash.
    #[arg(long, env = "WEFT_UDP_INCOMING_CPU", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub udp_incoming_cpu: bool,
    /// The TUN gives each packet to the queue of the CPU that sent it (worker i's queue
    /// for CPU i; an eBPF steering program, needs CAP_BPF) instead of by flow hash.
    #[arg(long, env = "WEFT_TUN_CPU_STEERING", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tun_cpu_steering: bool,
    /// The time slice each worker asks the scheduler for, in microseconds (EEVDF, Linux
    /// 6.12+; 0: the kernel's default): a shorter one preempts a busy pod sooner when a
    /// packet wakes the worker.
    #[arg(long, env = "WEFT_WORKER_SLICE_US", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub worker_slice_us: u32,
    /// Yield the CPU between polls while spinning, so a pod or another worker woken on
    /// the same CPU runs at once.
    #[arg(long, env = "WEFT_BUSY_POLL_YIELD", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub busy_poll_yield: bool,
    /// A burst that moved at least this many bytes, in packets of 1 KB or more on average,
    /// is bulk: an adaptive spin sleeps after it at once (0: no burst is bulk;
    /// docs/performance.md, "Latency").
    #[arg(long, env = "WEFT_BUSY_POLL_BULK_BYTES", default_value_t = 16384, value_parser = clap::value_parser!(u32).range(0..=(1 << 30)))]
    pub busy_poll_bulk_bytes: u32,
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
    /// Leases are Kubernetes nodes: the subnet is the node's podCIDR, the lease data its
    /// annotations, the config --net-config-path (flanneld's kube subnet manager). The node
    /// is NODE_NAME.
    #[arg(long, env = "WEFT_KUBE_SUBNET_MGR", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub kube_subnet_mgr: bool,
    /// The API server's URL (default: the kubeconfig's, else in-cluster).
    #[arg(long, env = "WEFT_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// A kubeconfig file (default: in-cluster service account).
    #[arg(long, env = "WEFT_KUBECONFIG_FILE")]
    pub kubeconfig_file: Option<PathBuf>,
    /// Prefix of the node annotations that hold the lease.
    #[arg(long, env = "WEFT_KUBE_ANNOTATION_PREFIX", default_value = crate::store::kube::DEFAULT_PREFIX)]
    pub kube_annotation_prefix: String,
    /// net-conf.json, for --kube-subnet-mgr.
    #[arg(
        long,
        env = "WEFT_NET_CONFIG_PATH",
        default_value = "/etc/kube-flannel/net-conf.json"
    )]
    pub net_config_path: PathBuf,
    /// Clear the node's NetworkUnavailable condition once forwarding (kube mode).
    #[arg(long, env = "WEFT_SET_NODE_NETWORK_UNAVAILABLE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub set_node_network_unavailable: bool,
    /// Masquerade traffic from pods to outside the cluster network (flanneld's nat
    /// FLANNEL-POSTRTG rules); subnet.env then says FLANNEL_IPMASQ=true.
    #[arg(long, env = "WEFT_IP_MASQ", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ip_masq: bool,
    /// Plain MASQUERADE instead of MASQUERADE --random-fully.
    #[arg(long, env = "WEFT_IP_MASQ_FULLY_RANDOM_DISABLE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ip_masq_fully_random_disable: bool,
    /// Accept forwarded traffic to and from the cluster network (flanneld's FLANNEL-FWD).
    #[arg(long, env = "WEFT_IPTABLES_FORWARD_RULES", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub iptables_forward_rules: bool,
    /// Keep a blackhole route for this node's subnet (flanneld's, for CNI setups without a
    /// bridge such as Canal): re-added every --iptables-resync seconds if missing.
    #[arg(long, env = "WEFT_IP_BLACKHOLE_ROUTE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ip_blackhole_route: bool,
    /// In iptables mode, refuse to start without br_netfilter, as flanneld does
    /// (`--br-netfilter-check=false` to carry on without it).
    #[arg(long, env = "WEFT_BR_NETFILTER_CHECK", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub br_netfilter_check: bool,
    /// Re-check the iptables rules every this many seconds (1-3600).
    #[arg(long, env = "WEFT_IPTABLES_RESYNC", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub iptables_resync: u32,
}

impl RunArgs {
    /// The kube settings, if the Kubernetes API is the store. The node is `NODE_NAME`.
    pub fn kube_options(&self) -> Option<crate::store::kube::KubeOptions> {
        self.kube_subnet_mgr
            .then(|| crate::store::kube::KubeOptions {
                api_url: self.kube_api_url.clone(),
                kubeconfig: self.kubeconfig_file.clone(),
                prefix: self.kube_annotation_prefix.clone(),
                net_config_path: self.net_config_path.clone(),
                set_network_unavailable: self.set_node_network_unavailable,
                node_name: std::env::var("NODE_NAME").unwrap_or_default(),
                pod: std::env::var("POD_NAMESPACE")
                    .ok()
                    .zip(std::env::var("POD_NAME").ok())
                    .filter(|(ns, name)| !ns.is_empty() && !name.is_empty()),
            })
    }

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

/// `--public-ip`: an IPv4 address other than 0.0.0.0, which stands for "no IPv4 side"
/// in a lease (an IPv6-only node's PublicIP) and cannot be advertised.
fn parse_public_ip(s: &str) -> std::result::Result<Ipv4Addr, String> {
    match s.parse::<Ipv4Addr>() {
        Ok(ip) if ip.is_unspecified() => Err("0.0.0.0 is no address to advertise; give the node's public IPv4 address, or leave --public-ip out".into()),
        Ok(ip) => Ok(ip),
        Err(e) => Err(format!("{e}: give an IPv4 address such as 192.0.2.1")),
    }
}

fn parse_regex(s: &str) -> std::result::Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| format!("not a valid regex: {e}"))
}

fn parse_ifname(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ']) {
        return Err(format!(
            "{s:?} is not a valid interface name (1-15 characters, no '/' or spaces)"
        ));
    }
    Ok(s.to_string())
}

/// flanneld reads every flag from `FLANNELD_<FLAG>` as well (its `flagutil.SetFlagsFromEnv`);
/// weft's flags come from `WEFT_<FLAG>`. The `WEFT_` variables to set so that a unit file or
/// manifest written for flanneld configures weft the same way: each `FLANNELD_X` whose
/// `WEFT_X` is not set (an explicit `WEFT_X` wins).
pub fn flanneld_env_aliases(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let vars: Vec<(String, String)> = vars.into_iter().collect();
    vars.iter()
        .filter_map(|(k, v)| {
            let weft = format!("WEFT_{}", k.strip_prefix("FLANNELD_")?);
            (!vars.iter().any(|(k2, _)| *k2 == weft)).then(|| (weft, v.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `weft run`'s flags from `flags`, as the command line gives them.
    fn run_args(flags: &[&str]) -> RunArgs {
        let argv = std::iter::once("weft").chain(flags.iter().copied());
        Cli::try_parse_from(argv).unwrap().run
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    /// flanneld's `--iface-can-reach` takes an address of either family.
    #[test]
    fn iface_can_reach_takes_either_family() {
        for a in ["192.0.2.3", "2001:db8::3"] {
            let got = run_args(&["--iface-can-reach", a]).iface_can_reach;
            assert_eq!(got, Some(a.parse().unwrap()));
        }
        assert!(Cli::try_parse_from(["weft", "--iface-can-reach", "eth0"]).is_err());
    }

    #[test]
    fn flanneld_variables_become_weft_ones_unless_set() {
        let v = |k: &str, x: &str| (k.to_string(), x.to_string());
        let got = flanneld_env_aliases([
            v("FLANNELD_IFACE", "eth1"),
            v("FLANNELD_IP_MASQ", "true"),
            v("WEFT_IP_MASQ", "false"),
            v("PATH", "/bin"),
        ]);
        assert_eq!(got, vec![v("WEFT_IFACE", "eth1")]);
    }

    #[test]
    fn boolean_flags_take_the_bare_form_and_a_value() {
        let a = Cli::try_parse_from(["weft", "--iptables-forward-rules", "--tun-offload=false"])
            .unwrap()
            .run;
        assert!(a.iptables_forward_rules && !a.tun_offload);
        let a = Cli::try_parse_from(["weft", "--udp-gso", "false", "--cpu-affinity", "--ip-masq"])
            .unwrap()
            .run;
        assert!(!a.udp_gso && a.cpu_affinity && a.ip_masq);
        assert!(Cli::try_parse_from(["weft", "--udp-gro=maybe"]).is_err());
        // 0.0.0.0 marks an IPv6-only lease: never advertised as an address.
        let e = Cli::try_parse_from(["weft", "--public-ip", "0.0.0.0"])
            .err()
            .unwrap();
        assert!(e.to_string().contains("no address to advertise"), "{e}");
    }
}
