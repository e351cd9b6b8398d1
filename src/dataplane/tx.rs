//! What leaves for the underlay, and how it is grouped into sends. Pure code: the worker
//! collects [`Pending`] datagrams, [`gso_runs`] cuts them into runs that one `sendmsg`
//! with `UDP_SEGMENT` may carry, and the I/O layer sends each run from the socket bound to
//! its source port with its TOS byte.

use std::net::SocketAddr;
use std::ops::Range;

use crate::encap::Transmit;

/// The most datagrams one `UDP_SEGMENT` send may carry (the kernel's UDP_MAX_SEGMENTS).
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;
/// The most a UDP/IPv4 datagram (and so one GSO send) can carry.
pub(crate) const MAX_UDP_PAYLOAD: usize = 65535 - 20 - 8;

/// One encapsulated datagram waiting to be sent: where its UDP payload is, and what the
/// core decided about its outer headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Index of the buffer holding it.
    pub(crate) buf: usize,
    /// The UDP payload within that buffer.
    pub(crate) payload: Range<usize>,
    /// The peer.
    pub(crate) dst: SocketAddr,
    /// The outer source port (selects the socket).
    pub(crate) src_port: u16,
    /// The outer TOS byte (ECN).
    pub(crate) tos: u8,
}

impl Pending {
    /// The datagram the core produced in buffer `buf`.
    pub(crate) fn new(buf: usize, t: &Transmit) -> Pending {
        Pending {
            buf,
            payload: t.udp_payload(),
            dst: t.dst,
            src_port: t.src_port,
            tos: t.tos,
        }
    }

    fn same_flow(&self, o: &Pending) -> bool {
        self.dst == o.dst && self.src_port == o.src_port && self.tos == o.tos
    }
}

/// Cuts `pending` into runs for one `sendmsg` each. With `gso`, a run is consecutive
/// datagrams to the same peer from the same source port with the same TOS (one send has
/// one of each), all but the last exactly as long as the first and the last no longer (the
/// `UDP_SEGMENT` contract), at most [`MAX_GSO_SEGMENTS`] of them and at most
/// [`MAX_UDP_PAYLOAD`] bytes in all (EMSGSIZE otherwise). Without `gso` every run is one
/// datagram. The runs cover `pending` in order.
pub(crate) fn gso_runs(pending: &[Pending], gso: bool) -> GsoRuns<'_> {
    GsoRuns {
        pending,
        at: 0,
        gso,
    }
}

/// The iterator [`gso_runs`] returns: ranges of indices into the pending list.
pub(crate) struct GsoRuns<'a> {
    pending: &'a [Pending],
    at: usize,
    gso: bool,
}

impl GsoRuns<'_> {
    /// Continues from index `at` (after a fallback changed how runs are cut).
    pub(crate) fn skip_to(&mut self, at: usize) {
        self.at = at;
    }
}

impl Iterator for GsoRuns<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        let j = self.at;
        let first = self.pending.get(j)?;
        let seg = first.payload.len();
        let mut k = j + 1;
        if self.gso {
            let mut total = seg;
            while let Some(p) = self.pending.get(k) {
                let l = p.payload.len();
                if k - j >= MAX_GSO_SEGMENTS
                    || !p.same_flow(first)
                    || l > seg
                    || total + l > MAX_UDP_PAYLOAD
                {
                    break;
                }
                total += l;
                k += 1;
                if l < seg {
                    break; // a shorter datagram ends a run
                }
            }
        }
        self.at = k;
        Some(j..k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(len: usize, peer: u8, port: u16, tos: u8) -> Pending {
        Pending {
            buf: 0,
            payload: 100..100 + len,
            dst: SocketAddr::V4(std::net::SocketAddrV4::new([192, 0, 2, peer].into(), 8472)),
            src_port: port,
            tos,
        }
    }

    fn runs(v: &[Pending], gso: bool) -> Vec<Range<usize>> {
        gso_runs(v, gso).collect()
    }

    #[test]
    fn empty_and_no_gso() {
        assert!(runs(&[], true).is_empty());
        let v = vec![p(100, 2, 40000, 0); 3];
        assert_eq!(runs(&v, false), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn equal_segments_to_one_peer_share_a_send_and_a_short_one_ends_it() {
        let mut v = vec![p(1450, 2, 40000, 0); 4];
        v.push(p(700, 2, 40000, 0));
        v.push(p(1450, 2, 40000, 0));
        assert_eq!(runs(&v, true), vec![0..5, 5..6]);
    }

    #[test]
    fn a_longer_datagram_starts_a_new_run() {
        let v = vec![
            p(100, 2, 40000, 0),
            p(100, 2, 40000, 0),
            p(200, 2, 40000, 0),
        ];
        assert_eq!(runs(&v, true), vec![0..2, 2..3]);
    }

    #[test]
    fn peer_source_port_and_tos_each_split_runs() {
        let v = vec![
            p(1000, 2, 40000, 0),
            p(1000, 2, 40000, 0),
            p(1000, 3, 40000, 0), // another peer
            p(1000, 3, 41000, 0), // another source port (another flow)
            p(1000, 3, 41000, 2), // ECT(0) where the run was Not-ECT
            p(1000, 3, 41000, 2),
        ];
        assert_eq!(runs(&v, true), vec![0..2, 2..3, 3..4, 4..6]);
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits() {
        let v = vec![p(100, 2, 40000, 0); MAX_GSO_SEGMENTS + 5];
        assert_eq!(
            runs(&v, true),
            vec![0..MAX_GSO_SEGMENTS, MAX_GSO_SEGMENTS..MAX_GSO_SEGMENTS + 5]
        );
        // 1500-byte datagrams: 43 fit in 65,507 bytes, the 44th would not.
        let v = vec![p(1500, 2, 40000, 0); 50];
        let r = runs(&v, true);
        assert_eq!(r[0], 0..MAX_UDP_PAYLOAD / 1500);
        assert!(r
            .iter()
            .all(|r| r.len() * 1500 <= MAX_UDP_PAYLOAD && !r.is_empty()));
        assert_eq!(r.iter().map(|r| r.len()).sum::<usize>(), 50);
    }
}
