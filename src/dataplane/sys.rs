//! The socket options std, socket2 and tun-rs do not offer, through `libc::setsockopt`.
//! This is one of the few modules allowed `unsafe`; each block says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

fn setsockopt_int(fd: &impl AsRawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `fd` is a live socket borrowed for the call; the option value is a c_int on
    // our stack whose size we pass, as setsockopt(2) requires for integer options.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `IP_MTU_DISCOVER = IP_PMTUDISC_DONT`: send outer datagrams with DF clear and let the
/// underlay fragment them, as a kernel vxlan device does (flannel sets no `df`).
pub fn set_pmtudisc_dont(fd: &impl AsRawFd) -> io::Result<()> {
    setsockopt_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    )
}

/// `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`: socket buffers past `net.core.*mem_max` (root only);
/// falls back to the capped `SO_RCVBUF`/`SO_SNDBUF` when not permitted.
pub fn force_buffers(fd: &impl AsRawFd, bytes: i32) -> io::Result<()> {
    let r = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
        .or_else(|_| setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes));
    let s = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes)
        .or_else(|_| setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes));
    r.and(s)
}
