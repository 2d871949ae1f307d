//! Reading capture files: classic pcap (either byte order, micro- or
//! nanosecond timestamps) and pcapng (enhanced and simple packet blocks,
//! per-interface link types and timestamp resolutions), through the
//! `pcap-file` crate.

use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgParser};

/// Why a capture could not be read (completely).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Neither a pcap nor a pcapng file.
    #[error("not a pcap or pcapng file (magic {0:02x?})")]
    UnknownFormat(Vec<u8>),
    /// The file header is damaged.
    #[error("unreadable {format} header: {source}")]
    Header {
        /// "pcap" or "pcapng".
        format: &'static str,
        /// What the reader said.
        source: pcap_file::PcapError,
    },
    /// A record (block) after `after` good ones could not be read: the file
    /// is cut short or damaged there.
    #[error("record {} is unreadable ({source}); the file is truncated or damaged there", .after + 1)]
    Record {
        /// Records read before it.
        after: usize,
        /// What the reader said.
        source: pcap_file::PcapError,
    },
}

/// How a record's bytes begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Ethernet (DLT_EN10MB).
    Ethernet,
    /// Linux cooked capture v1 (DLT_LINUX_SLL, what `tcpdump -i any` writes).
    LinuxSll,
    /// Linux cooked capture v2 (DLT_LINUX_SLL2).
    LinuxSll2,
    /// A bare IP packet (DLT_RAW, DLT_IPV4, DLT_IPV6).
    RawIp,
    /// Anything else, by its number.
    Other(u32),
}

impl From<DataLink> for Link {
    fn from(d: DataLink) -> Self {
        match d {
            DataLink::ETHERNET => Link::Ethernet,
            DataLink::LINUX_SLL => Link::LinuxSll,
            DataLink::LINUX_SLL2 => Link::LinuxSll2,
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Link::RawIp,
            other => Link::Other(u32::from(other)),
        }
    }
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the file, from 1.
    pub index: usize,
    /// Capture time since the Unix epoch.
    pub time: Duration,
    /// The link layer of the bytes.
    pub link: Link,
    /// The captured bytes (possibly fewer than were on the wire).
    pub data: Vec<u8>,
    /// The frame's length on the wire.
    pub wire_len: u32,
}

/// Every record of a capture file, and the error that stopped reading
/// early, if any (the records before it are kept).
///
/// # Errors
/// [`CaptureError::UnknownFormat`] or [`CaptureError::Header`] when nothing
/// can be read at all.
pub fn read(file: &[u8]) -> Result<(Vec<Record>, Option<CaptureError>), CaptureError> {
    match file.get(..4) {
        Some([0x0a, 0x0d, 0x0d, 0x0a]) => read_pcapng(file),
        Some(
            [0xa1, 0xb2, 0xc3, 0xd4]
            | [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d]
            | [0x4d, 0x3c, 0xb2, 0xa1],
        ) => read_pcap(file),
        _ => Err(CaptureError::UnknownFormat(
            file.iter().take(4).copied().collect(),
        )),
    }
}

// Both formats are parsed from the slice itself (pcap-file's readers copy
// through an 8 MB buffer, allocated per file, and fail on any record
// larger than it).

fn read_pcap(file: &[u8]) -> Result<(Vec<Record>, Option<CaptureError>), CaptureError> {
    let (mut rest, parser) = PcapParser::new(file).map_err(|source| CaptureError::Header {
        format: "pcap",
        source,
    })?;
    let link = Link::from(parser.header().datalink);
    let mut records = Vec::new();
    while !rest.is_empty() {
        match parser.next_packet(rest) {
            // Every record holds at least its 16-byte header: `rest` shrinks.
            Ok((tail, p)) => {
                records.push(Record {
                    index: records.len() + 1,
                    time: p.timestamp,
                    link,
                    data: p.data.into_owned(),
                    wire_len: p.orig_len,
                });
                rest = tail;
            }
            Err(source) => {
                let after = records.len();
                return Ok((records, Some(CaptureError::Record { after, source })));
            }
        }
    }
    Ok((records, None))
}

/// Timestamp units per second of a pcapng interface (`if_tsresol`: 10^r,
/// or 2^r with the high bit set; microseconds when absent). `None` when the
/// unit is finer than `u128` can count (10^39 per second and beyond).
fn units_per_second(options: &[InterfaceDescriptionOption<'_>]) -> Option<u128> {
    options
        .iter()
        .find_map(|o| match o {
            InterfaceDescriptionOption::IfTsResol(r) if r & 0x80 == 0 => {
                Some(10u128.checked_pow(u32::from(*r)))
            }
            InterfaceDescriptionOption::IfTsResol(r) => {
                Some(1u128.checked_shl(u32::from(r & 0x7f)))
            }
            _ => None,
        })
        .unwrap_or(Some(1_000_000))
}

/// A pcapng timestamp of `raw` units at `units_per_second`, exactly
/// (rounded down to the nanosecond). Every value is representable: a unit
/// is at most a second, so the seconds fit in `u64` as `raw` does.
fn pcapng_time(raw: u64, units_per_second: Option<u128>) -> Duration {
    const NANOS_PER_SECOND: u128 = 1_000_000_000;
    // Finer than u128 can count: less than 10^-19 s per unit, and `raw`
    // units are less than 2 ns.
    let Some(units) = units_per_second else {
        return Duration::ZERO;
    };
    let raw = u128::from(raw);
    // `units` is at least 1 (10^0 or 2^0).
    let seconds = raw / units;
    // The remainder is below both `raw` and `units`, so below 2^64, and
    // times 10^9 stays below 2^94: no overflow.
    let nanos = raw % units * NANOS_PER_SECOND / units;
    // seconds <= raw < 2^64 and nanos < 10^9: both conversions hold.
    Duration::new(
        u64::try_from(seconds).unwrap_or(u64::MAX),
        u32::try_from(nanos).unwrap_or(0),
    )
}

fn read_pcapng(file: &[u8]) -> Result<(Vec<Record>, Option<CaptureError>), CaptureError> {
    let (mut rest, mut parser) =
        PcapNgParser::new(file).map_err(|source| CaptureError::Header {
            format: "pcapng",
            source,
        })?;
    let mut records = Vec::new();
    while !rest.is_empty() {
        // Every block is at least 12 bytes long: `rest` shrinks.
        let block = match parser.next_block(rest) {
            Ok((tail, block)) => {
                rest = tail;
                block
            }
            Err(source) => {
                let after = records.len();
                return Ok((records, Some(CaptureError::Record { after, source })));
            }
        };
        let (interface, raw_time, data, wire_len) = match block {
            // pcap-file hands the raw 64-bit timestamp over as nanoseconds;
            // the interface's resolution says what its unit really is.
            Block::EnhancedPacket(p) => (
                p.interface_id as usize,
                u64::try_from(p.timestamp.as_nanos()).unwrap_or(u64::MAX),
                p.data.into_owned(),
                p.original_len,
            ),
            Block::SimplePacket(p) => (0, 0, p.data.into_owned(), p.original_len),
            _ => continue,
        };
        let (link, units) = parser
            .interfaces()
            .get(interface)
            .map_or((Link::Other(u32::MAX), Some(1_000_000)), |i| {
                (Link::from(i.linktype), units_per_second(&i.options))
            });
        records.push(Record {
            index: records.len() + 1,
            time: pcapng_time(raw_time, units),
            link,
            data,
            wire_len,
        });
    }
    Ok((records, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_resolutions_follow_if_tsresol() {
        let resol = |r| units_per_second(&[InterfaceDescriptionOption::IfTsResol(r)]);
        assert_eq!(units_per_second(&[]), Some(1_000_000));
        assert_eq!(resol(9), Some(1_000_000_000));
        assert_eq!(resol(0), Some(1));
        // High bit set: a power of two.
        assert_eq!(resol(0x80 | 10), Some(1024));
        assert_eq!(resol(0x80 | 127), Some(1 << 127));
        // Finer than u128 counts.
        assert_eq!(resol(39), None);
        assert_eq!(resol(127), None);
    }

    #[test]
    fn timestamps_convert_exactly_at_every_resolution() {
        // Seconds: the largest raw value is 2^64 - 1 seconds, no overflow.
        assert_eq!(
            pcapng_time(u64::MAX, Some(1)),
            Duration::from_secs(u64::MAX)
        );
        assert_eq!(
            pcapng_time(u64::MAX - 5, Some(1)),
            Duration::from_secs(u64::MAX - 5)
        );
        assert_eq!(
            pcapng_time(1_234_567_891, Some(1_000_000)),
            Duration::new(1234, 567_891_000)
        );
        assert_eq!(
            pcapng_time(u64::MAX, Some(1_000_000_000)),
            Duration::from_nanos(u64::MAX)
        );
        // 2^-10 s units: 1025 units are 1 s and 976562.5 ns, rounded down.
        assert_eq!(pcapng_time(1025, Some(1024)), Duration::new(1, 976_562));
        // Units finer than a nanosecond.
        assert_eq!(pcapng_time(u64::MAX, Some(10u128.pow(38))), Duration::ZERO);
        assert_eq!(pcapng_time(u64::MAX, Some(1 << 127)), Duration::ZERO);
        assert_eq!(
            pcapng_time(3_000_000_000_000, Some(10u128.pow(12))),
            Duration::from_secs(3)
        );
        assert_eq!(pcapng_time(u64::MAX, None), Duration::ZERO);
    }

    #[test]
    fn a_record_larger_than_eight_megabytes_is_read() {
        // Little-endian pcap, microseconds, snap length 16 MiB, Ethernet;
        // one record of 9 MB.
        let len: u32 = 9_000_000;
        let mut file = Vec::new();
        for word in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 1 << 24, 1] {
            file.extend_from_slice(&word.to_le_bytes());
        }
        for word in [7u32, 5, len, len] {
            file.extend_from_slice(&word.to_le_bytes());
        }
        file.resize(file.len() + len as usize, 0xab);
        let (records, error) = read(&file).unwrap();
        assert!(error.is_none(), "{error:?}");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].data.len(), len as usize);
        assert_eq!(records[0].time, Duration::new(7, 5_000));
    }

    #[test]
    fn unknown_and_damaged_headers_are_errors() {
        assert!(matches!(
            read(b"GIF89a"),
            Err(CaptureError::UnknownFormat(m)) if m == b"GIF8"
        ));
        assert!(matches!(read(b""), Err(CaptureError::UnknownFormat(_))));
        // A pcap magic with nothing after it.
        assert!(matches!(
            read(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0]),
            Err(CaptureError::Header { format: "pcap", .. })
        ));
        assert!(matches!(
            read(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0]),
            Err(CaptureError::Header {
                format: "pcapng",
                ..
            })
        ));
    }
}
