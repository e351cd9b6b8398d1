//! WireGuard, as flanneld's `wireguard` backend speaks it (`pkg/backend/wireguard`): the
//! keys ([`key`]), the private key's file ([`keyfile`]) and the sans-IO node that turns
//! packets and datagrams into actions ([`tunnel`]).
//!
//! The protocol itself (the Noise IK handshake, transport data, cookies, timers, the replay
//! window) is boringtun's sans-IO `noise` module: cryptography is never written here. It
//! takes X25519 from `x25519-dalek`, BLAKE2s from `blake2`, XChaCha20-Poly1305 (cookies)
//! from `chacha20poly1305` and the data path's ChaCha20-Poly1305 from `ring`, whose
//! assembly is the fastest of the crates at hand.

pub mod key;
pub mod keyfile;
pub mod tunnel;
pub mod uapi;

pub use key::{Key, KeyError};
pub use tunnel::{Action, Drop, Node, PeerId};
