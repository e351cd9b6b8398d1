//! The socket options std, socket2 and tun-rs do not offer, through `libc::setsockopt`.
//! This is one of the few modules allowed `unsafe`; each block says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

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
/// underlay fragment them, as a kernel vxlan device does (flannel sets no `df`). On an
/// IPv6 socket (`v6`), `IPV6_MTU_DISCOVER = IPV6_PMTUDISC_DONT`: the kernel fragments at
/// the source what exceeds the route's MTU rather than refusing it.
pub(super) fn set_pmtudisc_dont(fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
    if v6 {
        return setsockopt_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        );
    }
    setsockopt_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    )
}

/// `IPV6_AUTOFLOWLABEL = 0`: outer flow label 0, as kernel vxlan sends over IPv6 (the
/// captured vectors show it), rather than the socket's per-flow hash.
pub(super) fn disable_auto_flowlabel(fd: &impl AsRawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_AUTOFLOWLABEL, 0)
}

/// `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`: socket buffers past `net.core.*mem_max` (root only);
/// falls back to the capped `SO_RCVBUF`/`SO_SNDBUF` when not permitted.
pub(super) fn force_buffers(fd: &impl AsRawFd, bytes: i32) -> io::Result<()> {
    let r = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
        .or_else(|_| setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes));
    let s = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes)
        .or_else(|_| setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes));
    r.and(s)
}

/// `IP_RECVTOS` (`IPV6_RECVTCLASS` on an IPv6 socket): report each datagram's TOS byte
/// (for the outer ECN bits, RFC 6040).
pub(super) fn enable_recv_tos(fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
    if v6 {
        return setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1);
    }
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1)
}

/// `UDP_GRO`: let the kernel coalesce a flow's datagrams into one read, reporting the
/// segment size in a control message (Linux 5.0+; getsockopt since 5.12).
pub(super) fn enable_udp_gro(fd: &impl AsRawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// `struct sched_attr` of sched_setattr(2), its first version (56 bytes).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Asks the scheduler (EEVDF, Linux 6.12+) for `slice` as the calling thread's time slice,
/// staying `SCHED_OTHER` at its nice level: a thread with a shorter slice gets an earlier
/// deadline when it wakes, so it preempts a CPU-bound task at once instead of waiting out
/// that task's slice. Older kernels ignore the request.
pub(super) fn set_thread_slice(slice: std::time::Duration) -> io::Result<()> {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice: 0,
        priority: 0,
        runtime: slice.as_nanos().min(u64::MAX as u128) as u64,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: pid 0 is the calling thread; `attr` is a sched_attr of the size it says,
    // on our stack for the duration of the call, which only reads it.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The first fields of `union bpf_attr` for `BPF_PROG_LOAD` (the kernel takes a shorter
/// attribute and reads the rest as zero).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// Steers each packet the kernel sends through the TUN device of `queue` to queue
/// `cpu mod queues`, where `cpu` is the CPU that sends it (`TUNSETSTEERINGEBPF` with an
/// eBPF program of two instructions: `r0 = bpf_get_smp_processor_id(); exit`), instead of
/// the device's flow hash. Needs `CAP_BPF` (or `CAP_SYS_ADMIN`) to load the program.
pub(super) fn steer_tun_by_cpu(queue: &impl AsRawFd) -> io::Result<()> {
    // struct bpf_insn: code, dst_reg:4 | src_reg:4, off, imm.
    const CALL: u64 = 0x85 | (8 << 32); // BPF_JMP | BPF_CALL, imm BPF_FUNC_get_smp_processor_id
    const EXIT: u64 = 0x95; // BPF_JMP | BPF_EXIT
    let insns: [u64; 2] = [CALL.to_le(), EXIT.to_le()];
    let license = c"Dual MIT/GPL";
    let attr = ProgLoad {
        prog_type: 1, // BPF_PROG_TYPE_SOCKET_FILTER
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: `attr` and what it points to (the instructions, the license) live on our
    // stack or in static memory for the call, which only reads them; it returns a new
    // descriptor we own, or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, // BPF_PROG_LOAD
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let prog_fd: libc::c_int = prog.as_raw_fd();
    // TUNSETSTEERINGEBPF = _IOR('T', 224, int); the device keeps its own reference.
    const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
    // SAFETY: `queue` is a live TUN descriptor; the argument points to a c_int on our
    // stack, which the ioctl reads.
    let rc = unsafe { libc::ioctl(queue.as_raw_fd(), TUNSETSTEERINGEBPF as _, &prog_fd) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_INCOMING_CPU = cpu`: in a `SO_REUSEPORT` group (Linux 6.2+), datagrams the kernel
/// receives on `cpu` go to this socket; the group's hash chooses for the other CPUs.
pub(super) fn set_incoming_cpu(fd: &impl AsRawFd, cpu: usize) -> io::Result<()> {
    setsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_INCOMING_CPU,
        cpu as libc::c_int,
    )
}

/// Attaches `prog` to `fd`'s `SO_REUSEPORT` group, choosing the socket each datagram
/// goes to (`SO_ATTACH_REUSEPORT_CBPF`; see [`super::filter::successor_steering`]).
pub(super) fn attach_reuseport_filter(
    fd: &impl AsRawFd,
    prog: &[super::filter::Insn],
) -> io::Result<()> {
    set_program(fd, libc::SO_ATTACH_REUSEPORT_CBPF, prog)
}

/// Attaches (or atomically replaces) the classic BPF program `prog` on socket `fd`
/// (`SO_ATTACH_FILTER`; no privilege needed). An empty `prog` detaches any.
pub(super) fn attach_filter(fd: &impl AsRawFd, prog: &[super::filter::Insn]) -> io::Result<()> {
    if prog.is_empty() {
        // SO_DETACH_FILTER ignores its value, but the kernel refuses an option shorter than
        // an int before it looks at the name: pass one.
        return match setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DETACH_FILTER, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        };
    }
    set_program(fd, libc::SO_ATTACH_FILTER, prog)
}

/// Sets a classic BPF program `prog` as socket option `opt` (`SO_ATTACH_FILTER`, ...).
fn set_program(
    fd: &impl AsRawFd,
    opt: libc::c_int,
    prog: &[super::filter::Insn],
) -> io::Result<()> {
    let insns: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `insns`, alive for the call; the kernel copies the program
    // and reads exactly `len` instructions; we pass the struct's own size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The socket's drop counter (`SO_MEMINFO`'s `SK_MEMINFO_DROPS`): datagrams the kernel
/// dropped for it, by its filter or for a full receive buffer.
pub(super) fn socket_drops(fd: &impl AsRawFd) -> io::Result<u32> {
    /// `SO_MEMINFO` (include/uapi/asm-generic/socket.h).
    const SO_MEMINFO: i32 = 55;
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a u32 array on our stack whose size we pass in `len`; the kernel
    // writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info[libc::SK_MEMINFO_DROPS as usize])
}

/// The TUN device a queue descriptor is attached to, and its flags (`TUNGETIFF`:
/// `IFF_VNET_HDR`, `IFF_MULTI_QUEUE`, ...).
pub(super) fn tun_device(fd: &impl AsRawFd) -> io::Result<(String, i32)> {
    // SAFETY: ifreq is plain data (integers, arrays, a union of them); zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one ifreq to the pointer we pass, which is ours and live.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNGETIFF,
            &mut req as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let name: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    // SAFETY: TUNGETIFF sets the union's flags member (and only it).
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok((
        String::from_utf8_lossy(&name).into_owned(),
        i32::from(flags),
    ))
}

/// Whether the descriptor's file is non-blocking (`O_NONBLOCK`).
pub(super) fn is_nonblocking(fd: &impl AsRawFd) -> io::Result<bool> {
    // SAFETY: F_GETFL reads the open file's status flags; no memory is passed.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::O_NONBLOCK != 0)
}

/// `a` as a `sockaddr_storage` and the length of the family's sockaddr within it.
fn sockaddr(a: std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid (AF_UNSPEC) value.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (st, len as libc::socklen_t)
}

/// The address in a `sockaddr_storage` the kernel filled (IPv4 or IPv6; unspecified for
/// anything else).
fn socket_addr(st: &libc::sockaddr_storage) -> std::net::SocketAddr {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
    match st.ss_family as i32 {
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (its family says so) into storage
            // large enough and aligned for it.
            let a = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            ))
        }
        libc::AF_INET => {
            // SAFETY: as above, for a sockaddr_in.
            let a = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            SocketAddr::from((
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ))
        }
        _ => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
    }
}

/// Sends the concatenation of `iov` to `dst` in one `sendmsg`, with the outer TOS byte
/// `tos` (an `IP_TOS` control message, `IPV6_TCLASS` to an IPv6 `dst`, so the ECN bits the core chose reach the wire; 0
/// sends none and the socket's default, 0, applies). With `segment`, the kernel splits it
/// into datagrams of that many bytes (`UDP_SEGMENT`, Linux 4.18+; every one but the last
/// exactly that long, all with the same TOS), so one syscall carries a whole TSO
/// super-packet.
pub(super) fn send_segments(
    fd: &impl AsRawFd,
    dst: std::net::SocketAddr,
    iov: &[io::IoSlice<'_>],
    segment: Option<u16>,
    tos: u8,
) -> io::Result<usize> {
    let (mut addr, addr_len) = sockaddr(dst);
    let (tos_level, tos_type) = match dst {
        std::net::SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TOS),
        std::net::SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    };
    // u64 storage keeps the control buffer aligned for cmsghdr; 64 bytes hold both
    // messages (CMSG_SPACE(2) + CMSG_SPACE(4) = 24 + 24 on 64-bit).
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid "no name, no iov, no control" value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = addr_len;
    // IoSlice is guaranteed ABI-compatible with iovec on Unix; sendmsg only reads them.
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic. msg_controllen is first set to the
    // whole buffer so CMSG_FIRSTHDR/CMSG_NXTHDR return pointers inside `control` (64 bytes,
    // room for both messages), then shrunk to the space actually used. Payloads are
    // written unaligned.
    unsafe {
        let space_u16 = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
        let space_int = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let mut used = 0usize;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        if let Some(seg) = segment {
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
            used += space_u16;
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        if tos != 0 && !c.is_null() {
            (*c).cmsg_level = tos_level;
            (*c).cmsg_type = tos_type;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), tos as i32);
            used += space_int;
        }
        if used == 0 {
            msg.msg_control = std::ptr::null_mut();
        }
        msg.msg_controllen = used as _;
    }
    // SAFETY: every pointer in msg refers to live locals or to `iov`, all outliving the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Most datagrams (or GRO batches) one `recvmmsg` returns.
pub(super) const RECV_BATCH: usize = 16;

/// What one message of a [`recv_many`] call held.
#[derive(Debug, Clone, Copy)]
pub(super) struct RecvMeta {
    /// Bytes read into the buffer (after the offset).
    pub len: usize,
    /// The sender.
    pub from: std::net::SocketAddr,
    /// GRO segment size (0: a single datagram).
    pub stride: usize,
    /// The datagram did not fit its buffer (it was cut; drop it).
    pub truncated: bool,
    /// The outer TOS byte (with `IP_RECVTOS`; 0 otherwise).
    pub tos: u8,
}

/// One `recvmmsg` into up to [`RECV_BATCH`] buffers, each filled from `offset`; returns how
/// many messages arrived, described in `meta`. Each message may itself be a GRO batch.
pub(super) fn recv_many(
    fd: &impl AsRawFd,
    bufs: &mut [Vec<u8>],
    offset: usize,
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let n = bufs.len().min(meta.len()).min(RECV_BATCH);
    // SAFETY: plain-data C structs; zeroed values are valid (null pointers, zero lengths).
    let mut addrs: [libc::sockaddr_storage; RECV_BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
    let mut control = [[0u64; 8]; RECV_BATCH];
    let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        let b = &mut bufs[i][offset..];
        iovs[i] = libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = control[i].as_mut_ptr().cast();
        h.msg_controllen = std::mem::size_of_val(&control[i]) as _;
    }
    // SAFETY: the first n headers point at live locals and at the buffers, which outlive the
    // call; the kernel writes at most iov_len bytes into each and n headers in all.
    let got = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            0,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    for i in 0..got as usize {
        let h = &hdrs[i].msg_hdr;
        let (mut stride, mut tos) = (0usize, 0u8);
        // SAFETY: walking the cmsgs the kernel wrote into control[i], within msg_controllen; the
        // UDP_GRO and IPV6_TCLASS payloads are ints read unaligned, the IP_TOS payload one
        // byte.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    stride = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>())
                        .max(0) as usize;
                } else if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TOS {
                    tos = *libc::CMSG_DATA(c);
                } else if (*c).cmsg_level == libc::IPPROTO_IPV6
                    && (*c).cmsg_type == libc::IPV6_TCLASS
                {
                    tos = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>()) as u8;
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        meta[i] = RecvMeta {
            len: hdrs[i].msg_len as usize,
            from: socket_addr(&addrs[i]),
            stride,
            truncated: h.msg_flags & libc::MSG_TRUNC != 0,
            tos,
        };
    }
    Ok(got as usize)
}

#[cfg(test)]
mod filter_tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    use super::*;

    /// A datagram from `tx` reaches `rx` (within 200 ms)?
    fn arrives(tx: &UdpSocket, rx: &UdpSocket) -> bool {
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        let mut b = [0u8; 8];
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        rx.recv(&mut b).is_ok()
    }

    #[test]
    fn the_sender_filter_keeps_listed_senders_drops_and_counts_others_and_detaches() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let lo = Ipv4Addr::LOCALHOST;
        attach_filter(&rx, &super::super::filter::program(&[lo]).unwrap()).unwrap();
        assert!(arrives(&tx, &rx), "a listed sender was dropped");
        let before = socket_drops(&rx).unwrap();
        let other = super::super::filter::program(&[Ipv4Addr::new(192, 0, 2, 1)]).unwrap();
        attach_filter(&rx, &other).unwrap();
        assert!(!arrives(&tx, &rx), "an unlisted sender got through");
        assert_eq!(socket_drops(&rx).unwrap(), before + 1);
        // Lifting the filter (too many senders) lets everything through again.
        attach_filter(&rx, &[]).unwrap();
        assert!(arrives(&tx, &rx), "still filtered after the detach");
        // Detaching when nothing is attached is fine too.
        attach_filter(&rx, &[]).unwrap();
    }

    fn reuseport_socket(port: u16) -> UdpSocket {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s.into()
    }

    fn received(socks: &[UdpSocket]) -> usize {
        let mut b = [0u8; 8];
        socks
            .iter()
            .map(|s| std::iter::from_fn(|| s.recv(&mut b).ok()).count())
            .sum()
    }

    #[test]
    fn a_handed_over_port_steers_every_datagram_to_the_successors_sockets() {
        let first = reuseport_socket(0);
        let port = first.local_addr().unwrap().port();
        let old = [first, reuseport_socket(port)];
        let new = [reuseport_socket(port), reuseport_socket(port)];
        let steering = super::super::filter::successor_steering(2);
        attach_reuseport_filter(&old[0], &steering).unwrap();
        let send = |n: usize| {
            for _ in 0..n {
                // A new source port each time: another 4-tuple, another hash.
                let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
                tx.send_to(b"x", (Ipv4Addr::LOCALHOST, port)).unwrap();
            }
        };
        send(32);
        assert_eq!(received(&old), 0, "the predecessor still got datagrams");
        assert_eq!(received(&new), 32);
        // The predecessor gone, its program's indexes are out of range: the kernel hashes
        // over the successor's sockets, which get everything.
        drop(old);
        send(32);
        assert_eq!(received(&new), 32);
    }
}

#[cfg(test)]
mod steering_tests {
    use std::net::UdpSocket;
    use std::process::Command;
    use std::time::Duration;

    use super::super::TunQueue;
    use super::*;

    /// In a network namespace of its own (this thread's), a two-queue TUN steered by CPU:
    /// a datagram sent by a thread on CPU c is read from queue c mod 2, and nothing from
    /// the other. Root only (TUN, netns); on one CPU only queue 0 is checked.
    #[test]
    fn the_tun_gives_each_packet_to_the_queue_of_the_cpu_that_sent_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (a TUN in a network namespace of its own)");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: moves only this thread (and what it spawns) to a new namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let queues = super::super::open_tun("steer0", 2, false).unwrap();
            // No IPv6 on it: no router solicitations or MLD reports in the queues.
            std::fs::write("/proc/sys/net/ipv6/conf/steer0/disable_ipv6", "1").unwrap();
            for args in [
                &["link", "set", "steer0", "up"][..],
                &["addr", "add", "10.99.0.1/24", "dev", "steer0"],
            ] {
                assert!(Command::new("ip").args(args).status().unwrap().success());
            }
            steer_tun_by_cpu(&queues[0]).unwrap();
            let cpus = core_affinity::get_core_ids().unwrap();
            for core in cpus.iter().take(2) {
                let core = *core;
                std::thread::spawn(move || {
                    assert!(core_affinity::set_for_current(core));
                    let s = UdpSocket::bind("10.99.0.1:0").unwrap();
                    s.send_to(b"steered", "10.99.0.2:9").unwrap();
                })
                .join()
                .unwrap();
                std::thread::sleep(Duration::from_millis(50));
                let ours = |q: &TunQueue| {
                    let mut buf = [0u8; 2048];
                    std::iter::from_fn(|| q.recv(&mut buf).ok().map(|n| buf[..n].to_vec()))
                        .filter(|p| p.ends_with(b"steered"))
                        .count()
                };
                let mine = core.id % 2;
                assert_eq!(ours(&queues[mine]), 1, "on CPU {}'s queue", core.id);
                assert_eq!(ours(&queues[1 - mine]), 0, "on the other queue");
            }
        })
        .join()
        .unwrap();
    }
}
