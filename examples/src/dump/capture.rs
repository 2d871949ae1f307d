//! Reading capture files: classic pcap (either byte order, micro- or
//! nanosecond timestamps) and pcapng (enhanced and simple packet blocks,
//! per-interface link types and timestamp resolutions), through the
//! `pcap-file` crate.

use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};

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

fn read_pcap(file: &[u8]) -> Result<(Vec<Record>, Option<CaptureError>), CaptureError> {
    let mut reader = PcapReader::new(file).map_err(|source| CaptureError::Header {
        format: "pcap",
        source,
    })?;
    let link = Link::from(reader.header().datalink);
    let mut records = Vec::new();
    while let Some(packet) = reader.next_packet() {
        match packet {
            Ok(p) => records.push(Record {
                index: records.len() + 1,
                time: p.timestamp,
                link,
                data: p.data.into_owned(),
                wire_len: p.orig_len,
            }),
            Err(source) => {
                let after = records.len();
                return Ok((records, Some(CaptureError::Record { after, source })));
            }
        }
    }
    Ok((records, None))
}

/// Seconds per timestamp unit of a pcapng interface (`if_tsresol`;
/// microseconds when absent).
fn units_per_second(options: &[InterfaceDescriptionOption<'_>]) -> f64 {
    options
        .iter()
        .find_map(|o| match o {
            InterfaceDescriptionOption::IfTsResol(r) if r & 0x80 == 0 => {
                Some(10f64.powi(i32::from(*r)))
            }
            InterfaceDescriptionOption::IfTsResol(r) => Some(2f64.powi(i32::from(r & 0x7f))),
            _ => None,
        })
        .unwrap_or(1e6)
}

fn read_pcapng(file: &[u8]) -> Result<(Vec<Record>, Option<CaptureError>), CaptureError> {
    let mut reader = PcapNgReader::new(file).map_err(|source| CaptureError::Header {
        format: "pcapng",
        source,
    })?;
    let mut records = Vec::new();
    while let Some(block) = reader.next_block() {
        let block = match block {
            Ok(b) => b.into_owned(),
            Err(source) => {
                let after = records.len();
                return Ok((records, Some(CaptureError::Record { after, source })));
            }
        };
        let interfaces = reader.interfaces();
        let (interface, raw_time, data, wire_len) = match block {
            // pcap-file hands the raw timestamp over as nanoseconds; the
            // interface's resolution says what its unit really is.
            Block::EnhancedPacket(p) => (
                p.interface_id as usize,
                p.timestamp.as_nanos(),
                p.data.into_owned(),
                p.original_len,
            ),
            Block::SimplePacket(p) => (0, 0, p.data.into_owned(), p.original_len),
            _ => continue,
        };
        let (link, units) = interfaces
            .get(interface)
            .map_or((Link::Other(u32::MAX), 1e6), |i| {
                (Link::from(i.linktype), units_per_second(&i.options))
            });
        records.push(Record {
            index: records.len() + 1,
            time: Duration::from_secs_f64(raw_time as f64 / units),
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
        assert_eq!(units_per_second(&[]), 1e6);
        assert_eq!(
            units_per_second(&[InterfaceDescriptionOption::IfTsResol(9)]),
            1e9
        );
        // High bit set: a power of two.
        assert_eq!(
            units_per_second(&[InterfaceDescriptionOption::IfTsResol(0x80 | 10)]),
            1024.0
        );
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
