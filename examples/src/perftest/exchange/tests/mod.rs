//! Tests of the perftest exchange: `messages` for the pure encodings,
//! `sessions` for the plans and the driver over loopback TCP.
//!
//! The byte vectors marked "printf" were produced by compiling perftest
//! 6.06's format strings (`KEY_PRINT_FMT_GID`, `KEY_PRINT_FMT`, `"%d"`),
//! `strncpy` into `char[16]` and `bswap_64` with gcc on x86_64 and printing
//! the buffers; the others are laid out by hand from the C declarations.

mod messages;
mod sessions;

use super::KeyMessage;

/// printf of `KEY_PRINT_FMT_GID` with lid 0, out_reads 0x10, qpn 0x11, psn
/// 0xabcdef, rkey 0x1234, vaddr 0x7f0012345000, GID ::ffff:192.168.1.2,
/// srqn 0: 107 characters and the NUL.
const GID_VECTOR: &[u8] = b"0000:0010:000011:abcdef:00001234:00007f0012345000:\
00:00:00:00:00:00:00:00:00:00:ff:ff:c0:a8:01:02:00000000:\0";

/// printf of `KEY_PRINT_FMT` with lid 0x1a, out_reads 4, qpn 0x123456, psn
/// 0xfedcba, rkey 0xdeadbeef, vaddr u64::MAX, srqn 0x42: 58 characters and
/// the NUL.
const NO_GID_VECTOR: &[u8] = b"001a:0004:123456:fedcba:deadbeef:ffffffffffffffff:00000042\0";

fn gid_key() -> KeyMessage {
    KeyMessage {
        lid: 0,
        out_reads: 0x10,
        qpn: 0x11,
        psn: 0xab_cdef,
        rkey: 0x1234,
        vaddr: 0x7f00_1234_5000,
        gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 2],
        srqn: 0,
    }
}

fn no_gid_key() -> KeyMessage {
    KeyMessage {
        lid: 0x1a,
        out_reads: 4,
        qpn: 0x12_3456,
        psn: 0xfe_dcba,
        rkey: 0xdead_beef,
        vaddr: u64::MAX,
        gid: [0; 16],
        srqn: 0x42,
    }
}
