//! Per-connection summaries: frames grouped by source, destination and
//! destination QP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use provider::wire::{NakCode, Opcode, Syndrome};

use super::frame::RoceFrame;

/// One direction of one connection: source and destination address and
/// the destination queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    /// Sender.
    pub src: IpAddr,
    /// Receiver.
    pub dst: IpAddr,
    /// Destination queue pair.
    pub qpn: u32,
}

/// What one flow carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Frames.
    pub frames: u64,
    /// Payload bytes (pad excluded).
    pub payload_bytes: u64,
    /// PSN of the first frame.
    pub first_psn: Option<u32>,
    /// PSN of the last frame.
    pub last_psn: Option<u32>,
    /// Request frames whose PSN this flow had already carried.
    pub retransmitted: u64,
    /// NAKs by code name.
    pub naks: BTreeMap<String, u64>,
    /// RNR NAKs.
    pub rnr_naks: u64,
    /// RDMA READ response frames.
    pub read_responses: u64,
    /// Atomic acknowledgements.
    pub atomic_responses: u64,
    /// Request PSNs seen (for retransmissions).
    seen: BTreeSet<u32>,
}

fn nak_name(code: NakCode) -> String {
    match code {
        NakCode::PsnSequenceError => "PSN sequence error".into(),
        NakCode::InvalidRequest => "invalid request".into(),
        NakCode::RemoteAccessError => "remote access error".into(),
        NakCode::RemoteOperationalError => "remote operational error".into(),
        NakCode::InvalidRdRequest => "invalid RD request".into(),
        NakCode::Other(c) => format!("code {c:#x}"),
    }
}

impl Flow {
    fn add(&mut self, f: &RoceFrame) {
        let Some(bth) = f.bth else { return };
        self.frames += 1;
        self.first_psn.get_or_insert(bth.psn);
        self.last_psn = Some(bth.psn);
        if let Some(h) = &f.headers {
            self.payload_bytes += h.payload_len as u64;
            match h.aeth.map(|a| a.decode()) {
                Some(Syndrome::Nak(code)) => *self.naks.entry(nak_name(code)).or_default() += 1,
                Some(Syndrome::RnrNak { .. }) => self.rnr_naks += 1,
                _ => {}
            }
        }
        let op = bth.opcode;
        if op.is_request() && !self.seen.insert(bth.psn) {
            self.retransmitted += 1;
        }
        if matches!(
            op,
            Opcode::RC_RDMA_READ_RESPONSE_FIRST
                | Opcode::RC_RDMA_READ_RESPONSE_MIDDLE
                | Opcode::RC_RDMA_READ_RESPONSE_LAST
                | Opcode::RC_RDMA_READ_RESPONSE_ONLY
        ) {
            self.read_responses += 1;
        }
        if op == Opcode::RC_ATOMIC_ACKNOWLEDGE {
            self.atomic_responses += 1;
        }
    }
}

/// Flows in the order of their keys.
#[derive(Debug, Default)]
pub struct Flows(pub BTreeMap<FlowKey, Flow>);

impl Flows {
    /// Counts a frame into its flow (frames whose BTH did not parse have
    /// no queue pair and are left out).
    pub fn add(&mut self, f: &RoceFrame) {
        if let Some(bth) = f.bth {
            let key = FlowKey {
                src: f.src.ip(),
                dst: f.dst.ip(),
                qpn: bth.dest_qp,
            };
            self.0.entry(key).or_default().add(f);
        }
    }
}
