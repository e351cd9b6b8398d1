//! A cluster of network namespaces on one host, for weft's integration tests and demo.
//!
//! ```text
//!  <p>-u            underlay namespace: bridge br0 (192.0.2.0/24, no address)
//!   |- u<i>  <->  eth0 in <p>-n<i>   node i: 192.0.2.<i>/24, weft (or kernel vxlan),
//!                                     cni0 bridge at FLANNEL_SUBNET with FLANNEL_MTU
//!                   vp<j> <-> eth0 in <p>-n<i>p<j>   pod j: FLANNEL_SUBNET + 10 + j
//! ```
//! Every name starts with `wt<pid>x<seq>` so parallel runs never collide, and namespaces left
//! by a run that died (its pid is gone) are deleted by the next one. `Drop` stops every
//! process and deletes every namespace and file, on success, failure or panic. The
//! harness itself uses `ip` and friends; only weft is forbidden that.
//!
//! One module per concern, everything re-exported here (`harness::Cluster`,
//! `harness::ns_sh`, ...):
//!
//! - [`command`]: running commands on the host and in namespaces, one-line commands
//!   (`ip(&ns, "link set eth0 up")`), waiting;
//! - [`cluster`]: the cluster, its nodes and pods, its lease store and its clean-up;
//! - [`netns`]: namespaces, veths, the underlay, NAT and routers;
//! - [`process`]: weft's processes: starting, stopping, healthz, metrics, tables;
//! - [`kernel_nodes`]: nodes set up as stock flannel sets them up (kernel vxlan, host-gw);
//!   [`dual`]: flanneld's dual-stack vxlan node and the IPv6 underlay;
//! - [`etcd`]: a real etcd server and etcdctl; [`kube`]: the kube-apiserver stand-in;
//! - [`cni`]: the container runtime's side of CNI;
//! - [`traffic`]: iperf3 and UDP probes; [`flood`]: a garbage flood and its counts;
//! - [`capture`]: tcpdump captures; [`figures`]: figures and their statistics;
//! - [`idle`]: the host's CPU idle states, which set what a wake-up costs.

#![allow(dead_code)]

#[path = "preflight.rs"]
pub mod preflight;

#[path = "harness/capture.rs"]
pub mod capture;
#[path = "harness/cluster.rs"]
pub mod cluster;
#[path = "harness/cni.rs"]
pub mod cni;
#[path = "harness/command.rs"]
pub mod command;
#[path = "harness/dual.rs"]
pub mod dual;
#[path = "harness/etcd.rs"]
pub mod etcd;
#[path = "harness/figures.rs"]
pub mod figures;
#[path = "harness/flood.rs"]
pub mod flood;
#[path = "harness/idle.rs"]
pub mod idle;
#[path = "harness/kernel_nodes.rs"]
pub mod kernel_nodes;
#[path = "harness/kube.rs"]
pub mod kube;
#[path = "harness/netns.rs"]
pub mod netns;
#[path = "harness/process.rs"]
pub mod process;
#[path = "harness/traffic.rs"]
pub mod traffic;
#[path = "harness/wg.rs"]
pub mod wg;

// Each target uses its own part of the harness: re-exports it leaves unused are fine.
#[allow(unused_imports)]
pub use capture::{read_pcap, Capture};
#[allow(unused_imports)]
pub use cluster::{require_root, Cluster, Kind, Node, Pod};
#[allow(unused_imports)]
pub use cni::{CniRuntime, KUBE_FLANNEL_CONFLIST};
#[allow(unused_imports)]
pub use command::{
    after_private_mount, in_ns, ip, iptables_restore, ns_run, ns_sh, output_text, run, sh,
    try_in_ns, wait_for, wait_for_exit, words,
};
#[allow(unused_imports)]
pub use dual::{
    add_v6_only_pod, assert_all_reach, iperf3_v6, pings, program_flanneld_peers,
    start_flanneld_dual_stack, v6_underlay, DUAL_STACK_VXLAN,
};
#[allow(unused_imports)]
pub use etcd::{Etcd, ETCD_PREFIX};
#[allow(unused_imports)]
pub use figures::{figure, machine_busy_seconds, median, percentile, run_phase, scale_args};
#[allow(unused_imports)]
pub use flood::{flood_mbit, Flood, FloodCounts};
#[allow(unused_imports)]
pub use idle::{idle_states, HaltPoll};
#[allow(unused_imports)]
pub use process::{cpu_ns, cpu_seconds, example_beside, rss_kb, table_holds, weft_next_to_exe};
#[allow(unused_imports)]
pub use traffic::{
    iperf3, iperf3_json, iperf3_json_family, iperf3_per_second, udp_source_seen, Iperf,
};
#[allow(unused_imports)]
pub use wg::{
    stock_wg_device, stock_wg_device_as, stock_wg_peer, wg_keys, Stock, StockDevice, UapiSockets,
};

/// The weft binary cargo built for this test. cargo tells integration tests and benches
/// where it is (`CARGO_BIN_EXE_weft`), not examples (`cargo build --all-targets` also
/// builds them in test mode): they find it beside themselves ([`weft_next_to_exe`]).
pub fn weft() -> &'static std::path::Path {
    static WEFT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    WEFT.get_or_init(|| match option_env!("CARGO_BIN_EXE_weft") {
        Some(p) => std::path::PathBuf::from(p),
        None => weft_next_to_exe(),
    })
}
