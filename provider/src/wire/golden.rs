//! The real kernel-rxe capture (`provider/tests/data/rxe-7.3.4-perftest.pcap`,
//! described in `provider/tests/data/README.md`), read once. This is the one
//! loader of the capture: the provider's unit tests have it as
//! `wire::golden`; the provider's and the tools' integration tests include
//! this file with `#[path]`, with `UdpDatagram` in scope of the including
//! module (`CARGO_MANIFEST_DIR` is then the including crate's, a sibling of
//! `provider`).

use std::sync::LazyLock;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader};

use super::UdpDatagram;

/// The capture file, as committed.
pub(crate) const CAPTURE: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../provider/tests/data/rxe-7.3.4-perftest.pcap"
));

static RECORDS: LazyLock<(PcapHeader, Vec<PcapPacket<'static>>)> = LazyLock::new(|| {
    let mut reader = PcapReader::new(CAPTURE).expect("a pcap file");
    let header = reader.header();
    let mut records = Vec::new();
    while let Some(packet) = reader.next_packet() {
        records.push(packet.expect("a whole record").into_owned());
    }
    (header, records)
});

/// The capture's file header and every record (Ethernet frames), in order.
pub(crate) fn records() -> &'static (PcapHeader, Vec<PcapPacket<'static>>) {
    &RECORDS
}

/// The capture's RoCEv2 frames (UDP to port 4791), in order.
pub(crate) fn frames() -> Vec<UdpDatagram<'static>> {
    records()
        .1
        .iter()
        .filter_map(|r| UdpDatagram::from_ethernet(&r.data).ok())
        .filter(UdpDatagram::is_roce)
        .collect()
}
