//! roce-dump end to end: the real kernel-rxe capture (as pcap, pcapng and
//! Linux cooked capture), damaged copies of it, broken files, and a capture
//! of this project's own device on loopback.

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgWriter};
use provider::wire::UdpDatagram;

#[path = "../../provider/src/wire/golden.rs"]
#[allow(dead_code)] // `frames` serves the provider's tests
mod golden;

use golden::CAPTURE as GOLDEN;
const GOLDEN_COUNTS: &str = "frames read: 1104, RoCEv2 frames: 615, ICRC good: 615, ICRC bad: 0, \
                             re-emit mismatches: 0, unparsed or truncated: 0";

/// Writes `bytes` to a fresh file and runs roce-dump on it.
fn dump(name: &str, bytes: &[u8], flags: &[&str]) -> (i32, String, String) {
    // Tests run in parallel: every call gets a file of its own.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("roce-dump-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join(format!("{call}-{name}"));
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roce-dump"))
        .args(flags)
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

fn golden() -> (PcapHeader, Vec<PcapPacket<'static>>) {
    golden::records().clone()
}

fn write_pcap(header: PcapHeader, packets: &[PcapPacket<'_>]) -> Vec<u8> {
    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
    for p in packets {
        w.write_packet(p).unwrap();
    }
    w.into_writer()
}

/// Indices (from 1) of the RoCEv2 frames whose opcode byte is `opcode`
/// (IPv4 Ethernet frames: the BTH starts at byte 42).
fn find(packets: &[PcapPacket<'_>], opcode: u8) -> usize {
    packets
        .iter()
        .position(|p| {
            p.data.len() > 42
                && p.data[12..14] == [0x08, 0x00]
                && p.data[23] == 17
                && p.data[36..38] == [0x12, 0xb7]
                && p.data[42] == opcode
        })
        .unwrap()
}

#[test]
fn the_real_rxe_capture_checks_clean() {
    let (code, out, err) = dump("golden.pcap", GOLDEN, &["--check"]);
    assert_eq!((code, out.trim_end()), (0, GOLDEN_COUNTS), "{err}");
    // Without --check every RoCEv2 frame gets a line, then the counts.
    let (code, out, _) = dump("golden.pcap", GOLDEN, &[]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 615 + 1);
    assert_eq!(last_line(&out), GOLDEN_COUNTS);
    assert!(out.contains(
        "RC_RDMA_WRITE_FIRST qpn 0x000011 psn 0x9e323c ack_req 0 RETH va=0x559b30821000 \
         rkey=0x20e len=4096 payload 1024 pad 0 icrc good"
    ));
    assert!(out.contains("AETH ACK credits=31 msn=5"));
}

#[test]
fn damaged_frames_fail_the_check_and_are_named() {
    let (header, mut packets) = golden();
    let (write, ack, read) = (
        find(&packets, 0x06),
        find(&packets, 0x11),
        find(&packets, 0x0d),
    );
    // One payload bit flipped, one header byte (the PSN's last) changed,
    // one frame cut short by 100 bytes.
    packets[write].data.to_mut()[42 + 12 + 16 + 5] ^= 0x10;
    packets[ack].data.to_mut()[42 + 11] ^= 0xff;
    let cut = packets[read].data.len() - 100;
    packets[read].data.to_mut().truncate(cut);
    let (code, out, _) = dump("damaged.pcap", &write_pcap(header, &packets), &["--check"]);
    assert_eq!(code, 1, "{out}");
    let failing: Vec<usize> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let mut expected = vec![write + 1, ack + 1, read + 1];
    expected.sort_unstable();
    assert_eq!(failing, expected, "{out}");
    let line = |i: usize| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{i} ")))
            .unwrap()
    };
    assert!(line(write + 1).contains("bad ICRC"), "{out}");
    assert!(line(ack + 1).contains("bad ICRC"), "{out}");
    assert!(
        line(read + 1).contains("truncated: UDP payload of"),
        "{out}"
    );
    assert!(last_line(&out).contains("ICRC bad: 2"), "{out}");
    assert!(
        last_line(&out).contains("unparsed or truncated: 1"),
        "{out}"
    );
}

#[test]
fn pcapng_and_linux_cooked_captures_read_the_same() {
    let (header, packets) = golden();
    // pcapng, nanosecond timestamps.
    let mut w = PcapNgWriter::new(Vec::new()).unwrap();
    w.write_block(&Block::InterfaceDescription(InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 0,
        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
    }))
    .unwrap();
    for p in &packets {
        w.write_block(&Block::EnhancedPacket(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: p.timestamp,
            original_len: p.orig_len,
            data: Cow::Borrowed(&p.data),
            options: vec![],
        }))
        .unwrap();
    }
    let ng = w.into_inner();
    let (code, out, _) = dump("golden.pcapng", &ng, &["--check"]);
    assert_eq!((code, out.trim_end()), (0, GOLDEN_COUNTS));
    // Same relative times as the pcap.
    let (_, a, _) = dump("golden.pcap", GOLDEN, &[]);
    let (_, b, _) = dump("golden.pcapng", &ng, &[]);
    assert_eq!(a, b);

    // Linux cooked v1: a 16-byte header whose last two bytes are the
    // EtherType, in place of the 14-byte Ethernet header.
    let cooked: Vec<PcapPacket<'static>> = packets
        .iter()
        .map(|p| {
            let mut d = vec![0u8; 16];
            d[14..16].copy_from_slice(&p.data[12..14]);
            d.extend_from_slice(&p.data[14..]);
            PcapPacket::new_owned(p.timestamp, p.orig_len + 2, d)
        })
        .collect();
    let sll = PcapHeader {
        datalink: DataLink::LINUX_SLL,
        ..header
    };
    let (code, out, _) = dump("cooked.pcap", &write_pcap(sll, &cooked), &["--check"]);
    assert_eq!((code, out.trim_end()), (0, GOLDEN_COUNTS));
}

#[test]
fn flows_and_json_report_the_same_counts() {
    let (code, out, _) = dump("golden.pcap", GOLDEN, &["--flows"]);
    assert_eq!(code, 0);
    assert_eq!(last_line(&out), GOLDEN_COUNTS);
    // perftest's READ test: 8 requests of 8192 bytes, answered in 40
    // responses of 1024 bytes (MTU 1024) on QP 0x12.
    assert!(out.contains("198.18.0.2 -> 198.18.0.3 qpn 0x000012: 40 frames, 40960 payload bytes"));
    assert!(out.contains("40 read responses"));
    let (code, out, _) = dump("golden.pcap", GOLDEN, &["--json"]);
    assert_eq!(code, 0);
    let objects: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 616);
    let summary = &objects[615]["summary"];
    assert_eq!(summary["roce_frames"], 615);
    assert_eq!(summary["icrc_good"], 615);
    assert_eq!(objects[0]["icrc_good"], true);
    let (_, out, _) = dump("golden.pcap", GOLDEN, &["--flows", "--json"]);
    let flows = out.lines().count() - 1;
    assert!(flows >= 20, "{out}");
}

#[test]
fn broken_files_are_reported_not_panicked_on() {
    let (code, _, err) = dump("garbage.pcap", b"this is not a capture at all", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("not a pcap or pcapng file"), "{err}");
    // Cut in the middle of a record: what came before is reported, then
    // the damage.
    let cut = &GOLDEN[..GOLDEN.len() / 2];
    let (code, out, _) = dump("cut.pcap", cut, &["--check"]);
    assert_eq!(code, 1);
    assert!(out.contains("error: record"), "{out}");
    assert!(out.contains("truncated or damaged"), "{out}");
    let counts = last_line(&out);
    assert!(
        counts.starts_with("frames read: ") && counts.contains("ICRC bad: 0"),
        "{out}"
    );
    let (code, _, err) = dump("empty.pcap", b"", &[]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn pcapng_timestamps_in_whole_seconds_near_two_to_the_64_are_read_exactly() {
    // An interface whose timestamps count seconds (`if_tsresol` 0) and
    // frames stamped 2^64 - 2 and 2^64 - 1 seconds: valid pcapng, and
    // beyond what a float conversion to `Duration` survives.
    let (_, packets) = golden();
    let frame = &packets[find(&packets, 0x06)];
    let mut w = PcapNgWriter::new(Vec::new()).unwrap();
    w.write_block(&Block::InterfaceDescription(InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 0,
        options: vec![InterfaceDescriptionOption::IfTsResol(0)],
    }))
    .unwrap();
    for raw in [u64::MAX - 1, u64::MAX] {
        // pcap-file writes a timestamp's nanoseconds as the raw 64-bit value.
        w.write_block(&Block::EnhancedPacket(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: std::time::Duration::from_nanos(raw),
            original_len: frame.orig_len,
            data: Cow::Borrowed(&frame.data),
            options: vec![],
        }))
        .unwrap();
    }
    let ng = w.into_inner();
    let counts = "frames read: 2, RoCEv2 frames: 2, ICRC good: 2, ICRC bad: 0, \
                  re-emit mismatches: 0, unparsed or truncated: 0";
    let (code, out, err) = dump("seconds.pcapng", &ng, &["--check"]);
    assert_eq!((code, out.trim_end()), (0, counts), "{err}");
    // The second frame is one second after the first.
    let (code, out, err) = dump("seconds.pcapng", &ng, &[]);
    assert_eq!(code, 0, "{err}");
    let times: Vec<&str> = out
        .lines()
        .take(2)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(times, ["0.000000", "1.000000"], "{out}");
    let (code, out, err) = dump("seconds.pcapng", &ng, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["time"], (u64::MAX - 1) as f64, "{out}");
}
