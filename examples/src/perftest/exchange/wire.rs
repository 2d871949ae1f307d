//! Pure encode/decode of the perftest 6.06 exchange messages. Nothing here
//! touches a socket; every decoder takes the exact fixed-size slot perftest
//! reads and returns an error, never a panic, on bad input.

use std::fmt::Write as _;

use super::ExchangeError;

/// perftest's default TCP port (`DEF_PORT`, perftest v4.5-0.17
/// src/perftest_parameters.h L104).
pub const DEFAULT_PORT: u16 = 18515;

/// The version this module speaks and advertises: perftest v4.5-0.17's
/// `VERSION` (`AC_INIT` in configure.ac). Advertising 6.06 also keeps newer
/// perftests (≥ 6.28) from starting their parameter negotiation.
pub const PERFTEST_VERSION: &str = "6.06";

/// Length of the version message: `char version[MAX_VERSION]`, 16 bytes
/// (perftest v4.5-0.17 src/perftest_parameters.h L320).
pub const VERSION_MESSAGE_LEN: usize = 16;

/// The oldest peer version perftest 6.06 accepts
/// (`check_version_compatibility`, src/perftest_communication.c L1799).
pub const MIN_PEER_VERSION: f64 = 5.70;

/// Length of each of the two sys-data messages: `sizeof(int)`.
pub const SYS_DATA_FIELD_LEN: usize = 4;

/// Length of the MTU message for peers ≥ 5.31: `sizeof(char[2])`
/// (`check_mtu`, src/perftest_communication.c L1852).
pub const MTU_MESSAGE_LEN: usize = 2;

/// Length of the key message without a GID, NUL included (`KEY_MSG_SIZE`,
/// src/perftest_communication.h L75).
pub const KEY_MSG_SIZE: usize = 59;

/// Length of the key message with a GID, NUL included (`KEY_MSG_SIZE_GID`,
/// src/perftest_communication.h L76).
pub const KEY_MSG_SIZE_GID: usize = 108;

/// Length of each results message: `sizeof(unsigned long)`,
/// `sizeof(uint64_t)` or `sizeof(double)` on LP64 (`xchg_bw_reports`).
pub const REPORT_FIELD_LEN: usize = 8;

/// What each side writes after the final handshake (`sizeof "done"`, the
/// NUL included; `ctx_close_connection`, src/perftest_communication.c
/// L1759). perftest 6.06 never reads it.
pub const DONE_MESSAGE: &[u8; 5] = b"done\0";

/// Checks that `msg` has the fixed length of its slot.
pub(super) fn check_len(
    what: &'static str,
    expected: usize,
    msg: &[u8],
) -> Result<(), ExchangeError> {
    if msg.len() == expected {
        Ok(())
    } else {
        Err(ExchangeError::Length {
            what,
            expected,
            got: msg.len(),
        })
    }
}

/// The bytes of a C string held in a fixed buffer: up to the first NUL, or
/// the whole buffer when it has none.
fn c_str(msg: &[u8]) -> &[u8] {
    match msg.iter().position(|&b| b == 0) {
        Some(end) => &msg[..end],
        None => msg,
    }
}

/// Like C `strtol`/`strtoul` in `radix` 10 or 16: skips leading white
/// space, takes an optional sign and (for 16) an optional `0x`, then as
/// many digits as there are, ignoring what follows. `None` when there is no
/// digit or the value overflows `i128` (C would return 0 or saturate).
pub(super) fn c_strtol(text: &[u8], radix: u32) -> Option<i128> {
    let mut rest = text;
    while let [first, tail @ ..] = rest {
        if first.is_ascii_whitespace() {
            rest = tail;
        } else {
            break;
        }
    }
    let negative = match rest.first() {
        Some(b'-') => {
            rest = &rest[1..];
            true
        }
        Some(b'+') => {
            rest = &rest[1..];
            false
        }
        _ => false,
    };
    if radix == 16
        && let [b'0', b'x' | b'X', next, ..] = rest
        && next.is_ascii_hexdigit()
    {
        rest = &rest[2..];
    }
    let mut value: i128 = 0;
    let mut digits = 0;
    for &b in rest {
        let Some(digit) = char::from(b).to_digit(radix) else {
            break;
        };
        value = value
            .checked_mul(i128::from(radix))?
            .checked_add(i128::from(digit))?;
        digits += 1;
    }
    if digits == 0 {
        return None;
    }
    Some(if negative { -value } else { value })
}

/// Like C `atof` on the prefix that is a decimal number (sign, digits, an
/// optional fraction and exponent); 0.0 when there is none.
pub(super) fn c_atof(text: &[u8]) -> f64 {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let s = &text[start..];
    let digits_from =
        |from: usize| from + s[from..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut end = usize::from(matches!(s.first(), Some(b'+' | b'-')));
    let int_end = digits_from(end);
    let mut mantissa_digits = int_end - end;
    end = int_end;
    if s.get(end) == Some(&b'.') {
        let frac_end = digits_from(end + 1);
        mantissa_digits += frac_end - end - 1;
        if mantissa_digits > 0 {
            end = frac_end;
        }
    }
    if mantissa_digits == 0 {
        return 0.0;
    }
    if matches!(s.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(s.get(end + 1), Some(b'+' | b'-')));
        let exp_end = digits_from(end + 1 + sign);
        if exp_end > end + 1 + sign {
            end = exp_end;
        }
    }
    std::str::from_utf8(&s[..end])
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

/// Encodes a version message: `strncpy(version, text, 16)`, so the text and
/// NUL padding to 16 bytes (`exchange_versions`,
/// src/perftest_communication.c L1786). The text must leave room for a NUL.
pub fn encode_version(text: &str) -> Result<[u8; VERSION_MESSAGE_LEN], ExchangeError> {
    let bytes = text.as_bytes();
    if bytes.len() >= VERSION_MESSAGE_LEN || bytes.contains(&0) {
        return Err(ExchangeError::VersionTooLong(text.to_owned()));
    }
    let mut msg = [0u8; VERSION_MESSAGE_LEN];
    msg[..bytes.len()].copy_from_slice(bytes);
    Ok(msg)
}

/// The version the peer sent.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerVersion {
    /// The text up to the first NUL (lossily decoded).
    pub text: String,
    /// The text read like C `atof`, as perftest compares it.
    pub number: f64,
}

impl PeerVersion {
    /// Decodes a 16-byte version message. Any bytes decode; a version that
    /// is not a number reads as 0 (and so is not [compatible]).
    ///
    /// [compatible]: PeerVersion::is_compatible
    pub fn decode(msg: &[u8]) -> Result<Self, ExchangeError> {
        check_len("version", VERSION_MESSAGE_LEN, msg)?;
        let text = c_str(msg);
        Ok(Self {
            text: String::from_utf8_lossy(text).into_owned(),
            number: c_atof(text),
        })
    }

    /// Whether perftest 6.06 accepts this peer: `atof(rem_version) >= 5.70`.
    pub fn is_compatible(&self) -> bool {
        self.number >= MIN_PEER_VERSION
    }
}

/// The two sys-data values (`check_sys_data`, src/perftest_communication.c
/// L1811-1850). Each goes in its own 4-byte exchange as a big-endian `int`
/// (`hton_int`), `cycle_buffer` first; each side then takes the larger of
/// the two values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysData {
    /// `cycle_buffer`: `sysconf(_SC_PAGESIZE)`, or 4096 (`DEF_PAGE_SIZE`).
    /// perftest sizes and aligns its buffers with it.
    pub cycle_buffer: i32,
    /// `cache_line_size`: `_SC_LEVEL1_DCACHE_LINESIZE`, else sysfs, else 64
    /// (`DEF_CACHE_LINE_SIZE`).
    pub cache_line_size: i32,
}

impl Default for SysData {
    /// perftest's fallbacks, 4096 and 64, which are also the x86_64 values.
    fn default() -> Self {
        Self {
            cycle_buffer: 4096,
            cache_line_size: 64,
        }
    }
}

impl SysData {
    /// The two messages back to back: `cycle_buffer` then `cache_line_size`,
    /// each big-endian.
    pub fn encode(&self) -> [u8; 2 * SYS_DATA_FIELD_LEN] {
        let mut msg = [0u8; 2 * SYS_DATA_FIELD_LEN];
        msg[..4].copy_from_slice(&self.cycle_buffer.to_be_bytes());
        msg[4..].copy_from_slice(&self.cache_line_size.to_be_bytes());
        msg
    }

    /// Decodes the two messages back to back (8 bytes).
    pub fn decode(msg: &[u8]) -> Result<Self, ExchangeError> {
        check_len("sys data", 2 * SYS_DATA_FIELD_LEN, msg)?;
        Ok(Self {
            cycle_buffer: be_i32(&msg[..4]),
            cache_line_size: be_i32(&msg[4..]),
        })
    }

    /// What both sides use afterwards: the larger value of each field.
    pub fn agree(&self, remote: &SysData) -> SysData {
        SysData {
            cycle_buffer: self.cycle_buffer.max(remote.cycle_buffer),
            cache_line_size: self.cache_line_size.max(remote.cache_line_size),
        }
    }
}

/// Reads a big-endian `i32` from a 4-byte slice (callers check lengths).
pub(super) fn be_i32(bytes: &[u8]) -> i32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(bytes);
    i32::from_be_bytes(raw)
}

/// The `enum ibv_mtu` values; the MTU message carries the enum value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Mtu {
    /// `IBV_MTU_256`.
    Mtu256 = 1,
    /// `IBV_MTU_512`.
    Mtu512 = 2,
    /// `IBV_MTU_1024`.
    Mtu1024 = 3,
    /// `IBV_MTU_2048`.
    Mtu2048 = 4,
    /// `IBV_MTU_4096`.
    Mtu4096 = 5,
}

impl Mtu {
    /// Every value, smallest first.
    pub const ALL: [Mtu; 5] = [
        Mtu::Mtu256,
        Mtu::Mtu512,
        Mtu::Mtu1024,
        Mtu::Mtu2048,
        Mtu::Mtu4096,
    ];

    /// The MTU for an `ibv_mtu` enum value, if valid (`valid_mtu_size`).
    pub fn from_ibv(value: i128) -> Option<Mtu> {
        Some(match value {
            1 => Mtu::Mtu256,
            2 => Mtu::Mtu512,
            3 => Mtu::Mtu1024,
            4 => Mtu::Mtu2048,
            5 => Mtu::Mtu4096,
            _ => return None,
        })
    }

    /// The `ibv_mtu` enum value.
    pub fn ibv(self) -> u8 {
        self as u8
    }

    /// The MTU in bytes.
    pub fn bytes(self) -> u32 {
        128 << self.ibv()
    }

    /// The MTU for a size in bytes, if it is one of 256..=4096.
    pub fn from_bytes(bytes: u32) -> Option<Mtu> {
        Mtu::ALL.into_iter().find(|m| m.bytes() == bytes)
    }

    /// The MTU message: `sprintf(cur, "%d", mtu)` sent as 2 bytes, the digit
    /// and its NUL (`check_mtu`, src/perftest_communication.c L1852-1880).
    pub fn encode(self) -> [u8; MTU_MESSAGE_LEN] {
        [b'0' + self.ibv(), 0]
    }

    /// Decodes a 2-byte MTU message with `strtol(.., 10)`. perftest keeps its
    /// own MTU when the value is not 1..=5; this returns
    /// [`ExchangeError::InvalidMtu`] so the caller can do the same.
    pub fn decode(msg: &[u8]) -> Result<Mtu, ExchangeError> {
        check_len("MTU", MTU_MESSAGE_LEN, msg)?;
        let text = c_str(msg);
        c_strtol(text, 10)
            .and_then(Mtu::from_ibv)
            .ok_or_else(|| ExchangeError::InvalidMtu {
                text: String::from_utf8_lossy(text).into_owned(),
            })
    }

    /// The MTU both sides use: the remote one when it is valid and smaller.
    pub fn agree(local: Mtu, remote: Option<Mtu>) -> Mtu {
        match remote {
            Some(remote) if remote < local => remote,
            _ => local,
        }
    }
}

/// Which key-message layout is used. The reader picks the layout from its
/// *own* `gid_index` (`ctx_hand_shake` copies it to the remote entry), so
/// both sides must agree: RoCE always uses [`KeyFormat::Gid`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyFormat {
    /// `KEY_PRINT_FMT_GID`, 108 bytes: `gid_index != -1`, always on
    /// Ethernet link layers (RoCE).
    #[default]
    Gid,
    /// `KEY_PRINT_FMT`, 59 bytes: `gid_index == -1`, InfiniBand without `-x`.
    NoGid,
}

impl KeyFormat {
    /// The message length, NUL included.
    pub fn message_len(self) -> usize {
        match self {
            KeyFormat::Gid => KEY_MSG_SIZE_GID,
            KeyFormat::NoGid => KEY_MSG_SIZE,
        }
    }
}

/// One QP's connection data (`struct pingpong_dest`, perftest v4.5-0.17
/// src/perftest_resources.h L221), as sent in the key message.
///
/// With a GID the text is
/// `LID:OUT_READS:QPN:PSN:RKEY:VADDR:GID0:…:GID15:SRQN:` and a NUL, from
/// `"%04x:%04x:%06x:%06x:%08x:%016llx:"`, sixteen `"%02x:"` and `"%08x:"`
/// (107 characters + NUL = 108). Without a GID it is
/// `"%04x:%04x:%06x:%06x:%08x:%016llx:%08x"` (58 + NUL = 59), with no GID
/// and no trailing colon (src/perftest_communication.h L80-83).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyMessage {
    /// The port LID (`%04x`); 0 on RoCE.
    pub lid: u16,
    /// Outstanding RDMA reads/atomics the sender accepts (`%04x`): its
    /// `max_qp_rd_atom` (or `-o`) for READ/ATOMIC tests, else 1.
    pub out_reads: u16,
    /// The QP number (`%06x`, 24 bits).
    pub qpn: u32,
    /// The initial packet sequence number (`%06x`, 24 bits); perftest uses
    /// `lrand48() & 0xffffff`.
    pub psn: u32,
    /// The data MR's rkey (`%08x`).
    pub rkey: u32,
    /// The remote buffer address for this QP (`%016llx`).
    pub vaddr: u64,
    /// The GID, raw bytes in network order (sixteen `%02x`); not sent in
    /// [`KeyFormat::NoGid`], where it decodes as zeros.
    pub gid: [u8; 16],
    /// The SRQ number (`%08x`), 0 unless XRC or DC.
    pub srqn: u32,
}

/// Checks that `value` fits in `digits` hex digits.
fn fits(field: &'static str, value: u64, digits: usize) -> Result<(), ExchangeError> {
    if digits < 16 && value >> (4 * digits) != 0 {
        Err(ExchangeError::KeyValueRange {
            field,
            value,
            digits,
        })
    } else {
        Ok(())
    }
}

impl KeyMessage {
    /// Encodes the message exactly as perftest's `sprintf` does, NUL
    /// included. QPN and PSN must fit in 24 bits.
    pub fn encode(&self, format: KeyFormat) -> Result<Vec<u8>, ExchangeError> {
        fits("QPN", self.qpn.into(), 6)?;
        fits("PSN", self.psn.into(), 6)?;
        let mut text = format!(
            "{:04x}:{:04x}:{:06x}:{:06x}:{:08x}:{:016x}:",
            self.lid, self.out_reads, self.qpn, self.psn, self.rkey, self.vaddr
        );
        match format {
            KeyFormat::Gid => {
                for byte in self.gid {
                    let _ = write!(text, "{byte:02x}:");
                }
                let _ = write!(text, "{:08x}:", self.srqn);
            }
            KeyFormat::NoGid => {
                let _ = write!(text, "{:08x}", self.srqn);
            }
        }
        text.push('\0');
        let msg = text.into_bytes();
        check_len("key message", format.message_len(), &msg)?;
        Ok(msg)
    }

    /// Decodes a key message of the exact length for `format`.
    ///
    /// Tolerant like perftest's `strtol` parsing: the text (up to its NUL)
    /// is split at colons and each field is read as hex with optional
    /// leading white space, `0x` and trailing junk, in any width and case;
    /// anything after the SRQN is ignored. Unlike perftest, a field without
    /// any hex digit, a value too large for its field (LID and OUT_READS 16
    /// bits, QPN and PSN 24, GID bytes 8), a missing field or non-ASCII text
    /// is an error rather than a zero or undefined behaviour.
    pub fn decode(msg: &[u8], format: KeyFormat) -> Result<KeyMessage, ExchangeError> {
        check_len("key message", format.message_len(), msg)?;
        let text = c_str(msg);
        if !text.is_ascii() {
            return Err(ExchangeError::KeyNotText);
        }
        let mut tokens = text.split(|&b| b == b':');
        let mut field = |name: &str, max: u64| -> Result<u64, ExchangeError> {
            let token = tokens
                .next()
                .ok_or_else(|| ExchangeError::KeyMissingField {
                    field: name.to_owned(),
                })?;
            let bad = |reason| ExchangeError::KeyField {
                field: name.to_owned(),
                token: String::from_utf8_lossy(token).into_owned(),
                reason,
            };
            let value = c_strtol(token, 16).ok_or_else(|| bad("not a hex number"))?;
            u64::try_from(value)
                .ok()
                .filter(|&v| v <= max)
                .ok_or_else(|| bad("out of range"))
        };
        // The casts below cannot truncate: `field` bounds each value by `max`.
        let lid = field("LID", 0xffff)? as u16;
        let out_reads = field("OUT_READS", 0xffff)? as u16;
        let qpn = field("QPN", 0xff_ffff)? as u32;
        let psn = field("PSN", 0xff_ffff)? as u32;
        let rkey = field("RKEY", u32::MAX.into())? as u32;
        let vaddr = field("VADDR", u64::MAX)?;
        let mut gid = [0u8; 16];
        if format == KeyFormat::Gid {
            for (i, byte) in gid.iter_mut().enumerate() {
                *byte = field(&format!("GID[{i}]"), 0xff)? as u8;
            }
        }
        let srqn = field("SRQN", u32::MAX.into())? as u32;
        Ok(KeyMessage {
            lid,
            out_reads,
            qpn,
            psn,
            rkey,
            vaddr,
            gid,
            srqn,
        })
    }
}

/// A bandwidth result (`struct bw_report_data`, perftest v4.5-0.17
/// src/perftest_parameters.h L624-635) as `xchg_bw_reports` swaps it
/// (src/perftest_communication.c L1615-1705): each field in its own 8-byte
/// exchange, big-endian (`hton_long` / `hton_double` byte-swap on x86_64),
/// in the order size, iters, bw_peak, bw_avg, msg_rate_avg and, only with
/// `--report-per-port`, bw_avg_p1, msg_rate_avg_p1, bw_avg_p2,
/// msg_rate_avg_p2. `sl` is not sent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BwReport {
    /// Message size in bytes (`unsigned long`, 8 bytes on LP64).
    pub size: u64,
    /// Iterations (`uint64_t`; 8 bytes because the peer is ≥ 5.33).
    pub iters: u64,
    /// Peak bandwidth, in the report unit (MB/s = 2^20 B/s, or Gb/s).
    pub bw_peak: f64,
    /// Average bandwidth, same unit.
    pub bw_avg: f64,
    /// Average message rate, Mpps.
    pub msg_rate_avg: f64,
    /// Port 1 average bandwidth (per-port reports only).
    pub bw_avg_p1: f64,
    /// Port 1 message rate (per-port reports only).
    pub msg_rate_avg_p1: f64,
    /// Port 2 average bandwidth (per-port reports only).
    pub bw_avg_p2: f64,
    /// Port 2 message rate (per-port reports only).
    pub msg_rate_avg_p2: f64,
}

impl BwReport {
    /// Bytes on the wire: 40, or 72 with per-port fields.
    pub const fn wire_len(per_port: bool) -> usize {
        if per_port {
            9 * REPORT_FIELD_LEN
        } else {
            5 * REPORT_FIELD_LEN
        }
    }

    /// The fields in exchange order, each as its 8 big-endian bytes.
    pub fn wire_fields(&self, per_port: bool) -> Vec<[u8; REPORT_FIELD_LEN]> {
        let mut fields = vec![
            self.size.to_be_bytes(),
            self.iters.to_be_bytes(),
            self.bw_peak.to_bits().to_be_bytes(),
            self.bw_avg.to_bits().to_be_bytes(),
            self.msg_rate_avg.to_bits().to_be_bytes(),
        ];
        if per_port {
            for value in [
                self.bw_avg_p1,
                self.msg_rate_avg_p1,
                self.bw_avg_p2,
                self.msg_rate_avg_p2,
            ] {
                fields.push(value.to_bits().to_be_bytes());
            }
        }
        fields
    }

    /// All fields back to back, as they pass over the socket.
    pub fn encode(&self, per_port: bool) -> Vec<u8> {
        self.wire_fields(per_port).concat()
    }

    /// Decodes the fields back to back ([`BwReport::wire_len`] bytes). Any
    /// bit pattern is a valid double, NaN included.
    pub fn decode(msg: &[u8], per_port: bool) -> Result<BwReport, ExchangeError> {
        check_len("bw report", Self::wire_len(per_port), msg)?;
        let mut words = msg.chunks_exact(REPORT_FIELD_LEN).map(|chunk| {
            let mut raw = [0u8; REPORT_FIELD_LEN];
            raw.copy_from_slice(chunk);
            u64::from_be_bytes(raw)
        });
        let mut next = || words.next().unwrap_or(0);
        let mut report = BwReport {
            size: next(),
            iters: next(),
            bw_peak: f64::from_bits(next()),
            bw_avg: f64::from_bits(next()),
            msg_rate_avg: f64::from_bits(next()),
            ..BwReport::default()
        };
        if per_port {
            report.bw_avg_p1 = f64::from_bits(next());
            report.msg_rate_avg_p1 = f64::from_bits(next());
            report.bw_avg_p2 = f64::from_bits(next());
            report.msg_rate_avg_p2 = f64::from_bits(next());
        }
        Ok(report)
    }
}
