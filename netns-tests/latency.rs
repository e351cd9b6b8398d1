//! The bench's request/response figures (issue 29): what a pod round trip costs, where
//! small requests and replies, not bulk, are the traffic.
//!
//! - **TCP_RR**, as netperf's (not packaged here): one TCP connection, `TCP_NODELAY`, a
//!   1-byte request answered by a 1-byte reply, as fast as they go for the run's seconds;
//!   transactions per second and each transaction's time, p50 and p99. The server and
//!   client are this same bench binary run again inside the pods' namespaces
//!   (`WEFT_BENCH_PHASE=rr-server` / `rr-client`).
//! - **ping**, p50 and p99 of 100 echoes 10 ms apart with the path idle, with weft's CPU
//!   meanwhile (what its workers' spinning costs), and of 50 while an iperf3 TCP
//!   stream runs the same way (latency under load).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, iperf3_json_family, ns_run, Pod};

/// The TCP_RR server's port.
const RR_PORT: u16 = 5299;

/// One TCP_RR run: transactions per second, p50 and p99 of a transaction, in µs.
pub struct Rr {
    pub tps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// p50 and p99 of a ping series, in µs.
pub struct Rtt {
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs this binary's phase `which` (`WEFT_BENCH_PHASE`): the TCP_RR server or client.
pub fn phase(which: &str) {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    match which {
        "rr-server" => serve(),
        "rr-client" => {
            let dst: SocketAddr = env("WEFT_BENCH_RR_DST").parse().unwrap();
            let seconds: f64 = env("WEFT_BENCH_RR_SECONDS").parse().unwrap();
            client(dst, Duration::from_secs_f64(seconds));
        }
        _ => panic!("unknown bench phase {which}"),
    }
}

/// Answers one connection: a byte for each byte, until it closes.
fn serve() {
    // Both families on one socket; an IPv4 one where the namespace has no IPv6.
    let l = TcpListener::bind(("::", RR_PORT))
        .or_else(|_| TcpListener::bind(("0.0.0.0", RR_PORT)))
        .expect("bind the TCP_RR port");
    println!("listening");
    let _ = std::io::stdout().flush();
    let (mut s, _) = l.accept().expect("accept");
    let _ = s.set_nodelay(true);
    let mut b = [0u8; 1];
    while matches!(s.read(&mut b), Ok(1)) {
        if s.write_all(&b).is_err() {
            break;
        }
    }
}

/// Transactions against `dst` for `run` (after half a second of warm-up): prints
/// `<transactions> <seconds> <p50 µs> <p99 µs>`.
fn client(dst: SocketAddr, run: Duration) {
    let mut s = (0..100)
        .find_map(|_| {
            TcpStream::connect_timeout(&dst, Duration::from_secs(1))
                .map_err(|_| std::thread::sleep(Duration::from_millis(50)))
                .ok()
        })
        .expect("connect to the TCP_RR server");
    s.set_nodelay(true).unwrap();
    // A path that dies mid-run ends the run (no figure), not the bench.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(500) {
        one(&mut s);
    }
    let mut took = Vec::new();
    let start = Instant::now();
    while start.elapsed() < run {
        let t = Instant::now();
        one(&mut s);
        took.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let secs = start.elapsed().as_secs_f64();
    let n = took.len();
    let p50 = harness::percentile(&mut took, 0.5);
    let p99 = harness::percentile(&mut took, 0.99);
    println!("{n} {secs} {p50} {p99}");
}

/// One transaction: a byte there, a byte back.
fn one(s: &mut TcpStream) {
    let mut b = [7u8; 1];
    s.write_all(&b).unwrap();
    s.read_exact(&mut b).unwrap();
}

/// Starts this binary as `phase` in namespace `ns` with `env`.
fn spawn_phase(ns: &str, phase: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(std::env::current_exe().unwrap())
        .env("WEFT_BENCH_PHASE", phase)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start a bench phase")
}

/// TCP_RR from pod `a` to `dst` (pod `b`'s address of the mode's family) for `seconds`.
pub fn tcp_rr(a: &Pod, b: &Pod, dst: &str, seconds: u32) -> Option<Rr> {
    let ip: std::net::IpAddr = dst.parse().ok()?;
    let mut server = spawn_phase(&b.ns, "rr-server", &[]);
    let mut line = [0u8; 10];
    let listening = server
        .stdout
        .as_mut()
        .is_some_and(|o| o.read_exact(&mut line).is_ok());
    let out = listening.then(|| {
        let env = [
            (
                "WEFT_BENCH_RR_DST",
                SocketAddr::new(ip, RR_PORT).to_string(),
            ),
            ("WEFT_BENCH_RR_SECONDS", seconds.to_string()),
        ];
        spawn_phase(&a.ns, "rr-client", &env).wait_with_output()
    });
    let _ = server.kill();
    let _ = server.wait();
    let out = out?.ok()?;
    let v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [n, secs, p50_us, p99_us] if n > 0.0 => Some(Rr {
            tps: n / secs,
            p50_us,
            p99_us,
        }),
        _ => None,
    }
}

/// p50 and p99 of `count` pings from pod `a` to `dst`, `interval` seconds apart.
pub fn ping(a: &Pod, dst: &str, count: u32, interval: &str) -> Option<Rtt> {
    let p = ns_run(
        &a.ns,
        &[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            dst,
        ],
    );
    let mut times: Vec<f64> = String::from_utf8_lossy(&p.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if times.is_empty() {
        return None;
    }
    Some(Rtt {
        p50_us: harness::percentile(&mut times, 0.5),
        p99_us: harness::percentile(&mut times, 0.99),
    })
}

/// What one repeat's latency figures run: TCP_RR for `seconds`, and 100 idle pings
/// `ping_interval` seconds apart (`ping -i`; the bench's default 0.01).
pub struct Plan<'a> {
    pub seconds: u32,
    pub ping_interval: &'a str,
}

/// Every latency figure of one repeat, from pod `a` to `b` at `dst`: TCP_RR, ping idle
/// (with the CPU of the node agents `weft` meanwhile) and under load.
pub fn measure(
    (a, b): (&Pod, &Pod),
    dst: &str,
    v6: bool,
    plan: &Plan,
    weft: &[u32],
    push: &mut dyn FnMut(&'static str, f64),
) {
    if let Some(r) = tcp_rr(a, b, dst, plan.seconds) {
        push("rr_tps", r.tps);
        push("rr_p50_us", r.p50_us);
        push("rr_p99_us", r.p99_us);
    }
    let cpu = || weft.iter().map(|&p| harness::cpu_ns(p)).sum::<u64>();
    let (cpu0, t0) = (cpu(), Instant::now());
    if let Some(r) = ping(a, dst, 100, plan.ping_interval) {
        // What 100 echoes a second cost weft (both nodes): what its workers spin.
        if !weft.is_empty() {
            let ns = cpu().saturating_sub(cpu0) as f64;
            push(
                "ping_cpu_pct",
                100.0 * ns / 1e9 / t0.elapsed().as_secs_f64(),
            );
        }
        push("ping_p50_us", r.p50_us);
        push("ping_p99_us", r.p99_us);
    }
    if let Some(r) = ping_under_load(a, b, dst, v6) {
        push("ping_load_p50_us", r.p50_us);
        push("ping_load_p99_us", r.p99_us);
    }
}

/// [`ping`] while an iperf3 TCP stream runs from `a` to `b` (started a second before).
pub fn ping_under_load(a: &Pod, b: &Pod, dst: &str, v6: bool) -> Option<Rtt> {
    let (from, to) = (a.clone(), b.clone());
    let stream = std::thread::spawn(move || {
        let _ = iperf3_json_family(&from, &to, v6, &["-t", "3"]);
    });
    std::thread::sleep(Duration::from_millis(1200));
    let rtt = ping(a, dst, 50, "0.02");
    let _ = stream.join();
    rtt
}
