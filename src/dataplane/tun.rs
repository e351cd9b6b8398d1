//! One queue of the TUN device, as the workers use it: a plain descriptor read and written
//! a packet at a time (behind the virtio-net header when the device has `IFF_VNET_HDR`;
//! the workers parse and build that header themselves).
//!
//! Not tun-rs's `SyncDevice`: tun-rs creates the device and its queues, but refuses to
//! adopt a descriptor with `IFF_VNET_HDR`, and at a hand-over the successor adopts its
//! predecessor's queues ([`crate::handover::Shared`]): so a queue is kept as what it is,
//! an open file of `/dev/net/tun`, whichever process opened it.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A TUN queue: `recv` returns one packet, `send` writes one. Non-blocking when the
/// descriptor is (the workers' are).
#[derive(Debug)]
pub(crate) struct TunQueue(std::fs::File);

impl TunQueue {
    /// Reads one packet into `buf`.
    #[inline]
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }

    /// Writes one packet.
    #[inline]
    pub(crate) fn send(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.0).write(buf)
    }

    /// The device this queue belongs to, if it is a non-blocking queue of a multi-queue
    /// TUN: its name and whether it carries the virtio-net header. What a successor checks
    /// of a queue its predecessor passed, rather than taking the predecessor's word.
    pub(crate) fn device(&self) -> io::Result<(String, bool)> {
        let (name, flags) = super::sys::tun_device(self)?;
        let tun = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
        if flags & tun != tun || flags & libc::IFF_TAP == libc::IFF_TAP {
            return Err(io::Error::other(format!(
                "{name}: not a multi-queue TUN without packet information (flags {flags:#x})"
            )));
        }
        if !super::sys::is_nonblocking(self)? {
            return Err(io::Error::other(format!("{name}: a blocking queue")));
        }
        Ok((name, flags & libc::IFF_VNET_HDR != 0))
    }

    /// A second descriptor of the same queue (what a hand-over passes on).
    pub(crate) fn duplicate(&self) -> io::Result<OwnedFd> {
        self.0.as_fd().try_clone_to_owned()
    }
}

impl From<OwnedFd> for TunQueue {
    fn from(fd: OwnedFd) -> TunQueue {
        TunQueue(fd.into())
    }
}

impl TryFrom<tun_rs::SyncDevice> for TunQueue {
    type Error = io::Error;

    /// The queue tun-rs opened, as a plain descriptor (tun-rs's own is closed; the queue
    /// stays attached through ours).
    fn try_from(dev: tun_rs::SyncDevice) -> io::Result<TunQueue> {
        Ok(dev.as_fd().try_clone_to_owned()?.into())
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
