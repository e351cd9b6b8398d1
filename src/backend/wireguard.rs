//! flannel's wireguard backend, from userspace (this kernel has no wireguard module; where
//! one exists, `--dataplane kernel` is still refused: weft does not program it yet). The
//! node's key is flanneld's key file; its lease publishes the public key and port as
//! flanneld's `newSubnetAttrs`; `flannel-wg` is a TUN holding `<subnet>.0/32` with a
//! route for the Network and the MTU less 80, as flanneld's device; the
//! [`crate::dataplane::wg`] thread encrypts and decrypts between it and the UDP socket on
//! `ListenPort`.
//!
//! This stage: IPv4 networks, `Mode` separate, one thread.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use ipnet::IpNet;

use super::plan::LinkPlan;
use super::reconcile::{link_index, Reconciler};
use super::{Backend, Error, Health, Running, Setup};
use crate::config::WireguardConfig;
use crate::dataplane::wg::{PeerSettings, WgLoop, WgOffloads, WgPeers};
use crate::dataplane::wg_uapi::{Published, UapiSocket};
use crate::dataplane::TunQueue;
use crate::lease::{Lease, LeaseAttrs, Peer};
use crate::wg::Key;

/// flanneld's device name.
pub const DEVICE: &str = "flannel-wg";

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
        let ports = (self.cfg.listen_port, self.cfg.listen_port_v6);
        LeaseAttrs::wireguard(
            (public_ip, public_ipv6),
            families,
            &self.key.public(),
            ports,
        )
    }

    fn start(&self, s: Setup<'_>) -> Result<Box<dyn Running>, Error> {
        let (Some(network), Some(subnet)) = (s.network, s.subnet) else {
            return Err(Error::Unsupported(
                "wireguard: IPv6-only networks are not in this version yet".into(),
            ));
        };
        let port = self.cfg.listen_port;
        let sock = UdpSocket::bind(SocketAddr::new(s.local_ip.into(), port)).map_err(|e| {
            Error::Unsupported(format!(
                "wireguard: cannot listen on {}:{port} ({e}): is another WireGuard (or flanneld) using Backend.ListenPort {port}? Stop it or choose another port",
                s.local_ip
            ))
        })?;
        let mut offloads = s.dataplane.offloads;
        let tun = open_tun(&mut offloads.tun)?;
        let index = link_index(s.nl, DEVICE)?;
        let mut reconciler = Reconciler::new(s.nl, Vec::new(), "wireguard");
        reconciler.adopt_device(
            index,
            LinkPlan {
                name: DEVICE.into(),
                mtu: s.pod_mtu,
                txqueuelen: 1000,
                address: subnet.network().into(),
                mac: None,
                routes: vec![IpNet::V4(network)],
            },
        )?;
        let settings = PeerSettings {
            psk: self.cfg.psk,
            keepalive: self.cfg.keepalive,
            port,
        };
        let peers = WgPeers::default();
        let published = Published::default();
        let uapi = uapi_socket(&published);
        let wl = WgLoop::new(
            tun,
            sock,
            &self.key,
            settings,
            (peers.clone(), s.table.clone(), published),
            (
                s.dataplane.counters.worker(0),
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
            .name("weft-wg".into())
            .spawn(move || {
                if let Err(e) = wl.run(&flag) {
                    tracing::error!(error = %e, "wireguard: the dataplane stopped");
                }
            })
            .map_err(Error::Dataplane)?;
        Ok(Box::new(WgRunning {
            reconciler,
            peers,
            stop,
            thread: Some(thread),
            port,
            _uapi: uapi,
        }))
    }
}

/// The UAPI socket for `wg show` (in `$WEFT_WG_UAPI_DIR`, else /var/run/wireguard), or
/// none, with a warning: operators lose `wg show`, not the tunnel.
fn uapi_socket(published: &Published) -> Option<UapiSocket> {
    let dir = std::env::var_os("WEFT_WG_UAPI_DIR").map_or_else(
        || crate::dataplane::wg_uapi::DIR.into(),
        std::path::PathBuf::from,
    );
    match UapiSocket::start(&dir, DEVICE, published.clone()) {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::warn!(error = %e, "wireguard: no UAPI socket, so `wg show` will not see {DEVICE}");
            None
        }
    }
}

/// `flannel-wg`, with the virtio-net header and TSO if `offload` and the kernel has them
/// (else without, and `offload` says so).
fn open_tun(offload: &mut bool) -> Result<TunQueue, Error> {
    let r = match crate::dataplane::open_tun(DEVICE, 1, *offload) {
        Err(e) if *offload => {
            tracing::warn!(error = %e, "wireguard: TUN offloads unavailable; continuing without them");
            *offload = false;
            crate::dataplane::open_tun(DEVICE, 1, false)
        }
        r => r,
    };
    let mut queues = r.map_err(|source| Error::Tun {
        name: DEVICE.into(),
        source,
    })?;
    Ok(queues.remove(0))
}

/// The running wireguard dataplane; dropping it stops the thread and removes the device.
struct WgRunning {
    reconciler: Reconciler,
    peers: WgPeers,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    port: u16,
    /// The UAPI socket, if it could be had; removed after the thread stops.
    _uapi: Option<UapiSocket>,
}

impl Running for WgRunning {
    fn describe(&self) -> String {
        format!("wireguard in userspace on {DEVICE}, UDP port {}", self.port)
    }

    fn peers_changed(&mut self, peers: &[Peer]) {
        self.peers.offer(peers);
        self.reconciler.update(peers);
    }

    fn check(&mut self) -> Health {
        self.reconciler.check()
    }
}

impl Drop for WgRunning {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
