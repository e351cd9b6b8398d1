//! The `weft` command line: a thin layer over the library.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use weft::backend::userspace;
use weft::config::{BackendConfig, NetConfig};
use weft::encap::{DropReason, Inbound, Node, Outbound, HEADROOM};
use weft::lease::alloc::allocate;
use weft::lease::{Lease, LeaseTable, Peer, Snapshot};
use weft::subnet_env::SubnetEnv;
use weft::wire::udp::ChecksumMode;
use weft::wire::MacAddr;

/// weft: a flannel-compatible pod-network agent with a userspace VXLAN/UDP dataplane.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: acquire a lease, create the TUN device, forward pod traffic.
    #[command(version, display_name = "weft")]
    Run(Box<weft::daemon::RunArgs>),
    /// Remove what `weft run` leaves behind on purpose: the fail-closed `unreachable` route
    /// for the cluster network (route protocol 87). Run it when uninstalling weft; while it
    /// stays, pods' packets for other nodes cannot leave the node unencapsulated.
    Cleanup,
    /// Check a net-conf.json and print it with flannel's defaults filled in.
    CheckConfig {
        /// The file (flannel's net-conf.json).
        file: PathBuf,
    },
    /// Run the pure core for a simulated cluster: allocate leases, write subnet.env files,
    /// encapsulate and decapsulate real packets, and show the drops. No root, no devices.
    Demo {
        /// How many nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=50))]
        nodes: u8,
        /// A net-conf.json to use instead of {"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to write each node's subnet.env.
        #[arg(long, default_value = "target/demo")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // flanneld's FLANNELD_<FLAG> variables configure weft too (before any thread exists).
    for (k, v) in weft::daemon::flanneld_env_aliases(std::env::vars()) {
        std::env::set_var(k, v);
    }
    let cli = Cli::parse();
    let v = match &cli.command {
        Command::Run(a) => a.v,
        _ => 0,
    };
    init_logging(v);
    let result = match cli.command {
        Command::Run(args) => weft::daemon::run(*args).map_err(|e| e.to_string()),
        Command::Cleanup => cleanup(),
        Command::CheckConfig { file } => check_config(&file),
        Command::Demo { nodes, config, dir } => demo(nodes, config, &dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// One line per event on stderr, with a timestamp, level and module: `RUST_LOG` if set,
/// else the level `-v` selects (flanneld's `-v`: 0 info, 1-4 debug, 5+ trace).
fn init_logging(v: u8) {
    use std::io::IsTerminal as _;
    let level = match v {
        0 => "info",
        1..=4 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn cleanup() -> Result<(), String> {
    let (guards, others) = weft::daemon::cleanup().map_err(|e| format!("cleanup: {e}"))?;
    for g in &guards {
        println!("removed the fail-closed route for {g}");
    }
    for o in &others {
        println!("removed {o}");
    }
    if guards.is_empty() {
        println!("no fail-closed route to remove");
    }
    Ok(())
}

fn read_config(file: &std::path::Path) -> Result<NetConfig, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    NetConfig::parse(&text).map_err(|e| format!("{}: {e}", file.display()))
}

fn check_config(file: &std::path::Path) -> Result<(), String> {
    let c = read_config(file)?;
    for w in &c.warnings {
        println!("warning: {w}");
    }
    if let Some(v4) = &c.ipv4 {
        println!("Network    {}", v4.network);
        println!("SubnetLen  {}", v4.subnet_len);
        println!("SubnetMin  {}", v4.subnet_min);
        let n = v4.subnet_count();
        println!("SubnetMax  {}  ({n} subnets)", v4.subnet_max);
    } else {
        println!("Network    none: IPv6-only (EnableIPv4 false)");
    }
    if let Some(v6) = &c.ipv6 {
        println!("IPv6Network    {}", v6.network);
        println!("IPv6SubnetLen  {}", v6.subnet_len);
        println!("IPv6SubnetMin  {}", v6.subnet_min);
        let n = v6.subnet_count();
        println!("IPv6SubnetMax  {}  ({n} subnets)", v6.subnet_max);
    }
    println!("Backend    {}", describe_backend(&c.backend));
    println!(
        "pod MTU    {} on a 1500-byte underlay",
        c.backend.pod_mtu(1500)
    );
    Ok(())
}

/// `weft check-config`'s line for the backend.
fn describe_backend(b: &BackendConfig) -> String {
    match *b {
        BackendConfig::Vxlan {
            vni,
            port,
            mtu,
            direct_routing,
        } => format!(
            "vxlan VNI {vni} port {port}{}{}",
            mtu.map(|m| format!(" MTU {m}")).unwrap_or_default(),
            if direct_routing { " DirectRouting" } else { "" }
        ),
        BackendConfig::Udp { port } => format!("udp port {port}"),
        BackendConfig::HostGw => "host-gw (routes via each node's public IP)".into(),
        BackendConfig::Wireguard(w) => format!(
            "wireguard ListenPort {} ListenPortV6 {} Mode {:?}{}{}{} (weft: userspace, IPv4 networks)",
            w.listen_port,
            w.listen_port_v6,
            w.mode,
            w.mtu.map(|m| format!(" MTU {m}")).unwrap_or_default(),
            if w.psk.is_some() { " PSK" } else { "" },
            w.keepalive
                .map(|k| format!(" keepalive {k} s"))
                .unwrap_or_default(),
        ),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `weft demo`: builds a simulated cluster of `nodes` nodes, shows node1's subnet.env,
/// then sends a ping, packets answered with ICMP, and datagrams node2 drops.
fn demo(nodes: u8, config: Option<PathBuf>, dir: &std::path::Path) -> Result<(), String> {
    let cfg = match config {
        Some(f) => read_config(&f)?,
        None => NetConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .map_err(|e| e.to_string())?,
    };
    let Some(network) = cfg.network() else {
        return Err("weft demo simulates IPv4 pods: give it a config with an IPv4 Network".into());
    };
    println!("== weft demo: the pure core alone, {nodes} simulated nodes, no devices (./scripts/demo runs a real cluster)");
    let (leases, local) = demo_cluster(&cfg, nodes, dir)?;
    println!(
        "subnet.env of node1 ({}):\n{}",
        dir.join("node1/subnet.env").display(),
        SubnetEnv::read(&dir.join("node1/subnet.env"))
            .map_err(|e| e.to_string())?
            .render()
    );

    let table = LeaseTable::new(network);
    table.replace_all(leases.iter().filter_map(|l| Peer::from_lease(l).ok()));
    let (n1, n2) = (&local[0], &local[1]);
    let snap = table.load();
    let mut buf = vec![0u8; HEADROOM + 2048];
    let from = demo_ping(&snap, n1, n2, &mut buf)?;
    demo_icmp_replies(&cfg, &snap, n1, n2, &mut buf);
    demo_drops(&snap, n1, n2, from, &mut buf)
}

/// Builds the simulated cluster: allocates each node's lease (node `i` has public IP
/// 192.0.2.`i`), writes its subnet.env under `dir`, and prints the lease.
fn demo_cluster(
    cfg: &NetConfig,
    nodes: u8,
    dir: &std::path::Path,
) -> Result<(Vec<Lease>, Vec<Node>), String> {
    let now = SystemTime::now();
    let seed = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut leases: Vec<Lease> = Vec::new();
    let mut local: Vec<Node> = Vec::new();
    for i in 1..=nodes {
        let public_ip = Ipv4Addr::new(192, 0, 2, i);
        let a = allocate(
            cfg,
            &leases,
            public_ip,
            Default::default(),
            now,
            seed.rotate_left(i as u32 * 7),
        )
        .map_err(|e| e.to_string())?;
        let mac = MacAddr::local_unicast([0x0e, 0x57, 0x45, 0x46, 0x54, i]);
        let attrs = userspace::lease_attrs(&cfg.backend, (public_ip, None), None, [mac, mac]);
        let subnet = a.subnet.ok_or("an IPv4 network allocates IPv4 subnets")?;
        let lease = Lease {
            subnet: Some(subnet),
            ipv6_subnet: None,
            attrs,
            expiration: Some(now + Duration::from_secs(86400)),
        };
        println!("node{i} {public_ip}: lease {} ({:?})", lease, a.source);
        let env = SubnetEnv {
            network: cfg.network(),
            subnet: Some(subnet),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: cfg.backend.pod_mtu(1500),
            ipmasq: false,
        };
        let path = dir.join(format!("node{i}/subnet.env"));
        env.write(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let format = userspace::format(&cfg.backend, &lease).map_err(|e| e.to_string())?;
        local.push(Node {
            public_ip,
            subnet: Some(subnet),
            mtu: cfg.backend.pod_mtu(1500) as usize,
            format,
            udp_checksum: ChecksumMode::Full,
            hash_seed: seed,
            v6: None,
        });
        leases.push(lease);
    }
    Ok((leases, local))
}

/// Pod address `h` in node `n`'s subnet.
fn pod_ip(n: &Node, h: u32) -> Ipv4Addr {
    let base = n.subnet.map_or(0, |s| u32::from(s.network()));
    Ipv4Addr::from(base.wrapping_add(h))
}

/// A ping from a pod on node1 to a pod on node2: encapsulated by node1, shown on the
/// wire, and delivered by node2. Returns the tunnel's source address, for later datagrams.
fn demo_ping(snap: &Snapshot, n1: &Node, n2: &Node, buf: &mut [u8]) -> Result<SocketAddr, String> {
    let ping = icmp_echo(pod_ip(n1, 2), pod_ip(n2, 2), 56, true);
    buf[HEADROOM..HEADROOM + ping.len()].copy_from_slice(&ping);
    let Outbound::Send(t) = n1.outbound(snap, buf, HEADROOM, ping.len(), 1) else {
        return Err("the ping was not encapsulated".into());
    };
    println!(
        "ping {} -> {}: {} bytes to {} (udp src port {})",
        pod_ip(n1, 2),
        pod_ip(n2, 2),
        t.datagram.len(),
        t.dst,
        t.src_port
    );
    println!("  on the wire: {}", hex(&buf[t.datagram.clone()]));
    let from = SocketAddr::from((n1.public_ip, t.src_port));
    let p = t.udp_payload();
    match n2.inbound(snap, from, buf, p.start, p.len(), 0) {
        Inbound::Deliver(r) if buf[r.clone()] == ping[..] => {
            println!("  node2 delivers the original {} bytes to its TUN", r.len())
        }
        other => return Err(format!("node2 did not deliver the ping: {other:?}")),
    }
    Ok(from)
}

/// Packets node1 answers with ICMP instead of sending: too big with DF, and to a subnet
/// nobody leases.
fn demo_icmp_replies(cfg: &NetConfig, snap: &Snapshot, n1: &Node, n2: &Node, buf: &mut [u8]) {
    for (what, pkt) in [
        (
            "1451-byte DF packet",
            icmp_echo(pod_ip(n1, 2), pod_ip(n2, 2), n1.mtu - 27, true),
        ),
        (
            "packet to an unleased subnet",
            icmp_echo(
                pod_ip(n1, 2),
                cfg.ipv4.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |c| {
                    Ipv4Addr::from(u32::from(c.subnet_max).saturating_add(9))
                }),
                8,
                false,
            ),
        ),
    ] {
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        match n1.outbound(snap, buf, HEADROOM, pkt.len(), 2) {
            Outbound::Reply { packet, reason } => {
                let icmp = &buf[packet.start + 20..packet.end];
                println!(
                    "{what}: ICMP type {} code {} mtu {} back to the pod ({})",
                    icmp[0],
                    icmp[1],
                    u16::from_be_bytes([icmp[6], icmp[7]]),
                    reason.as_str()
                );
            }
            other => println!("{what}: {other:?}"),
        }
    }
}

/// Datagrams node2 drops: a spoofed packet (node1's tunnel, from `from`, carrying a source
/// from node2's subnet) and garbage from a stranger; then node2's drop counters.
fn demo_drops(
    snap: &Snapshot,
    n1: &Node,
    n2: &Node,
    from: SocketAddr,
    buf: &mut [u8],
) -> Result<(), String> {
    let mut drops = [0u64; DropReason::COUNT];
    let spoof = icmp_echo(pod_ip(n2, 7), pod_ip(n2, 2), 8, false);
    buf[HEADROOM..HEADROOM + spoof.len()].copy_from_slice(&spoof);
    let peer2 = *snap.lookup(pod_ip(n2, 2)).ok_or("no lease for node2")?;
    if let Outbound::Send(t) = n1.encap(buf, HEADROOM, spoof.len(), &peer2, 3) {
        let p = t.udp_payload();
        if let Inbound::Drop(r) = n2.inbound(snap, from, buf, p.start, p.len(), 0) {
            drops[r.index()] += 1;
        }
    }
    let mut garbage = [0x08u8, 0, 0, 0, 0, 0, 2, 0, 1, 2, 3];
    if let Inbound::Drop(r) = n2.inbound(
        snap,
        SocketAddr::from((Ipv4Addr::new(198, 51, 100, 1), 9)),
        &mut garbage,
        0,
        11,
        0,
    ) {
        drops[r.index()] += 1;
    }
    println!("node2 drop counters after a spoofed and a garbage datagram:");
    for r in DropReason::ALL.iter().filter(|r| drops[r.index()] > 0) {
        println!("  {:<16} {}", r.as_str(), drops[r.index()]);
    }
    Ok(())
}

/// An ICMP echo request with a valid checksum.
fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, payload: usize, df: bool) -> Vec<u8> {
    use weft::wire::{icmpv4, ipv4};
    let icmp_len = icmpv4::HEADER_LEN + payload;
    let mut v = vec![0u8; ipv4::HEADER_LEN + icmp_len];
    ipv4::Repr {
        src,
        dst,
        protocol: ipv4::PROTO_ICMP,
        payload_len: icmp_len,
        ttl: 64,
        tos: 0,
        ident: 1,
        dont_frag: df,
    }
    .emit(&mut v);
    let icmp = &mut v[ipv4::HEADER_LEN..];
    for (i, b) in icmp[icmpv4::HEADER_LEN..].iter_mut().enumerate() {
        *b = i as u8;
    }
    icmpv4::EchoRequest { ident: 1, seq: 1 }.emit(icmp);
    v
}
