//! [`Outbox`]: the packets an engine call produced, built in place in one
//! reusable byte arena (no allocation per packet), with cumulative
//! acknowledgements coalesced.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use super::qp::Peer;
use super::{CompletionSink, WorkCompletion};
use crate::wire::{AethRepr, BthRepr, ICRC_LEN, PacketRepr};

/// One queued packet: where it goes, from which UDP source port, and where
/// its bytes are in the arena.
struct Queued {
    dest: SocketAddr,
    source_port: u16,
    dest_qp: u32,
    bytes: Range<usize>,
    /// A plain ACK: a later ACK to the same queue pair may replace it.
    coalescable: bool,
}

/// Packets for the device to send, each BTH to pad followed by
/// [`ICRC_LEN`] bytes for the ICRC, laid out back to back in one arena that
/// keeps its capacity from call to call.
///
/// Completions of received messages wait in their queues, hidden, until
/// the packets queued with them have been handed to the socket (see
/// [`Self::complete_after_send`]).
#[derive(Default)]
pub(crate) struct Outbox {
    arena: Vec<u8>,
    packets: Vec<Queued>,
    /// Queues holding completions hidden until these packets are sent.
    to_reveal: Vec<Arc<dyn CompletionSink>>,
    /// Completions were revealed before these packets were sent: they
    /// must leave ahead of anything posted after (see [`Self::must_lead`]).
    revealed_early: bool,
}

impl Drop for Outbox {
    /// Completions never stay hidden: an outbox dropped unsent reveals
    /// them.
    fn drop(&mut self) {
        self.reveal_completions();
    }
}

impl Outbox {
    /// Number of packets queued.
    pub(crate) fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether everything queued is a plain, cumulative ACK (which a later
    /// one replaces).
    pub(crate) fn only_acks(&self) -> bool {
        self.packets.iter().all(|q| q.coalescable)
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Empties the outbox once its packets were sent (or dropped), keeping
    /// its capacity; the completions held for them become visible.
    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.packets.clear();
        self.reveal_completions();
        self.revealed_early = false;
    }

    /// Adds `wc` to `cq`, visible once this outbox's packets (among them
    /// the acknowledgement of the message it completes, queued next) have
    /// been sent: an application that answers a received message as soon as it
    /// sees it cannot send its answer ahead of the acknowledgement (a peer
    /// waiting for both may count on that order: perftest's event mode
    /// reads a send completion after any event on its shared channel).
    pub(crate) fn complete_after_send(&mut self, cq: &Arc<dyn CompletionSink>, wc: WorkCompletion) {
        cq.push_hidden(wc);
        if !self.to_reveal.iter().any(|q| Arc::ptr_eq(q, cq)) {
            self.to_reveal.push(Arc::clone(cq));
        }
    }

    /// Makes the completions held for this outbox's packets visible
    /// without sending them (acknowledgements a polling thread holds back:
    /// they then leave ahead of the next packets it sends, see
    /// [`Self::must_lead`]).
    pub(crate) fn reveal_completions(&mut self) {
        self.revealed_early |= !self.to_reveal.is_empty() && !self.packets.is_empty();
        for cq in self.to_reveal.drain(..) {
            cq.reveal();
        }
    }

    /// Whether these packets acknowledge a message whose completion the
    /// application may have seen, so that whatever it posts next must
    /// follow them. Otherwise they may as well follow it: a request and a
    /// shorter acknowledgement after it leave as one GSO send.
    pub(crate) fn must_lead(&self) -> bool {
        self.revealed_early
    }

    /// Queues a packet for `peer` (its address, from the connection's
    /// source port) with the headers of `headers` (whose payload is
    /// ignored) and a payload of `payload_len` bytes that `fill` writes in
    /// place. If `fill` fails nothing is queued; nor is anything for
    /// headers that contradict their opcode (an engine bug, caught by a
    /// debug assertion; see [`PacketRepr::check`]).
    pub(crate) fn push<E>(
        &mut self,
        peer: &Peer,
        headers: &PacketRepr<'_>,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.arena.len();
        let Some(at) = self.append(headers, payload_len) else {
            return Ok(());
        };
        if let Err(e) = fill(&mut self.arena[at..at + payload_len]) {
            self.arena.truncate(start);
            return Err(e);
        }
        self.packets.push(Queued {
            dest: peer.addr,
            source_port: peer.source_port,
            dest_qp: headers.bth.dest_qp,
            bytes: start..self.arena.len(),
            coalescable: false,
        });
        Ok(())
    }

    /// Queues a packet without payload (an acknowledgement, a NAK, an
    /// atomic acknowledgement, a READ or atomic request).
    pub(crate) fn push_headers(&mut self, peer: &Peer, headers: &PacketRepr<'_>) {
        // Filling nothing cannot fail.
        let _ = self.push::<()>(peer, headers, 0, |_| Ok(()));
    }

    /// Queues a plain, cumulative ACK. If the last packet queued for the
    /// same queue pair is also a plain ACK, this one replaces it in place:
    /// the later acknowledgement covers everything the earlier one did, and
    /// nothing for that queue pair was queued between them.
    pub(crate) fn push_ack(&mut self, peer: &Peer, headers: &PacketRepr<'_>) {
        if self.replace_ack(peer, headers) {
            return;
        }
        self.push_headers(peer, headers);
        if let Some(last) = self.packets.last_mut() {
            last.coalescable = true;
        }
    }

    /// Replaces the plain ACK queued last for the queue pair of `headers`
    /// (also a plain ACK) by it, if the last packet queued for that queue
    /// pair is one; returns whether it did. Nothing is queued otherwise.
    pub(crate) fn replace_ack(&mut self, peer: &Peer, headers: &PacketRepr<'_>) -> bool {
        let previous = self
            .packets
            .iter()
            .rposition(|q| q.dest == peer.addr && q.dest_qp == headers.bth.dest_qp);
        let Some(i) = previous.filter(|&i| self.packets[i].coalescable) else {
            return false;
        };
        let Some(aeth) = headers.aeth else {
            return false;
        };
        // Both are plain ACKs: a BTH and an AETH (checked when the first
        // was appended; a stream's receiver replaces one per packet, so
        // this one is written without checking again).
        debug_assert_eq!(headers.header_len(), Ok(BthRepr::LEN + AethRepr::LEN));
        let bytes = &mut self.arena[self.packets[i].bytes.clone()];
        headers.bth.emit(&mut bytes[..BthRepr::LEN]);
        aeth.emit(&mut bytes[BthRepr::LEN..]);
        true
    }

    /// Appends the headers, a zeroed payload of `payload_len` bytes, the
    /// pad and room for the ICRC; returns where the payload starts, or
    /// `None` (appending nothing) for headers that contradict their opcode.
    fn append(&mut self, headers: &PacketRepr<'_>, payload_len: usize) -> Option<usize> {
        let opcode = headers.bth.opcode;
        let layout = opcode.layout().filter(|l| payload_len == 0 || l.payload);
        debug_assert!(
            layout.is_some(),
            "engine built {opcode:?} with {payload_len} bytes"
        );
        let header_len = BthRepr::LEN + layout?.ext_len();
        let start = self.arena.len();
        let pad = usize::from(headers.bth.pad);
        let len = header_len + payload_len + pad + ICRC_LEN;
        self.arena.resize(start + len, 0);
        // emit_headers checks the headers against the opcode (once per
        // packet: this is every packet's path).
        if let Err(e) = headers.emit_headers(&mut self.arena[start..]) {
            debug_assert!(false, "engine built invalid headers: {e:?}");
            self.arena.truncate(start);
            return None;
        }
        Some(start + header_len)
    }

    /// The queued packets in order, each with its UDP source port,
    /// destination and bytes (mutable: the transport writes the ICRC into
    /// the last 4).
    pub(crate) fn packets_mut(
        &mut self,
    ) -> impl Iterator<Item = (u16, SocketAddr, &mut [u8])> + '_ {
        let mut rest: &mut [u8] = &mut self.arena;
        let mut consumed = 0;
        self.packets.iter().map(move |q| {
            // Packets occupy disjoint, increasing ranges of the arena.
            let skip = q.bytes.start - consumed;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
            let (bytes, tail) = tail.split_at_mut(q.bytes.len());
            rest = tail;
            consumed = q.bytes.end;
            (q.source_port, q.dest, bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rc::qp::{Peer, bth, headers};
    use crate::wire::{AethRepr, NakCode, Opcode, Syndrome};

    const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    /// The other end at `A` (QP `qpn`), sent to from source port 0xC121.
    fn peer(qpn: u32) -> Peer {
        Peer {
            addr: A,
            local: A.ip(),
            source_port: 0xC121,
            qpn,
            mtu: 1024,
            pkey: crate::rc::qp::DEFAULT_PKEY,
        }
    }

    fn ack(qpn: u32, psn: u32, msn: u32) -> PacketRepr<'static> {
        let mut h = headers(bth(&peer(qpn), Opcode::RC_ACKNOWLEDGE, psn, 0, false));
        h.aeth = Some(AethRepr::new(Syndrome::Ack { credits: 31 }, msn));
        h
    }

    fn psns(out: &mut Outbox) -> Vec<(u32, u32)> {
        out.packets_mut()
            .map(|(_, _, b)| {
                let p = PacketRepr::parse(b).unwrap();
                (p.bth.dest_qp, p.bth.psn)
            })
            .collect()
    }

    #[test]
    fn consecutive_acks_to_one_queue_pair_collapse_to_the_latest() {
        let mut out = Outbox::default();
        out.push_ack(&peer(0), &ack(5, 1, 1));
        out.push_ack(&peer(0), &ack(6, 9, 1));
        out.push_ack(&peer(0), &ack(5, 2, 2));
        out.push_ack(&peer(0), &ack(5, 3, 3));
        assert_eq!(psns(&mut out), [(5, 3), (6, 9)]);
        // The replacement is the latest ACK whole: MSN and every BTH field.
        let mut alone = Outbox::default();
        alone.push_ack(&peer(0), &ack(5, 3, 3));
        let (_, _, want) = alone.packets_mut().next().unwrap();
        let (_, _, got) = out.packets_mut().next().unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn an_ack_does_not_jump_over_other_packets_to_its_queue_pair() {
        let mut out = Outbox::default();
        out.push_ack(&peer(0), &ack(5, 1, 1));
        let mut nak = ack(5, 2, 1);
        nak.aeth = Some(AethRepr::new(Syndrome::Nak(NakCode::PsnSequenceError), 1));
        out.push_headers(&peer(0), &nak);
        out.push_ack(&peer(0), &ack(5, 3, 2));
        assert_eq!(psns(&mut out), [(5, 1), (5, 2), (5, 3)]);
    }

    #[test]
    fn a_failed_fill_leaves_nothing_behind() {
        let mut out = Outbox::default();
        out.push_ack(&peer(0), &ack(5, 1, 1));
        let mut h = ack(5, 2, 1);
        h.bth.opcode = Opcode::RC_SEND_ONLY;
        h.aeth = None;
        assert_eq!(out.push(&peer(0), &h, 100, |_| Err("no")), Err("no"));
        assert_eq!(out.len(), 1);
        out.push::<()>(&peer(0), &h, 8, |b| {
            b.fill(7);
            Ok(())
        })
        .unwrap();
        assert_eq!(psns(&mut out), [(5, 1), (5, 2)]);
        let (source_port, dest, bytes) = out.packets_mut().nth(1).unwrap();
        assert_eq!((source_port, dest), (0xC121, A));
        assert_eq!(bytes.len(), 12 + 8 + ICRC_LEN);
        assert_eq!(&bytes[12..20], &[7; 8]);
        out.clear();
        assert!(out.is_empty());
    }
}
