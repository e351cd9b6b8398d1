//! Segmentation and coalescing offloads for the TUN and the underlay socket: what the
//! kernel's GSO and GRO would do, done in userspace where the kernel cannot. Not
//! encapsulation (that is [`crate::encap`]): these work on inner TCP/IPv4 packets, before
//! they are encapsulated or after they are decapsulated, and do no I/O.
//!
//! - [`gso`]: TSO split as GSO would. A kernel vxlan peer's TSO super-packet reaches a
//!   plain UDP socket whole, far larger than the pod MTU; [`gso::split_tcp4`] cuts it into
//!   the segments the sender meant, each with complete checksums, and [`gso::mss_for`]
//!   says at what size.
//! - [`gro`]: receive coalescing for a TUN with a virtio-net header. [`gro::Coalescer`]
//!   merges consecutive segments of one TCP flow into one super-packet written once with a
//!   GSO header (or hands a peer's oversized segment to the kernel's GSO), leaving L4
//!   checksums partial for the kernel to finish only if it must.
//! - [`tunnel`]: the tunnel header for a TAP write that hands a whole encapsulated TSO
//!   super-packet to the kernel's UDP-tunnel GSO (Linux 6.17+), so nothing is split here.
//! - [`v6`]: the header for an IPv6 pod packet written to the TUN (checksum finished by
//!   the kernel, a peer's TCP super-packet cut at our MSS).
//! - [`gro::datagrams`]: the `UDP_GRO` batch iterator, cutting one `recvmsg` that returned
//!   a flow's datagrams back to back into those datagrams by their stride.
//!
//! Headers are read and written through [`crate::wire`] views ([`crate::wire::ipv4`],
//! [`crate::wire::tcp`], [`crate::wire::virtio_net`]).

pub mod gro;
pub mod gso;
pub mod tunnel;
pub mod v6;
