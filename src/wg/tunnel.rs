//! The sans-IO WireGuard node: this node's key, its peers, and for every datagram or
//! packet the [`Action`] the I/O layer is to take, as `encap::Node` does for VXLAN and
//! boringtun's `Tunn` does for one peer. Each peer is a boringtun [`Tunn`] (the handshake,
//! sessions, replay window and timers); this module routes among them: by the receiver
//! index of a response, cookie or data message (a peer's slot is the index's upper 24 bits,
//! as boringtun numbers sessions), and by the initiator's static key, decrypted once the
//! shared rate limiter has checked the MACs and the load, for an initiation. A datagram
//! that authenticates moves its peer's endpoint to its source (WireGuard's roaming).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use super::Key;

/// Handshake initiations a second, over all peers, before cookies are asked for
/// (boringtun's device uses the same figure).
pub const HANDSHAKES_PER_SECOND: u64 = 100;

/// Why a datagram was dropped, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Drop {
    /// Not a WireGuard message (type, length).
    Malformed,
    /// A MAC or AEAD tag that does not verify, a key that is not the peer's: forged or
    /// damaged.
    Forged,
    /// A counter already seen or behind the window: replayed.
    Replay,
    /// A valid message for no peer of ours (an unknown static key or index).
    UnknownPeer,
    /// Under load, an initiation without a valid cookie, or from no address.
    UnderLoad,
    /// Anything else boringtun refused (an expired session, an unexpected message).
    Refused,
}

impl Drop {
    /// Number of reasons (size of a counter array).
    pub const COUNT: usize = 6;
    /// Every reason, in counter order.
    pub const ALL: [Drop; Self::COUNT] = [
        Drop::Malformed,
        Drop::Forged,
        Drop::Replay,
        Drop::UnknownPeer,
        Drop::UnderLoad,
        Drop::Refused,
    ];

    /// Position in [`Drop::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The Prometheus label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::Forged => "forged",
            Drop::Replay => "replay",
            Drop::UnknownPeer => "unknown_peer",
            Drop::UnderLoad => "under_load",
            Drop::Refused => "refused",
        }
    }

    fn of(e: &WireGuardError) -> Drop {
        use WireGuardError as E;
        match e {
            E::InvalidPacket | E::IncorrectPacketLength | E::WrongPacketType => Drop::Malformed,
            E::InvalidMac | E::InvalidAeadTag | E::WrongKey | E::InvalidTai64nTimestamp => {
                Drop::Forged
            }
            E::DuplicateCounter | E::InvalidCounter | E::WrongTai64nTimestamp => Drop::Replay,
            E::WrongIndex => Drop::UnknownPeer,
            E::UnderLoad => Drop::UnderLoad,
            _ => Drop::Refused,
        }
    }
}

/// What the I/O layer does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Send this datagram to this address (a handshake message, a cookie, a keepalive, an
    /// encrypted packet).
    Send(SocketAddr, &'a [u8]),
    /// Write this decrypted IP packet to the device.
    Deliver(&'a [u8]),
    /// Nothing to do.
    Nothing,
    /// The datagram or packet was dropped, for this reason.
    Dropped(Drop),
}

/// A peer's slot: its key, its tunnel and where it was last heard from.
struct Peer {
    key: Key,
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
}

/// This node and its peers.
pub struct Node {
    private: StaticSecret,
    public: PublicKey,
    limiter: Arc<RateLimiter>,
    slots: Vec<Option<Peer>>,
    by_key: HashMap<[u8; 32], usize>,
}

/// A peer's slot number: the upper 24 bits of its session indices.
pub type PeerId = usize;

impl Node {
    /// A node with private key `private` and no peers.
    pub fn new(private: &Key) -> Node {
        let private = StaticSecret::from(private.0);
        let public = PublicKey::from(&private);
        Node {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            private,
            public,
            slots: Vec::new(),
            by_key: HashMap::new(),
        }
    }

    /// Adds the peer with public key `key`, or replaces its settings (a new tunnel: a
    /// changed PSK or keepalive takes a new handshake); `endpoint` is where to reach it
    /// until it is heard from elsewhere.
    pub fn set_peer(
        &mut self,
        key: &Key,
        psk: Option<Key>,
        keepalive: Option<u16>,
        endpoint: Option<SocketAddr>,
    ) -> PeerId {
        let id = match self.by_key.get(&key.0) {
            Some(id) => *id,
            None => self.free_slot(),
        };
        let tunn = Tunn::new(
            self.private.clone(),
            PublicKey::from(key.0),
            psk.map(|k| k.0),
            keepalive,
            id as u32,
            // The tunnel's own limiter (10 initiations a second for this peer, reset by
            // its timers): handing it the node's would count every initiation twice,
            // once in `route` and once in `decapsulate`, halving the node's budget.
            None,
        );
        self.slots[id] = Some(Peer {
            key: *key,
            tunn,
            endpoint,
        });
        self.by_key.insert(key.0, id);
        id
    }

    fn free_slot(&mut self) -> PeerId {
        match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        }
    }

    /// Removes the peer with public key `key`, if it is one.
    pub fn remove_peer(&mut self, key: &Key) {
        if let Some(id) = self.by_key.remove(&key.0) {
            self.slots[id] = None;
        }
    }

    /// The peer with public key `key`.
    pub fn peer(&self, key: &Key) -> Option<PeerId> {
        self.by_key.get(&key.0).copied()
    }

    /// Where peer `id` is reached now.
    pub fn endpoint(&self, id: PeerId) -> Option<SocketAddr> {
        self.slots.get(id)?.as_ref()?.endpoint
    }

    /// This node's public key.
    pub fn public_key(&self) -> Key {
        Key(self.public.to_bytes())
    }

    /// Encrypts IP `packet` for peer `id` into `out` (which has room for the packet and 32
    /// bytes more, or a handshake initiation's 148). Before a session exists the packet is
    /// queued by the tunnel and the action is the handshake initiation.
    pub fn send<'a>(&mut self, id: PeerId, packet: &[u8], out: &'a mut [u8]) -> Action<'a> {
        let Some(p) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return Action::Dropped(Drop::UnknownPeer);
        };
        let r = p.tunn.encapsulate(packet, out);
        Self::to_action(p.endpoint, r)
    }

    /// Handles datagram `datagram` from `from`, writing into `out` (as large as the largest
    /// datagram); returns the peer it came from, when it authenticated, and the action. A
    /// [`Action::Send`] with no peer is a cookie reply: the node is under load.
    /// After an action that sends, call [`Node::flush`] for that peer: a completed handshake
    /// releases the packets queued while it ran.
    pub fn receive<'a>(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> (Option<PeerId>, Action<'a>) {
        let id = match self.route(from, datagram, out) {
            Ok(id) => id,
            Err(Routed::Drop(d)) => return (None, Action::Dropped(d)),
            Err(Routed::Cookie(n)) => return (None, Action::Send(from, &out[..n])),
        };
        let Some(p) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return (None, Action::Dropped(Drop::UnknownPeer));
        };
        let r = p.tunn.decapsulate(Some(from.ip()), datagram, out);
        if authenticated(&r) {
            p.endpoint = Some(from);
        }
        (Some(id), Self::to_action(p.endpoint, r))
    }

    /// The next packet peer `id` has queued to send (after a handshake completed), or
    /// [`Action::Nothing`].
    pub fn flush<'a>(&mut self, id: PeerId, out: &'a mut [u8]) -> Action<'a> {
        let Some(p) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return Action::Nothing;
        };
        let r = p.tunn.decapsulate(None, &[], out);
        Self::to_action(p.endpoint, r)
    }

    /// Runs peer `id`'s timers (rekey, keepalive, handshake retry, key expiry): call every
    /// quarter second or so, and send what it returns.
    pub fn tick<'a>(&mut self, id: PeerId, out: &'a mut [u8]) -> Action<'a> {
        let Some(p) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return Action::Nothing;
        };
        let r = p.tunn.update_timers(out);
        Self::to_action(p.endpoint, r)
    }

    /// How long ago peer `id`'s current session was established (`None`: no session).
    pub fn last_handshake(&self, id: PeerId) -> Option<std::time::Duration> {
        self.slots.get(id)?.as_ref()?.tunn.stats().0
    }

    /// Peer `id`'s bytes on the wire: (sent, received).
    pub fn traffic(&self, id: PeerId) -> (u64, u64) {
        self.slots
            .get(id)
            .and_then(Option::as_ref)
            .map_or((0, 0), |p| {
                let (_, tx, rx, ..) = p.tunn.stats();
                (tx as u64, rx as u64)
            })
    }

    /// Starts a new second of the handshake rate limit: call once a second.
    pub fn reset_rate_limit(&self) {
        self.limiter.reset_count();
    }

    /// The peers, by id.
    pub fn peers(&self) -> impl Iterator<Item = (PeerId, &Key)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, &p.as_ref()?.key)))
    }

    /// What [`Node::route`] makes of `datagram` alone, changing nothing but the rate
    /// limiter's count (for the parser fuzz target): the peer it is for, or the cookie
    /// reply written to `out` (its length), or why it is dropped.
    pub(crate) fn classify(
        &self,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<PeerId, Result<usize, Drop>> {
        self.route(from, datagram, out).map_err(|r| match r {
            Routed::Cookie(n) => Ok(n),
            Routed::Drop(d) => Err(d),
        })
    }

    /// Which peer `datagram` is for: by its receiver index, or for an initiation by the
    /// static key it carries, once the limiter has checked its MACs and the load.
    fn route(&self, from: SocketAddr, datagram: &[u8], out: &mut [u8]) -> Result<PeerId, Routed> {
        let packet = match self.limiter.verify_packet(Some(from.ip()), datagram, out) {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => return Err(Routed::Cookie(cookie.len())),
            Err(TunnResult::Err(e)) => return Err(Routed::Drop(Drop::of(&e))),
            Err(_) => return Err(Routed::Drop(Drop::Refused)),
        };
        let index = match packet {
            Packet::HandshakeInit(ref init) => {
                let half = parse_handshake_anon(&self.private, &self.public, init)
                    .map_err(|e| Routed::Drop(Drop::of(&e)))?;
                return self
                    .by_key
                    .get(&half.peer_static_public)
                    .copied()
                    .ok_or(Routed::Drop(Drop::UnknownPeer));
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        let id = (index >> 8) as usize;
        match self.slots.get(id) {
            Some(Some(_)) => Ok(id),
            _ => Err(Routed::Drop(Drop::UnknownPeer)),
        }
    }

    fn to_action(endpoint: Option<SocketAddr>, r: TunnResult<'_>) -> Action<'_> {
        match r {
            TunnResult::Done => Action::Nothing,
            TunnResult::Err(e) => Action::Dropped(Drop::of(&e)),
            TunnResult::WriteToNetwork(b) => match endpoint {
                Some(to) => Action::Send(to, b),
                None => Action::Dropped(Drop::Refused),
            },
            TunnResult::WriteToTunnelV4(b, _) | TunnResult::WriteToTunnelV6(b, _) => {
                Action::Deliver(b)
            }
        }
    }
}

/// Whether `r` shows that the datagram came from the peer: it decrypted, or it was a
/// handshake message the peer's key verified. A cookie reply (the tunnel's own limiter
/// under load) proves nothing, so a replayed initiation from elsewhere does not move the
/// peer's endpoint.
fn authenticated(r: &TunnResult<'_>) -> bool {
    match r {
        TunnResult::Err(_) => false,
        TunnResult::WriteToNetwork(b) => b.first() != Some(&3),
        _ => true,
    }
}

/// Why [`Node::route`] found no peer to hand a datagram to.
enum Routed {
    /// Dropped, for this reason.
    Drop(Drop),
    /// Under load: the limiter wrote a cookie reply of this many bytes to `out`.
    Cookie(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 packet of `len` bytes from 10.244.1.2 to 10.244.2.2 (what boringtun checks of
    /// a decrypted packet: the version and the total length).
    fn packet(len: usize, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; len];
        p[0] = 0x45;
        p[1] = 0;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        p
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Two nodes, each the other's peer: (a, b, a's id for b, b's id for a).
    fn pair(psk: Option<Key>) -> (Node, Node, PeerId, PeerId) {
        let (ka, kb) = (Key::generate().unwrap(), Key::generate().unwrap());
        let (mut a, mut b) = (Node::new(&ka), Node::new(&kb));
        let ab = a.set_peer(&kb.public(), psk, None, Some(addr("192.0.2.2:51820")));
        let ba = b.set_peer(&ka.public(), psk, None, Some(addr("192.0.2.1:51820")));
        (a, b, ab, ba)
    }

    /// Sends `what` from `src` to `dst` as the I/O layer would, with its flushes; returns
    /// what `dst` delivered and every datagram `dst` sent back.
    fn carry(
        src: &mut Node,
        from: SocketAddr,
        datagram: &[u8],
        dst: &mut Node,
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let _ = src;
        let (mut delivered, mut replies) = (Vec::new(), Vec::new());
        let mut out = vec![0u8; 2048];
        let (id, act) = dst.receive(from, datagram, &mut out);
        match act {
            Action::Deliver(p) => delivered.push(p.to_vec()),
            Action::Send(_, d) => replies.push(d.to_vec()),
            _ => {}
        }
        if let Some(id) = id {
            while let Action::Send(_, d) = dst.flush(id, &mut out) {
                replies.push(d.to_vec());
            }
        }
        (delivered, replies)
    }

    /// The whole exchange: an initiation for a queued packet, the response, the packet
    /// released by the completed handshake, delivered whole at the other end.
    fn handshake_and_deliver(psk: Option<Key>) {
        let (mut a, mut b, ab, _) = pair(psk);
        let (from_a, from_b) = (addr("192.0.2.1:51820"), addr("192.0.2.2:51820"));
        let mut out = vec![0u8; 2048];
        let p = packet(100, 7);
        let Action::Send(to, init) = a.send(ab, &p, &mut out) else {
            panic!("no initiation")
        };
        assert_eq!((to, init.len(), init[0]), (from_b, 148, 1));
        let init = init.to_vec();
        let (_, resp) = carry(&mut a, from_a, &init, &mut b);
        assert_eq!((resp.len(), resp[0].len(), resp[0][0]), (1, 92, 2));
        // The response completes a's handshake; a's queue then holds the packet.
        let (_, after) = carry(&mut b, from_b, &resp[0], &mut a);
        let data: Vec<&Vec<u8>> = after.iter().filter(|d| d.len() == 100 + 32).collect();
        assert_eq!(data.len(), 1, "{after:?}");
        let (got, _) = carry(&mut a, from_a, data[0], &mut b);
        assert_eq!(got, vec![p]);
    }

    #[test]
    fn a_handshake_then_a_packet_delivered_whole() {
        handshake_and_deliver(None);
        handshake_and_deliver(Some(Key::generate().unwrap()));
    }

    /// One established session; (a, b, a's id for b, a data message a sent).
    fn established() -> (Node, Node, PeerId, Vec<u8>) {
        let (mut a, mut b, ab, _) = pair(None);
        let (from_a, from_b) = (addr("192.0.2.1:51820"), addr("192.0.2.2:51820"));
        let mut out = vec![0u8; 2048];
        let Action::Send(_, init) = a.send(ab, &packet(60, 1), &mut out) else {
            panic!()
        };
        let init = init.to_vec();
        let (_, resp) = carry(&mut a, from_a, &init, &mut b);
        let (_, _) = carry(&mut b, from_b, &resp[0], &mut a);
        let Action::Send(_, d) = a.send(ab, &packet(80, 2), &mut out) else {
            panic!("no data")
        };
        (a, b, ab, d.to_vec())
    }

    #[test]
    fn replayed_forged_and_stray_datagrams_are_dropped_by_reason() {
        let (_, mut b, _, data) = established();
        let from_a = addr("192.0.2.1:51820");
        let mut out = vec![0u8; 2048];
        let mut forged = data.clone();
        forged[40] ^= 1;
        assert_eq!(
            b.receive(from_a, &forged, &mut out).1,
            Action::Dropped(Drop::Forged)
        );
        assert!(matches!(
            b.receive(from_a, &data, &mut out).1,
            Action::Deliver(_)
        ));
        assert_eq!(
            b.receive(from_a, &data, &mut out).1,
            Action::Dropped(Drop::Replay)
        );
        assert_eq!(
            b.receive(from_a, &data[..10], &mut out).1,
            Action::Dropped(Drop::Malformed)
        );
        let mut stray = data.clone();
        stray[4..8].copy_from_slice(&(77u32 << 8).to_le_bytes());
        assert_eq!(
            b.receive(from_a, &stray, &mut out).1,
            Action::Dropped(Drop::UnknownPeer)
        );
        // An initiation from a key that is no peer of b's.
        let mut c = Node::new(&Key::generate().unwrap());
        let cb = c.set_peer(&b.public_key(), None, None, Some(addr("192.0.2.2:51820")));
        let Action::Send(_, init) = c.send(cb, &packet(60, 3), &mut out) else {
            panic!()
        };
        let init = init.to_vec();
        assert_eq!(
            b.receive(from_a, &init, &mut out).1,
            Action::Dropped(Drop::UnknownPeer)
        );
    }

    #[test]
    fn an_authenticated_datagram_moves_the_peer_s_endpoint_and_a_forged_one_does_not() {
        let (_, mut b, _, data) = established();
        let ba = b.peers().next().unwrap().0;
        let moved = addr("198.51.100.9:40000");
        let mut out = vec![0u8; 2048];
        let mut forged = data.clone();
        forged[50] ^= 1;
        b.receive(moved, &forged, &mut out);
        assert_eq!(b.endpoint(ba), Some(addr("192.0.2.1:51820")));
        b.receive(moved, &data, &mut out);
        assert_eq!(b.endpoint(ba), Some(moved));
    }

    #[test]
    fn a_flood_of_initiations_gets_cookies_and_the_established_peer_keeps_its_traffic() {
        let (mut a, mut b, ab, _) = established();
        let mut c = Node::new(&Key::generate().unwrap());
        let cb = c.set_peer(&b.public_key(), None, None, Some(addr("192.0.2.2:51820")));
        let mut out = vec![0u8; 2048];
        let Action::Send(_, init) = c.send(cb, &packet(60, 3), &mut out) else {
            panic!()
        };
        let init = init.to_vec();
        let flooder = addr("198.51.100.7:1000");
        let (mut unknown, mut cookies) = (0, 0);
        for _ in 0..2 * HANDSHAKES_PER_SECOND {
            match b.receive(flooder, &init, &mut out) {
                (None, Action::Dropped(Drop::UnknownPeer)) => unknown += 1,
                (None, Action::Send(to, m)) if to == flooder && m[0] == 3 => cookies += 1,
                other => panic!("{other:?}"),
            }
        }
        // The budget is counted once per initiation: a's, in `established`, took one.
        assert_eq!(unknown, HANDSHAKES_PER_SECOND - 1);
        assert_eq!(cookies, HANDSHAKES_PER_SECOND + 1, "then only cookies");
        let Action::Send(_, d) = a.send(ab, &packet(90, 4), &mut out) else {
            panic!()
        };
        let d = d.to_vec();
        assert!(matches!(
            b.receive(addr("192.0.2.1:51820"), &d, &mut out),
            (Some(_), Action::Deliver(p)) if p.len() == 90
        ));
        // boringtun restarts the count only a second after the last restart.
        std::thread::sleep(std::time::Duration::from_millis(1010));
        b.reset_rate_limit();
        assert_eq!(
            b.receive(flooder, &init, &mut out).1,
            Action::Dropped(Drop::UnknownPeer),
            "a new second, a new budget"
        );
    }

    #[test]
    fn a_replayed_initiation_never_moves_the_endpoint_even_under_the_peer_s_limit() {
        let (mut a, mut b, _) = {
            let (a, b, ab, _) = pair(None);
            (a, b, ab)
        };
        let ab = a.peers().next().unwrap().0;
        let mut out = vec![0u8; 2048];
        let Action::Send(_, init) = a.send(ab, &packet(60, 1), &mut out) else {
            panic!()
        };
        let init = init.to_vec();
        let (home, moved) = (addr("192.0.2.1:51820"), addr("198.51.100.9:40000"));
        assert!(matches!(
            b.receive(home, &init, &mut out),
            (Some(_), Action::Send(..))
        ));
        let ba = b.peers().next().unwrap().0;
        let mut cookie = false;
        for _ in 0..20 {
            if let (_, Action::Send(_, m)) = b.receive(moved, &init, &mut out) {
                cookie |= m[0] == 3;
            }
        }
        assert!(cookie, "the peer's own limit answered with a cookie");
        assert_eq!(b.endpoint(ba), Some(home));
        assert!(b.last_handshake(ba).is_none(), "no session before data");
    }

    #[test]
    fn peers_are_replaced_and_removed_by_key() {
        let mut a = Node::new(&Key::generate().unwrap());
        let (k1, k2) = (
            Key::generate().unwrap().public(),
            Key::generate().unwrap().public(),
        );
        let one = a.set_peer(&k1, None, None, None);
        let two = a.set_peer(&k2, None, Some(25), None);
        assert_ne!(one, two);
        assert_eq!(a.set_peer(&k1, None, Some(5), None), one);
        a.remove_peer(&k1);
        assert_eq!((a.peer(&k1), a.peer(&k2)), (None, Some(two)));
        assert_eq!(
            a.set_peer(&k1, None, None, None),
            one,
            "the free slot is taken again"
        );
        let mut out = vec![0u8; 256];
        // No endpoint yet: the initiation has nowhere to go.
        assert_eq!(
            a.send(one, &packet(60, 0), &mut out),
            Action::Dropped(Drop::Refused)
        );
    }
}
