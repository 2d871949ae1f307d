//! A kernel-rxe requester that stalls on its own: seen once on bookworm's
//! 6.1 guest (`rdma-core: send_bw` with ours as the server). The guest sent
//! five 64-packet SENDs, ours acknowledged each at once, then the guest
//! stopped 19 packets into the sixth, far inside its window, and never
//! retransmitted. A case whose guest side timed out is run once more only
//! if its capture shows exactly that: the guest's last request packet in
//! the middle of a message, no request packet sent twice, and no NAK from
//! either side. A fault of ours leaves another trace (a NAK, a go-back or
//! a retransmission after a lost or unacknowledged packet, or ours as the
//! side that stopped), and fails the case.

use std::collections::HashSet;

/// Whether `dump`, roce-dump's text of a capture (one line per frame:
/// `N time SRC -> DST sport P OPCODE qpn Q psn X ...`), shows the guest at
/// `guest` stopping inside a message on its own.
pub fn guest_stopped_mid_message(dump: &str, guest: &str) -> bool {
    let mut last_request = None;
    let mut seen = HashSet::new();
    for line in dump.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(&src), Some(&opcode), Some(&psn)) =
            (fields.get(2), fields.get(7), fields.get(11))
        else {
            continue;
        };
        if fields.get(3) != Some(&"->") || !opcode.starts_with("RC_") {
            continue;
        }
        if line.contains(" NAK ") || line.contains("RNR-NAK") {
            return false;
        }
        let request = opcode.starts_with("RC_SEND_") || opcode.starts_with("RC_RDMA_WRITE_");
        if !request {
            continue;
        }
        if !seen.insert((src, psn)) {
            return false;
        }
        if src == guest {
            last_request = Some(opcode);
        }
    }
    last_request.is_some_and(|op| op.ends_with("_FIRST") || op.ends_with("_MIDDLE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: &str = "198.18.0.2";

    fn frame(n: u32, src: &str, dst: &str, opcode: &str, psn: u32, rest: &str) -> String {
        format!(
            "{n:6}     0.000001 {src} -> {dst} sport 50648 {opcode} qpn 0x000011 psn {psn:#08x} ack_req 0{rest} payload 1024 pad 0 icrc good\n"
        )
    }

    /// A message of `packets` from the guest at `psn`, the last `cut`
    /// packets missing, and ours' ACK if it was whole.
    fn message(psn: u32, packets: u32, cut: u32) -> String {
        let mut s = String::new();
        for k in 0..packets - cut {
            let op = match k {
                0 => "RC_SEND_FIRST",
                k if k + 1 == packets => "RC_SEND_LAST",
                _ => "RC_SEND_MIDDLE",
            };
            s += &frame(k, GUEST, "198.18.0.1", op, psn + k, "");
        }
        if cut == 0 {
            let aeth = " AETH ACK credits=31 msn=1";
            s += &frame(
                0,
                "198.18.0.1",
                GUEST,
                "RC_ACKNOWLEDGE",
                psn + packets - 1,
                aeth,
            );
        }
        s
    }

    #[test]
    fn the_stall_seen_on_6_1_is_recognised() {
        let dump =
            message(0x100, 4, 0) + &message(0x104, 4, 2) + "frames read: 8, RoCEv2 frames: 8\n";
        assert!(guest_stopped_mid_message(&dump, GUEST));
    }

    #[test]
    fn a_whole_exchange_a_retransmission_a_nak_or_ours_stopping_is_not_that_stall() {
        assert!(!guest_stopped_mid_message(&message(0x100, 4, 0), GUEST));
        let retransmitted = message(0x100, 4, 2) + &message(0x100, 4, 2);
        assert!(!guest_stopped_mid_message(&retransmitted, GUEST));
        let nak = message(0x100, 4, 2)
            + &frame(
                9,
                "198.18.0.1",
                GUEST,
                "RC_ACKNOWLEDGE",
                0x101,
                " AETH NAK PsnSequenceError msn=0",
            );
        assert!(!guest_stopped_mid_message(&nak, GUEST));
        // Ours sending, and stopping: not the guest's stall.
        let ours = message(0x100, 4, 2).replace(GUEST, "10.9.9.9");
        assert!(!guest_stopped_mid_message(&ours, GUEST));
        assert!(!guest_stopped_mid_message("", GUEST));
    }
}
