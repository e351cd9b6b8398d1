//! The injection TAP: where encapsulated TSO super-packets go whole, for the kernel's
//! UDP-tunnel GSO to segment ([`crate::offload::tunnel`] builds the frames).
//!
//! One TAP (`<tun>-tx`, a queue per worker) with a 24-byte virtio-net header. Writing a
//! frame to it is the kernel *receiving* it on the TAP; its outer destination is a peer, so
//! the kernel forwards it out of the underlay. For that the TAP needs, and gets here:
//! `forwarding=1` (on the TAP only: the global `ip_forward` is not touched),
//! `accept_local=1` (the outer source is this node's own address, otherwise a martian),
//! `rp_filter=0`, and IPv6 only on a dual-stack node that forwards IPv6. The kernel takes the larger of `all.rp_filter` and the
//! TAP's own, and any reverse-path filtering drops the frames (the source is local), so a
//! node with `net.ipv4.conf.all.rp_filter` set gets the userspace split instead, with a
//! line saying why. The TAP lives as long as its descriptors: a stopped or killed weft
//! leaves nothing behind.
//!
//! This is one of the few modules allowed `unsafe` (the TUN ioctls); each block says why it
//! is sound.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::offload::tunnel;

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags (a short), padded to
/// the union's 24 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The TAP's name for a TUN named `tun`: `<tun>-tx`, the TUN's name cut to fit the
/// kernel's 15 bytes.
pub(crate) fn tap_name(tun: &str) -> String {
    let head: String = tun.chars().take(libc::IFNAMSIZ - 1 - 3).collect();
    format!("{head}-tx")
}

/// One queue of the injection TAP.
#[derive(Debug)]
pub(crate) struct Injector {
    tap: File,
    /// The TAP's MAC: injected frames are addressed to it, so the kernel takes them as its
    /// own to route.
    pub(crate) mac: [u8; 6],
    /// Whether IPv6 pods' super-packets may come this way (in outer IPv6): the node is
    /// dual-stack and forwards IPv6 (shared by the queues; [`Ipv6Gate`] keeps it).
    pub(crate) v6: Arc<AtomicBool>,
}

/// Keeps the injectors' IPv6 switch: open while the node forwards IPv6
/// (`net.ipv6.conf.all.forwarding`, which its IPv6 pods need anyway, and which weft does
/// not turn on: the CNI bridge plugin or the administrator does, often after weft starts),
/// closed otherwise, when IPv6 pods' super-packets are split in userspace: frames the
/// kernel would not forward are never injected.
pub(crate) struct Ipv6Gate {
    name: String,
    open: Arc<AtomicBool>,
    /// The forwarding setting last acted on (the gate may stay shut although it is on, if
    /// the TAP refused IPv6: that is logged once, not at every check).
    seen: AtomicBool,
}

impl Ipv6Gate {
    /// The gate of the TAP `name`'s injectors.
    pub(crate) fn new(name: &str, injectors: &[Injector]) -> Option<Ipv6Gate> {
        injectors.first().map(|i| Ipv6Gate {
            name: name.to_string(),
            open: i.v6.clone(),
            seen: AtomicBool::new(false),
        })
    }

    /// Reads the node's IPv6 forwarding and opens or closes the gate to match; on opening,
    /// readies the TAP for IPv6 frames (no link-local address, no router solicitations or
    /// advertisements). Cheap enough for every health check.
    pub(crate) fn refresh(&self) {
        let forwarding = read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding").ok() == Some(1);
        if forwarding == self.seen.swap(forwarding, Ordering::Relaxed) {
            return;
        }
        let conf = |key: &str| format!("/proc/sys/net/ipv6/conf/{}/{key}", self.name);
        let ready = forwarding && {
            let _ = sysctl(&conf("addr_gen_mode"), "1");
            let _ = sysctl(&conf("accept_ra"), "0");
            let _ = sysctl(&conf("router_solicitations"), "0");
            sysctl(&conf("disable_ipv6"), "0").is_ok()
        };
        tracing::info!(
            "IPv6 forwarding {}: IPv6 pods' TSO super-packets {}",
            if forwarding { "on" } else { "off" },
            if ready {
                "leave whole by tunnel GSO"
            } else {
                "are split in userspace"
            }
        );
        self.open.store(ready, Ordering::Relaxed);
    }
}

impl Injector {
    /// Writes one frame (tunnel header first); the kernel copies it once and forwards it.
    #[inline]
    pub(crate) fn write(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.tap.write(frame)
    }
}

fn ioctl_int(f: &File, req: libc::Ioctl, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `f` is an open /dev/net/tun descriptor; TUNSETVNETHDRSZ reads a c_int through
    // the pointer, which points at `value` on our stack for the whole call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), req, &value as *const libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens one queue of the TAP `name`, with the tunnel header and the UDP-tunnel GSO probe.
fn open_queue(name: &str, multi_queue: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    if multi_queue {
        req.flags |= libc::IFF_MULTI_QUEUE as libc::c_short;
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and writes back) a `struct ifreq`; `req` is one, laid out
    // as the kernel's (name[16], then the flags at the union's start), alive for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    ioctl_int(&f, libc::TUNSETVNETHDRSZ, tunnel::HDR_LEN as libc::c_int)?;
    // The probe: a kernel without UDP-tunnel GSO (before 6.17) refuses the unknown bits.
    let offloads = libc::TUN_F_CSUM
        | libc::TUN_F_TSO4
        | tunnel::TUN_F_UDP_TUNNEL_GSO
        | tunnel::TUN_F_UDP_TUNNEL_GSO_CSUM;
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long), no pointer.
    let rc = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            offloads as libc::c_ulong,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("no UDP-tunnel GSO on TAP devices in this kernel (Linux 6.17+): {e}"),
        ));
    }
    Ok(f)
}

fn sysctl(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

fn read_sysctl(path: &str) -> io::Result<u32> {
    let s = std::fs::read_to_string(path)?;
    s.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("{path}: not a number: {s:?}")))
}

/// Creates the TAP `name` with `queues` queues (always multi-queue, so a successor's
/// hand-over attaches its own queues to the same TAP) and configures it to forward what is
/// written to it: `forward(name)` sets its IPv4 `forwarding` 1, `accept_local` 1 and
/// `rp_filter` 0 (over netlink, which works where `/proc/sys` is read-only, as in a
/// container). IPv6 is off on it until an [`Ipv6Gate`] opens. The caller brings the link
/// up. Fails, with the reason, where the kernel cannot take tunnel GSO frames or would drop
/// them.
pub(crate) fn open(
    name: &str,
    queues: usize,
    forward: &dyn Fn(&str) -> io::Result<()>,
) -> io::Result<Vec<Injector>> {
    let taps = (0..queues.max(1))
        .map(|_| open_queue(name, true))
        .collect::<io::Result<Vec<_>>>()?;
    forward(name)?;
    let _ = sysctl(&format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let v6 = Arc::new(AtomicBool::new(false));
    let all = read_sysctl("/proc/sys/net/ipv4/conf/all/rp_filter")?;
    if all != 0 {
        return Err(io::Error::other(format!(
            "net.ipv4.conf.all.rp_filter is {all}: the kernel would drop frames whose source is \
             this node's address arriving on {name}"
        )));
    }
    let mac = mac_of(name)?;
    Ok(taps
        .into_iter()
        .map(|tap| Injector {
            tap,
            mac,
            v6: v6.clone(),
        })
        .collect())
}

fn mac_of(name: &str) -> io::Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in mac.iter_mut() {
        *b = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| io::Error::other(format!("{name}: bad MAC {s:?}")))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tap_name_fits_the_kernel_limit() {
        assert_eq!(tap_name("weft0"), "weft0-tx");
        assert_eq!(tap_name("a-very-long-tun"), "a-very-long--tx");
        assert_eq!(tap_name("a-very-long-tun").len(), 15);
    }
}
