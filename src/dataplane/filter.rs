//! The sender filter: a classic BPF program on each worker's UDP socket that keeps only
//! datagrams whose outer source address is a lease's public IP, so a flood from a host
//! that holds no lease is dropped in the kernel's softirq, before it is queued, copied to
//! weft or wakes a worker (kernel vxlan drops such packets just as early). The userspace
//! policy ([`crate::encap::Node::inbound`]) still checks every datagram that passes.
//!
//! Pure: [`program`] builds the instructions; `sys::attach_filter` installs them. The
//! kernel counts what the filter drops in the socket's drop counter, which weft exports as
//! `weft_socket_drops_total`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// `BPF_LD | BPF_W | BPF_ABS`: load the 32-bit word at offset k.
const LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JEQ_K: u16 = 0x15;
/// `BPF_RET | BPF_K`.
const RET_K: u16 = 0x06;
/// `SKF_NET_OFF + 12`: the IPv4 source address, relative to the network header.
const SRC_ADDR: u32 = (-0x10_0000i32 + 12) as u32;

/// The most addresses one program lists. The program scans them in order on every received
/// skb, so its length is a per-packet cost: 256 senders is at most 514 (JIT-compiled)
/// instructions per skb; past that the filter is lifted and the userspace check, one hash
/// lookup per datagram, does the work alone. (Two instructions each would fit about 2,000
/// in the kernel's 4,096, but then each skb would pay thousands.)
pub(crate) const MAX_SENDERS: usize = 256;

/// One instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    /// Opcode.
    pub(crate) code: u16,
    /// Jump offset if true.
    pub(crate) jt: u8,
    /// Jump offset if false.
    pub(crate) jf: u8,
    /// Constant.
    pub(crate) k: u32,
}

/// The program accepting exactly the datagrams from `senders` (duplicates allowed), or
/// `None` when there are more than [`MAX_SENDERS`] distinct ones: load the source address,
/// then per sender "equal: accept, else go on", and drop at the end.
pub(crate) fn program(senders: &[Ipv4Addr]) -> Option<Vec<Insn>> {
    let mut s: Vec<u32> = senders.iter().map(|a| u32::from(*a)).collect();
    s.sort_unstable();
    s.dedup();
    if s.len() > MAX_SENDERS {
        return None;
    }
    let ret = |k| Insn {
        code: RET_K,
        jt: 0,
        jf: 0,
        k,
    };
    let mut p = Vec::with_capacity(2 * s.len() + 2);
    p.push(Insn {
        code: LD_W_ABS,
        jt: 0,
        jf: 0,
        k: SRC_ADDR,
    });
    for a in s {
        p.push(Insn {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: a,
        });
        p.push(ret(u32::MAX));
    }
    p.push(ret(0));
    Some(p)
}

/// `SKF_NET_OFF + 8`: the IPv6 source address, relative to the network header.
const SRC_ADDR6: u32 = (-0x10_0000i32 + 8) as u32;

/// The most addresses a program for an IPv6 socket lists: each costs nine instructions
/// (four loads, four compares, the accept), so the worst skb pays what 512 IPv4 senders
/// would; past it the userspace check does the work alone.
pub(crate) const MAX_SENDERS_V6: usize = 128;

/// [`program`] for an IPv6 socket: per sender, compare the source address a word at a
/// time, on to the next sender at the first word that differs.
pub(crate) fn program6(senders: &[Ipv6Addr]) -> Option<Vec<Insn>> {
    let mut s: Vec<[u8; 16]> = senders.iter().map(|a| a.octets()).collect();
    s.sort_unstable();
    s.dedup();
    if s.len() > MAX_SENDERS_V6 {
        return None;
    }
    let insn = |code, jf, k| Insn { code, jt: 0, jf, k };
    let mut p = Vec::with_capacity(9 * s.len() + 1);
    for a in s {
        for w in 0..4u8 {
            let at = 4 * w as usize;
            let word = u32::from_be_bytes([a[at], a[at + 1], a[at + 2], a[at + 3]]);
            p.push(insn(LD_W_ABS, 0, SRC_ADDR6 + 4 * w as u32));
            // Past this sender's remaining loads and compares, and its accept.
            p.push(insn(JEQ_K, 2 * (3 - w) + 1, word));
        }
        p.push(insn(RET_K, 0, u32::MAX));
    }
    p.push(insn(RET_K, 0, 0));
    Some(p)
}

/// `BPF_ALU | BPF_MOD | BPF_K`.
const MOD_K: u16 = 0x94;
/// `BPF_ALU | BPF_ADD | BPF_K`.
const ADD_K: u16 = 0x04;
/// `BPF_RET | BPF_A`.
const RET_A: u16 = 0x16;
/// `SKF_AD_OFF + SKF_AD_RXHASH`: the skb's flow hash.
const RXHASH: u32 = (-0x1000i32 + 32) as u32;

/// The reuseport program a node handed over leaves on its port's socket group
/// (`SO_ATTACH_REUSEPORT_CBPF`): pick socket `n + hash mod n`, where the first `n` sockets
/// of the group are the predecessor's and the next `n` its successor's, so that every
/// datagram goes to the successor while the predecessor drains its own and closes them.
/// Once only `n` sockets are left, every index is past the end and the kernel falls back
/// to its hash over all of them; at the next hand-over the same program steers to the
/// newcomer again.
pub(crate) fn successor_steering(n: u32) -> Vec<Insn> {
    let insn = |code, k| Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    vec![
        insn(LD_W_ABS, RXHASH),
        insn(MOD_K, n.max(1)),
        insn(ADD_K, n),
        insn(RET_A, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `p` as the kernel would on a datagram from `src` (only the instructions
    /// `program` emits): true when kept.
    fn run(p: &[Insn], src: Ipv4Addr) -> bool {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = p[pc];
            match i.code {
                LD_W_ABS => {
                    assert_eq!(i.k, SRC_ADDR);
                    a = u32::from(src);
                    pc += 1;
                }
                JEQ_K => pc += 1 + if a == i.k { i.jt } else { i.jf } as usize,
                RET_K => return i.k != 0,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    /// [`run`] for an IPv6 program on a datagram from `src`.
    fn run6(p: &[Insn], src: Ipv6Addr) -> bool {
        let (mut pc, mut a) = (0usize, 0u32);
        let o = src.octets();
        loop {
            let i = p[pc];
            match i.code {
                LD_W_ABS => {
                    let at = i.k.wrapping_sub(SRC_ADDR6) as usize;
                    assert!(
                        at < 16 && at.is_multiple_of(4),
                        "load outside the source address"
                    );
                    a = u32::from_be_bytes([o[at], o[at + 1], o[at + 2], o[at + 3]]);
                    pc += 1;
                }
                JEQ_K => pc += 1 + if a == i.k { i.jt } else { i.jf } as usize,
                RET_K => return i.k != 0,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn the_ipv6_program_keeps_exactly_the_lease_holders() {
        let peers: Vec<Ipv6Addr> = (1..=MAX_SENDERS_V6 as u16)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x100 + i, i))
            .collect();
        let p = program6(&peers).unwrap();
        assert!(p.len() <= 4096, "BPF_MAXINSNS");
        for a in &peers {
            assert!(run6(&p, *a), "{a} dropped");
        }
        // Each differs from a listed sender (2001:db8::101:1) in one word only.
        for a in [
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0x101, 1),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0x101, 1),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 1, 0, 0x101, 1),
            Ipv6Addr::UNSPECIFIED,
        ] {
            assert!(!run6(&p, a), "{a} kept");
        }
        assert!(!run6(&program6(&[]).unwrap(), peers[0]));
        let mut more = peers.clone();
        more.push(Ipv6Addr::LOCALHOST);
        assert!(program6(&more).is_none());
    }

    #[test]
    fn keeps_exactly_the_lease_holders() {
        let peers: Vec<Ipv4Addr> = (1..=200u8).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        let p = program(&peers).unwrap();
        for a in &peers {
            assert!(run(&p, *a), "{a} dropped");
        }
        for a in [
            Ipv4Addr::new(192, 0, 2, 201),
            Ipv4Addr::new(203, 0, 113, 1),
            Ipv4Addr::UNSPECIFIED,
        ] {
            assert!(!run(&p, a), "{a} kept");
        }
        // No leases: nothing is kept.
        assert!(!run(&program(&[]).unwrap(), Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn the_largest_program_fits_the_kernel_and_a_larger_one_is_refused() {
        let peers: Vec<Ipv4Addr> = (0..MAX_SENDERS as u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
            .collect();
        let p = program(&peers).unwrap();
        assert!(p.len() <= 4096, "BPF_MAXINSNS");
        assert!(run(&p, peers[0]) && run(&p, peers[MAX_SENDERS - 1]));
        assert!(!run(&p, Ipv4Addr::new(192, 0, 2, 1)));
        let mut more = peers.clone();
        more.push(Ipv4Addr::new(192, 0, 2, 1));
        assert!(program(&more).is_none());
        // Duplicates do not count twice.
        more.pop();
        more.push(peers[3]);
        assert!(program(&more).is_some());
    }
}
