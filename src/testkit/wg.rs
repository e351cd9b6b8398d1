//! Two WireGuard nodes, each the other's peer, and the genuine exchange between them: for
//! the fuzz target, the bench and tests.

use std::net::SocketAddr;

use crate::wg::{Action, Key, Node, PeerId};

/// Node a (key `[1; 32]`, at 192.0.2.1:51820) and node b (`[2; 32]`, 192.0.2.2:51820).
pub struct Pair {
    /// The initiator.
    pub a: Node,
    /// The responder.
    pub b: Node,
    /// a's id for b.
    pub ab: PeerId,
    /// a's address.
    pub a_addr: SocketAddr,
    /// b's address.
    pub b_addr: SocketAddr,
}

/// An IPv4 packet of `len` bytes (version and total length set, as boringtun checks them).
pub fn packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

impl Pair {
    /// The two nodes, no handshake yet.
    pub fn new() -> Pair {
        let (ka, kb) = (Key([1; 32]), Key([2; 32]));
        let a_addr: SocketAddr = "192.0.2.1:51820".parse().unwrap_or(([0; 4], 0).into());
        let b_addr: SocketAddr = "192.0.2.2:51820".parse().unwrap_or(([0; 4], 0).into());
        let (mut a, mut b) = (Node::new(&ka), Node::new(&kb));
        let ab = a.set_peer(&kb.public(), None, None, Some(b_addr));
        b.set_peer(&ka.public(), None, None, Some(a_addr));
        Pair {
            a,
            b,
            ab,
            a_addr,
            b_addr,
        }
    }

    /// a sends `packet`, which starts the handshake: b answers the initiation; with
    /// `complete`, the response goes back to a and the data message a then releases is
    /// returned (not yet given to b). Panics where a genuine step fails.
    pub fn handshake(&mut self, packet: &[u8], complete: bool, out: &mut [u8]) -> Option<Vec<u8>> {
        let Action::Send(_, init) = self.a.send(self.ab, packet, out) else {
            panic!("no initiation")
        };
        let init = init.to_vec();
        let Action::Send(_, resp) = self.b.receive(self.a_addr, &init, out).1 else {
            panic!("a genuine initiation was not answered")
        };
        let resp = resp.to_vec();
        if !complete {
            return None;
        }
        self.a.receive(self.b_addr, &resp, out);
        let Action::Send(_, msg) = self.a.flush(self.ab, out) else {
            panic!("the queued packet did not leave after the handshake")
        };
        Some(msg.to_vec())
    }
}

impl Default for Pair {
    fn default() -> Pair {
        Pair::new()
    }
}
