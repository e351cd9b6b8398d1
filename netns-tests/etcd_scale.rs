//! Scale bench for the etcd control plane, as root: `netns-tests/etcd-scale [N]` (default
//! 5000). Fills a real etcd (in its own namespace on the test underlay) with N leases as N
//! flanneld nodes would write them (one 24 h etcd lease each), then reports
//!
//! - the time a node that is already running takes to see all N (the watch under a burst),
//! - the time from starting a new node to its first full table,
//! - the memory it costs (resident set of a weft node before and after the N leases),
//! - its CPU over 30 s while nothing changes,
//! - the delay from one lease write (and one delete) in etcd to a node's table, and on
//!   the kernel's vxlan to the peer's route in the kernel.
//!
//! `WEFT_SCALE_ARGS` adds flags to the weft nodes: `--dataplane kernel` measures the
//! kernel's vxlan, where every lease is a route, a neighbour and an FDB entry.
//!
//! Parts that must reach etcd or a node's health port run this same binary again inside
//! the node's namespace (`WEFT_SCALE_PHASE`). Not a test: nothing is asserted.

#[path = "harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use harness::{Cluster, Kind, ETCD_PREFIX};
use weft::lease::{Lease, LeaseAttrs, VxlanBackendData};
use weft::store::etcd::{EtcdOptions, EtcdStore};
use weft::wire::MacAddr;

const CONF: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;

/// The i-th synthetic node's lease: 10.(100 + i / 250).(i % 250).0/24 on 198.51.100.x.
fn lease(i: usize) -> Lease {
    let (a, b) = (100 + i / 250, i % 250);
    Lease {
        subnet: format!("10.{a}.{b}.0/24").parse().ok(),
        ipv6_subnet: None,
        attrs: LeaseAttrs::vxlan(
            Ipv4Addr::new(198, 51, (100 + i / 250) as u8, b as u8 + 1),
            VxlanBackendData {
                vni: 1,
                vtep_mac: MacAddr([0x0e, 0x5c, (i >> 8) as u8, i as u8, 0, 1]),
            },
        ),
        expiration: Some(SystemTime::now() + Duration::from_secs(86400)),
    }
}

fn store(url: &str) -> EtcdStore {
    EtcdStore::open(&EtcdOptions {
        endpoints: vec![url.to_string()],
        prefix: ETCD_PREFIX.into(),
        ..Default::default()
    })
    .unwrap()
}

/// GET /leases from the local health port: the table, one lease per line.
fn table(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /leases HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Inside a node namespace: write/delete leases and time them into the node's table.
fn phase(which: &str, url: &str) {
    let mut s = store(url);
    match which {
        "fill" => {
            let n: usize = std::env::var("WEFT_SCALE_N").unwrap().parse().unwrap();
            let t = Instant::now();
            for i in 0..n {
                s.put(&lease(i)).unwrap();
            }
            println!("fill {n} {}", t.elapsed().as_millis());
        }
        "latency" => {
            let port: u16 = std::env::var("WEFT_SCALE_PORT").unwrap().parse().unwrap();
            let (mut add, mut del, mut fetch, mut after_put) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (routed, mut in_kernel) = (kernel_route(), Vec::new());
            for _ in 0..30 {
                let t = Instant::now();
                std::hint::black_box(table(port));
                fetch.push(t.elapsed().as_secs_f64() * 1e3);
            }
            for k in 0..30 {
                let l = lease(30_000 + k);
                let addr = std::net::IpAddr::V4(l.subnet.expect("an IPv4 lease").network());
                let t = Instant::now();
                s.put(&l).unwrap();
                let written = Instant::now();
                while !harness::table_holds(port, addr) {}
                add.push(t.elapsed().as_secs_f64() * 1e3);
                after_put.push(written.elapsed().as_secs_f64() * 1e3);
                if let Some(r) = &routed {
                    while !r(addr) {}
                    in_kernel.push(t.elapsed().as_secs_f64() * 1e3);
                }
                let t = Instant::now();
                s.delete(&l).unwrap();
                while harness::table_holds(port, addr) {}
                del.push(t.elapsed().as_secs_f64() * 1e3);
                if let Some(r) = &routed {
                    while r(addr) {}
                }
            }
            if !in_kernel.is_empty() {
                print!(
                    "in the kernel (its route via flannel.1) median {:.1} ms, max {:.1} ms; ",
                    harness::percentile(&mut in_kernel, 0.5),
                    harness::percentile(&mut in_kernel, 1.0)
                );
            }
            println!(
                "add median {:.1} ms, p90 {:.1} ms, max {:.1} ms (median {:.1} ms after etcd acknowledged the write); delete median {:.1} ms, max {:.1} ms; one fetch of the whole /leases {:.1} ms",
                harness::percentile(&mut add, 0.5),
                harness::percentile(&mut add, 0.9),
                harness::percentile(&mut add, 1.0),
                harness::percentile(&mut after_put, 0.5),
                harness::percentile(&mut del, 0.5),
                harness::percentile(&mut del, 1.0),
                harness::percentile(&mut fetch, 0.5)
            );
        }
        _ => panic!("unknown phase {which}"),
    }
}

/// On a node with the kernel's vxlan (`WEFT_SCALE_ARGS="--dataplane kernel"`): whether
/// the kernel routes an address via `flannel.1` (one `RTM_GETROUTE` lookup, not a dump).
fn kernel_route() -> Option<impl Fn(std::net::IpAddr) -> bool> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::route::RouteAttribute;
    let dev: u32 = std::fs::read_to_string("/sys/class/net/flannel.1/ifindex")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let handle = rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        handle
    });
    Some(move |addr: std::net::IpAddr| {
        let std::net::IpAddr::V4(a) = addr else {
            return false;
        };
        let req = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build();
        rt.block_on(async {
            let mut s = handle.route().get(req).execute();
            let Ok(Some(m)) = s.try_next().await else {
                return false;
            };
            m.attributes.contains(&RouteAttribute::Oif(dev))
        })
    })
}

fn wait_lines(c: &Cluster, i: usize, want: usize, limit: Duration) -> Duration {
    let t = Instant::now();
    harness::wait_for("the full table", limit, || {
        let n = c.http(i, "/leases").map(|s| s.lines().count()).unwrap_or(0);
        (n >= want).then_some(())
    });
    t.elapsed()
}

fn main() {
    if let Ok(p) = std::env::var("WEFT_SCALE_PHASE") {
        return phase(&p, &std::env::var("WEFT_SCALE_ETCD").unwrap());
    }
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("usage: etcd-scale [LEASES]"))
        .unwrap_or(5000);
    let weft = harness::weft_next_to_exe();
    let mut c = Cluster::with_etcd(Path::new(&weft), CONF);
    let url = c.etcd().url.clone();
    c.add_node(Kind::Weft);
    c.add_node(Kind::Weft);
    // Node 2 runs before the leases arrive.
    let extra = harness::scale_args();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    c.start_weft(1, &extra);
    let pid2 = c.nodes[1].child.as_ref().unwrap().id();
    std::thread::sleep(Duration::from_secs(1));
    let rss_before = harness::rss_kb(pid2);

    let env = |extra: Vec<(&'static str, String)>| {
        let mut v = vec![("WEFT_SCALE_ETCD", url.clone())];
        v.extend(extra);
        v
    };
    let ns1 = c.nodes[0].ns.clone();
    let fill = harness::run_phase(&ns1, "fill", &env(vec![("WEFT_SCALE_N", n.to_string())]));
    let fill_ms: u64 = fill.split_whitespace().nth(2).unwrap().parse().unwrap();
    let burst = wait_lines(&c, 1, n + 1, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = harness::rss_kb(pid2);
    let cpu0 = harness::cpu_seconds(pid2);
    std::thread::sleep(Duration::from_secs(30));
    let idle = (harness::cpu_seconds(pid2) - cpu0) / 30.0 * 100.0;

    // A new node: from process start to a table with every lease.
    let t = Instant::now();
    c.start_weft(0, &extra);
    let env_written = t.elapsed();
    wait_lines(&c, 0, n + 2, Duration::from_secs(120));
    let first_full = t.elapsed();
    let pid1 = c.nodes[0].child.as_ref().unwrap().id();
    let rss_new = harness::rss_kb(pid1);

    let lat = harness::run_phase(
        &ns1,
        "latency",
        &env(vec![("WEFT_SCALE_PORT", c.nodes[0].healthz.to_string())]),
    );

    let report = format!(
        "etcd scale: {n} leases (one 24 h etcd lease each) written in {fill_ms} ms\n\
         running node saw all {n} {:.0} ms after the last write\n\
         new node: subnet.env after {:.0} ms, first full table ({} leases) after {:.0} ms from start\n\
         memory: running node RSS {rss_before} kB with 1 lease -> {rss_after} kB with {} ({:.0} bytes per lease); new node RSS {rss_new} kB\n\
         idle CPU of the running node over 30 s with nothing changing: {idle:.2} % of one vCPU\n\
         one lease write -> table (30 samples, polled with /leases/<address>): {lat}",
        burst.as_secs_f64() * 1e3,
        env_written.as_secs_f64() * 1e3,
        n + 2,
        first_full.as_secs_f64() * 1e3,
        n + 1,
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / n as f64,
    );
    println!("{report}");
    let _ = std::fs::create_dir_all("target/bench");
    let _ = std::fs::write(
        format!("target/bench/etcd-scale-{n}.txt"),
        format!("{report}\n"),
    );
}
