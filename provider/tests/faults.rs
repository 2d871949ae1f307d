//! The RC transport over a wire that drops, duplicates, reorders and
//! corrupts packets (seeded, in both directions): every byte still arrives
//! exactly once, in order, and every atomic runs exactly once.

mod common;

use common::{End, LOCALHOST, any_port, connect, pattern, send};
use provider::net::{Lossy, LossyStats};
use provider::{DeviceOptions, Mtu, RecvWr, SendOp, WcOpcode, WcStatus};

const LEN: usize = 4 << 20;
/// Where each kind of traffic lives in the 4 MiB buffers.
const WRITE_AT: usize = 0;
const READ_AT: usize = 1 << 20;
const SEND_AT: usize = 2 << 20;
const ATOMIC_AT: usize = 3 << 20;
const SMALL_AT: usize = 3 << 20 | 1 << 19;

fn lossy_end(rate: f64, seed: u64) -> End {
    let options = DeviceOptions {
        faults: Some(Lossy {
            drop: rate,
            duplicate: rate,
            reorder: rate,
            corrupt: rate / 2.0,
            seed,
        }),
        ..any_port()
    };
    End::with_device(LOCALHOST, &options, LEN, seed.is_multiple_of(2))
}

fn add(a: LossyStats, b: LossyStats) -> LossyStats {
    LossyStats {
        offered: a.offered + b.offered,
        dropped: a.dropped + b.dropped,
        duplicated: a.duplicated + b.duplicated,
        reordered: a.reordered + b.reordered,
        corrupted: a.corrupted + b.corrupted,
        sent: a.sent + b.sent,
    }
}

/// One round of every operation over a wire with `rate` faults.
fn exercise(rate: f64, seed: u64, mtu: Mtu) -> LossyStats {
    let a = lossy_end(rate, seed);
    let b = lossy_end(rate, seed + 1000);
    connect(&a, &b, mtu);
    let what = format!("rate {rate}, seed {seed}, {mtu:?}");

    // 1 MiB WRITE a -> b.
    let data = pattern(1 << 20, seed as u8);
    a.put(WRITE_AT, &data);
    send(
        &a.qp,
        1,
        SendOp::Write {
            remote_addr: b.mr.addr() + WRITE_AT as u64,
            rkey: b.mr.rkey(),
        },
        a.mr.sge(WRITE_AT as u64, 1 << 20),
    );
    assert_eq!(a.wait().status, WcStatus::Success, "{what}");
    assert!(b.get(WRITE_AT, 1 << 20) == data, "{what}: write");

    // ... and READ it back into another part of a.
    send(
        &a.qp,
        2,
        SendOp::Read {
            remote_addr: b.mr.addr() + WRITE_AT as u64,
            rkey: b.mr.rkey(),
        },
        a.mr.sge(READ_AT as u64, 1 << 20),
    );
    assert_eq!(a.wait().status, WcStatus::Success, "{what}");
    assert!(a.get(READ_AT, 1 << 20) == data, "{what}: read");

    // 40 SENDs of assorted sizes, each into its own receive, in order.
    let sizes: Vec<usize> = (0..40).map(|i| 1 + (i * 7919) % 9000).collect();
    let slot = 9000;
    for i in 0..sizes.len() {
        b.qp.post_recv(&[RecvWr {
            wr_id: 100 + i as u64,
            sg_list: &[b.mr.sge((SEND_AT + i * slot) as u64, slot as u32)],
        }])
        .unwrap();
    }
    for (i, &size) in sizes.iter().enumerate() {
        a.put(SEND_AT + i * slot, &pattern(size, i as u8));
        send(
            &a.qp,
            100 + i as u64,
            SendOp::Send,
            a.mr.sge((SEND_AT + i * slot) as u64, size as u32),
        );
    }
    for (i, &size) in sizes.iter().enumerate() {
        let wc = b.wait();
        assert_eq!(
            (wc.status, wc.opcode, wc.wr_id, wc.byte_len as usize),
            (WcStatus::Success, WcOpcode::Recv, 100 + i as u64, size),
            "{what}"
        );
        assert!(
            b.get(SEND_AT + i * slot, size) == pattern(size, i as u8),
            "{what}: send {i}"
        );
    }
    for i in 0..sizes.len() {
        assert_eq!(a.wait().wr_id, 100 + i as u64, "{what}");
    }

    // 64 fetch-and-adds on one counter: duplicates must not run twice, so
    // the i-th returns exactly i.
    for i in 0..64u64 {
        send(
            &a.qp,
            1000 + i,
            SendOp::FetchAdd {
                remote_addr: b.mr.addr() + ATOMIC_AT as u64,
                rkey: b.mr.rkey(),
                add: 1,
            },
            a.mr.sge(ATOMIC_AT as u64 + 8 * i, 8),
        );
    }
    for i in 0..64u64 {
        let wc = a.wait();
        assert_eq!(
            (wc.status, wc.wr_id),
            (WcStatus::Success, 1000 + i),
            "{what}"
        );
    }
    for i in 0..64usize {
        let old = u64::from_ne_bytes(a.get(ATOMIC_AT + 8 * i, 8).try_into().unwrap());
        assert_eq!(old, i as u64, "{what}: fetch-add {i}");
    }
    let counter = u64::from_ne_bytes(b.get(ATOMIC_AT, 8).try_into().unwrap());
    assert_eq!(counter, 64, "{what}: counter");

    // 200 small WRITEs b -> a, each to its own place.
    for i in 0..200usize {
        b.put(SMALL_AT + 8 * i, &(i as u64 * 3).to_le_bytes());
        send(
            &b.qp,
            i as u64,
            SendOp::Write {
                remote_addr: a.mr.addr() + (SMALL_AT + 8 * i) as u64,
                rkey: a.mr.rkey(),
            },
            b.mr.sge((SMALL_AT + 8 * i) as u64, 8),
        );
    }
    for i in 0..200u64 {
        assert_eq!(b.wait().wr_id, i, "{what}");
    }
    assert!(
        a.get(SMALL_AT, 1600) == b.get(SMALL_AT, 1600),
        "{what}: small"
    );

    let (sa, sb) = (a.ctx.stats(), b.ctx.stats());
    let faults = add(sa.faults.unwrap(), sb.faults.unwrap());
    // Every corrupted packet that reached a device was caught by the ICRC
    // (a single flipped bit always is, IPv4 included). A corrupted packet
    // may also have been duplicated, or still be held back for reordering
    // (at most one per device).
    let bad = sa.rx_bad_icrc + sb.rx_bad_icrc;
    assert!(
        bad + 2 >= faults.corrupted && bad <= 2 * faults.corrupted,
        "{what}: {bad} bad ICRCs, {faults:?}"
    );
    faults
}

#[test]
fn every_operation_survives_loss_duplication_reordering_and_corruption() {
    let mut total = LossyStats::default();
    for (rate, seed, mtu) in [
        (0.01, 1, Mtu::Mtu4096),
        (0.03, 2, Mtu::Mtu1024),
        (0.05, 3, Mtu::Mtu2048),
    ] {
        total = add(total, exercise(rate, seed, mtu));
    }
    eprintln!("faults injected: {total:?}");
    // The wire really was hostile.
    assert!(
        total.dropped > 50 && total.duplicated > 50 && total.reordered > 50 && total.corrupted > 20,
        "{total:?}"
    );
}
