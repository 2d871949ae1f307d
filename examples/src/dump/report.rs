//! Printing frames, flows and the closing counts, as text or as JSON lines.

use std::fmt::Write as _;
use std::time::Duration;

use provider::wire::{AethRepr, Syndrome};
use serde_json::{Value, json};

use super::flows::{Flow, FlowKey};
use super::frame::{Headers, RoceFrame};

/// What the closing line counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records read from the file.
    pub frames: u64,
    /// RoCEv2 frames among them.
    pub roce: u64,
    /// RoCEv2 frames with a good ICRC.
    pub icrc_good: u64,
    /// RoCEv2 frames with a bad ICRC.
    pub icrc_bad: u64,
    /// Parsed frames that did not re-emit byte for byte.
    pub reemit_mismatches: u64,
    /// RoCEv2 frames that did not parse or were cut short.
    pub unparsed: u64,
}

fn syndrome(a: &AethRepr) -> String {
    match a.decode() {
        Syndrome::Ack { credits } => format!("ACK credits={credits}"),
        Syndrome::RnrNak { timer } => format!("RNR-NAK timer={timer}"),
        Syndrome::Nak(code) => format!("NAK {code:?}"),
        Syndrome::Reserved(raw) => format!("reserved syndrome {raw:#04x}"),
    }
}

/// The extended headers of a packet, decoded, as text.
fn extended(h: &Headers) -> String {
    let mut s = String::new();
    if let Some(r) = h.reth {
        let _ = write!(s, " RETH va={:#x} rkey={:#x} len={}", r.va, r.rkey, r.len);
    }
    if let Some(a) = h.atomic_eth {
        let _ = write!(
            s,
            " AtomicETH va={:#x} rkey={:#x} swap_add={:#x} compare={:#x}",
            a.va, a.rkey, a.swap_add, a.compare
        );
    }
    if let Some(a) = h.aeth {
        let _ = write!(s, " AETH {} msn={}", syndrome(&a), a.msn);
    }
    if let Some(a) = h.atomic_ack_eth {
        let _ = write!(s, " AtomicAckETH orig={:#x}", a.orig);
    }
    if let Some(i) = h.immdt {
        let _ = write!(s, " ImmDt={i:#x}");
    }
    if let Some(i) = h.ieth {
        let _ = write!(s, " IETH rkey={i:#x}");
    }
    s
}

fn seconds(t: Duration) -> f64 {
    t.as_secs_f64()
}

/// One line for a frame; `start` is the first record's time.
pub fn frame_line(f: &RoceFrame, start: Duration) -> String {
    let mut s = format!(
        "{:>6} {:>12.6} {} -> {} sport {}",
        f.index,
        seconds(f.time.saturating_sub(start)),
        f.src.ip(),
        f.dst.ip(),
        f.src.port()
    );
    if let Some(b) = f.bth {
        let _ = write!(
            s,
            " {} qpn {:#08x} psn {:#08x} ack_req {}",
            b.opcode,
            b.dest_qp,
            b.psn,
            u8::from(b.ack_req)
        );
    }
    if let Some(h) = &f.headers {
        s.push_str(&extended(h));
        let _ = write!(s, " payload {} pad {}", h.payload_len, h.bth.pad);
    }
    s.push_str(match f.icrc_good {
        Some(true) => " icrc good",
        Some(false) => " icrc BAD",
        None => " icrc unchecked",
    });
    for p in &f.problems {
        let _ = write!(s, " [{p}]");
    }
    s
}

/// A frame as a JSON object.
pub fn frame_json(f: &RoceFrame) -> Value {
    let h = f.headers.as_ref();
    json!({
        "index": f.index,
        "time": seconds(f.time),
        "src": f.src.ip().to_string(),
        "dst": f.dst.ip().to_string(),
        "sport": f.src.port(),
        "opcode": f.bth.map(|b| b.opcode.to_string()),
        "qpn": f.bth.map(|b| b.dest_qp),
        "psn": f.bth.map(|b| b.psn),
        "ack_req": f.bth.map(|b| b.ack_req),
        "reth": h.and_then(|h| h.reth).map(|r| json!({"va": r.va, "rkey": r.rkey, "len": r.len})),
        "aeth": h.and_then(|h| h.aeth).map(|a| json!({"syndrome": syndrome(&a), "msn": a.msn})),
        "atomic_eth": h.and_then(|h| h.atomic_eth).map(|a| json!({
            "va": a.va, "rkey": a.rkey, "swap_add": a.swap_add, "compare": a.compare
        })),
        "atomic_ack_eth": h.and_then(|h| h.atomic_ack_eth).map(|a| json!({"orig": a.orig})),
        "immdt": h.and_then(|h| h.immdt),
        "ieth": h.and_then(|h| h.ieth),
        "payload_len": h.map(|h| h.payload_len),
        "pad": h.map(|h| h.bth.pad),
        "icrc_good": f.icrc_good,
        "reemit_identical": f.reemit_identical,
        "problems": f.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn psn_range(flow: &Flow) -> String {
    match (flow.first_psn, flow.last_psn) {
        (Some(a), Some(b)) => format!("{a:#08x}..{b:#08x}"),
        _ => "-".into(),
    }
}

/// One line for a flow.
pub fn flow_line(key: &FlowKey, flow: &Flow) -> String {
    let naks: Vec<String> = flow.naks.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "{} -> {} qpn {:#08x}: {} frames, {} payload bytes, psn {}, {} retransmitted, \
         NAKs [{}], {} RNR NAKs, {} read responses, {} atomic responses",
        key.src,
        key.dst,
        key.qpn,
        flow.frames,
        flow.payload_bytes,
        psn_range(flow),
        flow.retransmitted,
        naks.join(", "),
        flow.rnr_naks,
        flow.read_responses,
        flow.atomic_responses
    )
}

/// A flow as a JSON object.
pub fn flow_json(key: &FlowKey, flow: &Flow) -> Value {
    json!({
        "src": key.src.to_string(),
        "dst": key.dst.to_string(),
        "qpn": key.qpn,
        "frames": flow.frames,
        "payload_bytes": flow.payload_bytes,
        "first_psn": flow.first_psn,
        "last_psn": flow.last_psn,
        "retransmitted": flow.retransmitted,
        "naks": flow.naks,
        "rnr_naks": flow.rnr_naks,
        "read_responses": flow.read_responses,
        "atomic_responses": flow.atomic_responses,
    })
}

/// The closing line.
pub fn counts_line(c: &Counts) -> String {
    format!(
        "frames read: {}, RoCEv2 frames: {}, ICRC good: {}, ICRC bad: {}, \
         re-emit mismatches: {}, unparsed or truncated: {}",
        c.frames, c.roce, c.icrc_good, c.icrc_bad, c.reemit_mismatches, c.unparsed
    )
}

/// The closing counts as a JSON object.
pub fn counts_json(c: &Counts) -> Value {
    json!({
        "summary": {
            "frames": c.frames,
            "roce_frames": c.roce,
            "icrc_good": c.icrc_good,
            "icrc_bad": c.icrc_bad,
            "reemit_mismatches": c.reemit_mismatches,
            "unparsed": c.unparsed,
        }
    })
}
