//! Byte-exact encodings and hostile decodes of each message.

use super::super::wire::{c_atof, c_strtol};
use super::super::*;
use super::{GID_VECTOR, NO_GID_VECTOR, gid_key, no_gid_key};

#[test]
fn version_message_is_strncpy_into_16_bytes() {
    // printf: strncpy(ver, "6.06", 16) = 36 2e 30 36 then 12 NULs.
    let mut expected = [0u8; 16];
    expected[..4].copy_from_slice(&[0x36, 0x2e, 0x30, 0x36]);
    assert_eq!(encode_version(PERFTEST_VERSION).unwrap(), expected);
    assert_eq!(VERSION_MESSAGE_LEN, 16);
    assert!(matches!(
        encode_version("0123456789abcdef"),
        Err(ExchangeError::VersionTooLong(_))
    ));
    assert!(matches!(
        encode_version("6\0x"),
        Err(ExchangeError::VersionTooLong(_))
    ));
    assert_eq!(encode_version("0123456789abcde").unwrap()[15], 0);
}

#[test]
fn peer_version_reads_like_atof() {
    let decode = |text: &str| PeerVersion::decode(&encode_version(text).unwrap()).unwrap();
    let v = decode("6.06");
    assert_eq!((v.text.as_str(), v.number), ("6.06", 6.06));
    assert!(v.is_compatible());
    assert!(decode("5.70").is_compatible());
    assert!(!decode("5.69").is_compatible());
    assert!(decode("6.29").is_compatible());
    assert_eq!(decode(" 6.1beta").number, 6.1);
    assert_eq!(decode("").number, 0.0);
    assert!(!decode("abc").is_compatible());
    // Garbage without a NUL still decodes; it is just not a version.
    let garbage = PeerVersion::decode(&[0xff; 16]).unwrap();
    assert_eq!(garbage.number, 0.0);
    assert!(!garbage.is_compatible());
    assert!(matches!(
        PeerVersion::decode(b"6.06"),
        Err(ExchangeError::Length {
            expected: 16,
            got: 4,
            ..
        })
    ));
    assert_eq!(c_atof(b"1e1x"), 10.0);
    assert_eq!(c_atof(b"-.5"), -0.5);
    assert_eq!(c_atof(b"."), 0.0);
    assert_eq!(c_atof(b"7."), 7.0);
}

#[test]
fn sys_data_is_two_big_endian_ints() {
    // hton_int(4096) = 00 00 10 00, hton_int(64) = 00 00 00 40.
    let local = SysData::default();
    assert_eq!(local.encode(), [0, 0, 0x10, 0, 0, 0, 0, 0x40]);
    assert_eq!(SysData::decode(&local.encode()).unwrap(), local);
    let remote = SysData {
        cycle_buffer: 65536,
        cache_line_size: 32,
    };
    assert_eq!(
        local.agree(&remote),
        SysData {
            cycle_buffer: 65536,
            cache_line_size: 64
        }
    );
    assert!(matches!(
        SysData::decode(&[0; 7]),
        Err(ExchangeError::Length { .. })
    ));
    let negative = SysData::decode(&[0xff; 8]).unwrap();
    assert_eq!(
        negative,
        SysData {
            cycle_buffer: -1,
            cache_line_size: -1
        }
    );
    assert_eq!(local.agree(&negative), local);
}

#[test]
fn mtu_message_is_the_enum_digit_and_nul() {
    // printf: sprintf(cur, "%d", IBV_MTU_1024) -> 33 00.
    assert_eq!(Mtu::Mtu1024.encode(), [0x33, 0x00]);
    for mtu in Mtu::ALL {
        assert_eq!(Mtu::decode(&mtu.encode()).unwrap(), mtu);
        assert_eq!(Mtu::from_bytes(mtu.bytes()), Some(mtu));
    }
    assert_eq!(Mtu::Mtu256.bytes(), 256);
    assert_eq!(Mtu::Mtu4096.bytes(), 4096);
    assert_eq!(Mtu::from_bytes(1500), None);
    // strtol tolerance: leading blank, no NUL.
    assert_eq!(Mtu::decode(b" 4").unwrap(), Mtu::Mtu2048);
    assert_eq!(Mtu::decode(b"5x").unwrap(), Mtu::Mtu4096);
    for bad in [&b"0\0"[..], b"6\0", b"-1", b"x\0", b"\0\0", b"99"] {
        assert!(
            matches!(Mtu::decode(bad), Err(ExchangeError::InvalidMtu { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        Mtu::decode(b"3"),
        Err(ExchangeError::Length { .. })
    ));
    assert!(matches!(
        Mtu::decode(b"3\0\0\0"),
        Err(ExchangeError::Length { .. })
    ));
    assert_eq!(Mtu::agree(Mtu::Mtu4096, Some(Mtu::Mtu1024)), Mtu::Mtu1024);
    assert_eq!(Mtu::agree(Mtu::Mtu1024, Some(Mtu::Mtu4096)), Mtu::Mtu1024);
    assert_eq!(Mtu::agree(Mtu::Mtu1024, None), Mtu::Mtu1024);
}

#[test]
fn key_message_with_gid_matches_printf() {
    assert_eq!(GID_VECTOR.len(), KEY_MSG_SIZE_GID);
    let encoded = gid_key().encode(KeyFormat::Gid).unwrap();
    assert_eq!(encoded, GID_VECTOR);
    assert_eq!(
        KeyMessage::decode(GID_VECTOR, KeyFormat::Gid).unwrap(),
        gid_key()
    );
}

#[test]
fn key_message_without_gid_matches_printf() {
    assert_eq!(NO_GID_VECTOR.len(), KEY_MSG_SIZE);
    assert_eq!(
        no_gid_key().encode(KeyFormat::NoGid).unwrap(),
        NO_GID_VECTOR
    );
    assert_eq!(
        KeyMessage::decode(NO_GID_VECTOR, KeyFormat::NoGid).unwrap(),
        no_gid_key()
    );
    // The GID is not carried.
    let with_gid = KeyMessage {
        gid: [7; 16],
        ..no_gid_key()
    };
    assert_eq!(with_gid.encode(KeyFormat::NoGid).unwrap(), NO_GID_VECTOR);
}

#[test]
fn key_message_matches_the_format_string_for_many_values() {
    // The C format strings, spelled with Rust's format!.
    for i in 0..64u32 {
        let k = KeyMessage {
            lid: (i * 0x3ff) as u16,
            out_reads: (i % 17) as u16,
            qpn: i.wrapping_mul(0x9e37) & 0xff_ffff,
            psn: i.wrapping_mul(0x7f4a_7c15) & 0xff_ffff,
            rkey: i.wrapping_mul(0x9e37_79b9),
            vaddr: u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            gid: std::array::from_fn(|b| (i as u8).wrapping_mul(31).wrapping_add(b as u8 * 17)),
            srqn: i.wrapping_mul(0x0101_0101),
        };
        let head = format!(
            "{:04x}:{:04x}:{:06x}:{:06x}:{:08x}:{:016x}:",
            k.lid, k.out_reads, k.qpn, k.psn, k.rkey, k.vaddr
        );
        let gid: String = k.gid.iter().map(|b| format!("{b:02x}:")).collect();
        let with_gid = format!("{head}{gid}{:08x}:\0", k.srqn);
        let without = format!("{head}{:08x}\0", k.srqn);
        assert_eq!(k.encode(KeyFormat::Gid).unwrap(), with_gid.as_bytes());
        assert_eq!(k.encode(KeyFormat::NoGid).unwrap(), without.as_bytes());
        assert_eq!(
            KeyMessage::decode(with_gid.as_bytes(), KeyFormat::Gid).unwrap(),
            k
        );
        let no_gid = KeyMessage { gid: [0; 16], ..k };
        assert_eq!(
            KeyMessage::decode(without.as_bytes(), KeyFormat::NoGid).unwrap(),
            no_gid
        );
    }
}

/// Pads `text` with NULs to `len`.
fn padded(text: &str, len: usize) -> Vec<u8> {
    let mut msg = text.as_bytes().to_vec();
    msg.resize(len, 0);
    msg
}

#[test]
fn key_decode_is_tolerant_like_strtol() {
    // Other widths, upper case, 0x prefixes, blanks and trailing junk, as
    // strtol accepts them; the message still has its fixed length.
    let text = "0:0X10: 11:ABCDEF:1234z:7f0012345000:0:0:0:0:0:0:0:0:0:0:FF:ff:c0:a8:1:02:0";
    let msg = padded(text, KEY_MSG_SIZE_GID);
    assert_eq!(KeyMessage::decode(&msg, KeyFormat::Gid).unwrap(), gid_key());
    let msg = padded(
        "1a:4:123456:fedcba:deadbeef:ffffffffffffffff:42",
        KEY_MSG_SIZE,
    );
    assert_eq!(
        KeyMessage::decode(&msg, KeyFormat::NoGid).unwrap(),
        no_gid_key()
    );
    // No NUL at all: the whole slot is the text.
    let mut full = GID_VECTOR.to_vec();
    full[107] = b'x';
    assert_eq!(
        KeyMessage::decode(&full, KeyFormat::Gid).unwrap(),
        gid_key()
    );
    assert_eq!(c_strtol(b"  -0x1f", 16), Some(-31));
    assert_eq!(c_strtol(b"0x", 16), Some(0));
    assert_eq!(c_strtol(b"12ab", 10), Some(12));
    assert_eq!(c_strtol(b"", 16), None);
    assert_eq!(c_strtol(b"ffffffffffffffffffffffffffffffffff", 16), None);
}

#[test]
fn key_decode_rejects_malformed_input() {
    let gid = KeyFormat::Gid;
    // Wrong lengths, including the other format's.
    assert!(matches!(
        KeyMessage::decode(&GID_VECTOR[..107], gid),
        Err(ExchangeError::Length { .. })
    ));
    assert!(matches!(
        KeyMessage::decode(NO_GID_VECTOR, gid),
        Err(ExchangeError::Length { .. })
    ));
    assert!(matches!(
        KeyMessage::decode(GID_VECTOR, KeyFormat::NoGid),
        Err(ExchangeError::Length { .. })
    ));
    assert!(matches!(
        KeyMessage::decode(&[], gid),
        Err(ExchangeError::Length { .. })
    ));
    // Cut short by an early NUL.
    let mut short = GID_VECTOR.to_vec();
    short[60] = 0;
    assert!(matches!(
        KeyMessage::decode(&short, gid),
        Err(ExchangeError::KeyMissingField { .. })
    ));
    let empty = [0u8; KEY_MSG_SIZE_GID];
    assert!(matches!(
        KeyMessage::decode(&empty, gid),
        Err(ExchangeError::KeyField { .. })
    ));
    // Not hex, out of range, negative, not ASCII.
    let mut not_hex = GID_VECTOR.to_vec();
    not_hex[..4].copy_from_slice(b"zzzz");
    assert!(matches!(
        KeyMessage::decode(&not_hex, gid),
        Err(ExchangeError::KeyField { .. })
    ));
    let msg = padded("10000:0:0:0:0:0", KEY_MSG_SIZE_GID);
    assert!(matches!(
        KeyMessage::decode(&msg, gid),
        Err(ExchangeError::KeyField {
            reason: "out of range",
            ..
        })
    ));
    let msg = padded("0:0:1000000:0:0:0", KEY_MSG_SIZE_GID);
    assert!(matches!(
        KeyMessage::decode(&msg, gid),
        Err(ExchangeError::KeyField { .. })
    ));
    let msg = padded("0:0:0:0:0:0:100:0", KEY_MSG_SIZE_GID);
    assert!(matches!(
        KeyMessage::decode(&msg, gid),
        Err(ExchangeError::KeyField { .. })
    ));
    let msg = padded("-1:0:0:0:0:0", KEY_MSG_SIZE_GID);
    assert!(matches!(
        KeyMessage::decode(&msg, gid),
        Err(ExchangeError::KeyField { .. })
    ));
    let mut not_ascii = GID_VECTOR.to_vec();
    not_ascii[3] = 0xc3;
    assert!(matches!(
        KeyMessage::decode(&not_ascii, gid),
        Err(ExchangeError::KeyNotText)
    ));
    let garbage: Vec<u8> = (0..KEY_MSG_SIZE_GID)
        .map(|i| (i * 37 % 251) as u8)
        .collect();
    assert!(KeyMessage::decode(&garbage, gid).is_err());
    // Encoding refuses values that would change the length.
    let big_qpn = KeyMessage {
        qpn: 0x100_0000,
        ..gid_key()
    };
    assert!(matches!(
        big_qpn.encode(gid),
        Err(ExchangeError::KeyValueRange { field: "QPN", .. })
    ));
    let big_psn = KeyMessage {
        psn: u32::MAX,
        ..gid_key()
    };
    assert!(matches!(
        big_psn.encode(KeyFormat::NoGid),
        Err(ExchangeError::KeyValueRange { field: "PSN", .. })
    ));
}

#[test]
fn bw_report_is_big_endian_fields_in_order() {
    let report = BwReport {
        size: 65536,
        iters: 5000,
        bw_peak: 1.5,
        bw_avg: -2.0,
        msg_rate_avg: 0.25,
        bw_avg_p1: 3.0,
        msg_rate_avg_p1: 4.0,
        bw_avg_p2: 5.0,
        msg_rate_avg_p2: 6.0,
    };
    let bytes = report.encode(false);
    assert_eq!(bytes.len(), 40);
    // printf: bswap_64 of (unsigned long)65536 and of the bits of 1.5.
    assert_eq!(bytes[..8], [0, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(bytes[8..16], [0, 0, 0, 0, 0, 0, 0x13, 0x88]);
    assert_eq!(bytes[16..24], [0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
    assert_eq!(bytes[24..32], [0xc0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(bytes[32..40], [0x3f, 0xd0, 0, 0, 0, 0, 0, 0]);
    let plain = BwReport {
        bw_avg_p1: 0.0,
        msg_rate_avg_p1: 0.0,
        bw_avg_p2: 0.0,
        msg_rate_avg_p2: 0.0,
        ..report
    };
    assert_eq!(BwReport::decode(&bytes, false).unwrap(), plain);
    let per_port = report.encode(true);
    assert_eq!(per_port.len(), 72);
    assert_eq!(per_port[40..48], 3.0f64.to_be_bytes());
    assert_eq!(per_port[48..56], 4.0f64.to_be_bytes());
    assert_eq!(BwReport::decode(&per_port, true).unwrap(), report);
    assert!(matches!(
        BwReport::decode(&bytes, true),
        Err(ExchangeError::Length { .. })
    ));
    assert!(matches!(
        BwReport::decode(&bytes[..39], false),
        Err(ExchangeError::Length { .. })
    ));
    // perftest's half-duplex server sends uninitialised memory: any bits decode.
    assert!(
        BwReport::decode(&[0xff; 40], false)
            .unwrap()
            .bw_peak
            .is_nan()
    );
}

#[test]
fn decoders_never_panic_on_noise() {
    // A fixed xorshift stream; half the buffers use only the characters the
    // parsers react to, so that they get deep into the text.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"0123456789abcdefABCDEFxX:: -+\0\t";
    for round in 0..20_000 {
        let len = match round % 6 {
            0 => KEY_MSG_SIZE_GID,
            1 => KEY_MSG_SIZE,
            2 => VERSION_MESSAGE_LEN,
            3 => MTU_MESSAGE_LEN,
            4 => BwReport::wire_len(round % 12 == 4),
            _ => (next() % 130) as usize,
        };
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if round % 2 == 0 {
                    alphabet[(r % alphabet.len() as u64) as usize]
                } else {
                    r as u8
                }
            })
            .collect();
        let _ = KeyMessage::decode(&buf, KeyFormat::Gid);
        let _ = KeyMessage::decode(&buf, KeyFormat::NoGid);
        let _ = PeerVersion::decode(&buf);
        let _ = Mtu::decode(&buf);
        let _ = SysData::decode(&buf);
        let _ = BwReport::decode(&buf, false);
        let _ = BwReport::decode(&buf, true);
        // Whatever decodes must encode back to a message of the same size.
        for format in [KeyFormat::Gid, KeyFormat::NoGid] {
            if let Ok(key) = KeyMessage::decode(&buf, format) {
                assert_eq!(key.encode(format).unwrap().len(), format.message_len());
            }
        }
    }
}
