//! The real kernel-rxe capture (`tests/data/rxe-7.3.4-perftest.pcap`) for
//! the crate's unit tests.

use std::sync::LazyLock;

use pcap_file::pcap::PcapReader;

use super::UdpDatagram;

const CAPTURE: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/rxe-7.3.4-perftest.pcap"
));

static RECORDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut reader = PcapReader::new(CAPTURE).expect("a pcap file");
    let mut records = Vec::new();
    while let Some(packet) = reader.next_packet() {
        records.push(packet.expect("a whole record").data.into_owned());
    }
    records
});

/// The capture's RoCEv2 frames (UDP to port 4791), in order.
pub(crate) fn frames() -> Vec<UdpDatagram<'static>> {
    RECORDS
        .iter()
        .filter_map(|r| UdpDatagram::from_ethernet(r).ok())
        .filter(UdpDatagram::is_roce)
        .collect()
}
