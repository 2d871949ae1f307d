//! Received packets handed to their queue pairs.
//!
//! Each packet's ICRC verdict and headers are judged first (what fails is
//! counted and dropped), then its queue pair handles it. Requests that
//! follow one another to the same queue pair within a datagram (a
//! stream's WRITEs, the segments of one GRO datagram) are handled under
//! one hold of its lock ([`QpCore::receive_run`]), up to the next point
//! where the batch's answers leave. Per packet, the lock's two atomic
//! instructions had the most samples of a small request's handling; with
//! runs the 64-byte stream's rate stayed within noise (the next atomic
//! instruction waits for the stores instead, and the responder is not the
//! thread that sets that rate).

use std::iter::Peekable;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::Shared;
use super::lookups::BatchLookups;
use crate::net::IcrcVerdict;
use crate::rc::{Outbox, QpCore, RxDrop};
use crate::wire::{Opcode, PacketRepr};

/// A received packet (from the BTH on) and its ICRC's verdict.
pub(super) type Arrival<'p> = (&'p [u8], IcrcVerdict);

/// What one [`Shared::dispatch`] handled.
pub(super) struct Dispatched {
    /// Packets taken: the first one and those that continued its run.
    pub(super) packets: usize,
    /// The queue pair, if a READ request left a reply that goes on (see
    /// [`QpCore::continue_reply`]).
    pub(super) replying: Option<Arc<QpCore>>,
}

impl Shared {
    /// Hands `first`, a packet sent from `src` to the local address `dst`,
    /// to its queue pair, and with it the requests that follow it in
    /// `more` to the same queue pair, `room` packets at most in all.
    /// Responses to requests go into `out` (sent with the batch);
    /// requester packets that responses release go out through `ordered`
    /// at once, in send order.
    pub(super) fn dispatch<'p>(
        &self,
        lookups: &mut BatchLookups<'_>,
        (src, dst): &(SocketAddr, IpAddr),
        first: Arrival<'p>,
        more: &mut Peekable<impl Iterator<Item = Arrival<'p>>>,
        room: usize,
        (out, ordered): (&mut Outbox, &mut Outbox),
    ) -> Dispatched {
        let alone = Dispatched {
            packets: 1,
            replying: None,
        };
        let Some(pkt) = self.admit(lookups, first) else {
            return alone;
        };
        if lookups.qp(pkt.bth.dest_qp).is_none() {
            self.counters.rx_unknown_qp.fetch_add(1, Relaxed);
            return alone;
        }
        let src = src.ip();
        if pkt.bth.opcode.is_request() {
            return self.request_run(lookups, (src, *dst), pkt, more, room, out);
        }
        let lookups_now: &BatchLookups<'_> = lookups;
        let Some(qp) = lookups_now.current_qp() else {
            return alone;
        };
        // An acknowledgement may open the window: the requester packets it
        // releases go out at once, in order with the poster's.
        let received = self.in_send_order_with(qp, ordered, |out| {
            qp.receive_run().receive(lookups_now, src, *dst, &pkt, out)
        });
        match received {
            Ok(()) => lookups.accepted(1),
            Err(reason) => self.count_drop(reason),
        }
        alone
    }

    /// Counts a packet's ICRC verdict and parses its headers: `None` for a
    /// packet dropped (and counted).
    fn admit<'p>(
        &self,
        lookups: &mut BatchLookups<'_>,
        (datagram, verdict): Arrival<'p>,
    ) -> Option<PacketRepr<'p>> {
        match verdict {
            IcrcVerdict::Good => {}
            IcrcVerdict::GoodWithIpId(_) => lookups.solved_ip_ids(1),
            IcrcVerdict::Bad { .. } | IcrcVerdict::Unverifiable => {
                self.counters.rx_bad_icrc.fetch_add(1, Relaxed);
                return None;
            }
            IcrcVerdict::TooShort | IcrcVerdict::Truncated => {
                self.counters.rx_malformed.fetch_add(1, Relaxed);
                return None;
            }
        }
        let parsed = PacketRepr::parse(datagram);
        if parsed.is_err() {
            self.counters.rx_malformed.fetch_add(1, Relaxed);
        }
        parsed.ok()
    }

    /// `first`, a request to the queue pair `lookups` found last, and the
    /// requests to it that follow in `more` (see [`continuing`]), `room` at
    /// most, under one hold of its lock.
    fn request_run<'p>(
        &self,
        lookups: &mut BatchLookups<'_>,
        (src, dst): (IpAddr, IpAddr),
        first: PacketRepr<'p>,
        more: &mut Peekable<impl Iterator<Item = Arrival<'p>>>,
        room: usize,
        out: &mut Outbox,
    ) -> Dispatched {
        let lookups_now: &BatchLookups<'_> = lookups;
        let Some(qp) = lookups_now.current_qp() else {
            return Dispatched {
                packets: 1,
                replying: None,
            };
        };
        let mut run = qp.receive_run();
        let (mut packets, mut accepted, mut solved_ip_ids) = (0, 0, 0);
        let mut read_request = false;
        let mut next = Some(first);
        while let Some(pkt) = next.take() {
            packets += 1;
            read_request |= pkt.bth.opcode == Opcode::RC_RDMA_READ_REQUEST;
            match run.receive(lookups_now, src, dst, &pkt, out) {
                Ok(()) => accepted += 1,
                Err(reason) => self.count_drop(reason),
            }
            if packets < room {
                next = continuing(more, qp.qpn, &mut solved_ip_ids);
            }
        }
        let replying = (read_request && run.replying()).then(|| Arc::clone(qp));
        drop(run);
        lookups.accepted(accepted);
        lookups.solved_ip_ids(solved_ip_ids);
        Dispatched { packets, replying }
    }

    fn count_drop(&self, reason: RxDrop) {
        let counter = match reason {
            RxDrop::NotReady => &self.counters.rx_qp_not_ready,
            RxDrop::WrongAddress => &self.counters.rx_wrong_address,
            RxDrop::BadPkey => &self.counters.rx_bad_pkey,
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// The next packet of `more` if it continues a run of requests to queue
/// pair `qpn`: its ICRC good (one matched with a solved IPv4 ID is counted
/// in `solved_ip_ids`), its headers sound, a request to `qpn`. Anything
/// else stays in `more`, for [`Shared::dispatch`] to judge and count.
#[inline(always)]
fn continuing<'p>(
    more: &mut Peekable<impl Iterator<Item = Arrival<'p>>>,
    qpn: u32,
    solved_ip_ids: &mut u64,
) -> Option<PacketRepr<'p>> {
    let &(datagram, verdict) = more.peek()?;
    let solved = match verdict {
        IcrcVerdict::Good => false,
        IcrcVerdict::GoodWithIpId(_) => true,
        _ => return None,
    };
    let pkt = PacketRepr::parse(datagram).ok()?;
    if pkt.bth.dest_qp != qpn || !pkt.bth.opcode.is_request() {
        return None;
    }
    more.next();
    *solved_ip_ids += u64::from(solved);
    Some(pkt)
}
