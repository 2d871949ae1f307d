//! The fuzz targets' checks (provider/fuzz/src), run under `cargo test` on
//! every input the fuzzers found failing (provider/fuzz/regressions) and
//! on the committed seed corpora (provider/fuzz/corpus), so a fixed crash
//! stays fixed without the nightly toolchain.

#[path = "../fuzz/src/device_harness.rs"]
mod device_harness;
#[path = "../../tests/fuzz/replay.rs"]
mod replay;
#[path = "../fuzz/src/wire_check.rs"]
mod wire_check;

use replay::replay;

#[test]
fn wire_crashes_found_by_fuzzing_stay_fixed() {
    replay("regressions/wire", wire_check::check);
}

#[test]
fn wire_seed_corpus_passes() {
    replay("corpus/wire", wire_check::check);
}

#[test]
fn device_seed_corpus_passes() {
    replay("corpus/device", device_harness::run);
}

/// A WRITE_ONLY of `payload` at `offset` of the pinned region, as one
/// harness record with `control` (QPN, PSN and key filled in, sealed or
/// not).
fn write_only_record(control: u8, offset: u64, payload: &[u8; 16]) -> Vec<u8> {
    // BTH: WRITE_ONLY, pad 0, P_Key 0xffff, QPN and PSN 0 (filled in),
    // AckReq; RETH; payload; ICRC (written by the seal).
    let mut datagram = vec![0x0a, 0, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0];
    datagram.extend_from_slice(&offset.to_be_bytes());
    datagram.extend_from_slice(&0u32.to_be_bytes());
    datagram.extend_from_slice(&16u32.to_be_bytes());
    datagram.extend_from_slice(payload);
    datagram.extend_from_slice(&[0; 4]);
    let mut record = vec![control];
    record.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    record.extend_from_slice(&datagram);
    record
}

#[test]
fn the_device_harness_reaches_the_engine_and_memory() {
    // Sealed, QPN, relative PSN and keys filled in: the bytes land.
    let payload: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
    device_harness::run(&write_only_record(0x0f, 0x8000, &payload));
    assert_eq!(device_harness::pinned_bytes(0x8000, 16), payload);
    // The same without the seal fails the ICRC check: nothing lands.
    device_harness::run(&write_only_record(0x0e, 0x9000, &payload));
    assert_eq!(device_harness::pinned_bytes(0x9000, 16), [0; 16]);
}
