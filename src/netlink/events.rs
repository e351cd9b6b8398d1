//! The kernel's notifications of changes to links, addresses, routes and neighbours in
//! this namespace (rtnetlink multicast groups), for the repair checks: a check reads the
//! kernel's tables (every peer's route, neighbour and FDB entry: thousands of entries on
//! a large cluster's kernel dataplane) only after a notification says something it keeps
//! was changed, or after the kernel dropped notifications. A node with nothing changing
//! then does one non-blocking `recv` a second, whatever the cluster's size.
//!
//! The socket is netlink-sys's (safe; no `unsafe` here), read without blocking from the
//! check's own thread, so nothing runs between checks; what arrived meanwhile waits in the
//! socket's buffer. When that buffer overflows the kernel says so (`ENOBUFS`), and
//! [`Change::Lost`] stands for whatever was dropped.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::constants::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
    RTMGRP_NEIGH,
};
use rtnetlink::packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::neighbour::{NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};

use super::{neighbour_of, PeerRoute, RouteInfo};
use crate::wire::MacAddr;

/// One change the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// The link with this index was added, changed (up, down, MAC, name) or deleted.
    Link(u32),
    /// An address was added to or removed from the link with this index (its routes come
    /// or go with it, without notifications of their own).
    Address(u32),
    /// A route of the main table was added or replaced (`gone`: deleted).
    Route {
        gone: bool,
        dst: IpNet,
        oif: Option<u32>,
        /// The route as weft's peer route, if it is one (`proto 87`, unicast).
        peer: Option<PeerRoute>,
    },
    /// A neighbour entry (`bridge`: an FDB entry, `ip` its destination) on the link
    /// `index` was added or changed (`gone`: deleted); `permanent`: its state says so.
    Neighbour {
        gone: bool,
        index: u32,
        bridge: bool,
        ip: IpAddr,
        mac: MacAddr,
        permanent: bool,
    },
    /// The kernel dropped notifications: anything may have changed.
    Lost,
}

/// A socket subscribed to the notifications [`Change`] describes.
pub(crate) struct Events {
    socket: Socket,
    buf: Vec<u8>,
}

/// What the kernel may queue for a check, a second's worth of a busy node's changes.
const RECEIVE_BUFFER: libc::c_int = 1 << 20;

impl Events {
    /// Subscribes, in the current network namespace.
    pub(crate) fn open() -> io::Result<Events> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        let groups = RTMGRP_LINK
            | RTMGRP_NEIGH
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_ROUTE;
        socket.bind(&SocketAddr::new(0, groups))?;
        socket.set_non_blocking(true)?;
        // Best effort: past net.core.rmem_max the kernel keeps its own cap.
        let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
        Ok(Events {
            socket,
            buf: vec![0; 1 << 16],
        })
    }

    /// Every change reported since the last call, in order (a read error other than "no
    /// more" ends the list with [`Change::Lost`]).
    pub(crate) fn drain(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => break,
                Ok(n) => parse_datagram(&self.buf[..n], &mut out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ENOBUFS: the kernel dropped some; the socket carries on.
                    tracing::debug!(error = %e, "netlink notifications lost");
                    out.push(Change::Lost);
                    if e.raw_os_error() != Some(libc::ENOBUFS) {
                        break;
                    }
                }
            }
        }
        out
    }
}

/// The changes in one datagram (several messages, each length-prefixed). A message weft
/// cannot parse is skipped; a broken length ends the datagram as [`Change::Lost`].
pub(crate) fn parse_datagram(mut bytes: &[u8], out: &mut Vec<Change>) {
    while !bytes.is_empty() {
        let len = match NetlinkBuffer::new_checked(bytes) {
            Ok(b) => b.length() as usize,
            Err(_) => {
                out.push(Change::Lost);
                return;
            }
        };
        let (msg, rest) = bytes.split_at(len.clamp(1, bytes.len()));
        bytes = rest;
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) {
            Ok(m) => {
                if let NetlinkPayload::InnerMessage(m) = m.payload {
                    out.extend(change_of(m));
                }
            }
            // Unreadable (a link kind the parser does not know, say): it may have been
            // one that mattered.
            Err(_) => out.push(Change::Lost),
        }
    }
}

/// What one notification says changed, if it is of a kind the checks keep.
fn change_of(m: RouteNetlinkMessage) -> Option<Change> {
    use RouteNetlinkMessage as M;
    Some(match m {
        M::NewLink(l) | M::DelLink(l) => Change::Link(l.header.index),
        M::NewAddress(a) | M::DelAddress(a) => Change::Address(a.header.index),
        M::NewRoute(r) => route_change(&r, false)?,
        M::DelRoute(r) => route_change(&r, true)?,
        M::NewNeighbour(n) => neighbour_change(&n, false)?,
        M::DelNeighbour(n) => neighbour_change(&n, true)?,
        _ => return None,
    })
}

/// A main-table route added, replaced or (`gone`) deleted.
fn route_change(r: &RouteMessage, gone: bool) -> Option<Change> {
    if r.header.table != 254 {
        return None;
    }
    let info = RouteInfo::read(r)?;
    Some(Change::Route {
        gone,
        dst: info.dst,
        oif: info.oif,
        peer: info.as_peer(),
    })
}

/// A neighbour or FDB entry added, changed or (`gone`) deleted.
fn neighbour_change(n: &NeighbourMessage, gone: bool) -> Option<Change> {
    let (ip, mac) = neighbour_of(n);
    Some(Change::Neighbour {
        gone,
        index: n.header.ifindex,
        bridge: n.header.family == AddressFamily::Bridge,
        ip: ip?,
        mac: mac?,
        permanent: n.header.state == NeighbourState::Permanent,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
    use rtnetlink::packet_route::route::RouteProtocol;
    use rtnetlink::RouteMessageBuilder;

    use super::*;
    use crate::netlink::PEER_PROTO;

    /// `msgs` as the kernel sends them: one datagram, each message length-prefixed.
    fn datagram(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let mut m = NetlinkMessage::from(m);
            m.finalize();
            let mut b = vec![0; m.buffer_len()];
            m.serialize(&mut b);
            out.extend(b);
        }
        out
    }

    fn peer_route() -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(10, 244, 2, 0), 24)
            .gateway(Ipv4Addr::new(10, 244, 2, 0))
            .output_interface(7)
            .protocol(RouteProtocol::Other(PEER_PROTO))
            .onlink()
            .build()
    }

    fn neighbour(family: AddressFamily, ip: Ipv4Addr) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = family;
        n.header.ifindex = 7;
        n.header.state = NeighbourState::Permanent;
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                IpAddr::V4(ip),
            )));
        n.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![
            0x0e, 0, 0, 0, 2, 1,
        ]));
        n
    }

    #[test]
    fn notifications_say_what_changed_and_where() {
        use RouteNetlinkMessage as M;
        let mut link = rtnetlink::packet_route::link::LinkMessage::default();
        link.header.index = 7;
        let bytes = datagram(vec![
            M::DelRoute(peer_route()),
            M::NewNeighbour(neighbour(AddressFamily::Inet, Ipv4Addr::new(10, 244, 2, 0))),
            M::DelNeighbour(neighbour(
                AddressFamily::Bridge,
                Ipv4Addr::new(192, 0, 2, 2),
            )),
            M::NewLink(link),
        ]);
        let mut out = Vec::new();
        parse_datagram(&bytes, &mut out);
        let mac = MacAddr([0x0e, 0, 0, 0, 2, 1]);
        let dst: IpNet = "10.244.2.0/24".parse().unwrap();
        assert_eq!(
            out,
            [
                Change::Route {
                    gone: true,
                    dst,
                    oif: Some(7),
                    peer: Some(PeerRoute {
                        dst,
                        gateway: dst.network(),
                        oif: 7,
                        onlink: true
                    }),
                },
                Change::Neighbour {
                    gone: false,
                    index: 7,
                    bridge: false,
                    ip: dst.network(),
                    mac,
                    permanent: true,
                },
                Change::Neighbour {
                    gone: true,
                    index: 7,
                    bridge: true,
                    ip: "192.0.2.2".parse().unwrap(),
                    mac,
                    permanent: true,
                },
                Change::Link(7),
            ]
        );
    }

    #[test]
    fn a_broken_datagram_is_changes_lost_not_a_panic() {
        let mut bytes = datagram(vec![RouteNetlinkMessage::DelRoute(peer_route())]);
        bytes[0] = 0xff; // a length past the end
        let mut out = Vec::new();
        parse_datagram(&bytes, &mut out);
        assert_eq!(out, [Change::Lost]);
        for cut in 0..bytes.len() {
            parse_datagram(&bytes[..cut], &mut Vec::new());
        }
    }
}
