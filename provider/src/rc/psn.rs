//! 24-bit packet sequence numbers and the RC timers' tables.

use std::time::Duration;

/// PSNs are 24 bits.
pub(crate) const PSN_MASK: u32 = 0xff_ffff;

/// `a + n` modulo 2^24.
pub(crate) fn psn_add(a: u32, n: u32) -> u32 {
    a.wrapping_add(n) & PSN_MASK
}

/// `a - b` as a signed distance, valid within ±2^23 (rxe's `psn_compare`).
pub(crate) fn psn_diff(a: u32, b: u32) -> i32 {
    ((a.wrapping_sub(b)) << 8) as i32 >> 8
}

/// The retransmit timeout of the `timeout` attribute: 4.096 µs × 2^t, or
/// none for 0.
pub(crate) fn retransmit_timeout(t: u8) -> Option<Duration> {
    (t != 0).then(|| Duration::from_nanos(4096u64 << t.min(31)))
}

/// How long an RNR NAK's timer code asks the requester to wait (IBTA
/// table 45; code 0 is the longest).
pub(crate) fn rnr_delay(code: u8) -> Duration {
    const MICROS: [u32; 32] = [
        655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560,
        3_840, 5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880,
        163_840, 245_760, 327_680, 491_520,
    ];
    Duration::from_micros(u64::from(MICROS[usize::from(code & 0x1f)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psn_arithmetic_wraps_at_24_bits() {
        assert_eq!(psn_add(PSN_MASK, 1), 0);
        assert_eq!(psn_diff(0, PSN_MASK), 1);
        assert_eq!(psn_diff(PSN_MASK, 0), -1);
        assert_eq!(psn_diff(5, 3), 2);
        assert_eq!(psn_diff(3, 5), -2);
        assert_eq!(psn_diff(psn_add(10, 1 << 22), 10), 1 << 22);
    }

    #[test]
    fn timers_follow_the_tables() {
        assert_eq!(retransmit_timeout(0), None);
        assert_eq!(
            retransmit_timeout(14),
            Some(Duration::from_nanos(4096 << 14))
        );
        assert_eq!(rnr_delay(0), Duration::from_micros(655_360));
        assert_eq!(rnr_delay(12), Duration::from_micros(640));
    }
}
