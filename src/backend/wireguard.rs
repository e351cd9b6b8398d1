//! flannel's wireguard backend, from userspace (this kernel has no wireguard module; where
//! one exists, `--dataplane kernel` is still refused: weft does not program it yet). The
//! node's key is flanneld's key file; its lease publishes the public key and port as
//! flanneld's `newSubnetAttrs`; its devices are those `Mode` gives ([`wg_plan`]):
//! `flannel-wg` (and `flannel-wg-v6` in separate mode), each a TUN holding `<subnet>.0/32`
//! and/or `<v6 subnet>/128` with a route for each Network it carries and the MTU less 80,
//! as flanneld's devices; a [`crate::dataplane::wg`] thread per device encrypts and
//! decrypts between it and its UDP sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use ipnet::IpNet;

use super::plan::LinkPlan;
use super::reconcile::{link_index, Reconciler};
use super::wg_plan::{self, DevicePlan, Local, Reach};
use super::{Backend, Error, Health, Running, Setup};
use crate::config::WireguardConfig;
use crate::dataplane::wg::{PeerSettings, WgLoop, WgOffloads, WgPeers};
use crate::dataplane::wg_batch::Sockets;
use crate::dataplane::wg_uapi::{Published, UapiSocket};
use crate::dataplane::TunQueue;
use crate::lease::{Lease, LeaseAttrs, Peer};
use crate::wg::Key;

/// The wireguard backend: its config and the node's private key.
pub struct Wireguard {
    cfg: WireguardConfig,
    key: Key,
}

impl Wireguard {
    /// The backend for `cfg`, with the private key from flanneld's key file
    /// (`$WIREGUARD_KEY_FILE`, else /run/flannel/wgkey), made there when missing.
    pub fn new(cfg: WireguardConfig) -> Result<Wireguard, Error> {
        let path = crate::wg::keyfile::path(std::env::var(crate::wg::keyfile::ENV).ok());
        let loaded = crate::wg::keyfile::load_or_create(&path)
            .map_err(|e| Error::Unsupported(e.to_string()))?;
        if let Some(w) = &loaded.warning {
            tracing::warn!("{w}");
        }
        let verb = if loaded.created { "made" } else { "read" };
        tracing::info!(
            "wireguard: private key {verb} at {}; public key {}",
            path.display(),
            loaded.key.public().to_base64()
        );
        Ok(Wireguard {
            cfg,
            key: loaded.key,
        })
    }
}

impl Backend for Wireguard {
    fn name(&self) -> &'static str {
        crate::lease::backend_type::WIREGUARD
    }

    fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        crate::config::BackendConfig::Wireguard(self.cfg).pod_mtu(underlay_mtu)
    }

    fn lease_attrs(
        &self,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
        _ours: Option<&Lease>,
    ) -> LeaseAttrs {
        let families = (!public_ip.is_unspecified(), public_ipv6.is_some());
        let ports = wg_plan::lease_ports(&self.cfg);
        LeaseAttrs::wireguard(
            (public_ip, public_ipv6),
            families,
            &self.key.public(),
            ports,
        )
    }

    fn start(&self, s: Setup<'_>) -> Result<Box<dyn Running>, Error> {
        let plans = wg_plan::devices(&self.cfg, s.network.is_some(), s.v6.is_some());
        let local = Local {
            v4: Some(s.public_ip).filter(|a| !a.is_unspecified()),
            v6: s.lease.attrs.public_ipv6,
        };
        let mut reconciler = Reconciler::new(s.nl, Vec::new(), "wireguard");
        let mut devices = Vec::new();
        for (i, plan) in plans.into_iter().enumerate() {
            devices.push(self.start_device(&s, (plan, local), i, &mut reconciler)?);
        }
        Ok(Box::new(WgRunning {
            reconciler,
            devices,
        }))
    }
}

impl Wireguard {
    /// Makes the device `plan` describes (its sockets, its TUN, adopted by `reconciler`)
    /// and starts its thread, counting as worker `i`.
    fn start_device(
        &self,
        s: &Setup<'_>,
        (plan, local): (DevicePlan, Local),
        i: usize,
        reconciler: &mut Reconciler,
    ) -> Result<WgDevice, Error> {
        let socks = sockets(s, &plan)?;
        let mut offloads = s.dataplane.offloads;
        let tun = open_tun(plan.name, &mut offloads.tun)?;
        let index = link_index(s.nl, plan.name)?;
        reconciler.adopt_device(index, link_plan(s, &plan)?)?;
        let settings = PeerSettings {
            psk: self.cfg.psk,
            keepalive: self.cfg.keepalive,
            plan,
            local,
        };
        let peers = WgPeers::default();
        let published = Published::default();
        let uapi = uapi_socket(plan.name, &published);
        let wl = WgLoop::new(
            tun,
            socks,
            &self.key,
            settings,
            (peers.clone(), s.table.clone(), published),
            (
                s.dataplane.counters.worker(i),
                WgOffloads {
                    tun: offloads.tun,
                    gso: offloads.gso,
                    gro: offloads.gro,
                    mtu: s.pod_mtu as usize,
                    socket_buffer: s.dataplane.tuning.socket_buffer,
                },
            ),
        )
        .map_err(Error::Dataplane)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("weft-{}", &plan.name[8..]))
            .spawn(move || {
                if let Err(e) = wl.run(&flag) {
                    tracing::error!(error = %e, "wireguard: the dataplane stopped");
                }
            })
            .map_err(Error::Dataplane)?;
        Ok(WgDevice {
            plan,
            peers,
            stop,
            thread: Some(thread),
            _uapi: uapi,
        })
    }
}

/// The sockets of `plan`'s device: on its port, at the underlay's address of each family
/// it reaches peers over (auto: both, where the node has them); a port in use refused by
/// name.
fn sockets(s: &Setup<'_>, plan: &DevicePlan) -> Result<Sockets, Error> {
    let (v4, v6) = match plan.reach {
        Reach::V4 => (true, false),
        Reach::V6 => (false, true),
        Reach::Auto => (!s.local_ip.is_unspecified(), s.v6.is_some()),
    };
    let field = if plan.name == wg_plan::DEVICE_V6 {
        "ListenPortV6"
    } else {
        "ListenPort"
    };
    let bind = |ip: IpAddr| {
        UdpSocket::bind(SocketAddr::new(ip, plan.port)).map_err(|e| {
            Error::Unsupported(format!(
                "wireguard: cannot listen on {}:{} for {} ({e}): is another WireGuard (or flanneld) using Backend.{field} {}? Stop it or choose another port",
                ip, plan.port, plan.name, plan.port
            ))
        })
    };
    let mut socks = Sockets::default();
    if v4 {
        socks.v4 = Some(bind(s.local_ip.into())?);
    }
    if v6 {
        let Some((local6, _)) = s.v6 else {
            return Err(Error::Unsupported(format!(
                "wireguard: {} reaches peers over IPv6, but the underlay has no IPv6 address",
                plan.name
            )));
        };
        socks.v6 = Some(bind(local6.into())?);
    }
    Ok(socks)
}

/// `plan`'s device as flanneld configures it: `<subnet>.0/32` and a route for the Network
/// if it carries IPv4, `<v6 subnet>/128` and a route for the IPv6Network if IPv6.
fn link_plan(s: &Setup<'_>, plan: &DevicePlan) -> Result<LinkPlan, Error> {
    let (mut addresses, mut routes) = (Vec::new(), Vec::new());
    if plan.v4 {
        let (Some(network), Some(subnet)) = (s.network, s.subnet) else {
            return Err(own_lease(s, "no IPv4 subnet"));
        };
        addresses.push(subnet.network().into());
        routes.push(IpNet::V4(network));
    }
    if plan.v6 {
        let (Some((_, network6)), Some(subnet6)) = (s.v6, s.lease.ipv6_subnet) else {
            return Err(own_lease(s, "no IPv6 subnet"));
        };
        addresses.push(subnet6.network().into());
        routes.push(IpNet::V6(network6));
    }
    Ok(LinkPlan {
        name: plan.name.into(),
        mtu: s.pod_mtu,
        txqueuelen: 1000,
        addresses,
        mac: None,
        routes,
    })
}

fn own_lease(s: &Setup<'_>, detail: &str) -> Error {
    Error::OwnLease {
        key: s.lease.key(),
        detail: format!("{detail}, yet the network has that family"),
    }
}

/// The UAPI socket for `wg show` (in `$WEFT_WG_UAPI_DIR`, else /var/run/wireguard), or
/// none, with a warning: operators lose `wg show`, not the tunnel.
fn uapi_socket(device: &str, published: &Published) -> Option<UapiSocket> {
    let dir = std::env::var_os("WEFT_WG_UAPI_DIR").map_or_else(
        || crate::dataplane::wg_uapi::DIR.into(),
        std::path::PathBuf::from,
    );
    match UapiSocket::start(&dir, device, published.clone()) {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::warn!(error = %e, "wireguard: no UAPI socket, so `wg show` will not see {device}");
            None
        }
    }
}

/// The TUN `name`, with the virtio-net header and TSO if `offload` and the kernel has them
/// (else without, and `offload` says so).
fn open_tun(name: &str, offload: &mut bool) -> Result<TunQueue, Error> {
    let r = match crate::dataplane::open_tun(name, 1, *offload) {
        Err(e) if *offload => {
            tracing::warn!(error = %e, "wireguard: TUN offloads unavailable; continuing without them");
            *offload = false;
            crate::dataplane::open_tun(name, 1, false)
        }
        r => r,
    };
    let mut queues = r.map_err(|source| Error::Tun {
        name: name.into(),
        source,
    })?;
    Ok(queues.remove(0))
}

/// One running device: its thread, the peers handed to it, its UAPI socket. Dropping it
/// stops the thread, then removes the socket.
struct WgDevice {
    plan: DevicePlan,
    peers: WgPeers,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The UAPI socket, if it could be had; removed after the thread stops.
    _uapi: Option<UapiSocket>,
}

impl Drop for WgDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The running wireguard dataplane: its devices, and the reconciler that keeps them (and
/// removes them when dropped).
struct WgRunning {
    /// Dropped first: the threads stop before the devices go.
    devices: Vec<WgDevice>,
    reconciler: Reconciler,
}

impl Running for WgRunning {
    fn describe(&self) -> String {
        let d: Vec<String> = self
            .devices
            .iter()
            .map(|d| format!("{} (UDP port {})", d.plan.name, d.plan.port))
            .collect();
        format!("wireguard in userspace on {}", d.join(" and "))
    }

    fn peers_changed(&mut self, peers: &[Peer]) {
        for d in &self.devices {
            d.peers.offer(peers);
        }
        self.reconciler.update(peers);
    }

    fn check(&mut self) -> Health {
        self.reconciler.check()
    }
}
